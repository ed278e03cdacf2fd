import CTurboJPEG

/// JPEG through the TurboJPEG API, which returns error codes (the classic libjpeg API exits or longjmps).
/// Pixels are row-major HWC RGB, 8 bits per channel.
public enum JPEGImage {
    /// Decodes a JPEG file to RGB.
    ///
    /// libjpeg treats truncated or corrupt entropy data as a warning and fills the missing part with gray;
    /// by default such warnings are errors, so a damaged training image is reported, not silently learned
    /// from. `allowWarnings` accepts them (some cameras write harmless extra bytes between markers).
    public static func decode(path: String, allowWarnings: Bool = false) throws -> (width: Int, height: Int, pixels: [UInt8]) {
        try decode(data: readWholeFile(path), name: path, allowWarnings: allowWarnings)
    }

    /// Decodes JPEG bytes to RGB; `name` identifies the source in error messages.
    public static func decode(data: [UInt8], name: String, allowWarnings: Bool = false) throws -> (width: Int, height: Int, pixels: [UInt8]) {
        guard let handle = tjInitDecompress() else {
            throw StarlingIOError(file: name, message: "cannot start JPEG decoder: \(errorText(nil))")
        }
        defer { tjDestroy(handle) }
        guard data.count >= 4 else { throw StarlingIOError(file: name, message: "not a JPEG file (\(data.count) bytes)") }

        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        let headerStatus = data.withUnsafeBufferPointer {
            tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &width, &height, &subsampling, &colorspace)
        }
        guard headerStatus == 0 else {
            throw StarlingIOError(file: name, message: "invalid JPEG header: \(errorText(handle))")
        }
        guard width > 0, height > 0 else {
            throw StarlingIOError(file: name, message: "invalid JPEG size \(width)x\(height)")
        }

        let w = Int(width), h = Int(height)
        var pixels = [UInt8](repeating: 0, count: w * h * 3)
        let status = data.withUnsafeBufferPointer { source in
            pixels.withUnsafeMutableBufferPointer { target in
                tjDecompress2(handle, source.baseAddress, UInt(source.count), target.baseAddress,
                              width, 0, height, Int32(TJPF_RGB.rawValue), 0)
            }
        }
        if status != 0 {
            let isWarning = tjGetErrorCode(handle) == Int32(TJERR_WARNING.rawValue)
            if !(isWarning && allowWarnings) {
                let kind = isWarning ? "corrupt or truncated JPEG data" : "cannot decode JPEG"
                throw StarlingIOError(file: name, message: "\(kind): \(errorText(handle))")
            }
        }
        return (w, h, pixels)
    }

    /// Encodes RGB (`channels` 3) or gray (1) pixels as a baseline JPEG with no chroma subsampling.
    /// `quality` is 1...100.
    public static func encode(width: Int, height: Int, pixels: [UInt8], quality: Int, channels: Int = 3) throws -> [UInt8] {
        let name = "JPEG encoder"
        guard channels == 1 || channels == 3 else {
            throw StarlingIOError(file: name, message: "cannot encode \(channels) channels; JPEG needs 1 or 3")
        }
        guard width > 0, height > 0, width <= 65_535, height <= 65_535 else {
            throw StarlingIOError(file: name, message: "invalid image size \(width)x\(height)")
        }
        guard pixels.count == width * height * channels else {
            throw StarlingIOError(file: name, message: "\(pixels.count) pixel values do not match \(width)x\(height)x\(channels)")
        }
        guard (1...100).contains(quality) else {
            throw StarlingIOError(file: name, message: "quality \(quality) is not in 1...100")
        }
        guard let handle = tjInitCompress() else {
            throw StarlingIOError(file: name, message: "cannot start JPEG encoder: \(errorText(nil))")
        }
        defer { tjDestroy(handle) }
        let pixelFormat = channels == 3 ? Int32(TJPF_RGB.rawValue) : Int32(TJPF_GRAY.rawValue)
        let subsampling = channels == 3 ? Int32(TJSAMP_444.rawValue) : Int32(TJSAMP_GRAY.rawValue)
        var output: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        let status = pixels.withUnsafeBufferPointer {
            tjCompress2(handle, $0.baseAddress, Int32(width), 0, Int32(height), pixelFormat,
                        &output, &size, subsampling, Int32(quality), 0)
        }
        defer { if let output { tjFree(output) } }
        guard status == 0, let output else {
            throw StarlingIOError(file: name, message: "cannot encode JPEG: \(errorText(handle))")
        }
        return Array(UnsafeBufferPointer(start: output, count: Int(size)))
    }

    /// Encodes and writes a JPEG file atomically.
    public static func write(path: String, width: Int, height: Int, pixels: [UInt8], quality: Int, channels: Int = 3) throws {
        let bytes: [UInt8]
        do {
            bytes = try encode(width: width, height: height, pixels: pixels, quality: quality, channels: channels)
        } catch let error as StarlingIOError {
            throw StarlingIOError(file: path, message: error.message)
        }
        try AtomicFile.write(bytes, to: path)
    }

    private static func errorText(_ handle: tjhandle?) -> String {
        guard let text = tjGetErrorStr2(handle) else { return "unknown error" }
        return String(cString: text)
    }
}
