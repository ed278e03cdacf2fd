import Foundation
import StarlingCore
import StarlingNN

/// Geometric augmentation that moves the labels with the image: a horizontal flip (probability 1/2), a zoom by a
/// factor drawn log-uniformly from `scales` with a random crop (or a frame, when it zooms out) back to the image's
/// size, and, with `elastic`, the U-Net paper's elastic deformation: a displacement of every pixel interpolated
/// (bilinearly) from a coarse `grid` x `grid` grid of random vectors with a standard deviation of `sigma` pixels
/// (the paper: 3 x 3, 10 px, bicubic). All three are one backward map from output pixel to source point, so the image
/// is resampled once: bilinearly for the image, nearest for the class map and the instance masks (no class appears that
/// was not there). Source points outside the image give black pixels, void labels and no instance.
///
/// With `photometric`, the image's values are then distorted as SSD's augmentation does (`DetectionAugmentation`'s
/// brightness, contrast, saturation and hue, each with probability 1/2, in one of its two orders); the labels are
/// untouched. Off by default (torchvision's segmentation reference has no colour distortion); it is for held-out
/// scenes lit unlike the training ones, such as CamVid's darker 0001TP sequence.
///
/// Random draws come from (seed, epoch, sample index) only, so a sample is augmented alike on any number of ranks and
/// in a resumed run.
public struct SegmentationAugmentation: Sendable {
    public var flip = true
    public var scales: ClosedRange<Float> = 0.8...1.25
    public var elastic = false
    public var grid = 3
    public var sigma: Float = 10
    public var photometric = false
    /// Separates this stream from the other per-sample draws (`Batch.randomStream`'s purposes).
    static let purpose: UInt64 = 0x5E6_A06
    /// The photometric draws' own stream, so that turning them on leaves every geometric draw as it was.
    static let photometricPurpose: UInt64 = 0x5E6_C01

    /// SSD's photometric steps alone: every geometric step of the detection chain has probability 0.
    static let photometricSteps: DetectionAugmentation = {
        var steps = DetectionAugmentation.none
        let defaults = DetectionAugmentation()
        steps.brightnessProbability = defaults.brightnessProbability
        steps.contrastProbability = defaults.contrastProbability
        steps.saturationProbability = defaults.saturationProbability
        steps.hueProbability = defaults.hueProbability
        return steps
    }()

    public init(elastic: Bool = false, photometric: Bool = false) {
        self.elastic = elastic
        self.photometric = photometric
    }

    /// One sample: pixels H x W x 3, its class map and instance masks (H x W each), transformed alike.
    public func apply(pixels: [UInt8], classMap: [UInt8], instances: [[UInt8]]?, height: Int, width: Int, voidLabel: UInt8,
                      seed: UInt64, epoch: Int, sampleIndex: Int) -> (pixels: [UInt8], classMap: [UInt8], instances: [[UInt8]]?) {
        var rng = RandomGenerator(seed: seed, stream: Self.purpose, UInt64(epoch), UInt64(sampleIndex))
        let map = sourcePoints(height: height, width: width, rng: &rng)
        var out = Self.resample(pixels: pixels, classMap: classMap, instances: instances, height: height, width: width, voidLabel: voidLabel,
                                sourceX: map.x, sourceY: map.y)
        if photometric {
            var toneRNG = RandomGenerator(seed: seed, stream: Self.photometricPurpose, UInt64(epoch), UInt64(sampleIndex))
            var noObjects: [Object] = []
            Self.photometricSteps.apply(pixels: &out.pixels, objects: &noObjects, height: height, width: width, rng: &toneRNG)
        }
        return out
    }

    /// For every output pixel, the point of the source image it shows (pixel centres at integer coordinates).
    func sourcePoints(height: Int, width: Int, rng: inout RandomGenerator) -> (x: [Float], y: [Float]) {
        let flipped = flip && rng.uniform() < 0.5
        let scale = Float(exp(Double(rng.uniform(Float(log(Double(scales.lowerBound))), Float(log(Double(scales.upperBound)))))))
        // The output shows a window of width / scale x height / scale source pixels; its corner is uniform over the
        // positions that keep it inside the image (or, zoomed out, keep the image inside it).
        let (viewW, viewH) = (Float(width) / scale, Float(height) / scale)
        let x0 = rng.uniform(min(0, Float(width) - viewW), max(0, Float(width) - viewW))
        let y0 = rng.uniform(min(0, Float(height) - viewH), max(0, Float(height) - viewH))
        var dx = [Float](repeating: 0, count: grid * grid), dy = dx
        if elastic { for k in 0..<(grid * grid) { dx[k] = sigma * rng.normal(); dy[k] = sigma * rng.normal() } }
        var xs = [Float](repeating: 0, count: height * width), ys = xs
        for y in 0..<height {
            // The grid's nodes span the image corner to corner.
            let gy = Float(y) / Float(max(height - 1, 1)) * Float(grid - 1)
            let (r0, ty) = (min(Int(gy), grid - 2), gy - Float(min(Int(gy), grid - 2)))
            for x in 0..<width {
                let gx = Float(x) / Float(max(width - 1, 1)) * Float(grid - 1)
                let (c0, tx) = (min(Int(gx), grid - 2), gx - Float(min(Int(gx), grid - 2)))
                func interpolate(_ d: [Float]) -> Float {
                    let top = d[r0 * grid + c0] * (1 - tx) + d[r0 * grid + c0 + 1] * tx
                    let bottom = d[(r0 + 1) * grid + c0] * (1 - tx) + d[(r0 + 1) * grid + c0 + 1] * tx
                    return top * (1 - ty) + bottom * ty
                }
                let (ex, ey) = elastic ? (Float(x) + interpolate(dx), Float(y) + interpolate(dy)) : (Float(x), Float(y))
                let sx = x0 + (ex + 0.5) / scale - 0.5
                xs[y * width + x] = flipped ? Float(width - 1) - sx : sx
                ys[y * width + x] = y0 + (ey + 0.5) / scale - 0.5
            }
        }
        return (xs, ys)
    }

    /// Image bilinear, labels and masks nearest, at the given source points.
    static func resample(pixels: [UInt8], classMap: [UInt8], instances: [[UInt8]]?, height: Int, width: Int, voidLabel: UInt8,
                         sourceX: [Float], sourceY: [Float]) -> (pixels: [UInt8], classMap: [UInt8], instances: [[UInt8]]?) {
        let plane = height * width
        var outPixels = [UInt8](repeating: 0, count: plane * 3)
        var outMap = [UInt8](repeating: voidLabel, count: plane)
        var nearest = [Int](repeating: -1, count: plane)
        pixels.withUnsafeBufferPointer { src in
            outPixels.withUnsafeMutableBufferPointer { dst in
                guard let s = src.baseAddress, let d = dst.baseAddress else { return }
                for p in 0..<plane {
                    let (fx, fy) = (sourceX[p], sourceY[p])
                    guard fx > -0.5, fy > -0.5, fx < Float(width) - 0.5, fy < Float(height) - 0.5 else { continue }
                    nearest[p] = min(Int(fy + 0.5), height - 1) * width + min(Int(fx + 0.5), width - 1)
                    let (cx, cy) = (min(max(fx, 0), Float(width - 1)), min(max(fy, 0), Float(height - 1)))
                    let (x0, y0) = (min(Int(cx), max(width - 2, 0)), min(Int(cy), max(height - 2, 0)))
                    let (x1, y1) = (min(x0 + 1, width - 1), min(y0 + 1, height - 1))
                    let (tx, ty) = (cx - Float(x0), cy - Float(y0))
                    let (a, b, c, e) = (s + (y0 * width + x0) * 3, s + (y0 * width + x1) * 3, s + (y1 * width + x0) * 3, s + (y1 * width + x1) * 3)
                    let out = d + p * 3
                    for k in 0..<3 {
                        let top = Float(a[k]) + (Float(b[k]) - Float(a[k])) * tx
                        let bottom = Float(c[k]) + (Float(e[k]) - Float(c[k])) * tx
                        out[k] = UInt8(min(max(top + (bottom - top) * ty + 0.5, 0), 255))
                    }
                }
            }
        }
        for p in 0..<plane where nearest[p] >= 0 { outMap[p] = classMap[nearest[p]] }
        let outInstances = instances.map { masks in
            masks.map { mask in (0..<plane).map { p in nearest[p] >= 0 ? mask[nearest[p]] : 0 } }
        }
        return (outPixels, outMap, outInstances)
    }
}
