/// ELU and leaky ReLU, forward and backward side by side (softmax has its own file).
extension Tensor {
    /// x for x > 0, alpha (e^x - 1) otherwise (Clevert et al. 2016). The derivative for x <= 0 is
    /// alpha e^x = y + alpha, read from the output.
    public func elu(alpha: Float = 1) -> Tensor {
        unary({ n, x, y in KernelDispatch.elu(n, x, y, alpha: alpha) }, backward: { n, x, y, dy, dx in
            // Loads before the select so that the loop vectorises: the derivative is 1 for x > 0 and y + alpha otherwise.
            for i in 0..<n {
                let v = x[i], out = y[i]
                let slope: Float = v > 0 ? 1 : out + alpha
                dx[i] += dy[i] * slope
            }
        })
    }

    /// x for x > 0, slope x otherwise. The default slope 0.3 is Keras's `LeakyReLU` default (PyTorch uses 0.01).
    public func leakyRelu(slope: Float = 0.3) -> Tensor {
        unary({ n, x, y in for i in 0..<n { y[i] = x[i] > 0 ? x[i] : slope * x[i] } },
              backward: { n, x, _, dy, dx in for i in 0..<n { let g = dy[i], v = x[i]; dx[i] += v > 0 ? g : slope * g } })
    }
}
