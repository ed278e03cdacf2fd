import StarlingCore
import StarlingNN
import StarlingTraining

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

extension Parameter {
    /// Overwrites the parameter's values with `values` (as many as it holds).
    func assign(_ values: [Float]) {
        precondition(values.count == count, "\(values.count) values for parameter \(name) of \(count)")
        let data = value.data
        for i in values.indices { data[i] = values[i] }
    }
}
