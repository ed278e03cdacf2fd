/// Pointwise activations, forward and backward side by side.
extension Tensor {
    public func relu() -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = x[i] > 0 ? x[i] : 0 } },
              backward: { n, x, _, dy, dx in
                  // Every load unconditional: a load behind a branch stops LLVM from vectorising the loop.
                  for i in 0..<n { let g = dy[i], v = x[i]; dx[i] += v > 0 ? g : 0 }
              })
    }

    /// 1 / (1 + e^-x), computed from e^-|x| so it never overflows.
    public func sigmoid() -> Tensor {
        unary({ n, x, y in sigmoidForward(n, x, y) },
              backward: { n, _, y, dy, dx in for i in 0..<n { dx[i] += dy[i] * y[i] * (1 - y[i]) } })
    }

    public func tanh() -> Tensor {
        // tanh(x) = 2 sigmoid(2x) - 1
        unary({ n, x, y in
            for i in 0..<n { y[i] = 2 * x[i] }
            sigmoidForward(n, y, y)
            for i in 0..<n { y[i] = 2 * y[i] - 1 }
        }, backward: { n, _, y, dy, dx in for i in 0..<n { dx[i] += dy[i] * (1 - y[i] * y[i]) } })
    }
}

/// y = sigmoid(x); x and y may alias. A plain loop over VectorMath.sigmoid, which LLVM vectorises.
@inline(__always)
func sigmoidForward(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    for i in 0..<n { y[i] = VectorMath.sigmoid(x[i]) }
}
