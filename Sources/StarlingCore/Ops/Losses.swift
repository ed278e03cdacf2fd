/// Loss functions returning one-element tensors, each with its gradient written out by hand.
extension Tensor {
    /// Binary cross-entropy on logits, mean over all elements:
    /// max(z, 0) - z t + log(1 + e^-|z|), the stable form; d/dz = sigmoid(z) - t.
    /// Identical in value to sigmoid followed by `binaryCrossEntropy`, without its overflow at large |z|.
    public func binaryCrossEntropy(logits targets: Tensor) -> Tensor {
        let z = self
        precondition(z.shape == targets.shape, "BCE logits \(z.shape) vs targets \(targets.shape)")
        let n = z.count
        let probabilities = FloatStorage(uninitializedCount: n)   // kept for backward: sigmoid(z), every element written below
        let out = Tensor.result(shape: [1], inputs: [z, targets]) { out in
            let g = out.grad[0] / Float(n), p = probabilities.pointer, t = targets.data
            if z.requiresGrad {
                if let dz = z.gradientAdopting(probabilities) {
                    Parallel.forEachAlignedChunk(of: n, work: 3 * n) { r in for i in r { dz[i] += g * (p[i] - t[i]) } }
                } else {
                    // Usually the logits' only user: the sigmoid, read here for the last time, becomes their gradient in
                    // place (a kernel of the wider builds), instead of a fresh buffer written from it (fc-ae: 784 KB a
                    // step less to allocate, fault into the cache and write). The same bits.
                    Parallel.forEachAlignedChunk(of: n, work: 3 * n) { r in
                        KernelDispatch.bceLogitsGradient(r.count, probabilities: p + r.lowerBound, targets: t + r.lowerBound, scale: g)
                    }
                }
            }
            // d/dt = -z: targets are data here, but a model's own output may be a target.
            if targets.requiresGrad { let dt = targets.grad, zp = z.data; for i in 0..<n { dt[i] -= g * zp[i] } }
        }
        out.data[0] = Float(bceLogitsSum(n, z.data, targets.data, probabilities.pointer) / Double(max(n, 1)))
        return out
    }

    /// Mean squared error over all elements.
    public func meanSquaredError(_ targets: Tensor) -> Tensor {
        let y = self
        precondition(y.shape == targets.shape, "MSE \(y.shape) vs targets \(targets.shape)")
        let n = y.count
        let out = Tensor.result(shape: [1], inputs: [y, targets]) { out in
            let g = 2 * out.grad[0] / Float(n), a = y.data, b = targets.data
            if y.requiresGrad { let d = y.grad; for i in 0..<n { d[i] += g * (a[i] - b[i]) } }
            if targets.requiresGrad { let d = targets.grad; for i in 0..<n { d[i] -= g * (a[i] - b[i]) } }
        }
        var acc = 0.0
        let a = y.data, b = targets.data
        for i in 0..<n { let d = Double(a[i] - b[i]); acc += d * d }
        out.data[0] = Float(acc / Double(max(n, 1)))
        return out
    }
}

/// Sum over i of the stable BCE on logits; writes sigmoid(z) to `p`. Runs on every pixel of every autoencoder
/// batch (`LossKernels.bceLogitsSum`).
/// Large batches are summed in fixed pieces of `bceSumPiece` over the process's threads, the pieces' sums added in
/// order: the same bits for any thread count.
func bceLogitsSum(_ n: Int, _ z: UnsafePointer<Float>, _ t: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>,
                  kernels: KernelDispatch.Level = KernelDispatch.current) -> Double {
    let pieces = (n + bceSumPiece - 1) / bceSumPiece
    if pieces <= 1 { return KernelDispatch.bceLogitsSum(n, logits: z, targets: t, probabilities: p, kernels: kernels) }
    var sums = [Double](repeating: 0, count: pieces)
    sums.withUnsafeMutableBufferPointer { sums in
        let sums = sums.baseAddress!
        Parallel.forEachChunk(of: pieces, work: 3 * n >= Parallel.minimumElementwiseWork ? 3 * n : 0) { range in
            for piece in range {
                let start = piece * bceSumPiece, count = Swift.min(bceSumPiece, n - start)
                sums[piece] = KernelDispatch.bceLogitsSum(count, logits: z + start, targets: t + start, probabilities: p + start,
                                                          kernels: kernels)
            }
        }
    }
    return sums.reduce(0, +)
}

/// Elements in one piece of `bceLogitsSum` (a multiple of the kernels' vector width).
let bceSumPiece = 1 << 15
