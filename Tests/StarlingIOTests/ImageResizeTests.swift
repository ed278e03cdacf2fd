import Foundation
import Testing
@testable import StarlingIO

@Suite struct ImageResizeTests {
    /// Bilinear resampling written the plain way (Double, one output value at a time, OpenCV's half-pixel mapping).
    static func reference(_ src: [UInt8], width: Int, height: Int, channels: Int, toWidth: Int, toHeight: Int) -> [UInt8] {
        func sample(_ size: Int, _ outSize: Int, _ i: Int) -> (Int, Int, Double) {
            let s = max(0, (Double(i) + 0.5) * Double(size) / Double(outSize) - 0.5)
            let i0 = min(Int(s.rounded(.down)), size - 1)
            return (i0, min(i0 + 1, size - 1), s - Double(i0))
        }
        var out = [UInt8]()
        for y in 0..<toHeight {
            let (y0, y1, fy) = sample(height, toHeight, y)
            for x in 0..<toWidth {
                let (x0, x1, fx) = sample(width, toWidth, x)
                for c in 0..<channels {
                    func p(_ xx: Int, _ yy: Int) -> Double { Double(src[(yy * width + xx) * channels + c]) }
                    let top: Double = (1 - fx) * p(x0, y0) + fx * p(x1, y0)
                    let bottom: Double = (1 - fx) * p(x0, y1) + fx * p(x1, y1)
                    let v = (1 - fy) * top + fy * bottom
                    out.append(UInt8(v.rounded()))
                }
            }
        }
        return out
    }

    @Test func matchesThePlainComputation() {
        let cases: [(Int, Int, Int, Int, Int)] = [(37, 23, 3, 16, 10), (16, 10, 3, 37, 23), (20, 20, 1, 20, 7), (5, 4, 3, 480, 300), (240, 150, 3, 60, 37)]
        for (w, h, c, ow, oh) in cases {
            let src: [UInt8] = (0..<(w * h * c)).map { (i: Int) -> UInt8 in UInt8(truncatingIfNeeded: i &* 37 &+ i / 5) }
            let got = ImageResize.bilinear(src, width: w, height: h, channels: c, toWidth: ow, toHeight: oh)
            let want = Self.reference(src, width: w, height: h, channels: c, toWidth: ow, toHeight: oh)
            let worst = zip(got, want).map { abs(Int($0) - Int($1)) }.max() ?? 0
            #expect(got.count == want.count && worst <= 1, "\(w)x\(h) -> \(ow)x\(oh): off by \(worst)")
        }
        // The same size is a copy; a constant image stays constant.
        let src: [UInt8] = (0..<(9 * 7 * 3)).map { (i: Int) -> UInt8 in UInt8(i) }
        #expect(ImageResize.bilinear(src, width: 9, height: 7, channels: 3, toWidth: 9, toHeight: 7) == src)
        #expect(ImageResize.bilinear([UInt8](repeating: 200, count: 300), width: 10, height: 10, channels: 3, toWidth: 3, toHeight: 17)
                == [UInt8](repeating: 200, count: 3 * 17 * 3))
    }

    /// A 2x downscale averages each 2x2 block: pixel boundaries (box corners) scale by exactly 1/2.
    @Test func halvingAveragesBlocks() {
        let src: [UInt8] = [0, 100, 10, 30,
                            200, 60, 50, 70]
        #expect(ImageResize.bilinear(src, width: 4, height: 2, channels: 1, toWidth: 2, toHeight: 1) == [90, 40])
    }
}

@Suite struct ImageFileTests {
    @Test func sizesAndDecodingByContent() throws {
        try withTemporaryDirectory { dir in
            let pixels = (0..<(13 * 7 * 3)).map { UInt8($0 % 256) }
            try JPEGImage.write(path: dir + "/a.jpg", width: 13, height: 7, pixels: pixels, quality: 90)
            try PNGImage.write(path: dir + "/b.jpg", width: 13, height: 7, channels: 3, pixels: pixels)  // a PNG named .jpg
            #expect(try ImageFile.dimensions(path: dir + "/a.jpg") == (13, 7))
            #expect(try ImageFile.dimensions(path: dir + "/b.jpg") == (13, 7))
            #expect(try ImageFile.readRGB(path: dir + "/b.jpg").pixels == pixels)
            let gray = (0..<(4 * 3)).map { UInt8($0 * 20) }
            try PNGImage.write(path: dir + "/g.png", width: 4, height: 3, channels: 1, pixels: gray)
            #expect(try ImageFile.readRGB(path: dir + "/g.png").pixels == gray.flatMap { [$0, $0, $0] })
            try Data("GIF89a....".utf8).write(to: URL(fileURLWithPath: dir + "/c.jpg"))
            expectError(StarlingIOError.self, containing: ["c.jpg", "neither a JPEG nor a PNG"]) { _ = try ImageFile.dimensions(path: dir + "/c.jpg") }
            expectError(StarlingIOError.self, containing: ["d.jpg", "no such file"]) { _ = try ImageFile.readRGB(path: dir + "/d.jpg") }
        }
    }
}
