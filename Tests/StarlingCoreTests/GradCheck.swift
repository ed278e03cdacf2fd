import Testing
@testable import StarlingCore

/// Random values in [low, high) from a fixed seed.
func randomValues(_ n: Int, seed: UInt64, _ low: Float = -1, _ high: Float = 1) -> [Float] {
    var rng = RandomGenerator(seed: seed)
    return (0..<n).map { _ in rng.uniform(low, high) }
}

/// A differentiable leaf with random values.
func randomVariable(_ shape: [Int], seed: UInt64, _ low: Float = -1, _ high: Float = 1) -> Tensor {
    Tensor.variable(shape: shape, values: randomValues(Tensor.elementCount(shape), seed: seed, low, high))
}

/// Checks the analytic gradient of `f` with respect to each of `inputs` against central finite differences.
///
/// A non-scalar output is projected onto fixed random weights w (objective = sum(w * f)), so every output
/// element's gradient path is exercised. The numerical side evaluates in Float32 and sums in Double; `eps`
/// and the tolerances suit Float32 (|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)).
func checkGradients(_ inputs: [Tensor], eps: Float = 1e-2, rtol: Float = 2e-2, atol: Float = 2e-3,
                    sourceLocation: SourceLocation = #_sourceLocation,
                    _ f: ([Tensor]) -> Tensor) {
    for x in inputs { x.clearGrad() }
    let out = f(inputs)
    let weights = randomValues(out.count, seed: 99, 0.5, 1.5)
    out.backward(seed: weights)
    func objective() -> Double {
        let y = GradMode.disabled { f(inputs) }
        var s = 0.0
        for i in 0..<y.count { s += Double(weights[i]) * Double(y.data[i]) }
        return s
    }
    for (k, x) in inputs.enumerated() {
        guard let analytic = x.gradArray else {
            Issue.record("input \(k) received no gradient", sourceLocation: sourceLocation)
            continue
        }
        var worst: (index: Int, a: Float, n: Float)? = nil
        for i in 0..<x.count {
            let saved = x.data[i]
            x.data[i] = saved + eps
            let plus = objective()
            x.data[i] = saved - eps
            let minus = objective()
            x.data[i] = saved
            let numeric = Float((plus - minus) / Double(2 * eps))
            let a = analytic[i]
            if abs(a - numeric) > atol + rtol * max(abs(a), abs(numeric)), worst == nil { worst = (i, a, numeric) }
        }
        if let w = worst {
            Issue.record("input \(k) \(x.shape): gradient[\(w.index)] analytic \(w.a) vs numeric \(w.n)", sourceLocation: sourceLocation)
        }
    }
}

/// Naive row-major matrix product in Double, the reference for sgemm-based ops.
func referenceMatmul(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
    var c = [Float](repeating: 0, count: m * n)
    for i in 0..<m { for j in 0..<n {
        var s = 0.0
        for p in 0..<k { s += Double(a[i * k + p]) * Double(b[p * n + j]) }
        c[i * n + j] = Float(s)
    } }
    return c
}

func expectClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-4, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, "lengths \(a.count) vs \(b.count)", sourceLocation: sourceLocation)
    for i in 0..<min(a.count, b.count) where abs(a[i] - b[i]) > tolerance * max(1, abs(b[i])) {
        Issue.record("element \(i): \(a[i]) vs \(b[i])", sourceLocation: sourceLocation)
        return
    }
}
