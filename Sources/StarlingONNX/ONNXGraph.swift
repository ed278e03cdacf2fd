import Foundation
import ONNXProto
import StarlingCore
import StarlingNN

/// An ONNX inference graph under construction (`starling convert --to onnx`), written at opset 13 (IR version 7),
/// which every current runtime reads; a graph with an operator that needs a later opset (RoiAlign's
/// coordinate_transformation_mode: 16, IR version 8) is written at that one.
///
/// A model's forward pass, written once over `NetworkValue`, builds the graph when it runs on `ONNXValue`s
/// (`conv(h).relu().maxPool2d(...)` appends a Conv, a Relu and a MaxPool node); each value knows its static shape
/// (axis 0 the batch, symbolic "N"), from which padding and reshapes are worked out as the Tensor ops work them out.
/// Weights become initializers named as in the checkpoint ("conv1/kernel"), in ONNX's layouts.
public final class ONNXGraph {
    public static let opset: Int64 = 13
    public static let irVersion: Int64 = 7
    /// The opset this graph is written at: `opset` unless one of its operators needs a later one (`require(opset:)`).
    /// Every operator this builder writes means the same at 13 and 16 (their later versions add types and optional
    /// attributes whose defaults are the earlier behaviour).
    public private(set) var opsetVersion: Int64 = ONNXGraph.opset

    /// Raises the graph's opset to at least `version`.
    package func require(opset version: Int64) { opsetVersion = max(opsetVersion, version) }

    var nodes: [Onnx_NodeProto] = []
    var initializers: [Onnx_TensorProto] = []
    var inputs: [Onnx_ValueInfoProto] = []
    var outputs: [Onnx_ValueInfoProto] = []
    private var used: [String: Int] = [:]
    /// Values already in the graph by what they compute, so that a model describing a shared prefix twice (the
    /// code, then the reconstruction from it) gets one copy of each weight and node.
    private var known: [String: ONNXValue] = [:]
    /// The outputs of nodes already in the graph (all of a node's outputs), by what they compute, as `known`.
    private var knownNodes: [String: [ONNXValue]] = [:]
    /// Each Transpose node's output: the value it transposes and how, so that a transposition back is no node.
    var transposeInputs: [String: (input: ONNXValue, permutation: [Int])] = [:]
    /// The static shape of every input and node output by name (-1 for the symbolic batch), for `multiplyAddsPerImage`.
    var shapes: [String: [Int]] = [:]
    /// The batch-major hidden states of each LSTM node: that node's last hidden state (its output Y_h), which is
    /// what `lastTimestep()` of those states reads.
    var lastStates: [String: ONNXValue] = [:]

    public init() {}

    /// A name not used before in the graph, from a hint ("relu" -> "relu_3").
    func fresh(_ hint: String) -> String {
        let k = used[hint, default: 0]
        used[hint] = k + 1
        return k == 0 && !hint.isEmpty ? hint : "\(hint)_\(k)"
    }

    /// A graph input of float32 values; a symbolic axis 0 is called `batchName` (the batch, "N", by default).
    public func input(_ name: String, shape: [Int], batchName: String = "N") -> ONNXValue {
        inputs.append(Self.valueInfo(name, shape: shape, type: .float, batchName: batchName))
        shapes[name] = shape
        return ONNXValue(graph: self, name: name, shape: shape)
    }

    /// Declares `value` a graph output under `name` (an Identity node renames it).
    /// A symbolic axis 0 is called `batchName`.
    public func output(_ value: ONNXValue, as name: String, type: Onnx_TensorProto.DataType = .float, batchName: String = "N") {
        let named = value.name == name ? value : node("Identity", [value.name], name: name, shape: value.shape)
        outputs.append(Self.valueInfo(named.name, shape: value.shape, type: type, batchName: batchName))
    }

    /// A float32 initializer.
    package func constant(_ hint: String, _ values: [Float], shape: [Int], key: String? = nil) -> ONNXValue {
        precondition(values.count == shape.reduce(1, *), "constant \(hint): \(values.count) values for shape \(shape)")
        let key = key ?? (values.count <= 16 ? "float \(shape) \(values.map(\.bitPattern))" : nil)
        if let key, let value = known[key] { return value }
        var t = Onnx_TensorProto()
        t.name = fresh(hint)
        t.dims = shape.map(Int64.init)
        t.dataType = Int32(Onnx_TensorProto.DataType.float.rawValue)
        t.rawData = values.withUnsafeBufferPointer { Data(buffer: $0) }   // little-endian, as ONNX requires
        initializers.append(t)
        let value = ONNXValue(graph: self, name: t.name, shape: shape)
        if let key { known[key] = value }
        return value
    }

    /// An int64 initializer (shapes, axes, counts).
    package func int64Constant(_ hint: String, _ values: [Int64], shape: [Int]? = nil) -> ONNXValue {
        let key = "int64 \(shape ?? [values.count]) \(values)"
        if let value = known[key] { return value }
        var t = Onnx_TensorProto()
        t.name = fresh(hint)
        t.dims = (shape ?? [values.count]).map(Int64.init)
        t.dataType = Int32(Onnx_TensorProto.DataType.int64.rawValue)
        t.int64Data = values
        initializers.append(t)
        let value = ONNXValue(graph: self, name: t.name, shape: shape ?? [values.count])
        known[key] = value
        return value
    }

    /// A parameter's values as an initializer named after it, reordered by `layout` when ONNX lays it out otherwise.
    func weight(_ parameter: Parameter, layout: ForeignLayout? = nil, suffix: String = "") -> ONNXValue {
        let layout = layout ?? .identical(parameter.shape)
        return constant(parameter.name + suffix, layout.export(parameter.value.toArray()), shape: layout.shape,
                        key: "weight \(parameter.name)\(suffix) \(layout)")
    }

    /// Appends a node with one output of the given static shape.
    @discardableResult
    package func node(_ op: String, _ inputs: [String], name hint: String? = nil, shape: [Int], attributes: [Onnx_AttributeProto] = []) -> ONNXValue {
        node(op, inputs, names: [hint ?? op.lowercased()], shapes: [shape], attributes: attributes)[0]
    }

    /// Appends a node with an output per name hint, of the given static shapes; the same node asked for again is
    /// the one already in the graph.
    package func node(_ op: String, _ inputs: [String], names hints: [String], shapes: [[Int]], attributes: [Onnx_AttributeProto] = []) -> [ONNXValue] {
        precondition(hints.count == shapes.count, "\(op): \(hints.count) output names for \(shapes.count) shapes")
        let encoded = attributes.map { (try? $0.serializedBytes() as [UInt8]) ?? [] }
        let key = "node \(op) \(inputs) \(encoded) \(hints)"
        if let values = knownNodes[key] { return values }
        var n = Onnx_NodeProto()
        n.opType = op
        n.name = fresh("\(op)_node")
        n.input = inputs
        let outputs = hints.map { fresh($0) }
        n.output = outputs
        n.attribute = attributes
        nodes.append(n)
        let values = zip(outputs, shapes).map { ONNXValue(graph: self, name: $0, shape: $1) }
        for value in values { self.shapes[value.name] = value.shape }
        knownNodes[key] = values
        return values
    }

    /// The finished model.
    public func model(producerVersion: String, docString: String) -> Onnx_ModelProto {
        var graph = Onnx_GraphProto()
        graph.name = "starling"
        graph.node = nodes
        graph.initializer = initializers
        graph.input = inputs
        graph.output = outputs
        var model = Onnx_ModelProto()
        // Opset 16 came with IR version 8 (ONNX 1.10); IR 7 carries opsets up to 15.
        model.irVersion = opsetVersion > 15 ? 8 : Self.irVersion
        model.producerName = "starling"
        model.producerVersion = producerVersion
        model.docString = docString
        var opset = Onnx_OperatorSetIdProto()
        opset.domain = ""
        opset.version = opsetVersion
        model.opsetImport = [opset]
        model.graph = graph
        return model
    }

    static func valueInfo(_ name: String, shape: [Int], type: Onnx_TensorProto.DataType, batchName: String = "N") -> Onnx_ValueInfoProto {
        var tensor = Onnx_TypeProto.Tensor()
        tensor.elemType = Int32(type.rawValue)
        var dims = Onnx_TensorShapeProto()
        dims.dim = shape.enumerated().map { (k, d) in
            var dim = Onnx_TensorShapeProto.Dimension()
            if k == 0 && d < 0 { dim.dimParam = batchName } else if d < 0 { dim.dimParam = "\(name)_\(k)" } else { dim.dimValue = Int64(d) }
            return dim
        }
        tensor.shape = dims
        var t = Onnx_TypeProto()
        t.tensorType = tensor
        var info = Onnx_ValueInfoProto()
        info.name = name
        info.type = t
        return info
    }
}

/// Attribute constructors.
package enum ONNXAttribute {
    package static func int(_ name: String, _ value: Int) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .int
        a.i = Int64(value)
        return a
    }

    package static func ints(_ name: String, _ values: [Int]) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .ints
        a.ints = values.map(Int64.init)
        return a
    }

    package static func float(_ name: String, _ value: Float) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .float
        a.f = value
        return a
    }

    package static func string(_ name: String, _ value: String) -> Onnx_AttributeProto {
        var a = Onnx_AttributeProto()
        a.name = name
        a.type = .string
        a.s = Data(value.utf8)
        return a
    }
}

/// A symbolic tensor of an `ONNXGraph`: a name and a static shape (axis 0 the batch, -1 while symbolic). Its ops
/// (`NetworkValue`'s, and the elementwise ones the detectors' decoding uses) append nodes to the graph, with the
/// semantics of `Tensor`'s ops of the same names.
public struct ONNXValue: NetworkValue {
    package let graph: ONNXGraph
    public let name: String
    public let shape: [Int]

    func unary(_ op: String, attributes: [Onnx_AttributeProto] = []) -> ONNXValue {
        graph.node(op, [name], shape: shape, attributes: attributes)
    }

    public func relu() -> ONNXValue { unary("Relu") }
    public func sigmoid() -> ONNXValue { unary("Sigmoid") }
    public func exp() -> ONNXValue { unary("Exp") }
    public func elu(alpha: Float = 1) -> ONNXValue { unary("Elu", attributes: [ONNXAttribute.float("alpha", alpha)]) }
    public func leakyRelu(slope: Float) -> ONNXValue { unary("LeakyRelu", attributes: [ONNXAttribute.float("alpha", slope)]) }

    /// Elementwise with numpy broadcasting; the result has `self`'s shape (callers broadcast constants into it).
    func binary(_ op: String, _ other: ONNXValue) -> ONNXValue {
        let rank = max(shape.count, other.shape.count)
        let a = Array(repeating: 1, count: rank - shape.count) + shape, b = Array(repeating: 1, count: rank - other.shape.count) + other.shape
        let out = zip(a, b).map { x, y in x == 1 ? y : (y == 1 ? x : (x < 0 ? y : x)) }
        return graph.node(op, [name, other.name], shape: out)
    }

    public static func + (a: ONNXValue, b: ONNXValue) -> ONNXValue { a.binary("Add", b) }
    public static func - (a: ONNXValue, b: ONNXValue) -> ONNXValue { a.binary("Sub", b) }
    public static func * (a: ONNXValue, b: ONNXValue) -> ONNXValue { a.binary("Mul", b) }
    public static func / (a: ONNXValue, b: ONNXValue) -> ONNXValue { a.binary("Div", b) }

    /// `self * scale + shift` (Tensor.affine).
    public func affine(scale: Float, shift: Float = 0) -> ONNXValue {
        let scaled = self * graph.constant("scale", [scale], shape: [])
        return shift == 0 ? scaled : scaled + graph.constant("shift", [shift], shape: [])
    }

    /// A Sub of the initializer "channel_means", [1, C, 1, 1], which ONNX broadcasts over the batch and the pixels.
    public func subtractingChannelMeans(_ means: [Float]) -> ONNXValue {
        self - graph.constant("channel_means", means, shape: [1, means.count, 1, 1])
    }

    /// Reshape to `newShape`, which spells out every axis but one: -1 there stands for the symbolic batch (ONNX
    /// infers it at run time).
    public func reshaped(_ newShape: [Int]) -> ONNXValue {
        precondition(newShape.filter { $0 < 0 }.count <= 1, "reshape to \(newShape): one symbolic axis at most")
        let target = graph.int64Constant("shape", newShape.map(Int64.init))
        return graph.node("Reshape", [name, target.name], shape: newShape)
    }

    /// Everything but the batch axis flattened: [N, ...] -> [N, product].
    public func flattened() -> ONNXValue { shape.count == 2 ? self : reshaped([-1, shape.dropFirst().reduce(1, *)]) }

    /// A Transpose node, or none when `self` is a Transpose's output and `permutation` undoes it (an LSTM's input
    /// and output go time-major and back; two LSTMs in a row, or a repeat feeding one, would otherwise transpose
    /// there and back between them).
    public func transposed(_ permutation: [Int]) -> ONNXValue {
        if let (input, first) = graph.transposeInputs[name], permutation.count == first.count, permutation.map({ first[$0] }) == Array(first.indices) { return input }
        let out = graph.node("Transpose", [name], shape: permutation.map { shape[$0] }, attributes: [ONNXAttribute.ints("perm", permutation)])
        graph.transposeInputs[out.name] = (self, permutation)
        return out
    }

    public static func concat(_ values: [ONNXValue], axis: Int) -> ONNXValue {
        precondition(!values.isEmpty, "concatenating nothing")
        var shape = values[0].shape
        shape[axis] = values.map { $0.shape[axis] }.reduce(0, +)
        return values[0].graph.node("Concat", values.map(\.name), shape: shape, attributes: [ONNXAttribute.int("axis", axis)])
    }

    /// Softmax over `axis` (the last by default): at opset 13, ONNX's Softmax normalises over that one axis.
    public func softmax(axis: Int = -1) -> ONNXValue {
        unary("Softmax", attributes: [ONNXAttribute.int("axis", axis < 0 ? shape.count + axis : axis)])
    }

    /// Elements [start, end) of `axis`.
    public func slice(axis: Int, _ range: Range<Int>) -> ONNXValue {
        let starts = graph.int64Constant("starts", [Int64(range.lowerBound)]), ends = graph.int64Constant("ends", [Int64(range.upperBound)])
        let axes = graph.int64Constant("axes", [Int64(axis)])
        var out = shape
        out[axis] = range.count
        return graph.node("Slice", [name, starts.name, ends.name, axes.name], shape: out)
    }

    /// [N, T, H] -> [N, H]. An LSTM's states give their node's own last hidden state (Y_h); other sequences are sliced.
    public func lastTimestep() -> ONNXValue {
        if let last = graph.lastStates[name] { return last }
        precondition(shape.count == 3 && shape[1] > 0, "lastTimestep expects [N, T, H] with T > 0, got \(shape)")
        return slice(axis: 1, (shape[1] - 1)..<shape[1]).reshaped([shape[0], shape[2]])
    }

    /// [N, H] -> [N, steps, H]: an Expand to time-major [steps, N, H], ONNX's LSTM's layout, transposed to batch-major
    /// (an LSTM reading it cancels that transposition).
    public func repeatedOverSteps(_ steps: Int) -> ONNXValue {
        precondition(shape.count == 2, "repeating \(shape) over steps: [N, H] expected")
        let leading = reshaped([1] + shape)
        let target = graph.int64Constant("repeat_shape", [Int64(steps)] + Array(repeating: 1, count: shape.count))
        return graph.node("Expand", [leading.name, target.name], shape: [steps] + shape).transposed([1, 0, 2])
    }

    /// Max pooling with Tensor.maxPool2d's geometry (padded cells never win, as ONNX's MaxPool also treats them).
    public func maxPool2d(kernel: (Int, Int), stride: (Int, Int)? = nil, padding: Padding = .valid) -> ONNXValue {
        let s = stride ?? kernel
        let rows = padding.window(size: shape[2], kernel: kernel.0, stride: s.0, vertical: true)
        let cols = padding.window(size: shape[3], kernel: kernel.1, stride: s.1, vertical: false)
        let pads = Self.pads(input: (shape[2], shape[3]), output: (rows.output, cols.output), before: (rows.before, cols.before),
                             kernel: kernel, stride: s)
        return graph.node("MaxPool", [name], shape: [shape[0], shape[1], rows.output, cols.output], attributes: [
            ONNXAttribute.ints("kernel_shape", [kernel.0, kernel.1]), ONNXAttribute.ints("strides", [s.0, s.1]),
            ONNXAttribute.ints("pads", pads)])
    }

    /// Nearest-neighbour upsampling by integer factors: output pixel i reads input pixel floor(i / scale).
    /// ONNX's Resize, linear with half-pixel centres, to a size given in full: the symbolic batch and the channels
    /// read from the input's shape at run time (Shape, Slice), then the fixed height and width.
    public func resized(height: Int, width: Int) -> ONNXValue {
        let whole = graph.node("Shape", [name], name: "shape", shape: [4])
        let leading = whole.slice(axis: 0, 0..<2)
        let sizes = graph.node("Concat", [leading.name, graph.int64Constant("resized_size", [Int64(height), Int64(width)]).name],
                               shape: [4], attributes: [ONNXAttribute.int("axis", 0)])
        let roi = graph.constant("roi", [], shape: [0])
        return graph.node("Resize", [name, roi.name, "", sizes.name], shape: [shape[0], shape[1], height, width], attributes: [
            ONNXAttribute.string("mode", "linear"), ONNXAttribute.string("coordinate_transformation_mode", "half_pixel")])
    }

    /// ONNX's constant Pad.
    public func padded(top: Int, left: Int, bottom: Int, right: Int, value: Float) -> ONNXValue {
        let pads = graph.int64Constant("pads", [0, 0, Int64(top), Int64(left), 0, 0, Int64(bottom), Int64(right)])
        let fill = graph.constant("pad_value", [value], shape: [])
        return graph.node("Pad", [name, pads.name, fill.name], shape: [shape[0], shape[1], shape[2] + top + bottom, shape[3] + left + right],
                          attributes: [ONNXAttribute.string("mode", "constant")])
    }

    /// ONNX's Slice on axes 2 and 3 (`Tensor.cropped`).
    public func cropped(top: Int, left: Int, height: Int, width: Int) -> ONNXValue {
        let starts = graph.int64Constant("starts", [Int64(top), Int64(left)])
        let ends = graph.int64Constant("ends", [Int64(top + height), Int64(left + width)])
        let axes = graph.int64Constant("axes", [2, 3])
        return graph.node("Slice", [name, starts.name, ends.name, axes.name], shape: [shape[0], shape[1], height, width])
    }

    public func upsampleNearest(scale: (Int, Int)) -> ONNXValue {
        let roi = graph.constant("roi", [], shape: [0])
        let scales = graph.constant("scales", [1, 1, Float(scale.0), Float(scale.1)], shape: [4])
        return graph.node("Resize", [name, roi.name, scales.name], shape: [shape[0], shape[1], shape[2] * scale.0, shape[3] * scale.1], attributes: [
            ONNXAttribute.string("mode", "nearest"), ONNXAttribute.string("coordinate_transformation_mode", "asymmetric"),
            ONNXAttribute.string("nearest_mode", "floor")])
    }

    /// ONNX's SpaceToDepth, whose order (DCR: the block offset outermost) is Tensor.spaceToDepth's.
    public func spaceToDepth(blockSize: Int) -> ONNXValue {
        graph.node("SpaceToDepth", [name], shape: [shape[0], shape[1] * blockSize * blockSize, shape[2] / blockSize, shape[3] / blockSize],
                   attributes: [ONNXAttribute.int("blocksize", blockSize)])
    }

    /// ONNX's MaxRoiPool, whose quantisation (corners rounded to cells, bins floor/ceil) is Tensor.roiMaxPool's.
    public func roiMaxPool(rois: ONNXValue, outputHeight: Int, outputWidth: Int, spatialScale: Float) -> ONNXValue {
        precondition(shape.count == 4 && rois.shape.count == 2 && rois.shape[1] == 5, "roiMaxPool of \(shape) by rois \(rois.shape)")
        return graph.node("MaxRoiPool", [name, rois.name], shape: [rois.shape[0], shape[1], outputHeight, outputWidth], attributes: [
            ONNXAttribute.ints("pooled_shape", [outputHeight, outputWidth]), ONNXAttribute.float("spatial_scale", spatialScale)])
    }

    /// ONNX's RoiAlign (opset 16), mode avg: the regions' corners (columns 1-4) and their batch indices (column 0, cast
    /// to int64) as its two inputs; `aligned` is coordinate_transformation_mode half_pixel, otherwise
    /// output_half_pixel (no half-cell shift, regions widened to one cell), Tensor.roiAlign's two modes.
    public func roiAlign(rois: ONNXValue, outputHeight: Int, outputWidth: Int, spatialScale: Float, samplingRatio: Int,
                         aligned: Bool) -> ONNXValue {
        precondition(shape.count == 4 && rois.shape.count == 2 && rois.shape[1] == 5, "roiAlign of \(shape) by rois \(rois.shape)")
        graph.require(opset: 16)
        let r = rois.shape[0]
        let corners = rois.slice(axis: 1, 1..<5)
        let column = rois.slice(axis: 1, 0..<1).reshaped([r])
        let indices = graph.node("Cast", [column.name], name: "batch_indices", shape: [r],
                                 attributes: [ONNXAttribute.int("to", Int(Onnx_TensorProto.DataType.int64.rawValue))])
        return graph.node("RoiAlign", [name, corners.name, indices.name], shape: [r, shape[1], outputHeight, outputWidth], attributes: [
            ONNXAttribute.string("mode", "avg"), ONNXAttribute.int("output_height", outputHeight),
            ONNXAttribute.int("output_width", outputWidth), ONNXAttribute.int("sampling_ratio", samplingRatio),
            ONNXAttribute.float("spatial_scale", spatialScale),
            ONNXAttribute.string("coordinate_transformation_mode", aligned ? "half_pixel" : "output_half_pixel")])
    }

    /// ONNX pads [top, left, bottom, right] that give `output` windows with `before` leading padding.
    static func pads(input: (Int, Int), output: (Int, Int), before: (Int, Int), kernel: (Int, Int), stride: (Int, Int)) -> [Int] {
        // The trailing padding is whatever the last window needs beyond the input (never negative).
        let bottom = max((output.0 - 1) * stride.0 + kernel.0 - input.0 - before.0, 0)
        let right = max((output.1 - 1) * stride.1 + kernel.1 - input.1 - before.1, 0)
        return [before.0, before.1, bottom, right]
    }

    /// y = x W + b for x [N, in] and a Keras-layout kernel [in, out] (Gemm takes it as it is).
    public func applying(_ layer: Dense) -> ONNXValue {
        let w = graph.weight(layer.kernel), b = graph.weight(layer.bias)
        return graph.node("Gemm", [name, w.name, b.name], shape: [shape[0], layer.kernel.shape[1]])
    }

    /// An ONNX Conv (kernels are already [out, in, kh, kw]).
    public func applying(_ layer: Conv2D) -> ONNXValue {
        let (kernel, stride, dilation) = (layer.kernel, layer.stride, layer.dilation)
        let (kh, kw) = (kernel.shape[2], kernel.shape[3])
        let (k0, k1) = ((kh - 1) * dilation.0 + 1, (kw - 1) * dilation.1 + 1)
        let rows = layer.padding.window(size: shape[2], kernel: k0, stride: stride.0, vertical: true)
        let cols = layer.padding.window(size: shape[3], kernel: k1, stride: stride.1, vertical: false)
        let pads = Self.pads(input: (shape[2], shape[3]), output: (rows.output, cols.output), before: (rows.before, cols.before),
                             kernel: (k0, k1), stride: stride)
        let w = graph.weight(kernel), b = graph.weight(layer.bias)
        return graph.node("Conv", [name, w.name, b.name], shape: [shape[0], kernel.shape[0], rows.output, cols.output], attributes: [
            ONNXAttribute.ints("kernel_shape", [kh, kw]), ONNXAttribute.ints("strides", [stride.0, stride.1]),
            ONNXAttribute.ints("dilations", [dilation.0, dilation.1]), ONNXAttribute.ints("pads", pads)])
    }

    /// An ONNX ConvTranspose: the adjoint of the convolution of the output's size, so its padding is that
    /// convolution's, and output_padding supplies what the strided windows leave uncovered.
    public func applying(_ layer: Conv2DTranspose) -> ONNXValue {
        let (kernel, stride, padding) = (layer.kernel, layer.stride, layer.padding)
        let (kh, kw) = (kernel.shape[2], kernel.shape[3])
        let outH = padding.transposedOutput(size: shape[2], kernel: kh, stride: stride.0, vertical: true)
        let outW = padding.transposedOutput(size: shape[3], kernel: kw, stride: stride.1, vertical: false)
        let rows = padding.window(size: outH, kernel: kh, stride: stride.0, vertical: true)
        let cols = padding.window(size: outW, kernel: kw, stride: stride.1, vertical: false)
        let pads = Self.pads(input: (outH, outW), output: (shape[2], shape[3]), before: (rows.before, cols.before),
                             kernel: (kh, kw), stride: stride)
        // ONNX: out = stride * (in - 1) + output_padding + kernel - pad_begin - pad_end.
        let extra = [outH - (stride.0 * (shape[2] - 1) + kh - pads[0] - pads[2]), outW - (stride.1 * (shape[3] - 1) + kw - pads[1] - pads[3])]
        let w = graph.weight(kernel), b = graph.weight(layer.bias)
        return graph.node("ConvTranspose", [name, w.name, b.name], shape: [shape[0], kernel.shape[1], outH, outW], attributes: [
            ONNXAttribute.ints("kernel_shape", [kh, kw]), ONNXAttribute.ints("strides", [stride.0, stride.1]),
            ONNXAttribute.ints("pads", pads), ONNXAttribute.ints("output_padding", extra)])
    }

    /// Inference-mode batch norm on the moving statistics, whatever `training` says: an exported graph infers.
    public func applying(_ layer: BatchNormalization, training: Bool, crossReplicaSum: CrossReplicaSum?) -> ONNXValue {
        let inputs = [name, graph.weight(layer.gamma).name, graph.weight(layer.beta).name, graph.weight(layer.movingMean).name,
                      graph.weight(layer.movingVariance).name]
        return graph.node("BatchNormalization", inputs, shape: shape, attributes: [ONNXAttribute.float("epsilon", layer.epsilon)])
    }

    /// BatchNormalization then Elu: ONNX has no fused op, and the fusion only saves memory in training.
    public func applyingWithELU(_ layer: BatchNormalization, alpha: Float, training: Bool, crossReplicaSum: CrossReplicaSum?) -> ONNXValue {
        applying(layer, training: training, crossReplicaSum: crossReplicaSum).elu(alpha: alpha)
    }

    /// ONNX's LSTM, which runs time-major: [N, T, F] is transposed to [T, N, F] and the hidden states [T, N, H] back.
    /// ONNX orders the gates i, o, f, c where Keras has i, f, c, o, and keeps the weights transposed; its second bias
    /// (the recurrent one) is zero. The node's last hidden state (Y_h) is what `lastTimestep()` of the result gives.
    public func applying(_ layer: LSTMLayer) -> ONNXValue {
        let h = layer.units
        let order = [0, 3, 1, 2]   // ONNX gate k is Keras gate order[k]
        func gates(_ p: Parameter) -> [Float] {    // [rows, 4H] Keras -> [4H, rows] ONNX, gate blocks reordered
            let rows = p.shape[0], v = p.value.toArray()
            var out = [Float](repeating: 0, count: v.count)
            for (k, gate) in order.enumerated() { for j in 0..<h { for r in 0..<rows { out[(k * h + j) * rows + r] = v[r * 4 * h + gate * h + j] } } }
            return out
        }
        let b = layer.bias.value.toArray()
        var biases = [Float](repeating: 0, count: 8 * h)
        for (k, gate) in order.enumerated() { for j in 0..<h { biases[k * h + j] = b[gate * h + j] } }
        let (kernel, recurrentKernel, bias) = (layer.kernel, layer.recurrentKernel, layer.bias)
        let w = graph.constant(kernel.name, gates(kernel), shape: [1, 4 * h, kernel.shape[0]], key: "lstm \(kernel.name)")
        let r = graph.constant(recurrentKernel.name, gates(recurrentKernel), shape: [1, 4 * h, h], key: "lstm \(recurrentKernel.name)")
        let bb = graph.constant(bias.name, biases, shape: [1, 8 * h], key: "lstm \(bias.name)")
        let x = transposed([1, 0, 2])
        let (t, batch) = (x.shape[0], x.shape[1])
        precondition(batch < 0, "the LSTM's batch axis is the symbolic one")
        let outputs = graph.node("LSTM", [x.name, w.name, r.name, bb.name], names: ["lstm_states", "lstm_last"],
                                 shapes: [[t, 1, batch, h], [1, batch, h]], attributes: [ONNXAttribute.int("hidden_size", h)])
        let states = outputs[0].reshaped([t, -1, h]).transposed([1, 0, 2])
        graph.lastStates[states.name] = outputs[1].reshaped([-1, h])
        return states
    }
}
