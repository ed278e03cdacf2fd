/// Selective search: J. Uijlings, K. van de Sande, T. Gevers and A. Smeulders, "Selective Search for Object
/// Recognition", IJCV 104(2), 2013. R-CNN's and Fast R-CNN's region proposals.
///
/// One strategy segments the image in a colour space (Felzenszwalb-Huttenlocher, `graphSegmentation`, with threshold k
/// and minimum size k, as the authors' code), then groups the segments hierarchically: the two most similar
/// neighbouring regions are merged until one region is left, the similarity a sum of some of (section 3.2):
/// - colour: the histogram intersection of 25-bin histograms per channel (L1-normalised over all channels);
/// - texture: the same of 10-bin histograms of Gaussian derivatives (sigma 1) in 8 orientations per channel;
/// - size: 1 - (|r_i| + |r_j|) / |image|, so that small regions merge first everywhere;
/// - fill: 1 - (|BB_ij| - |r_i| - |r_j|) / |image|, BB_ij the bounding box of both, so that regions that fill each
///   other's gaps merge first.
/// A merged region's histograms are the size-weighted means of its parts'. Every region of the hierarchy (the
/// segments, and each merge) proposes its bounding box.
///
/// Several strategies are combined (section 3.3, table 5): "fast" is HSV and Lab, k = 50 and 100, colour + texture +
/// size + fill and texture + size + fill (8 strategies); "quality" is HSV, Lab, rgI, H and I, k = 50, 100, 150 and 300,
/// those two and fill alone and size alone (80); "single" is HSV, k = 100, colour + texture + size + fill. Proposals
/// are ranked as section 4.1 says: in each strategy a region's position in its hierarchy (1 for the last merge, the
/// whole image, counting back to the segments) is multiplied by a random number in [0, 1), and all strategies'
/// regions are sorted by that value, smallest first; a box proposed again (the same pixels) is dropped at its later
/// rank. The random numbers come from a seed and the strategy's index, so a run is reproducible.
///
/// Pixel boxes are Starling's corners: a region whose pixels span columns x0...x1 and rows y0...y1 proposes
/// (x0, y0, x1 + 1, y1 + 1).
///
/// Deviations from the authors' code, which mixes Matlab and C: the texture derivatives are central differences of
/// the Gaussian-smoothed channel; orientation o's response is the positive part of the derivative along angle
/// o x 45 degrees, binned over [0, the channel's largest gradient magnitude]. The segmentation reads each colour
/// space as the authors' code's 8-bit version of it: every channel scaled to [0, 255] (Lab: L x 255 / 100, a + 128,
/// b + 128).

import Foundation
import StarlingCore
import StarlingNN

public struct SelectiveSearch: Sendable {
    /// The colour spaces of the paper's strategies (section 3.3): HSV, Lab, rgI (normalised r and g, intensity), the
    /// hue alone, the intensity alone, and RGB.
    public enum ColourSpace: String, CaseIterable, Sendable {
        case rgb, hsv, lab, rgi, hue, intensity

        var channels: Int { self == .hue || self == .intensity ? 1 : 3 }
    }

    /// Which similarities a strategy adds up.
    public struct Similarities: OptionSet, Hashable, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let colour = Similarities(rawValue: 1)
        public static let texture = Similarities(rawValue: 2)
        public static let size = Similarities(rawValue: 4)
        public static let fill = Similarities(rawValue: 8)
        public static let all: Similarities = [.colour, .texture, .size, .fill]
    }

    public struct Strategy: Hashable, Sendable {
        public var colourSpace: ColourSpace
        public var k: Float
        public var similarities: Similarities
        public init(colourSpace: ColourSpace, k: Float, similarities: Similarities) {
            self.colourSpace = colourSpace
            self.k = k
            self.similarities = similarities
        }
    }

    public enum Mode: String, CaseIterable, Sendable {
        case single, fast, quality
    }

    /// The paper's strategies of a mode (table 5), colour space outermost, then k, then the similarities.
    public static func strategies(_ mode: Mode) -> [Strategy] {
        let (spaces, ks, sims): ([ColourSpace], [Float], [Similarities])
        switch mode {
        case .single: (spaces, ks, sims) = ([.hsv], [100], [.all])
        case .fast: (spaces, ks, sims) = ([.hsv, .lab], [50, 100], [.all, [.texture, .size, .fill]])
        case .quality: (spaces, ks, sims) = ([.hsv, .lab, .rgi, .hue, .intensity], [50, 100, 150, 300],
                                             [.all, [.texture, .size, .fill], .fill, .size])
        }
        return spaces.flatMap { space in ks.flatMap { k in sims.map { Strategy(colourSpace: space, k: k, similarities: $0) } } }
    }

    public var strategies: [Strategy]
    /// The Gaussian smoothing before segmentation (the paper's 0.8).
    public var sigma: Float = 0.8

    public init(mode: Mode) { strategies = Self.strategies(mode) }
    public init(strategies: [Strategy]) { self.strategies = strategies }

    /// The ranked proposals of an RGB image (`pixels` interleaved [height, width, 3], row by row), best first, without
    /// duplicates. `seed` draws the ranking's random numbers.
    public func proposals(pixels: UnsafeBufferPointer<UInt8>, height: Int, width: Int, seed: UInt64) -> [BoxCorners] {
        precondition(pixels.count == height * width * 3 && height > 0 && width > 0,
                     "selective search: \(pixels.count) bytes for a \(height) x \(width) RGB image")
        var ranked: [(value: Double, strategy: Int, index: Int, box: BoxCorners)] = []
        var bySpace: [ColourSpace: RegionPixels] = [:]
        var segmentations: [SegmentationKey: (labels: [Int32], count: Int)] = [:]
        for (s, strategy) in strategies.enumerated() {
            let space = strategy.colourSpace
            let pixelFeatures = bySpace[space] ?? RegionPixels(pixels: pixels, height: height, width: width, space: space)
            bySpace[space] = pixelFeatures
            let key = SegmentationKey(space: space, k: strategy.k)
            let segments = segmentations[key] ?? graphSegmentation(pixelFeatures.segmentationImage(sigma: sigma), k: strategy.k,
                                                                  minSize: Int(strategy.k))
            segmentations[key] = segments
            let boxes = hierarchicalGrouping(labels: segments.labels, count: segments.count, pixels: pixelFeatures,
                                             similarities: strategy.similarities)
            var rng = RandomGenerator(seed: seed, stream: UInt64(s))
            let m = boxes.count
            for (index, box) in boxes.enumerated() {
                ranked.append((Double(m - index) * Double(rng.uniform()), s, index, box))
            }
        }
        ranked.sort { ($0.value, $0.strategy, $0.index) < ($1.value, $1.strategy, $1.index) }
        var seen = Set<BoxCorners>()
        return ranked.compactMap { seen.insert($0.box).inserted ? $0.box : nil }
    }

    /// The ranking seed of image `index` of a set searched with `seed` (`starling proposals`).
    public static func imageSeed(_ seed: UInt64, index: Int) -> UInt64 { seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15 }

    private struct SegmentationKey: Hashable { let space: ColourSpace; let k: Float }
}

/// An image in one colour space, with what grouping needs of each pixel: its colour bin and its 8 texture bins per
/// channel.
struct RegionPixels {
    static let colourBins = 25, orientations = 8, textureBins = 10
    let height: Int, width: Int, channels: Int
    /// Channel values in [0, 1], planar.
    let image: PlanarImage
    /// [pixel][channel]: bin 0..<25.
    let colourBin: [UInt8]
    /// [pixel][channel][orientation]: bin 0..<10.
    let textureBin: [UInt8]

    init(pixels: UnsafeBufferPointer<UInt8>, height: Int, width: Int, space: SelectiveSearch.ColourSpace) {
        self.height = height
        self.width = width
        channels = space.channels
        image = colourChannels(pixels, height: height, width: width, space: space)
        let n = height * width, nc = channels
        var colour = [UInt8](repeating: 0, count: n * nc)
        image.values.withUnsafeBufferPointer { v in
            colour.withUnsafeMutableBufferPointer { cb in
                for c in 0..<nc {
                    let plane = v.baseAddress! + c * n
                    for p in 0..<n { cb[p * nc + c] = UInt8(Swift.min(Swift.max(Int(plane[p] * 25), 0), 24)) }
                }
            }
        }
        colourBin = colour
        // Texture: the derivatives of the sigma-1 smoothed channel, along 8 directions, positive parts, in 10 bins.
        let smooth = image.smoothed(sigma: 1)
        var texture = [UInt8](repeating: 0, count: n * nc * Self.orientations)
        let angles = (0..<Self.orientations).map { Double($0) * Double.pi / 4 }
        let cosines = angles.map { Float(Foundation.cos($0)) }, sines = angles.map { Float(Foundation.sin($0)) }
        var gx = [Float](repeating: 0, count: n), gy = [Float](repeating: 0, count: n)
        smooth.values.withUnsafeBufferPointer { v in
            texture.withUnsafeMutableBufferPointer { tb in
                gx.withUnsafeMutableBufferPointer { gxp in
                    gy.withUnsafeMutableBufferPointer { gyp in
                        for c in 0..<nc {
                            let plane = v.baseAddress! + c * n
                            var largest: Float = 0
                            for y in 0..<height {
                                let up = Swift.max(y - 1, 0), down = Swift.min(y + 1, height - 1)
                                for x in 0..<width {
                                    let left = Swift.max(x - 1, 0), right = Swift.min(x + 1, width - 1)
                                    let dx = (plane[y * width + right] - plane[y * width + left]) / Float(Swift.max(right - left, 1))
                                    let dy = (plane[down * width + x] - plane[up * width + x]) / Float(Swift.max(down - up, 1))
                                    gxp[y * width + x] = dx
                                    gyp[y * width + x] = dy
                                    largest = Swift.max(largest, (dx * dx + dy * dy).squareRoot())
                                }
                            }
                            let scale = largest > 0 ? Float(Self.textureBins) / largest : 0
                            for p in 0..<n {
                                for o in 0..<Self.orientations {
                                    let r = Swift.max(cosines[o] * gxp[p] + sines[o] * gyp[p], 0)
                                    tb[(p * nc + c) * Self.orientations + o] = UInt8(Swift.min(Int(r * scale), Self.textureBins - 1))
                                }
                            }
                        }
                    }
                }
            }
        }
        textureBin = texture
    }

    /// The image the segmentation reads: every channel scaled to [0, 255] and smoothed. A single channel (H, I) is
    /// scaled by a further sqrt(3): the authors' code segments it repeated in three channels, which makes every edge
    /// sqrt(3) times heavier against the same k.
    func segmentationImage(sigma: Float) -> PlanarImage {
        let scale: Float = channels == 1 ? 255 * Float(3).squareRoot() : 255
        return PlanarImage(height: height, width: width, channels: channels, values: image.values.map { $0 * scale }).smoothed(sigma: sigma)
    }
}

/// The image in a colour space, each channel in [0, 1]: HSV's hue as a fraction of the circle; Lab (D65 white, sRGB
/// decoded) as L / 100, (a + 128) / 255, (b + 128) / 255; rgI as R / (R + G + B), G / (R + G + B) (1/3 for black) and
/// (R + G + B) / 765.
func colourChannels(_ pixels: UnsafeBufferPointer<UInt8>, height: Int, width: Int, space: SelectiveSearch.ColourSpace) -> PlanarImage {
    let n = height * width, nc = space.channels
    var out = [Float](repeating: 0, count: n * nc)
    let linear: [Float] = (0..<256).map { v in
        let c = Double(v) / 255
        return Float(c <= 0.04045 ? c / 12.92 : Foundation.pow((c + 0.055) / 1.055, 2.4))
    }
    func labF(_ t: Float) -> Float { t > 0.008856 ? Float(Foundation.cbrt(Double(t))) : 7.787 * t + 16.0 / 116 }
    out.withUnsafeMutableBufferPointer { o in
        let q = o.baseAddress!
        for p in 0..<n {
            let r = pixels[3 * p], g = pixels[3 * p + 1], b = pixels[3 * p + 2]
            let (R, G, B) = (Float(r) / 255, Float(g) / 255, Float(b) / 255)
            switch space {
            case .rgb:
                q[p] = R; q[n + p] = G; q[2 * n + p] = B
            case .hsv, .hue:
                let maximum = Swift.max(R, G, B), minimum = Swift.min(R, G, B), chroma = maximum - minimum
                var hue: Float = 0
                if chroma > 0 {
                    if maximum == R { hue = (G - B) / chroma } else if maximum == G { hue = 2 + (B - R) / chroma } else { hue = 4 + (R - G) / chroma }
                    hue /= 6
                    if hue < 0 { hue += 1 }
                }
                q[p] = hue
                if space == .hsv {
                    q[n + p] = maximum > 0 ? chroma / maximum : 0
                    q[2 * n + p] = maximum
                }
            case .lab:
                let (lr, lg, lb) = (linear[Int(r)], linear[Int(g)], linear[Int(b)])
                let x = (0.412453 * lr + 0.357580 * lg + 0.180423 * lb) / 0.950456
                let y = 0.212671 * lr + 0.715160 * lg + 0.072169 * lb
                let z = (0.019334 * lr + 0.119193 * lg + 0.950227 * lb) / 1.088754
                let (fx, fy, fz) = (labF(x), labF(y), labF(z))
                let l = y > 0.008856 ? 116 * fy - 16 : 903.3 * y
                q[p] = l / 100
                q[n + p] = Swift.min(Swift.max((500 * (fx - fy) + 128) / 255, 0), 1)
                q[2 * n + p] = Swift.min(Swift.max((200 * (fy - fz) + 128) / 255, 0), 1)
            case .rgi:
                let sum = Float(r) + Float(g) + Float(b)
                q[p] = sum > 0 ? Float(r) / sum : 1.0 / 3
                q[n + p] = sum > 0 ? Float(g) / sum : 1.0 / 3
                q[2 * n + p] = sum / 765
            case .intensity:
                q[p] = (Float(r) + Float(g) + Float(b)) / 765
            }
        }
    }
    return PlanarImage(height: height, width: width, channels: nc, values: out)
}

/// Selective search's hierarchical grouping (the paper's algorithm 1) from the segments `labels` (0..<count per
/// pixel): every region's bounding box, the segments first, then each merge in the order it happened.
func hierarchicalGrouping(labels: [Int32], count: Int, pixels: RegionPixels, similarities: SelectiveSearch.Similarities) -> [BoxCorners] {
    var regions = RegionSet(labels: labels, count: count, pixels: pixels)
    let imageSize = Float(pixels.height * pixels.width)
    var heap = SimilarityHeap()
    for a in 0..<count {
        for b in regions.neighbours[a] where a < b {
            heap.push(regions.similarity(a, b, similarities, imageSize: imageSize), a, b)
        }
    }
    while let (_, a, b) = heap.pop() {
        guard regions.alive[a] && regions.alive[b] else { continue }
        let t = regions.merge(a, b)
        for m in regions.neighbours[t] { heap.push(regions.similarity(t, m, similarities, imageSize: imageSize), t, m) }
    }
    return (0..<regions.size.count).map { r in
        let b = regions.box[r]
        return BoxCorners(xmin: Float(b.x), ymin: Float(b.y), xmax: Float(b.z + 1), ymax: Float(b.w + 1))
    }
}

/// The regions of one hierarchy: sizes, boxes (x0, y0, x1, y1 inclusive), normalised histograms (flat, a region's after
/// another's), neighbours; merged regions are appended.
struct RegionSet {
    var size: [Int] = []
    var box: [SIMD4<Int32>] = []
    var colour: [Float] = []
    var texture: [Float] = []
    var neighbours: [Set<Int>] = []
    var alive: [Bool] = []
    let colourLength: Int, textureLength: Int

    init(labels: [Int32], count: Int, pixels: RegionPixels) {
        let nc = pixels.channels
        colourLength = nc * RegionPixels.colourBins
        textureLength = nc * RegionPixels.orientations * RegionPixels.textureBins
        let (h, w) = (pixels.height, pixels.width)
        var size = [Int](repeating: 0, count: count)
        var box = [SIMD4<Int32>](repeating: SIMD4(Int32.max, Int32.max, -1, -1), count: count)
        var colour = [Float](repeating: 0, count: count * colourLength)
        var texture = [Float](repeating: 0, count: count * textureLength)
        var neighbours = [Set<Int>](repeating: [], count: count)
        let (cl, tl) = (colourLength, textureLength)
        let (bins, orientations, textureBins) = (RegionPixels.colourBins, RegionPixels.orientations, RegionPixels.textureBins)
        labels.withUnsafeBufferPointer { lab in
            pixels.colourBin.withUnsafeBufferPointer { cb in
                pixels.textureBin.withUnsafeBufferPointer { tb in
                    colour.withUnsafeMutableBufferPointer { ch in
                        texture.withUnsafeMutableBufferPointer { th in
                            size.withUnsafeMutableBufferPointer { sz in
                                box.withUnsafeMutableBufferPointer { bx in
                                    for y in 0..<h {
                                        for x in 0..<w {
                                            let p = y * w + x, r = Int(lab[p])
                                            sz[r] += 1
                                            let here = SIMD4(Int32(x), Int32(y), Int32(x), Int32(y))
                                            let (lo, hi) = (pointwiseMin(bx[r], here), pointwiseMax(bx[r], here))
                                            bx[r] = SIMD4(lo.x, lo.y, hi.z, hi.w)
                                            for c in 0..<nc {
                                                ch[r * cl + c * bins + Int(cb[p * nc + c])] += 1
                                                let tp = tb.baseAddress! + (p * nc + c) * orientations
                                                let hp = th.baseAddress! + r * tl + c * orientations * textureBins
                                                for o in 0..<orientations { hp[o * textureBins + Int(tp[o])] += 1 }
                                            }
                                        }
                                    }
                                    for r in 0..<count {
                                        let cs = 1 / Float(sz[r] * nc), ts = 1 / Float(sz[r] * nc * orientations)
                                        for i in 0..<cl { ch[r * cl + i] *= cs }
                                        for i in 0..<tl { th[r * tl + i] *= ts }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Neighbours: regions touching in the eight-neighbourhood the segmentation used.
            for y in 0..<h {
                for x in 0..<w {
                    let a = Int(lab[y * w + x])
                    for (dy, dx) in [(0, 1), (1, 0), (1, 1), (1, -1)] {
                        let (yy, xx) = (y + dy, x + dx)
                        guard yy < h && xx >= 0 && xx < w else { continue }
                        let b = Int(lab[yy * w + xx])
                        if a != b {
                            neighbours[a].insert(b)
                            neighbours[b].insert(a)
                        }
                    }
                }
            }
        }
        self.size = size
        self.box = box
        self.colour = colour
        self.texture = texture
        self.neighbours = neighbours
        alive = [Bool](repeating: true, count: count)
    }

    /// The sum of the chosen similarities of regions a and b, each in [0, 1].
    func similarity(_ a: Int, _ b: Int, _ chosen: SelectiveSearch.Similarities, imageSize: Float) -> Float {
        var s: Float = 0
        if chosen.contains(.colour) { s += intersection(colour, a, b, colourLength) }
        if chosen.contains(.texture) { s += intersection(texture, a, b, textureLength) }
        if chosen.contains(.size) { s += 1 - Float(size[a] + size[b]) / imageSize }
        if chosen.contains(.fill) {
            let (p, q) = (box[a], box[b])
            let lo = pointwiseMin(p, q), hi = pointwiseMax(p, q)
            let boxArea = Float(Int(hi.z - lo.x + 1) * Int(hi.w - lo.y + 1))
            s += 1 - (boxArea - Float(size[a] + size[b])) / imageSize
        }
        return s
    }

    /// Histogram intersection: sum of the smaller of the two histograms' bins.
    private func intersection(_ histograms: [Float], _ a: Int, _ b: Int, _ length: Int) -> Float {
        histograms.withUnsafeBufferPointer { h in
            let (p, q) = (h.baseAddress! + a * length, h.baseAddress! + b * length)
            var s: Float = 0
            for i in 0..<length { s += Swift.min(p[i], q[i]) }
            return s
        }
    }

    /// Merges a and b into a new region (returned), which takes over their neighbours.
    mutating func merge(_ a: Int, _ b: Int) -> Int {
        let t = size.count
        let (sa, sb) = (Float(size[a]), Float(size[b]))
        let (wa, wb) = (sa / (sa + sb), sb / (sa + sb))
        size.append(size[a] + size[b])
        let (lo, hi) = (pointwiseMin(box[a], box[b]), pointwiseMax(box[a], box[b]))
        box.append(SIMD4(lo.x, lo.y, hi.z, hi.w))
        for (length, isColour) in [(colourLength, true), (textureLength, false)] {
            var merged = [Float](repeating: 0, count: length)
            (isColour ? colour : texture).withUnsafeBufferPointer { h in
                let (p, q) = (h.baseAddress! + a * length, h.baseAddress! + b * length)
                for i in 0..<length { merged[i] = wa * p[i] + wb * q[i] }
            }
            if isColour { colour.append(contentsOf: merged) } else { texture.append(contentsOf: merged) }
        }
        var joined = neighbours[a].union(neighbours[b])
        joined.remove(a)
        joined.remove(b)
        for m in joined {
            neighbours[m].remove(a)
            neighbours[m].remove(b)
            neighbours[m].insert(t)
        }
        neighbours[a] = []
        neighbours[b] = []
        neighbours.append(joined)
        alive[a] = false
        alive[b] = false
        alive.append(true)
        return t
    }
}

/// A max-heap of region pairs by similarity (ties: the smaller pair first), with stale pairs skipped by the caller.
struct SimilarityHeap {
    private var items: [(similarity: Float, a: Int32, b: Int32)] = []

    private func before(_ i: Int, _ j: Int) -> Bool {
        let (x, y) = (items[i], items[j])
        if x.similarity != y.similarity { return x.similarity > y.similarity }
        return (x.a, x.b) < (y.a, y.b)
    }

    mutating func push(_ similarity: Float, _ a: Int, _ b: Int) {
        items.append((similarity, Int32(Swift.min(a, b)), Int32(Swift.max(a, b))))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard before(i, parent) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (Float, Int, Int)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let (l, r) = (2 * i + 1, 2 * i + 2)
                var best = i
                if l < items.count && before(l, best) { best = l }
                if r < items.count && before(r, best) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return (top.similarity, Int(top.a), Int(top.b))
    }
}
