import Foundation
import Yams

/// A training run described in a YAML file (`starling train --config FILE`).
///
/// The file is turned into `train` flags placed before the command line's own, so a flag given on the command line
/// wins (ArgumentParser keeps an option's last value, and the last of `--flag`/`--no-flag`), the file comes next
/// and the flags' defaults last. Every key is checked against `RunConfiguration.keys` before anything runs: an
/// unknown key or a value of the wrong type stops with one line naming the key and the file. Reading the flags back
/// from the parsed command (`resolved(from:)`) gives the run's whole configuration, which the trainer writes beside
/// its checkpoints and into them.
///
/// Layout: sections `model`, `data`, `optimizer`, `schedule`, `callbacks`, `checkpoints` and `launch`, each a
/// mapping of the keys below (`model.options` a mapping of the family's options to numbers). `null` leaves a key
/// unset. Paths are read as on the command line, from the working directory.
enum RunConfiguration {
    enum Kind {
        case integer, number, text
        /// A flag with a `--no-` inversion: true and false both reach the command, so the command line can undo the file.
        case toggle
        /// `model.options`: a mapping of names to numbers, each `--option NAME=VALUE`.
        case familyOptions

        var typeName: String {
            switch self {
            case .integer: return "an integer"
            case .number: return "a number"
            case .text: return "a string"
            case .toggle: return "true or false"
            case .familyOptions: return "a mapping of option names to numbers"
            }
        }
    }

    /// One key of the file: where it sits, the `train` flag it stands for, its type, and how to read its resolved
    /// value back from the parsed command (nil: unset).
    struct Key: Sendable {
        let section: String
        let name: String
        let flag: String
        let kind: Kind
        let read: @Sendable (TrainCommand) -> Node?

        var path: String { "\(section).\(name)" }
    }

    private static func int(_ x: Int?) -> Node? { x.map { Node(String($0), Tag(.int)) } }
    private static func number(_ x: Double?) -> Node? { x.map { Node("\($0)", Tag(.float)) } }
    private static func number(_ x: Float?) -> Node? { x.map { Node("\($0)", Tag(.float)) } }
    private static func text(_ x: String?) -> Node? { x.map { Node($0, Tag(.str)) } }
    private static func bool(_ x: Bool?) -> Node? { x.map { Node($0 ? "true" : "false", Tag(.bool)) } }

    /// Every key a file may hold, in the order the resolved configuration lists them.
    static let keys: [Key] = [
        Key(section: "model", name: "name", flag: "--model", kind: .text) { text($0.model) },
        Key(section: "model", name: "width_multiplier", flag: "--width-multiplier", kind: .number) { number($0.widthMultiplier) },
        Key(section: "model", name: "depth_multiplier", flag: "--depth-multiplier", kind: .number) { number($0.depthMultiplier) },
        Key(section: "model", name: "network_size", flag: "--network-size", kind: .text) { text($0.networkSize) },
        Key(section: "model", name: "anchors_from", flag: "--anchors-from", kind: .text) { text($0.anchorsFrom) },
        Key(section: "model", name: "passthrough", flag: "--passthrough", kind: .toggle) { bool($0.passthrough) },
        Key(section: "model", name: "options", flag: "--option", kind: .familyOptions) { command in
            // The value a family applies last, once per name (a mapping cannot repeat a key).
            var names: [String] = [], values: [String: Double] = [:]
            for setting in command.familyOptions {
                let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, let value = Double(parts[1]) else { continue }
                if values[parts[0]] == nil { names.append(parts[0]) }
                values[parts[0]] = value
            }
            return Node(names.map { (Node($0, Tag(.str)), Node("\(values[$0] ?? 0)", Tag(.float))) })
        },
        Key(section: "data", name: "path", flag: "--data", kind: .text) { text($0.data) },
        Key(section: "data", name: "train_split", flag: "--train-split", kind: .text) { text($0.trainSplit) },
        Key(section: "data", name: "val_split", flag: "--val-split", kind: .text) { text($0.valSplit) },
        Key(section: "data", name: "val_limit", flag: "--val-limit", kind: .integer) { int($0.flags.valLimit) },
        Key(section: "data", name: "augment", flag: "--augment", kind: .toggle) { bool($0.augment) },
        Key(section: "data", name: "elastic", flag: "--elastic", kind: .toggle) { bool($0.elastic) },
        Key(section: "data", name: "photometric", flag: "--photometric", kind: .toggle) { bool($0.photometric) },
        Key(section: "optimizer", name: "name", flag: "--optimizer", kind: .text) { text($0.flags.optimizer) },
        Key(section: "optimizer", name: "lr", flag: "--lr", kind: .number) { number($0.flags.lr) },
        Key(section: "optimizer", name: "momentum", flag: "--momentum", kind: .number) { number($0.flags.momentum) },
        Key(section: "optimizer", name: "weight_decay", flag: "--weight-decay", kind: .number) { number($0.flags.weightDecay) },
        Key(section: "schedule", name: "epochs", flag: "--epochs", kind: .integer) { int($0.flags.epochs) },
        Key(section: "schedule", name: "batch_size", flag: "--batch-size", kind: .integer) { int($0.flags.batchSize) },
        Key(section: "schedule", name: "steps_per_epoch", flag: "--steps-per-epoch", kind: .integer) { int($0.flags.stepsPerEpoch) },
        Key(section: "schedule", name: "max_steps", flag: "--max-steps", kind: .integer) { int($0.flags.maxSteps) },
        Key(section: "schedule", name: "seed", flag: "--seed", kind: .integer) { $0.flags.seed <= UInt64(Int.max) ? int(Int($0.flags.seed)) : text(String($0.flags.seed)) },
        Key(section: "schedule", name: "lr_schedule", flag: "--lr-schedule", kind: .text) { text($0.flags.lrSchedule) },
        Key(section: "schedule", name: "warmup_epochs", flag: "--warmup-epochs", kind: .number) { number($0.flags.warmupEpochs) },
        Key(section: "schedule", name: "step_every", flag: "--step-every", kind: .integer) { int($0.flags.stepEvery) },
        Key(section: "schedule", name: "step_factor", flag: "--step-factor", kind: .number) { number($0.flags.stepFactor) },
        Key(section: "schedule", name: "cosine_min_lr", flag: "--cosine-min-lr", kind: .number) { number($0.flags.cosineMinLr) },
        Key(section: "callbacks", name: "early_stopping", flag: "--early-stopping", kind: .integer) { int($0.flags.earlyStopping) },
        Key(section: "callbacks", name: "min_delta", flag: "--min-delta", kind: .number) { number($0.flags.minDelta) },
        Key(section: "callbacks", name: "plateau_patience", flag: "--plateau-patience", kind: .integer) { int($0.flags.plateauPatience) },
        Key(section: "callbacks", name: "plateau_factor", flag: "--plateau-factor", kind: .number) { number($0.flags.plateauFactor) },
        Key(section: "callbacks", name: "min_lr", flag: "--min-lr", kind: .number) { number($0.flags.minLr) },
        Key(section: "callbacks", name: "tensorboard", flag: "--tensorboard", kind: .text) { text($0.flags.tensorboard) },
        Key(section: "checkpoints", name: "out", flag: "--out", kind: .text) { text($0.flags.out) },
        Key(section: "checkpoints", name: "every", flag: "--checkpoint-every", kind: .integer) { int($0.flags.checkpointEvery) },
        Key(section: "checkpoints", name: "keep", flag: "--keep-checkpoints", kind: .integer) { int($0.flags.keepCheckpoints) },
        Key(section: "checkpoints", name: "resume", flag: "--resume", kind: .text) { text($0.resume) },
        Key(section: "launch", name: "ranks", flag: "--ranks", kind: .integer) { int($0.ranks) },
        Key(section: "launch", name: "blas_threads", flag: "--blas-threads", kind: .integer) { int($0.flags.blasThreads) },
        Key(section: "launch", name: "replicas", flag: "--replicas", kind: .integer) { int($0.replicas) },
        Key(section: "launch", name: "bucket_mb", flag: "--bucket-mb", kind: .number) { number($0.flags.bucketMb) },
        Key(section: "launch", name: "gradient_precision", flag: "--gradient-precision", kind: .text) { text($0.flags.gradientPrecision) },
        Key(section: "launch", name: "sync_bn", flag: "--sync-bn", kind: .toggle) { bool($0.flags.syncBn) },
        Key(section: "launch", name: "shard_optimizer", flag: "--shard-optimizer", kind: .toggle) { bool($0.flags.shardOptimizer) },
        Key(section: "launch", name: "watchdog_seconds", flag: "--watchdog-seconds", kind: .number) { number($0.flags.watchdogSeconds) },
    ]

    static var sections: [String] {
        var seen: [String] = []
        for key in keys where !seen.contains(key.section) { seen.append(key.section) }
        return seen
    }

    struct Failure: Error, CustomStringConvertible {
        let file: String
        let message: String
        var description: String { "\(file): \(message)" }
    }

    /// The `train` flags a configuration file stands for, in the order of `keys`.
    static func arguments(fromFile path: String) throws -> [String] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw Failure(file: path, message: "cannot read the configuration: \(error.localizedDescription)")
        }
        return try arguments(fromYAML: text, file: path)
    }

    static func arguments(fromYAML text: String, file: String) throws -> [String] {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            let oneLine = "\(error)".split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
            throw Failure(file: file, message: "not valid YAML: \(oneLine)")
        }
        guard let root else { return [] }   // an empty file sets nothing
        guard let top = root.mapping else {
            throw Failure(file: file, message: "a configuration is a mapping of the sections \(sections.joined(separator: ", "))")
        }
        var given: [String: Node] = [:]
        for (sectionNode, body) in top {
            guard let section = sectionNode.scalar?.string, sections.contains(section) else {
                throw Failure(file: file, message: "unknown key '\(sectionNode.scalar?.string ?? "?")' (sections: \(sections.joined(separator: ", ")))")
            }
            if body.tagName == .null { continue }
            guard let entries = body.mapping else { throw Failure(file: file, message: "key '\(section)' must be a mapping") }
            for (nameNode, value) in entries {
                let name = nameNode.scalar?.string ?? "?"
                guard keys.contains(where: { $0.section == section && $0.name == name }) else {
                    let known = keys.filter { $0.section == section }.map(\.name).joined(separator: ", ")
                    throw Failure(file: file, message: "unknown key '\(section).\(name)' (\(section) takes \(known))")
                }
                given["\(section).\(name)"] = value
            }
        }
        var arguments: [String] = []
        for key in keys {
            guard let value = given[key.path], value.tagName != .null else { continue }
            arguments += try flags(for: key, value: value, file: file)
        }
        return arguments
    }

    private static func flags(for key: Key, value: Node, file: String) throws -> [String] {
        let wrongType = Failure(file: file, message: "key '\(key.path)' must be \(key.kind.typeName), not '\(describe(value))'")
        if key.kind == .familyOptions {
            guard let entries = value.mapping else { throw wrongType }
            return try entries.flatMap { name, number -> [String] in
                guard let option = name.scalar?.string, [.int, .float].contains(number.tagName), let x = number.float else {
                    throw Failure(file: file, message: "key '\(key.path).\(name.scalar?.string ?? "?")' must be a number, not '\(describe(number))'")
                }
                return [key.flag, "\(option)=\(x)"]
            }
        }
        guard let scalar = value.scalar else { throw wrongType }
        switch key.kind {
        case .integer:
            guard value.tagName == .int, let x = value.int else { throw wrongType }
            return [key.flag, String(x)]
        case .number:
            guard [.int, .float].contains(value.tagName), let x = value.float, x.isFinite else { throw wrongType }
            return [key.flag, "\(x)"]
        case .text:
            // Numbers are refused rather than read as text: `val_split: 1` is a mistake, not a split named "1".
            guard value.tagName == .str else { throw wrongType }
            return [key.flag, scalar.string]
        case .toggle:
            guard value.tagName == .bool, let on = value.bool else { throw wrongType }
            return [on ? key.flag : "--no-" + key.flag.dropFirst(2)]
        case .familyOptions:
            return []   // handled above
        }
    }

    private static func describe(_ node: Node) -> String {
        if let scalar = node.scalar { return scalar.string }
        if node.mapping != nil { return "a mapping" }
        return "a list"
    }

    /// The run's whole configuration as YAML, read back from the parsed command: the file's keys, the command
    /// line's flags over them and every default, so the file alone reproduces the run (`--config` on it).
    static func resolved(from command: TrainCommand, source: String?) throws -> String {
        var sectionPairs: [(Node, Node)] = []
        for section in sections {
            let pairs = keys.filter { $0.section == section }.map { key -> (Node, Node) in
                (Node(key.name, Tag(.str)), key.read(command) ?? Node("null", Tag(.null)))
            }
            sectionPairs.append((Node(section, Tag(.str)), Node(pairs)))
        }
        let header = "# The resolved configuration of a `starling train` run" + (source.map { " (from \($0) and the command line)" } ?? " (from the command line)") +
            ".\n# `starling train --config THIS_FILE` repeats it.\n"
        return header + (try Yams.serialize(node: Node(sectionPairs), sortKeys: false))
    }

    /// `train` arguments with any `--config FILE` expanded: the file's flags first, the command line's after them.
    /// Other subcommands pass through unchanged.
    static func expand(_ arguments: [String]) throws -> [String] {
        guard arguments.first == "train" else { return arguments }
        var rest = Array(arguments.dropFirst())
        var files: [String] = []
        var index = 0
        while index < rest.count {
            let argument = rest[index]
            if argument == "--config", index + 1 < rest.count {
                files.append(rest[index + 1])
                index += 2
            } else if argument.hasPrefix("--config=") {
                files.append(String(argument.dropFirst("--config=".count)))
                index += 1
            } else {
                index += 1
            }
        }
        guard let file = files.last else { return arguments }
        if files.count > 1 { throw Failure(file: file, message: "--config is given \(files.count) times; give one file") }
        // `--config FILE` stays in the arguments so that the command records where its settings came from.
        rest = try self.arguments(fromFile: file) + rest
        return ["train"] + rest
    }
}

extension Node {
    /// The resolved tag (int, float, bool, str, null, ...), which tells `5`, `5.0`, `"5"` and `true` apart.
    fileprivate var tagName: Tag.Name { Tag.Name(rawValue: tag.rawValue) }
}
