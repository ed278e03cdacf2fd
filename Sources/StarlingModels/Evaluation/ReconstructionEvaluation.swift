import StarlingCore
import StarlingIO

/// Test-set reconstruction quality of an autoencoder, in the two units people quote: the mean per-pixel binary
/// cross-entropy (Keras's `binary_crossentropy`, the tutorial's loss) and the per-image sum (nats per image).
public struct ReconstructionReport: Codable, Sendable {
    public var model: String
    public var data: String
    public var split: String
    public var images: Int
    public var pixelsPerImage: Int
    public var bcePerPixel: Double
    public var bcePerImage: Double
    public var msePerPixel: Double
}

public enum ReconstructionEvaluation {
    /// Scores the first `limit` images (default all) of `data` in batches.
    public static func evaluate(_ model: any Autoencoder, data: ImageDataset, batchSize: Int = 256, limit: Int? = nil) throws -> ReconstructionReport {
        let n = min(data.count, limit ?? data.count)
        guard n > 0 else { throw DataError(file: data.path, message: "/\(data.split) holds no images to evaluate") }
        let pixels = data.sampleSize
        var bce = 0.0, mse = 0.0
        var start = 0
        while start < n {
            let end = min(n, start + batchSize)
            let batch = try data.batch(indices: Array(start..<end), modelInputShape: model.config.inputShape)
            GradMode.disabled {
                let logits = model.reconstructionLogits(batch.images, training: false)
                bce += Double(logits.binaryCrossEntropy(logits: batch.images).item) * Double((end - start) * pixels)
                mse += Double(logits.sigmoid().meanSquaredError(batch.images).item) * Double((end - start) * pixels)
            }
            start = end
        }
        let total = Double(n * pixels)
        return ReconstructionReport(model: model.config.family, data: data.path, split: data.split, images: n, pixelsPerImage: pixels,
                                    bcePerPixel: bce / total, bcePerImage: bce / Double(n), msePerPixel: mse / total)
    }

    /// A PNG of the first `count` images (top row) over their reconstructions (bottom row).
    public static func writeGrid(_ model: any Autoencoder, data: ImageDataset, count: Int = 10, path: String) throws {
        let n = min(count, data.count)
        let batch = try data.batch(indices: Array(0..<n), modelInputShape: model.config.inputShape)
        let reconstructed = model.reconstruction(batch.images)
        try ImageGrid.write(rows: [batch.images, reconstructed], sampleShape: data.sampleShape, path: path)
    }
}

/// Lays out rows of images (each a tensor of samples with values in [0, 1]) into one PNG with 2-pixel gaps.
public enum ImageGrid {
    public static func write(rows: [Tensor], sampleShape: [Int], path: String, gap: Int = 2) throws {
        let (h, w) = (sampleShape[0], sampleShape[1])
        let channels = sampleShape.count == 3 ? sampleShape[2] : 1
        let columns = rows.map { $0.shape[0] }.max() ?? 0
        let width = columns * (w + gap) + gap, height = rows.count * (h + gap) + gap
        var pixels = [UInt8](repeating: 255, count: width * height * channels)
        for (r, row) in rows.enumerated() {
            let p = row.data
            for c in 0..<row.shape[0] {
                let base = c * h * w * channels
                for y in 0..<h { for x in 0..<w { for ch in 0..<channels {
                    let v = p[base + (y * w + x) * channels + ch]
                    let out = ((r * (h + gap) + gap + y) * width + c * (w + gap) + gap + x) * channels + ch
                    pixels[out] = UInt8(max(0, min(255, (v * 255).rounded())))
                } } }
            }
        }
        try PNGImage.write(path: path, width: width, height: height, channels: channels, pixels: pixels)
    }
}
