import Foundation
import Testing
import StarlingCore
import StarlingDistributed
@testable import StarlingModels

/// Replicas give back the pages of each bucket outside their own range once its reduce-scatter has returned
/// (`GradientSynchronizer.releasesGradientPages`): the sums each replica keeps are the same bits as without, the parts
/// given back read zero (the last bucket's from the next step's start), and the next step writes and sums them again.
@Suite struct GradientReleaseTests {
    /// Two replicas, six parameters of 5,000 floats (pages straddle their ends) in buckets of two, so the first two
    /// buckets are summed during "backward" and the last in `finish`. Each replica's gradients mix magnitudes (1e8 + small
    /// - 1e8 rounds differently in another order); the owned ranges must equal replica 0's value plus replica 1's, bit
    /// for bit, with and without the release, over two steps with different gradients.
    @Test func releasedPartsReadZeroAndTheSumsKeepTheirBits() throws {
        let sizes = Array(repeating: 5_000, count: 6)
        let total = sizes.reduce(0, +)
        let shards = OptimizerShards.ranges(parameterCount: total, ranks: 2)
        func gradient(_ replica: Int, _ step: Int, _ i: Int) -> Float {
            let x = Float((i * 7_919 + replica * 104_729 + step * 31) % 1_000) / 997
            return i % 5 == 0 ? (replica == 0 ? 1e8 : -1e8) + x : x * (replica == 0 ? 1 : -0.3)
        }
        typealias Replica = (sums: [[Float]], gradients: [[Float]], released: Bool, bounded: [Bool], next: [Float])
        func run(releasingFrom: Int) throws -> [Replica] {
            let results = InProcessGroup(size: 2).run { member -> Replica in
                let r = member.rank
                let store = ParameterStore()
                for (k, n) in sizes.enumerated() { store.declare("layer\(k)/w", shape: [n], initializer: .zeros) }
                var rng = RandomGenerator(seed: 1)
                store.allocate(rng: &rng)
                let sync = GradientSynchronizer(store: store, communicator: member, bucketBytes: 2 * 5_000 * 4, shards: shards,
                                                releasingFrom: releasingFrom)
                var sums: [[Float]] = [], gradients: [[Float]] = [], bounded: [Bool] = []
                for step in 0..<2 {
                    store.deferGradientZeroing()
                    sync.beginStep()
                    // Backward's order: the last parameter's gradient first, each written (stored) then reported.
                    for p in store.parameters.reversed() {
                        let (g, overwrite) = p.value.gradientForWriting()
                        guard overwrite else { throw TrainingError("\(p.name): a first write that adds") }
                        for i in 0..<p.count { g[i] = gradient(r, step, p.offset + i) }
                        sync.parameterReady(p.value)
                    }
                    store.settleGradients()
                    bounded.append(sync.ownGradientsSumWithoutOverflow)
                    _ = try sync.finish(posting: [], skipsAfterSum: bounded.last!) { [] }
                    let g = store.gradients.pointer
                    sums.append(Array(UnsafeBufferPointer(start: g + shards[r].lowerBound, count: shards[r].count)))
                    gradients.append(store.gradients.toArray())
                    try member.barrier()
                }
                // The next step's start gives back the last bucket's part too (every replica has passed the barrier).
                sync.beginStep()
                return (sums, gradients, sync.releasesGradientPages, bounded, store.gradients.toArray())
            }
            return try results.map { try $0.get() }
        }
        let released = try run(releasingFrom: 0), kept = try run(releasingFrom: Int.max)
        #expect(released.map(\.released) == [true, true] && kept.map(\.released) == [false, false])
        let page = Int(getpagesize()) / 4
        for r in 0..<2 {
            let owned = shards[r]
            for step in 0..<2 {
                let expected = owned.map { gradient(0, step, $0) + gradient(1, step, $0) }
                #expect(released[r].sums[step] == expected, "replica \(r), step \(step)")
                #expect(kept[r].sums[step] == expected, "replica \(r), step \(step)")
                // Kept, a replica's buffer outside its range holds its own addends; released, the whole pages of the
                // first two buckets' parts outside it read zero (the last bucket's stay: its exchange may end early).
                let lastBucket = 0..<(2 * 5_000)
                var zeroed = 0
                for i in 0..<total where !owned.contains(i) {
                    #expect(kept[r].gradients[step][i] == gradient(r, step, i))
                    let value = released[r].gradients[step][i]
                    if lastBucket.contains(i) {
                        #expect(value == gradient(r, step, i))
                    } else if value == 0 && gradient(r, step, i) != 0 {
                        zeroed += 1
                    } else {
                        #expect(value == gradient(r, step, i))
                    }
                }
                // Every page wholly outside the owned range and the last bucket: at least all but two pages' worth a part.
                let outside = (0..<total).filter { !owned.contains($0) && !lastBucket.contains($0) }.count
                // Linux's MADV_DONTNEED zero-fills anonymous pages; elsewhere the pages may keep their values.
                #if os(Linux)
                #expect(zeroed >= outside - 4 * page && zeroed > 0, "replica \(r), step \(step): \(zeroed) of \(outside) zeroed")
                #endif
            }
            #expect(released[r].bounded == kept[r].bounded)
            let outside = (0..<total).filter { !shards[r].contains($0) }
            let zeroed = outside.filter { released[r].next[$0] == 0 }.count
            #if os(Linux)
            #expect(zeroed >= outside.count - 6 * page && zeroed > 0, "replica \(r): \(zeroed) of \(outside.count) zeroed")
            #endif
            #expect(shards[r].allSatisfy { released[r].next[$0] == gradient(0, 1, $0) + gradient(1, 1, $0) })
            #expect(outside.allSatisfy { kept[r].next[$0] == gradient(r, 1, $0) })
        }
    }
}
