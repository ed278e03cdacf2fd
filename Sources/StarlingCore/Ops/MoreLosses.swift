#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// How a loss reduces its per-position values. A position is one element for the elementwise losses and the
/// Gaussian KLs, and one softmax row (a sample, a box, a pixel) for the softmax cross-entropies.
public enum LossReduction: Sendable {
    /// The mean over all positions: Keras's default ("sum over batch size" of per-position losses).
    case mean
    /// Each sample's positions summed, then the mean over the samples (axis 0): a VAE's per-image terms.
    case meanOfSampleSums
    /// The plain sum over all positions.
    case sum
    /// No reduction: one loss per position, for masking before reducing (e.g. SSD's hard negative mining).
    case unreduced
}

/// The gradient reaching each position of a loss: `upstream[i]` is d objective / d loss_i.
struct LossUpstream {
    let pointer: UnsafePointer<Float>
    let stride: Int   // 0 when all positions share the gradient of one reduced value
    @inline(__always) subscript(i: Int) -> Float { pointer[i &* stride] }
}

extension Tensor {
    /// A loss result from per-position values of the given shape. `backward` receives the upstream gradient
    /// of every position and accumulates into the inputs.
    static func lossResult(_ values: FloatStorage, positions shape: [Int], reduction: LossReduction,
                           inputs: [Tensor], backward: @escaping (LossUpstream) -> Void) -> Tensor {
        let factor: Float
        switch reduction {
        case .unreduced:
            return Tensor.result(shape: shape, storage: values, inputs: inputs) { out in
                backward(LossUpstream(pointer: out.grad, stride: 1))
            }
        case .mean: factor = 1 / Float(Swift.max(values.count, 1))
        case .meanOfSampleSums: factor = 1 / Float(Swift.max(shape.first ?? 1, 1))
        case .sum: factor = 1
        }
        let out = Tensor.result(shape: [1], inputs: inputs) { out in
            let shared = FloatStorage(count: 1)
            shared.pointer[0] = out.grad[0] * factor
            withExtendedLifetime(shared) { backward(LossUpstream(pointer: shared.pointer, stride: 0)) }
        }
        var total = 0.0
        let v = values.pointer
        for i in 0..<values.count { total += Double(v[i]) }
        out.data[0] = Float(total * Double(factor))
        return out
    }
}

// MARK: - Binary cross-entropy on probabilities

extension Tensor {
    /// The smallest and largest probability the log sees: Keras's `epsilon()` = 1e-7 and 1 - 1e-7.
    static let probabilityClip: (low: Float, high: Float) = (1e-7, 1 - 1e-7)

    /// -(t log p + (1 - t) log(1 - p)) per element on probabilities (e.g. a sigmoid output), with p clipped
    /// to [1e-7, 1 - 1e-7] first as Keras 3 does (Keras 2 also adds 1e-7 inside each log; the difference is
    /// below 1e-6 away from the clip). Mean over all elements by default; `.meanOfSampleSums` gives the
    /// per-image sum averaged over the batch used by VAEs.
    ///
    /// The gradient is d/dp = (p - t) / (p (1 - p)) where p lies inside the clip range (its ends included,
    /// as TensorFlow's `clip_by_value`) and 0 where p was clipped; d/dt = log(1 - p) - log p (clipped p).
    /// Prefer `binaryCrossEntropy(logits:)` when the logits are at hand: it has no clip and no flat gradient.
    public func binaryCrossEntropy(probabilities targets: Tensor, reduction: LossReduction = .mean) -> Tensor {
        let p = self
        precondition(p.shape == targets.shape, "BCE probabilities \(p.shape) vs targets \(targets.shape)")
        let n = p.count
        let (low, high) = Tensor.probabilityClip
        let losses = FloatStorage(count: n)
        let x = p.data, t = targets.data, l = losses.pointer
        for i in 0..<n {
            let v = x[i]
            let pc = v < low ? low : (v > high ? high : v)
            l[i] = -(t[i] * VectorMath.log(pc) + (1 - t[i]) * VectorMath.log(1 - pc))
        }
        return Tensor.lossResult(losses, positions: shape, reduction: reduction, inputs: [p, targets]) { g in
            let x = p.data, t = targets.data
            if p.requiresGrad {
                let dp = p.grad
                for i in 0..<n where x[i] >= low && x[i] <= high {
                    dp[i] += g[i] * (x[i] - t[i]) / (x[i] * (1 - x[i]))
                }
            }
            if targets.requiresGrad {
                let dt = targets.grad
                for i in 0..<n {
                    let pc = Swift.min(Swift.max(x[i], low), high)
                    dt[i] += g[i] * (logf(1 - pc) - logf(pc))
                }
            }
        }
    }
}

// MARK: - Softmax cross-entropy on logits

extension Tensor {
    /// -log softmax(z)[label] per position on logits, softmax along `axis` (default last: [batch, classes],
    /// [batch, boxes, classes]; axis 1 of [N, C, H, W] for per-pixel labels in N, H, W order). Mean over all
    /// positions by default (Keras's sparse categorical cross-entropy). The gradient is fused:
    /// d/dz = softmax(z) - onehot(label). Labels are checked to lie in 0..<C (loaders validate data first).
    public func softmaxCrossEntropy(labels: [Int32], axis: Int = -1, reduction: LossReduction = .mean) -> Tensor {
        let z = self, layout = axisLayout(axis)
        let (outer, length, inner) = (layout.outer, layout.length, layout.inner)
        precondition(labels.count == outer * inner,
                     "\(labels.count) labels for logits \(shape) along axis \(layout.axis)")
        precondition(labels.allSatisfy { $0 >= 0 && Int($0) < length }, "class label outside 0..<\(length)")
        let logProbabilities = FloatStorage(count: count)
        SoftmaxKernel.forward(layout, x: z.data, y: logProbabilities.pointer, log: true)
        let losses = FloatStorage(count: outer * inner)
        let lp = logProbabilities.pointer, l = losses.pointer
        for o in 0..<outer {
            for i in 0..<inner { l[o * inner + i] = -lp[(o * length + Int(labels[o * inner + i])) * inner + i] }
        }
        var positions = shape
        positions.remove(at: layout.axis)
        return Tensor.lossResult(losses, positions: positions, reduction: reduction, inputs: [z]) { g in
            let dz = z.grad, probabilities = FloatStorage(count: z.count), p = probabilities.pointer
            defer { withExtendedLifetime(probabilities) {} }
            SoftmaxKernel.exponentiate(z.count, logProbabilities.pointer, minus: 0, into: p)
            for o in 0..<outer {
                for c in 0..<length {
                    let start = (o * length + c) * inner
                    for i in 0..<inner { dz[start + i] += g[o * inner + i] * p[start + i] }
                }
                for i in 0..<inner { dz[(o * length + Int(labels[o * inner + i])) * inner + i] -= g[o * inner + i] }
            }
        }
    }

    /// `softmaxCrossEntropy(labels:)` with the class indices held in a tensor (e.g. a mask read from a file);
    /// each value must be a whole number in 0..<C.
    public func softmaxCrossEntropy(labels: Tensor, axis: Int = -1, reduction: LossReduction = .mean) -> Tensor {
        let v = labels.data
        let indices = (0..<labels.count).map { i -> Int32 in
            precondition(v[i] == v[i].rounded() && abs(v[i]) < 1e9, "class label \(v[i]) is not a whole number")
            return Int32(v[i])
        }
        return softmaxCrossEntropy(labels: indices, axis: axis, reduction: reduction)
    }

    /// -sum_c t_c log softmax(z)_c per position, with target distributions t (one-hot or soft labels) of the
    /// logits' shape: Keras's categorical cross-entropy from logits. Mean over all positions by default.
    /// d/dz = softmax(z) sum_c t_c - t (softmax - t for distributions); d/dt = -log softmax(z).
    public func softmaxCrossEntropy(targets: Tensor, axis: Int = -1, reduction: LossReduction = .mean) -> Tensor {
        let z = self, layout = axisLayout(axis)
        precondition(targets.shape == shape, "softmax cross-entropy logits \(shape) vs targets \(targets.shape)")
        let (outer, length, inner) = (layout.outer, layout.length, layout.inner)
        let logProbabilities = FloatStorage(count: count)
        SoftmaxKernel.forward(layout, x: z.data, y: logProbabilities.pointer, log: true)
        let losses = FloatStorage(count: outer * inner)
        let lp = logProbabilities.pointer, t = targets.data, l = losses.pointer
        for o in 0..<outer {
            let lo = l + o * inner
            for c in 0..<length {
                let start = (o * length + c) * inner
                for i in 0..<inner { lo[i] -= t[start + i] * lp[start + i] }
            }
        }
        var positions = shape
        positions.remove(at: layout.axis)
        return Tensor.lossResult(losses, positions: positions, reduction: reduction, inputs: [z, targets]) { g in
            let lp = logProbabilities.pointer, t = targets.data
            if z.requiresGrad {
                let dz = z.grad, mass = FloatStorage(count: inner), m = mass.pointer
                let probabilities = FloatStorage(count: z.count), p = probabilities.pointer
                defer { withExtendedLifetime((mass, probabilities)) {} }
                SoftmaxKernel.exponentiate(z.count, lp, minus: 0, into: p)
                for o in 0..<outer {
                    m.update(repeating: 0, count: inner)
                    for c in 0..<length {
                        let start = (o * length + c) * inner
                        for i in 0..<inner { m[i] += t[start + i] }
                    }
                    for c in 0..<length {
                        let start = (o * length + c) * inner
                        for i in 0..<inner {
                            dz[start + i] += g[o * inner + i] * (p[start + i] * m[i] - t[start + i])
                        }
                    }
                }
            }
            if targets.requiresGrad {
                let dt = targets.grad
                for o in 0..<outer {
                    for c in 0..<length {
                        let start = (o * length + c) * inner
                        for i in 0..<inner { dt[start + i] -= g[o * inner + i] * lp[start + i] }
                    }
                }
            }
        }
    }
}

// MARK: - Smooth L1

extension Tensor {
    /// Huber loss with delta 1 on d = x - target, as SSD's localisation loss: 0.5 d^2 where |d| < 1, else
    /// |d| - 0.5. Mean over all elements by default; SSD sums the box coordinates of the positive boxes and
    /// divides by their number, which `.unreduced` plus a mask expresses. d/dx = d where |d| < 1, else sign(d).
    public func smoothL1(_ targets: Tensor, reduction: LossReduction = .mean) -> Tensor {
        let x = self
        precondition(x.shape == targets.shape, "smooth L1 \(x.shape) vs targets \(targets.shape)")
        let n = x.count
        let losses = FloatStorage(count: n)
        let a = x.data, b = targets.data, l = losses.pointer
        for i in 0..<n {
            let d = a[i] - b[i], m = abs(d)
            l[i] = m < 1 ? 0.5 * d * d : m - 0.5
        }
        return Tensor.lossResult(losses, positions: shape, reduction: reduction, inputs: [x, targets]) { g in
            let a = x.data, b = targets.data
            let dx: UnsafeMutablePointer<Float>? = x.requiresGrad ? x.grad : nil
            let dt: UnsafeMutablePointer<Float>? = targets.requiresGrad ? targets.grad : nil
            for i in 0..<n {
                let d = a[i] - b[i]
                let slope = g[i] * (abs(d) < 1 ? d : (d > 0 ? 1 : -1))
                dx?[i] += slope
                dt?[i] -= slope
            }
        }
    }
}

// MARK: - KL divergences of diagonal Gaussians

extension Tensor {
    /// KL(N(mean, e^logVariance) || N(0, 1)) = -0.5 (1 + logVariance - mean^2 - e^logVariance) per latent
    /// element. By default summed over each sample's latent elements and averaged over the batch (axis 0), as
    /// the Keras VAE example does; other reductions on request.
    /// d/dmean = mean, d/dlogVariance = 0.5 (e^logVariance - 1).
    public static func klDivergenceStandardNormal(mean: Tensor, logVariance: Tensor,
                                                  reduction: LossReduction = .meanOfSampleSums) -> Tensor {
        precondition(mean.shape == logVariance.shape, "KL mean \(mean.shape) vs log variance \(logVariance.shape)")
        let n = mean.count
        let losses = FloatStorage(count: n)
        let m = mean.data, lv = logVariance.data, l = losses.pointer
        for i in 0..<n { l[i] = -0.5 * (1 + lv[i] - m[i] * m[i] - expf(lv[i])) }
        return lossResult(losses, positions: mean.shape, reduction: reduction, inputs: [mean, logVariance]) { g in
            let m = mean.data, lv = logVariance.data
            if mean.requiresGrad { let d = mean.grad; for i in 0..<n { d[i] += g[i] * m[i] } }
            if logVariance.requiresGrad { let d = logVariance.grad; for i in 0..<n { d[i] += g[i] * 0.5 * (expf(lv[i]) - 1) } }
        }
    }

    /// KL(N(mean1, e^logVariance1) || N(mean2, e^logVariance2)) for diagonal Gaussians, per element:
    /// 0.5 (lv2 - lv1 + (e^lv1 + (m1 - m2)^2) / e^lv2 - 1). Reduced like `klDivergenceStandardNormal`
    /// (per-sample sum, batch mean) by default. With d = m1 - m2 and r = e^lv1 / e^lv2:
    /// d/dm1 = d / e^lv2 = -d/dm2, d/dlv1 = 0.5 (r - 1), d/dlv2 = 0.5 (1 - r - d^2 / e^lv2).
    public static func klDivergenceDiagonalGaussians(mean1: Tensor, logVariance1: Tensor, mean2: Tensor,
                                                     logVariance2: Tensor,
                                                     reduction: LossReduction = .meanOfSampleSums) -> Tensor {
        let shape = mean1.shape
        precondition(logVariance1.shape == shape && mean2.shape == shape && logVariance2.shape == shape,
                     "KL shapes \(shape), \(logVariance1.shape), \(mean2.shape), \(logVariance2.shape)")
        let n = mean1.count
        let losses = FloatStorage(count: n)
        let m1 = mean1.data, lv1 = logVariance1.data, m2 = mean2.data, lv2 = logVariance2.data, l = losses.pointer
        for i in 0..<n {
            let d = m1[i] - m2[i], inverse2 = expf(-lv2[i])
            l[i] = 0.5 * (lv2[i] - lv1[i] + (expf(lv1[i]) + d * d) * inverse2 - 1)
        }
        let inputs = [mean1, logVariance1, mean2, logVariance2]
        return lossResult(losses, positions: shape, reduction: reduction, inputs: inputs) { g in
            let m1 = mean1.data, lv1 = logVariance1.data, m2 = mean2.data, lv2 = logVariance2.data
            let dm1 = mean1.requiresGrad ? mean1.grad : nil, dlv1 = logVariance1.requiresGrad ? logVariance1.grad : nil
            let dm2 = mean2.requiresGrad ? mean2.grad : nil, dlv2 = logVariance2.requiresGrad ? logVariance2.grad : nil
            for i in 0..<n {
                let d = m1[i] - m2[i], inverse2 = expf(-lv2[i]), r = expf(lv1[i]) * inverse2
                dm1?[i] += g[i] * d * inverse2
                dm2?[i] -= g[i] * d * inverse2
                dlv1?[i] += g[i] * 0.5 * (r - 1)
                dlv2?[i] += g[i] * 0.5 * (1 - r - d * d * inverse2)
            }
        }
    }
}
