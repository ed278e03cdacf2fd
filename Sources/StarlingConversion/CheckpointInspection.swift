import Foundation
import StarlingCore
import StarlingIO
import StarlingNN
import StarlingTraining

/// `starling inspect`: what a checkpoint holds, read straight from the file (not through `Checkpoint.load`, which
/// stops at the first fault), and whether `load` and `train --resume` will accept it.
public struct CheckpointReport: Sendable {
    /// The description, line by line.
    public var lines: [String] = []
    /// Integrity faults, one line each; empty when the checkpoint is sound.
    public var problems: [String] = []
    public var text: String { lines.joined(separator: "\n") }
}

public enum CheckpointInspection {
    /// The optimizer state buffers each optimizer keeps (`Optimizer.state`).
    static let stateNames = ["adam": ["m", "v"], "adamw": ["m", "v"], "sgd": ["velocity"]]

    /// Describes the checkpoint at `path` and checks it: every weight of its model present with the right shape
    /// and finite, nothing else under /model_weights, optimizer state sized to the parameters and finite, the
    /// training counters present. Throws (one line) only when the file is not a readable Starling checkpoint at all.
    public static func inspect(_ path: String) throws -> CheckpointReport {
        var report = CheckpointReport()
        func line(_ text: String) { report.lines.append(text) }
        func problem(_ text: String) { report.problems.append(text) }
        let file = try HDF5File.open(path)
        defer { file.close() }
        let root = file.root
        guard root.hasAttribute("format"), try root.stringAttribute("format") == Checkpoint.format else {
            throw CheckpointError(file: path, message: "not a Starling checkpoint (no format attribute '\(Checkpoint.format)')")
        }
        let version = try root.intAttribute("format_version")
        let config = try root.jsonAttribute("model_config", as: ModelConfig.self)
        let model: any Model
        do { model = try ModelRegistry.build(config, seed: 0) } catch { throw CheckpointError(file: path, message: "model_config: \(error)") }

        line("checkpoint  \(path)")
        line("format      \(Checkpoint.format), version \(version)\(version == Checkpoint.formatVersion ? "" : " (this build reads version \(Checkpoint.formatVersion))")")
        if version != Checkpoint.formatVersion { problem("format version \(version); this build reads version \(Checkpoint.formatVersion)") }
        line("family      \(config.family)")
        line("input       \(config.inputShape)")
        if !config.options.isEmpty {
            line("options     " + config.options.keys.sorted().map { "\($0)=\(number(config.options[$0] ?? 0))" }.joined(separator: ", "))
        }
        if let names = config.classNames { line("classes     \(names.count): \(names.joined(separator: ", "))") }
        if let anchors = config.anchors {
            line("anchors     \(anchors.anchorCount) for \(anchors.imageHeight)x\(anchors.imageWidth): feature maps \(anchors.featureMapSizes), scales \(anchors.scales.map(number)), aspect ratios \(anchors.aspectRatios.map { $0.map(number) })")
        }
        if let sizes = config.anchorSizes {
            line("anchors     \(sizes.count) sizes (width x height, pixels): " + sizes.map { $0.map(number).joined(separator: "x") }.joined(separator: ", "))
        }

        // Weights: the table, then what the file holds beyond the model.
        line("")
        let expected = model.parameters.parameters.map { ($0, false) } + (model.buffers?.parameters ?? []).map { ($0, true) }
        var rows: [[String]] = [["weight", "shape", "count", "stored as", ""]]
        var trainable = 0, buffered = 0, storedBytes = 0
        var types = Set<String>()
        let weights = root.contains("model_weights") ? try root.group("model_weights") : nil
        if weights == nil { problem("no /model_weights group") }
        for (p, isBuffer) in expected {
            if isBuffer { buffered += p.count } else { trainable += p.count }
            guard let weights, weights.contains(p.name), let dataset = try? weights.dataset(p.name) else {
                rows.append([p.name, "\(p.shape)", "\(p.count)", "missing", isBuffer ? "buffer" : ""])
                problem("weight '\(p.name)' is missing (model \(config.family) needs shape \(p.shape))")
                continue
            }
            let type = "\(dataset.elementType)"
            types.insert(type)
            storedBytes += dataset.elementCount * dataset.elementType.byteSize
            rows.append([p.name, "\(dataset.shape)", "\(dataset.elementCount)", type, isBuffer ? "buffer" : ""])
            guard dataset.shape == p.shape else {
                problem("weight '\(p.name)' has shape \(dataset.shape); model \(config.family) needs \(p.shape)")
                continue
            }
            let values = try dataset.read(as: Float.self)
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                problem("weight '\(p.name)' holds a non-finite value (\(values[bad])) at index \(bad)")
            }
        }
        line(table(rows))
        if let weights {
            let known = Set(expected.map(\.0.name))
            for name in try datasetPaths(in: weights) where !known.contains(name) {
                problem("unexpected weight '\(name)' (model \(config.family) has no such weight)")
            }
        }
        line("totals      \(grouped(trainable)) trainable parameters in \(model.parameters.parameters.count) weights, \(grouped(buffered)) buffer values; \(grouped(storedBytes)) bytes stored as \(types.sorted().joined(separator: " and "))")

        // Optimizer.
        let stateGroup = root.contains("optimizer_state") ? try root.group("optimizer_state") : nil
        let stateNames = try stateGroup?.childNames() ?? []
        if root.hasAttribute("optimizer") {
            let optimizer = try root.jsonAttribute("optimizer", as: Checkpoint.OptimizerConfig.self)
            let buffers = stateNames.map { name -> String in
                let size = (try? stateGroup?.dataset(name).shape) ?? nil
                return "\(name) \(size.map { "\($0)" } ?? "(not a dataset)")"
            }
            line("optimizer   \(optimizer.name), learning rate \(optimizer.learningRate), \(optimizer.stepCount) steps; state: \(buffers.isEmpty ? "none" : buffers.joined(separator: ", "))")
            for name in Self.stateNames[optimizer.name] ?? [] where !stateNames.contains(name) {
                problem("optimizer \(optimizer.name) has no state '\(name)' (train --resume needs it)")
            }
            for name in stateNames {
                guard let dataset = try? stateGroup?.dataset(name) else { problem("optimizer state '\(name)' is not a dataset"); continue }
                guard dataset.elementCount == model.parameters.count else {
                    problem("optimizer state '\(name)' has \(dataset.elementCount) values for \(model.parameters.count) parameters")
                    continue
                }
                if let bad = try dataset.read(as: Float.self).firstIndex(where: { !$0.isFinite }) {
                    problem("optimizer state '\(name)' holds a non-finite value at index \(bad)")
                }
            }
        } else {
            line("optimizer   none (inference only: eval and predict read it, train --resume needs optimizer state)")
            if !stateNames.isEmpty { problem("optimizer state \(stateNames) without an optimizer attribute") }
        }

        // Training state: the counters `Checkpoint.load` requires.
        var counters: [String] = []
        for (key, label) in [("step", "step"), ("epoch", "epoch"), ("world_size", "world size"), ("data_cursor", "data cursor")] {
            if let value = try? root.intAttribute(key) { counters.append("\(label) \(value)") } else { problem("no integer attribute '\(key)'") }
        }
        if let seed = try? root.stringAttribute("seed") { counters.append("seed \(seed)") } else { problem("no attribute 'seed'") }
        if let best = try? root.doubleAttribute("best_validation_loss") {
            counters.append("best validation loss \(best.isFinite ? String(format: "%.6g", best) : "none")")
        } else {
            problem("no attribute 'best_validation_loss'")
        }
        line("training    \(counters.joined(separator: ", "))")
        if let step = try? root.intAttribute("step"), let epoch = try? root.intAttribute("epoch"), let world = try? root.intAttribute("world_size"),
           let cursor = try? root.intAttribute("data_cursor"), let best = try? root.doubleAttribute("best_validation_loss") {
            let optimizerSteps = (try? root.jsonAttribute("optimizer", as: Checkpoint.OptimizerConfig.self))?.stepCount
            for p in Checkpoint.counterProblems(step: step, epoch: epoch, worldSize: world, dataCursor: cursor,
                                                optimizerSteps: optimizerSteps, bestValidationLoss: best) { problem(p) }
        }
        if report.problems.isEmpty {
            line("integrity   ok: every weight present with its shape and finite" + (stateNames.isEmpty ? "" : ", optimizer state sized to the parameters"))
        } else {
            line("integrity   \(report.problems.count) problem(s):")
            for p in report.problems { line("  - \(p)") }
        }
        return report
    }

    /// Paths of every dataset below `group`, relative to it ("conv1/kernel").
    static func datasetPaths(in group: HDF5Group, prefix: String = "") throws -> [String] {
        var paths: [String] = []
        for name in try group.childNames() {
            let path = prefix.isEmpty ? name : "\(prefix)/\(name)"
            if (try? group.dataset(name)) != nil {
                paths.append(path)
            } else if let child = try? group.group(name) {
                paths += try datasetPaths(in: child, prefix: path)
            }
        }
        return paths
    }

    /// Left-aligned columns.
    static func table(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
        return rows.map { row in
            row.indices.map { c in row[c].padding(toLength: widths[c], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.map { "  " + $0 }.joined(separator: "\n")
    }

    /// 1234567 -> "1,234,567".
    static func grouped(_ n: Int) -> String {
        let digits = String(n)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return out
    }

    /// A number without a trailing ".0" when it is whole.
    static func number(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : "\(x)"
    }
}
