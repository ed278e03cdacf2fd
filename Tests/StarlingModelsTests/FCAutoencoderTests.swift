import Foundation
import Testing
import StarlingCore
@testable import StarlingModels

@Suite struct FCAutoencoderTests {
    func smallModel(l1: Double = 0) throws -> FCAutoencoder {
        var rng = RandomGenerator(seed: 7)
        return try FCAutoencoder(config: ModelConfig(family: "fc-ae", inputShape: [6], options: ["code_size": 3, "l1_activity": l1]), rng: &rng)
    }

    @Test func parametersFollowKerasNamesAndInitialisation() throws {
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        #expect(model.parameters.parameters.map(\.name) == ["encoder/kernel", "encoder/bias", "decoder/kernel", "decoder/bias"])
        #expect(model.parameters.parameters.map(\.shape) == [[784, 32], [32], [32, 784], [784]])
        #expect(model.parameters.count == 784 * 32 + 32 + 32 * 784 + 784)
        let limit = (6.0 / Float(784 + 32)).squareRoot()
        let kernel = model.parameters.parameters[0].value.toArray()
        #expect(kernel.allSatisfy { abs($0) <= limit })
        #expect(kernel.map { abs($0) }.max()! > 0.9 * limit)   // uniform over the whole range, not a narrower one
        #expect(model.parameters.parameters[1].value.toArray().allSatisfy { $0 == 0 })
    }

    /// The loss against a second implementation: plain Double loops over the same weights.
    @Test func lossMatchesAnIndependentComputation() throws {
        for l1 in [0.0, 0.01] {
            let model = try smallModel(l1: l1)
            let x: [Float] = [0, 0.2, 1, 0.5, 0.9, 0.1, 1, 1, 0, 0.3, 0.7, 0.05]
            let loss = model.loss(Batch(images: Tensor(shape: [2, 6], values: x)), training: true).item
            let p = model.parameters.parameters.map { $0.value.toArray().map(Double.init) }
            let (we, be, wd, bd) = (p[0], p[1], p[2], p[3])
            var bce = 0.0, activity = 0.0
            for r in 0..<2 {
                var h = [Double](repeating: 0, count: 3)
                for j in 0..<3 {
                    var s = be[j]
                    for i in 0..<6 { s += Double(x[r * 6 + i]) * we[i * 3 + j] }
                    h[j] = max(s, 0)
                    activity += h[j]
                }
                for i in 0..<6 {
                    var z = bd[i]
                    for j in 0..<3 { z += h[j] * wd[j * 6 + i] }
                    let y = 1 / (1 + exp(-z)), t = Double(x[r * 6 + i])
                    bce -= t * log(y) + (1 - t) * log(1 - y)
                }
            }
            let expected = bce / 12 + l1 * activity / 2
            #expect(abs(Double(loss) - expected) < 1e-5, "l1 \(l1): \(loss) vs \(expected)")
        }
    }

    /// Finite differences through the whole model, with respect to every parameter.
    @Test func modelGradientMatchesFiniteDifferences() throws {
        let model = try smallModel(l1: 0.01)
        let batch = Batch(images: Tensor(shape: [2, 6], values: [0, 0.2, 1, 0.5, 0.9, 0.1, 1, 1, 0, 0.3, 0.7, 0.05]))
        model.parameters.zeroGradients()
        model.loss(batch, training: true).backward()
        let analytic = model.parameters.gradients.toArray()
        let w = model.parameters.values.pointer
        for i in 0..<model.parameters.count {
            let saved = w[i]
            w[i] = saved + 1e-2
            let plus = Double(GradMode.disabled { model.loss(batch, training: true).item })
            w[i] = saved - 1e-2
            let minus = Double(GradMode.disabled { model.loss(batch, training: true).item })
            w[i] = saved
            let numeric = Float((plus - minus) / 2e-2)
            #expect(abs(numeric - analytic[i]) <= 2e-3 + 2e-2 * abs(numeric), "parameter \(i): \(analytic[i]) vs \(numeric)")
        }
    }

    /// The sparse autoencoder's activity penalty alone, by finite differences: the same weights with l1 = 1 (where the
    /// penalty outweighs the BCE) and l1 = 0, so the difference of the two losses is l1 sum(h) / N and the difference
    /// of the two gradients is its gradient (the whole-model check above runs at l1 = 0.01, where it is a small share).
    @Test func activityPenaltyGradientMatchesFiniteDifferences() throws {
        let sparse = try smallModel(l1: 1), plain = try smallModel(l1: 0)
        #expect(sparse.parameters.values.toArray() == plain.parameters.values.toArray())
        let batch = Batch(images: Tensor(shape: [2, 6], values: [0, 0.2, 1, 0.5, 0.9, 0.1, 1, 1, 0, 0.3, 0.7, 0.05]))
        func gradient(_ model: FCAutoencoder) -> [Float] {
            model.parameters.zeroGradients()
            model.loss(batch, training: true).backward()
            return model.parameters.gradients.toArray()
        }
        let analytic = zip(gradient(sparse), gradient(plain)).map { $0 - $1 }
        func penalty() -> Double {
            GradMode.disabled { Double(sparse.loss(batch, training: true).item) - Double(plain.loss(batch, training: true).item) }
        }
        let (ws, wp) = (sparse.parameters.values.pointer, plain.parameters.values.pointer)
        var checked = 0
        for i in 0..<sparse.parameters.count {
            let saved = ws[i]
            (ws[i], wp[i]) = (saved + 1e-3, saved + 1e-3)
            let plus = penalty()
            (ws[i], wp[i]) = (saved - 1e-3, saved - 1e-3)
            let minus = penalty()
            (ws[i], wp[i]) = (saved, saved)
            let numeric = Float((plus - minus) / 2e-3)
            if numeric != 0 { checked += 1 }
            #expect(abs(numeric - analytic[i]) <= 1e-3 + 1e-2 * abs(numeric), "parameter \(i): \(analytic[i]) vs \(numeric)")
        }
        // Only the encoder moves the code: its kernel and bias (18 + 3 of the 45 parameters) carry the penalty.
        #expect(checked > 0 && analytic[21...].allSatisfy { $0 == 0 })
    }

    @Test func unknownModelIsAnError() {
        #expect(throws: ModelError.self) { try ModelRegistry.defaultConfig(family: "resnet") }
        do { _ = try ModelRegistry.defaultConfig(family: "resnet") } catch {
            #expect("\(error)".contains("unknown model 'resnet'") && "\(error)".contains("fc-ae"))
        }
    }
}
