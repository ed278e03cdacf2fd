import StarlingCore
import StarlingNN

/// Training-time augmentation for SSD at a constant input size, after the chain of ssd_keras's
/// `DataAugmentationConstantInputSize` (Pierluigi Ferrari, github.com/pierluigiferrari/ssd_keras, 2018), whose
/// photometric part follows the distortions of Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016.
///
/// One of two orders is chosen with probability 1/2 (ssd_keras's two sequences):
/// 1. brightness, contrast, saturation, hue, translation, zoom in, horizontal flip;
/// 2. brightness, saturation, hue, contrast, zoom out, translation, horizontal flip.
/// Each step happens with its own probability (0.5 by default, as in ssd_keras). Images keep their size.
///
/// - Brightness adds a delta in `brightnessDelta` to every channel; contrast maps v to 127.5 + f (v - 127.5);
///   both clip to [0, 255] after each step and round (to nearest, ties to even) once when the chain of value maps
///   ends.
/// - Saturation and hue work in HSV (OpenCV's model, as ssd_keras): S is scaled (clipped at 1), H rotated by up to
///   `hueDegrees` (36 degrees = ssd_keras's 18 OpenCV hue units), V kept; see `AugmentationKernels`.
/// - Translation moves the image by a random fraction in `translateFraction` of its size in a random direction
///   along each axis; zoom scales it about its centre by a factor in `zoomIn` or `zoomOut`; the uncovered area is
///   `background`.
/// - A translation or zoom is tried up to `trials` times and kept only if at least `validatorMinBoxes` of the
///   image's non-difficult boxes keep `validatorFraction` (0.5) of their area inside the image; otherwise the image
///   is left as it was (ssd_keras's ImageValidator; an image with fewer boxes needs all of them). Images with
///   no non-difficult boxes accept any draw (ssd_keras never moves them).
/// - After a kept translation or zoom, boxes with less than `minVisibleFraction` (0.3) of their area inside the
///   image, or less than `minBoxArea` (16 square pixels) inside, are dropped (ssd_keras's BoxFilter), and the rest
///   are clipped to the image (ssd_keras leaves them reaching outside by default; Starling's box convention keeps
///   boxes inside).
///
/// Region proposals (Fast R-CNN's, `apply(pixels:objects:proposals:...)`) move with the image as its boxes do, but take
/// no part in any decision, so an image draws the same augmentation with or without them: after a kept translation or
/// zoom they are clipped to the image, and a proposal with nothing left inside is dropped (no area or visible-fraction
/// filter: a proposal is a candidate region, not an object).
///
/// Deterministic: every draw comes from the `RandomGenerator` passed in; `apply(..., seed:epoch:sampleIndex:)`
/// seeds it from (seed, epoch, sample index), so a sample is augmented the same way on 1 rank or N.
public struct DetectionAugmentation: Sendable {
    public var brightnessDelta: ClosedRange<Float> = -48...48
    public var brightnessProbability: Float = 0.5
    public var contrastFactor: ClosedRange<Float> = 0.5...1.8
    public var contrastProbability: Float = 0.5
    public var saturationFactor: ClosedRange<Float> = 0.5...1.8
    public var saturationProbability: Float = 0.5
    /// The hue rotates by a uniform angle in -hueDegrees...hueDegrees.
    public var hueDegrees: Float = 36
    public var hueProbability: Float = 0.5
    public var flipProbability: Float = 0.5
    /// Shift as a fraction of the image size, per axis, in either direction.
    public var translateFraction: ClosedRange<Float> = 0.03...0.5
    public var translateProbability: Float = 0.5
    public var zoomIn: ClosedRange<Float> = 1...2
    public var zoomOut: ClosedRange<Float> = 0.5...1
    public var zoomProbability: Float = 0.5
    public var trials = 3
    public var validatorFraction: Float = 0.5
    public var validatorMinBoxes = 1
    public var minVisibleFraction: Float = 0.3
    public var minBoxArea: Float = 16
    public var background: (UInt8, UInt8, UInt8) = (0, 0, 0)

    public init() {}

    /// No step ever happens: `apply` returns its input.
    public static var none: DetectionAugmentation {
        var a = DetectionAugmentation()
        a.brightnessProbability = 0; a.contrastProbability = 0; a.saturationProbability = 0; a.hueProbability = 0
        a.flipProbability = 0; a.translateProbability = 0; a.zoomProbability = 0
        return a
    }

    /// Augments one image with the random stream of (seed, epoch, sampleIndex).
    public func apply(pixels: [UInt8], objects: [Object], height: Int, width: Int,
                      seed: UInt64, epoch: Int, sampleIndex: Int) -> (pixels: [UInt8], objects: [Object]) {
        let out = apply(pixels: pixels, objects: objects, proposals: [], height: height, width: width, seed: seed, epoch: epoch, sampleIndex: sampleIndex)
        return (out.pixels, out.objects)
    }

    /// Augments one image, its objects and its region proposals with the random stream of (seed, epoch, sampleIndex).
    public func apply(pixels: [UInt8], objects: [Object], proposals: [BoxCorners], height: Int, width: Int,
                      seed: UInt64, epoch: Int, sampleIndex: Int) -> (pixels: [UInt8], objects: [Object], proposals: [BoxCorners]) {
        var rng = RandomGenerator(seed: seed, stream: UInt64(epoch), UInt64(sampleIndex))
        var pixels = pixels, objects = objects, proposals = proposals
        apply(pixels: &pixels, objects: &objects, proposals: &proposals, height: height, width: width, rng: &rng)
        return (pixels, objects, proposals)
    }

    /// Augments `pixels` (uint8 HWC RGB, height x width x 3) and `objects` in place.
    public func apply(pixels: inout [UInt8], objects: inout [Object], height: Int, width: Int, rng: inout RandomGenerator) {
        var proposals: [BoxCorners] = []
        apply(pixels: &pixels, objects: &objects, proposals: &proposals, height: height, width: width, rng: &rng)
    }

    /// Augments `pixels`, `objects` and region `proposals` in place.
    public func apply(pixels: inout [UInt8], objects: inout [Object], proposals: inout [BoxCorners], height: Int, width: Int,
                      rng: inout RandomGenerator) {
        precondition(pixels.count == height * width * 3, "pixels do not match \(height)x\(width)x3")
        var image = Image(pixels: pixels, objects: objects, height: height, width: width)
        image.proposals = proposals
        proposals = []
        pixels = []  // let the image own the only copy, so the in-place kernels do not copy it
        if rng.uniform() < 0.5 {
            brightness(&image, &rng); contrast(&image, &rng); colour(&image, &rng)
            translate(&image, &rng); zoom(&image, range: zoomIn, &rng); flip(&image, &rng)
        } else {
            brightness(&image, &rng); colour(&image, &rng); contrast(&image, &rng)
            zoom(&image, range: zoomOut, &rng); translate(&image, &rng); flip(&image, &rng)
        }
        image.flushTone()
        pixels = image.pixels
        objects = image.objects
        proposals = image.proposals
    }

    // MARK: - Steps

    /// The image being augmented. Brightness and contrast are collected in `tone`, a map of the 256 input values,
    /// and applied in one pass when a step that needs the pixels comes.
    struct Image {
        var pixels: [UInt8]
        var objects: [Object]
        let height: Int, width: Int
        var tone: [Float]? = nil
        var proposals: [BoxCorners] = []

        /// Moves the proposals by `transform`, then clips them to the image, dropping those with nothing inside.
        mutating func moveProposals(_ transform: (BoxCorners) -> BoxCorners) {
            let (w, h) = (Float(width), Float(height))
            proposals = proposals.compactMap { p in
                let m = transform(p)
                let clipped = BoxCorners(xmin: max(m.xmin, 0), ymin: max(m.ymin, 0), xmax: min(m.xmax, w), ymax: min(m.ymax, h))
                return clipped.isValid ? clipped : nil
            }
        }

        mutating func mapTone(_ f: (Float) -> Float) {
            var table = tone ?? (0..<256).map(Float.init)
            for v in 0..<256 { table[v] = min(max(f(table[v]), 0), 255) }
            tone = table
        }

        mutating func flushTone() {
            guard let table = tone else { return }
            tone = nil
            let bytes = table.map(AugmentationKernels.roundToByte)
            pixels.withUnsafeMutableBufferPointer { AugmentationKernels.applyTable(bytes, to: $0) }
        }
    }

    private func brightness(_ image: inout Image, _ rng: inout RandomGenerator) {
        guard rng.uniform() < brightnessProbability else { return }
        let delta = rng.uniform(brightnessDelta.lowerBound, brightnessDelta.upperBound)
        image.mapTone { $0 + delta }
    }

    private func contrast(_ image: inout Image, _ rng: inout RandomGenerator) {
        guard rng.uniform() < contrastProbability else { return }
        let factor = rng.uniform(contrastFactor.lowerBound, contrastFactor.upperBound)
        image.mapTone { 127.5 + factor * ($0 - 127.5) }
    }

    /// Saturation and hue in one HSV pass (each drawn with its own probability).
    private func colour(_ image: inout Image, _ rng: inout RandomGenerator) {
        var saturation: Float = 1, hue: Float = 0
        if rng.uniform() < saturationProbability { saturation = rng.uniform(saturationFactor.lowerBound, saturationFactor.upperBound) }
        if rng.uniform() < hueProbability { hue = rng.uniform(-hueDegrees, hueDegrees) }
        guard saturation != 1 || hue != 0 else { return }
        image.flushTone()
        image.pixels.withUnsafeMutableBufferPointer {
            AugmentationKernels.adjustSaturationAndHue($0, saturation: saturation, hueDegrees: hue)
        }
    }

    private func flip(_ image: inout Image, _ rng: inout RandomGenerator) {
        guard rng.uniform() < flipProbability else { return }
        image.flushTone()
        let (h, w) = (image.height, image.width)
        image.pixels.withUnsafeMutableBufferPointer { AugmentationKernels.flipHorizontally($0, height: h, width: w) }
        let W = Float(w)
        for k in image.objects.indices {
            let b = image.objects[k].box
            image.objects[k].box = BoxCorners(xmin: W - b.xmax, ymin: b.ymin, xmax: W - b.xmin, ymax: b.ymax)
        }
        image.moveProposals { BoxCorners(xmin: W - $0.xmax, ymin: $0.ymin, xmax: W - $0.xmin, ymax: $0.ymax) }
    }

    private func translate(_ image: inout Image, _ rng: inout RandomGenerator) {
        guard rng.uniform() < translateProbability else { return }
        let (h, w) = (image.height, image.width)
        for _ in 0..<max(1, trials) {
            let fy = rng.uniform(translateFraction.lowerBound, translateFraction.upperBound) * (rng.uniform() < 0.5 ? -1 : 1)
            let fx = rng.uniform(translateFraction.lowerBound, translateFraction.upperBound) * (rng.uniform() < 0.5 ? -1 : 1)
            let dy = Int((Float(h) * fy).rounded()), dx = Int((Float(w) * fx).rounded())
            let moved = image.objects.map { object -> Object in
                var o = object
                o.box = BoxCorners(xmin: o.box.xmin + Float(dx), ymin: o.box.ymin + Float(dy),
                                   xmax: o.box.xmax + Float(dx), ymax: o.box.ymax + Float(dy))
                return o
            }
            guard accepts(moved, height: h, width: w) else { continue }
            image.flushTone()
            let background = self.background
            image.pixels = warped(image.pixels) { source, target in
                AugmentationKernels.translate(source, into: target, height: h, width: w, dx: dx, dy: dy, background: background)
            }
            image.objects = filtered(moved, height: h, width: w)
            let (x, y) = (Float(dx), Float(dy))
            image.moveProposals { BoxCorners(xmin: $0.xmin + x, ymin: $0.ymin + y, xmax: $0.xmax + x, ymax: $0.ymax + y) }
            return
        }
    }

    private func zoom(_ image: inout Image, range: ClosedRange<Float>, _ rng: inout RandomGenerator) {
        guard rng.uniform() < zoomProbability else { return }
        let (h, w) = (image.height, image.width)
        let (cx, cy) = (Float(w) / 2, Float(h) / 2)
        for _ in 0..<max(1, trials) {
            let factor = rng.uniform(range.lowerBound, range.upperBound)
            let moved = image.objects.map { object -> Object in
                var o = object
                o.box = BoxCorners(xmin: cx + factor * (o.box.xmin - cx), ymin: cy + factor * (o.box.ymin - cy),
                                   xmax: cx + factor * (o.box.xmax - cx), ymax: cy + factor * (o.box.ymax - cy))
                return o
            }
            guard accepts(moved, height: h, width: w) else { continue }
            image.flushTone()
            let background = self.background
            image.pixels = warped(image.pixels) { source, target in
                AugmentationKernels.zoom(source, into: target, height: h, width: w, factor: factor, background: background)
            }
            image.objects = filtered(moved, height: h, width: w)
            image.moveProposals {
                BoxCorners(xmin: cx + factor * ($0.xmin - cx), ymin: cy + factor * ($0.ymin - cy),
                           xmax: cx + factor * ($0.xmax - cx), ymax: cy + factor * ($0.ymax - cy))
            }
            return
        }
    }

    private func warped(_ pixels: [UInt8], _ kernel: (UnsafeBufferPointer<UInt8>, UnsafeMutableBufferPointer<UInt8>) -> Void) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: pixels.count) { target, initialized in
            pixels.withUnsafeBufferPointer { kernel($0, target) }
            initialized = pixels.count
        }
    }

    // MARK: - Box validation

    /// The area of `box` inside the image and its own area.
    static func visibleArea(_ box: BoxCorners, height: Int, width: Int) -> (inside: Float, total: Float) {
        let w = max(0, min(box.xmax, Float(width)) - max(box.xmin, 0))
        let h = max(0, min(box.ymax, Float(height)) - max(box.ymin, 0))
        return (w * h, box.area)
    }

    /// ssd_keras's ImageValidator: enough non-difficult boxes keep `validatorFraction` of their area.
    func accepts(_ objects: [Object], height: Int, width: Int) -> Bool {
        let candidates = objects.filter { !$0.difficult }
        if candidates.isEmpty { return true }
        let kept = candidates.filter { object in
            let (inside, total) = Self.visibleArea(object.box, height: height, width: width)
            return total > 0 && inside >= validatorFraction * total
        }
        return kept.count >= min(validatorMinBoxes, candidates.count)
    }

    /// ssd_keras's BoxFilter, then clipping: keeps boxes with at least `minVisibleFraction` of their area and
    /// `minBoxArea` square pixels inside the image, clipped to it.
    func filtered(_ objects: [Object], height: Int, width: Int) -> [Object] {
        objects.compactMap { object in
            let (inside, total) = Self.visibleArea(object.box, height: height, width: width)
            guard total > 0, inside >= minVisibleFraction * total, inside >= minBoxArea else { return nil }
            var o = object
            o.box = BoxCorners(xmin: max(o.box.xmin, 0), ymin: max(o.box.ymin, 0),
                               xmax: min(o.box.xmax, Float(width)), ymax: min(o.box.ymax, Float(height)))
            return o
        }
    }
}
