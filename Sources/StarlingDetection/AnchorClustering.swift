import Foundation
import StarlingIO
import StarlingCore
import StarlingNN

/// Anchor shapes from the data: k-means over the training boxes' (width, height) with 1 - IoU as the distance
/// (J. Redmon & A. Farhadi, "YOLO9000", CVPR 2017, section "Dimension Clusters"), boxes and centroids compared as if
/// they shared a centre, so only shape matters. Centroids move to the median of their boxes' widths and heights,
/// which suits this distance better than the mean; seeding is k-means++ from a seeded generator.
public struct AnchorClustering: Sendable {
    public struct Cluster: Equatable, Sendable {
        public var width: Float
        public var height: Float
        public var count: Int
    }

    public let clusters: [Cluster]
    /// The mean over boxes of the best IoU with any centroid.
    public let meanIoU: Float

    /// IoU of two boxes aligned on their centres.
    @inline(__always) public static func shapeIoU(_ w1: Float, _ h1: Float, _ w2: Float, _ h2: Float) -> Float {
        let inter = min(w1, w2) * min(h1, h2)
        return inter / (w1 * h1 + w2 * h2 - inter)
    }

    /// Clusters `sizes` ((width, height) pairs, all positive) into at most `k` shapes.
    public init(sizes: [(Float, Float)], k: Int, seed: UInt64 = 0, iterations: Int = 100) {
        precondition(k > 0 && !sizes.isEmpty, "clustering needs k > 0 and at least one box")
        var rng = RandomGenerator(seed: seed)
        // k-means++: each next centroid drawn with probability proportional to its distance to the nearest chosen one.
        var centroids = [sizes[Int(rng.next() % UInt64(sizes.count))]]
        while centroids.count < min(k, sizes.count) {
            let distances = sizes.map { s in centroids.map { 1 - Self.shapeIoU(s.0, s.1, $0.0, $0.1) }.min() ?? 0 }
            let total = distances.reduce(0, +)
            guard total > 0 else { break }
            var pick = rng.uniform() * total, chosen = sizes.count - 1
            for (i, d) in distances.enumerated() { pick -= d; if pick <= 0 { chosen = i; break } }
            centroids.append(sizes[chosen])
        }
        func nearest(_ s: (Float, Float)) -> Int {
            var best = 0, bestIoU: Float = -1
            for (j, c) in centroids.enumerated() {
                let v = Self.shapeIoU(s.0, s.1, c.0, c.1)
                if v > bestIoU { bestIoU = v; best = j }
            }
            return best
        }
        var assignment = sizes.map(nearest)
        for _ in 0..<iterations {
            for j in centroids.indices {
                let members = sizes.indices.filter { assignment[$0] == j }
                guard !members.isEmpty else { continue }
                func median(_ values: [Float]) -> Float {
                    let s = values.sorted()
                    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
                }
                centroids[j] = (median(members.map { sizes[$0].0 }), median(members.map { sizes[$0].1 }))
            }
            let next = sizes.map(nearest)
            if next == assignment { break }
            assignment = next
        }
        var counts = [Int](repeating: 0, count: centroids.count)
        for a in assignment { counts[a] += 1 }
        clusters = centroids.indices.map { Cluster(width: centroids[$0].0, height: centroids[$0].1, count: counts[$0]) }
            .sorted { $0.width * $0.height < $1.width * $1.height }
        let best = sizes.map { s in centroids.map { Self.shapeIoU(s.0, s.1, $0.0, $0.1) }.max() ?? 0 }
        meanIoU = best.reduce(0, +) / Float(sizes.count)
    }
}

/// Anchor sizes as `starling anchors --out` writes them and `train --anchors-from` reads them: one "width,height" a
/// line, in pixels of the dataset's stored images, smallest area first (the order `ModelConfig.anchorSizes` keeps and
/// YOLO's heads hand out, the finest grid taking the smallest). Lines starting with # are comments.
public enum AnchorFile {
    public static func write(_ clusters: [AnchorClustering.Cluster], to path: String, comment: String) throws {
        let lines = ["# " + comment] + clusters.map { "\($0.width),\($0.height)" }
        try AtomicFile.write(Array((lines.joined(separator: "\n") + "\n").utf8), to: path)
    }

    public static func read(_ path: String) throws -> [[Double]] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw DataError(file: path, message: "cannot read the anchor file")
        }
        var sizes: [[Double]] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 2, let w = parts[0], let h = parts[1], w > 0, h > 0, w.isFinite, h.isFinite else {
                throw DataError(file: path, message: "line \(n + 1): expected 'width,height' with two positive numbers, got '\(line)'")
            }
            sizes.append([w, h])
        }
        guard !sizes.isEmpty else { throw DataError(file: path, message: "no anchors") }
        return sizes.sorted { $0[0] * $0[1] < $1[0] * $1[1] }
    }
}
