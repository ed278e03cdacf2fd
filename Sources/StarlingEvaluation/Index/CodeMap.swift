import Foundation
import StarlingCore
import StarlingNN
import StarlingPlots

/// Codes projected to two dimensions for a picture, as the Keras tutorial suggests for looking at an autoencoder's
/// codes: principal components, or t-SNE (van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 2008),
/// exact for small sets and Barnes-Hut beyond (van der Maaten, "Accelerating t-SNE using Tree-Based Algorithms",
/// JMLR 2014).
public enum CodeMap {
    public enum Method: String, CaseIterable, Sendable { case tsne, pca }

    /// The first two principal components of `codes` ([n, d] row-major): each point's coordinates along them, [n, 2].
    /// Each axis's sign is chosen so that its largest-magnitude coefficient is positive, which makes the map
    /// reproducible (an eigenvector's sign is otherwise arbitrary).
    public static func pca(_ codes: [Float], count n: Int, dimension d: Int) -> [Double] {
        precondition(codes.count == n * d && n > 0 && d > 0, "pca: \(codes.count) values for \(n) x \(d)")
        var mean = [Double](repeating: 0, count: d)
        for i in 0..<n { for k in 0..<d { mean[k] += Double(codes[i * d + k]) } }
        for k in 0..<d { mean[k] /= Double(n) }
        // Covariance (d x d); codes have at most a few thousand values, so this stays small.
        var covariance = [Double](repeating: 0, count: d * d)
        var centred = [Double](repeating: 0, count: d)
        covariance.withUnsafeMutableBufferPointer { c in
            for i in 0..<n {
                for k in 0..<d { centred[k] = Double(codes[i * d + k]) - mean[k] }
                for a in 0..<d where centred[a] != 0 {
                    let x = centred[a]
                    for b in a..<d { c[a * d + b] += x * centred[b] }
                }
            }
            for a in 0..<d { for b in a..<d { c[b * d + a] = c[a * d + b] } }
        }
        let axes = topEigenvectors(covariance, dimension: d, count: min(2, d))
        var projected = [Double](repeating: 0, count: 2 * n)
        for i in 0..<n {
            for (axis, v) in axes.enumerated() {
                var s = 0.0
                for k in 0..<d { s += (Double(codes[i * d + k]) - mean[k]) * v[k] }
                projected[2 * i + axis] = s
            }
        }
        return projected
    }

    /// The `count` leading eigenvectors of a symmetric positive semi-definite matrix, by orthogonal (subspace)
    /// iteration with Gram-Schmidt, started from a fixed basis so that the result does not depend on a seed.
    static func topEigenvectors(_ matrix: [Double], dimension d: Int, count: Int) -> [[Double]] {
        // Start vectors with a component along every axis, so none starts orthogonal to a leading eigenvector.
        var basis: [[Double]] = (0..<count).map { j -> [Double] in
            (0..<d).map { k -> Double in
                let spread: Double = 1e-3 * Double((k * 7 + j * 13) % 11 + 1)
                return (k % count == j ? 1.0 : 0.0) + spread
            }
        }
        var previous = basis
        for iteration in 0..<1000 {
            var next = basis.map { v -> [Double] in
                var w = [Double](repeating: 0, count: d)
                for a in 0..<d {
                    var s = 0.0
                    for b in 0..<d { s += matrix[a * d + b] * v[b] }
                    w[a] = s
                }
                return w
            }
            for j in 0..<count {
                for i in 0..<j {
                    let dot = Self.dot(next[j], next[i])
                    for k in 0..<d { next[j][k] -= dot * next[i][k] }
                }
                let norm = Self.dot(next[j], next[j]).squareRoot()
                if norm > 0 { for k in 0..<d { next[j][k] /= norm } }
            }
            basis = next
            if iteration > 10 {
                let change = zip(basis, previous).map { a, b in 1 - abs(Self.dot(a, b)) }.max() ?? 0
                if change < 1e-14 { break }
            }
            previous = basis
        }
        return basis.map { v in
            let largest = v.max { abs($0) < abs($1) } ?? 1
            return largest < 0 ? v.map { -$0 } : v
        }
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double {
        var s = 0.0
        for k in 0..<a.count { s += a[k] * b[k] }
        return s
    }

    public struct TSNESettings: Sendable {
        public var perplexity = 30.0
        public var iterations = 1000
        public var seed: UInt64 = 0
        /// Up to this many points the gradient is exact (O(n^2) a step); beyond, Barnes-Hut with `theta`.
        public var exactUpTo = 2000
        public var theta = 0.5
        public init() {}
    }

    /// t-SNE of `codes` ([n, d] row-major) to [n, 2]. The optimisation is the paper's: early exaggeration 12 for the
    /// first 250 iterations, momentum 0.5 then 0.8, learning rate max(50, n / 48), per-coordinate gains.
    public static func tsne(_ codes: [Float], count n: Int, dimension d: Int, settings: TSNESettings = TSNESettings()) -> [Double] {
        precondition(codes.count == n * d && n > 1 && d > 0, "tsne: \(codes.count) values for \(n) x \(d)")
        let exact = n <= settings.exactUpTo
        // Neighbours of each point and their affinities: all others (exact) or the 3 x perplexity nearest.
        let neighbours = exact ? n - 1 : min(n - 1, Int(3 * settings.perplexity))
        let perplexity = min(settings.perplexity, Double(n - 1) / 3)
        let conditional = conditionalAffinities(codes, count: n, dimension: d, neighbours: neighbours, perplexity: perplexity)
        // Symmetrised: p_ij = (p_j|i + p_i|j) / 2n, kept as sorted sparse rows.
        var rows = [[Int: Double]](repeating: [:], count: n)
        for i in 0..<n {
            for (j, p) in conditional[i] {
                rows[i][j, default: 0] += p / Double(2 * n)
                rows[j][i, default: 0] += p / Double(2 * n)
            }
        }
        let affinity = rows.map { $0.sorted { $0.key < $1.key }.map { (index: $0.key, p: $0.value) } }

        var rng = RandomGenerator(seed: settings.seed)
        var y = (0..<(2 * n)).map { _ in 1e-4 * Double(rng.normal()) }
        var velocity = [Double](repeating: 0, count: 2 * n)
        var gains = [Double](repeating: 1, count: 2 * n)
        // scikit-learn's rule (Belkina et al. 2019): n / (4 x exaggeration), at least 50. The paper's fixed 200 made
        // small sets oscillate (three clusters of 30 points ended three times wider than with 50).
        let learningRate = max(50, Double(n) / 48)
        var gradient = [Double](repeating: 0, count: 2 * n)
        for iteration in 0..<settings.iterations {
            let exaggeration = iteration < 250 ? 12.0 : 1.0
            let momentum = iteration < 250 ? 0.5 : 0.8
            if exact { exactGradient(y, affinity: affinity, exaggeration: exaggeration, into: &gradient) } else {
                barnesHutGradient(y, affinity: affinity, exaggeration: exaggeration, theta: settings.theta, into: &gradient)
            }
            for k in 0..<(2 * n) {
                gains[k] = (gradient[k] > 0) != (velocity[k] > 0) ? gains[k] + 0.2 : max(0.01, gains[k] * 0.8)
                velocity[k] = momentum * velocity[k] - learningRate * gains[k] * gradient[k]
                y[k] += velocity[k]
            }
            // Re-centre: the objective does not see translations, and drift would only cost precision.
            var (mx, my) = (0.0, 0.0)
            for i in 0..<n { mx += y[2 * i]; my += y[2 * i + 1] }
            for i in 0..<n { y[2 * i] -= mx / Double(n); y[2 * i + 1] -= my / Double(n) }
        }
        return y
    }

    /// p_j|i for each i over its `neighbours` nearest points, the Gaussian's precision found by bisection so that
    /// the distribution's perplexity is `perplexity`.
    static func conditionalAffinities(_ codes: [Float], count n: Int, dimension d: Int, neighbours k: Int, perplexity: Double) -> [[(Int, Double)]] {
        let target = log(perplexity)
        var result = [[(Int, Double)]](repeating: [], count: n)
        var distances = [Double](repeating: 0, count: n)
        codes.withUnsafeBufferPointer { x in
            for i in 0..<n {
                for j in 0..<n {
                    var s = 0.0
                    if j != i { for c in 0..<d { let diff = Double(x[i * d + c]) - Double(x[j * d + c]); s += diff * diff } }
                    distances[j] = s
                }
                var candidates = (0..<n).filter { $0 != i }
                if k < n - 1 {
                    candidates.sort { distances[$0] < distances[$1] }
                    candidates = Array(candidates.prefix(k))
                }
                let d2 = candidates.map { distances[$0] }
                let nearest = d2.min() ?? 0
                var (beta, low, high) = (1.0, 0.0, Double.infinity)
                var p = [Double](repeating: 0, count: d2.count)
                for _ in 0..<200 {
                    // Shifted by the nearest distance, which leaves p unchanged and keeps exp from underflowing.
                    var sum = 0.0, weighted = 0.0
                    for (m, dist) in d2.enumerated() {
                        p[m] = exp(-(dist - nearest) * beta)
                        sum += p[m]
                        weighted += (dist - nearest) * p[m]
                    }
                    let entropy = log(sum) + beta * weighted / sum
                    for m in 0..<p.count { p[m] /= sum }
                    if abs(entropy - target) < 1e-5 { break }
                    if entropy > target {
                        low = beta
                        beta = high.isInfinite ? beta * 2 : (beta + high) / 2
                    } else {
                        high = beta
                        beta = (beta + low) / 2
                    }
                }
                result[i] = zip(candidates, p).map { ($0, $1) }
            }
        }
        return result
    }

    /// The exact gradient of KL(P || Q): 4 sum_j (p_ij - q_ij) w_ij (y_i - y_j), w_ij = 1 / (1 + |y_i - y_j|^2).
    static func exactGradient(_ y: [Double], affinity: [[(index: Int, p: Double)]], exaggeration: Double, into gradient: inout [Double]) {
        let n = y.count / 2
        var z = 0.0
        var repulsion = [Double](repeating: 0, count: 2 * n)
        y.withUnsafeBufferPointer { y in
            repulsion.withUnsafeMutableBufferPointer { rep in
                for i in 0..<n {
                    let (yi0, yi1) = (y[2 * i], y[2 * i + 1])
                    var (r0, r1, zi) = (0.0, 0.0, 0.0)
                    for j in 0..<n where j != i {
                        let (d0, d1) = (yi0 - y[2 * j], yi1 - y[2 * j + 1])
                        let w = 1 / (1 + d0 * d0 + d1 * d1)
                        zi += w
                        r0 += w * w * d0
                        r1 += w * w * d1
                    }
                    rep[2 * i] = r0
                    rep[2 * i + 1] = r1
                    z += zi
                }
            }
        }
        attractionMinus(repulsion, z: z, y: y, affinity: affinity, exaggeration: exaggeration, into: &gradient)
    }

    /// gradient = 4 (exaggeration x attraction - repulsion / Z), the attraction over the sparse affinities.
    private static func attractionMinus(_ repulsion: [Double], z: Double, y: [Double], affinity: [[(index: Int, p: Double)]],
                                        exaggeration: Double, into gradient: inout [Double]) {
        for i in 0..<affinity.count {
            var (a0, a1) = (0.0, 0.0)
            for (j, p) in affinity[i] {
                let (d0, d1) = (y[2 * i] - y[2 * j], y[2 * i + 1] - y[2 * j + 1])
                let w = 1 / (1 + d0 * d0 + d1 * d1)
                a0 += p * w * d0
                a1 += p * w * d1
            }
            gradient[2 * i] = 4 * (exaggeration * a0 - repulsion[2 * i] / z)
            gradient[2 * i + 1] = 4 * (exaggeration * a1 - repulsion[2 * i + 1] / z)
        }
    }

    /// The Barnes-Hut gradient: the repulsion of a far quadtree cell (its size over its distance below theta) is
    /// that of its points gathered at their centre of mass.
    static func barnesHutGradient(_ y: [Double], affinity: [[(index: Int, p: Double)]], exaggeration: Double, theta: Double,
                                  into gradient: inout [Double]) {
        let n = y.count / 2
        let tree = QuadTree(y)
        var repulsion = [Double](repeating: 0, count: 2 * n)
        var z = 0.0
        var stack: [Int] = []
        for i in 0..<n {
            let (yi0, yi1) = (y[2 * i], y[2 * i + 1])
            var (r0, r1, zi) = (0.0, 0.0, 0.0)
            stack.removeAll(keepingCapacity: true)
            stack.append(0)
            while let node = stack.popLast() {
                let cell = tree.nodes[node]
                guard cell.count > 0 else { continue }
                let (d0, d1) = (yi0 - cell.massX, yi1 - cell.massY)
                let d2 = d0 * d0 + d1 * d1
                if cell.firstChild < 0 || (2 * cell.halfWidth) * (2 * cell.halfWidth) < theta * theta * d2 {
                    // A leaf holding only this point repels nothing; a leaf of duplicates of it neither.
                    if cell.firstChild < 0 && d2 == 0 { continue }
                    let w = 1 / (1 + d2)
                    let mass = Double(cell.count)
                    zi += mass * w
                    r0 += mass * w * w * d0
                    r1 += mass * w * w * d1
                } else {
                    for c in 0..<4 { stack.append(cell.firstChild + c) }
                }
            }
            repulsion[2 * i] = r0
            repulsion[2 * i + 1] = r1
            z += zi
        }
        attractionMinus(repulsion, z: z, y: y, affinity: affinity, exaggeration: exaggeration, into: &gradient)
    }

    /// A point quadtree over 2-D positions with each cell's count and centre of mass.
    struct QuadTree {
        struct Node {
            var centreX: Double, centreY: Double, halfWidth: Double
            var count = 0
            var massX = 0.0, massY = 0.0
            /// Index of the first of four children (-1: a leaf).
            var firstChild = -1
            /// A leaf's point (-1: empty).
            var point = -1
        }
        var nodes: [Node] = []
        /// Points closer than this are kept in one leaf (duplicates would otherwise split forever).
        private let maximumDepth = 48

        init(_ y: [Double]) {
            let n = y.count / 2
            var (minX, maxX, minY, maxY) = (Double.infinity, -Double.infinity, Double.infinity, -Double.infinity)
            for i in 0..<n {
                minX = min(minX, y[2 * i]); maxX = max(maxX, y[2 * i])
                minY = min(minY, y[2 * i + 1]); maxY = max(maxY, y[2 * i + 1])
            }
            let half = max(maxX - minX, maxY - minY) / 2 + 1e-5
            nodes.reserveCapacity(4 * n)
            nodes.append(Node(centreX: (minX + maxX) / 2, centreY: (minY + maxY) / 2, halfWidth: half))
            for i in 0..<n { insert(i, x: y[2 * i], y: y[2 * i + 1], y) }
        }

        private mutating func insert(_ point: Int, x: Double, y py: Double, _ y: [Double]) {
            var node = 0
            var depth = 0
            while true {
                // Every cell on the way counts the point into its centre of mass.
                let count = Double(nodes[node].count)
                nodes[node].massX = (nodes[node].massX * count + x) / (count + 1)
                nodes[node].massY = (nodes[node].massY * count + py) / (count + 1)
                nodes[node].count += 1
                if nodes[node].firstChild < 0 {
                    if nodes[node].count == 1 { nodes[node].point = point; return }
                    if depth >= maximumDepth { return }   // duplicates share the leaf
                    // Split: the leaf's earlier point moves one level down, then this point continues.
                    let earlier = nodes[node].point
                    nodes[node].point = -1
                    let first = nodes.count
                    let h = nodes[node].halfWidth / 2
                    for c in 0..<4 {
                        nodes.append(Node(centreX: nodes[node].centreX + (c & 1 == 0 ? -h : h),
                                          centreY: nodes[node].centreY + (c & 2 == 0 ? -h : h), halfWidth: h))
                    }
                    nodes[node].firstChild = first
                    if earlier >= 0 {
                        let child = first + quadrant(nodes[node], y[2 * earlier], y[2 * earlier + 1])
                        nodes[child].count = 1
                        nodes[child].point = earlier
                        (nodes[child].massX, nodes[child].massY) = (y[2 * earlier], y[2 * earlier + 1])
                    }
                }
                node = nodes[node].firstChild + quadrant(nodes[node], x, py)
                depth += 1
            }
        }

        private func quadrant(_ node: Node, _ x: Double, _ y: Double) -> Int {
            (x < node.centreX ? 0 : 1) + (y < node.centreY ? 0 : 2)
        }
    }

    /// The map as a scatter plot, one colour per label with a legend (one colour without labels).
    public static func plot(_ points: [Double], labels: [Int32]?, title: String, method: Method) -> Plot {
        let n = points.count / 2
        let axis = method == .pca ? "principal component" : "t-SNE"
        var plot = Plot(title: title, xLabel: "\(axis) 1", yLabel: "\(axis) 2")
        let x = (0..<n).map { points[2 * $0] }, y = (0..<n).map { points[2 * $0 + 1] }
        guard let labels, labels.count == n else {
            plot.scatter(x: x, y: y, label: "codes", size: 2)
            return plot
        }
        for label in Set(labels).sorted() {
            let members = (0..<n).filter { labels[$0] == label }
            plot.scatter(x: members.map { x[$0] }, y: members.map { y[$0] }, label: "\(label)",
                         color: RGB.palette[Int(label) % RGB.palette.count], size: 2)
        }
        return plot
    }
}
