import Foundation
import CCPU

/// Replicas of a model on threads of one process, joined by shared memory: what `mpirun -np N` does across
/// processes, without the processes (`train --replicas N`).
///
/// Every collective is a rendezvous: each replica posts its buffer, waits until all have, takes its share of the work
/// and waits again until all are done, so no replica returns while another still reads its buffer. A sum adds the
/// replicas' values in replica order 0, 1, ..., N-1 whatever order the threads arrive in, so the result is the same
/// bits on every replica and in every run (with two replicas, the same bits as MPI's sum of two ranks, since a + b =
/// b + a in floating point). The work of a sum is split over the replicas by element ranges, so each thread adds a
/// 1/N share.
///
/// A replica that fails calls `fail(_:)`: every replica waiting in a collective, and every later collective, throws
/// `ReplicaFailure` naming it, so none waits forever for a partner that has gone.
public final class InProcessGroup: @unchecked Sendable {
    public let size: Int
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var arrived = 0
    private var generation = 0
    private var failure: ReplicaFailure?
    /// The pointers the replicas posted for the collective under way, by replica, in two slots by the parity of the
    /// rendezvous count at posting: an exchange that ends without its second wait (`exchange(endsEarly:)`) may still
    /// be read from while a replica that left it posts for the next one, which lands in the other slot.
    private var posted: [[UnsafeMutableRawPointer?]]
    /// A value a root posts for the others (broadcast texts, gathered arrays), in the same two slots.
    private var shared: [[Any?]]
    /// `generation`, published for the replicas that spin before they sleep (read without the lock).
    private let releasedGeneration = UnsafeMutablePointer<Int64>.allocate(capacity: 1)

    /// How long a replica that reaches a rendezvous first polls for the others before it sleeps on the condition:
    /// `STARLING_REPLICA_SPIN_US` microseconds where it is set, else `defaultSpinSeconds` for this group. A sleeping
    /// replica wakes tens of microseconds after the last one arrives (on a virtual machine an inter-processor
    /// interrupt wakes its vCPU), twice a step, and the small autoencoders' replica steps last 0.15-1 ms.
    let spinSeconds: Double

    /// 30 us where the group's replicas do not outnumber the processors the process may run on (`Processors.usable`:
    /// its affinity mask, so a process bound by taskset or mpirun to fewer cores sleeps at once), else 0, as libgomp
    /// spins only where its threads fit the cores. Measured on a 2-core Zen 4 (BENCHMARKS.md, "After
    /// the thirteenth session's merges"): idle, `train --replicas 2` 1.10x for vae and 1.03x for fc-ae over 32
    /// alternated pairs; beside two busy processes level or faster (1.15x, 1.06x, 10 noisy pairs); only at a load of 7
    /// on 2 cores (four other jobs building and measuring) was it lower, in 4 of 5 rounds (~0.95x). Where replicas
    /// outnumber the cores a poller holds the core the late replica needs, so they sleep.
    public static func defaultSpinSeconds(replicas: Int, processors: Int) -> Double {
        replicas <= processors ? 30e-6 : 0
    }

    /// A replica that polls longer than this gives its core away (`sched_yield`) this often, so that a thread waiting
    /// for that core runs in the replica's wait: the other replica, where both share a core on a busy machine, its
    /// prefetch thread (nice 19), another process's. With nothing else runnable the call returns at once. Without it, a
    /// 300 us poll at a load of 8-13 on 2 cores ran vae's epoch at 0.31x of the 30 us poll (the pollers held the cores
    /// that the replicas they awaited needed); with yields, 0.86x (BENCHMARKS.md, "One process on 2 cores, eighth
    /// pass"). The default poll (30 us) is shorter, so it never yields.
    static let yieldNanoseconds: UInt64 = 50_000

    static let spinSetting: Result<Double?, ReplicaSpinError> = parseSpin(getenv("STARLING_REPLICA_SPIN_US").map { String(cString: $0) })

    /// Seconds for a value of STARLING_REPLICA_SPIN_US: nil when unset or empty (the group's default), else
    /// microseconds from 0 to 1,000,000 (a second of polling is already far past any use).
    public static func parseSpin(_ value: String?) -> Result<Double?, ReplicaSpinError> {
        guard let value, !value.isEmpty else { return .success(nil) }
        guard let microseconds = Double(value), microseconds.isFinite, (0...1e6).contains(microseconds) else {
            return .failure(ReplicaSpinError(value: value))
        }
        return .success(microseconds / 1e6)
    }

    /// The error a bad STARLING_REPLICA_SPIN_US gives (the CLI refuses to start with it), or nil.
    public static var spinSettingError: ReplicaSpinError? {
        if case .failure(let error) = spinSetting { return error }
        return nil
    }

    /// The processor each replica's thread is bound to, by replica (nil: left to the scheduler, the default). Unbound,
    /// the two replicas of vae sampled every 4 ms on the loaded 2-core Zen 4 had the same last processor in 77-97 % of
    /// the samples (each wakes the other at every rendezvous, and the scheduler's wake-up placement can put the woken
    /// replica beside its waker, where a pair that takes turns never looks busy enough to be spread again); bound, in
    /// none. But at a load of 6-9 bound replicas ran slower by the medians (vae 0.44x of one thread against 0.90x
    /// unbound, the same binary alternated: a replica bound to a core another process holds cannot move to the free
    /// one), and at 2.5-5 the medians were mixed, though the fastest bound runs reached 2.0-2.2x of one thread; idle, it
    /// changed no median and bound runs had the slow mode too. So binding is asked for (STARLING_REPLICA_BIND=1), as
    /// `mpirun --bind-to core` binds ranks (BENCHMARKS.md, "Replicas bound to a core each, and stores into shared
    /// lines", "After the fifteenth session's merges").
    public let processorBinding: [Int]?

    /// `binding(replicas:allowed:enabled:)`: replica r on the r-th processor of the creating thread's mask (a process
    /// that taskset or mpirun narrowed keeps to what it was given, and ranks of one node bound to different cores bind
    /// their replicas within their own), where the mask has at least as many processors as there are replicas and
    /// there are two replicas or more; else nil (fewer processors than replicas: the scheduler must be free to move
    /// them). `enabled` false (STARLING_REPLICA_BIND unset or 0): nil.
    public static func binding(replicas: Int, allowed: [Int], enabled: Bool) -> [Int]? {
        guard enabled, replicas >= 2, allowed.count >= replicas else { return nil }
        return Array(allowed.prefix(replicas))
    }

    static let bindSetting: Result<Bool?, ReplicaBindError> = parseBind(getenv("STARLING_REPLICA_BIND").map { String(cString: $0) })

    /// A value of STARLING_REPLICA_BIND: nil when unset or empty (not bound), 1 to bind where the rule above allows, 0
    /// to leave the replicas' threads to the scheduler; anything else is refused.
    public static func parseBind(_ value: String?) -> Result<Bool?, ReplicaBindError> {
        guard let value, !value.isEmpty else { return .success(nil) }
        switch value {
        case "1": return .success(true)
        case "0": return .success(false)
        default: return .failure(ReplicaBindError(value: value))
        }
    }

    /// The error a bad STARLING_REPLICA_BIND gives (the CLI refuses to start with it), or nil.
    public static var bindSettingError: ReplicaBindError? {
        if case .failure(let error) = bindSetting { return error }
        return nil
    }

    /// `spinSeconds`: the polling time (tests); nil for STARLING_REPLICA_SPIN_US's, else the default. `bind`: whether
    /// replicas are bound to processors where they fit the mask (tests); nil for STARLING_REPLICA_BIND's, else not.
    public init(size: Int, spinSeconds: Double? = nil, bind: Bool? = nil) {
        precondition(size >= 1, "an in-process group needs at least one replica")
        self.size = size
        // A bad setting is refused by the CLI before any group exists (`spinSettingError`); here it counts as unset.
        let chosen: Double? = spinSeconds ?? (try? Self.spinSetting.get()) ?? nil
        self.spinSeconds = chosen ?? Self.defaultSpinSeconds(replicas: size, processors: Processors.usable)
        let allowed = Processors.allowed
        processorBinding = Self.binding(replicas: size, allowed: allowed,
                                        enabled: bind ?? (try? Self.bindSetting.get()) ?? nil ?? false)
        if processorBinding != nil { Processors.recordUnboundMask(allowed) }
        posted = Array(repeating: Array(repeating: nil, count: size), count: 2)
        shared = Array(repeating: Array(repeating: nil, count: size), count: 2)
        releasedGeneration.initialize(to: 0)
    }

    deinit { releasedGeneration.deallocate() }

    /// Replica `rank`'s end of the group.
    public func member(_ rank: Int) -> InProcessCollective {
        precondition(rank >= 0 && rank < size, "replica \(rank) of \(size)")
        return InProcessCollective(group: self, rank: rank)
    }

    /// Every end, in replica order.
    public var members: [InProcessCollective] { (0..<size).map(member) }

    /// Runs `body` for every replica, each on a thread of its own (a pool could hold one back while the others wait
    /// for it), and returns their results in replica order. A replica that throws fails the group, so the others'
    /// collectives throw too and every thread ends. `prepare` runs first on each thread (per-thread settings).
    public func run<T>(name: String = "replica", prepare: @escaping () -> Void = {},
                       _ body: @escaping (InProcessCollective) throws -> T) -> [Result<T, any Error>] {
        let results = ThreadResults<T>(count: size)
        let work = UncheckedBox((prepare, body))
        let done = DispatchGroup()
        for r in 0..<size {
            done.enter()
            let member = member(r)
            let cpu = processorBinding?[r]
            let thread = Thread { [self] in
                Processors.nameCurrentThread("\(name)-\(r)")
                if let cpu { Processors.bindCurrentThread(to: [cpu]) }
                work.value.0()
                let result = Result { try work.value.1(member) }
                if case .failure(let error) = result { fail(rank: r, error) }
                results.set(r, result)
                done.leave()
            }
            // Backward walks the graph recursively: as much stack as the main thread has.
            thread.stackSize = 8 << 20
            thread.start()
        }
        done.wait()
        return results.all
    }

    /// Replica `rank` failed with `error`: every replica waiting in a collective, and every later collective, throws.
    /// The first failure is the one reported.
    public func fail(rank: Int, _ error: any Error) {
        condition.lock()
        if failure == nil { failure = ReplicaFailure(rank: rank, message: "\(error)") }
        condition.broadcast()
        condition.unlock()
    }

    /// The rendezvous the replicas have completed so far (each collective's waits: two for an exchange of buffers,
    /// one for a barrier); for tests that count what a step costs.
    public var rendezvousCount: Int { condition.lock(); defer { condition.unlock() }; return generation }

    /// The failure that ended the group, if any.
    public var failed: ReplicaFailure? { condition.lock(); defer { condition.unlock() }; return failure }

    /// Waits until every replica has arrived at this rendezvous (a barrier); throws if a replica failed meanwhile.
    fileprivate func rendezvous() throws {
        Timeline.mark(.rendezvousEnter)
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        let mine = generation
        arrived += 1
        if arrived == size {
            arrived = 0
            generation &+= 1
            starling_store_release(releasedGeneration, Int64(generation))
            condition.broadcast()
            Timeline.mark(.rendezvousLeave, aux: 1)
            return
        }
        if spinSeconds > 0 {
            // Poll the published generation (not the lock, which the others need to arrive) for a little while: the
            // last replica usually arrives within it, and this one goes on without a sleep and a wake-up. A failure
            // is seen below, under the lock, at most `spinSeconds` late.
            condition.unlock()
            let start = DispatchTime.now().uptimeNanoseconds
            let deadline = start + UInt64(spinSeconds * 1e9)
            // No yield at once: on a busy machine (load 8-13 on 2 cores) yielding as the poll started lost to
            // 30 us of plain polling (the default) in 11 of 16 alternated runs (BENCHMARKS.md, "One process on 2 cores,
            // eighth pass"), likely because a replica that gives its core away gets it back only after another
            // process's slice, where a sleeping one is woken with preemption.
            var nextYield = start + Self.yieldNanoseconds
            var polls = 0
            while starling_load_acquire(releasedGeneration) == Int64(mine) {
                starling_spin_pause()
                polls += 1
                guard polls % 64 == 0 else { continue }
                let now = DispatchTime.now().uptimeNanoseconds
                if now >= deadline { break }
                if now >= nextYield {
                    // Another thread runnable on this core (this replica's prefetch thread at nice 19, another
                    // process) runs now, in this replica's wait; with none, the call returns at once.
                    sched_yield()
                    nextYield = DispatchTime.now().uptimeNanoseconds + Self.yieldNanoseconds
                }
            }
            condition.lock()
        }
        if generation == mine { Timeline.mark(.rendezvousSleep) }
        while generation == mine && failure == nil { condition.wait() }
        if generation == mine, let failure { throw failure }
        Timeline.mark(.rendezvousLeave)
    }

    /// Posts `pointer` as `rank`'s buffer, waits for every replica's, runs `body` with all of them, and waits until
    /// every replica's `body` has returned (so the buffers stay valid and unchanged while anyone reads them).
    ///
    /// `endsEarly`, given every replica's posted values (the same on every replica), may end the exchange when this
    /// replica's `body` returns, without that second wait: the caller then promises that each replica, until it has
    /// passed another rendezvous of the group, writes no part of its buffer that another replica's `body` reads.
    /// Values posted meanwhile for the next exchange go to the other slot.
    fileprivate func exchange(rank: Int, _ pointer: UnsafeMutableRawPointer?, value: Any? = nil,
                              endsEarly: ([Any?]) -> Bool = { _ in false },
                              _ body: ([UnsafeMutableRawPointer?], [Any?]) throws -> Void) throws {
        condition.lock()
        // Every replica posts between the same two rendezvous (all have left the last collective's, none can pass
        // this one's before all have posted), so all see the same count here.
        let slot = generation & 1
        posted[slot][rank] = pointer
        shared[slot][rank] = value
        condition.unlock()
        try rendezvous()
        condition.lock()
        let pointers = posted[slot], values = shared[slot]
        condition.unlock()
        do {
            try body(pointers, values)
        } catch {
            fail(rank: rank, error)
            throw error
        }
        if endsEarly(values) { return }
        try rendezvous()
    }

    /// This replica's share of 0..<count: contiguous, in replica order.
    fileprivate func share(of count: Int, rank: Int) -> Range<Int> {
        (count * rank / size)..<(count * (rank + 1) / size)
    }
}

/// Why a replica's collective threw: replica `rank` failed with `message`.
public struct ReplicaFailure: Error, CustomStringConvertible {
    public let rank: Int
    public let message: String
    public var description: String { "replica \(rank) failed: \(message)" }
}

/// One replica's end of an `InProcessGroup`: a `Collective` over threads.
public final class InProcessCollective: Collective, @unchecked Sendable {
    public let group: InProcessGroup
    public let rank: Int
    public var size: Int { group.size }
    public weak var observer: (any CollectiveObserver)?

    fileprivate init(group: InProcessGroup, rank: Int) {
        self.group = group
        self.rank = rank
    }

    private func observed<T>(_ call: String, _ body: () throws -> T) rethrows -> T {
        guard let observer else { return try body() }
        observer.enterCollective(call)
        defer { observer.leaveCollective() }
        return try body()
    }

    /// Sums (or takes the max or min of) every replica's `count` elements in replica order, each replica computing its
    /// share of the elements and writing the result into every replica's buffer.
    private func reduce<T>(_ buffer: UnsafeMutablePointer<T>, count: Int, _ combine: @escaping (T, T) -> T) throws {
        if size == 1 { return }
        try group.exchange(rank: rank, UnsafeMutableRawPointer(buffer)) { pointers, _ in
            let buffers = pointers.map { $0!.assumingMemoryBound(to: T.self) }
            let first = buffers[0]
            for i in group.share(of: count, rank: rank) {
                var total = first[i]
                for r in 1..<buffers.count { total = combine(total, buffers[r][i]) }
                for b in buffers { b[i] = total }
            }
        }
    }

    private static func combiner<T: FloatingPoint>(_ op: CollectiveOperation) -> (T, T) -> T {
        switch op {
        case .sum: return { $0 + $1 }
        case .max: return { Swift.max($0, $1) }
        case .min: return { Swift.min($0, $1) }
        }
    }

    public func allreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, _ op: CollectiveOperation) throws {
        try observed("an in-process allreduce of \(count) floats") {
            if op == .sum { try sum(buffer, count: count) } else { try reduce(buffer, count: count, Self.combiner(op)) }
        }
    }

    /// `reduce` with `+` for floats (the gradients' sum, every step): the same additions in the same order (replica 0's
    /// value, plus replica 1's, plus replica 2's, ...), so the same bits, but as loops over pointers that vectorise,
    /// where the generic one called its closure once an element (a tenth of fc-ae's step on two replicas, by `perf`).
    private func sum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        if size == 1 { return }
        try group.exchange(rank: rank, UnsafeMutableRawPointer(buffer)) { pointers, _ in
            let buffers = pointers.map { $0!.assumingMemoryBound(to: Float.self) }
            let share = group.share(of: count, rank: rank)
            guard !share.isEmpty else { return }
            let n = share.count
            // This replica's range of every buffer is its own to read and write (the others take other ranges).
            let total = buffers[0] + share.lowerBound
            for r in 1..<buffers.count {
                let addend = UnsafePointer(buffers[r] + share.lowerBound)
                for i in 0..<n { total[i] = total[i] + addend[i] }
            }
            for r in 1..<buffers.count { (buffers[r] + share.lowerBound).update(from: total, count: n) }
        }
    }

    public func allreduce(_ values: inout [Double], _ op: CollectiveOperation) throws {
        if size == 1 || values.isEmpty { return }
        let n = values.count
        try observed("an in-process allreduce of \(n) doubles") {
            try values.withUnsafeMutableBufferPointer { try reduce($0.baseAddress!, count: n, Self.combiner(op)) }
        }
    }

    /// Added in float32 in replica order and rounded back after each addition, as MPI's reduction of 16-bit values
    /// does rank by rank.
    public func allreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws {
        let add: (UInt16, UInt16) -> UInt16 = wire == .bfloat16
            ? { GradientWire.bfloat16Bits(GradientWire.bfloat16Value($0) + GradientWire.bfloat16Value($1)) }
            : { GradientWire.float16Bits(GradientWire.float16Value($0) + GradientWire.float16Value($1)) }
        try observed("an in-process allreduce of \(count) \(wire.rawValue) values") { try reduce(buffer, count: count, add) }
    }

    /// Threads have nothing to overlap with a transfer: the sum runs when the request is waited for (or tested), which
    /// every replica does in the same order.
    public func startAllreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws -> any CollectiveRequest {
        DeferredRequest { try self.allreduce(buffer, count: count, .sum) }
    }

    public func startAllreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws -> any CollectiveRequest {
        DeferredRequest { try self.allreduce(buffer, count: count, wire: wire) }
    }

    public func startAllreduce(_ values: UnsafeMutablePointer<Double>, count: Int, _ op: CollectiveOperation) throws -> any CollectiveRequest {
        DeferredRequest {
            if self.size == 1 || count == 0 { return }
            try self.observed("an in-process allreduce of \(count) doubles") { try self.reduce(values, count: count, Self.combiner(op)) }
        }
    }

    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        if size == 1 { return }
        try observed("an in-process broadcast of \(count) floats") {
            try group.exchange(rank: rank, UnsafeMutableRawPointer(buffer)) { pointers, _ in
                // Replicas that share one buffer (the weights, `ParameterStore.shareValues`) have nothing to copy.
                guard rank != root, let source = pointers[root], source != UnsafeMutableRawPointer(buffer) else { return }
                buffer.update(from: source.assumingMemoryBound(to: Float.self), count: count)
            }
        }
    }

    public func broadcast(_ text: String, root: Int) throws -> String {
        if size == 1 { return text }
        var result = text
        try observed("an in-process broadcast of a text") {
            try group.exchange(rank: rank, nil, value: rank == root ? text : nil) { _, values in
                result = values[root] as? String ?? ""
            }
        }
        return result
    }

    /// One rendezvous: nothing is read from the others, so nothing needs the exchange's second wait (a barrier ends
    /// every replica step, and each rendezvous can cost a sleep and a wake-up).
    public func barrier() throws {
        if size == 1 { return }
        try observed("an in-process barrier") { try group.rendezvous() }
    }

    private func gather<T>(_ values: [T]) throws -> [T] {
        if size == 1 { return values }
        var all: [T] = []
        try observed("an in-process allgather") {
            try group.exchange(rank: rank, nil, value: values) { _, posted in
                let parts = posted.map { $0 as? [T] ?? [] }
                guard parts.allSatisfy({ $0.count == values.count }) else {
                    throw ReplicaFailure(rank: rank, message: "an allgather of \(values.count) values met replicas with \(parts.map(\.count))")
                }
                all = parts.flatMap { $0 }
            }
        }
        return all
    }

    public func allgather(_ values: [Double]) throws -> [Double] { try gather(values) }
    public func allgather(_ values: [Int64]) throws -> [Int64] { try gather(values) }

    public func allgatherText(_ text: String) throws -> [String] { try gather([text]) }

    /// Every replica's `object`, in replica order, handed over by reference: threads share memory, so replicas can
    /// share what ranks must copy (replica 0's weights, `ParameterStore.shareValues`).
    public func allgatherObjects<T: AnyObject>(_ object: T) throws -> [T] { try gather([object]) }

    /// Ends the process, and with it every replica (a failure inside a forward pass, which cannot throw).
    public func abort(code: Int32) -> Never {
        exit(code)
    }
}

// MARK: ZeRO's collectives over a buffer split into replicas' parts (`--shard-optimizer` with `--replicas`)
//
// Each replica does its own part's work: a reduce-scatter's replica sums its part over every replica's buffer (in
// replica order, as the allreduce does, so two replicas give MPI's bits) and writes it into its own buffer only; an
// allgather's replica copies the other replicas' parts into its own buffer. A replica writes only its own buffer, and
// only where no other replica reads, so the replicas never race.
extension InProcessCollective: ShardingCollective {
    /// Where each replica's part starts in the buffer, and the end: counts.count + 1 entries.
    private static func offsets(_ counts: [Int]) -> [Int] {
        var offsets = [0]
        for c in counts { offsets.append(offsets[offsets.count - 1] + c) }
        return offsets
    }

    /// Posts `pointer` with this replica's `counts`, checks every replica's counts are the same (MPI's contract, which
    /// MPI itself may not catch), and runs `body` with every replica's pointer.
    private func exchangeParts(_ pointer: UnsafeMutableRawPointer?, counts: [Int], _ call: String,
                               _ body: ([UnsafeMutableRawPointer?], [Int]) throws -> Void) throws {
        precondition(counts.count == size && counts.allSatisfy { $0 >= 0 }, "one non-negative count a replica")
        try observed("an in-process \(call) of \(counts.reduce(0, +)) values") {
            try group.exchange(rank: rank, pointer, value: counts) { pointers, posted in
                guard posted.allSatisfy({ ($0 as? [Int]) == counts }) else {
                    throw ReplicaFailure(rank: rank, message: "a \(call) over parts \(counts) met replicas with \(posted.map { ($0 as? [Int]) ?? [] })")
                }
                try body(pointers, Self.offsets(counts))
            }
        }
    }

    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        if size == 1 { return }
        try exchangeParts(UnsafeMutableRawPointer(buffer), counts: counts, "reduce-scatter") { pointers, offsets in
            let buffers = pointers.map { $0!.assumingMemoryBound(to: Float.self) }
            let first = buffers[0], replicas = buffers.count
            for i in offsets[rank]..<offsets[rank + 1] {
                var total = first[i]
                for r in 1..<replicas { total += buffers[r][i] }
                buffer[i] = total
            }
        }
    }

    /// `reduceScatter(_:counts:)` that also agrees a step's scalars in the same rendezvous, so that a replica step makes
    /// one collective round where it made three (the loss agreement, the gradients' reduce-scatter and the allgather
    /// of the non-finite check; each a post and a wait, and each wait a sleep for the replica that arrives first).
    /// Every replica posts `scalars` with its buffer; once its own part is summed, it runs `afterSum` on its thread
    /// (its part of the sum is final there; the others' may not be). Returns every replica's `scalars` and every
    /// replica's `afterSum` values, in replica order, the same on every replica. The sum's bits are
    /// `reduceScatter(_:counts:)`'s.
    ///
    /// `skipsAfterSum`: when every replica posts it true, no replica runs `afterSum` and the exchange ends once this
    /// replica's part is summed, one rendezvous instead of two (`endedEarly` in the result, `afterSum` empty). The
    /// caller then writes nothing of its buffer outside its own part before its next collective of the group (the
    /// others may still be reading it): the trainer's update writes its own part, and its barrier follows.
    public func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], posting scalars: [Double], skipsAfterSum: Bool = false,
                              afterSum: () -> [Double]) throws -> (posted: [[Double]], afterSum: [[Double]], endedEarly: Bool) {
        if size == 1 { return skipsAfterSum ? ([scalars], [], true) : ([scalars], [afterSum()], false) }
        precondition(counts.count == size && counts.allSatisfy { $0 >= 0 }, "one non-negative count a replica")
        // A new object a call: a replica reads the others' after the exchange's second wait, and no replica can post
        // its next one before every replica has arrived at the next collective.
        let mine = StepScalars(counts: counts, scalars: scalars, skipsAfterSum: skipsAfterSum)
        var all: [StepScalars] = []
        let early: ([Any?]) -> Bool = { posted in posted.allSatisfy { ($0 as? StepScalars)?.skipsAfterSum == true } }
        var endedEarly = false
        try observed("an in-process reduce-scatter of \(counts.reduce(0, +)) values with \(scalars.count) scalars") {
            try group.exchange(rank: rank, UnsafeMutableRawPointer(buffer), value: mine, endsEarly: early) { pointers, posted in
                all = posted.map { $0 as? StepScalars ?? StepScalars(counts: [], scalars: []) }
                guard all.allSatisfy({ $0.counts == counts && $0.scalars.count == scalars.count }) else {
                    throw ReplicaFailure(rank: rank, message: "a reduce-scatter over parts \(counts) with \(scalars.count) scalars met replicas with \(all.map(\.counts)) and \(all.map(\.scalars.count))")
                }
                let buffers = pointers.map { $0!.assumingMemoryBound(to: Float.self) }
                let begin = counts[..<rank].reduce(0, +)
                let n = counts[rank]
                // The same additions in the same order as `reduceScatter(_:counts:)` (replica 0's value, plus replica
                // 1's, ...), as loops over pointers that vectorise, through a small scratch block: this replica's own
                // values are among the addends, so they are overwritten only once a block's sum is complete.
                let block = 2048
                Timeline.mark(.sumStart)
                defer { Timeline.mark(.sumEnd) }
                withUnsafeTemporaryAllocation(of: Float.self, capacity: block) { scratch in
                    let total = scratch.baseAddress!
                    var start = begin
                    while start < begin + n {
                        let m = min(block, begin + n - start)
                        total.update(from: buffers[0] + start, count: m)
                        for r in 1..<buffers.count {
                            let addend = UnsafePointer(buffers[r] + start)
                            for i in 0..<m { total[i] = total[i] + addend[i] }
                        }
                        (buffer + start).update(from: total, count: m)
                        start += m
                    }
                }
                endedEarly = early(posted)
                if !endedEarly { mine.results = afterSum() }
            }
        }
        return (all.map(\.scalars), endedEarly ? [] : all.map(\.results), endedEarly)
    }

    /// Widened, added in float32 in replica order and rounded back after each addition, as the 16-bit allreduce.
    public func reduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws {
        if size == 1 { return }
        try exchangeParts(UnsafeMutableRawPointer(buffer), counts: counts, "\(wire.rawValue) reduce-scatter") { pointers, offsets in
            let buffers = pointers.map { $0!.assumingMemoryBound(to: UInt16.self) }
            let first = buffers[0], replicas = buffers.count
            let part = offsets[rank]..<offsets[rank + 1]
            if wire == .bfloat16 {
                for i in part {
                    var total = first[i]
                    for r in 1..<replicas { total = GradientWire.bfloat16Bits(GradientWire.bfloat16Value(total) + GradientWire.bfloat16Value(buffers[r][i])) }
                    buffer[i] = total
                }
            } else {
                for i in part {
                    var total = first[i]
                    for r in 1..<replicas { total = GradientWire.float16Bits(GradientWire.float16Value(total) + GradientWire.float16Value(buffers[r][i])) }
                    buffer[i] = total
                }
            }
        }
    }

    /// Runs when waited for (or tested), as the in-process allreduces do.
    public func startReduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> any CollectiveRequest {
        DeferredRequest { try self.reduceScatter(buffer, counts: counts) }
    }

    public func startReduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws -> any CollectiveRequest {
        DeferredRequest { try self.reduceScatter(buffer, counts: counts, wire: wire) }
    }

    public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        if size == 1 { return }
        try exchangeParts(UnsafeMutableRawPointer(buffer), counts: counts, "allgather") { pointers, offsets in
            for q in 0..<size where q != rank && counts[q] > 0 {
                let source = pointers[q]!.assumingMemoryBound(to: Float.self)
                (buffer + offsets[q]).update(from: source + offsets[q], count: counts[q])
            }
        }
    }

    public func gather(_ part: UnsafePointer<Float>, counts: [Int], into buffer: UnsafeMutablePointer<Float>?, root: Int) throws {
        precondition(rank != root || buffer != nil, "the root needs a buffer to gather into")
        if size == 1 {
            if let buffer { buffer.update(from: part, count: counts[0]) }
            return
        }
        try exchangeParts(UnsafeMutableRawPointer(mutating: part), counts: counts, "gather") { pointers, offsets in
            guard rank == root, let buffer else { return }
            for q in 0..<size where counts[q] > 0 {
                (buffer + offsets[q]).update(from: pointers[q]!.assumingMemoryBound(to: Float.self), count: counts[q])
            }
        }
    }
}

/// What a replica posts for `reduceScatter(_:counts:posting:afterSum:)`: its parts and scalars, and the values its
/// `afterSum` returned (written by its own thread only, read by the others after the exchange).
private final class StepScalars: @unchecked Sendable {
    let counts: [Int]
    let scalars: [Double]
    let skipsAfterSum: Bool
    var results: [Double] = []
    init(counts: [Int], scalars: [Double], skipsAfterSum: Bool = false) {
        (self.counts, self.scalars, self.skipsAfterSum) = (counts, scalars, skipsAfterSum)
    }
}

/// An in-process allreduce that runs when first waited for or tested.
final class DeferredRequest: CollectiveRequest {
    private var work: (() throws -> Void)?
    init(_ work: @escaping () throws -> Void) { self.work = work }

    func wait() throws {
        guard let work else { return }
        self.work = nil
        try work()
    }

    @discardableResult
    func test() throws -> Bool {
        try wait()
        return true
    }
}

/// Results written by several threads.
private final class ThreadResults<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<T, any Error>?]
    init(count: Int) { results = Array(repeating: nil, count: count) }
    func set(_ r: Int, _ result: Result<T, any Error>) { lock.withLock { results[r] = result } }
    var all: [Result<T, any Error>] {
        lock.withLock { results.map { $0 ?? .failure(ReplicaFailure(rank: -1, message: "a replica's thread left no result")) } }
    }
}

/// Hands a value to another thread; the caller guarantees the threads do not race on it.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// STARLING_REPLICA_BIND set to something other than 1 or 0.
public struct ReplicaBindError: Error, Equatable, CustomStringConvertible {
    public let value: String
    public init(value: String) { self.value = value }
    public var description: String { "STARLING_REPLICA_BIND=\(value): expected 1 (bind each replica's thread to a processor) or 0 (leave them to the scheduler)" }
}

/// STARLING_REPLICA_SPIN_US set to something that is not a number of microseconds from 0 to 1,000,000.
public struct ReplicaSpinError: Error, Equatable, CustomStringConvertible {
    public let value: String
    public init(value: String) { self.value = value }
    public var description: String { "STARLING_REPLICA_SPIN_US=\(value): expected microseconds from 0 to 1000000" }
}
