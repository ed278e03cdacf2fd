import StarlingCore
import StarlingNN

/// The SSD objective (Liu et al. 2016, eq. 1) as ssd_keras computes it: softmax cross-entropy over the positive
/// anchors and the hardest negatives (at most `negativesPerPositive` per positive, chosen over the whole batch by
/// their cross-entropy), plus `alpha` times the smooth-L1 of the positives' box offsets, all divided by the number of
/// positives (at least 1). Neutral anchors (class -1) count for nothing.
///
/// Data-parallel: the number of positives and the negatives' cut-off are global over ranks (one small allreduce and
/// one allgather of each rank's top candidates), and the loss is multiplied by the rank count, so that the average
/// of the ranks' gradients equals one process's gradient on the whole batch. Ties at the cut-off may select a few
/// extra negatives on several ranks; with one process the selection is exactly the top k (ties by anchor index).
public struct SSDLoss: Sendable {
    public var negativesPerPositive = 3
    public var alpha: Float = 1

    public init(negativesPerPositive: Int = 3, alpha: Float = 1) {
        self.negativesPerPositive = negativesPerPositive
        self.alpha = alpha
    }

    /// classLogits [R x C] and boxOffsets [R x 4] for R = batch x anchors rows; targets per row.
    public func callAsFunction(classLogits: Tensor, boxOffsets: Tensor, targetClasses: [Int32], targetOffsets: [Float],
                               crossReplica: CrossReplica = .single) -> (loss: Tensor, positives: Int) {
        precondition(classLogits.rank == 2 && boxOffsets.shape == [classLogits.shape[0], 4], "SSD loss shapes \(classLogits.shape), \(boxOffsets.shape)")
        let rows = classLogits.shape[0], c = classLogits.shape[1]
        precondition(targetClasses.count == rows && targetOffsets.count == 4 * rows, "SSD targets for \(rows) rows")
        // Per-row cross-entropy and the softmax, kept for backward.
        let probabilities = FloatStorage(count: rows * c)
        var crossEntropy = [Float](repeating: 0, count: rows)
        let z = classLogits.data, p = probabilities.pointer
        for r in 0..<rows {
            let t = Int(targetClasses[r])
            guard t >= 0 else { continue }
            precondition(t < c, "target class \(t) for \(c) classes")
            let zr = z + r * c, pr = p + r * c
            var m = zr[0]
            for k in 1..<c { m = max(m, zr[k]) }
            var s: Float = 0
            for k in 0..<c { let e = VectorMath.exp(zr[k] - m); pr[k] = e; s += e }
            for k in 0..<c { pr[k] /= s }
            crossEntropy[r] = m + VectorMath.log(s) - zr[t]
        }
        // Positives (global count) and the hardest negatives.
        let positiveRows = (0..<rows).filter { targetClasses[$0] > 0 }
        let negativeRows = (0..<rows).filter { targetClasses[$0] == 0 }
        var counts = [Double(positiveRows.count), Double(negativeRows.count)]
        counts.withUnsafeMutableBufferPointer { crossReplica.sum($0) }
        let globalPositives = Int(counts[0]), globalNegatives = Int(counts[1])
        let keep = min(negativesPerPositive * globalPositives, globalNegatives)
        let ranked = Self.hardest(negativeRows, by: crossEntropy, count: keep)
        var selected: ArraySlice<Int> = []
        if keep > 0 {
            if crossReplica.size == 1 {
                selected = ranked[...]
            } else {
                // The k-th largest over all ranks: each rank offers its own top k (padded), everyone sorts the lot.
                var offer = ranked.prefix(keep).map { Double(crossEntropy[$0]) }
                offer += [Double](repeating: -.infinity, count: keep - offer.count)
                let cutoff = Float(crossReplica.allgather(offer).sorted(by: >)[keep - 1])
                selected = ranked.prefix { crossEntropy[$0] >= cutoff }.prefix(keep)
            }
        }
        let chosen = positiveRows + selected
        let scale = Float(crossReplica.size) / Float(max(1, globalPositives))
        let o = boxOffsets.data
        var classSum = 0.0, locationSum = 0.0
        for r in chosen { classSum += Double(crossEntropy[r]) }
        for r in positiveRows {
            for k in 0..<4 {
                let d = abs(o[4 * r + k] - targetOffsets[4 * r + k])
                locationSum += Double(d < 1 ? 0.5 * d * d : d - 0.5)
            }
        }
        let alpha = self.alpha
        let out = Tensor.result(shape: [1], inputs: [classLogits, boxOffsets]) { out in
            let g = out.grad[0] * scale
            if classLogits.requiresGrad {
                let dz = classLogits.grad, p = probabilities.pointer   // the storage, not a pointer that outlives it
                for r in chosen {
                    let t = Int(targetClasses[r]), pr = p + r * c, dr = dz + r * c
                    for k in 0..<c { dr[k] += g * (pr[k] - (k == t ? 1 : 0)) }
                }
            }
            if boxOffsets.requiresGrad {
                let d = boxOffsets.grad, o = boxOffsets.data
                for r in positiveRows {
                    for k in 0..<4 {
                        let diff = o[4 * r + k] - targetOffsets[4 * r + k]
                        d[4 * r + k] += g * alpha * (abs(diff) < 1 ? diff : (diff > 0 ? 1 : -1))
                    }
                }
            }
        }
        out.data[0] = Float((classSum + Double(alpha) * locationSum) * Double(scale))
        return (out, globalPositives)
    }

    /// The first `count` of `rows` ranked by `loss`, largest first, ties by row (rows ascending): what sorting all of
    /// them and taking a prefix gives, from a selection of the count-th largest loss and a sort of the rows at or above
    /// it. The negatives are ~11,700 per image, the kept ones three per positive: the full sort was ~1 % of an SSD7 step.
    static func hardest(_ rows: [Int], by loss: [Float], count: Int) -> [Int] {
        let rank: (Int, Int) -> Bool = { loss[$0] > loss[$1] || (loss[$0] == loss[$1] && $0 < $1) }
        guard count > 0 else { return [] }
        var values = rows.map { loss[$0] }
        // NaN has no place in the order a selection needs (the step stops on a non-finite loss anyway).
        guard count < rows.count, !values.contains(where: \.isNaN) else { return Array(rows.sorted(by: rank).prefix(count)) }
        let threshold = values.withUnsafeMutableBufferPointer { kthLargest($0, count) }
        var chosen = rows.filter { loss[$0] > threshold }
        chosen += rows.lazy.filter { loss[$0] == threshold }.prefix(count - chosen.count)
        return chosen.sorted(by: rank)
    }

    /// The k-th largest of `v` (k from 1), reordering it: quickselect with a median-of-three pivot and a three-way
    /// partition, so that runs of equal losses (untrained heads give many) do not make it quadratic.
    static func kthLargest(_ v: UnsafeMutableBufferPointer<Float>, _ k: Int) -> Float {
        precondition(k >= 1 && k <= v.count, "k \(k) of \(v.count)")
        var (lo, hi, target) = (0, v.count - 1, k - 1)
        while lo < hi {
            let (a, b, c) = (v[lo], v[(lo + hi) / 2], v[hi])
            let pivot = max(min(a, b), min(max(a, b), c))
            // v[lo..<above] > pivot, v[above...below] == pivot, v[below + 1...hi] < pivot
            var (above, i, below) = (lo, lo, hi)
            while i <= below {
                if v[i] > pivot { v.swapAt(above, i); above += 1; i += 1 }
                else if v[i] < pivot { v.swapAt(i, below); below -= 1 }
                else { i += 1 }
            }
            if target < above { hi = above - 1 } else if target > below { lo = below + 1 } else { return pivot }
        }
        return v[lo]
    }
}
