/// The collectives training uses, over whatever joins the replicas of a model: MPI ranks (`Communicator`) or threads
/// of one process (`InProcessCollective`). The trainer, `GradientSynchronizer`, `CrossReplica` (SSD's global counts,
/// synchronised batch norm), `RunAgreement` and the watchdog see only this.
///
/// The contract is MPI's: every member calls the same collectives in the same order with the same counts; a sum gives
/// every member the same bits; members are numbered 0..<size and member 0 (the root) prints and writes.
public protocol Collective: AnyObject, Sendable {
    var rank: Int { get }
    var size: Int { get }
    /// Told about every blocking collective this member enters and leaves (the watchdog); nil: nobody watches.
    var observer: (any CollectiveObserver)? { get set }
    /// In-place allreduce of `count` floats.
    func allreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, _ op: CollectiveOperation) throws
    /// In-place allreduce of a few doubles (losses, counts, metrics).
    func allreduce(_ values: inout [Double], _ op: CollectiveOperation) throws
    /// In-place sum of `count` 16-bit floats of `wire` (bf16 or fp16): widened, added in float32, rounded back.
    func allreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws
    /// Starts an in-place sum of `count` floats; the buffer must stay untouched until the request completes.
    func startAllreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws -> any CollectiveRequest
    /// Starts an in-place sum of `count` 16-bit floats of `wire`.
    func startAllreduce(_ buffer: UnsafeMutablePointer<UInt16>, count: Int, wire: GradientWire) throws -> any CollectiveRequest
    /// Starts an in-place allreduce of a few doubles; `values` must stay alive and untouched until it completes.
    func startAllreduce(_ values: UnsafeMutablePointer<Double>, count: Int, _ op: CollectiveOperation) throws -> any CollectiveRequest
    /// Copies `count` floats from `root` to every member.
    func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws
    /// Root's text on every member.
    func broadcast(_ text: String, root: Int) throws -> String
    func barrier() throws
    /// Every member's `values` (the same count on each), concatenated in member order.
    func allgather(_ values: [Double]) throws -> [Double]
    /// Every member's `values` (the same count on each), concatenated in member order.
    func allgather(_ values: [Int64]) throws -> [Int64]
    /// Every member's text, in member order (a default below; MPI sends bytes).
    func allgatherText(_ text: String) throws -> [String]
    /// Ends the whole job with `code` (every rank, or every replica's process): for failures inside a pass that cannot
    /// throw (a forward pass's statistics), where the other members would otherwise wait forever.
    func abort(code: Int32) -> Never
}

/// A reduction of `Collective.allreduce`.
public enum CollectiveOperation: Sendable { case sum, max, min }

/// A collective in flight (`Collective.startAllreduce`).
public protocol CollectiveRequest: AnyObject {
    /// Completes the request.
    func wait() throws
    /// Lets it make progress; true once complete.
    @discardableResult
    func test() throws -> Bool
}

extension Collective {
    public var isRoot: Bool { rank == 0 }

    public func allreduce(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws { try allreduce(buffer, count: count, .sum) }
    public func allreduce(_ values: inout [Double]) throws { try allreduce(&values, .sum) }

    public func allreduce(_ value: Double, _ op: CollectiveOperation = .sum) throws -> Double {
        var v = [value]
        try allreduce(&v, op)
        return v[0]
    }

    /// In-place allreduce then division by the number of members.
    public func allreduceAverage(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        if size == 1 { return }
        try allreduce(buffer, count: count, .sum)
        let scale = 1 / Float(size)
        for i in 0..<count { buffer[i] *= scale }
    }

    public func startAllreduce(_ values: UnsafeMutablePointer<Double>, count: Int) throws -> any CollectiveRequest {
        try startAllreduce(values, count: count, .sum)
    }

    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws { try broadcast(buffer, count: count, root: 0) }
    public func broadcast(_ text: String) throws -> String { try broadcast(text, root: 0) }

    /// Every member's value, in member order.
    public func allgather(_ value: Int64) throws -> [Int64] { try allgather([value]) }

    /// Every member's text, in member order: the lengths first, then the bytes padded to the longest, so both
    /// collectives have the same size on every member whatever the texts are.
    public func allgatherText(_ text: String) throws -> [String] {
        if size == 1 { return [text] }
        let bytes = Array(text.utf8)
        let lengths = try allgather(Int64(bytes.count))
        let width = Int(lengths.max() ?? 0)
        guard width > 0 else { return lengths.map { _ in "" } }
        // Eight bytes a value: the texts travel as Int64s, which every collective here carries.
        let words = (width + 7) / 8
        var packed = [Int64](repeating: 0, count: words)
        packed.withUnsafeMutableBytes { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let all = try allgather(packed)
        return (0..<size).map { member in
            all[(member * words)..<((member + 1) * words)].withUnsafeBytes { raw in
                String(decoding: raw.prefix(Int(lengths[member])), as: UTF8.self)
            }
        }
    }
}

/// ZeRO's collectives over a buffer split into members' parts (`--shard-optimizer`): a buffer of sum(counts) elements
/// holds member 0's part, then member 1's, and so on, in member order; a part may be empty. MPI ranks
/// (`Communicator`) and replicas on threads (`InProcessCollective`) both carry them, with the same results.
public protocol ShardingCollective: Collective {
    /// Sum reduce-scatter in place: on return this member's part of `buffer` (laid out by `counts`, one a member)
    /// holds the sum of that part over every member; the other members' parts are left undefined.
    func reduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws
    /// Starts `reduceScatter`; the buffer must stay untouched until the request completes.
    func startReduceScatter(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws -> any CollectiveRequest
    /// `reduceScatter` of 16-bit floats of `wire` (bf16 or fp16), summed as `allreduce(_:count:wire:)` sums them.
    func reduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws
    /// Starts the 16-bit `reduceScatter`; the buffer must stay untouched until the request completes.
    func startReduceScatter(_ buffer: UnsafeMutablePointer<UInt16>, counts: [Int], wire: GradientWire) throws -> any CollectiveRequest
    /// Allgather in place: every member's part of `buffer` (laid out by `counts`) goes to every member, so each ends
    /// with the whole buffer.
    func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws
    /// Gathers every member's part (laid out by `counts`) into `root`'s `buffer` of sum(counts) floats; `part` is this
    /// member's counts[rank] floats, `buffer` is read only on `root` (nil elsewhere).
    func gather(_ part: UnsafePointer<Float>, counts: [Int], into buffer: UnsafeMutablePointer<Float>?, root: Int) throws
}
