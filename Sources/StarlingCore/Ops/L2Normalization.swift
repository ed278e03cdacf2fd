/// Channel-wise L2 normalisation with a learned per-channel scale (W. Liu, A. Rabinovich, A. Berg, "ParseNet",
/// 2015), as SSD applies it to VGG's conv4_3: y[n, c, p] = gamma[c] x[n, c, p] / sqrt(sum_c' x[n, c', p]^2 + eps).
extension Tensor {
    /// `self` is NCHW (or [N, C]); `gamma` is [C].
    public func l2NormalizeChannels(gamma: Tensor, epsilon: Float = 1e-10) -> Tensor {
        let x = self
        precondition(rank >= 2 && gamma.shape == [shape[1]], "L2 normalisation of \(shape) with scale \(gamma.shape)")
        let (n, c) = (shape[0], shape[1])
        let plane = count / max(n * c, 1)
        // r[n, p] = 1 / sqrt(sum_c x^2 + eps), kept for backward.
        let inverseNorm = FloatStorage(count: n * plane)
        let xd = x.data, r = inverseNorm.pointer
        for s in 0..<n {
            let rs = r + s * plane
            for k in 0..<c {
                let xk = xd + (s * c + k) * plane
                for p in 0..<plane { rs[p] += xk[p] * xk[p] }
            }
            for p in 0..<plane { rs[p] = 1 / (rs[p] + epsilon).squareRoot() }
        }
        let out = Tensor.result(shape: shape, inputs: [x, gamma]) { out in
            let dy = out.grad, g = gamma.data, xd = x.data, r = inverseNorm.pointer
            // Per position: dL/dx_k = r gamma_k dy_k - x_k r^3 sum_c (gamma_c dy_c x_c); dL/dgamma_k = sum dy_k x_k r.
            let dot = FloatStorage(count: plane)
            let d = dot.pointer
            for s in 0..<n {
                let rs = r + s * plane
                d.update(repeating: 0, count: plane)
                for k in 0..<c {
                    let xk = xd + (s * c + k) * plane, gk = dy + (s * c + k) * plane, scale = g[k]
                    for p in 0..<plane { d[p] += scale * gk[p] * xk[p] }
                }
                if x.requiresGrad {
                    let dx = x.grad
                    for k in 0..<c {
                        let xk = xd + (s * c + k) * plane, gk = dy + (s * c + k) * plane, dk = dx + (s * c + k) * plane, scale = g[k]
                        for p in 0..<plane {
                            let rp = rs[p]
                            dk[p] += rp * scale * gk[p] - xk[p] * rp * rp * rp * d[p]
                        }
                    }
                }
                if gamma.requiresGrad {
                    let dg = gamma.grad
                    for k in 0..<c {
                        let xk = xd + (s * c + k) * plane, gk = dy + (s * c + k) * plane
                        var acc: Float = 0
                        for p in 0..<plane { acc += gk[p] * xk[p] * rs[p] }
                        dg[k] += acc
                    }
                }
            }
        }
        let y = out.data, g = gamma.data
        for s in 0..<n {
            for k in 0..<c {
                let xk = xd + (s * c + k) * plane, yk = y + (s * c + k) * plane, rs = r + s * plane, scale = g[k]
                for p in 0..<plane { yk[p] = scale * xk[p] * rs[p] }
            }
        }
        return out
    }

    /// The same on the blocked layout ([N, C/B, H, W, B], `self` rank 5), for a blocked training pass (SSD300's conv4_3):
    /// no NCHW copy of the input held for backward, nor one of the output for the convolutions that read it. The sums run
    /// over the channels in the planar op's order with the same expressions, so values and gradients are its bits.
    public func l2NormalizeChannelsBlocked(gamma: Tensor, epsilon: Float = 1e-10) -> Tensor {
        let x = self
        precondition(rank == 5 && gamma.shape == [shape[1] * shape[4]], "blocked L2 normalisation of \(shape) with scale \(gamma.shape)")
        let (n, blocks, width, plane) = (shape[0], shape[1], shape[4], shape[2] * shape[3])
        // The element of image s, channel b * width + l, pixel p.
        @inline(__always) func at(_ s: Int, _ b: Int, _ p: Int, _ l: Int) -> Int { ((s * blocks + b) * plane + p) * width + l }
        let inverseNorm = FloatStorage(count: n * plane)
        let xd = x.data, r = inverseNorm.pointer
        for s in 0..<n {
            let rs = r + s * plane
            for b in 0..<blocks {
                for p in 0..<plane {
                    let xp = xd + at(s, b, p, 0)
                    var sum = rs[p]
                    for l in 0..<width { sum += xp[l] * xp[l] }
                    rs[p] = sum
                }
            }
            for p in 0..<plane { rs[p] = 1 / (rs[p] + epsilon).squareRoot() }
        }
        let out = Tensor.result(shape: shape, storage: FloatStorage(uninitializedCount: count), inputs: [x, gamma]) { out in
            let dy = out.grad, g = gamma.data, xd = x.data, r = inverseNorm.pointer
            let dot = FloatStorage(count: plane)
            let d = dot.pointer
            for s in 0..<n {
                let rs = r + s * plane
                d.update(repeating: 0, count: plane)
                for b in 0..<blocks {
                    for p in 0..<plane {
                        let (xp, gp) = (xd + at(s, b, p, 0), dy + at(s, b, p, 0))
                        var sum = d[p]
                        for l in 0..<width { sum += g[b * width + l] * gp[l] * xp[l] }
                        d[p] = sum
                    }
                }
                if x.requiresGrad {
                    let dx = x.grad
                    for b in 0..<blocks {
                        for p in 0..<plane {
                            let (xp, gp, dp, rp) = (xd + at(s, b, p, 0), dy + at(s, b, p, 0), dx + at(s, b, p, 0), rs[p])
                            for l in 0..<width { dp[l] += rp * g[b * width + l] * gp[l] - xp[l] * rp * rp * rp * d[p] }
                        }
                    }
                }
                if gamma.requiresGrad {
                    let dg = gamma.grad
                    for b in 0..<blocks {
                        for l in 0..<width {
                            var acc: Float = 0
                            for p in 0..<plane { let i = at(s, b, p, l); acc += dy[i] * xd[i] * rs[p] }
                            dg[b * width + l] += acc
                        }
                    }
                }
            }
            withExtendedLifetime(dot) {}
        }
        let y = out.data, g = gamma.data
        for s in 0..<n {
            let rs = r + s * plane
            for b in 0..<blocks {
                for p in 0..<plane {
                    let (xp, yp) = (xd + at(s, b, p, 0), y + at(s, b, p, 0))
                    for l in 0..<width { yp[l] = g[b * width + l] * xp[l] * rs[p] }
                }
            }
        }
        return out
    }
}
