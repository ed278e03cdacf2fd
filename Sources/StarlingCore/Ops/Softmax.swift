/// Softmax and log-softmax along one axis, forward and backward side by side.
///
/// Both subtract the maximum along the axis before exponentiating, so logits of any size stay finite.
/// The axis is either the last one (rows of classes, e.g. [batch, boxes, classes]) or an inner one such as
/// axis 1 of NCHW for per-pixel classification; there the loops run over whole HxW planes so that they
/// vectorise along the pixels instead of striding through channels.
extension Tensor {
    /// e^x / sum e^x along `axis` (default: the last).
    public func softmax(axis: Int = -1) -> Tensor {
        let x = self, layout = axisLayout(axis)
        let out = Tensor.result(shape: shape, inputs: [x]) { out in
            SoftmaxKernel.backward(layout, y: out.data, dy: out.grad, dx: x.grad, log: false)
        }
        SoftmaxKernel.forward(layout, x: x.data, y: out.data, log: false)
        return out
    }

    /// x - log sum e^x along `axis` (default: the last); more accurate than log(softmax) for tiny probabilities.
    public func logSoftmax(axis: Int = -1) -> Tensor {
        let x = self, layout = axisLayout(axis)
        let out = Tensor.result(shape: shape, inputs: [x]) { out in
            SoftmaxKernel.backward(layout, y: out.data, dy: out.grad, dx: x.grad, log: true)
        }
        SoftmaxKernel.forward(layout, x: x.data, y: out.data, log: true)
        return out
    }
}

/// The loops behind `softmax`, `logSoftmax` and the softmax cross-entropies.
enum SoftmaxKernel {
    /// y = softmax(x) or log softmax(x) along the layout's axis. x and y may not alias.
    static func forward(_ layout: Tensor.AxisLayout, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, log: Bool) {
        let (length, inner) = (layout.length, layout.inner)
        if length == 0 { return }
        if inner == 1 {
            for o in 0..<layout.outer {
                let xr = x + o * length, yr = y + o * length
                var m = xr[0]
                for j in 1..<length { m = max(m, xr[j]) }
                exponentiate(length, xr, minus: m, into: yr)
                let s = VectorMath.sum(length, yr)
                if log {
                    let lse = m + VectorMath.log(s)
                    for j in 0..<length { yr[j] = xr[j] - lse }
                } else {
                    let r = 1 / s
                    for j in 0..<length { yr[j] *= r }
                }
            }
            return
        }
        // Planes: per pixel i, the maximum and the sum run over the `length` planes of one outer block.
        let peak = FloatStorage(count: inner), total = FloatStorage(count: inner)
        defer { withExtendedLifetime((peak, total)) {} }   // scratch used through raw pointers below
        let m = peak.pointer, s = total.pointer
        for o in 0..<layout.outer {
            let xb = x + o * length * inner, yb = y + o * length * inner
            m.update(from: xb, count: inner)
            for c in 1..<length {
                let xc = xb + c * inner
                for i in 0..<inner { m[i] = max(m[i], xc[i]) }
            }
            s.update(repeating: 0, count: inner)
            for c in 0..<length {
                let xc = xb + c * inner, yc = yb + c * inner
                for i in 0..<inner {
                    let e = VectorMath.exp(xc[i] - m[i])
                    yc[i] = e
                    s[i] += e
                }
            }
            if log {
                // s becomes log sum e^x = m + log s.
                for i in 0..<inner { s[i] = m[i] + VectorMath.log(s[i]) }
                for c in 0..<length {
                    let xc = xb + c * inner, yc = yb + c * inner
                    for i in 0..<inner { yc[i] = xc[i] - s[i] }
                }
            } else {
                for i in 0..<inner { s[i] = 1 / s[i] }
                for c in 0..<length {
                    let yc = yb + c * inner
                    for i in 0..<inner { yc[i] *= s[i] }
                }
            }
        }
    }

    /// dx += y (dy - sum dy y) for softmax, dx += dy - e^y sum dy for log-softmax (y its output).
    static func backward(_ layout: Tensor.AxisLayout, y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                         dx: UnsafeMutablePointer<Float>, log: Bool) {
        let (length, inner) = (layout.length, layout.inner)
        let block = length * inner
        if block == 0 { return }
        // Log-softmax needs the probabilities e^y; softmax's output already is them.
        let exponentiated = log ? FloatStorage(count: block) : nil
        let sums = FloatStorage(count: inner)   // per pixel: sum dy (log) or sum dy p (softmax)
        defer { withExtendedLifetime((exponentiated, sums)) {} }   // scratch used through raw pointers below
        let s = sums.pointer
        for o in 0..<layout.outer {
            let yb = y + o * block, gb = dy + o * block, db = dx + o * block
            var p = yb
            if let exponentiated {
                exponentiate(block, yb, minus: 0, into: exponentiated.pointer)
                p = UnsafePointer(exponentiated.pointer)
            }
            s.update(repeating: 0, count: inner)
            for c in 0..<length {
                let gc = gb + c * inner, pc = p + c * inner
                if log { for i in 0..<inner { s[i] += gc[i] } } else { for i in 0..<inner { s[i] += gc[i] * pc[i] } }
            }
            for c in 0..<length {
                let gc = gb + c * inner, pc = p + c * inner, dc = db + c * inner
                if log {
                    for i in 0..<inner { dc[i] += gc[i] - pc[i] * s[i] }
                } else {
                    for i in 0..<inner { dc[i] += pc[i] * (gc[i] - s[i]) }
                }
            }
        }
    }

    /// y = e^(x - shift) for n floats.
    @inline(__always)
    static func exponentiate(_ n: Int, _ x: UnsafePointer<Float>, minus shift: Float, into y: UnsafeMutablePointer<Float>) {
        for i in 0..<n { y[i] = VectorMath.exp(x[i] - shift) }
    }
}
