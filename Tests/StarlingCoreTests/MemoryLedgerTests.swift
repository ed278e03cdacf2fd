import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

@Suite struct MemoryLedgerTests {
    /// The allocator's counts against blocks taken and given by hand, on an allocator of the test's own (other tests
    /// allocate from the shared one at the same time).
    @Test func blockCountsFollowTakesAndGives() {
        let blocks = LargeBlocks(mappingBytes: 4 << 20, reservationBytes: 0)     // a mapping per growth
        let a = blocks.take(bytes: 1_500_000)                     // 1,503,232 bytes at 4 KB granularity
        #expect(blocks.usage.live == 1_503_232 && blocks.usage.peak == 1_503_232 && blocks.usage.mapped == 4 << 20)
        let b = blocks.take(bytes: 3 << 20)                       // does not fit the 2.5 MB left: a second mapping
        #expect(blocks.usage.live == 1_503_232 + (3 << 20) && blocks.usage.mapped == 8 << 20)
        blocks.give(a, bytes: 1_500_000)
        #expect(blocks.usage.live == 3 << 20 && blocks.usage.peak == 1_503_232 + (3 << 20))
        blocks.resetPeak()
        #expect(blocks.usage.peak == 3 << 20)
        let c = blocks.take(bytes: 1 << 20)                       // reuses the first mapping: nothing new mapped
        #expect(blocks.usage.mapped == 8 << 20 && blocks.usage.peak == 4 << 20)
        blocks.give(b, bytes: 3 << 20)
        blocks.give(c, bytes: 1 << 20)
        #expect(blocks.usage.live == 0 && blocks.usage.mapped == 8 << 20)
    }

    /// In one reserved range: a block that fits no hole starts in the free extent at the top and only the pages
    /// beyond it are new (with a mapping per growth it took a mapping of its own beside that free end); holes are
    /// reused best-fit; a full reservation falls back to mappings of their own. Blocks are written end to end, so a
    /// page made accessible too late would fault.
    @Test func reservedRangeGrowsFromItsFreeTop() {
        let mb = 1 << 20
        let blocks = LargeBlocks(mappingBytes: 4 * mb, reservationBytes: 16 * mb)
        func take(_ bytes: Int) -> UnsafeMutableRawPointer {
            let block = blocks.take(bytes: bytes)
            block.initializeMemory(as: UInt8.self, repeating: 1, count: bytes)
            return block
        }
        let a = take(2 * mb), b = take(3 * mb)
        #expect(b == a + 2 * mb && blocks.usage.mapped == 5 * mb)
        blocks.give(b, bytes: 3 * mb)                           // the top 3 MB are free again
        let c = take(4 * mb)                                    // fits no hole: from b's address, 1 MB new
        #expect(c == b && blocks.usage.mapped == 6 * mb)
        blocks.give(a, bytes: 2 * mb)
        let d = take(1 * mb)                                    // in a's hole, not at the top
        #expect(d == a && blocks.usage.mapped == 6 * mb && blocks.usage.live == 5 * mb)
        let e = take(10 * mb)                                   // 6 + 10 MB: the reservation's 16 MB exactly
        #expect(e == c + 4 * mb && blocks.usage.mapped == 16 * mb)
        let f = take(2 * mb)                                    // full: the 1 MB hole is too small, a mapping of its own
        #expect(blocks.usage.mapped == 20 * mb && blocks.usage.live == 17 * mb)
        for (block, bytes) in [(c, 4 * mb), (d, 1 * mb), (e, 10 * mb), (f, 2 * mb)] { blocks.give(block, bytes: bytes) }
        #expect(blocks.usage.live == 0)
        // Everything in the reservation joined again: no new mapping (the fallback's extent may join it too, when
        // the system placed that mapping just below the reservation).
        let g = take(16 * mb)
        #expect(blocks.usage.mapped == 20 * mb && blocks.usage.live == 16 * mb)
        blocks.give(g, bytes: 16 * mb)
    }

    /// `borrow` (oneDNN's scratch in inference) lends a free extent, best-fit, and never maps or extends: nil where no
    /// hole holds the block, though the reservation has room above its top.
    @Test func borrowingTakesOnlyFreeExtents() {
        let mb = 1 << 20
        let blocks = LargeBlocks(mappingBytes: 4 * mb, reservationBytes: 16 * mb)
        let a = blocks.take(bytes: 3 * mb), b = blocks.take(bytes: 1 * mb), c = blocks.take(bytes: 2 * mb)
        #expect(blocks.usage.mapped == 6 * mb)
        #expect(blocks.borrow(bytes: 1) == nil)                      // no hole yet: nothing lent, nothing mapped
        blocks.give(a, bytes: 3 * mb)
        blocks.give(c, bytes: 2 * mb)                                // the top 2 MB free, a 3 MB hole below b
        let lent = blocks.borrow(bytes: 2 * mb + 1)                  // 2 MB + a page: only a's hole holds it
        #expect(lent == a && blocks.usage.live == 3 * mb + 4096 && blocks.usage.mapped == 6 * mb)
        #expect(blocks.borrow(bytes: 3 * mb) == nil && blocks.usage.mapped == 6 * mb)
        blocks.give(lent!, bytes: 2 * mb + 1)
        blocks.give(b, bytes: 1 * mb)
        #expect(blocks.usage.live == 0 && blocks.usage.mapped == 6 * mb)
    }

    /// With `releasingFreePages`, a block that takes the resident pages more than the slack past the most bytes ever
    /// live gives back free extents' pages (the smallest extent that is enough): the kernel's own count (`mincore`)
    /// shows them out of memory, the live blocks' values untouched; a block later carved over them is written and
    /// counted resident again, and nothing is given back while the resident pages stay within the slack.
    @Test func freePagesGivenBackPastTheLiveHighWaterMark() {
        let mb = 1 << 20
        let blocks = LargeBlocks(mappingBytes: 4 * mb, reservationBytes: 64 * mb, releasingFreePages: true, residentSlack: 2 * mb)
        func take(_ bytes: Int, _ value: UInt8) -> UnsafeMutableRawPointer { filledBlock(blocks, bytes, value) }
        func holds(_ block: UnsafeMutableRawPointer, _ bytes: Int, _ value: UInt8) -> Bool {   // each page's ends
            stride(from: 0, to: bytes, by: 4096).allSatisfy { block.load(fromByteOffset: $0, as: UInt8.self) == value
                && block.load(fromByteOffset: $0 + 4095, as: UInt8.self) == value }
        }
        let a = take(8 * mb, 1), b = take(8 * mb, 2)
        blocks.give(a, bytes: 8 * mb)                        // 8 MB live, 16 at most; 16 resident: within the slack
        #expect(blocks.releaseUsage.resident == 16 * mb && blocks.releaseUsage.releases == 0)
        #expect(residentPages(a, 8 * mb) == 8 * mb / 4096)
        let c = take(12 * mb, 3)                             // no hole holds it: at the top, 28 resident for 20 live
        #expect(c == b + 8 * mb && blocks.usage.mapped == 28 * mb)
        #expect(blocks.releaseUsage.resident == 20 * mb && blocks.releaseUsage.releases == 1 && blocks.releaseUsage.releasedBytes == 8 * mb)
        #expect(residentPages(a, 8 * mb) == 0)
        #expect(residentPages(b, 8 * mb) == 8 * mb / 4096 && residentPages(c, 12 * mb) == 12 * mb / 4096)
        #expect(holds(b, 8 * mb, 2) && holds(c, 12 * mb, 3))
        let d = take(4 * mb, 4)                              // best fit in a's hole: its pages resident again
        #expect(d == a && blocks.releaseUsage.resident == 24 * mb && blocks.releaseUsage.releases == 1)
        #expect(residentPages(d, 4 * mb) == 4 * mb / 4096 && holds(d, 4 * mb, 4))
        for (block, bytes) in [(b, 8 * mb), (c, 12 * mb), (d, 4 * mb)] { blocks.give(block, bytes: bytes) }
        let e = take(28 * mb, 5)                             // the whole range again: 28 live, nothing given back
        #expect(e == a && blocks.releaseUsage.resident == 28 * mb && blocks.releaseUsage.releases == 1)
        #expect(blocks.usage.mapped == 28 * mb && holds(e, 28 * mb, 5))
        blocks.give(e, bytes: 28 * mb)
        #expect(blocks.usage.live == 0)
    }

    /// The placement rule of an allocator that gives pages back: a block goes on resident free pages when a run of
    /// them holds it, even where a free extent given back fits it as well and lies lower; pages given back are covered
    /// only when no resident run holds the block, then where the fewest must be faulted in; and the pages given back
    /// are those of the extent free the longest, from its high end (`mincore` shows which pages are out of memory).
    @Test func residentFreePagesPlacedBeforeThoseGivenBack() {
        let mb = 1 << 20
        let blocks = LargeBlocks(mappingBytes: 4 * mb, reservationBytes: 256 * mb, releasingFreePages: true, residentSlack: 2 * mb)
        func take(_ bytes: Int, _ value: UInt8) -> UnsafeMutableRawPointer { filledBlock(blocks, bytes, value) }
        let pages = { (bytes: Int) in bytes / 4096 }
        let g = take(40 * mb, 9)
        blocks.give(g, bytes: 40 * mb)                       // 40 MB ever live: the mark
        let a = take(8 * mb, 1), b = take(8 * mb, 2), c = take(8 * mb, 3), d = take(8 * mb, 4)
        #expect(a == g && b == a + 8 * mb && c == a + 16 * mb && d == a + 24 * mb)
        blocks.give(a, bytes: 8 * mb)                        // a's hole free longer than c's
        blocks.give(c, bytes: 8 * mb)
        let faultedBefore = blocks.releaseUsage.faulted
        let e = take(12 * mb, 5)                             // no hole holds it: at the top over [32, 44) MB, 4 MB new
        #expect(e == a + 32 * mb && blocks.usage.mapped == 44 * mb)
        #expect(blocks.releaseUsage.faulted == faultedBefore + 4 * mb)
        // 44 resident, 40 the mark: 4 MB given back, the high end of a's hole (free the longest), c's hole kept.
        #expect(blocks.releaseUsage.resident == 40 * mb && blocks.releaseUsage.releases == 1 && blocks.releaseUsage.releasedBytes == 4 * mb)
        #expect(residentPages(a, 4 * mb) == pages(4 * mb) && residentPages(a + 4 * mb, 4 * mb) == 0)
        #expect(residentPages(c, 8 * mb) == pages(8 * mb))
        let f = take(8 * mb, 6)                              // both holes are 8 MB; only c's is resident throughout
        #expect(f == c && blocks.releaseUsage.faulted == faultedBefore + 4 * mb && residentPages(a + 4 * mb, 4 * mb) == 0)
        let h = take(6 * mb, 7)                              // no resident run holds 6 MB: a's hole faults 2 MB in, the top 6
        #expect(h == a && blocks.releaseUsage.faulted == faultedBefore + 6 * mb)
        #expect(blocks.releaseUsage.resident == 42 * mb && residentPages(h, 6 * mb) == pages(6 * mb) && blocks.releaseUsage.releases == 1)
        for (block, value) in [(b, UInt8(2)), (d, 4), (e, 5), (f, 6), (h, 7)] { #expect(block.load(as: UInt8.self) == value) }
        for (block, bytes) in [(b, 8 * mb), (d, 8 * mb), (e, 12 * mb), (f, 8 * mb), (h, 6 * mb)] { blocks.give(block, bytes: bytes) }
        #expect(blocks.usage.live == 0)
    }

    /// In training, an arena's block from `DNNL.Arena.unkeptBytes` on (beside a large blocks' range `poolFactor` times
    /// larger) comes from Starling's large blocks for its call and is given back after it: the arena does not grow for
    /// it (SSD300's Winograd scratchpads stayed resident through the step). The same convolution's forward, input and
    /// weight gradients with every scratch block through the large blocks and with none: the same bits. One test for
    /// both, as they set the same bounds (shared by the process; a bound changes where a block is, not a value).
    @Test func largeTrainingScratchComesFromTheLargeBlocks() throws {
        let saved = (DNNL.Arena.unkeptBytes, DNNL.Arena.poolFactor)
        defer { (DNNL.Arena.unkeptBytes, DNNL.Arena.poolFactor) = saved }
        DNNL.Arena.poolFactor = 0
        DNNL.Arena.unkeptBytes = 1 << 20
        let arena = DNNL.Arena()
        let block = arena.allocate(1 << 20)
        block.storeBytes(of: 7, as: UInt32.self)
        (block + (1 << 20) - 4).storeBytes(of: 7, as: UInt32.self)     // writable end to end
        _ = arena.allocate(64 << 10)                                    // below the bound: the arena's
        arena.reset()
        #expect(arena.capacity == 64 << 10)
        _ = arena.allocate(2 << 20)
        arena.reset()
        #expect(arena.capacity == 64 << 10)
        let grown = GradMode.disabled { () -> Int in                    // inference: the arena's rule as before
            let lent = LargeBlocks.shared.borrow(bytes: 3 << 20)        // (no free extent may hold it: then it grows)
            if let lent { LargeBlocks.shared.give(lent, bytes: 3 << 20) }
            _ = arena.allocate(3 << 20)
            arena.reset()
            return arena.capacity
        }
        #expect(grown == 64 << 10 || grown == 3 << 20)

        var g = ConvolutionAlgorithmTests.geometry(batch: 2, 32, 48, 20)
        g.winograd = .always
        let forward = try #require(DNNLConvPlans.plan(g, images: 2, variant: .forward(bias: true, inference: nil), layouts: .planar))
        let backward = try #require(DNNLConvPlans.plan(g, images: 2, variant: .backward, layouts: .planar))
        func values(_ count: Int, _ step: Int, _ modulus: Int) -> [Float] {
            (0..<count).map { (i: Int) -> Float in Float((i * step) % modulus) / Float(modulus) - 0.5 }
        }
        let x = values(2 * 32 * 20 * 20, 7919, 257)
        let w = values(48 * 32 * 9, 104_729, 263)
        let bias = values(48, 1, 48)
        let dy = values(2 * 48 * 20 * 20, 31, 101)
        func run(unkeptBytes: Int) -> [[Float]] {
            DNNL.Arena.unkeptBytes = unkeptBytes
            var y = [Float](repeating: 0, count: dy.count), dx = [Float](repeating: 0, count: x.count)
            var dw = [Float](repeating: 0, count: w.count)
            forward.convolve(x, w, bias: bias, &y, accumulate: false)
            backward.accumulateInputGradient(dy, w, &dx)
            backward.accumulateWeightGradient(x, dy, &dw)
            return [y, dx, dw]
        }
        let kept = run(unkeptBytes: Int.max), lent = run(unkeptBytes: 4096)
        for (a, b) in zip(kept, lent) { #expect(a.map(\.bitPattern) == b.map(\.bitPattern)) }
        #expect(kept[0].contains { $0 != 0 } && kept[1].contains { $0 != 0 } && kept[2].contains { $0 != 0 })
    }

    /// The graph's values after a forward pass, against the blocks counted by hand: every value and gradient block
    /// once, the excluded (parameter) blocks left out, grouped by the shape of the node holding them.
    @Test func tapeValuesCountEachBlockOnce() {
        let x = Tensor.variable(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let w = Tensor.variable(shape: [3, 5], values: (0..<15).map { Float($0) })
        let y = x.matmul(w)
        let loss = (y.sum() + y.sum()).sum()                      // y read twice: its block still counted once
        let groups = loss.tapeValues(excluding: [w.storage, w.gradStorage!])
        let bytes = Dictionary(uniqueKeysWithValues: groups.map { ($0.shape, $0.bytes) })
        let blocks = Dictionary(uniqueKeysWithValues: groups.map { ($0.shape, $0.blocks) })
        #expect(bytes[[2, 3]] == 2 * 6 * 4 && blocks[[2, 3]] == 2)          // x's values and its gradient buffer
        #expect(bytes[[2, 5]] == 10 * 4 && blocks[[2, 5]] == 1)
        #expect(bytes[[1]] == 4 * 4 && blocks[[1]] == 4)                    // the two sums, their sum, the loss
        #expect(bytes[[3, 5]] == nil)
        #expect(groups.map(\.bytes) == groups.map(\.bytes).sorted(by: >))
        loss.backward()
        #expect(w.gradArray == [10, 10, 10, 10, 10, 14, 14, 14, 14, 14, 18, 18, 18, 18, 18])   // 2 x^T 1
        // The sweep released the graph: only the loss's own value is left.
        #expect(loss.tapeValues().map(\.bytes) == [4])
    }
}

/// Batch norm writing its input gradient over a blocked convolution's output (`gradientForWriting(overValues:)`):
/// the same gradients to the bit as with a second reader of the output, which keeps the values and takes the path
/// through a buffer of its own.
@Suite struct GradientOverValuesTests {
    @Test(arguments: [8, 16], ["elu", "pooled elu", "pooled leaky"]) func batchNormGradientOverConvolutionOutputIsBitIdentical(width: Int, op: String) {
        let x = randomVariable([2, 16, 6, 10], seed: 50, -1, 2), w = randomVariable([32, 16, 3, 3], seed: 51), b = randomVariable([32], seed: 52)
        let gamma = randomVariable([32], seed: 53, 0.5, 1.5), beta = randomVariable([32], seed: 54)
        let leaves = [x, w, b, gamma, beta]
        func pass(secondReader: Bool) -> (gradients: [[Float]], before: [Float], after: [Float]) {
            for leaf in leaves { leaf.clearGrad() }
            let mean = Tensor(shape: [32], values: [Float](repeating: 0, count: 32))
            let variance = Tensor(shape: [32], values: [Float](repeating: 1, count: 32))
            let y = x.blocked(width: width).conv2dBlocked(w, bias: b, stride: (1, 1), padding: .same)
            let before = y.toArray()
            let z = switch op {
            case "pooled elu": y.batchNormELUMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: true)
            case "pooled leaky": y.batchNormLeakyReLUMaxPool2x2Blocked(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance,
                                                                      training: true, slope: 0.1)
            default: y.batchNormELU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: true, layout: .blocked)
            }
            let planar = z.unblocked()
            var loss = (planar * Tensor(shape: planar.shape, values: randomValues(planar.count, seed: 55))).sum()
            if secondReader { loss = loss + y.sum() * 0 }     // adds exact zeros to y's gradient
            loss.backward()
            return (leaves.map { $0.gradArray ?? [] }, before, y.toArray())
        }
        let alone = pass(secondReader: false), read = pass(secondReader: true)
        for k in leaves.indices { #expect(alone.gradients[k] == read.gradients[k], "gradient \(k)") }
        #expect(read.after == read.before)           // a second reader: the values stay
        #expect(alone.after != alone.before)         // batch norm alone: its gradient went over them
    }
}

/// `residual + batchNormLeakyReLU(x)` as one op (`batchNormLeakyReLUAdding`, darknet's shortcut), which keeps neither
/// the activated values nor a buffer for the sum beside them: values, every gradient (the residual's included) and the
/// running statistics to the bit as the two ops, planar and in both block widths.
@Suite struct ResidualBatchNormTests {
    @Test(arguments: [0, 8, 16]) func residualSumAsOneOpIsBitIdentical(width: Int) {
        let x = randomVariable([2, 16, 5, 6], seed: 70, -1, 2), h = randomVariable([2, 16, 5, 6], seed: 71)
        let gamma = randomVariable([16], seed: 72, 0.5, 1.5), beta = randomVariable([16], seed: 73)
        let leaves = [x, h, gamma, beta]
        func pass(fused: Bool) -> (values: [Float], gradients: [[Float]], statistics: [Float]) {
            for leaf in leaves { leaf.clearGrad() }
            let mean = Tensor(shape: [16], values: randomValues(16, seed: 74))
            let variance = Tensor(shape: [16], values: randomValues(16, seed: 75, 0.5, 2))
            let layout: ChannelLayout = width == 0 ? .planar : .blocked
            // The input goes through an op of its own, as a convolution's output would be.
            let (input, residual) = width == 0 ? (x * 1, h) : (x.blocked(width: width), h.blocked(width: width))
            let z = fused
                ? input.batchNormLeakyReLUAdding(residual, gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: true,
                                                 slope: 0.1, layout: layout)
                : residual + input.batchNormLeakyReLU(gamma: gamma, beta: beta, runningMean: mean, runningVar: variance, training: true,
                                                      slope: 0.1, layout: layout)
            let planar = width == 0 ? z : z.unblocked()
            (planar * Tensor(shape: planar.shape, values: randomValues(planar.count, seed: 76))).sum().backward()
            return (planar.toArray(), leaves.map { $0.gradArray ?? [] }, mean.toArray() + variance.toArray())
        }
        let (fused, twoOps) = (pass(fused: true), pass(fused: false))
        #expect(fused.values == twoOps.values && fused.values.contains { $0 < 0 })
        for k in leaves.indices { #expect(fused.gradients[k] == twoOps.gradients[k] && !fused.gradients[k].isEmpty, "gradient \(k)") }
        #expect(fused.statistics == twoOps.statistics)
    }
}

/// A block of `bytes` from `blocks`, every byte `value` (its pages written, so resident).
private func filledBlock(_ blocks: LargeBlocks, _ bytes: Int, _ value: UInt8) -> UnsafeMutableRawPointer {
    let block = blocks.take(bytes: bytes)
    block.initializeMemory(as: UInt8.self, repeating: value, count: bytes)
    return block
}

/// How many of the pages of [block, block + bytes) are in memory, by the kernel's own count (`mincore`).
private func residentPages(_ block: UnsafeMutableRawPointer, _ bytes: Int) -> Int {
    var pages = [UInt8](repeating: 0, count: bytes / 4096)
    #expect(mincore(block, bytes, &pages) == 0)
    return pages.filter { $0 & 1 != 0 }.count
}
