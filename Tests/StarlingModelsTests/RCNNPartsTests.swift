import Foundation
import Testing
import StarlingCore
@testable import StarlingDetection

/// R-CNN's own parts: the SVM solver, hard negative mining and the ridge box regressor.
@Suite struct RCNNPartsTests {
    // MARK: SVM

    @Test func svmMatchesTheHandSolvedCase() {
        // Two points on a line, x = +1 (positive) and x = -1 (negative), no bias: the primal 0.5 w^2 + 2 C max(0, 1 - w)
        // is least at w = min(1, 2 C).
        let x: [Float] = [1, -1]
        for (c, expected) in [(Float(0.1), Float(0.2)), (0.25, 0.5), (10, 1)] {
            let solver = LinearSVM.Solver(c: c, positiveWeight: 1, biasMultiplier: 0, tolerance: 1e-7)
            let svm = x.withUnsafeBufferPointer { solver.solve(features: $0.baseAddress!, positive: [true, false], dimension: 1) }
            #expect(abs(svm.weights[0] - expected) < 1e-5, "C \(c): w \(svm.weights[0]), expected \(expected)")
            #expect(svm.bias == 0)
        }
    }

    /// Overlapping clouds in 6-D; labels y = sign(u . x + 0.3 + noise).
    static func clouds(_ n: Int, dimension d: Int = 6, seed: UInt64 = 7) -> (features: [Float], positive: [Bool]) {
        var rng = RandomGenerator(seed: seed)
        let u = (0..<d).map { _ in rng.normal() }
        var features: [Float] = [], positive: [Bool] = []
        for _ in 0..<n {
            let x = (0..<d).map { _ in rng.normal() }
            features += x
            positive.append(zip(u, x).reduce(0.3) { $0 + $1.0 * $1.1 } + 0.5 * rng.normal() > 0)
        }
        return (features, positive)
    }

    @Test func svmIsOptimalAndBeatsASubgradientSolver() {
        let d = 6
        let (features, positive) = Self.clouds(80, dimension: d)
        let solver = LinearSVM.Solver(c: 0.5, positiveWeight: 2, biasMultiplier: 1, tolerance: 1e-6, maxPasses: 20_000)
        features.withUnsafeBufferPointer { f in
            let x = f.baseAddress!
            let svm = solver.solve(features: x, positive: positive, dimension: d)
            let best = solver.objective(svm, features: x, positive: positive, dimension: d)
            // The objective is convex: no step along random directions (weights and bias together) improves it.
            var rng = RandomGenerator(seed: 11)
            for _ in 0..<200 {
                var moved = svm
                let step = Float(1e-3)
                for j in 0..<d { moved.weights[j] += step * rng.normal() }
                moved.bias += step * rng.normal()
                #expect(solver.objective(moved, features: x, positive: positive, dimension: d) >= best - 1e-7)
            }
            // A second, independent solver: subgradient descent on the same primal with decaying steps, never better.
            var w = [Double](repeating: 0, count: d + 1)
            var bestSubgradient = Double.infinity
            for t in 1...4000 {
                var g = w
                for i in positive.indices {
                    let y: Double = positive[i] ? 1 : -1
                    let weight = 0.5 * (positive[i] ? 2 : 1)
                    var margin = w[d]
                    for j in 0..<d { margin += w[j] * Double(x[i * d + j]) }
                    guard y * margin < 1 else { continue }
                    for j in 0..<d { g[j] -= weight * y * Double(x[i * d + j]) }
                    g[d] -= weight * y
                }
                let rate = 0.05 / Double(t).squareRoot()
                for j in 0...d { w[j] -= rate * g[j] }
                let candidate = LinearSVM(weights: w[0..<d].map { Float($0) }, bias: Float(w[d]))
                bestSubgradient = min(bestSubgradient, solver.objective(candidate, features: x, positive: positive, dimension: d))
            }
            #expect(best <= bestSubgradient + 1e-6, "dual coordinate descent \(best), subgradient \(bestSubgradient)")
            #expect(best > bestSubgradient - 0.02 * bestSubgradient, "the two solvers disagree: \(best) against \(bestSubgradient)")
        }
    }

    // MARK: Hard negative mining

    @Test func miningReachesTheFullSolutionFromAFewNegativesAndIgnoresOrder() {
        let d = 4
        var rng = RandomGenerator(seed: 5)
        func point(_ centre: Float, spread: Float) -> [Float] { (0..<d).map { _ in centre + spread * rng.normal() } }
        let positives = (0..<30).map { _ in point(1.5, spread: 0.7) }
        // 20 images of 200 negatives each, mostly easy (far away), some near the positives.
        let images: [[[Float]]] = (0..<20).map { _ in (0..<200).map { k in k % 25 == 0 ? point(0.5, spread: 0.7) : point(-3, spread: 0.7) } }
        let solver = LinearSVM.Solver(c: 0.05, positiveWeight: 2, biasMultiplier: 1, tolerance: 1e-4, maxPasses: 5000)

        func mine(shuffled: Bool) -> HardNegativeMiner {
            var miner = HardNegativeMiner(dimension: d, solver: solver, retrainLimit: 100)
            miner.add(positives: positives, hardNegatives: [])
            var order = RandomGenerator(seed: 9)
            // Batches of 4 images, as a data-parallel round would hand them over.
            for first in stride(from: 0, to: images.count, by: 4) {
                var found: [(key: HardNegativeMiner.NegativeKey, features: [Float])] = []
                for i in first..<(first + 4) {
                    found += miner.hard(images[i].enumerated().map { (HardNegativeMiner.NegativeKey(image: i, proposal: $0.offset), $0.element) })
                }
                if shuffled { found.shuffle(using: &order) }
                miner.add(positives: [], hardNegatives: found)
            }
            miner.finish()
            return miner
        }
        let mined = mine(shuffled: false)
        #expect(mine(shuffled: true).svm == mined.svm, "the order in which ranks hand over their finds changed the machine")
        #expect(mined.negativeCount < 800, "cache of \(mined.negativeCount) of 4,000 negatives")
        #expect(mined.solves >= 2)

        // Against the machine solved on every negative at once.
        let all = positives.flatMap { $0 } + images.flatMap { $0.flatMap { $0 } }
        let labels = Array(repeating: true, count: positives.count) + Array(repeating: false, count: 4000)
        all.withUnsafeBufferPointer { f in
            let full = solver.solve(features: f.baseAddress!, positive: labels, dimension: d)
            let fullObjective = solver.objective(full, features: f.baseAddress!, positive: labels, dimension: d)
            let minedObjective = solver.objective(mined.svm, features: f.baseAddress!, positive: labels, dimension: d)
            #expect(minedObjective <= fullObjective * 1.05, "mined \(minedObjective) against full \(fullObjective)")
            var disagreements = 0
            for i in labels.indices where (full.score(f.baseAddress! + i * d) > 0) != (mined.svm.score(f.baseAddress! + i * d) > 0) {
                disagreements += 1
            }
            #expect(disagreements <= 5, "\(disagreements) of \(labels.count) samples classified differently")
        }
    }

    /// The retrain trigger of the released code's `rcnn_train`: every positive first, a solve the first time negatives
    /// join, then a solve only once more than `retrainLimit` have joined since the last one (duplicates and evicted
    /// negatives do not join again), and a closing solve only if something joined after the last.
    @Test func miningSolvesOnItsFirstNegativesThenPastTheRetrainLimit() {
        let d = 2
        var miner = HardNegativeMiner(dimension: d, solver: LinearSVM.Solver(c: 1, positiveWeight: 1, biasMultiplier: 1), retrainLimit: 3)
        let positives: [[Float]] = [[2, 2], [2.5, 1.5], [1.5, 2.5]]
        miner.add(positives: positives, hardNegatives: [])
        #expect(miner.solves == 0 && miner.positiveCount == 3, "positives alone solved")
        var next = 0
        func negatives(_ n: Int, at point: [Float] = [-2, -2]) -> [(key: HardNegativeMiner.NegativeKey, features: [Float])] {
            defer { next += n }
            return (next..<(next + n)).map { (HardNegativeMiner.NegativeKey(image: $0, proposal: 0), point) }
        }
        // The first negatives: solved at once, on every positive, although far fewer than the limit joined.
        miner.add(positives: [], hardNegatives: negatives(1))
        #expect(miner.solves == 1)
        for p in positives { #expect(p.withUnsafeBufferPointer { miner.svm.score($0.baseAddress!) } > 0, "positive \(p) scored negative") }
        // Up to the limit: no solve; one past it: a solve, and the count starts again.
        miner.add(positives: [], hardNegatives: negatives(2))
        miner.add(positives: [], hardNegatives: negatives(1))
        #expect(miner.solves == 1, "solved at \(3) joins with a limit of 3")
        miner.add(positives: [], hardNegatives: negatives(1))
        #expect(miner.solves == 2)
        // Keys the miner has seen (cached or evicted) do not join again, so they do not count.
        let seen = (0..<next).map { (key: HardNegativeMiner.NegativeKey(image: $0, proposal: 0), features: [Float]([0, 0])) }
        miner.add(positives: [], hardNegatives: seen + seen)
        #expect(miner.solves == 2 && miner.negativeCount <= next)
        miner.add(positives: [], hardNegatives: negatives(4))
        #expect(miner.solves == 3)
        miner.finish()
        #expect(miner.solves == 3, "the closing solve ran with nothing new")
        miner.add(positives: [], hardNegatives: negatives(1))
        miner.finish()
        #expect(miner.solves == 4)
        #expect(miner.hard([(HardNegativeMiner.NegativeKey(image: 0, proposal: 0), [1, 1])]).isEmpty, "a seen key was offered again")
    }

    /// A class with no box and no negative anywhere (images without proposals): the zero machine, not a crash.
    @Test func miningWithNothingGivesTheZeroMachine() {
        var miner = HardNegativeMiner(dimension: 3)
        miner.add(positives: [], hardNegatives: [])
        miner.finish()
        #expect(miner.svm == LinearSVM(dimension: 3) && miner.solves == 1)
    }

    // MARK: Ridge box regression

    @Test func ridgeRecoversAnExactMapAndMatchesTheNormalEquations() {
        let d = 5, n = 40
        var rng = RandomGenerator(seed: 3)
        let features = (0..<(n * d)).map { _ in rng.normal() }
        let map = (0..<4).map { _ in (0..<d).map { _ in rng.normal() } }
        let offsets = SIMD4<Float>(0.5, -0.25, 1, 2)
        let targets = (0..<n).map { r in
            SIMD4<Float>((0..<4).map { k in offsets[k] + (0..<d).reduce(0) { $0 + map[k][$1] * features[r * d + $1] } })
        }
        // Two halves summed through `flat`, as ranks' sums are by an allreduce.
        var first = RidgeBoxRegressor.Statistics(dimension: d), second = RidgeBoxRegressor.Statistics(dimension: d)
        features.withUnsafeBufferPointer { f in
            first.add(f.baseAddress!, rows: 25, targets: Array(targets[0..<25]))
            second.add(f.baseAddress! + 25 * d, rows: 15, targets: Array(targets[25...]))
        }
        let summed = RidgeBoxRegressor.Statistics(dimension: d, flat: zip(first.flat, second.flat).map { $0 + $1 })

        // Without regularisation the exact map comes back.
        let exact = RidgeBoxRegressor.fit(summed, lambda: 1e-9)
        for k in 0..<4 {
            for j in 0..<d { #expect(abs(exact.weights[k][j] - map[k][j]) < 1e-3) }
            #expect(abs(exact.bias[k] - offsets[k]) < 1e-3)
        }

        // With lambda = 10: the normal equations (Xc^T Xc + lambda I) W = Xc^T Tc by Gauss-Jordan elimination.
        let lambda = 10.0
        let fitted = RidgeBoxRegressor.fit(summed, lambda: lambda)
        let meanX = (0..<d).map { j in (0..<n).reduce(0.0) { $0 + Double(features[$1 * d + j]) } / Double(n) }
        for k in 0..<4 {
            let meanT = targets.reduce(0.0) { $0 + Double($1[k]) } / Double(n)
            let xc = (0..<n).map { r in (0..<d).map { j in Double(features[r * d + j]) - meanX[j] } }
            let tc = targets.map { Double($0[k]) - meanT }
            var system = [[Double]](repeating: [Double](repeating: 0, count: d + 1), count: d)
            for i in 0..<d {
                system[i][i] = lambda
                for r in 0..<n {
                    for j in 0..<d { system[i][j] += xc[r][i] * xc[r][j] }
                    system[i][d] += xc[r][i] * tc[r]
                }
            }
            for p in 0..<d {
                let pivot = system[p][p]
                system[p] = system[p].map { $0 / pivot }
                for r in 0..<d where r != p {
                    let factor = system[r][p]
                    system[r] = zip(system[r], system[p]).map { $0 - factor * $1 }
                }
            }
            for j in 0..<d { #expect(abs(Double(fitted.weights[k][j]) - system[j][d]) < 1e-5) }
            let bias = meanT - (0..<d).reduce(0.0) { $0 + system[$1][d] * meanX[$1] }
            #expect(abs(Double(fitted.bias[k]) - bias) < 1e-5)
        }
        // Predictions read the fitted map.
        features.withUnsafeBufferPointer { f in
            let p = exact.deltas(f.baseAddress!)
            for k in 0..<4 { #expect(abs(p[k] - targets[0][k]) < 1e-3) }
        }
        // No samples: boxes stay as they are.
        #expect(RidgeBoxRegressor.fit(RidgeBoxRegressor.Statistics(dimension: d)).bias == .zero)
    }
}
