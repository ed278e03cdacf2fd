/// Inverted dropout (Srivastava et al. 2014), forward and backward side by side.
extension Tensor {
    /// At training time zeroes each element with probability `rate` and scales the survivors by
    /// 1 / (1 - rate), so that the expected value is unchanged and evaluation needs no rescaling (Keras's
    /// `Dropout`). Out of training, or at rate 0, it is the identity and returns `self` without drawing
    /// from `rng`.
    ///
    /// The mask is drawn element by element in order from `rng` (one `uniform()` each, kept when >= rate), so
    /// the same generator state gives the same mask. The mask is kept for backward: dx = dy * mask.
    public func dropout(rate: Float, rng: inout RandomGenerator, training: Bool) -> Tensor {
        precondition(rate >= 0 && rate < 1, "dropout rate \(rate) outside [0, 1)")
        guard training && rate > 0 else { return self }
        let keptScale = 1 / (1 - rate)
        let mask = FloatStorage(count: count)   // 0 or 1 / (1 - rate)
        defer { withExtendedLifetime(mask) {} }   // read below even when no graph keeps it
        let m = mask.pointer
        for i in 0..<count { m[i] = rng.uniform() >= rate ? keptScale : 0 }
        let x = self
        let out = Tensor.result(shape: shape, inputs: [x]) { out in
            let dy = out.grad, dx = x.grad, m = mask.pointer
            for i in 0..<x.count { dx[i] += dy[i] * m[i] }
        }
        let xp = x.data, y = out.data
        for i in 0..<count { y[i] = xp[i] * m[i] }
        return out
    }
}
