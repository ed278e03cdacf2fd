/// A fixed-size block of Float32 memory, owned or borrowed from a parent block.
///
/// Parameters and gradients live in one allocation each (see `ParameterStore`); a parameter tensor is
/// a view into that allocation, so an allreduce or a checkpoint touches a single contiguous buffer.
public final class FloatStorage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    /// The storage this one is a view of; held so the parent outlives every view.
    private let parent: FloatStorage?

    /// A new zero-filled block of `count` floats, 64-byte aligned for vector loads.
    public init(count: Int) {
        precondition(count >= 0, "negative storage size")
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
        pointer = raw.assumingMemoryBound(to: Float.self)
        self.count = count
        parent = nil
    }

    /// A view of `count` floats of `parent` starting at `offset`.
    public init(viewOf parent: FloatStorage, offset: Int, count: Int) {
        precondition(offset >= 0 && offset + count <= parent.count, "view out of bounds")
        pointer = parent.pointer + offset
        self.count = count
        self.parent = parent
    }

    deinit {
        if parent == nil { UnsafeMutableRawPointer(pointer).deallocate() }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: pointer, count: count) }

    public func zero() { pointer.update(repeating: 0, count: count) }
    public func copy(from other: FloatStorage) {
        precondition(other.count == count, "copy between storages of different size")
        pointer.update(from: other.pointer, count: count)
    }
    public func toArray() -> [Float] { Array(buffer) }
}
