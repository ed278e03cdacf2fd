import StarlingCore

/// A linear two-class support vector machine, R-CNN's per-class scorer (R. Girshick et al., "Rich feature hierarchies
/// for accurate object detection and semantic segmentation", CVPR 2014, section 2.3): `score(x) = w . x + b`, positive
/// for the class.
///
/// Trained as LIBLINEAR trains the released code's SVMs (L2-regularised hinge loss, its default solver): dual coordinate
/// descent (C.-J. Hsieh et al., "A dual coordinate descent method for large-scale linear SVM", ICML 2008, algorithm 1),
/// minimising 0.5 |w|^2 + sum_i C_i max(0, 1 - y_i (w . x_i + b)) with the bias learned as LIBLINEAR does, as the
/// weight of an extra feature of constant value `biasMultiplier` (so it is regularised too). Each positive counts
/// `positiveWeight` times C, as R-CNN's `pos_loss_weight` makes it. The passes visit the samples in an order drawn from
/// `seed`, so a solve repeats exactly on any machine and rank.
public struct LinearSVM: Equatable, Sendable {
    public var weights: [Float]
    public var bias: Float

    public init(weights: [Float], bias: Float) {
        self.weights = weights
        self.bias = bias
    }

    public init(dimension: Int) { self.init(weights: Array(repeating: 0, count: dimension), bias: 0) }

    public func score(_ x: UnsafePointer<Float>) -> Float {
        var s: Float = 0
        weights.withUnsafeBufferPointer { w in
            for j in 0..<w.count { s += w[j] * x[j] }
        }
        return s + bias
    }

    public struct Solver: Sendable {
        /// R-CNN's settings: C = 0.001, positives weighted 2, bias feature 10.
        public var c: Float = 0.001
        public var positiveWeight: Float = 2
        public var biasMultiplier: Float = 10
        /// Stop when the projected gradient's spread over a pass falls under this (LIBLINEAR's stopping rule and its
        /// default, 0.1), or after `maxPasses`.
        public var tolerance: Float = 0.1
        public var maxPasses: Int = 1000
        public var seed: UInt64 = 0

        public init(c: Float = 0.001, positiveWeight: Float = 2, biasMultiplier: Float = 10, tolerance: Float = 0.1, maxPasses: Int = 1000,
                    seed: UInt64 = 0) {
            self.c = c
            self.positiveWeight = positiveWeight
            self.biasMultiplier = biasMultiplier
            self.tolerance = tolerance
            self.maxPasses = maxPasses
            self.seed = seed
        }

        /// The machine for samples `features` (row-major, `dimension` a row) labelled `positive`.
        public func solve(features: UnsafePointer<Float>, positive: [Bool], dimension d: Int) -> LinearSVM {
            let n = positive.count
            guard n > 0 else { return LinearSVM(dimension: d) }
            // w holds the d weights and, last, the bias feature's; Double keeps the many small updates exact enough.
            var w = [Double](repeating: 0, count: d + 1)
            var alpha = [Double](repeating: 0, count: n)
            let b2 = Double(biasMultiplier) * Double(biasMultiplier)
            var squaredNorm = [Double](repeating: 0, count: n)
            for i in 0..<n {
                let x = features + i * d
                var s = b2
                for j in 0..<d { s += Double(x[j]) * Double(x[j]) }
                squaredNorm[i] = s
            }
            var order = Array(0..<n)
            var rng = RandomGenerator(seed: seed)
            w.withUnsafeMutableBufferPointer { w in
                for _ in 0..<maxPasses {
                    order.shuffle(using: &rng)
                    var largest = -Double.infinity, smallest = Double.infinity
                    for i in order {
                        let x = features + i * d
                        let y: Double = positive[i] ? 1 : -1
                        let upper = Double(c) * (positive[i] ? Double(positiveWeight) : 1)
                        var margin = w[d] * Double(biasMultiplier)
                        for j in 0..<d { margin += w[j] * Double(x[j]) }
                        let g = y * margin - 1
                        let projected = alpha[i] == 0 ? min(g, 0) : (alpha[i] == upper ? max(g, 0) : g)
                        largest = max(largest, projected)
                        smallest = min(smallest, projected)
                        guard projected != 0 else { continue }
                        let updated = min(max(alpha[i] - g / squaredNorm[i], 0), upper)
                        let step = (updated - alpha[i]) * y
                        alpha[i] = updated
                        for j in 0..<d { w[j] += step * Double(x[j]) }
                        w[d] += step * Double(biasMultiplier)
                    }
                    if largest - smallest < Double(tolerance) { break }
                }
            }
            return LinearSVM(weights: w[0..<d].map { Float($0) }, bias: Float(w[d] * Double(biasMultiplier)))
        }

        /// The primal objective the solver minimises, for `svm` on these samples (the tests' optimality check).
        public func objective(_ svm: LinearSVM, features: UnsafePointer<Float>, positive: [Bool], dimension d: Int) -> Double {
            let biasWeight = Double(svm.bias) / Double(biasMultiplier)
            var value = 0.5 * (svm.weights.reduce(0) { $0 + Double($1) * Double($1) } + biasWeight * biasWeight)
            for i in positive.indices {
                let y: Double = positive[i] ? 1 : -1
                let upper = Double(c) * (positive[i] ? Double(positiveWeight) : 1)
                value += upper * max(0, 1 - y * Double(svm.score(features + i * d)))
            }
            return value
        }
    }
}

/// R-CNN's hard negative mining for one class (section 2.3; the released code's `rcnn_train`): the negatives (features
/// of proposals overlapping no box of the class by IoU 0.3 or more) are far too many to train on at once, so a cache
/// holds the "hard" ones. Every positive is added before the first negative (the released code caches the positives of
/// the whole set first). Images are visited in order; a negative scoring above `hardThreshold` (-1, inside the margin)
/// under the current machine joins the cache; the machine is solved on the positives and the cache the first time
/// negatives join and then whenever more than `retrainLimit` have joined since the last solve, and cached negatives it
/// scores under `evictThreshold` (-1.2) leave the cache. One pass over the images, as the paper found enough; a last
/// solve closes it.
///
/// What joins is decided per call of `add` (one image's finds, in `RCNNSVMTraining`), not per rank: a data-parallel
/// run hands every rank's finds for the same image to `add`, so every rank keeps the same cache and solves the same
/// machine as one rank.
public struct HardNegativeMiner: Sendable {
    public var solver: LinearSVM.Solver
    public var hardThreshold: Float = -1
    public var evictThreshold: Float = -1.2
    public var retrainLimit: Int = 2000
    public let dimension: Int
    public private(set) var svm: LinearSVM
    public private(set) var positives: [Float] = []
    /// The cached negatives' features, row-major, and their (image, proposal) keys, so a negative joins once.
    public private(set) var negatives: [Float] = []
    public private(set) var negativeKeys: [NegativeKey] = []
    private var known: Set<NegativeKey> = []
    private var joinedSinceSolve = 0
    public private(set) var solves = 0

    public struct NegativeKey: Hashable, Comparable, Sendable {
        public var image: Int, proposal: Int
        public init(image: Int, proposal: Int) {
            self.image = image
            self.proposal = proposal
        }
        public static func < (a: Self, b: Self) -> Bool { (a.image, a.proposal) < (b.image, b.proposal) }
    }

    public init(dimension: Int, solver: LinearSVM.Solver = LinearSVM.Solver(), retrainLimit: Int = 2000) {
        self.dimension = dimension
        self.solver = solver
        self.retrainLimit = retrainLimit
        svm = LinearSVM(dimension: dimension)
    }

    public var negativeCount: Int { negativeKeys.count }
    public var positiveCount: Int { positives.count / dimension }

    /// The negatives of some images that the current machine finds hard (score > `hardThreshold`) and the cache does not
    /// hold yet: what a rank proposes for its images of a batch.
    public func hard(_ candidates: [(key: NegativeKey, features: [Float])]) -> [(key: NegativeKey, features: [Float])] {
        candidates.filter { c in
            !known.contains(c.key) && c.features.withUnsafeBufferPointer { svm.score($0.baseAddress!) } > hardThreshold
        }
    }

    /// Adds positives and hard negatives (every rank's, in any order: they are sorted by key), then solves if these are
    /// the first negatives to join or more than `retrainLimit` have joined since the last solve (the released code's
    /// `first_time || num_added > retrain_limit`).
    public mutating func add(positives newPositives: [[Float]], hardNegatives: [(key: NegativeKey, features: [Float])]) {
        for p in newPositives {
            precondition(p.count == dimension, "positive of \(p.count) features for a \(dimension)-feature SVM")
            positives += p
        }
        for n in hardNegatives.sorted(by: { $0.key < $1.key }) where !known.contains(n.key) {
            precondition(n.features.count == dimension, "negative of \(n.features.count) features for a \(dimension)-feature SVM")
            known.insert(n.key)
            negativeKeys.append(n.key)
            negatives += n.features
            joinedSinceSolve += 1
        }
        if joinedSinceSolve > 0 && (solves == 0 || joinedSinceSolve > retrainLimit) { solveAndEvict() }
    }

    /// The closing solve, after the last batch (the cache's evictions do not matter any more).
    public mutating func finish() {
        if joinedSinceSolve > 0 || solves == 0 { solveAndEvict() }
    }

    mutating func solveAndEvict() {
        let labels = Array(repeating: true, count: positiveCount) + Array(repeating: false, count: negativeCount)
        let samples = positives + negatives
        // Nothing to learn from (a class without boxes in images without proposals): the zero machine, which scores
        // every window 0.
        svm = samples.isEmpty ? LinearSVM(dimension: dimension)
            : samples.withUnsafeBufferPointer { solver.solve(features: $0.baseAddress!, positive: labels, dimension: dimension) }
        solves += 1
        joinedSinceSolve = 0
        var keptKeys: [NegativeKey] = [], kept: [Float] = []
        negatives.withUnsafeBufferPointer { f in
            for (i, key) in negativeKeys.enumerated() where svm.score(f.baseAddress! + i * dimension) >= evictThreshold {
                keptKeys.append(key)
                kept += f[i * dimension ..< (i + 1) * dimension]
            }
        }
        negativeKeys = keptKeys
        negatives = kept
        // An evicted negative stays known: the pass does not revisit its image, as in the released code.
    }
}
