import StarlingCore
import StarlingIO
import StarlingNN
import StarlingData
import StarlingAutoencoders
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Test-set reconstruction quality of an autoencoder, in the two units people quote: the mean per-pixel binary
/// cross-entropy (Keras's `binary_crossentropy`, the tutorial's loss) and the per-image sum (nats per image).
/// Family-specific figures are optional and absent from the JSON when they do not apply.
public struct ReconstructionReport: Codable, Sendable {
    public var model: String
    public var data: String
    public var split: String
    public var images: Int
    public var pixelsPerImage: Int
    /// Reconstruction of the clean image (for a VAE: decoded at z = posterior mean).
    public var bcePerPixel: Double
    public var bcePerImage: Double
    public var msePerPixel: Double

    /// Models with an encoder (`Encoding`): the code's width and its mean value over images and units
    /// (for a ReLU code, how active it is: the sparse autoencoder's penalty pushes it down).
    public var codeSize: Int? = nil
    public var meanCodeActivation: Double? = nil

    /// VAEs, in nats per image averaged over the images. The KL term, KL(q(z|x) || N(0, I)) summed over latents.
    public var klPerImage: Double? = nil
    /// ELBO = -(bcePerImage + klPerImage): the reconstruction term evaluated at z = mean (deterministic).
    public var elboAtMean: Double? = nil
    /// The one-sample Monte Carlo estimate of the ELBO, -(bcePerImageOneSample + klPerImage), with
    /// z = mean + exp(logvar / 2) * eps and eps from the fixed evaluation seed: the estimator training minimises.
    public var elboOneSample: Double? = nil
    public var bcePerImageOneSample: Double? = nil

    /// The denoiser: its noise factor, and on the test images corrupted with noise from the fixed evaluation seed,
    /// PSNR in dB (peak 1, from the mean squared error over all pixels of the set) of the noisy and of the
    /// denoised images against the clean ones, and the BCE of the denoised images against the clean ones.
    public var noiseFactor: Double? = nil
    public var psnrNoisy: Double? = nil
    public var psnrDenoised: Double? = nil
    public var denoisedBcePerPixel: Double? = nil
    public var denoisedBcePerImage: Double? = nil
}

public enum ReconstructionEvaluation {
    /// Running sums over the evaluated images, each weighted by its number of images.
    private struct Sums {
        var bce = 0.0, mse = 0.0, code = 0.0, codeSize = 0
        var kl = 0.0, sampledBCE = 0.0
        var noisyMSE = 0.0, denoisedMSE = 0.0, denoisedBCE = 0.0
    }

    /// Scores the first `limit` images (default all) of `data` in batches.
    public static func evaluate(_ model: any Autoencoder, data: ImageDataset, batchSize: Int = 256, limit: Int? = nil) throws -> ReconstructionReport {
        let n = min(data.count, limit ?? data.count)
        guard n > 0 else { throw DataError(file: data.path, message: "/\(data.split) holds no images to evaluate") }
        let pixels = data.sampleSize
        var sums = Sums()
        var start = 0
        while start < n {
            let end = min(n, start + batchSize)
            let batch = try data.batch(indices: Array(start..<end), modelInputShape: model.config.inputShape)
            GradMode.disabled { accumulate(model, batch, into: &sums) }
            start = end
        }
        let total = Double(n * pixels), count = Double(n)
        var report = ReconstructionReport(model: model.config.family, data: data.path, split: data.split, images: n, pixelsPerImage: pixels,
                                          bcePerPixel: sums.bce / total, bcePerImage: sums.bce / count, msePerPixel: sums.mse / total)
        if model is any Encoding {
            report.codeSize = sums.codeSize
            report.meanCodeActivation = sums.code / (count * Double(max(sums.codeSize, 1)))
        }
        if model is any VariationalModel {
            let kl = sums.kl / count, sampled = sums.sampledBCE / count
            report.klPerImage = kl
            report.elboAtMean = -(report.bcePerImage + kl)
            report.bcePerImageOneSample = sampled
            report.elboOneSample = -(sampled + kl)
        }
        if let denoiser = model as? DenoisingAutoencoder {
            report.noiseFactor = Double(denoiser.noiseFactor)
            report.psnrNoisy = psnr(meanSquaredError: sums.noisyMSE / total)
            report.psnrDenoised = psnr(meanSquaredError: sums.denoisedMSE / total)
            report.denoisedBcePerPixel = sums.denoisedBCE / total
            report.denoisedBcePerImage = sums.denoisedBCE / count
        }
        return report
    }

    /// Adds one batch's figures (per-pixel means times the batch's pixels, per-image values times its images).
    private static func accumulate(_ model: any Autoencoder, _ batch: Batch, into sums: inout Sums) {
        let images = batch.images
        let pixels = Double(images.count)
        let logits = model.reconstructionLogits(images, training: false)
        sums.bce += Double(logits.binaryCrossEntropy(logits: images).item) * pixels
        sums.mse += Double(logits.sigmoid().meanSquaredError(images).item) * pixels
        if let encoder = model as? any Encoding {
            let code = encoder.code(images)
            sums.codeSize = code.shape[1]
            sums.code += Double(code.sum().item)
        }
        if let vae = model as? any VariationalModel {
            let (mean, logVariance) = vae.posterior(images)
            sums.kl += Double(Tensor.klDivergenceStandardNormal(mean: mean, logVariance: logVariance, reduction: .sum).item)
            let noise = vae.latentNoise(batch, dimensions: mean.shape[1], training: false)
            let z = vae.sampleLatent(mean: mean, logVariance: logVariance, noise: noise)
            sums.sampledBCE += Double(vae.decoderLogits(z, imageShape: images.shape).binaryCrossEntropy(logits: images).item) * pixels
        }
        if let denoiser = model as? DenoisingAutoencoder {
            let noisy = denoiser.corrupted(batch, training: false)
            let denoised = denoiser.reconstructionLogits(noisy, training: false)
            sums.denoisedBCE += Double(denoised.binaryCrossEntropy(logits: images).item) * pixels
            sums.denoisedMSE += Double(denoised.sigmoid().meanSquaredError(images).item) * pixels
            sums.noisyMSE += Double(noisy.meanSquaredError(images).item) * pixels
        }
    }

    /// Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE).
    static func psnr(meanSquaredError mse: Double) -> Double { 10 * log10(1 / mse) }

    /// A PNG of the first `count` images (top row) over their reconstructions (bottom row); for the denoiser,
    /// clean images over their noisy copies over the denoised ones.
    public static func writeGrid(_ model: any Autoencoder, data: ImageDataset, count: Int = 10, path: String) throws {
        let n = min(count, data.count)
        let batch = try data.batch(indices: Array(0..<n), modelInputShape: model.config.inputShape)
        if let denoiser = model as? DenoisingAutoencoder {
            let noisy = denoiser.corrupted(batch, training: false)
            try ImageGrid.write(rows: [batch.images, noisy, model.reconstruction(noisy)], sampleShape: data.sampleShape, path: path)
            return
        }
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
