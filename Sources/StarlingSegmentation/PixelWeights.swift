import Foundation
import StarlingNN

/// The per-pixel weights of U-Net's loss (Ronneberger et al. 2015, equation 2):
///
///     w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))
///
/// w_c the weight of the pixel's class (class balancing; 1 each unless set), d1 and d2 the distances from x to the
/// nearest and the second nearest object (a cell; a person). The paper's w0 = 10 and sigma = 5 px make the thin
/// background gaps between touching objects count up to ten times more, so the network learns to separate them.
/// The border term is given to background pixels (class 0) only, as the paper's figure 3d shows and most
/// implementations do; inside an object d1 is 0 and the term would only blur the object's own edge. Void pixels
/// weigh 0 (they count for nothing).
///
/// Objects are the instance masks where the data has them, otherwise the 4-connected components of the pixels
/// that are neither background nor void (the cells of a membrane map). Distances are Euclidean between pixel centres,
/// computed per object by an exact distance transform (Felzenszwalb and Huttenlocher 2012) over the object's box
/// widened by `reach` = 6 sigma: beyond it d2 > 6 sigma and the term is below w0 exp(-18), left out.
public struct PixelWeights: Sendable {
    public var classWeights: [Float]
    /// w0; 0 turns the border term off.
    public var borderWeight: Float
    public var sigma: Float
    public var voidLabel: UInt8

    public init(classWeights: [Float], borderWeight: Float = 0, sigma: Float = 5, voidLabel: UInt8 = 255) {
        self.classWeights = classWeights
        self.borderWeight = borderWeight
        self.sigma = sigma
        self.voidLabel = voidLabel
    }

    /// The weight of every pixel of one H x W class map; `instances` (H x W masks, nonzero inside) when the data
    /// has them.
    public func weights(classMap: [UInt8], height: Int, width: Int, instances: [[UInt8]]? = nil) -> [Float] {
        precondition(classMap.count == height * width, "class map of \(classMap.count) pixels for \(height)x\(width)")
        var weights = classMap.map { $0 == voidLabel || Int($0) >= classWeights.count ? 0 : classWeights[Int($0)] }
        guard borderWeight > 0 else { return weights }
        let objects = instances ?? Self.components(classMap, height: height, width: width, voidLabel: voidLabel)
        guard objects.count >= 2 else { return weights }
        let (d1, d2) = Self.twoNearest(objects, height: height, width: width, reach: Int((6 * sigma).rounded(.up)))
        let denominator = 2 * sigma * sigma
        for i in 0..<(height * width) where classMap[i] == 0 && d2[i].isFinite {
            let d = d1[i] + d2[i]
            weights[i] += borderWeight * Float(exp(-Double(d * d / denominator)))
        }
        return weights
    }

    /// The 4-connected components of the pixels that are neither class 0 nor void, one mask each.
    public static func components(_ classMap: [UInt8], height: Int, width: Int, voidLabel: UInt8) -> [[UInt8]] {
        var label = [Int32](repeating: -1, count: classMap.count)
        var masks: [[UInt8]] = []
        var stack: [Int] = []
        for start in 0..<classMap.count where label[start] < 0 && classMap[start] != 0 && classMap[start] != voidLabel {
            let id = Int32(masks.count)
            var mask = [UInt8](repeating: 0, count: classMap.count)
            label[start] = id
            stack.append(start)
            while let p = stack.popLast() {
                mask[p] = 1
                let (y, x) = (p / width, p % width)
                for (ny, nx) in [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)] where ny >= 0 && ny < height && nx >= 0 && nx < width {
                    let q = ny * width + nx
                    if label[q] < 0 && classMap[q] != 0 && classMap[q] != voidLabel { label[q] = id; stack.append(q) }
                }
            }
            masks.append(mask)
        }
        return masks
    }

    /// Per pixel, the distances to the nearest and second nearest object (infinity where fewer lie within `reach`
    /// of the object's box).
    static func twoNearest(_ objects: [[UInt8]], height: Int, width: Int, reach: Int) -> (d1: [Float], d2: [Float]) {
        var d1 = [Float](repeating: .infinity, count: height * width), d2 = d1
        for mask in objects {
            guard let box = SegmentationBox(mask, height: height, width: width) else { continue }
            let (y0, y1) = (max(0, box.y0 - reach), min(height, box.y1 + reach))
            let (x0, x1) = (max(0, box.x0 - reach), min(width, box.x1 + reach))
            let (h, w) = (y1 - y0, x1 - x0)
            var squared = [Float](repeating: 0, count: h * w)
            for y in 0..<h { for x in 0..<w { squared[y * w + x] = mask[(y + y0) * width + x + x0] != 0 ? 0 : .infinity } }
            DistanceTransform.squaredEuclidean(&squared, height: h, width: w)
            for y in 0..<h {
                for x in 0..<w {
                    let d = squared[y * w + x].squareRoot(), i = (y + y0) * width + x + x0
                    if d < d1[i] { d2[i] = d1[i]; d1[i] = d } else if d < d2[i] { d2[i] = d }
                }
            }
        }
        return (d1, d2)
    }
}

/// The pixel box [y0, y1) x [x0, x1) of a mask's nonzero pixels.
struct SegmentationBox {
    let y0: Int, y1: Int, x0: Int, x1: Int
    init?(_ mask: [UInt8], height: Int, width: Int) {
        var (y0, y1, x0, x1) = (height, -1, width, -1)
        for y in 0..<height {
            for x in 0..<width where mask[y * width + x] != 0 { y0 = min(y0, y); y1 = max(y1, y); x0 = min(x0, x); x1 = max(x1, x) }
        }
        guard y1 >= 0 else { return nil }
        (self.y0, self.y1, self.x0, self.x1) = (y0, y1 + 1, x0, x1 + 1)
    }
}

/// Exact squared Euclidean distance transforms (P. Felzenszwalb and D. Huttenlocher, "Distance Transforms of Sampled
/// Functions", Theory of Computing 8, 2012): the lower envelope of parabolas, once along the columns, once along
/// the rows.
public enum DistanceTransform {
    /// In place: `f` holds 0 on the object and infinity elsewhere; afterwards each pixel's squared distance to the
    /// nearest object pixel.
    public static func squaredEuclidean(_ f: inout [Float], height: Int, width: Int) {
        let longest = max(height, width)
        var line = [Float](repeating: 0, count: longest), out = line
        var v = [Int](repeating: 0, count: longest), z = [Float](repeating: 0, count: longest + 1)
        for x in 0..<width {
            for y in 0..<height { line[y] = f[y * width + x] }
            oneDimensional(line, count: height, into: &out, v: &v, z: &z)
            for y in 0..<height { f[y * width + x] = out[y] }
        }
        for y in 0..<height {
            for x in 0..<width { line[x] = f[y * width + x] }
            oneDimensional(line, count: width, into: &out, v: &v, z: &z)
            for x in 0..<width { f[y * width + x] = out[x] }
        }
    }

    /// d(q) = min_p (q - p)^2 + f(p) over the finite f(p); infinity where every f(p) is.
    static func oneDimensional(_ f: [Float], count n: Int, into d: inout [Float], v: inout [Int], z: inout [Float]) {
        guard let first = (0..<n).first(where: { f[$0].isFinite }) else {
            for q in 0..<n { d[q] = .infinity }
            return
        }
        var k = 0
        v[0] = first
        z[0] = -.infinity
        z[1] = .infinity
        for q in (first + 1)..<max(n, first + 1) where f[q].isFinite {
            var s: Float
            repeat {
                let p = v[k]
                s = ((f[q] + Float(q * q)) - (f[p] + Float(p * p))) / Float(2 * (q - p))
                if s <= z[k] { k -= 1 } else { break }
            } while k >= 0
            k += 1
            v[k] = q
            z[k] = s
            z[k + 1] = .infinity
        }
        k = 0
        for q in 0..<n {
            while z[k + 1] < Float(q) { k += 1 }
            let p = v[k]
            d[q] = Float((q - p) * (q - p)) + f[p]
        }
    }
}
