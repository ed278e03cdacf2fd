extension Tensor {
    /// Mask R-CNN's per-class mask term before normalisation (K. He et al., "Mask R-CNN", ICCV 2017, section 3:
    /// "L_mask is defined only on the k-th mask", k the RoI's class): for mask logits [R, K, M, M] and each RoI's
    /// class, the sum over the RoIs and the M x M pixels of the binary cross-entropy between channel `classes[r]` and
    /// `targets` [R, M, M] (0 or 1). The other channels get no gradient, so classes do not compete. The stable form
    /// max(z, 0) - z t + log(1 + e^-|z|); d/dz = sigmoid(z) - t on the chosen channel.
    public func selectedChannelBCESum(classes: [Int32], targets: Tensor) -> Tensor {
        precondition(rank == 4 && shape[0] == classes.count && targets.shape == [shape[0], shape[2], shape[3]],
                     "selected-channel BCE: logits \(shape), \(classes.count) classes, targets \(targets.shape)")
        let (r, k, plane) = (shape[0], shape[1], shape[2] * shape[3])
        precondition(classes.allSatisfy { $0 >= 0 && Int($0) < k }, "selected-channel BCE: a class outside 0..<\(k)")
        let z = self
        let probabilities = FloatStorage(count: r * plane)   // sigmoid of the chosen channels, kept for backward
        let out = Tensor.result(shape: [1], inputs: [z]) { out in
            let g = out.grad[0], p = probabilities.pointer, t = targets.data, dz = z.grad
            for i in 0..<r {
                let channel = dz + (i * k + Int(classes[i])) * plane, pi = p + i * plane, ti = t + i * plane
                for j in 0..<plane { channel[j] += g * (pi[j] - ti[j]) }
            }
        }
        var total = 0.0
        let zd = z.data, t = targets.data, p = probabilities.pointer
        for i in 0..<r {
            let channel = zd + (i * k + Int(classes[i])) * plane
            total += bceLogitsSum(plane, channel, t + i * plane, p + i * plane)
        }
        out.data[0] = Float(total)
        return out
    }
}
