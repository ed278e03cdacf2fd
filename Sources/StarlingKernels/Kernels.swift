/// The per-element loops of the losses that run on every output of a model.
public enum LossKernels {
    /// Binary cross-entropy on logits, one term per element: l = max(z, 0) - z t + log(1 + e^-|z|), the stable
    /// form, and p = sigmoid(z) for the backward pass. No reduction inside, so that the loop vectorises; the
    /// caller sums the terms.
    @inlinable @inline(__always)
    public static func bceLogitsTerms<M: MultiplyAdd>(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                                                       probabilities p: UnsafeMutablePointer<Float>,
                                                       terms l: UnsafeMutablePointer<Float>, _ m: M.Type) {
        for i in 0..<n {
            let zi = z[i]
            let e = VectorMath.exp(-abs(zi), m)
            l[i] = (zi > 0 ? zi : 0) - zi * t[i] + VectorMath.log(1 + e, m)
            let r = 1 / (1 + e)
            p[i] = zi < 0 ? e * r : r
        }
    }
}

extension LossKernels {
    /// The gradient of the mean BCE on logits, written over the sigmoid: p[i] = g (p[i] - t[i]). A subtraction and a
    /// multiply, each rounded once: the same bits in every build.
    @inlinable @inline(__always)
    public static func bceLogitsGradient(_ n: Int, probabilities p: UnsafeMutablePointer<Float>, targets t: UnsafePointer<Float>,
                                         scale g: Float) {
        for i in 0..<n { p[i] = g * (p[i] - t[i]) }
    }
}

extension LossKernels {
    /// The sum of the terms of `bceLogitsTerms`, with the sigmoid written to p: eight lanes at a time, the terms summed
    /// in registers instead of stored and read back (the loop is memory-bound: it was 5 passes over n floats, now 3).
    /// Each term is the scalar kernel's, bit for bit; they are summed as `VectorMath.sum` sums a stored copy, in
    /// chunks of 4096 added in Double, so the total is the same too.
    @inlinable @inline(__always)
    public static func bceLogitsSum<M: MultiplyAdd>(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                                                     probabilities p: UnsafeMutablePointer<Float>, _ m: M.Type) -> Double {
        typealias V = SIMD8<Float>
        let zero = V(repeating: 0), one = V(repeating: 1)
        var total = 0.0
        var start = 0
        while start < n {
            let end = start + Swift.min(4096, n - start)
            var lanes = zero
            var i = start
            while i &+ 8 <= end {
                let zi = UnsafeRawPointer(z + i).loadUnaligned(as: V.self), ti = UnsafeRawPointer(t + i).loadUnaligned(as: V.self)
                let magnitude = zi.replacing(with: -zi, where: zi .< zero)
                let e = VectorMath.exp(-magnitude, m)
                lanes += (zi.replacing(with: zero, where: .!(zi .> zero)) - zi * ti + VectorMath.log(one + e, m))
                let r = one / (one + e)
                UnsafeMutableRawPointer(p + i).storeBytes(of: (e * r).replacing(with: r, where: .!(zi .< zero)), as: V.self)
                i &+= 8
            }
            var sum = lanes.sum()
            var tail = Float(0)
            if i < end {
                withUnsafeMutablePointer(to: &tail) { term in
                    while i < end {
                        bceLogitsTerms(1, logits: z + i, targets: t + i, probabilities: p + i, terms: term, m)
                        sum += term.pointee
                        i &+= 1
                    }
                }
            }
            total += Double(sum)
            start = end
        }
        return total
    }
}

/// A dataset's uint8 pixels as floats: Float(v) * scale, one exact conversion and one rounded multiply a value, so every
/// build (and every vector width) gives the same bits.
public enum PixelKernels {
    @inlinable @inline(__always)
    public static func scaledFloats(_ n: Int, _ source: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<Float>, scale: Float) {
        for j in 0..<n { out[j] = Float(source[j]) * scale }
    }
}

/// The test on float32 exponent bits behind the trainer's checks of the gradients (`firstNonFiniteIndex`,
/// `allFinite(_:count:below:)`): OR over the values of (bits & 0x7f800000) + `added`. Bit 31 of the result is set exactly
/// when some value's biased exponent e has e + (added >> 23) >= 256 (added = 1 << 23: an infinity or NaN), since e +
/// (added >> 23) stays below 512. Integer AND, ADD and OR: one cycle each and no microcode assist on subnormal values.
public enum ExponentKernels {
    // Not generic, so nothing forces a specialisation in the caller's module: without `@inline(__always)` the wider
    // modules' entry points called this module's baseline copy.
    @inlinable @inline(__always)
    public static func carry(_ p: UnsafePointer<Float>, count: Int, added: UInt32) -> UInt32 {
        let exponent = SIMD16<UInt32>(repeating: 0x7f80_0000), add = SIMD16<UInt32>(repeating: added)
        var lanes = SIMD16<UInt32>(repeating: 0)
        var i = 0
        while i + 16 <= count {
            lanes |= (UnsafeRawPointer(p + i).loadUnaligned(as: SIMD16<UInt32>.self) & exponent) &+ add
            i += 16
        }
        var acc: UInt32 = 0
        for lane in 0..<16 { acc |= lanes[lane] }
        while i < count { acc |= (p[i].bitPattern & 0x7f80_0000) &+ added; i += 1 }
        return acc
    }
}

/// Optimizer updates over the flat parameter buffer.
public enum OptimizerKernels {
    /// Adam as Keras writes it (see `Adam`): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// w -= lrT m / (sqrt(v) + eps) + decoupledDecay w, with g = scale g + coupledDecay w.
    @inlinable @inline(__always)
    public static func adam<M: MultiplyAdd>(_ n: Int, weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                                            m mp: UnsafeMutablePointer<Float>, v vp: UnsafeMutablePointer<Float>,
                                            gradientScale: Float, beta1 b1: Float, beta2 b2: Float, epsilon eps: Float,
                                            correctedRate lrT: Float, coupledDecay: Float, decoupledDecay: Float, _: M.Type) {
        for i in 0..<n {
            let wi = w[i]
            let grad = M.multiplyAdd(coupledDecay, wi, gradientScale * g[i])
            let mi = M.multiplyAdd(b1, mp[i], (1 - b1) * grad)
            let vi = M.multiplyAdd(b2, vp[i], (1 - b2) * grad * grad)
            mp[i] = mi
            vp[i] = vi
            w[i] = wi - M.multiplyAdd(decoupledDecay, wi, lrT * mi / (vi.squareRoot() + eps))
        }
    }
}

/// Activations whose cost is a transcendental per element.
public enum ActivationKernels {
    /// y = x for x > 0, alpha (e^x - 1) otherwise. x and y may be the same buffer.
    @inlinable @inline(__always)
    public static func elu<M: MultiplyAdd>(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, alpha: Float, _ m: M.Type) {
        for i in 0..<n { let v = x[i]; y[i] = v > 0 ? v : alpha * (VectorMath.exp(Swift.min(v, 0), m) - 1) }
    }

    /// y = ELU(scale (x - mean) + shift): batch norm's output with the ELU applied in the same pass. The affine part
    /// is written as batch norm writes it without the ELU, so that the fused op matches the pair bit for bit.
    @inlinable @inline(__always)
    public static func affineELU<M: MultiplyAdd>(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                                                 mean: Float, scale: Float, shift: Float, alpha: Float, _ m: M.Type) {
        for i in 0..<n {
            let v = scale * (x[i] - mean) + shift
            y[i] = v > 0 ? v : alpha * (VectorMath.exp(Swift.min(v, 0), m) - 1)
        }
    }
}
