import StarlingIO

/// An 8-bit RGB color.
public struct RGB: Equatable, Sendable {
    public var r: UInt8
    public var g: UInt8
    public var b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }

    public static let white = RGB(255, 255, 255)
    public static let black = RGB(0, 0, 0)
    public static let lightGray = RGB(225, 225, 225)
    public static let gray = RGB(128, 128, 128)
    /// Ten colors that stay apart on white (the "category10" palette of plotting libraries).
    public static let palette: [RGB] = [
        RGB(31, 119, 180), RGB(255, 127, 14), RGB(44, 160, 44), RGB(214, 39, 40), RGB(148, 103, 189),
        RGB(140, 86, 75), RGB(227, 119, 194), RGB(127, 127, 127), RGB(188, 189, 34), RGB(23, 190, 207),
    ]
}

/// A small RGB raster for plots and diagrams: rectangles, lines, bitmap text, written as PNG.
/// Pixel (0, 0) is the top-left corner; drawing outside the canvas is clipped, never an error.
public struct PixelCanvas: Sendable {
    public let width: Int
    public let height: Int
    /// Row-major RGB bytes, `3 * (y * width + x)` for pixel (x, y).
    public private(set) var pixels: [UInt8]

    public init(width: Int, height: Int, background: RGB = .white) {
        precondition(width > 0 && height > 0, "canvas must not be empty")
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 0, count: width * height * 3)
        fillRect(x: 0, y: 0, width: width, height: height, color: background)
    }

    /// A canvas over an existing RGB image (row-major, 3 bytes a pixel), to draw on it.
    public init(width: Int, height: Int, rgb: [UInt8]) {
        precondition(width > 0 && height > 0 && rgb.count == width * height * 3, "RGB image of \(rgb.count) bytes for \(width)x\(height)")
        self.width = width
        self.height = height
        pixels = rgb
    }

    public func pixel(x: Int, y: Int) -> RGB {
        let i = 3 * (y * width + x)
        return RGB(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// Sets one pixel; outside the canvas nothing happens.
    public mutating func set(x: Int, y: Int, _ color: RGB) {
        guard x >= 0, y >= 0, x < width, y < height else { return }
        let i = 3 * (y * width + x)
        pixels[i] = color.r
        pixels[i + 1] = color.g
        pixels[i + 2] = color.b
    }

    public mutating func fillRect(x: Int, y: Int, width w: Int, height h: Int, color: RGB) {
        let x0 = max(0, x), x1 = min(width, x + w), y0 = max(0, y), y1 = min(height, y + h)
        guard x0 < x1, y0 < y1 else { return }   // wholly outside, or empty
        for yy in y0..<y1 {
            for xx in x0..<x1 { set(x: xx, y: yy, color) }
        }
    }

    /// A one-pixel outline whose outer edge is the given rectangle.
    public mutating func strokeRect(x: Int, y: Int, width w: Int, height h: Int, color: RGB) {
        fillRect(x: x, y: y, width: w, height: 1, color: color)
        fillRect(x: x, y: y + h - 1, width: w, height: 1, color: color)
        fillRect(x: x, y: y, width: 1, height: h, color: color)
        fillRect(x: x + w - 1, y: y, width: 1, height: h, color: color)
    }

    /// A straight line between pixel centres (Bresenham), `thickness` pixels wide (a square brush).
    public mutating func line(from a: (x: Int, y: Int), to b: (x: Int, y: Int), color: RGB, thickness: Int = 1) {
        var x = a.x, y = a.y
        let dx = abs(b.x - a.x), dy = -abs(b.y - a.y)
        let sx = a.x < b.x ? 1 : -1, sy = a.y < b.y ? 1 : -1
        var error = dx + dy
        let lo = -(thickness - 1) / 2, hi = thickness / 2
        while true {
            for oy in lo...hi { for ox in lo...hi { set(x: x + ox, y: y + oy, color) } }
            if x == b.x && y == b.y { break }
            let e2 = 2 * error
            if e2 >= dy { error += dy; x += sx }
            if e2 <= dx { error += dx; y += sy }
        }
    }

    /// Draws `text` in `BitmapFont` with its top-left corner at (x, y), each font pixel `scale` x `scale`.
    /// `vertical` turns it a quarter to the left, reading upwards from (x, y) (its bottom-left corner then).
    public mutating func text(_ text: String, x: Int, y: Int, color: RGB, scale: Int = 1, vertical: Bool = false) {
        for (i, character) in text.enumerated() {
            let glyph = BitmapFont.glyph(character)
            for gy in 0..<BitmapFont.glyphHeight {
                for gx in 0..<BitmapFont.glyphWidth where glyph[gy * BitmapFont.glyphWidth + gx] {
                    let along = i * BitmapFont.advance + gx   // position along the text direction
                    let (px, py) = vertical ? (x + gy * scale, y - (along + 1) * scale) : (x + along * scale, y + gy * scale)
                    fillRect(x: px, y: py, width: scale, height: scale, color: color)
                }
            }
        }
    }

    /// Draws an image of `height` x `width` pixels with `channels` (1 gray, 3 RGB) values each in [0, 1], row-major,
    /// with its top-left corner at (x, y), each image pixel as a `scale` x `scale` square.
    public mutating func image(_ values: [Float], height: Int, width: Int, channels: Int, x: Int, y: Int, scale: Int = 1) {
        precondition(channels == 1 || channels == 3, "images are gray or RGB")
        precondition(values.count == height * width * channels, "\(values.count) values for a \(height)x\(width)x\(channels) image")
        func byte(_ v: Float) -> UInt8 { UInt8(max(0, min(255, (v * 255).rounded()))) }
        for row in 0..<height {
            for column in 0..<width {
                let i = (row * width + column) * channels
                let color = channels == 1 ? RGB(byte(values[i]), byte(values[i]), byte(values[i]))
                    : RGB(byte(values[i]), byte(values[i + 1]), byte(values[i + 2]))
                fillRect(x: x + column * scale, y: y + row * scale, width: scale, height: scale, color: color)
            }
        }
    }

    /// Writes the canvas as an RGB PNG (atomically).
    public func writePNG(path: String) throws {
        try PNGImage.write(path: path, width: width, height: height, channels: 3, pixels: pixels)
    }
}
