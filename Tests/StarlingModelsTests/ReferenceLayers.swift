import Foundation
@testable import StarlingModels

/// The autoencoders' layers written out again in Double with plain loops, one output at a time, as an independent
/// second implementation for the models' loss checks. Tensors are flat arrays in row-major (NCHW) order.
enum Reference {
    /// x [rows, in] W [in, out] + b.
    static func dense(_ x: [Double], rows: Int, _ w: [Double], _ b: [Double]) -> [Double] {
        let outputs = b.count, inputs = w.count / outputs
        var y = [Double](repeating: 0, count: rows * outputs)
        for r in 0..<rows { for j in 0..<outputs {
            var s = b[j]
            for i in 0..<inputs { s += x[r * inputs + i] * w[i * outputs + j] }
            y[r * outputs + j] = s
        } }
        return y
    }

    static func relu(_ x: [Double]) -> [Double] { x.map { max($0, 0) } }
    static func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }

    /// Sum over elements of -(t log p + (1 - t) log(1 - p)), p = sigmoid(z).
    static func bceSum(logits z: [Double], targets t: [Double]) -> Double {
        zip(z, t).reduce(0) { s, e in let p = sigmoid(e.0); return s - (e.1 * log(p) + (1 - e.1) * log(1 - p)) }
    }

    /// Sum over elements of -0.5 (1 + lv - m^2 - e^lv).
    static func klSum(mean m: [Double], logVariance lv: [Double]) -> Double {
        zip(m, lv).reduce(0) { s, e in s - 0.5 * (1 + e.1 - e.0 * e.0 - exp(e.1)) }
    }

    /// Leading padding of Keras's `same` for a 3-wide window: output ceil(n / stride).
    static func samePadding(_ n: Int, stride: Int) -> (output: Int, before: Int) {
        let out = (n + stride - 1) / stride
        return (out, max((out - 1) * stride + 3 - n, 0) / 2)
    }

    /// 3x3 convolution, same padding: y[co, o] = b[co] + sum x[ci, o * stride + k - before] W[co, ci, k].
    static func conv3x3(_ x: [Double], n: Int, channels cin: Int, height h: Int, width w: Int,
                        kernel: [Double], bias: [Double], stride: Int = 1) -> (y: [Double], height: Int, width: Int) {
        let cout = bias.count
        let (oh, top) = samePadding(h, stride: stride), (ow, left) = samePadding(w, stride: stride)
        var y = [Double](repeating: 0, count: n * cout * oh * ow)
        for s in 0..<n { for co in 0..<cout { for oy in 0..<oh { for ox in 0..<ow {
            var v = bias[co]
            for ci in 0..<cin { for ky in 0..<3 { for kx in 0..<3 {
                let iy = oy * stride + ky - top, ix = ox * stride + kx - left
                guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                v += x[((s * cin + ci) * h + iy) * w + ix] * kernel[((co * cin + ci) * 3 + ky) * 3 + kx]
            } } }
            y[((s * cout + co) * oh + oy) * ow + ox] = v
        } } } }
        return (y, oh, ow)
    }

    /// 3x3 transposed convolution, same padding (output = input * stride): every input pixel scatters its kernel,
    /// y[co, i * stride + k - before] += x[ci, i] W[ci, co, k], the adjoint of `conv3x3` on the output's size.
    static func convTransposed3x3(_ x: [Double], n: Int, channels cin: Int, height h: Int, width w: Int,
                                  kernel: [Double], bias: [Double], stride: Int) -> [Double] {
        let cout = bias.count, oh = h * stride, ow = w * stride
        let top = samePadding(oh, stride: stride).before, left = samePadding(ow, stride: stride).before
        var y = [Double](repeating: 0, count: n * cout * oh * ow)
        for s in 0..<n { for co in 0..<cout { for i in 0..<(oh * ow) { y[(s * cout + co) * oh * ow + i] = bias[co] } } }
        for s in 0..<n { for ci in 0..<cin { for iy in 0..<h { for ix in 0..<w {
            let v = x[((s * cin + ci) * h + iy) * w + ix]
            for co in 0..<cout { for ky in 0..<3 { for kx in 0..<3 {
                let oy = iy * stride + ky - top, ox = ix * stride + kx - left
                guard oy >= 0, oy < oh, ox >= 0, ox < ow else { continue }
                y[((s * cout + co) * oh + oy) * ow + ox] += v * kernel[((ci * cout + co) * 3 + ky) * 3 + kx]
            } } }
        } } } }
        return y
    }

    /// 2x2 max-pooling of even-sided planes.
    static func maxPool2(_ x: [Double], planes: Int, height h: Int, width w: Int) -> [Double] {
        var y: [Double] = []
        for p in 0..<planes { for oy in 0..<(h / 2) { for ox in 0..<(w / 2) {
            let at = { (dy: Int, dx: Int) in x[(p * h + 2 * oy + dy) * w + 2 * ox + dx] }
            y.append(max(at(0, 0), at(0, 1), at(1, 0), at(1, 1)))
        } } }
        return y
    }

    /// Nearest-neighbour 2x upsampling.
    static func upsample2(_ x: [Double], planes: Int, height h: Int, width w: Int) -> [Double] {
        var y: [Double] = []
        for p in 0..<planes { for oy in 0..<(2 * h) { for ox in 0..<(2 * w) { y.append(x[(p * h + oy / 2) * w + ox / 2]) } } }
        return y
    }

    /// Keras's LSTM (gates i, f, c, o), zero initial state: all hidden states [N, T, H].
    static func lstm(_ x: [Double], batch: Int, steps: Int, features: Int,
                     kernel: [Double], recurrent: [Double], bias: [Double]) -> [Double] {
        let units = bias.count / 4
        var out = [Double](repeating: 0, count: batch * steps * units)
        for s in 0..<batch {
            var h = [Double](repeating: 0, count: units), c = h
            for t in 0..<steps {
                var z = bias
                for k in 0..<(4 * units) {
                    for i in 0..<features { z[k] += x[(s * steps + t) * features + i] * kernel[i * 4 * units + k] }
                    for j in 0..<units { z[k] += h[j] * recurrent[j * 4 * units + k] }
                }
                for j in 0..<units {
                    c[j] = sigmoid(z[units + j]) * c[j] + sigmoid(z[j]) * tanh(z[2 * units + j])
                    h[j] = sigmoid(z[3 * units + j]) * tanh(c[j])
                    out[(s * steps + t) * units + j] = h[j]
                }
            }
        }
        return out
    }
}

/// A parameter's values in Double.
func parameter(_ model: any Model, _ name: String) -> [Double] {
    guard let p = model.parameters[name] else { preconditionFailure("no parameter \(name)") }
    return p.value.toArray().map(Double.init)
}
