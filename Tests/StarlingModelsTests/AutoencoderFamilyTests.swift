import Foundation
import Testing
import StarlingCore
import StarlingDistributed
@testable import StarlingModels
@testable import StarlingAutoencoders

/// The autoencoder family of the Keras tutorial: shapes and initialisation, each loss against a plain Double
/// computation on a tiny configuration, whole-model finite differences, the VAE's terms against hand-computed
/// values, the denoiser's noise keys, and each family trained, checkpointed and evaluated through the binary.
@Suite struct AutoencoderFamilyTests {
    /// Tiny configurations (few parameters) of every new family.
    static let tiny: [ModelConfig] = [
        ModelConfig(family: "sparse-ae", inputShape: [6], options: ["code_size": 3, "l1_activity": 0.01]),
        ModelConfig(family: "deep-ae", inputShape: [6], options: ["units_1": 5, "units_2": 4, "code_size": 3]),
        ModelConfig(family: "denoising-ae", inputShape: [1, 4, 4], options: ["filters": 2, "noise_factor": 0.5]),
        ModelConfig(family: "seq2seq-ae", inputShape: [3, 4], options: ["code_size": 3, "decoder_units": 2]),
        ModelConfig(family: "vae", inputShape: [6], options: ["intermediate_dim": 4, "latent_dim": 2]),
        ModelConfig(family: "conv-vae", inputShape: [1, 8, 8], options: ["filters_1": 2, "filters_2": 3, "hidden": 3, "latent_dim": 2]),
    ]

    /// Two images of the config's shape with pixel values in [0, 1], as a training batch of epoch 2, seed 13.
    static func batch(_ config: ModelConfig, seed: UInt64 = 3) -> Batch {
        let shape = [2] + config.inputShape
        var rng = RandomGenerator(seed: seed)
        let values = (0..<Tensor.elementCount(shape)).map { _ in rng.uniform() }
        return Batch(images: Tensor(shape: shape, values: values), indices: [5, 9], epoch: 2, seed: 13)
    }

    // MARK: - Shapes, names, initialisation

    @Test func defaultModelsHaveKerasNamesShapesAndInitialisation() throws {
        func shapes(_ family: String) throws -> [String: [Int]] {
            let model = try ModelRegistry.build(try ModelRegistry.defaultConfig(family: family), seed: 1)
            return Dictionary(uniqueKeysWithValues: model.parameters.parameters.map { ($0.name, $0.shape) })
        }
        #expect(try ModelRegistry.defaultConfig(family: "sparse-ae").options == ["code_size": 32, "l1_activity": 1e-4])
        #expect(try shapes("sparse-ae") == ["encoder/kernel": [784, 32], "encoder/bias": [32], "decoder/kernel": [32, 784], "decoder/bias": [784]])
        #expect(try shapes("deep-ae") == ["encoder_1/kernel": [784, 128], "encoder_1/bias": [128], "encoder_2/kernel": [128, 64], "encoder_2/bias": [64],
                                          "encoder_3/kernel": [64, 32], "encoder_3/bias": [32], "decoder_1/kernel": [32, 64], "decoder_1/bias": [64],
                                          "decoder_2/kernel": [64, 128], "decoder_2/bias": [128], "decoder_3/kernel": [128, 784], "decoder_3/bias": [784]])
        #expect(try shapes("denoising-ae") == ["conv2d_1/kernel": [32, 1, 3, 3], "conv2d_1/bias": [32], "conv2d_2/kernel": [32, 32, 3, 3], "conv2d_2/bias": [32],
                                               "conv2d_3/kernel": [32, 32, 3, 3], "conv2d_3/bias": [32], "conv2d_4/kernel": [32, 32, 3, 3], "conv2d_4/bias": [32],
                                               "conv2d_5/kernel": [1, 32, 3, 3], "conv2d_5/bias": [1]])
        #expect(try shapes("seq2seq-ae") == ["encoder_lstm/kernel": [28, 256], "encoder_lstm/recurrent_kernel": [64, 256], "encoder_lstm/bias": [256],
                                             "decoder_lstm/kernel": [64, 256], "decoder_lstm/recurrent_kernel": [64, 256], "decoder_lstm/bias": [256],
                                             "output_dense/kernel": [64, 28], "output_dense/bias": [28]])
        #expect(try shapes("vae") == ["encoder_hidden/kernel": [784, 64], "encoder_hidden/bias": [64], "z_mean/kernel": [64, 2], "z_mean/bias": [2],
                                      "z_log_var/kernel": [64, 2], "z_log_var/bias": [2], "decoder_hidden/kernel": [2, 64], "decoder_hidden/bias": [64],
                                      "decoder_output/kernel": [64, 784], "decoder_output/bias": [784]])
        #expect(try shapes("conv-vae") == ["conv2d_1/kernel": [32, 1, 3, 3], "conv2d_1/bias": [32], "conv2d_2/kernel": [64, 32, 3, 3], "conv2d_2/bias": [64],
                                           "encoder_hidden/kernel": [3136, 16], "encoder_hidden/bias": [16], "z_mean/kernel": [16, 2], "z_mean/bias": [2],
                                           "z_log_var/kernel": [16, 2], "z_log_var/bias": [2], "decoder_hidden/kernel": [2, 3136], "decoder_hidden/bias": [3136],
                                           "conv2d_transpose_1/kernel": [64, 64, 3, 3], "conv2d_transpose_1/bias": [64],
                                           "conv2d_transpose_2/kernel": [64, 32, 3, 3], "conv2d_transpose_2/bias": [32],
                                           "conv2d_transpose_3/kernel": [32, 1, 3, 3], "conv2d_transpose_3/bias": [1]])
        // Glorot-uniform kernels fill their whole range; biases start at zero.
        let deep = try ModelRegistry.build(DeepAutoencoder.defaultConfig(), seed: 1)
        let limit = (6.0 / Double(128 + 64)).squareRoot()
        let kernel = parameter(deep, "encoder_2/kernel").map(abs)
        #expect(kernel.max()! <= limit && kernel.max()! > 0.95 * limit)
        #expect(parameter(deep, "encoder_2/bias").allSatisfy { $0 == 0 })
        // LSTM: orthogonal recurrent kernel (U U^T = I for the [64, 256] matrix), forget-gate bias 1, the rest 0.
        let seq = try ModelRegistry.build(Seq2SeqAutoencoder.defaultConfig(), seed: 1)
        let u = parameter(seq, "decoder_lstm/recurrent_kernel")
        var worst = 0.0
        for a in 0..<64 { for b in 0..<64 {
            let dot = (0..<256).reduce(0.0) { $0 + u[a * 256 + $1] * u[b * 256 + $1] }
            worst = max(worst, abs(dot - (a == b ? 1 : 0)))
        } }
        #expect(worst < 1e-5)
        let bias = parameter(seq, "encoder_lstm/bias")
        #expect(bias[64..<128].allSatisfy { $0 == 1 } && bias[0..<64].allSatisfy { $0 == 0 } && bias[128...].allSatisfy { $0 == 0 })
        // Every family encodes to [N, D].
        for family in ModelRegistry.names(trainingOn: .images) {
            let model = try ModelRegistry.build(try ModelRegistry.defaultConfig(family: family), seed: 1)
            let images = Tensor(zeros: [3] + model.config.inputShape)
            let code = try #require(model as? any Encoding, "\(family) has no code").code(images)
            let expected = ["fc-ae": 32, "sparse-ae": 32, "deep-ae": 32, "conv-ae": 128, "denoising-ae": 1568, "seq2seq-ae": 64, "vae": 2, "conv-vae": 2]
            #expect(code.shape == [3, expected[family] ?? -1], "\(family)")
            #expect((model as? any Autoencoder)?.reconstruction(images).shape == images.shape, "\(family)")
        }
    }

    @Test func badConfigurationsAreErrors() {
        let bad = [ModelConfig(family: "denoising-ae", inputShape: [1, 27, 28]), ModelConfig(family: "conv-vae", inputShape: [3, 28, 28]),
                   ModelConfig(family: "seq2seq-ae", inputShape: [784]), ModelConfig(family: "vae", inputShape: [784], options: ["latent_dim": 0])]
        for config in bad {
            #expect(throws: ModelError.self, "\(config)") { try ModelRegistry.build(config, seed: 0) }
        }
    }

    // MARK: - Losses against independent computations

    @Test func deepAutoencoderLoss() throws {
        let config = Self.tiny[1], batch = Self.batch(config)
        let model = try ModelRegistry.build(config, seed: 4)
        let x = batch.images.toArray().map(Double.init)
        var h = x
        for name in ["encoder_1", "encoder_2", "encoder_3", "decoder_1", "decoder_2"] {
            h = Reference.relu(Reference.dense(h, rows: 2, parameter(model, name + "/kernel"), parameter(model, name + "/bias")))
        }
        let logits = Reference.dense(h, rows: 2, parameter(model, "decoder_3/kernel"), parameter(model, "decoder_3/bias"))
        let expected = Reference.bceSum(logits: logits, targets: x) / 12
        let loss = Double(model.loss(batch, training: true).item)
        #expect(abs(loss - expected) < 1e-5 * max(1, expected), "\(loss) vs \(expected)")
    }

    @Test func denoisingAutoencoderLoss() throws {
        let config = Self.tiny[2], batch = Self.batch(config)
        let model = try #require(try ModelRegistry.build(config, seed: 4) as? DenoisingAutoencoder)
        // The noise as documented: 0.5 * N(0, 1) from the stream (seed 13, epoch 2, dataset index), clipped to [0, 1].
        let clean = batch.images.toArray().map(Double.init)
        var noisy = clean
        for (r, index) in [5, 9].enumerated() {
            var rng = RandomGenerator(seed: 13, stream: DenoisingAutoencoder.noisePurpose, 2, UInt64(index))
            for i in 0..<16 { noisy[r * 16 + i] = min(max(clean[r * 16 + i] + 0.5 * Double(rng.normal()), 0), 1) }
        }
        func conv(_ x: [Double], _ c: Int, _ side: Int, _ name: String) -> [Double] {
            Reference.conv3x3(x, n: 2, channels: c, height: side, width: side, kernel: parameter(model, name + "/kernel"), bias: parameter(model, name + "/bias")).y
        }
        var h = Reference.maxPool2(Reference.relu(conv(noisy, 1, 4, "conv2d_1")), planes: 4, height: 4, width: 4)   // [2, 2, 2, 2]
        h = Reference.maxPool2(Reference.relu(conv(h, 2, 2, "conv2d_2")), planes: 4, height: 2, width: 2)            // [2, 2, 1, 1]
        h = Reference.upsample2(Reference.relu(conv(h, 2, 1, "conv2d_3")), planes: 4, height: 1, width: 1)           // [2, 2, 2, 2]
        h = Reference.upsample2(Reference.relu(conv(h, 2, 2, "conv2d_4")), planes: 4, height: 2, width: 2)           // [2, 2, 4, 4]
        let logits = conv(h, 2, 4, "conv2d_5")
        let expected = Reference.bceSum(logits: logits, targets: clean) / 32
        let loss = Double(model.loss(batch, training: true).item)
        #expect(abs(loss - expected) < 1e-5 * max(1, expected), "\(loss) vs \(expected)")
    }

    @Test func seq2seqAutoencoderLoss() throws {
        let config = Self.tiny[3], batch = Self.batch(config)
        let model = try ModelRegistry.build(config, seed: 4)
        let x = batch.images.toArray().map(Double.init)   // 2 images of 3 rows of 4 pixels
        func lstm(_ input: [Double], features: Int, _ name: String) -> [Double] {
            Reference.lstm(input, batch: 2, steps: 3, features: features, kernel: parameter(model, name + "/kernel"),
                           recurrent: parameter(model, name + "/recurrent_kernel"), bias: parameter(model, name + "/bias"))
        }
        let encoded = lstm(x, features: 4, "encoder_lstm")                         // [2, 3, 3]
        // Typed closures: inferred, these two lines took the type checker 3-11 s.
        let code: [Double] = (0..<2).flatMap { (s: Int) -> [Double] in (0..<3).map { (j: Int) -> Double in encoded[(s * 3 + 2) * 3 + j] } }
        let repeated: [Double] = (0..<2).flatMap { (s: Int) -> [Double] in
            (0..<3).flatMap { (_: Int) -> ArraySlice<Double> in code[(s * 3)..<(s * 3 + 3)] }
        }
        let decoded = lstm(repeated, features: 3, "decoder_lstm")                  // [2, 3, 2]
        let logits = Reference.dense(decoded, rows: 6, parameter(model, "output_dense/kernel"), parameter(model, "output_dense/bias"))
        let expected = Reference.bceSum(logits: logits, targets: x) / 24
        let loss = Double(model.loss(batch, training: true).item)
        #expect(abs(loss - expected) < 1e-5 * max(1, expected), "\(loss) vs \(expected)")
    }

    /// eps of sample `index` in the training stream of `batch` (seed 13, epoch 2).
    static func latentNoise(_ index: Int, dimensions: Int) -> [Double] {
        var rng = RandomGenerator(seed: 13, stream: VariationalAutoencoder.latentPurpose, 2, UInt64(index))
        return (0..<dimensions).map { _ in Double(rng.normal()) }
    }

    @Test func vaeLoss() throws {
        let config = Self.tiny[4], batch = Self.batch(config)
        let model = try ModelRegistry.build(config, seed: 4)
        let x = batch.images.toArray().map(Double.init)
        let h = Reference.relu(Reference.dense(x, rows: 2, parameter(model, "encoder_hidden/kernel"), parameter(model, "encoder_hidden/bias")))
        let mean = Reference.dense(h, rows: 2, parameter(model, "z_mean/kernel"), parameter(model, "z_mean/bias"))
        let logVariance = Reference.dense(h, rows: 2, parameter(model, "z_log_var/kernel"), parameter(model, "z_log_var/bias"))
        let eps = Self.latentNoise(5, dimensions: 2) + Self.latentNoise(9, dimensions: 2)
        let z = (0..<4).map { mean[$0] + exp(logVariance[$0] / 2) * eps[$0] }
        let d = Reference.relu(Reference.dense(z, rows: 2, parameter(model, "decoder_hidden/kernel"), parameter(model, "decoder_hidden/bias")))
        let logits = Reference.dense(d, rows: 2, parameter(model, "decoder_output/kernel"), parameter(model, "decoder_output/bias"))
        let expected = (Reference.bceSum(logits: logits, targets: x) + Reference.klSum(mean: mean, logVariance: logVariance)) / 2
        let loss = Double(model.loss(batch, training: true).item)
        #expect(abs(loss - expected) < 1e-5 * max(1, expected), "\(loss) vs \(expected)")
    }

    @Test func convVAELoss() throws {
        let config = Self.tiny[5], batch = Self.batch(config)
        let model = try ModelRegistry.build(config, seed: 4)
        let x = batch.images.toArray().map(Double.init)
        func conv(_ x: [Double], _ c: Int, _ side: Int, _ name: String) -> [Double] {
            Reference.conv3x3(x, n: 2, channels: c, height: side, width: side, kernel: parameter(model, name + "/kernel"),
                              bias: parameter(model, name + "/bias"), stride: 2).y
        }
        func transposed(_ x: [Double], _ c: Int, _ side: Int, _ name: String, stride: Int) -> [Double] {
            Reference.convTransposed3x3(x, n: 2, channels: c, height: side, width: side, kernel: parameter(model, name + "/kernel"),
                                        bias: parameter(model, name + "/bias"), stride: stride)
        }
        let features = Reference.relu(conv(Reference.relu(conv(x, 1, 8, "conv2d_1")), 2, 4, "conv2d_2"))   // [2, 3, 2, 2]
        let h = Reference.relu(Reference.dense(features, rows: 2, parameter(model, "encoder_hidden/kernel"), parameter(model, "encoder_hidden/bias")))
        let mean = Reference.dense(h, rows: 2, parameter(model, "z_mean/kernel"), parameter(model, "z_mean/bias"))
        let logVariance = Reference.dense(h, rows: 2, parameter(model, "z_log_var/kernel"), parameter(model, "z_log_var/bias"))
        let eps = Self.latentNoise(5, dimensions: 2) + Self.latentNoise(9, dimensions: 2)
        let z = (0..<4).map { mean[$0] + exp(logVariance[$0] / 2) * eps[$0] }
        var d = Reference.relu(Reference.dense(z, rows: 2, parameter(model, "decoder_hidden/kernel"), parameter(model, "decoder_hidden/bias")))
        d = Reference.relu(transposed(d, 3, 2, "conv2d_transpose_1", stride: 2))   // [2, 3, 4, 4]
        d = Reference.relu(transposed(d, 3, 4, "conv2d_transpose_2", stride: 2))   // [2, 2, 8, 8]
        let logits = transposed(d, 2, 8, "conv2d_transpose_3", stride: 1)           // [2, 1, 8, 8]
        let expected = (Reference.bceSum(logits: logits, targets: x) + Reference.klSum(mean: mean, logVariance: logVariance)) / 2
        let loss = Double(model.loss(batch, training: true).item)
        #expect(abs(loss - expected) < 1e-5 * max(1, expected), "\(loss) vs \(expected)")
    }

    // MARK: - Gradients

    /// Central differences of the training loss with respect to every parameter of each tiny model.
    @Test(arguments: tiny.map(\.family))
    func wholeModelGradientMatchesFiniteDifferences(family: String) throws {
        let config = try #require(Self.tiny.first { $0.family == family })
        let model = try ModelRegistry.build(config, seed: 6)
        let batch = Self.batch(config)
        // Zero biases over inputs a ReLU zeroed put pre-activations exactly on the ReLU's kink, where central
        // differences see half a slope: move every weight off its initial value first.
        var rng = RandomGenerator(seed: 8)
        let w = model.parameters.values.pointer
        for i in 0..<model.parameters.count { w[i] += rng.uniform(-0.2, 0.2) }
        model.parameters.zeroGradients()
        model.loss(batch, training: true).backward()
        let analytic = model.parameters.gradients.toArray()
        // A step narrow enough not to cross a ReLU or max-pooling kink, except for the VAEs: their losses are sums over
        // pixels, 10-50x larger, so Float rounding of the loss needs the wider step.
        let eps: Float = family.hasSuffix("vae") ? 3e-3 : 1e-3
        var failures: [String] = []
        for i in 0..<model.parameters.count {
            let saved = w[i]
            w[i] = saved + eps
            let plus = Double(GradMode.disabled { model.loss(batch, training: true).item })
            w[i] = saved - eps
            let minus = Double(GradMode.disabled { model.loss(batch, training: true).item })
            w[i] = saved
            let numeric = Float((plus - minus) / Double(2 * eps))
            if abs(numeric - analytic[i]) > 3e-3 + 2e-2 * abs(numeric) { failures.append("[\(i)] \(analytic[i]) vs \(numeric)") }
        }
        #expect(failures.isEmpty, "\(family): \(failures.count) of \(model.parameters.count) gradients differ, e.g. \(failures.prefix(3))")
    }

    // MARK: - The VAE's terms by hand

    /// A VAE whose kernels are all zero: the posterior is its biases, the decoder's logits its output bias.
    static func constantVAE(pixels: Int, outputBias: [Float]) throws -> VariationalAutoencoder {
        let config = ModelConfig(family: "vae", inputShape: [pixels], options: ["intermediate_dim": 3, "latent_dim": 2])
        let model = try #require(try ModelRegistry.build(config, seed: 1) as? VariationalAutoencoder)
        model.parameters.values.zero()
        func set(_ name: String, _ values: [Float]) { for (i, v) in values.enumerated() { model.parameters[name]!.value.data[i] = v } }
        set("z_mean/bias", [1, 0])
        set("z_log_var/bias", [0, Float(log(2.0))])
        set("decoder_output/bias", outputBias)
        return model
    }

    @Test func vaeTermsAgainstHandComputedValues() throws {
        // Posterior N((1, 0), diag(1, 2)): KL = -0.5 (1 + 0 - 1 - 1) + -0.5 (1 + ln 2 - 0 - 2) = 0.5 + 0.5 (1 - ln 2)
        //   = 0.5 + 0.1534264 = 0.6534264 nats, whatever z is drawn.
        // Decoder logits (2, -1) on image (1, 0): BCE = log(1 + e^-2) + log(1 + e^-1) = 0.1269280 + 0.3132617 = 0.4401897.
        let model = try Self.constantVAE(pixels: 2, outputBias: [2, -1])
        let images = Tensor(shape: [3, 2], values: [1, 0, 1, 0, 1, 0])
        let terms = model.negativeELBO(Batch(images: images, indices: [0, 1, 2], epoch: 0, seed: 1), training: true)
        #expect(abs(terms.kl.item - 0.6534264) < 1e-6)
        #expect(abs(terms.reconstruction.item - 0.4401897) < 1e-6)
        #expect(abs(terms.total.item - 1.0936161) < 1e-6)
        // Reparameterisation: z = mean + exp(logvar / 2) eps; eps (0.5, -1) gives (1 + 0.5, 0 - sqrt 2) = (1.5, -1.4142136).
        let z = model.sampleLatent(mean: Tensor(shape: [1, 2], values: [1, 0]), logVariance: Tensor(shape: [1, 2], values: [0, Float(log(2.0))]),
                                   noise: Tensor(shape: [1, 2], values: [0.5, -1]))
        #expect(abs(z[flat: 0] - 1.5) < 1e-6 && abs(z[flat: 1] + 1.4142136) < 1e-6)
    }

    /// `starling eval`'s VAE figures on a VAE whose every reconstruction is p = 1/2: 784 ln 2 = 543.42730 nats per
    /// image, KL 0.6534264 (above), so ELBO = -(543.42730 + 0.65343) = -544.08073 at the mean and with one sample.
    @Test func vaeEvaluationAgainstHandComputedValues() throws {
        let model = try Self.constantVAE(pixels: 784, outputBias: [Float](repeating: 0, count: 784))
        let data = try ImageDataset(path: try Fixture.sampleHDF5(), split: "test")
        let report = try ReconstructionEvaluation.evaluate(model, data: data, batchSize: 64, limit: 100)
        #expect(abs(report.bcePerImage - 543.42730) < 1e-3 && abs(report.bcePerPixel - 0.6931472) < 2e-6)
        #expect(abs((report.klPerImage ?? 0) - 0.6534264) < 1e-5)
        #expect(abs((report.elboAtMean ?? 0) + 544.08073) < 1e-3)
        #expect(abs((report.elboOneSample ?? 0) + 544.08073) < 1e-3 && abs((report.bcePerImageOneSample ?? 0) - 543.42730) < 1e-3)
        #expect(report.psnrNoisy == nil && report.codeSize == 2)
    }

    // MARK: - Noise keys

    @Test func denoisingNoiseIsKeyedBySeedEpochAndIndex() throws {
        var rng = RandomGenerator(seed: 1)
        let model = try DenoisingAutoencoder(config: DenoisingAutoencoder.defaultConfig(), rng: &rng)
        func noise(_ indices: [Int], epoch: Int, seed: UInt64 = 7, training: Bool = true) -> [Float] {
            let images = Tensor(shape: [indices.count, 1, 28, 28], values: [Float](repeating: 0.5, count: indices.count * 784))
            return model.corrupted(Batch(images: images, indices: indices, epoch: epoch, seed: seed), training: training).toArray().map { $0 - 0.5 }
        }
        let a = noise([3, 8], epoch: 0)
        #expect(a == noise([3, 8], epoch: 0))                                     // deterministic
        #expect(Array(a[784...]) == noise([8], epoch: 0))                         // sample 8's noise, wherever it sits in a batch
        #expect(noise([3, 8], epoch: 1) != a && noise([3, 8], epoch: 0, seed: 8) != a)   // fresh every epoch; seeded
        #expect(Array(a[..<784]) != Array(a[784...]))                           // each sample its own
        let evaluation = noise([3, 8], epoch: 0, training: false)
        #expect(evaluation == noise([3, 8], epoch: 5, seed: 99, training: false) && evaluation != a)   // fixed outside training
        // 0.5 N(0, 1) around 0.5, clipped to [0, 1]: mean ~0; |noise| < 0.25 where |N| < 0.5, P = 0.3829;
        // clipped to exactly 0.5 where |N| > 1, P = 0.3173; never beyond.
        let meanNoise = a.reduce(0, +) / Float(a.count)
        let within = Float(a.filter { abs($0) < 0.25 }.count) / Float(a.count)
        let clipped = Float(a.filter { abs($0) == 0.5 }.count) / Float(a.count)
        #expect(abs(meanNoise) < 0.04 && abs(within - 0.3829) < 0.04 && abs(clipped - 0.3173) < 0.04 && a.allSatisfy { abs($0) <= 0.5 },
                "mean \(meanNoise), within 0.25: \(within), clipped \(clipped)")
    }

    @Test func vaeLatentNoiseIsKeyedLikeTheDenoisersAndSeparateFromIt() throws {
        let model = try #require(try ModelRegistry.build(VariationalAutoencoder.defaultConfig(), seed: 1) as? VariationalAutoencoder)
        let images = Tensor(zeros: [2, 784])
        let a = model.latentNoise(Batch(images: images, indices: [4, 6], epoch: 1, seed: 2), dimensions: 2, training: true).toArray()
        #expect(a == model.latentNoise(Batch(images: images, indices: [4, 6], epoch: 1, seed: 2), dimensions: 2, training: true).toArray())
        #expect(a != model.latentNoise(Batch(images: images, indices: [4, 6], epoch: 2, seed: 2), dimensions: 2, training: true).toArray())
        var rng = RandomGenerator(seed: 2, stream: DenoisingAutoencoder.noisePurpose, 1, 4)
        #expect(Array(a[0..<2]) != [rng.normal(), rng.normal()])
    }
}

/// Each family on the MNIST sample: a few training steps with falling loss, a checkpoint round trip, and
/// `starling train` + `starling eval` through the binary with the family's default configuration.
@Suite struct AutoencoderFamilyTrainingTests {
    /// MNIST-shaped configurations, narrowed where the default is slow in a debug build.
    static let small: [ModelConfig] = [
        ModelConfig(family: "sparse-ae", inputShape: [784], options: ["code_size": 32, "l1_activity": 1e-4]),
        DeepAutoencoder.defaultConfig(),
        ModelConfig(family: "denoising-ae", inputShape: [1, 28, 28], options: ["filters": 8, "noise_factor": 0.5]),
        ModelConfig(family: "seq2seq-ae", inputShape: [28, 28], options: ["code_size": 16, "decoder_units": 16]),
        VariationalAutoencoder.defaultConfig(),
        ModelConfig(family: "conv-vae", inputShape: [1, 28, 28], options: ["filters_1": 8, "filters_2": 16, "hidden": 16, "latent_dim": 2]),
    ]

    @Test(arguments: small.map(\.family))
    func trainsWithFallingLossAndRoundTripsThroughACheckpoint(family: String) throws {
        let config = try #require(Self.small.first { $0.family == family })
        let dir = Fixture.temporaryDirectory("family-\(family)")
        let data = try Fixture.sampleHDF5()
        var o = TrainingOptions()
        (o.epochs, o.batchSize, o.stepsPerEpoch, o.learningRate, o.seed) = (3, 32, 4, 3e-3, 5)
        (o.outputDirectory, o.progress, o.writeOutputs) = (dir, false, false)
        let model = try ModelRegistry.build(config, seed: 5)
        let adam = Adam(parameterCount: model.parameters.count, learningRate: o.learningRate)
        let trainer = try Trainer(model: model, optimizer: adam, train: try ImageDataset(path: data, split: "train"), validation: nil,
                                  options: o, world: try Communicator(), log: { _ in })
        let history = try trainer.run()
        #expect(history.count == 3 && history[2].loss < history[0].loss, "\(family): \(history.map(\.loss))")

        let path = dir + "/checkpoint.h5"
        try Checkpoint.save(to: path, model: model, optimizer: adam, state: trainer.state)
        let loaded = try Checkpoint.load(from: path)
        #expect(loaded.model.config == config && loaded.state == trainer.state)
        #expect(loaded.model.parameters.parameters.map(\.name) == model.parameters.parameters.map(\.name))
        #expect(loaded.model.parameters.values.toArray() == model.parameters.values.toArray())
        for (name, storage) in adam.state { #expect(loaded.optimizerState[name] == storage.toArray()) }
        let batch = try ImageDataset(path: data, split: "test").batch(indices: Array(0..<8), modelInputShape: config.inputShape)
        let before = GradMode.disabled { model.loss(batch, training: false).item }
        #expect(GradMode.disabled { loaded.model.loss(batch, training: false).item } == before)
    }

    @Test(arguments: ModelRegistry.names(trainingOn: .images).filter { !["fc-ae", "conv-ae"].contains($0) })
    func trainAndEvalThroughTheBinary(family: String) throws {
        let dir = Fixture.temporaryDirectory("family-cli-\(family)")
        let data = try Fixture.sampleHDF5()
        let train = try starling("train", "--model", family, "--data", data, "--epochs", "1", "--steps-per-epoch", "2",
                                 "--batch-size", "16", "--val-limit", "32", "--out", dir)
        #expect(train.status == 0, "\(train.error)")
        let eval = try starling("eval", "--checkpoint", dir + "/\(family)-best.h5", "--data", data, "--limit", "40", "--batch-size", "16",
                                "--json", dir + "/eval.json")
        #expect(eval.status == 0, "\(eval.error)")
        var lines = ["BCE per pixel (mean)", "BCE per image (sum)", "mean code value"]
        var keys = ["bcePerPixel", "bcePerImage", "codeSize", "meanCodeActivation"]
        if family.hasSuffix("vae") {
            lines += ["KL(q(z|x) || N(0, I)) per image", "ELBO per image, z = mean", "ELBO per image, one sample of z"]
            keys += ["klPerImage", "elboAtMean", "elboOneSample", "bcePerImageOneSample"]
        }
        if family == "denoising-ae" {
            lines += ["PSNR noisy vs clean", "PSNR denoised vs clean", "BCE denoised vs clean per pixel"]
            keys += ["psnrNoisy", "psnrDenoised", "denoisedBcePerPixel", "denoisedBcePerImage", "noiseFactor"]
        }
        for line in lines { #expect(eval.output.contains(line), "\(family): no '\(line)' in\n\(eval.output)") }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json"))) as? [String: Any] ?? [:]
        for key in keys { #expect(json[key] is Double || json[key] is Int, "\(family): JSON lacks \(key)") }
        #expect(family.hasSuffix("vae") == (json["elboAtMean"] != nil) && (family == "denoising-ae") == (json["psnrNoisy"] != nil))
        if let elbo = json["elboAtMean"] as? Double, let bce = json["bcePerImage"] as? Double, let kl = json["klPerImage"] as? Double {
            #expect(abs(elbo + bce + kl) < 1e-9 * bce)
        }
        if let noisy = json["psnrNoisy"] as? Double { #expect(noisy > 8 && noisy < 11, "noisy PSNR \(noisy)") }
    }
}
