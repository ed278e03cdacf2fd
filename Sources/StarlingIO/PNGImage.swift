import CPNG

/// PNG files through libpng's simplified `png_image` API, which reports errors in the struct instead of
/// longjmp-ing out of Swift frames. Pixels are row-major HWC, 8 bits per channel.
public enum PNGImage {
    /// Writes an 8-bit gray (1), RGB (3) or RGBA (4) image atomically (temporary file + rename).
    public static func write(path: String, width: Int, height: Int, channels: Int, pixels: [UInt8]) throws {
        guard let format = format(channels: channels) else {
            throw StarlingIOError(file: path, message: "cannot write \(channels) channels; PNG needs 1, 3 or 4")
        }
        guard width > 0, height > 0, width * channels <= Int(Int32.max), height <= Int(UInt32.max) else {
            throw StarlingIOError(file: path, message: "invalid image size \(width)x\(height)")
        }
        guard pixels.count == width * height * channels else {
            throw StarlingIOError(file: path, message:
                "\(pixels.count) pixel values do not match \(width)x\(height)x\(channels)")
        }
        try AtomicFile.replace(path) { temporary in
            var image = png_image()
            image.version = starling_png_image_version()
            image.width = UInt32(width)
            image.height = UInt32(height)
            image.format = format
            let ok = pixels.withUnsafeBytes {
                png_image_write_to_file(&image, temporary, 0, $0.baseAddress, Int32(width * channels), nil)
            }
            defer { png_image_free(&image) }
            guard ok != 0 else { throw StarlingIOError(file: path, message: "cannot write PNG: \(message(of: &image))") }
        }
    }

    /// An 8-bit gray (1), RGB (3) or RGBA (4) image as PNG bytes in memory (TensorBoard's image summaries).
    public static func encode(width: Int, height: Int, channels: Int, pixels: [UInt8]) throws -> [UInt8] {
        guard let format = format(channels: channels), width > 0, height > 0, width * channels <= Int(Int32.max),
              pixels.count == width * height * channels else {
            throw StarlingIOError(file: "(PNG in memory)", message: "cannot encode \(pixels.count) values as \(width)x\(height)x\(channels)")
        }
        var image = png_image()
        image.version = starling_png_image_version()
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = format
        defer { png_image_free(&image) }
        // The first call measures, the second writes.
        var size: png_alloc_size_t = 0
        let measured = pixels.withUnsafeBytes { png_image_write_to_memory(&image, nil, &size, 0, $0.baseAddress, Int32(width * channels), nil) }
        guard measured != 0, size > 0 else { throw StarlingIOError(file: "(PNG in memory)", message: "cannot encode PNG: \(message(of: &image))") }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let written = bytes.withUnsafeMutableBytes { out in
            pixels.withUnsafeBytes { png_image_write_to_memory(&image, out.baseAddress, &size, 0, $0.baseAddress, Int32(width * channels), nil) }
        }
        guard written != 0 else { throw StarlingIOError(file: "(PNG in memory)", message: "cannot encode PNG: \(message(of: &image))") }
        return Array(bytes.prefix(Int(size)))
    }

    /// Reads an image as 8-bit pixels. `channels` picks the output layout (1 gray, 3 RGB, 4 RGBA; libpng
    /// converts, compositing alpha onto black when it is dropped); by default the file's own: 1 for
    /// gray, 3 for color, 4 for anything with transparency.
    ///
    /// 16-bit files are reduced to 8 bits; libpng treats 16-bit data without gamma information as linear and
    /// converts it to sRGB, so 16-bit label masks should be saved as 8-bit.
    public static func read(path: String, channels: Int? = nil) throws -> (width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        guard fileExists(path) else { throw StarlingIOError(file: path, message: "no such file") }
        var image = png_image()
        image.version = starling_png_image_version()
        guard png_image_begin_read_from_file(&image, path) != 0 else {
            let problem = message(of: &image)
            png_image_free(&image)
            throw StarlingIOError(file: path, message: "cannot read PNG: \(problem)")
        }
        let fileFormat = image.format
        let outputChannels = channels ?? (
            fileFormat & starling_png_format_flag_alpha() != 0 ? 4 :
            fileFormat & starling_png_format_flag_color() != 0 ? 3 : 1)
        guard let outputFormat = format(channels: outputChannels) else {
            png_image_free(&image)
            throw StarlingIOError(file: path, message: "cannot read as \(outputChannels) channels; choose 1, 3 or 4")
        }
        image.format = outputFormat
        let width = Int(image.width), height = Int(image.height)
        // libpng caps width and height at 1,000,000 each; refuse what would not fit in memory or an Int32 stride.
        guard width * height * outputChannels <= 1 << 32 else {
            png_image_free(&image)
            throw StarlingIOError(file: path, message: "image \(width)x\(height) is too large")
        }
        var pixels = [UInt8](repeating: 0, count: width * height * outputChannels)
        let ok = pixels.withUnsafeMutableBytes {
            png_image_finish_read(&image, nil, $0.baseAddress, Int32(width * outputChannels), nil)
        }
        guard ok != 0 else {
            let problem = message(of: &image)
            png_image_free(&image)
            throw StarlingIOError(file: path, message: "cannot decode PNG: \(problem)")
        }
        return (width, height, outputChannels, pixels)
    }

    private static func format(channels: Int) -> png_uint_32? {
        switch channels {
        case 1: return starling_png_format_gray()
        case 3: return starling_png_format_rgb()
        case 4: return starling_png_format_rgba()
        default: return nil
        }
    }

    /// libpng's message for the last failure (a NUL-terminated char[64] inside the struct).
    private static func message(of image: inout png_image) -> String {
        let text = withUnsafeBytes(of: &image.message) { bytes in
            String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return text.isEmpty ? "unknown error" : text
    }
}
