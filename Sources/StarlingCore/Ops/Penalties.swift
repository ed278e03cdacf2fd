/// Weight penalties with Keras's regularizer semantics: the penalty is added to the loss as is, with no
/// factor 1/2 and no division by the batch size. Each returns a one-element tensor.
extension Tensor {
    /// scale * sum |x| (Keras `L1(l1=scale)`). The gradient scale * sign(x) is taken as 0 at x = 0.
    public func l1Penalty(_ scale: Float) -> Tensor {
        let x = self
        let out = Tensor.result(shape: [1], inputs: [x]) { out in
            let g = out.grad[0] * scale, xp = x.data, dx = x.grad
            for i in 0..<x.count { dx[i] += xp[i] > 0 ? g : (xp[i] < 0 ? -g : 0) }
        }
        let xp = x.data
        var total = 0.0
        for i in 0..<count { total += Double(abs(xp[i])) }
        out.data[0] = Float(Double(scale) * total)
        return out
    }

    /// scale * sum x^2 (Keras `L2(l2=scale)`; note: not scale / 2, so the gradient is 2 scale x).
    public func l2Penalty(_ scale: Float) -> Tensor {
        let x = self
        let out = Tensor.result(shape: [1], inputs: [x]) { out in
            let g = 2 * out.grad[0] * scale, xp = x.data, dx = x.grad
            for i in 0..<x.count { dx[i] += g * xp[i] }
        }
        let xp = x.data
        var total = 0.0
        for i in 0..<count { let v = Double(xp[i]); total += v * v }
        out.data[0] = Float(Double(scale) * total)
        return out
    }
}
