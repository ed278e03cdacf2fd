/// Long short-term memory over a whole sequence, forward and backward through time, on sgemm.
///
/// S. Hochreiter and J. Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997, with the forget gate
/// of F. Gers, J. Schmidhuber and F. Cummins (2000), in Keras's formulation and gate order (i, f, c, o):
///
///     z_t = x_t W + h_{t-1} U + b                    W [F, 4H], U [H, 4H], b [4H]
///     i = sigmoid(z_i), f = sigmoid(z_f), g = tanh(z_c), o = sigmoid(z_o)
///     c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
///
/// Every buffer keeps the [N, T, width] layout of the input and output. One timestep's rows are then `T * width`
/// floats apart, which sgemm takes as its leading dimension: the input products of all timesteps are one sgemm,
/// the recurrent product one sgemm per step, and nothing is transposed or copied into a [T, N, width] layout.

/// Sizes of one LSTM call.
struct LSTMShape {
    let batch: Int, steps: Int, features: Int, units: Int
    var gates: Int { 4 * units }
    var rows: Int { batch * steps }   // (sample, timestep) pairs
}

extension Tensor {
    /// Runs an LSTM over `self` [N, T, F] and returns every hidden state, [N, T, H] (the last one is
    /// `lastTimestep()` of the result).
    ///
    /// - Parameters:
    ///   - kernel: W [F, 4H], the input weights of the gates i, f, c, o side by side (Keras's `kernel`).
    ///   - recurrentKernel: U [H, 4H] (Keras's `recurrent_kernel`).
    ///   - bias: b [4H].
    ///   - initialHidden, initialCell: h_0 and c_0, [N, H] each; zeros when nil (Keras's default state).
    /// Gradients flow to every tensor argument that requires one.
    public func lstm(kernel: Tensor, recurrentKernel: Tensor, bias: Tensor,
                     initialHidden: Tensor? = nil, initialCell: Tensor? = nil) -> Tensor {
        let x = self
        precondition(x.rank == 3 && x.shape[1] > 0, "lstm expects [N, T, F] input with T > 0, got \(x.shape)")
        let units = recurrentKernel.shape.first ?? 0
        let dims = LSTMShape(batch: x.shape[0], steps: x.shape[1], features: x.shape[2], units: units)
        precondition(kernel.shape == [dims.features, dims.gates], "lstm kernel \(kernel.shape) for \(dims.features) features and \(units) units")
        precondition(recurrentKernel.shape == [units, dims.gates], "lstm recurrent kernel \(recurrentKernel.shape)")
        precondition(bias.shape == [dims.gates], "lstm bias \(bias.shape) for \(units) units")
        for state in [initialHidden, initialCell].compactMap({ $0 }) {
            precondition(state.shape == [dims.batch, units], "lstm initial state \(state.shape), expected [\(dims.batch), \(units)]")
        }
        // Kept for backward: the activated gates (their derivatives follow from the activations), c_t and tanh(c_t).
        let gates = FloatStorage(count: dims.rows * dims.gates)
        let cells = FloatStorage(count: dims.rows * units)
        let cellTanh = FloatStorage(count: dims.rows * units)
        var inputs = [x, kernel, recurrentKernel, bias]
        if let initialHidden { inputs.append(initialHidden) }
        if let initialCell { inputs.append(initialCell) }
        let out = Tensor.result(shape: [dims.batch, dims.steps, units], inputs: inputs) { out in
            lstmBackward(dims, x: x, kernel: kernel, recurrentKernel: recurrentKernel, bias: bias,
                         initialHidden: initialHidden, initialCell: initialCell,
                         hidden: out.data, hiddenGrad: out.grad, gates: gates.pointer, cells: cells.pointer, cellTanh: cellTanh.pointer)
        }
        lstmForward(dims, x: x.data, kernel: kernel.data, recurrentKernel: recurrentKernel.data, bias: bias.data,
                    initialHidden: initialHidden?.data, initialCell: initialCell?.data,
                    hidden: out.data, gates: gates.pointer, cells: cells.pointer, cellTanh: cellTanh.pointer)
        return out
    }

    /// The last step of a sequence: [N, T, H] -> [N, H] (a recurrent encoder's final hidden state).
    public func lastTimestep() -> Tensor {
        precondition(rank == 3 && shape[1] > 0, "lastTimestep expects [N, T, H] with T > 0, got \(shape)")
        return slice(axis: 1, start: shape[1] - 1, end: shape[1]).reshaped([shape[0], shape[2]])
    }
}

/// tanh(x) = 2 sigmoid(2x) - 1: VectorMath's branch-free sigmoid keeps the gate loops vectorisable.
@inline(__always)
private func fastTanh(_ x: Float) -> Float { 2 * VectorMath.sigmoid(2 * x) - 1 }

/// c_{t-1} for a (sample, step) row: the previous step's cell, else the initial cell, else zeros.
@inline(__always)
private func previousCell(_ cells: UnsafePointer<Float>, row: Int, step t: Int, sample s: Int, units h: Int,
                          initial: UnsafePointer<Float>?, zeros: UnsafePointer<Float>) -> UnsafePointer<Float> {
    if t > 0 { return cells + (row &- 1) &* h }
    if let initial { return initial + s &* h }
    return zeros
}

private func lstmForward(_ d: LSTMShape, x: UnsafePointer<Float>, kernel: UnsafePointer<Float>,
                         recurrentKernel: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                         initialHidden: UnsafePointer<Float>?, initialCell: UnsafePointer<Float>?,
                         hidden: UnsafeMutablePointer<Float>, gates: UnsafeMutablePointer<Float>,
                         cells: UnsafeMutablePointer<Float>, cellTanh: UnsafeMutablePointer<Float>) {
    let (n, steps, h, g4) = (d.batch, d.steps, d.units, d.gates)
    // z = x W + b for every (sample, step) at once.
    for r in 0..<d.rows { (gates + r * g4).update(from: bias, count: g4) }
    BLAS.sgemm(transA: false, transB: false, m: d.rows, n: g4, k: d.features, a: x, lda: d.features,
               b: kernel, ldb: g4, beta: 1, c: gates, ldc: g4)
    let zeros = FloatStorage(count: h)   // c_0 when none is given
    for t in 0..<steps {
        // z_t += h_{t-1} U; rows of step t are steps * width apart.
        if t > 0 {
            BLAS.sgemm(transA: false, transB: false, m: n, n: g4, k: h, a: hidden + (t - 1) * h, lda: steps * h,
                       b: recurrentKernel, ldb: g4, beta: 1, c: gates + t * g4, ldc: steps * g4)
        } else if let initialHidden {
            BLAS.sgemm(transA: false, transB: false, m: n, n: g4, k: h, a: initialHidden, lda: h,
                       b: recurrentKernel, ldb: g4, beta: 1, c: gates, ldc: steps * g4)
        }
        for s in 0..<n {
            let row = s &* steps &+ t
            let z = gates + row &* g4
            let previous = previousCell(cells, row: row, step: t, sample: s, units: h, initial: initialCell, zeros: zeros.pointer)
            let c = cells + row &* h, tc = cellTanh + row &* h, out = hidden + row &* h
            for j in 0..<(2 &* h) { z[j] = VectorMath.sigmoid(z[j]) }                 // i, f
            for j in (2 &* h)..<(3 &* h) { z[j] = fastTanh(z[j]) }                      // g
            for j in (3 &* h)..<g4 { z[j] = VectorMath.sigmoid(z[j]) }                 // o
            let gi = z, gf = z + h, gg = z + 2 &* h, go = z + 3 &* h
            // Short passes over few pointers: one loop writing c, tanh(c) and h stayed scalar (too many pointers
            // for LLVM's runtime alias checks); these vectorise.
            for j in 0..<h { c[j] = gf[j] * previous[j] + gi[j] * gg[j] }
            for j in 0..<h { tc[j] = fastTanh(c[j]) }
            for j in 0..<h { out[j] = go[j] * tc[j] }
        }
    }
    withExtendedLifetime(zeros) {}
}

/// Backward through time. With dh_t = dy_t + (dz_{t+1} U^T) and dc_t = dh_t o (1 - tanh^2 c_t) + dc_{t+1} f_{t+1}:
/// dz_i = dc_t g i (1 - i), dz_f = dc_t c_{t-1} f (1 - f), dz_c = dc_t i (1 - g^2), dz_o = dh_t tanh(c_t) o (1 - o).
/// The weight gradients are then sums of products over all steps: dW = X^T dZ, dU = sum_t h_{t-1}^T dz_t,
/// db = column sums of dZ, dX = dZ W^T; dh_0 and dc_0 are the carries left after step 0.
private func lstmBackward(_ d: LSTMShape, x: Tensor, kernel: Tensor, recurrentKernel: Tensor, bias: Tensor,
                          initialHidden: Tensor?, initialCell: Tensor?,
                          hidden: UnsafePointer<Float>, hiddenGrad: UnsafePointer<Float>, gates: UnsafePointer<Float>,
                          cells: UnsafePointer<Float>, cellTanh: UnsafePointer<Float>) {
    let (n, steps, h, g4) = (d.batch, d.steps, d.units, d.gates)
    let gateGrads = FloatStorage(count: d.rows * g4)
    let hiddenCarry = FloatStorage(count: n * h)   // d loss / d h_t arriving from step t + 1 (then dh_t in full)
    let cellCarry = FloatStorage(count: n * h)     // d loss / d c_t arriving from step t + 1 (then dc_t in full)
    let zeros = FloatStorage(count: h)
    let dz = gateGrads.pointer, dhCarry = hiddenCarry.pointer, dcCarry = cellCarry.pointer
    let u = recurrentKernel.data
    let c0 = initialCell?.data
    for t in stride(from: steps - 1, through: 0, by: -1) {
        for s in 0..<n {
            let row = s &* steps &+ t
            let z = gates + row &* g4, dzr = dz + row &* g4
            let previous = previousCell(cells, row: row, step: t, sample: s, units: h, initial: c0, zeros: zeros.pointer)
            let tc = cellTanh + row &* h, dy = hiddenGrad + row &* h
            let dh = dhCarry + s &* h, dc = dcCarry + s &* h
            let gi = z, gf = z + h, gg = z + 2 &* h, go = z + 3 &* h
            let di = dzr, df = dzr + h, dg = dzr + 2 &* h, dout = dzr + 3 &* h
            // Short passes, as in forward, so that each vectorises. dh and dc become dh_t and dc_t in place.
            for j in 0..<h { dh[j] += dy[j] }
            for j in 0..<h { dout[j] = dh[j] * tc[j] * go[j] * (1 - go[j]) }
            for j in 0..<h { dc[j] += dh[j] * go[j] * (1 - tc[j] * tc[j]) }
            for j in 0..<h { di[j] = dc[j] * gg[j] * gi[j] * (1 - gi[j]) }
            for j in 0..<h { df[j] = dc[j] * previous[j] * gf[j] * (1 - gf[j]) }
            for j in 0..<h { dg[j] = dc[j] * gi[j] * (1 - gg[j] * gg[j]) }
            for j in 0..<h { dc[j] *= gf[j] }   // carried to step t - 1
        }
        // The hidden carry for step t - 1 (for t = 0: the gradient of h_0).
        if t > 0 || initialHidden?.requiresGrad == true {
            BLAS.sgemm(transA: false, transB: true, m: n, n: h, k: g4, a: dz + t * g4, lda: steps * g4,
                       b: u, ldb: g4, beta: 0, c: dhCarry, ldc: h)
        }
    }
    if kernel.requiresGrad {
        BLAS.sgemm(transA: true, transB: false, m: d.features, n: g4, k: d.rows, a: x.data, lda: d.features,
                   b: dz, ldb: g4, beta: 1, c: kernel.grad, ldc: g4)
    }
    if recurrentKernel.requiresGrad {
        let du = recurrentKernel.grad
        for t in 1..<steps {
            BLAS.sgemm(transA: true, transB: false, m: h, n: g4, k: n, a: hidden + (t - 1) * h, lda: steps * h,
                       b: dz + t * g4, ldb: steps * g4, beta: 1, c: du, ldc: g4)
        }
        if let initialHidden {
            BLAS.sgemm(transA: true, transB: false, m: h, n: g4, k: n, a: initialHidden.data, lda: h,
                       b: dz, ldb: steps * g4, beta: 1, c: du, ldc: g4)
        }
    }
    if bias.requiresGrad { accumulateColumnSums(dz, rows: d.rows, cols: g4, into: bias.grad) }
    if x.requiresGrad {
        BLAS.sgemm(transA: false, transB: true, m: d.rows, n: d.features, k: g4, a: dz, lda: g4,
                   b: kernel.data, ldb: g4, beta: 1, c: x.grad, ldc: d.features)
    }
    if let initialHidden, initialHidden.requiresGrad {
        let g = initialHidden.grad
        for i in 0..<(n &* h) { g[i] += dhCarry[i] }
    }
    if let initialCell, initialCell.requiresGrad {
        let g = initialCell.grad
        for i in 0..<(n &* h) { g[i] += dcCarry[i] }
    }
    withExtendedLifetime((gateGrads, hiddenCarry, cellCarry, zeros)) {}
}
