import CTurboJPEG

/// Image files of either kind Starling decodes (JPEG, PNG), told apart by their first bytes rather than their
/// names: datasets contain `.jpg` files that are PNGs and the other way round.
public enum ImageFile {
    public enum Kind: Sendable { case jpeg, png }

    /// The kind from the file signature, or nil.
    public static func kind(of bytes: [UInt8]) -> Kind? {
        if bytes.count >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF { return .jpeg }
        if bytes.count >= 8 && bytes.prefix(8).elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        return nil
    }

    /// Width and height from the file's header, without decoding the pixels (the decoder may still find the
    /// rest of the file damaged).
    public static func dimensions(path: String) throws -> (width: Int, height: Int) {
        let bytes = try readWholeFile(path)
        switch kind(of: bytes) {
        case .jpeg:
            return try JPEGImage.dimensions(data: bytes, name: path)
        case .png:
            // IHDR is always the first chunk: length (4), "IHDR" (4), width (4, big-endian), height (4).
            guard bytes.count >= 24, bytes[12..<16].elementsEqual(Array("IHDR".utf8)) else {
                throw StarlingIOError(file: path, message: "PNG without an IHDR header chunk")
            }
            func bigEndian(_ at: Int) -> Int { bytes[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
            let width = bigEndian(16), height = bigEndian(20)
            guard width > 0, height > 0 else { throw StarlingIOError(file: path, message: "invalid PNG size \(width)x\(height)") }
            return (width, height)
        case nil:
            throw StarlingIOError(file: path, message: "neither a JPEG nor a PNG file (\(bytes.count) bytes)")
        }
    }

    /// Decodes a JPEG or PNG file to 8-bit RGB (gray is repeated, alpha dropped after compositing onto black).
    public static func readRGB(path: String) throws -> (width: Int, height: Int, pixels: [UInt8]) {
        let bytes = try readWholeFile(path)
        switch kind(of: bytes) {
        case .jpeg:
            return try JPEGImage.decode(data: bytes, name: path)
        case .png:
            let image = try PNGImage.read(path: path, channels: 3)
            return (image.width, image.height, image.pixels)
        case nil:
            throw StarlingIOError(file: path, message: "neither a JPEG nor a PNG file (\(bytes.count) bytes)")
        }
    }
}

extension JPEGImage {
    /// Width and height from the JPEG header.
    public static func dimensions(data: [UInt8], name: String) throws -> (width: Int, height: Int) {
        guard let handle = tjInitDecompress() else {
            throw StarlingIOError(file: name, message: "cannot start JPEG decoder")
        }
        defer { tjDestroy(handle) }
        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        let status = data.withUnsafeBufferPointer {
            tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &width, &height, &subsampling, &colorspace)
        }
        guard status == 0, width > 0, height > 0 else {
            let text = tjGetErrorStr2(handle).map { String(cString: $0) } ?? "unknown error"
            throw StarlingIOError(file: name, message: "invalid JPEG header: \(text)")
        }
        return (Int(width), Int(height))
    }
}
