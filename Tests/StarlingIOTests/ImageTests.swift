import Foundation
import Testing
@testable import StarlingIO

@Suite struct PNGTests {
    /// A test pattern with distinct values per pixel and channel.
    private func pattern(width: Int, height: Int, channels: Int) -> [UInt8] {
        (0..<width * height * channels).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ $0 / 7) }
    }

    @Test func roundTripsGrayRGBAndRGBA() throws {
        try withTemporaryDirectory { dir in
            for channels in [1, 3, 4] {
                let path = dir + "/image\(channels).png"
                let pixels = pattern(width: 17, height: 9, channels: channels)
                try PNGImage.write(path: path, width: 17, height: 9, channels: channels, pixels: pixels)
                let image = try PNGImage.read(path: path)
                #expect(image.width == 17 && image.height == 9)
                #expect(image.channels == channels)
                #expect(image.pixels == pixels)
            }
            #expect(directoryContents(dir) == ["image1.png", "image3.png", "image4.png"])
        }
    }

    @Test func convertsChannelsOnRequest() throws {
        try withTemporaryDirectory { dir in
            // Opaque RGBA read as RGB drops alpha unchanged.
            let rgba: [UInt8] = (0..<6 * 4 * 4).map { (i: Int) -> UInt8 in i % 4 == 3 ? 255 : UInt8(i * 2) }
            try PNGImage.write(path: dir + "/opaque.png", width: 6, height: 4, channels: 4, pixels: rgba)
            let rgb = try PNGImage.read(path: dir + "/opaque.png", channels: 3)
            #expect(rgb.channels == 3)
            #expect(rgb.pixels == rgba.enumerated().filter { $0.offset % 4 != 3 }.map(\.element))
            // Gray read as RGB repeats the value; gray-valued RGB read as gray gives it back (within rounding).
            let gray = (0..<24).map { UInt8($0 * 10) }
            try PNGImage.write(path: dir + "/gray.png", width: 6, height: 4, channels: 1, pixels: gray)
            #expect(try PNGImage.read(path: dir + "/gray.png", channels: 3).pixels == gray.flatMap { [$0, $0, $0] })
            try PNGImage.write(path: dir + "/grayish.png", width: 6, height: 4, channels: 3, pixels: gray.flatMap { [$0, $0, $0] })
            let back = try PNGImage.read(path: dir + "/grayish.png", channels: 1)
            #expect(zip(back.pixels, gray).allSatisfy { abs(Int($0) - Int($1)) <= 1 })
        }
    }

    @Test func errors() throws {
        try withTemporaryDirectory { dir in
            let missing = dir + "/missing.png"
            expectError(StarlingIOError.self, containing: [missing, "no such file"]) { _ = try PNGImage.read(path: missing) }
            let garbage = dir + "/garbage.png"
            try Data("definitely not a PNG".utf8).write(to: URL(fileURLWithPath: garbage))
            expectError(StarlingIOError.self, containing: [garbage, "cannot read PNG"]) { _ = try PNGImage.read(path: garbage) }

            let good = dir + "/good.png"
            try PNGImage.write(path: good, width: 64, height: 64, channels: 3, pixels: pattern(width: 64, height: 64, channels: 3))
            let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
            let truncated = dir + "/truncated.png"
            try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
            expectError(StarlingIOError.self, containing: [truncated, "PNG"]) { _ = try PNGImage.read(path: truncated) }

            let out = dir + "/out.png"
            expectError(StarlingIOError.self, containing: [out, "2 channels"]) {
                try PNGImage.write(path: out, width: 2, height: 2, channels: 2, pixels: [UInt8](repeating: 0, count: 8))
            }
            expectError(StarlingIOError.self, containing: [out, "11 pixel values"]) {
                try PNGImage.write(path: out, width: 2, height: 2, channels: 3, pixels: [UInt8](repeating: 0, count: 11))
            }
            expectError(StarlingIOError.self, containing: ["no such directory"]) {
                try PNGImage.write(path: dir + "/nodir/x.png", width: 1, height: 1, channels: 1, pixels: [0])
            }
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }
}

@Suite struct JPEGTests {
    /// A smooth RGB image (JPEG is lossy: sharp edges would need a loose tolerance).
    private func gradient(width: Int, height: Int) -> [UInt8] {
        var pixels: [UInt8] = []
        for y in 0..<height {
            for x in 0..<width {
                let red = x * 255 / (width - 1), green = y * 255 / (height - 1)
                let blue = (x + y) * 255 / (width + height - 2)
                pixels += [UInt8(red), UInt8(green), UInt8(blue)]
            }
        }
        return pixels
    }

    @Test func encodeDecodeRoundTrip() throws {
        let pixels = gradient(width: 48, height: 32)
        let jpeg = try JPEGImage.encode(width: 48, height: 32, pixels: pixels, quality: 95)
        #expect(jpeg.prefix(2) == [0xFF, 0xD8])
        let image = try JPEGImage.decode(data: jpeg, name: "gradient")
        #expect(image.width == 48 && image.height == 32)
        #expect(image.pixels.count == pixels.count)
        let errors = zip(image.pixels, pixels).map { abs(Int($0) - Int($1)) }
        let meanError = Double(errors.reduce(0, +)) / Double(errors.count)
        #expect(meanError < 2.0, "mean absolute error \(meanError)")
        #expect(errors.max() ?? 0 <= 12)

        let gray = (0..<16 * 8).map { UInt8($0 * 2) }
        let grayJPEG = try JPEGImage.encode(width: 16, height: 8, pixels: gray, quality: 100, channels: 1)
        let grayImage = try JPEGImage.decode(data: grayJPEG, name: "gray")
        // Decoded to RGB: each pixel repeats its gray value.
        #expect(zip(grayImage.pixels.enumerated().filter { $0.offset % 3 == 0 }.map(\.element), gray)
            .allSatisfy { abs(Int($0) - Int($1)) <= 2 })
    }

    @Test func writesAtomicallyAndDecodesFiles() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/gradient.jpg"
            try JPEGImage.write(path: path, width: 20, height: 10, pixels: gradient(width: 20, height: 10), quality: 90)
            #expect(directoryContents(dir) == ["gradient.jpg"])
            let image = try JPEGImage.decode(path: path)
            #expect(image.width == 20 && image.height == 10)
        }
    }

    @Test func decodesARealDashcamFrame() throws {
        let image = try JPEGImage.decode(path: sharedData + "/udacity/images/1478019952686311006.jpg")
        #expect(image.width == 480 && image.height == 300)
        #expect(image.pixels.count == 480 * 300 * 3)
        // A daytime street scene: neither black nor flat.
        let mean = Double(image.pixels.reduce(0) { $0 + Int($1) }) / Double(image.pixels.count)
        #expect(mean > 40 && mean < 220)
        #expect(Set(image.pixels).count > 200)
    }

    @Test func corruptAndTruncatedDataAreErrors() throws {
        try withTemporaryDirectory { dir in
            let missing = dir + "/missing.jpg"
            expectError(StarlingIOError.self, containing: [missing, "no such file"]) { _ = try JPEGImage.decode(path: missing) }

            let jpeg = try JPEGImage.encode(width: 64, height: 64, pixels: gradient(width: 64, height: 64), quality: 90)
            let truncated = dir + "/truncated.jpg"
            try Data(jpeg.prefix(jpeg.count / 2)).write(to: URL(fileURLWithPath: truncated))
            expectError(StarlingIOError.self, containing: [truncated, "corrupt or truncated"]) {
                _ = try JPEGImage.decode(path: truncated)
            }
            // Accepting warnings returns the partial image (libjpeg fills the rest).
            #expect(try JPEGImage.decode(path: truncated, allowWarnings: true).width == 64)

            let garbage = dir + "/garbage.jpg"
            try Data((0..<500).map { UInt8(truncatingIfNeeded: $0 * 31) }).write(to: URL(fileURLWithPath: garbage))
            expectError(StarlingIOError.self, containing: [garbage, "invalid JPEG header"]) { _ = try JPEGImage.decode(path: garbage) }

            let headerOnly = Array(jpeg.prefix(20))
            expectError(StarlingIOError.self, containing: ["frame-7"]) { _ = try JPEGImage.decode(data: headerOnly, name: "frame-7") }
            expectError(StarlingIOError.self, containing: ["empty"]) { _ = try JPEGImage.decode(data: [], name: "empty") }

            expectError(StarlingIOError.self, containing: ["quality 0"]) {
                _ = try JPEGImage.encode(width: 1, height: 1, pixels: [0, 0, 0], quality: 0)
            }
        }
    }
}
