import StarlingCore
import StarlingIO
import StarlingNN
import StarlingDetection
import StarlingData

/// What a training run shows in TensorBoard (`--tensorboard DIR`; rank 0 writes): the progress lines' scalars as they
/// are printed (`train/`), each epoch's figures (`epoch/`), and at each validation a picture of the model's work on
/// the first validation images: originals over reconstructions for autoencoders, drawn detections (ground truth in
/// white) for detectors.
final class TrainingBoard {
    let writer: TensorBoardWriter

    init(directory: String) throws { writer = try TensorBoardWriter(directory: directory) }

    func progress(step: Int, loss: Double, learningRate: Float, imagesPerSecond: Double) throws {
        try writer.scalar("train/loss", loss, step: step)
        try writer.scalar("train/learning_rate", Double(learningRate), step: step)
        try writer.scalar("train/images_per_second", imagesPerSecond, step: step)
    }

    func epoch(_ record: EpochRecord) throws {
        try writer.scalar("epoch/loss", record.loss, step: record.step)
        if let validationLoss = record.validationLoss { try writer.scalar("epoch/val_loss", validationLoss, step: record.step) }
        try writer.scalar("epoch/learning_rate", Double(record.learningRate), step: record.step)
        try writer.scalar("epoch/images_per_second", record.imagesPerSecond, step: record.step)
        try writer.scalar("epoch/data_wait_seconds", record.dataWaitSeconds, step: record.step)
    }

    /// The validation picture of a model that has one (autoencoders, detectors); others get none.
    func validationPictures(model: any Model, validation: any TrainingSource, step: Int) throws {
        if let autoencoder = model as? any Autoencoder {
            let count = min(8, validation.count)
            let batch = try validation.batch(indices: Array(0..<count), epoch: 0, training: false, for: model)
            let pixels = model.config.inputShape.reduce(1, *)
            let side = Int(Double(pixels).squareRoot())
            guard side * side == pixels, count > 0 else { return }
            let reconstruction = GradMode.disabled { autoencoder.reconstruction(batch.images) }
            // Originals in the top row, reconstructions below, one square tile each.
            var gray = [UInt8](repeating: 0, count: 2 * side * count * side)
            let width = count * side
            for (row, tensor) in [batch.images, reconstruction].enumerated() {
                for k in 0..<count {
                    for p in 0..<pixels {
                        let value: Float = max(0, min(1, tensor.data[k * pixels + p]))
                        let y: Int = row * side + p / side
                        let x: Int = k * side + p % side
                        gray[y * width + x] = UInt8((value * 255).rounded())
                    }
                }
            }
            let png = try PNGImage.encode(width: width, height: 2 * side, channels: 1, pixels: gray)
            try writer.image("validation/reconstructions", png: png, width: width, height: 2 * side, channels: 1, step: step)
        } else if let detector = model as? any Detector, let names = model.config.classNames, model.config.inputShape.count == 3 {
            let count = min(2, validation.count)
            guard count > 0 else { return }
            let batch = try validation.batch(indices: Array(0..<count), epoch: 0, training: false, for: model)
            let found = GradMode.disabled { detector.detect(batch.images, decoding: .display) }
            let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
            for k in 0..<count {
                // NCHW intensities in 0...255 to the HWC bytes the drawing takes.
                var rgb = [UInt8](repeating: 0, count: h * w * 3)
                for c in 0..<3 {
                    let plane: Int = (k * 3 + c) * h * w
                    for p in 0..<(h * w) {
                        let value: Float = max(0, min(255, batch.images.data[plane + p]))
                        rgb[3 * p + c] = UInt8(value)
                    }
                }
                let canvas = DetectionDrawing.draw(rgb: rgb, width: w, height: h, detections: found[k], groundTruth: batch.objects?[k] ?? [],
                                                   classNames: names)
                let png = try PNGImage.encode(width: w, height: h, channels: 3, pixels: canvas.pixels)
                try writer.image("validation/detections_\(k)", png: png, width: w, height: h, channels: 3, step: step)
            }
        }
    }
}
