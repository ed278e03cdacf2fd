import Foundation
import Testing
import StarlingCore
@testable import StarlingModels
@testable import StarlingData

@Suite struct AugmentationTests {
    static let (height, width) = (30, 48)

    /// A picture with every channel varying, and some saturated and gray pixels.
    static func picture(height: Int = height, width: Int = width) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: height * width * 3)
        for y in 0..<height {
            for x in 0..<width {
                let i = 3 * (y * width + x)
                p[i] = UInt8((x * 255) / (width - 1)); p[i + 1] = UInt8((y * 255) / (height - 1)); p[i + 2] = UInt8((x * 7 + y * 13) % 256)
                if x < 3 { p[i + 1] = p[i]; p[i + 2] = p[i] }  // gray columns
            }
        }
        return p
    }

    static let objects = [
        Object(box: BoxCorners(xmin: 5, ymin: 4, xmax: 20, ymax: 25), classID: 1),
        Object(box: BoxCorners(xmin: 30, ymin: 10, xmax: 46, ymax: 20), classID: 2, difficult: true),
    ]

    /// Only the named steps, each always.
    static func only(_ configure: (inout DetectionAugmentation) -> Void) -> DetectionAugmentation {
        var a = DetectionAugmentation.none
        configure(&a)
        return a
    }

    @Test func sameSeedSameResult() {
        let a = DetectionAugmentation()
        let picture = Self.picture()
        var outcomes = Set<[UInt8]>()
        for sample in 0..<8 {
            let first = a.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width, seed: 5, epoch: 2, sampleIndex: sample)
            let again = a.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width, seed: 5, epoch: 2, sampleIndex: sample)
            #expect(first.pixels == again.pixels && first.objects == again.objects)
            outcomes.insert(first.pixels)
        }
        #expect(outcomes.count > 4, "different samples draw different augmentations")
    }

    @Test func identityWhenAllProbabilitiesAreZero() {
        let picture = Self.picture()
        for sample in 0..<5 {
            let out = DetectionAugmentation.none.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width,
                                                       seed: 1, epoch: 0, sampleIndex: sample)
            #expect(out.pixels == picture && out.objects == Self.objects)
        }
    }

    @Test func flipMapsBoxesExactly() {
        let a = Self.only { $0.flipProbability = 1 }
        let picture = Self.picture()
        let out = a.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width, seed: 0, epoch: 0, sampleIndex: 0)
        let W = Float(Self.width)
        #expect(out.objects.map(\.box) == Self.objects.map { BoxCorners(xmin: W - $0.box.xmax, ymin: $0.box.ymin, xmax: W - $0.box.xmin, ymax: $0.box.ymax) })
        #expect(out.objects.map(\.classID) == [1, 2] && out.objects.map(\.difficult) == [false, true])
        for y in 0..<Self.height {
            for x in 0..<Self.width {
                for c in 0..<3 {
                    #expect(out.pixels[3 * (y * Self.width + x) + c] == picture[3 * (y * Self.width + (Self.width - 1 - x)) + c])
                }
            }
        }
    }

    /// Brightness then contrast, both always: every value against the formula computed here, clipped to [0, 255].
    @Test func brightnessAndContrastClamp() {
        let values = (0..<256).map { UInt8($0) }
        let picture = (0..<(16 * 16 * 3)).map { values[$0 % 256] }
        for (delta, factor) in [(Float(48), Float(1.8)), (-48, 0.5), (30, 1.8)] {
            let a = Self.only {
                $0.brightnessProbability = 1; $0.brightnessDelta = delta...delta
                $0.contrastProbability = 1; $0.contrastFactor = factor...factor
            }
            let out = a.apply(pixels: picture, objects: [], height: 16, width: 16, seed: 3, epoch: 0, sampleIndex: 0)
            for (v, got) in zip(picture, out.pixels) {
                let bright = min(max(Float(v) + delta, 0), 255)
                let expected = UInt8(min(max(127.5 + factor * (bright - 127.5), 0), 255).rounded(.toNearestOrEven))
                #expect(got == expected, "v \(v) delta \(delta) factor \(factor)")
            }
            if factor > 1 { #expect(out.pixels.contains(0) && out.pixels.contains(255), "the extremes clip") }
        }
    }

    /// HSV by the textbook formulas (OpenCV's model), for checking the kernel.
    static func referenceHSV(_ r: Float, _ g: Float, _ b: Float, saturation: Float, hueDegrees: Float) -> (Float, Float, Float) {
        let v = max(r, g, b), m = min(r, g, b)
        if v == m { return (r, g, b) }
        var s = (v - m) / v
        var h: Float  // degrees
        if v == r { h = 60 * (g - b) / (v - m) } else if v == g { h = 120 + 60 * (b - r) / (v - m) } else { h = 240 + 60 * (r - g) / (v - m) }
        h = (h + hueDegrees).truncatingRemainder(dividingBy: 360)
        if h < 0 { h += 360 }
        s = min(s * saturation, 1)
        let c = v * s, hp = h / 60, x = c * (1 - abs(hp.truncatingRemainder(dividingBy: 2) - 1))
        let (r1, g1, b1): (Float, Float, Float)
        switch Int(hp) {
        case 0: (r1, g1, b1) = (c, x, 0)
        case 1: (r1, g1, b1) = (x, c, 0)
        case 2: (r1, g1, b1) = (0, c, x)
        case 3: (r1, g1, b1) = (0, x, c)
        case 4: (r1, g1, b1) = (x, 0, c)
        default: (r1, g1, b1) = (c, 0, x)
        }
        let shift = v - c
        return (r1 + shift, g1 + shift, b1 + shift)
    }

    @Test func saturationAndHueMatchHSV() {
        let picture = Self.picture()
        for (s, hue) in [(Float(1.8), Float(0)), (0.5, 0), (1.3, 25), (0.7, -36), (1, 120)] {
            var pixels = picture
            pixels.withUnsafeMutableBufferPointer { AugmentationKernels.adjustSaturationAndHue($0, saturation: s, hueDegrees: hue) }
            var worst: Float = 0
            for i in stride(from: 0, to: picture.count, by: 3) {
                let e = Self.referenceHSV(Float(picture[i]), Float(picture[i + 1]), Float(picture[i + 2]), saturation: s, hueDegrees: hue)
                worst = max(worst, abs(Float(pixels[i]) - e.0), abs(Float(pixels[i + 1]) - e.1), abs(Float(pixels[i + 2]) - e.2))
            }
            #expect(worst <= 0.5 + 1e-3, "saturation \(s) hue \(hue): off by \(worst)")
        }
        // Pure red turned by 120 degrees is pure green; gray is untouched.
        var red: [UInt8] = [255, 0, 0, 90, 90, 90]
        red.withUnsafeMutableBufferPointer { AugmentationKernels.adjustSaturationAndHue($0, saturation: 1.5, hueDegrees: 120) }
        #expect(red == [0, 255, 0, 90, 90, 90])
    }

    @Test func translationMovesPixelsAndBoxes() {
        let a = Self.only { $0.translateProbability = 1; $0.translateFraction = 0.125...0.125 }
        let picture = Self.picture()
        let (h, w) = (Self.height, Self.width)
        for sample in 0..<6 {
            let out = a.apply(pixels: picture, objects: [Self.objects[0]], height: h, width: w, seed: 9, epoch: 0, sampleIndex: sample)
            // 0.125 of 48 is 6 pixels, of 30 is 3.75 -> 4, in either direction: read the shift from the box.
            let dx = Int(out.objects[0].box.xmax - Self.objects[0].box.xmax), dy = Int(out.objects[0].box.ymax - Self.objects[0].box.ymax)
            #expect(abs(dx) == 6 && abs(dy) == 4)
            for y in 0..<h {
                for x in 0..<w {
                    let (sx, sy) = (x - dx, y - dy)
                    let inside = (0..<w).contains(sx) && (0..<h).contains(sy)
                    for c in 0..<3 {
                        #expect(out.pixels[3 * (y * w + x) + c] == (inside ? picture[3 * (sy * w + sx) + c] : 0))
                    }
                }
            }
            let b = out.objects[0].box
            #expect(b.xmin >= 0 && b.ymin >= 0 && b.xmax <= Float(w) && b.ymax <= Float(h))
        }
    }

    @Test func zoomScalesAboutTheCentre() {
        let picture = Self.picture()
        // Factor 1: the identity, exactly.
        let same = Self.only { $0.zoomProbability = 1; $0.zoomIn = 1...1; $0.zoomOut = 1...1 }
        #expect(same.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width, seed: 0, epoch: 0, sampleIndex: 0).pixels == picture)
        // Factor 2 about (24, 15): a centred box doubles; out of the image, corners are clipped; the border area
        // of a zoom out is background.
        let centred = Object(box: BoxCorners(xmin: 20, ymin: 12, xmax: 28, ymax: 18), classID: 1)
        let twice = Self.only { $0.zoomProbability = 1; $0.zoomIn = 2...2; $0.zoomOut = 2...2 }
        let out = twice.apply(pixels: picture, objects: [centred], height: Self.height, width: Self.width, seed: 0, epoch: 0, sampleIndex: 0)
        #expect(out.objects == [Object(box: BoxCorners(xmin: 16, ymin: 9, xmax: 32, ymax: 21), classID: 1)])
        let half = Self.only { $0.zoomProbability = 1; $0.zoomIn = 0.5...0.5; $0.zoomOut = 0.5...0.5 }
        let large = Object(box: BoxCorners(xmin: 12, ymin: 6, xmax: 36, ymax: 24), classID: 1)
        let small = half.apply(pixels: picture, objects: [large], height: Self.height, width: Self.width, seed: 0, epoch: 0, sampleIndex: 0)
        #expect(small.objects == [Object(box: BoxCorners(xmin: 18, ymin: 10.5, xmax: 30, ymax: 19.5), classID: 1)])
        #expect(small.pixels[0..<3] == [0, 0, 0] && small.pixels[(small.pixels.count - 3)...] == [0, 0, 0])
        // Target pixel (24, 15): its centre (24.5, 15.5) shows the source point (24.25, 15.25).
        let i = 3 * (15 * Self.width + 24)
        let s00 = 3 * (15 * Self.width + 23), s10 = s00 + 3, s01 = s00 + 3 * Self.width, s11 = s01 + 3
        for c in 0..<3 {
            // Bilinear at source pixel coordinate (23.75, 14.75): weights 0.25/0.75 between columns 23, 24 and rows 14, 15.
            let top = 0.25 * Float(picture[s00 - 3 * Self.width + c]) + 0.75 * Float(picture[s10 - 3 * Self.width + c])
            let bottom = 0.25 * Float(picture[s01 - 3 * Self.width + c]) + 0.75 * Float(picture[s11 - 3 * Self.width + c])
            let expected = 0.25 * top + 0.75 * bottom
            #expect(abs(Float(out.pixels[i + c]) - expected) <= 0.5 + 1e-3, "channel \(c): \(out.pixels[i + c]) vs \(expected)")
        }
    }

    /// The thresholds: a box keeps a trial alive at 50% visible, survives at 30% visible and 16 square pixels.
    @Test func validatorThresholds() {
        let a = DetectionAugmentation()
        let (h, w) = (100, 100)
        func box(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float, difficult: Bool = false) -> Object {
            Object(box: BoxCorners(xmin: x0, ymin: y0, xmax: x1, ymax: y1), classID: 1, difficult: difficult)
        }
        // 10 x 10 boxes sticking out to the left: 50% inside keeps a trial, 49% does not; 31% inside survives the
        // filter, 29% does not.
        #expect(a.accepts([box(-5, 0, 5, 10)], height: h, width: w))
        #expect(!a.accepts([box(-5.1, 0, 4.9, 10)], height: h, width: w))
        #expect(a.accepts([box(-9, 0, 1, 10), box(10, 10, 20, 20)], height: h, width: w), "one good box is enough")
        #expect(a.accepts([box(-9, 0, 1, 10, difficult: true)], height: h, width: w), "only difficult boxes: any draw")
        #expect(a.accepts([], height: h, width: w))
        let kept = a.filtered([box(-6.9, 0, 3.1, 10), box(-7.1, 0, 2.9, 10)], height: h, width: w)
        #expect(kept == [box(0, 0, 3.1, 10)])
        // 16 square pixels inside is enough, 15.9 is not.
        #expect(a.filtered([box(96, 0, 104, 4), box(96.025, 0, 100, 4)], height: h, width: w) == [box(96, 0, 100, 4)])
        #expect(a.filtered([box(98, 0, 102, 4)], height: h, width: w).isEmpty, "50% visible but only 8 square pixels")
    }

    /// The whole chain on many draws: boxes stay inside the image and keep enough area; sizes are kept.
    @Test func boxesStayInsideTheImage() {
        let a = DetectionAugmentation()
        let picture = Self.picture()
        var moved = 0
        for sample in 0..<150 {
            let out = a.apply(pixels: picture, objects: Self.objects, height: Self.height, width: Self.width, seed: 11, epoch: 1, sampleIndex: sample)
            #expect(out.pixels.count == picture.count)
            for o in out.objects {
                #expect(o.box.xmin >= 0 && o.box.ymin >= 0 && o.box.xmax <= Float(Self.width) && o.box.ymax <= Float(Self.height))
                #expect(o.box.area >= a.minBoxArea && o.box.xmin < o.box.xmax && o.box.ymin < o.box.ymax)
            }
            if out.objects.map(\.box) != Self.objects.map(\.box) { moved += 1 }
        }
        #expect(moved > 50)
    }
}
