/// How another framework lays out one of our weights: our values seen as an array of shape `view` (a reshape of
/// the parameter's shape), with that array's axes reordered by `axes` (their axis k is our view's axis axes[k]),
/// and the result reshaped to `shape`. Only ever a permutation of the values, so conversions both ways are exact.
package struct ForeignLayout: Equatable {
    package let view: [Int]
    package let axes: [Int]
    package let shape: [Int]

    package init(view: [Int], axes: [Int], shape: [Int]) {
        self.view = view
        self.axes = axes
        self.shape = shape
    }

    /// The same values in the same order, under another shape (or the same).
    package static func identical(_ shape: [Int]) -> ForeignLayout { ForeignLayout(view: shape, axes: Array(shape.indices), shape: shape) }

    /// A matrix transposed: [rows, cols] becomes [cols, rows].
    package static func transposed(_ shape: [Int]) -> ForeignLayout {
        precondition(shape.count == 2, "transposing a \(shape) array")
        return ForeignLayout(view: shape, axes: [1, 0], shape: [shape[1], shape[0]])
    }

    /// Our values in the foreign order.
    package func export(_ values: [Float]) -> [Float] { permuteAxes(values, shape: view, axes: axes) }

    /// Foreign values back in our order.
    package func `import`(_ values: [Float]) -> [Float] {
        var inverse = [Int](repeating: 0, count: axes.count)
        for (k, a) in axes.enumerated() { inverse[a] = k }
        return permuteAxes(values, shape: axes.map { view[$0] }, axes: inverse)
    }
}

/// The values of a row-major array of `shape` with its axes reordered: result axis k is input axis axes[k]
/// (numpy's `transpose(axes)`, then made contiguous).
package func permuteAxes(_ values: [Float], shape: [Int], axes: [Int]) -> [Float] {
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
