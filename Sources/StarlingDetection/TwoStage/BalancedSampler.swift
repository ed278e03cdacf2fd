import StarlingCore
import StarlingNN

/// Draws a fixed-size minibatch of predictions per image with at most a fraction of positives, the rest negatives
/// (Fast R-CNN's 64 RoIs at 25 % foreground, Faster R-CNN's 256 anchors at 50 %): torchvision's
/// `BalancedPositiveNegativeSampler`. Positives are min(floor(size x fraction), available); negatives fill the rest,
/// as available. Chosen uniformly without replacement from the stream given, which in training is the sample's own
/// (`Batch.randomStream`: seed, epoch, sample index), so one rank or N draw the same minibatch for an image.
public struct BalancedSampler: Sendable {
    public enum Label: Int8, Sendable {
        case negative = 0, positive = 1, ignored = -1
    }

    public var size: Int
    public var positiveFraction: Float
    /// Separates this sampler's stream from other uses of the same sample's (`Batch.randomStream`'s purpose).
    public static let purpose: UInt64 = 0x5A4D_504C

    public init(size: Int, positiveFraction: Float) {
        precondition(size > 0 && positiveFraction >= 0 && positiveFraction <= 1, "sampler of \(size) at fraction \(positiveFraction)")
        self.size = size
        self.positiveFraction = positiveFraction
    }

    /// The indices of the positives and negatives drawn, each in increasing order.
    public func sample(_ labels: [Label], using rng: inout RandomGenerator) -> (positives: [Int], negatives: [Int]) {
        let positives = labels.indices.filter { labels[$0] == .positive }
        let negatives = labels.indices.filter { labels[$0] == .negative }
        let p = min(Int(Float(size) * positiveFraction), positives.count)
        let n = min(size - p, negatives.count)
        return (Self.choose(p, from: positives, &rng).sorted(), Self.choose(n, from: negatives, &rng).sorted())
    }

    /// The minibatch of sample `r` of `batch`, drawn from its stream.
    public func sample(_ labels: [Label], batch: Batch, sample r: Int, training: Bool) -> (positives: [Int], negatives: [Int]) {
        var rng = batch.randomStream(sample: r, purpose: Self.purpose, training: training)
        return sample(labels, using: &rng)
    }

    /// k of `items` uniformly without replacement (a partial Fisher-Yates shuffle).
    static func choose(_ k: Int, from items: [Int], _ rng: inout RandomGenerator) -> [Int] {
        var pool = items
        for i in 0..<k {
            let j = i + Int(rng.next() % UInt64(pool.count - i))
            pool.swapAt(i, j)
        }
        return Array(pool.prefix(k))
    }
}
