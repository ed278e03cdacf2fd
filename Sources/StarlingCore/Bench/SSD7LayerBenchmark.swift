/// SSD7's seven convolutions at the project's 300 x 480 and batch 16, one at a time, as its training runs them in the
/// blocked layout of `ChannelLayout.blockWidth` (16 on AVX-512 CPUs; `STARLING_BLOCK=8` for the 8-channel one): the forward
/// pass, then backward from a given dy (weight and bias gradients, and the input gradient where the input is not the
/// image), each in GFLOP/s. Starling's own kernels run where they apply (`ConvolutionKernels`, 8-channel blocks only);
/// `STARLING_CONV=dnnl` gives every pass to oneDNN, which is the comparison BENCHMARKS.md quotes per layer.
public enum SSD7LayerBenchmark {
    public struct Layer: Sendable {
        public let name: String
        public let forwardSeconds: Double, backwardSeconds: Double
        public let forwardGFLOPS: Double, backwardGFLOPS: Double
    }

    /// Whether Starling's own convolution kernels may run in this process (AVX2, and not `STARLING_CONV=dnnl`).
    public static var ownKernels: Bool { ConvGeometry.ownKernels }

    /// The best of `repeats` runs of each pass, after one warm-up (oneDNN compiles its kernels on first use).
    public static func run(batch: Int = 16, repeats: Int = 2) -> [Layer] {
        // (input channels, output channels, kernel, height, width) of conv1...conv7 (pooling halves the map between them).
        let layers = [(3, 32, 5, 300, 480), (32, 48, 3, 150, 240), (48, 64, 3, 75, 120), (64, 64, 3, 37, 60),
                      (64, 48, 3, 18, 30), (48, 48, 3, 9, 15), (48, 32, 3, 4, 7)]
        var rng = RandomGenerator(seed: 3)
        return layers.enumerated().map { index, layer in
            let (cin, cout, k, h, w) = layer
            let imageInput = index == 0   // conv1 reads the NCHW image, which needs no gradient
            let b = ChannelLayout.blockWidth   // the layout training runs in on this CPU (STARLING_BLOCK)
            let xShape = imageInput ? [batch, cin, h, w] : [batch, cin / b, h, w, b]
            let xValues = (0..<Tensor.elementCount(xShape)).map { _ in rng.uniform(-1, 1) }
            let wValues = (0..<cout * cin * k * k).map { _ in rng.uniform(-0.05, 0.05) }
            let bValues = (0..<cout).map { _ in rng.uniform(-0.1, 0.1) }
            let x = Tensor(shape: xShape, values: xValues)
            let weight = Tensor(shape: [cout, cin, k, k], values: wValues), bias = Tensor(shape: [cout], values: bValues)
            // Backward as a training step runs it: dy ready (batch norm's backward wrote it), the weight and bias
            // gradients added, the input gradient written (conv1's input, the image, needs none).
            let g = ConvGeometry(input: [batch, cin, h, w], weight: [cout, cin, k, k], stride: (1, 1), padding: .same,
                                 dilation: (1, 1), groups: 1)
            let layouts = DNNLConvPlan.Layouts(sourceBlocked: !imageInput, destinationBlocked: true, sourceWidth: b, destinationWidth: b)
            g.prepareDNNLBackward(layouts)
            let dy = FloatStorage(count: batch * cout * h * w), dw = FloatStorage(count: cout * cin * k * k), db = FloatStorage(count: cout)
            for i in 0..<dy.count { dy.pointer[i] = rng.uniform(-1, 1) }
            let dx = FloatStorage(uninitializedCount: imageInput ? 0 : x.count)
            var (forward, backward) = (Double.infinity, Double.infinity)
            for _ in 0...max(repeats, 1) {
                let t0 = monotonicSeconds()
                _ = GradMode.disabled { x.conv2dBlocked(weight, bias: bias, stride: (1, 1), padding: .same, width: b) }
                let t1 = monotonicSeconds()
                g.blockedBackward(input: x.data, weight: weight.data, outputGrad: dy.pointer, weightGradient: dw.pointer,
                                  biasGradient: db.pointer, inputGradient: imageInput ? nil : (dx.pointer, true), layouts: layouts)
                let t2 = monotonicSeconds()
                (forward, backward) = (min(forward, t1 - t0), min(backward, t2 - t1))
            }
            let flops = 2 * Double(batch * h * w) * Double(cout * cin * k * k)   // one pass
            return Layer(name: "conv\(index + 1) \(cin)->\(cout) \(k)x\(k) \(h)x\(w)", forwardSeconds: forward, backwardSeconds: backward,
                         forwardGFLOPS: flops / forward / 1e9, backwardGFLOPS: (imageInput ? 1 : 2) * flops / backward / 1e9)
        }
    }
}
