/// Matrix products on sgemm, forward and backward side by side.
/// Shapes are row-major: a dense layer computes y[B, out] = x[B, in] W[in, out] + b[out] (Keras's kernel layout).
extension Tensor {
    /// a[M, K] x b[K, N] -> [M, N].
    public func matmul(_ b: Tensor) -> Tensor {
        let a = self
        precondition(a.rank == 2 && b.rank == 2 && a.shape[1] == b.shape[0], "matmul \(a.shape) x \(b.shape)")
        let (m, k, n) = (a.shape[0], a.shape[1], b.shape[1])
        // sgemm with beta 0 writes every element: the result needs no zeroing.
        let out = Tensor.result(shape: [m, n], storage: FloatStorage(uninitializedCount: m * n), inputs: [a, b]) { out in
            let dy = out.grad
            // dA[M,K] += dY[M,N] B^T ; dB[K,N] += A^T dY
            if a.requiresGrad {
                let (da, overwrite) = a.gradientForWriting()
                BLAS.sgemm(transA: false, transB: true, m: m, n: k, k: n, a: dy, lda: n, b: b.data, ldb: n, beta: overwrite ? 0 : 1, c: da, ldc: k)
            }
            if b.requiresGrad {
                let (db, overwrite) = b.gradientForWriting()
                BLAS.sgemm(transA: true, transB: false, m: k, n: n, k: m, a: a.data, lda: k, b: dy, ldb: n, beta: overwrite ? 0 : 1, c: db, ldc: n)
            }
        }
        BLAS.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a.data, lda: k, b: b.data, ldb: n, beta: 0, c: out.data, ldc: n)
        return out
    }

    /// x[B, in] W[in, out] + bias[out], the dense layer. The bias is broadcast over rows.
    public func linear(_ weight: Tensor, _ bias: Tensor?) -> Tensor { dense(weight, bias, relu: false) }

    /// relu(x W + b) as one op: the ReLU runs in place on the product, and backward masks the result's gradient in
    /// place before the two sgemms, so neither the pre-activation values nor a gradient for them is ever allocated,
    /// zeroed or passed over (deep-ae's five hidden layers: two tensors and three passes a layer fewer). The same
    /// values and gradients as `linear(weight, bias).relu()`, bit for bit: relu(z) > 0 exactly where z > 0.
    public func linearReLU(_ weight: Tensor, _ bias: Tensor?) -> Tensor { dense(weight, bias, relu: true) }

    /// The dense layer, with the ReLU after it (`linearReLU`) or without (`linear`): one product, written once.
    private func dense(_ weight: Tensor, _ bias: Tensor?, relu: Bool) -> Tensor {
        let x = self
        precondition(x.rank == 2 && weight.rank == 2 && x.shape[1] == weight.shape[0], "linear \(x.shape) x \(weight.shape)")
        let (rows, k, n) = (x.shape[0], x.shape[1], weight.shape[1])
        if let bias { precondition(bias.shape == [n], "bias \(bias.shape) for \(n) outputs") }
        var inputs = [x, weight]
        if let bias { inputs.append(bias) }
        // Every element is written below (the bias's rows, or sgemm with beta 0): the result needs no zeroing (fc-ae's
        // decoder output, 784 KB a step).
        let out = Tensor.result(shape: [rows, n], storage: FloatStorage(uninitializedCount: rows * n), inputs: inputs) { out in
            let dy = out.grad
            if relu {
                // The result's gradient is this op's alone once its backward runs (its users have all added to it,
                // and it reads its own values, so no user wrote the gradient over them): masked in place it becomes
                // the pre-activation's gradient.
                let y = out.data
                Parallel.forEachAlignedChunk(of: rows * n) { r in
                    for i in r { let g = dy[i], v = y[i]; dy[i] = v > 0 ? g : 0 }
                }
            }
            // The input's gradient, when no other user has written one yet, goes into a fresh buffer with beta 0 instead of a
            // zeroed one that sgemm reads back.
            if x.requiresGrad {
                let (dx, overwrite) = x.gradientForWriting()
                BLAS.sgemm(transA: false, transB: true, m: rows, n: k, k: n, a: dy, lda: n, b: weight.data, ldb: n, beta: overwrite ? 0 : 1,
                           c: dx, ldc: k, backend: GEMMSelection.denseBackend(rows: rows, weights: k * n))
            }
            // A parameter's first gradient of a step is written over (`ParameterStore.deferGradientZeroing`).
            if weight.requiresGrad {
                let (dw, overwrite) = weight.gradientForWriting()
                BLAS.sgemm(transA: true, transB: false, m: k, n: n, k: rows, a: x.data, lda: k, b: dy, ldb: n, beta: overwrite ? 0 : 1, c: dw,
                           ldc: n, backend: GEMMSelection.denseBackend(rows: rows))
            }
            if let bias, bias.requiresGrad {
                let (db, overwrite) = bias.gradientForWriting()
                accumulateColumnSums(dy, rows: rows, cols: n, into: db, overwrite: overwrite)
            }
        }
        let y = out.data
        if let bias {
            let bp = bias.data
            for r in 0..<rows { (y + r * n).update(from: bp, count: n) }
        }
        BLAS.sgemm(transA: false, transB: false, m: rows, n: n, k: k, a: x.data, lda: k, b: weight.data, ldb: n,
                   beta: bias == nil ? 0 : 1, c: y, ldc: n, backend: GEMMSelection.denseBackend(rows: rows, weights: k * n))
        if relu {
            Parallel.forEachAlignedChunk(of: rows * n) { r in
                for i in r { let v = y[i]; y[i] = v > 0 ? v : 0 }
            }
        }
        return out
    }
}

/// out[c] += sum over rows of x[r, c]; with `overwrite`, out[c] = that sum (the first row stored, the rest added: the
/// bits of adding them to zeros, but for the sign of a zero).
@inline(__always)
func accumulateColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>, overwrite: Bool = false) {
    if overwrite {
        guard rows > 0 else { out.update(repeating: 0, count: cols); return }
        out.update(from: x, count: cols)
    }
    for r in (overwrite ? 1 : 0)..<rows {
        let row = x + r * cols
        for c in 0..<cols { out[c] += row[c] }
    }
}
