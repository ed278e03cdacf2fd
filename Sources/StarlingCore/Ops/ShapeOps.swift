/// Shape ops: concatenation, splitting, slicing and axis permutation, forward and backward side by side.
///
/// Tensors are always contiguous, so each op copies; each backward is the same copy in the other direction,
/// accumulated. Axes may be negative and count from the end (-1 is the last axis).
extension Tensor {
    /// A row-major tensor seen around one axis: `outer` blocks of `length` slabs of `inner` contiguous floats.
    struct AxisLayout {
        let axis: Int
        let outer: Int
        let length: Int
        let inner: Int
    }

    /// Resolves a possibly negative axis against the rank.
    func resolvedAxis(_ axis: Int) -> Int {
        let a = axis < 0 ? axis + rank : axis
        precondition(a >= 0 && a < rank, "axis \(axis) of a tensor of shape \(shape)")
        return a
    }

    func axisLayout(_ axis: Int) -> AxisLayout {
        let a = resolvedAxis(axis)
        return AxisLayout(axis: a, outer: shape[..<a].reduce(1, *), length: shape[a],
                          inner: shape[(a + 1)...].reduce(1, *))
    }

    /// Joins tensors along `axis`; all other dimensions must agree (Keras's `Concatenate`, U-Net's skip joins).
    public static func concat(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concat of no tensors")
        let first = tensors[0]
        let a = first.resolvedAxis(axis)
        var shape = first.shape
        shape[a] = 0
        for t in tensors {
            precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == a || t.shape[$0] == first.shape[$0] },
                         "concat along axis \(a) of \(t.shape) with \(first.shape)")
            shape[a] += t.shape[a]
        }
        let outer = shape[..<a].reduce(1, *), inner = shape[(a + 1)...].reduce(1, *)
        let outBlock = shape[a] * inner   // floats per outer index in the result
        let out = Tensor.result(shape: shape, inputs: tensors) { out in
            let dy = out.grad
            var offset = 0
            for t in tensors {
                let block = t.shape[a] * inner
                if t.requiresGrad {
                    let dx = t.grad
                    for o in 0..<outer { accumulate(block, from: dy + o * outBlock + offset, into: dx + o * block) }
                }
                offset += block
            }
        }
        let y = out.data
        var offset = 0
        for t in tensors {
            let block = t.shape[a] * inner, x = t.data
            for o in 0..<outer { (y + o * outBlock + offset).update(from: x + o * block, count: block) }
            offset += block
        }
        return out
    }

    /// The indices start..<end along `axis`.
    public func slice(axis: Int, start: Int, end: Int) -> Tensor {
        let layout = axisLayout(axis)
        precondition(start >= 0 && start <= end && end <= layout.length,
                     "slice \(start)..<\(end) of axis \(layout.axis) in \(shape)")
        var outShape = shape
        outShape[layout.axis] = end - start
        let inBlock = layout.length * layout.inner, outBlock = (end - start) * layout.inner
        let skip = start * layout.inner, outer = layout.outer
        let x = self
        let out = Tensor.result(shape: outShape, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for o in 0..<outer { accumulate(outBlock, from: dy + o * outBlock, into: dx + o * inBlock + skip) }
        }
        let y = out.data, xp = x.data
        for o in 0..<outer { (y + o * outBlock).update(from: xp + o * inBlock + skip, count: outBlock) }
        return out
    }

    /// Consecutive pieces of the given sizes along `axis` (the inverse of `concat`); the sizes must add up
    /// to the axis length. Each piece is its own graph node, so unused pieces cost nothing in backward.
    public func split(sizes: [Int], axis: Int) -> [Tensor] {
        let a = resolvedAxis(axis)
        precondition(sizes.allSatisfy { $0 >= 0 } && sizes.reduce(0, +) == shape[a],
                     "split sizes \(sizes) of axis \(a) in \(shape)")
        var start = 0
        return sizes.map { size in
            defer { start += size }
            return slice(axis: a, start: start, end: start + size)
        }
    }

    /// The axes rearranged: result axis i is input axis `permutation[i]` (NumPy's `transpose(axes)`), e.g.
    /// [0, 2, 3, 1] turns NCHW into NHWC.
    public func transposed(_ permutation: [Int]) -> Tensor {
        precondition(permutation.count == rank && Set(permutation) == Set(0..<rank),
                     "permutation \(permutation) of a rank-\(rank) tensor")
        var inverse = permutation
        for (i, p) in permutation.enumerated() { inverse[p] = i }
        let outShape = permutation.map { shape[$0] }
        let x = self
        let out = Tensor.result(shape: outShape, inputs: [x]) { out in
            // The inverse permutation of the result's gradient is the input's gradient.
            permute(out.grad, shape: outShape, permutation: inverse, into: x.grad, accumulate: true)
        }
        permute(x.data, shape: shape, permutation: permutation, into: out.data, accumulate: false)
        return out
    }
}

/// into[i] += from[i] for n floats.
@inline(__always)
private func accumulate(_ n: Int, from: UnsafePointer<Float>, into: UnsafeMutablePointer<Float>) {
    for i in 0..<n { into[i] += from[i] }
}

/// Writes (or adds) the axis permutation of `source` (of `shape`) into `destination`, walking the
/// destination in order: one row of its last axis at a time, reading the source with that axis's stride.
private func permute(_ source: UnsafePointer<Float>, shape: [Int], permutation: [Int],
                     into destination: UnsafeMutablePointer<Float>, accumulate: Bool) {
    let rank = shape.count
    let total = shape.reduce(1, *)
    if total == 0 { return }
    if rank == 0 {
        destination[0] = accumulate ? destination[0] + source[0] : source[0]
        return
    }
    var sourceStrides = [Int](repeating: 1, count: rank)
    for k in stride(from: rank - 2, through: 0, by: -1) { sourceStrides[k] = sourceStrides[k + 1] * shape[k + 1] }
    let outShape = permutation.map { shape[$0] }
    let step = permutation.map { sourceStrides[$0] }   // source stride of one step along each destination axis
    let rowLength = outShape[rank - 1], rowStride = step[rank - 1]
    var index = [Int](repeating: 0, count: rank)        // destination index of the current row (last entry unused)
    var base = 0                                        // source offset of the current row's first element
    for row in 0..<(total / rowLength) {
        let d = destination + row * rowLength, s = source + base
        if accumulate {
            for j in 0..<rowLength { d[j] += s[j &* rowStride] }
        } else {
            for j in 0..<rowLength { d[j] = s[j &* rowStride] }
        }
        // Advance the destination index like an odometer over all axes but the last.
        var k = rank - 2
        while k >= 0 {
            index[k] += 1
            base += step[k]
            if index[k] < outShape[k] { break }
            base -= step[k] * outShape[k]
            index[k] = 0
            k -= 1
        }
    }
}
