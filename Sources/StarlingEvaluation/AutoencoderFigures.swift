import Foundation
import StarlingCore
import StarlingNN
import StarlingPlots
import StarlingData
import StarlingAutoencoders

/// The pictures `starling eval` draws for an autoencoder beside the reconstruction grid, after F. Chollet,
/// "Building Autoencoders in Keras" (The Keras Blog, 2016):
/// - every model with an encoder: a histogram of the code values over the evaluated images, with their mean
///   (the tutorial compares the sparse autoencoder's mean activation with the plain one's);
/// - VAEs with a 2-D latent: the test set's posterior means coloured by digit, and the decoded manifold, a
///   15 x 15 grid of decodings of latent points on the standard normal's quantiles 0.05 ... 0.95;
/// - with the run's CSV log beside the checkpoint: training and validation loss per epoch.
public enum AutoencoderFigures {
    /// Writes the figures that apply to `model` into `folder` as `<checkpoint name>-<figure>.png` and returns one
    /// line per figure for the user (what it shows, where it is).
    public static func write(_ model: any Autoencoder, data: ImageDataset, limit: Int? = nil, batchSize: Int = 256,
                             checkpoint: String, folder: String) throws -> [String] {
        let url = URL(fileURLWithPath: checkpoint)
        let base = folder + "/" + url.deletingPathExtension().lastPathComponent
        let logPath = url.deletingLastPathComponent().path + "/\(model.config.family)-log.csv"
        var lines: [String] = []
        // A missing or broken log costs the loss curves, not the evaluation.
        var log: TrainingLog?
        if FileManager.default.fileExists(atPath: logPath) {
            do { log = try TrainingLog.read(path: logPath) } catch { lines.append("loss curves skipped: \(error)") }
            if log?.epochs.isEmpty == true { log = nil; lines.append("loss curves skipped: \(logPath) has no epochs yet") }
        } else {
            lines.append("loss curves skipped: no training log \(logPath)")
        }
        if let encoder = model as? any Encoding {
            let codes = try CodeSummary(encoder, data: data, limit: limit, batchSize: batchSize)
            try codes.histogram.writePNG(path: base + "-code-histogram.png")
            lines.append(entry("code values (mean \(String(format: "%.4f", codes.mean)))", base + "-code-histogram.png"))
            if let vae = model as? any VariationalModel, let latent = codes.latent2D {
                try latentScatter(latent, labels: codes.labels, family: model.config.family, split: data.split).writePNG(path: base + "-latent.png")
                lines.append(entry("latent means by digit", base + "-latent.png"))
                try manifold(vae, sampleShape: data.sampleShape).writePNG(path: base + "-manifold.png")
                lines.append(entry("decoded latent manifold", base + "-manifold.png"))
            }
        }
        if let log {
            try log.plot(title: "\(model.config.family): loss per epoch").writePNG(path: base + "-loss.png")
            lines.append(entry("loss curves", base + "-loss.png"))
        }
        return lines
    }

    /// "what: path", the path aligned with the other lines `starling eval` prints.
    private static func entry(_ what: String, _ path: String) -> String {
        (what + ":").padding(toLength: max(38, what.count + 2), withPad: " ", startingAt: 0) + path
    }

    /// The code values of a split, in two streamed passes (range, then counts): the codes of a large encoder
    /// (the denoiser's 1,568 values an image) need not fit in memory. Two-dimensional codes are also kept.
    struct CodeSummary {
        var histogram: Plot
        var mean: Double
        var latent2D: [Float]?
        var labels: [Int32]?

        init(_ encoder: any Encoding, data: ImageDataset, limit: Int?, batchSize: Int, bins: Int = 50) throws {
            var lo = Float.infinity, hi = -Float.infinity, sum = 0.0, count = 0
            var kept: [Float] = [], labels: [Int32] = [], dimension = 0
            try DatasetEncoder.forEachBatch(encoder, data: data, limit: limit, batchSize: batchSize) { batch in
                let code = encoder.code(batch.images)
                dimension = code.shape[1]
                let values = UnsafeBufferPointer(start: code.data, count: code.count)
                for v in values { lo = min(lo, v); hi = max(hi, v); sum += Double(v) }
                count += values.count
                if dimension == 2 { kept.append(contentsOf: values); labels.append(contentsOf: batch.labels ?? []) }
            }
            guard count > 0, lo.isFinite, hi.isFinite else {
                throw DataError(file: data.path, message: "the codes of /\(data.split) are empty or not finite")
            }
            let range = lo < hi ? Double(lo)...Double(hi) : (Double(lo) - 0.5)...(Double(hi) + 0.5)
            var histogram = Histogram(range: range, bins: bins)
            try DatasetEncoder.forEachBatch(encoder, data: data, limit: limit, batchSize: batchSize) { batch in
                let code = encoder.code(batch.images)
                for v in UnsafeBufferPointer(start: code.data, count: code.count) { histogram.add(Double(v)) }
            }
            mean = sum / Double(count)
            let images = count / max(dimension, 1)
            self.histogram = Plot(title: "\(encoder.config.family): \(dimension) code values x \(images) images, mean \(String(format: "%.4f", mean))",
                                  xLabel: "code value", yLabel: "count")
            self.histogram.histogram(histogram, label: "/\(data.split)")
            latent2D = dimension == 2 ? kept : nil
            self.labels = labels.count == images ? labels : nil
        }
    }

    /// Posterior means [N, 2] as points, one colour per label (digit) with a legend, or one colour without labels.
    public static func latentScatter(_ latent: [Float], labels: [Int32]?, family: String, split: String) -> Plot {
        precondition(latent.count % 2 == 0, "2-D latents come in pairs")
        let n = latent.count / 2
        var plot = Plot(title: "\(family): latent means of /\(split) (\(n) images)", xLabel: "z[0]", yLabel: "z[1]")
        let x = (0..<n).map { Double(latent[2 * $0]) }, y = (0..<n).map { Double(latent[2 * $0 + 1]) }
        guard let labels, labels.count == n else {
            plot.scatter(x: x, y: y, label: "/\(split)", size: 2)
            return plot
        }
        for label in Set(labels).sorted() {
            let members = (0..<n).filter { labels[$0] == label }
            plot.scatter(x: members.map { x[$0] }, y: members.map { y[$0] }, label: "\(label)",
                         color: RGB.palette[Int(label) % RGB.palette.count], size: 2)
        }
        return plot
    }

    /// Decodings of z on an n x n grid of standard normal quantiles, evenly spaced in probability from 0.05 to
    /// 0.95 (as the tutorial, which uses scipy's norm.ppf): z[0] grows to the right, z[1] upwards.
    public static func manifold(_ vae: any VariationalModel, sampleShape: [Int], n: Int = 15) -> PixelCanvas {
        let grid = (0..<n).map { normalQuantile(0.05 + 0.9 * Double($0) / Double(max(n - 1, 1))) }
        let z = Tensor(zeros: [n * n, 2])
        for row in 0..<n {
            for column in 0..<n {
                z.data[2 * (row * n + column)] = Float(grid[column])
                z.data[2 * (row * n + column) + 1] = Float(grid[n - 1 - row])
            }
        }
        let images = GradMode.disabled { vae.decoderLogits(z, imageShape: [n * n] + vae.config.inputShape).sigmoid() }
        let size = images.count / (n * n)
        let values = images.toArray()
        let tiles = (0..<n).map { row in
            (0..<n).map { column in
                let start = (row * n + column) * size
                return TileSheet.Tile(pixels: Array(values[start..<(start + size)]))
            }
        }
        var sheet = TileSheet(height: sampleShape[0], width: sampleShape[1], channels: sampleShape.count == 3 ? sampleShape[2] : 1)
        (sheet.scale, sheet.gap) = (1, 0)
        sheet.title = "\(vae.config.family): decoded manifold"
        let edge = String(format: "%.2f", grid[n - 1])
        sheet.footer = "z0 -\(edge) .. \(edge) left to right, z1 \(edge) .. -\(edge) top to bottom"
        return sheet.render(tiles)
    }

    /// The standard normal quantile function (inverse CDF) by bisection on Phi(x) = erfc(-x / sqrt 2) / 2:
    /// slow but plainly correct, to double precision, for the handful of values a figure needs.
    public static func normalQuantile(_ p: Double) -> Double {
        precondition(p > 0 && p < 1, "a quantile needs 0 < p < 1")
        var lo = -40.0, hi = 40.0
        for _ in 0..<200 {
            let mid = (lo + hi) / 2
            if mid == lo || mid == hi { break }
            if 0.5 * erfc(-mid / 2.0.squareRoot()) < p { lo = mid } else { hi = mid }
        }
        return (lo + hi) / 2
    }
}
