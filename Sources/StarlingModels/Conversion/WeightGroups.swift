import StarlingCore

/// One layer's weights, in the order Keras keeps them: the trained ones as declared (kernel, recurrent kernel,
/// bias; gamma, beta), then the buffers (moving mean, moving variance).
struct WeightGroup {
    struct Weight {
        let parameter: Parameter
        /// True for state that gradients do not train (batch norm's moving statistics).
        let isBuffer: Bool
        /// The name inside the layer: "kernel" for "conv1/kernel".
        var shortName: String { WeightGroup.shortName(parameter.name) }
    }

    let layer: String
    var weights: [Weight]

    subscript(short: String) -> Weight? { weights.first { $0.shortName == short } }

    /// The model's weights by layer, layers in the order their first weight was declared (the model's layer order).
    static func of(_ model: any Model) -> [WeightGroup] {
        var groups: [WeightGroup] = []
        var index: [String: Int] = [:]
        let all = model.parameters.parameters.map { Weight(parameter: $0, isBuffer: false) }
            + (model.buffers?.parameters ?? []).map { Weight(parameter: $0, isBuffer: true) }
        for weight in all {
            let layer = Checkpoint.layerName(weight.parameter.name)
            if let k = index[layer] {
                groups[k].weights.append(weight)
            } else {
                index[layer] = groups.count
                groups.append(WeightGroup(layer: layer, weights: [weight]))
            }
        }
        return groups
    }

    static func shortName(_ name: String) -> String {
        guard let slash = name.lastIndex(of: "/") else { return name }
        return String(name[name.index(after: slash)...])
    }
}

/// How another framework lays out one of our weights: our values seen as an array of shape `view` (a reshape of
/// the parameter's shape), with that array's axes reordered by `axes` (their axis k is our view's axis axes[k]),
/// and the result reshaped to `shape`. Only ever a permutation of the values, so conversions both ways are exact.
struct ForeignLayout: Equatable {
    let view: [Int]
    let axes: [Int]
    let shape: [Int]

    /// The same values in the same order, under another shape (or the same).
    static func identical(_ shape: [Int]) -> ForeignLayout { ForeignLayout(view: shape, axes: Array(shape.indices), shape: shape) }

    /// A matrix transposed: [rows, cols] becomes [cols, rows].
    static func transposed(_ shape: [Int]) -> ForeignLayout {
        precondition(shape.count == 2, "transposing a \(shape) array")
        return ForeignLayout(view: shape, axes: [1, 0], shape: [shape[1], shape[0]])
    }

    /// Our values in the foreign order.
    func export(_ values: [Float]) -> [Float] { permuteAxes(values, shape: view, axes: axes) }

    /// Foreign values back in our order.
    func `import`(_ values: [Float]) -> [Float] {
        var inverse = [Int](repeating: 0, count: axes.count)
        for (k, a) in axes.enumerated() { inverse[a] = k }
        return permuteAxes(values, shape: axes.map { view[$0] }, axes: inverse)
    }
}

/// The values of a row-major array of `shape` with its axes reordered: result axis k is input axis axes[k]
/// (numpy's `transpose(axes)`, then made contiguous).
func permuteAxes(_ values: [Float], shape: [Int], axes: [Int]) -> [Float] {
    precondition(values.count == shape.reduce(1, *) && axes.sorted() == Array(shape.indices), "permutation \(axes) of shape \(shape)")
    if axes == Array(shape.indices) { return values }
    var strides = [Int](repeating: 1, count: shape.count)
    for k in stride(from: shape.count - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * shape[k + 1] }
    let outShape = axes.map { shape[$0] }, outStrides = axes.map { strides[$0] }
    var out = [Float](repeating: 0, count: values.count)
    // An odometer over the output's index, tracking the matching input offset.
    var index = [Int](repeating: 0, count: shape.count)
    var source = 0
    for i in out.indices {
        out[i] = values[source]
        var k = shape.count - 1
        while k >= 0 {
            index[k] += 1
            source += outStrides[k]
            if index[k] < outShape[k] { break }
            source -= outStrides[k] * outShape[k]
            index[k] = 0
            k -= 1
        }
    }
    return out
}

extension Parameter {
    /// Overwrites the parameter's values with `values` (as many as it holds).
    func assign(_ values: [Float]) {
        precondition(values.count == count, "\(values.count) values for parameter \(name) of \(count)")
        let data = value.data
        for i in values.indices { data[i] = values[i] }
    }
}
