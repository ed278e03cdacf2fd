import StarlingCore
import StarlingNN
import StarlingData

/// Runs a model over a dataset split in batches: the encoder's codes (image index, figures) or anything else
/// per batch, without holding more than one batch of images in memory.
public enum DatasetEncoder {
    /// Refuses a dataset whose samples do not hold as many values as the model's input.
    public static func checkFits(_ model: any Model, _ data: ImageDataset) throws {
        guard data.sampleSize == model.config.inputShape.reduce(1, *) else {
            throw ModelError.inputShape(family: model.config.family, expected: model.config.inputShape, got: data.sampleShape, source: data.path)
        }
    }

    /// Calls `body` with each batch of the first `limit` images (default all), in index order, gradients off.
    public static func forEachBatch(_ model: any Model, data: ImageDataset, limit: Int? = nil, batchSize: Int = 256,
                                    _ body: (Batch) throws -> Void) throws {
        precondition(batchSize > 0, "batch size must be positive")
        try checkFits(model, data)
        let n = min(data.count, limit ?? data.count)
        var start = 0
        while start < n {
            let end = min(n, start + batchSize)
            let batch = try data.batch(indices: Array(start..<end), modelInputShape: model.config.inputShape)
            try GradMode.disabled { try body(batch) }
            start = end
        }
    }

    /// The codes of the first `limit` images, row-major [N, dimension], and their labels if the set has them.
    public static func codes(_ model: any Encoding, data: ImageDataset, limit: Int? = nil, batchSize: Int = 256) throws
        -> (values: [Float], dimension: Int, labels: [Int32]?) {
        var values: [Float] = []
        var dimension = 0
        var labels: [Int32]? = data.hasLabels ? [] : nil
        try forEachBatch(model, data: data, limit: limit, batchSize: batchSize) { batch in
            let code = model.code(batch.images)
            dimension = code.shape[1]
            values.append(contentsOf: UnsafeBufferPointer(start: code.data, count: code.count))
            if let l = batch.labels { labels?.append(contentsOf: l) }
        }
        return (values, dimension, labels)
    }
}
