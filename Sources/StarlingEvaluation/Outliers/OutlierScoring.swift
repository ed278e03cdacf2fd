import Foundation
import StarlingCore
import StarlingNN
import StarlingPlots
import StarlingData

/// Outlier detection by reconstruction error: an autoencoder trained on normal images reconstructs them well
/// and anything unlike them badly, so the error of each image is its outlier score (the approach of Japkowicz,
/// Myers and Gluck, "A novelty detection approach to classification", IJCAI 1995; for MNIST, train without one
/// digit and score the test set).
///
/// Two errors per image, from the model's reconstruction of the clean image (a VAE's at z = posterior mean):
/// the binary cross-entropy summed over pixels (nats an image, the training loss per image) and the mean
/// squared error of the probabilities (per pixel).
public struct OutlierScores: Sendable {
    /// Per image, in dataset order: BCE summed over the pixels (nats), and MSE per pixel.
    public var bce: [Double] = []
    public var mse: [Double] = []
    public var labels: [Int32]?
    public var count: Int { bce.count }

    /// Scores the first `limit` images (default all) of `data` in batches of `batchSize`.
    public static func compute(_ model: any Autoencoder, data: ImageDataset, limit: Int? = nil, batchSize: Int = 256) throws -> OutlierScores {
        var scores = OutlierScores()
        scores.labels = data.hasLabels ? [] : nil
        try DatasetEncoder.forEachBatch(model, data: data, limit: limit, batchSize: batchSize) { batch in
            let logits = model.reconstructionLogits(batch.images, training: false)
            let (bce, mse) = perImageErrors(logits: logits, images: batch.images)
            if let bad = bce.indices.first(where: { !bce[$0].isFinite || !mse[$0].isFinite }) {
                throw DataError(file: data.path, message: "image \(scores.count + bad) of /\(data.split) gets a non-finite reconstruction error")
            }
            scores.bce += bce
            scores.mse += mse
            if let l = batch.labels { scores.labels?.append(contentsOf: l) }
        }
        return scores
    }

    /// Per image of a batch: the BCE of `images` under sigmoid(`logits`) summed over its pixels, and the mean
    /// squared error of sigmoid(`logits`) against `images`.
    ///
    /// BCE(l, x) = -x log s(l) - (1 - x) log(1 - s(l)) = max(l, 0) - l x + log(1 + exp(-|l|)), the form that
    /// neither overflows nor loses precision for large |l|. Sums in Double: 784 terms an image.
    public static func perImageErrors(logits: Tensor, images: Tensor) -> (bce: [Double], mse: [Double]) {
        precondition(logits.shape == images.shape, "logits \(logits.shape) for images \(images.shape)")
        let n = images.shape[0], pixels = images.count / max(n, 1)
        var bce = [Double](repeating: 0, count: n), mse = [Double](repeating: 0, count: n)
        let l = logits.data, x = images.data
        for i in 0..<n {
            let base = i &* pixels
            var crossEntropy = 0.0, squared = 0.0
            for j in 0..<pixels {
                let logit = Double(l[base &+ j]), target = Double(x[base &+ j])
                crossEntropy += max(logit, 0) - logit * target + log1p(exp(-abs(logit)))
                let difference = 1 / (1 + exp(-logit)) - target
                squared += difference * difference
            }
            bce[i] = crossEntropy
            mse[i] = squared / Double(pixels)
        }
        return (bce, mse)
    }

    /// Indices of the `k` highest scores, highest first (ties: lower index first).
    public static func top(_ k: Int, of scores: [Double]) -> [Int] {
        Array(scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }.prefix(k))
    }

    /// The scores as CSV: `index,label,score,mse` with score = BCE summed over the pixels (label empty without labels).
    public func csv() -> String {
        var text = "index,label,score,mse\n"
        for i in 0..<count {
            text += "\(i),\(labels.map { "\($0[i])" } ?? ""),\(bce[i]),\(mse[i])\n"
        }
        return text
    }

    /// The images at `indices` over their reconstructions, `columns` pairs a row, each captioned with its index,
    /// label and score.
    public func sheet(_ model: any Autoencoder, data: ImageDataset, indices: [Int], columns: Int = 10) throws -> PixelCanvas {
        let shape = data.sampleShape
        var rows: [[TileSheet.Tile]] = []
        for chunk in stride(from: 0, to: indices.count, by: columns).map({ Array(indices[$0..<min(indices.count, $0 + columns)]) }) {
            var originals: [TileSheet.Tile] = [], reconstructions: [TileSheet.Tile] = []
            for i in chunk {
                let batch = try data.batch(indices: [i], modelInputShape: model.config.inputShape)
                let label = labels.map { "label \($0[i])" } ?? ""
                originals.append(TileSheet.Tile(pixels: batch.images.toArray(), caption: ["#\(i)", label]))
                reconstructions.append(TileSheet.Tile(pixels: model.reconstruction(batch.images).toArray(),
                                                      caption: [String(format: "%.1f", bce[i])]))
            }
            rows += [originals, reconstructions]
        }
        var sheet = TileSheet(height: shape[0], width: shape[1], channels: shape.count == 3 ? shape[2] : 1)
        sheet.scale = 3
        sheet.title = "Highest reconstruction errors (BCE nats an image): image over reconstruction"
        return sheet.render(rows)
    }
}
