/// Efficient graph-based image segmentation: P. Felzenszwalb and D. Huttenlocher, "Efficient Graph-Based Image
/// Segmentation", IJCV 59(2), 2004. Selective search starts its hierarchy from these segments.
///
/// The image (planar channels, any number) is smoothed by a Gaussian (sigma 0.8 in the paper), every pixel is joined to
/// its eight neighbours by an edge weighing the Euclidean distance of their values, and the edges are taken in
/// increasing weight: an edge joins its two components when its weight is at most both components' internal difference
/// plus k / |C| (the largest edge inside a component, by construction the edge that last joined it, and the threshold
/// function of the paper's section 4). Components smaller than `minSize` are then joined to a neighbour, edges again in
/// increasing weight, as the authors' code does.

import Foundation

/// Disjoint sets over 0..<count with union by rank and path compression (Tarjan), and each set's size.
struct UnionFind {
    private(set) var parent: [Int32]
    private var rank: [UInt8]
    private(set) var size: [Int32]

    init(count: Int) {
        parent = (0..<count).map { Int32($0) }
        rank = [UInt8](repeating: 0, count: count)
        size = [Int32](repeating: 1, count: count)
    }

    mutating func find(_ x: Int) -> Int {
        var root = x
        while Int(parent[root]) != root { root = Int(parent[root]) }
        var y = x
        while Int(parent[y]) != root {
            let next = Int(parent[y])
            parent[y] = Int32(root)
            y = next
        }
        return root
    }

    /// Joins the sets of two roots; returns the new root.
    @discardableResult
    mutating func join(_ a: Int, _ b: Int) -> Int {
        precondition(a != b && Int(parent[a]) == a && Int(parent[b]) == b, "join of non-roots or of a set with itself")
        let (big, small) = rank[a] >= rank[b] ? (a, b) : (b, a)
        parent[small] = Int32(big)
        size[big] += size[small]
        if rank[a] == rank[b] { rank[big] += 1 }
        return big
    }
}

/// Planar image channels: channel c's pixel (y, x) at `values[c * height * width + y * width + x]`.
public struct PlanarImage: Sendable {
    public let height: Int
    public let width: Int
    public let channels: Int
    public var values: [Float]

    public init(height: Int, width: Int, channels: Int, values: [Float]) {
        precondition(values.count == height * width * channels, "\(values.count) values for \(channels) x \(height) x \(width)")
        self.height = height
        self.width = width
        self.channels = channels
        self.values = values
    }

    /// Each channel convolved with a normalised Gaussian of standard deviation `sigma` (separable, the kernel cut at
    /// 4 sigma, borders replicated, as the authors' code filters).
    public func smoothed(sigma: Float) -> PlanarImage {
        guard sigma > 0 else { return self }
        let radius = Int((4 * sigma).rounded(.up))
        var kernel = (0...radius).map { Float(Foundation.exp(-0.5 * Double($0 * $0) / Double(sigma * sigma))) }
        let total = kernel[0] + 2 * kernel.dropFirst().reduce(0, +)
        for i in kernel.indices { kernel[i] /= total }
        var out = values
        var line = [Float](repeating: 0, count: Swift.max(height, width))
        let (h, w) = (height, width)
        out.withUnsafeMutableBufferPointer { o in
            kernel.withUnsafeBufferPointer { k in
                line.withUnsafeMutableBufferPointer { t in
                    for c in 0..<channels {
                        let plane = o.baseAddress! + c * h * w
                        // Rows, then columns.
                        for y in 0..<h {
                            let row = plane + y * w
                            for x in 0..<w {
                                var s = k[0] * row[x]
                                for d in 1...radius { s += k[d] * (row[Swift.max(x - d, 0)] + row[Swift.min(x + d, w - 1)]) }
                                t[x] = s
                            }
                            for x in 0..<w { row[x] = t[x] }
                        }
                        for x in 0..<w {
                            for y in 0..<h {
                                var s = k[0] * plane[y * w + x]
                                for d in 1...radius {
                                    s += k[d] * (plane[Swift.max(y - d, 0) * w + x] + plane[Swift.min(y + d, h - 1) * w + x])
                                }
                                t[y] = s
                            }
                            for y in 0..<h { plane[y * w + x] = t[y] }
                        }
                    }
                }
            }
        }
        return PlanarImage(height: h, width: w, channels: channels, values: out)
    }
}

/// Felzenszwalb-Huttenlocher segmentation of an (already smoothed) image: a label per pixel, 0..<count, numbered in
/// the order of each segment's first pixel (row by row).
public func graphSegmentation(_ image: PlanarImage, k: Float, minSize: Int) -> (labels: [Int32], count: Int) {
    let (h, w, channels) = (image.height, image.width, image.channels)
    let n = h * w
    // The eight-neighbourhood as four directions per pixel: right, down, down-right, up-right. Edge e is pixel e / 4's
    // edge in direction e % 4; sorted as (weight bits << 32 | e): non-negative floats order as their bit patterns.
    let directions = [(0, 1), (1, 0), (1, 1), (-1, 1)]
    var keys = [UInt64]()
    keys.reserveCapacity(4 * n)
    var weights = [Float](repeating: 0, count: 4 * n)
    image.values.withUnsafeBufferPointer { v in
        weights.withUnsafeMutableBufferPointer { wt in
            let p = v.baseAddress!
            for y in 0..<h {
                for x in 0..<w {
                    let a = y * w + x
                    for (d, (dy, dx)) in directions.enumerated() {
                        let (yy, xx) = (y + dy, x + dx)
                        guard yy >= 0 && yy < h && xx < w else { continue }
                        let b = yy * w + xx
                        var s: Float = 0
                        for c in 0..<channels {
                            let diff = p[c * n + a] - p[c * n + b]
                            s += diff * diff
                        }
                        let weight = s.squareRoot()
                        wt[4 * a + d] = weight
                        keys.append(UInt64(weight.bitPattern) << 32 | UInt64(4 * a + d))
                    }
                }
            }
        }
    }
    keys.sort()
    func neighbour(_ e: Int) -> (Int, Int) {
        let a = e >> 2, (dy, dx) = directions[e & 3]
        return (a, a + dy * w + dx)
    }
    var sets = UnionFind(count: n)
    var threshold = [Float](repeating: k, count: n)
    for key in keys {
        let e = Int(key & 0xFFFF_FFFF)
        let (a, b) = neighbour(e)
        let (ra, rb) = (sets.find(a), sets.find(b))
        guard ra != rb else { continue }
        let weight = weights[e]
        if weight <= threshold[ra] && weight <= threshold[rb] {
            let root = sets.join(ra, rb)
            threshold[root] = weight + k / Float(sets.size[root])
        }
    }
    if minSize > 1 {
        for key in keys {
            let (a, b) = neighbour(Int(key & 0xFFFF_FFFF))
            let (ra, rb) = (sets.find(a), sets.find(b))
            if ra != rb && (Int(sets.size[ra]) < minSize || Int(sets.size[rb]) < minSize) { sets.join(ra, rb) }
        }
    }
    var labelOfRoot = [Int32](repeating: -1, count: n)
    var labels = [Int32](repeating: 0, count: n)
    var count: Int32 = 0
    for p in 0..<n {
        let root = sets.find(p)
        if labelOfRoot[root] < 0 {
            labelOfRoot[root] = count
            count += 1
        }
        labels[p] = labelOfRoot[root]
    }
    return (labels, Int(count))
}
