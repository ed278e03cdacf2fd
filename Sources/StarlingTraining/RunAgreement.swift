import Foundation
import StarlingCore
import StarlingDistributed
import StarlingNN
import StarlingData

/// Ranks agree on everything that changes the computation before any of it is exchanged.
///
/// Ranks started with different settings would otherwise train silently apart (another weight decay, another data
/// file) or reach a collective with buffers of different sizes (Adam's two moment buffers against SGD's one), which
/// Open MPI answers with a segmentation fault rather than an error. So each rank hashes each setting, and the hashes
/// travel in one allgather of a fixed number of integers, the same on every rank whatever the settings hold; only
/// the settings that differ are then exchanged in full (their lengths first, then their text padded to the longest),
/// and every rank refuses the run with the same line, naming the settings and which rank holds what.
public struct RunAgreement {
    /// One setting as a rank sees it: what the user would call it, and its value as text.
    public struct Setting: Equatable, Sendable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    /// The hashes exchanged per rank: the list of setting names, then one per setting (unused slots stay 0).
    static let slots = 48
    /// Samples read from each data file for its fingerprint, spread over the file.
    static let fingerprintSamples = 4
    /// The longest value a refusal quotes (a model configuration is JSON of some length).
    static let quotedLength = 160

    public let settings: [Setting]

    public init(settings: [Setting]) {
        precondition(settings.count < Self.slots, "RunAgreement holds at most \(Self.slots - 1) settings")
        self.settings = settings
    }

    /// The settings of a training run: the flags that change the computation, the model, the resume checkpoint, and
    /// each data file's shape with a sample of its contents. Settings that change only where or how much is
    /// printed or written (`--out`, `--watchdog-seconds`, `--blas-threads`) may differ between ranks.
    public init(model: any Model, optimizer: any Optimizer, options: TrainingOptions, train: any TrainingSource,
                validation: (any TrainingSource)?, stepsPerEpoch: Int) throws {
        let encoder = JSONEncoder()
        // Sorted keys: a dictionary's printed order differs from process to process (hashing is seeded per process).
        encoder.outputFormatting = [.sortedKeys]
        let list: [Setting] = [
            Setting("the model configuration", String(decoding: try encoder.encode(model.config), as: UTF8.self)),
            Setting("the parameter count", "\(model.parameters.count)"),
            Setting("--optimizer", Self.describe(optimizer)),
            Setting("--batch-size", "\(options.batchSize)"),
            Setting("--lr", "\(options.learningRate)"),
            Setting("the learning-rate schedule", options.schedule.summary),
            Setting("--seed", "\(options.seed)"),
            Setting("--epochs", "\(options.epochs)"),
            Setting("the steps per epoch", "\(stepsPerEpoch)"),
            Setting("--max-steps", options.maxSteps.map { "\($0)" } ?? "none"),
            Setting("--val-limit", options.validationLimit.map { "\($0)" } ?? "none"),
            Setting("--checkpoint-every", options.checkpointEverySteps.map { "\($0)" } ?? "none"),
            Setting("--early-stopping", options.earlyStoppingPatience.map { "\($0)" } ?? "none"),
            Setting("--min-delta", "\(options.minDelta)"),
            Setting("--plateau-patience", options.reduceOnPlateau.map { "\($0)" } ?? "none"),
            Setting("--sync-bn", "\(options.synchronizeBatchNorm)"),
            Setting("--bucket-mb", "\(options.bucketBytes)"),
            Setting("--gradient-precision", options.gradientWire.rawValue),
            Setting("--shard-optimizer", "\(options.shardOptimizer)"),
            Setting("--skip-nonfinite", "\(options.skipNonFinite)"),
            Setting("--resume", options.resumePath ?? "none"),
            Setting("the resume checkpoint's contents", options.resumePath.map { Self.fileFingerprint($0) } ?? "none"),
            Setting("the training data", try Self.fingerprint(train, model: model)),
            Setting("the validation data", try validation.map { try Self.fingerprint($0, model: model) } ?? "none"),
        ]
        self.init(settings: list)
    }

    /// The optimizer and every hyperparameter that changes its update.
    static func describe(_ optimizer: any Optimizer) -> String {
        switch optimizer {
        case let adam as Adam:
            return "\(adam.decoupled ? "adamw" : "adam") beta1=\(adam.beta1) beta2=\(adam.beta2) epsilon=\(adam.epsilon) weight-decay=\(adam.weightDecay)"
        case let sgd as SGD:
            return "sgd momentum=\(sgd.momentum) nesterov=\(sgd.nesterov) weight-decay=\(sgd.weightDecay)"
        default:
            return String(describing: type(of: optimizer))
        }
    }

    /// A data file's split, size and sample shape, and a hash of a few of its samples as the model reads them
    /// (images, labels, boxes, masks; without augmentation). Two files that agree here hold the same data to every
    /// purpose a user would mix them up for: the same set converted twice, or one file copied to every host.
    static func fingerprint(_ source: any TrainingSource, model: any Model) throws -> String {
        let n = source.count
        let picks = n == 0 ? [] : Array(Set((0..<fingerprintSamples).map { $0 * (n - 1) / max(1, fingerprintSamples - 1) })).sorted()
        var hash = FNV1a()
        if !picks.isEmpty {
            let batch = try source.batch(indices: picks, epoch: 0, training: false, config: model.config)
            batch.images.toArray().withUnsafeBytes { hash.add($0) }
            if let labels = batch.labels { labels.withUnsafeBytes { hash.add($0) } }
            for objects in batch.objects ?? [] {
                for o in objects {
                    var fields = [o.box.xmin, o.box.ymin, o.box.xmax, o.box.ymax, Float(o.classID), o.difficult ? 1 : 0]
                    fields.withUnsafeMutableBytes { hash.add(UnsafeRawBufferPointer($0)) }
                }
            }
            if let maps = batch.segmentation { maps.classes.withUnsafeBytes { hash.add($0) } }
        }
        return "split \(source.split), \(n) samples of \(source.datasetDescription.sampleShape), content hash \(String(hash.value, radix: 16))"
    }

    /// A checkpoint's size and a hash of its first, middle and last MiB (its step and counters live in the
    /// first). Only rank 0 reads the checkpoint, but a rank told to resume from another file (or none) would train a
    /// different run; a rank on a host without the file says so, and that is a difference too, since `--resume`
    /// names the same path on every rank.
    static func fileFingerprint(_ path: String) -> String {
        guard let file = FileHandle(forReadingAtPath: path) else { return "not readable on this rank" }
        defer { try? file.close() }
        guard let size = try? file.seekToEnd() else { return "not readable on this rank" }
        let piece: UInt64 = 1 << 20
        var hash = FNV1a()
        for offset in Set([0, size / 2, size > piece ? size - piece : 0]).sorted() {
            guard (try? file.seek(toOffset: offset)) != nil, let data = try? file.read(upToCount: Int(piece)) else { return "not readable on this rank" }
            data.withUnsafeBytes { hash.add($0) }
        }
        return "\(size) bytes, hash \(String(hash.value, radix: 16))"
    }

    /// Compares the settings over every rank; throws the same refusal on every rank if any differs.
    public func check(on world: any Collective) throws {
        guard world.size > 1 else { return }
        var mine = [Int64](repeating: 0, count: Self.slots)
        var names = FNV1a()
        for s in settings { names.add(s.name) }
        mine[0] = Int64(bitPattern: names.value)
        for (i, s) in settings.enumerated() {
            var h = FNV1a()
            h.add(s.value)
            mine[i + 1] = Int64(bitPattern: h.value)
        }
        let all = try world.allgather(mine)
        let column = { (slot: Int) in (0..<world.size).map { all[$0 * Self.slots + slot] } }
        let layouts = column(0)
        guard Set(layouts).count == 1 else {
            let odd = layouts.indices.filter { layouts[$0] != layouts[0] }
            throw AgreedRefusal("ranks \(odd.map(String.init).joined(separator: ", ")) run a different build of Starling from rank 0 (their lists of settings differ); refusing to train")
        }
        let differing = settings.indices.filter { Set(column($0 + 1)).count > 1 }
        guard !differing.isEmpty else { return }
        var parts: [String] = []
        for i in differing {
            // Every rank knows `differing` from the same table, so all of them make these calls in the same order.
            let values = try world.allgatherText(settings[i].value)
            var groups: [(value: String, ranks: [Int])] = []
            for (rank, value) in values.enumerated() {
                if let g = groups.firstIndex(where: { $0.value == value }) { groups[g].ranks.append(rank) } else { groups.append((value, [rank])) }
            }
            let described = groups.map { g in
                let quoted = g.value.count > Self.quotedLength ? String(g.value.prefix(Self.quotedLength)) + "..." : g.value
                return "\(g.ranks.count == 1 ? "rank" : "ranks") \(g.ranks.map(String.init).joined(separator: ", ")) \(g.ranks.count == 1 ? "has" : "have") \(quoted)"
            }
            parts.append("\(settings[i].name): \(described.joined(separator: "; "))")
        }
        throw AgreedRefusal("ranks were started with different configurations, refusing to train: \(parts.joined(separator: " | "))")
    }
}

/// A refusal every rank reaches at the same point with the same message (from values all ranks agree on): the
/// command can end every rank cleanly, rank 0 printing the line, instead of aborting the job from one rank.
public struct AgreedRefusal: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// FNV-1a, 64 bits: a hash that is the same in every process (Swift's `Hasher` is seeded per process).
struct FNV1a {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ bytes: UnsafeRawBufferPointer) {
        for b in bytes { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 }
    }
    mutating func add(_ text: String) {
        var copy = text
        copy.withUTF8 { add(UnsafeRawBufferPointer($0)) }
        value = value &* 0x100_0000_01b3   // a zero byte ends each text, so that ("ab", "c") and ("a", "bc") differ
    }
}
