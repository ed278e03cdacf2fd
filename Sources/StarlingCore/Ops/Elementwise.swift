#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Elementwise arithmetic with forward and backward side by side.
/// Binary ops take two tensors of the same shape, or a right-hand side whose shape is a suffix of the left
/// one's (a bias [C] over [B, C]) or a single element; the broadcast side's gradient is summed back.
extension Tensor {
    /// A unary op: `forward(n, x, y)` fills y; `backward(n, x, y, dy, dx)` accumulates into dx.
    public func unary(_ forward: (Int, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void,
                      backward: @escaping (Int, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> Void) -> Tensor {
        let x = self
        // `forward` writes every output element.
        // Both closures are element by element, so they run over the process's threads in aligned ranges (same bits).
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: count), inputs: [x]) { out in
            let (xp, yp, dy, dx) = (x.data, out.data, out.grad, x.grad)
            Parallel.forEachAlignedChunk(of: x.count) { r in
                backward(r.count, xp + r.lowerBound, yp + r.lowerBound, dy + r.lowerBound, dx + r.lowerBound)
            }
        }
        let (xp, yp) = (x.data, out.data)
        Parallel.forEachAlignedChunk(of: count) { r in forward(r.count, xp + r.lowerBound, yp + r.lowerBound) }
        return out
    }

    private enum BinaryOp { case add, sub, mul, div }

    private func binary(_ other: Tensor, _ op: BinaryOp) -> Tensor {
        let a = self, b = other
        let n = a.count, m = b.count
        precondition(a.shape == b.shape || m == 1 || (b.rank <= a.rank && Array(a.shape.suffix(b.rank)) == b.shape),
                     "cannot broadcast \(b.shape) onto \(a.shape)")
        precondition(m > 0 || n == 0, "empty right-hand side")
        let out = Tensor.result(shape: a.shape, inputs: [a, b]) { out in
            let dy = out.grad, x = a.data, y = b.data
            if a.requiresGrad {
                let dx = a.grad
                Parallel.forEachAlignedChunk(of: n) { r in
                    switch op {
                    case .add, .sub: for i in r { dx[i] += dy[i] }
                    case .mul: for i in r { dx[i] += dy[i] * y[i % m] }
                    case .div: for i in r { dx[i] += dy[i] / y[i % m] }
                    }
                }
            }
            if b.requiresGrad {
                let db = b.grad
                switch op {
                case .add: for i in 0..<n { db[i % m] += dy[i] }
                case .sub: for i in 0..<n { db[i % m] -= dy[i] }
                case .mul: for i in 0..<n { db[i % m] += dy[i] * x[i] }
                case .div: for i in 0..<n { let v = y[i % m]; db[i % m] -= dy[i] * x[i] / (v * v) }
                }
            }
        }
        let x = a.data, y = b.data, z = out.data
        if m == n {
            Parallel.forEachAlignedChunk(of: n) { r in
                let (x, y, z, n) = (x + r.lowerBound, y + r.lowerBound, z + r.lowerBound, r.count)
                switch op {
                case .add: for i in 0..<n { z[i] = x[i] + y[i] }
                case .sub: for i in 0..<n { z[i] = x[i] - y[i] }
                case .mul: for i in 0..<n { z[i] = x[i] * y[i] }
                case .div: for i in 0..<n { z[i] = x[i] / y[i] }
                }
            }
        } else {
            // Broadcast rows of m, shared out row by row.
            Parallel.forEachChunk(of: n / m, work: n >= Parallel.minimumElementwiseWork ? n : 0) { rows in
            for start in stride(from: rows.lowerBound * m, to: rows.upperBound * m, by: m) {
                let xs = x + start, zs = z + start
                switch op {
                case .add: for j in 0..<m { zs[j] = xs[j] + y[j] }
                case .sub: for j in 0..<m { zs[j] = xs[j] - y[j] }
                case .mul: for j in 0..<m { zs[j] = xs[j] * y[j] }
                case .div: for j in 0..<m { zs[j] = xs[j] / y[j] }
                }
            }
            }
        }
        return out
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor { a.binary(b, .add) }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.binary(b, .sub) }
    public static func * (a: Tensor, b: Tensor) -> Tensor { a.binary(b, .mul) }
    public static func / (a: Tensor, b: Tensor) -> Tensor { a.binary(b, .div) }

    /// x * scale + shift with constants.
    public func affine(scale: Float, shift: Float = 0) -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = x[i] * scale + shift } },
              backward: { n, _, _, dy, dx in for i in 0..<n { dx[i] += dy[i] * scale } })
    }
    public static func * (a: Tensor, s: Float) -> Tensor { a.affine(scale: s) }
    public static func + (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: s) }
    public static prefix func - (a: Tensor) -> Tensor { a.affine(scale: -1) }

    public func exp() -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = expf(x[i]) } },
              backward: { n, _, y, dy, dx in for i in 0..<n { dx[i] += dy[i] * y[i] } })
    }

    public func log() -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = logf(x[i]) } },
              backward: { n, x, _, dy, dx in for i in 0..<n { dx[i] += dy[i] / x[i] } })
    }

    public func sqrt() -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = x[i].squareRoot() } },
              backward: { n, _, y, dy, dx in for i in 0..<n { dx[i] += dy[i] * 0.5 / y[i] } })
    }

    public func square() -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = x[i] * x[i] } },
              backward: { n, x, _, dy, dx in for i in 0..<n { dx[i] += dy[i] * 2 * x[i] } })
    }

    /// min(max(x, low), high); the gradient passes where the value was not clamped.
    public func clamp(_ low: Float, _ high: Float) -> Tensor {
        precondition(low <= high, "clamp range [\(low), \(high)]")
        return unary({ n, x, y in for i in 0..<n { y[i] = Swift.min(Swift.max(x[i], low), high) } },
                     backward: { n, x, _, dy, dx in
                         for i in 0..<n { let g = dy[i], v = x[i]; dx[i] += v >= low && v <= high ? g : 0 }
                     })
    }
}

/// Reductions.
extension Tensor {
    /// Sum of all elements, as a one-element tensor.
    public func sum() -> Tensor {
        let x = self
        let out = Tensor.result(shape: [1], inputs: [x]) { out in
            let g = out.grad[0], dx = x.grad
            for i in 0..<x.count { dx[i] += g }
        }
        var acc = 0.0
        let p = x.data
        // Double accumulation over blocks keeps large sums exact enough for loss reporting.
        var i = 0
        while i < count { let len = Swift.min(4096, count - i); acc += Double(VectorMath.sum(len, p + i)); i += len }
        out.data[0] = Float(acc)
        return out
    }

    public func mean() -> Tensor { sum() * (1 / Float(Swift.max(count, 1))) }

    /// The same values with another shape (a copy; the graph passes the gradient straight through); the tensor itself when
    /// the shape is its own.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let k = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != k }.reduce(1) { $0 * $1.element }
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            s[k] = count / known
        }
        precondition(Tensor.elementCount(s) == count, "cannot reshape \(shape) to \(newShape)")
        // The same shape: the tensor itself, not a copy whose gradient is zeroed and added back (the fully connected
        // autoencoders' logits, [N, 784] "reshaped" to the images' [N, 784]: 800 KB copied, zeroed and added a step).
        if s == shape { return self }
        let x = self
        let out = Tensor.result(shape: s, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            for i in 0..<x.count { dx[i] += dy[i] }
        }
        out.data.update(from: x.data, count: count)
        return out
    }
}
