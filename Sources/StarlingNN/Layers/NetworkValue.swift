import StarlingCore

/// What a network's forward pass computes on: a `Tensor` when it trains or infers, an `ONNXValue` when it is written
/// out as an ONNX graph. A model writes its forward pass once, generic over this protocol, and the one description
/// serves training, inference and export, so the exported graph cannot drift from the network Starling trains.
///
/// The requirements are the ops the models' forward passes use, with `Tensor`'s semantics (ONNXValue's doc comments
/// say how each maps onto ONNX operators). A layer is applied by `applying(_:)`: a `Tensor` reads the layer's
/// parameters as values, an `ONNXValue` makes them initializers named as in the checkpoint. Behaviour that only
/// training has (batch norm's batch statistics) is chosen by a `training` argument; an ONNX graph is always the
/// inference pass and ignores it.
///
/// Axis 0 is the batch. A `Tensor` knows its size; an `ONNXValue`'s is symbolic, -1 in `shape`. So a forward pass
/// names the batch as `shape[0]` (a reshape to `[x.shape[0], ...]` works for both), never as a count it computed.
public protocol NetworkValue {
    /// Axis 0 the batch: its size for a `Tensor`, -1 for an `ONNXValue`.
    var shape: [Int] { get }

    func relu() -> Self
    func sigmoid() -> Self
    func elu(alpha: Float) -> Self
    /// x for x > 0, slope x otherwise.
    func leakyRelu(slope: Float) -> Self
    /// `self * scale + shift`.
    func affine(scale: Float, shift: Float) -> Self
    /// Elementwise sum of two values of one shape (a residual connection, darknet's `[shortcut]`).
    static func + (lhs: Self, rhs: Self) -> Self
    /// [N, C, H, W] minus `means[c]` in channel c: input normalisation by a dataset's channel means (SSD300's ImageNet
    /// means).
    func subtractingChannelMeans(_ means: [Float]) -> Self
    func softmax(axis: Int) -> Self

    /// The same values in `newShape`; one axis may be -1 (inferred), and it may be the batch (`shape[0]` of an
    /// `ONNXValue`).
    func reshaped(_ newShape: [Int]) -> Self
    /// Everything but the batch axis in one: [N, ...] -> [N, product]; the value itself when it is already [N, D].
    func flattened() -> Self
    func transposed(_ permutation: [Int]) -> Self
    static func concat(_ values: [Self], axis: Int) -> Self
    /// The last step of a sequence: [N, T, H] -> [N, H] (a recurrent encoder's final hidden state).
    func lastTimestep() -> Self
    /// [N, H] -> [N, steps, H], the vector at every step (Keras's RepeatVector).
    func repeatedOverSteps(_ steps: Int) -> Self

    /// `Tensor.maxPool2d`: a nil stride is the kernel's size.
    func maxPool2d(kernel: (Int, Int), stride: (Int, Int)?, padding: Padding) -> Self
    /// Nearest-neighbour upsampling by integer factors.
    func upsampleNearest(scale: (Int, Int)) -> Self
    /// Bilinear resize to height x width with half-pixel centres (`Tensor.resizeBilinear`, PyTorch's
    /// align_corners=false, ONNX's half_pixel).
    func resized(height: Int, width: Int) -> Self
    /// Framed by rows and columns of a constant (`Tensor.padded`).
    func padded(top: Int, left: Int, bottom: Int, right: Int, value: Float) -> Self
    /// The height x width window at (top, left) of [N, C, H, W] (`Tensor.cropped`; U-Net's valid-padding skips).
    func cropped(top: Int, left: Int, height: Int, width: Int) -> Self
    /// `Tensor.spaceToDepth`: every b x b block of pixels stacked along the channels (ONNX's SpaceToDepth).
    func spaceToDepth(blockSize: Int) -> Self
    /// `Tensor.roiMaxPool`: Fast R-CNN's RoI max pooling of the regions `rois` [R, 5] (batch index, x1, y1, x2, y2 in
    /// image coordinates) into [R, C, outputHeight, outputWidth] (ONNX's MaxRoiPool).
    func roiMaxPool(rois: Self, outputHeight: Int, outputWidth: Int, spatialScale: Float) -> Self
    /// `Tensor.roiAlign`: Mask R-CNN's RoIAlign (average) of the regions `rois` [R, 5] (ONNX's RoiAlign, opset 16,
    /// half_pixel when `aligned`, output_half_pixel otherwise).
    func roiAlign(rois: Self, outputHeight: Int, outputWidth: Int, spatialScale: Float, samplingRatio: Int, aligned: Bool) -> Self
    /// Channel-wise L2 normalisation with the learned per-channel scale `gamma` [C] (SSD300's conv4_3).
    func l2NormalizeChannels(gamma: Parameter, epsilon: Float) -> Self

    /// [N, inputs] -> [N, outputs].
    func applying(_ layer: Dense) -> Self
    /// `applying(layer)` then `relu()`, one op on Tensors (`Tensor.linearReLU`: the ReLU in place on the product, no
    /// pre-activation copy or gradient; the fully connected autoencoders' hidden layers).
    func applyingWithReLU(_ layer: Dense) -> Self
    func applying(_ layer: Conv2D) -> Self
    /// `applying(layer)` then `relu()`, a requirement of its own because `LayoutTensor` trains the two as one op
    /// (`Tensor.conv2dBlockedReLU`) that keeps no copy of the values before the ReLU (U-Net's blocks).
    func applyingWithReLU(_ layer: Conv2D) -> Self
    /// `concat([self, second], axis: 1).applyingWithReLU(layer)`, a requirement of its own because `LayoutTensor` trains
    /// it as one op of the two inputs (`Tensor.conv2dBlockedReLU(concatenating:...)`, the kernel split along its input
    /// channels) that keeps no concatenation and writes no gradient of one (U-Net's decoder: skip, then up-convolution).
    func applyingWithReLU(_ layer: Conv2D, concatenating second: Self) -> Self
    func applying(_ layer: Conv2DTranspose) -> Self
    /// `applying(layer)` then `relu()`, a requirement of its own because `LayoutTensor` trains the two as one op
    /// (`Tensor.conv2dTransposedBlockedReLU`) that keeps no copy of the values before the ReLU (conv-vae's decoder).
    func applyingWithReLU(_ layer: Conv2DTranspose) -> Self
    /// Training: normalised by the batch's statistics (over every rank with a `crossReplicaSum`), the moving ones
    /// updated; otherwise by the moving statistics, the only mode of an ONNX graph.
    func applying(_ layer: BatchNormalization, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Self
    /// `applying(layer, ...)` then `elu(alpha:)`, a requirement of its own because a `Tensor` runs the two as one op
    /// (`Tensor.batchNormELU`) that stores no normalised copy for backward (SSD7's seven blocks).
    func applyingWithELU(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Self
    /// `applying(layer, ...)` then `leakyRelu(slope:)`, one op on Tensors (`Tensor.batchNormLeakyReLU`; darknet's blocks).
    func applyingWithLeakyReLU(_ layer: BatchNormalization, slope: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Self
    /// `applyingWithELU(...)` then 2x2 max-pooling at stride 2 (valid), for a block whose normalised output feeds only
    /// the pooling: `LayoutTensor` runs it as one op in the blocked layout (`Tensor.batchNormELUMaxPool2x2Blocked`).
    func applyingWithELUAndMaxPool2x2(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Self
    /// [N, T, F] -> every hidden state, [N, T, H].
    func applying(_ layer: LSTMLayer) -> Self
}

extension NetworkValue {
    /// Pooling windows that step by their own size.
    public func maxPool2d(kernel: (Int, Int), padding: Padding) -> Self { maxPool2d(kernel: kernel, stride: nil, padding: padding) }

    public func applyingWithLeakyReLU(_ layer: BatchNormalization, slope: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Self {
        applying(layer, training: training, crossReplicaSum: crossReplicaSum).leakyRelu(slope: slope)
    }

    public func applyingWithReLU(_ layer: Conv2D) -> Self { applying(layer).relu() }

    public func applyingWithReLU(_ layer: Conv2D, concatenating second: Self) -> Self {
        Self.concat([self, second], axis: 1).applyingWithReLU(layer)
    }

    public func applyingWithReLU(_ layer: Conv2DTranspose) -> Self { applying(layer).relu() }


    public func applyingWithReLU(_ layer: Dense) -> Self { applying(layer).relu() }

    public func applyingWithELUAndMaxPool2x2(_ layer: BatchNormalization, alpha: Float, training: Bool,
                                             crossReplicaSum: CrossReplicaSum?) -> Self {
        applyingWithELU(layer, alpha: alpha, training: training, crossReplicaSum: crossReplicaSum)
            .maxPool2d(kernel: (2, 2), stride: nil, padding: .valid)
    }
}

/// The ops `Tensor` does not have under these names: the layers read their parameters' current values.
extension Tensor: NetworkValue {
    public func resized(height: Int, width: Int) -> Tensor { resizeBilinear(height: height, width: width) }

    public func flattened() -> Tensor { rank == 2 ? self : reshaped([shape[0], -1]) }

    public func repeatedOverSteps(_ steps: Int) -> Tensor {
        precondition(rank == 2, "repeating \(shape) over steps: [N, H] expected")
        return Tensor.concat(Array(repeating: reshaped([shape[0], 1, shape[1]]), count: steps), axis: 1)
    }

    /// The means as a [C, H, W] constant: `-` broadcasts a trailing shape over the leading axes.
    public func subtractingChannelMeans(_ means: [Float]) -> Tensor {
        precondition(rank == 4 && shape[1] == means.count, "subtracting \(means.count) channel means from \(shape)")
        let (h, w) = (shape[2], shape[3])
        let shift = Tensor(zeros: [means.count, h, w])
        for c in 0..<means.count { for p in 0..<(h * w) { shift.data[c * h * w + p] = means[c] } }
        return self - shift
    }

    public func l2NormalizeChannels(gamma: Parameter, epsilon: Float) -> Tensor {
        l2NormalizeChannels(gamma: gamma.value, epsilon: epsilon)
    }

    public func applying(_ layer: Dense) -> Tensor { linear(layer.kernel.value, layer.bias.value) }

    public func applyingWithReLU(_ layer: Dense) -> Tensor { linearReLU(layer.kernel.value, layer.bias.value) }

    public func applying(_ layer: Conv2D) -> Tensor {
        conv2d(layer.kernel.value, bias: layer.bias.value, stride: layer.stride, padding: layer.padding, dilation: layer.dilation)
    }

    public func applying(_ layer: Conv2DTranspose) -> Tensor {
        conv2dTransposed(layer.kernel.value, bias: layer.bias.value, stride: layer.stride, padding: layer.padding)
    }

    public func applying(_ layer: BatchNormalization, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Tensor {
        layer.normalizing(self, training: training, crossReplicaSum: crossReplicaSum, layout: .planar)
    }

    public func applyingWithELU(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Tensor {
        layer.withELU(self, training: training, crossReplicaSum: crossReplicaSum, alpha: alpha)
    }

    public func applyingWithLeakyReLU(_ layer: BatchNormalization, slope: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> Tensor {
        layer.withLeakyReLU(self, training: training, crossReplicaSum: crossReplicaSum, slope: slope)
    }

    public func applying(_ layer: LSTMLayer) -> Tensor {
        lstm(kernel: layer.kernel.value, recurrentKernel: layer.recurrentKernel.value, bias: layer.bias.value)
    }
}
