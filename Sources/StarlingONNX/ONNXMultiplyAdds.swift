import ONNXProto

extension ONNXGraph {
    /// Multiply-adds of one image through the graph's convolutions, transposed convolutions, fully connected layers,
    /// matrix products and LSTMs (what `bench --suite` turns into FLOP/s: 2 FLOPs each, the usual count that leaves out
    /// element-wise ops, pooling and normalisation). Counted from the static shapes the graph was built with, the
    /// symbolic batch axis (-1) standing for one image.
    public var multiplyAddsPerImage: Double {
        var dims: [String: [Int]] = [:]
        for t in initializers { dims[t.name] = t.dims.map(Int.init) }
        func shape(_ name: String) -> [Int]? { shapes[name] ?? dims[name] }
        /// A shape's element count with the symbolic batch as one.
        func elements(_ s: [Int]) -> Double { s.reduce(1.0) { $0 * Double(max($1, 1)) } }
        var total = 0.0
        for node in nodes {
            switch node.opType {
            case "Conv":
                // Kernel [out, in / groups, kh, kw] once per output pixel.
                guard node.input.count >= 2, let w = shape(node.input[1]), w.count == 4, let out = shape(node.output[0]), out.count == 4 else { continue }
                total += elements(Array(out.dropFirst(2))) * elements(w)
            case "ConvTranspose":
                // Kernel [in, out / groups, kh, kw] once per input pixel.
                guard node.input.count >= 2, let w = shape(node.input[1]), w.count == 4, let x = shape(node.input[0]), x.count == 4 else { continue }
                total += elements(Array(x.dropFirst(2))) * elements(w)
            case "Gemm", "MatMul":
                // [.., K] x [K, M]: K multiply-adds per output element.
                guard node.input.count >= 2, let a = shape(node.input[0]), let out = shape(node.output[0]), let k = a.last else { continue }
                total += elements(out) * Double(max(k, 1))
            case "LSTM":
                // X [T, N, F] and the hidden size H: four gates over [x, h] at each of T steps.
                guard node.input.count >= 3, let x = shape(node.input[0]), x.count == 3, let r = shape(node.input[2]), r.count == 3 else { continue }
                let (steps, features, hidden) = (Double(x[0]), Double(x[2]), Double(r[2]))
                total += steps * 4 * hidden * (features + hidden)
            default:
                continue
            }
        }
        return total
    }
}
