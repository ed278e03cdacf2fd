import Testing
import StarlingCore
@testable import StarlingNN
@testable import StarlingModels

/// Values given back after their last reader in forward and computed again in backward (`Tensor.recomputable(by:)`,
/// `releaseRecomputableValues`, `restoreValues`): a batch norm + activation + 2x2 pooling's output read by a convolution,
/// a batch norm + activation's output read by a convolution (VGG's rectified maps in the R-CNNs), the images'
/// normalisation read by the first convolution, a first convolution + ReLU cheap to run again (SSD300's conv1_1, given
/// back again in backward between conv1_2's weight gradient and its input gradient), the in-place activated batch norm's
/// output over such a first convolution (YOLOv3's first block, inverted in backward from the values computed again), U-Net's
/// first convolution + ReLU (3 input channels) read by the second through `applyingWithReLU`. Computed
/// again by the same kernels from the same values, so a training pass gives the same bits with and without giving them
/// back, while its graph holds less at the end of forward.
struct RecomputedValuesTests {
    /// One family's training pass (outputs, every parameter's gradient, the moving statistics) with the recomputable
    /// values given back (the default) and kept (`Tensor.givesBackRecomputableValues` false): equal to the bit, and the
    /// graph at the end of forward smaller by at least `fraction` of the kept pass's bytes.
    @Test(arguments: [("ssd7", 0.15), ("ssd300", 0.15), ("yolov3-tiny", 0.1), ("yolov2", 0.1), ("yolov3", 0.25), ("fast-rcnn", 0.15), ("faster-rcnn", 0.1), ("unet", 0.1)])
    func givingValuesBackChangesNoBit(_ name: String, atLeast fraction: Double) throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let family = try #require(LayoutTensorTests.families.first { $0.name == name })
        let models = try LayoutTensorTests.twins(family)
        let x = LayoutTensorTests.images(family)
        func pass(_ model: any Model, givingBack: Bool) -> (outputs: [[Float]], graphBytes: Int) {
            let outputs = Tensor.$givesBackRecomputableValues.withValue(givingBack) { family.laidOut(model, x, true) }
            let loss = weightedSum(outputs)
            let excluded = [model.parameters.values, model.parameters.gradients] + [model.buffers?.values].compactMap { $0 }
            let bytes = loss.tapeValues(excluding: excluded).reduce(0) { $0 + $1.bytes }
            loss.backward()
            return (outputs.map { $0.toArray() }, bytes)
        }
        let (given, kept) = (pass(models[0], givingBack: true), pass(models[1], givingBack: false))
        #expect(given.outputs == kept.outputs)
        #expect(Double(given.graphBytes) < (1 - fraction) * Double(kept.graphBytes),
                "the graph holds \(given.graphBytes) bytes at the end of forward, \(kept.graphBytes) with the values kept")
        for parameter in models[0].parameters.parameters {
            let other = try #require(models[1].parameters[parameter.name])
            #expect(parameter.value.gradArray != nil && parameter.value.gradArray == other.value.gradArray, "\(parameter.name) gradient")
        }
        for buffer in models[0].buffers?.parameters ?? [] {
            #expect(buffer.value.toArray() == (try #require(models[1].buffers?[buffer.name])).value.toArray(), "\(buffer.name)")
        }
    }

    /// A pooled block's output read by two convolutions: the first gives it back after reading it, the second computes it
    /// again (`DeferredConvolution.readInput`) and gives it back too, and backward computes it once more; the images'
    /// normalisation is given back after the first convolution. Values, gradients and moving statistics are those of the
    /// pass that keeps them, to the bit.
    @Test func pooledOutputReadByTwoConvolutions() throws {
        guard ChannelLayout.blockedTrainingEnabled else { return }
        let (store, buffers) = (ParameterStore(), ParameterStore(trainable: false))
        let first = Conv2D(store, name: "conv1", inputs: 3, outputs: 16, kernelSize: (5, 5))
        let norm = BatchNormalization(store, buffers: buffers, name: "bn1", channels: 16)
        let left = Conv2D(store, name: "left", inputs: 16, outputs: 16), right = Conv2D(store, name: "right", inputs: 16, outputs: 8)
        var rng = RandomGenerator(seed: 71)
        store.allocate(rng: &rng)
        buffers.allocate(rng: &rng)
        for i in 0..<16 { norm.gamma.value.data[i] = rng.uniform(0.5, 1.5) * (i % 5 == 0 ? -1 : 1); norm.beta.value.data[i] = 0.2 * rng.normal() }
        let values = (0..<(2 * 3 * 10 * 12)).map { _ in rng.uniform(0, 255) }
        let initialStatistics = buffers.values.toArray()
        func pass(givingBack: Bool) throws -> (values: [Float], gradients: [Float], statistics: [Float], released: [Bool]) {
            store.zeroGradients()
            initialStatistics.withUnsafeBufferPointer { buffers.values.pointer.update(from: $0.baseAddress!, count: $0.count) }
            let images = Tensor(shape: [2, 3, 10, 12], values: values)
            let (outputs, held): ([Tensor], [Tensor]) = try Tensor.$givesBackRecomputableValues.withValue(givingBack) {
                // Each value taken before its reader runs: a read through `form` after it computes it again.
                let normalised = LayoutTensor(images).affine(scale: 1 / 127.5, shift: -1)
                guard case .planar(let n) = normalised.form else { throw TestFailure("planar images expected") }
                let pooled = normalised.applying(first).applyingWithELUAndMaxPool2x2(norm, alpha: 1, training: true, crossReplicaSum: nil)
                guard case .blocked(let p, _) = pooled.form else { throw TestFailure("a blocked pooled map expected") }
                return ([pooled.applying(left).tensor, pooled.applying(right).tensor], [n, p])
            }
            let released = held.map(\.valuesReleased)
            weightedSum(outputs).backward()
            return (outputs.flatMap { $0.toArray() }, store.gradients.toArray(), buffers.values.toArray(), released)
        }
        let (given, kept) = (try pass(givingBack: true), try pass(givingBack: false))
        #expect(given.released == [true, true] && kept.released == [false, false])
        #expect(given.values == kept.values && given.statistics == kept.statistics && given.statistics != initialStatistics)
        #expect(given.gradients == kept.gradients && given.gradients.contains { $0 != 0 })
    }
}

private struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
