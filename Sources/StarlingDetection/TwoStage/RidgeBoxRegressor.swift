import StarlingCore

/// R-CNN's class-specific bounding-box regression (R. Girshick et al., CVPR 2014, appendix C): a linear map from a
/// proposal's features to the `BoxCoder` deltas (weights 1) that take it to the ground-truth box it overlaps most,
/// fitted by regularised least squares (ridge, lambda = 1,000 in the paper) on the proposals with IoU > 0.6.
///
/// The fit reads only sums (count, sum x, sum t, X^T X, X^T T), accumulated in Double: a data-parallel run sums each
/// rank's with one allreduce (`Statistics.flat`) and every rank solves the same system, one rank's up to the order of
/// the additions. The intercept is not regularised (the features and targets are centred first, as scikit-learn's
/// `Ridge` does); the paper does not say.
public struct RidgeBoxRegressor: Equatable, Sendable {
    /// [4][dimension]: the weights of dx, dy, dw, dh.
    public var weights: [[Float]]
    public var bias: SIMD4<Float>

    public init(weights: [[Float]], bias: SIMD4<Float>) {
        precondition(weights.count == 4, "a box regressor has four outputs, not \(weights.count)")
        self.weights = weights
        self.bias = bias
    }

    public var dimension: Int { weights[0].count }

    public func deltas(_ x: UnsafePointer<Float>) -> SIMD4<Float> {
        var out = bias
        for k in 0..<4 {
            weights[k].withUnsafeBufferPointer { w in
                var s: Float = 0
                for j in 0..<w.count { s += w[j] * x[j] }
                out[k] += s
            }
        }
        return out
    }

    /// The sums a fit needs.
    public struct Statistics: Sendable {
        public let dimension: Int
        public var count: Double = 0
        public var sumX: [Double], sumT: [Double]
        /// Upper and lower triangles both kept: the allreduce and the solve read the plain matrix.
        public var xtx: [Double], xtt: [Double]

        public init(dimension: Int) {
            self.dimension = dimension
            sumX = Array(repeating: 0, count: dimension)
            sumT = Array(repeating: 0, count: 4)
            xtx = Array(repeating: 0, count: dimension * dimension)
            xtt = Array(repeating: 0, count: dimension * 4)
        }

        /// Adds `rows` samples: features row-major [rows x dimension] and their targets.
        public mutating func add(_ features: UnsafePointer<Float>, rows: Int, targets: [SIMD4<Float>]) {
            precondition(targets.count == rows, "\(targets.count) targets for \(rows) feature rows")
            guard rows > 0 else { return }
            let d = dimension
            let x = (0..<(rows * d)).map { Double(features[$0]) }
            let t = targets.flatMap { [Double($0[0]), Double($0[1]), Double($0[2]), Double($0[3])] }
            count += Double(rows)
            for r in 0..<rows {
                for i in 0..<d { sumX[i] += x[r * d + i] }
                for k in 0..<4 { sumT[k] += t[r * 4 + k] }
            }
            x.withUnsafeBufferPointer { x in
                t.withUnsafeBufferPointer { t in
                    xtx.withUnsafeMutableBufferPointer { a in
                        BLAS.dgemm(transA: true, transB: false, m: d, n: d, k: rows, a: x.baseAddress!, lda: d, b: x.baseAddress!, ldb: d,
                                   beta: 1, c: a.baseAddress!, ldc: d)
                    }
                    xtt.withUnsafeMutableBufferPointer { b in
                        BLAS.dgemm(transA: true, transB: false, m: d, n: 4, k: rows, a: x.baseAddress!, lda: d, b: t.baseAddress!, ldb: 4,
                                   beta: 1, c: b.baseAddress!, ldc: 4)
                    }
                }
            }
        }

        /// All the sums in one array (count first), for an allreduce; `init(flat:)` reads it back.
        public var flat: [Double] { [count] + sumX + sumT + xtx + xtt }

        public init(dimension d: Int, flat: [Double]) {
            precondition(flat.count == 1 + d + 4 + d * d + 4 * d, "\(flat.count) sums for a \(d)-feature regressor")
            self.dimension = d
            count = flat[0]
            sumX = Array(flat[1 ..< 1 + d])
            sumT = Array(flat[1 + d ..< 5 + d])
            xtx = Array(flat[5 + d ..< 5 + d + d * d])
            xtt = Array(flat[5 + d + d * d ..< flat.count])
        }
    }

    /// The ridge fit: W = (Xc^T Xc + lambda I)^-1 Xc^T Tc on centred features and targets, bias = mean t - W mean x.
    /// No samples: the zero map (every proposal kept as it is).
    public static func fit(_ s: Statistics, lambda: Double = 1000) -> RidgeBoxRegressor {
        let d = s.dimension
        guard s.count > 0 else { return RidgeBoxRegressor(weights: Array(repeating: Array(repeating: 0, count: d), count: 4), bias: .zero) }
        let n = s.count
        let meanX = s.sumX.map { $0 / n }, meanT = s.sumT.map { $0 / n }
        var a = s.xtx, b = s.xtt
        for i in 0..<d {
            for j in 0..<d { a[i * d + j] -= n * meanX[i] * meanX[j] }
            a[i * d + i] += lambda
            for k in 0..<4 { b[i * 4 + k] -= n * meanX[i] * meanT[k] }
        }
        let solution = choleskySolve(a, b, size: d, columns: 4)
        var weights = Array(repeating: [Float](repeating: 0, count: d), count: 4)
        var bias = SIMD4<Float>.zero
        for k in 0..<4 {
            var shift = meanT[k]
            for i in 0..<d {
                weights[k][i] = Float(solution[i * 4 + k])
                shift -= solution[i * 4 + k] * meanX[i]
            }
            bias[k] = Float(shift)
        }
        return RidgeBoxRegressor(weights: weights, bias: bias)
    }

    /// X with A X = B for a symmetric positive definite A [size x size] and B [size x columns], both row-major, by
    /// A = L L^T and two triangular solves. Ridge's lambda I keeps A positive definite.
    static func choleskySolve(_ a: [Double], _ b: [Double], size n: Int, columns m: Int) -> [Double] {
        var l = a, x = b
        l.withUnsafeMutableBufferPointer { l in
            x.withUnsafeMutableBufferPointer { x in
                for j in 0..<n {
                    var diagonal = l[j * n + j]
                    for k in 0..<j { diagonal -= l[j * n + k] * l[j * n + k] }
                    precondition(diagonal > 0, "ridge system not positive definite at row \(j)")
                    let root = diagonal.squareRoot()
                    l[j * n + j] = root
                    for i in (j + 1)..<max(j + 1, n) {
                        var v = l[i * n + j]
                        for k in 0..<j { v -= l[i * n + k] * l[j * n + k] }
                        l[i * n + j] = v / root
                    }
                }
                // L y = b, then L^T x = y, each column of B at once.
                for i in 0..<n {
                    for c in 0..<m {
                        var v = x[i * m + c]
                        for k in 0..<i { v -= l[i * n + k] * x[k * m + c] }
                        x[i * m + c] = v / l[i * n + i]
                    }
                }
                for i in stride(from: n - 1, through: 0, by: -1) {
                    for c in 0..<m {
                        var v = x[i * m + c]
                        for k in (i + 1)..<max(i + 1, n) { v -= l[k * n + i] * x[k * m + c] }
                        x[i * m + c] = v / l[i * n + i]
                    }
                }
            }
        }
        return x
    }
}
