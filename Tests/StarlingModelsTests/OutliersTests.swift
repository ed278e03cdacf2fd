import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

/// A briefly trained fc-ae (5 steps on the committed sample) shared by the outlier, index and plot tests.
enum TrainedFixture {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var trained: (data: String, checkpoint: String)?

    static func fcAE() throws -> (data: String, checkpoint: String) {
        try lock.withLock {
            if let trained { return trained }
            let data = try Fixture.sampleHDF5()
            let dir = Fixture.temporaryDirectory("trained-fc-ae")
            let run = try starling("train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "3",
                                   "--batch-size", "64", "--val-limit", "128", "--out", dir)
            guard run.status == 0 else { throw DataError(file: dir, message: "training the fixture failed: \(run.error)") }
            trained = (data, dir + "/fc-ae-best.h5")
            return (data, dir + "/fc-ae-best.h5")
        }
    }

    /// A test split of `count` random images of `height` x `width`, with or without labels, in its own file.
    static func smallDataset(height: Int = 28, width: Int = 28, count: Int = 6, labels: Bool) throws -> String {
        let path = Fixture.temporaryDirectory("small-data") + "/data.h5"
        var rng = RandomGenerator(seed: 11)
        let pixels = (0..<(count * height * width)).map { _ in UInt8(rng.next() % 256) }
        try writeHDF5Atomically(to: path) { file in
            try file.root.createDataset("test/images", type: .uint8, shape: [count, height, width]).write(pixels)
            if labels { try file.root.createDataset("test/labels", type: .uint8, shape: [count]).write((0..<count).map { UInt8($0 % 10) }) }
        }
        return path
    }
}

/// Expects a failed run: non-zero exit, one line on stderr containing `words`, no crash report. Flag mistakes
/// (`usage: true`) are caught by the argument parser, which follows its one-line message with the usage.
func expectCleanFailure(_ r: Run, mentioning words: [String], usage: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(r.status != 0, "expected failure, got: \(r.output)", sourceLocation: sourceLocation)
    let message = r.error.trimmingCharacters(in: .whitespacesAndNewlines)
    let first = message.split(separator: "\n").first.map(String.init) ?? ""
    for w in words { #expect(first.contains(w), "'\(message)' lacks '\(w)'", sourceLocation: sourceLocation) }
    #expect(usage || !message.contains("\n"), "more than one line: \(message)", sourceLocation: sourceLocation)
    #expect(!message.contains("Fatal error") && !message.contains("Stack dump"), "\(message)", sourceLocation: sourceLocation)
}

@Suite struct OutliersTests {
    // MARK: ROC AUC

    /// Hand cases; the arithmetic is in the comments (pairs are (positive, negative)).
    @Test func rocAUCHandCases() {
        // Positives 0.35, 0.8; negatives 0.1, 0.4. Pairs won: 0.35>0.1, 0.8>0.1, 0.8>0.4; lost: 0.35<0.4. 3/4.
        #expect(ROCAUC.auc(scores: [0.1, 0.4, 0.35, 0.8], positives: [false, false, true, true]) == 0.75)
        // All scores equal: every pair a tie, 4 x 1/2 over 4 pairs.
        #expect(ROCAUC.auc(scores: [1, 1, 1, 1], positives: [true, false, true, false]) == 0.5)
        // Positives 1, 2; negatives 0, 1. (1,0) won, (1,1) tie = 1/2, (2,0) and (2,1) won: 3.5/4.
        #expect(ROCAUC.auc(scores: [0, 1, 1, 2], positives: [false, true, false, true]) == 0.875)
        // Perfect and reversed rankings, in any input order.
        #expect(ROCAUC.auc(scores: [5, 1, 7, 2], positives: [true, false, true, false]) == 1)
        #expect(ROCAUC.auc(scores: [5, 1, 7, 2], positives: [false, true, false, true]) == 0)
        // One positive above two of three negatives and tied with the third: (2 + 1/2) / 3.
        #expect(ROCAUC.auc(scores: [3, 1, 2, 3], positives: [true, false, false, false]) == 2.5 / 3)
        // Undefined without either class.
        #expect(ROCAUC.auc(scores: [1, 2], positives: [true, true]) == nil)
        #expect(ROCAUC.auc(scores: [1, 2], positives: [false, false]) == nil)
        #expect(ROCAUC.auc(scores: [], positives: []) == nil)
    }

    /// Against the definition: count every (positive, negative) pair, ties as half, on sets with many ties.
    @Test func rocAUCMatchesPairwiseCount() {
        var rng = RandomGenerator(seed: 5)
        for trial in 0..<20 {
            let n = 1 + Int(rng.next() % 150)
            let levels = trial % 2 == 0 ? 4 : 1000   // few distinct scores: many ties; many: few
            let scores = (0..<n).map { _ in Double(rng.next() % UInt64(levels)) / 7 }
            let positives = (0..<n).map { _ in rng.next() % 3 == 0 }
            var wins = 0.0, pairs = 0.0
            for i in 0..<n where positives[i] {
                for j in 0..<n where !positives[j] {
                    pairs += 1
                    wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0
                }
            }
            let auc = ROCAUC.auc(scores: scores, positives: positives)
            if pairs == 0 { #expect(auc == nil) } else { #expect(abs((auc ?? -1) - wins / pairs) < 1e-12, "trial \(trial)") }
        }
    }

    // MARK: Scores

    /// Per-image BCE sums and MSE against the core's BCE op on each image and a plain Double computation.
    @Test func perImageErrorsMatchIndependentComputations() {
        var rng = RandomGenerator(seed: 9)
        let (n, pixels) = (3, 10)
        let logitValues = (0..<(n * pixels)).map { _ in rng.uniform(-30, 30) }   // large |logit| too
        let imageValues = (0..<(n * pixels)).map { _ in rng.uniform() }
        let (bce, mse) = OutlierScores.perImageErrors(logits: Tensor(shape: [n, pixels], values: logitValues),
                                                      images: Tensor(shape: [n, pixels], values: imageValues))
        for i in 0..<n {
            let row = (i * pixels)..<((i + 1) * pixels)
            let op = Double(Tensor(shape: [1, pixels], values: Array(logitValues[row]))
                .binaryCrossEntropy(logits: Tensor(shape: [1, pixels], values: Array(imageValues[row]))).item) * Double(pixels)
            var plain = 0.0, squared = 0.0
            for j in row {
                let z = Double(logitValues[j]), x = Double(imageValues[j])
                // -x log s - (1 - x) log(1 - s) with log s = -log(1 + e^-z), log(1 - s) = -z - log(1 + e^-z).
                let logOnePlus = z > 0 ? log(1 + exp(-z)) : -z + log(1 + exp(z))   // log(1 + e^-z), both signs stable
                plain += x * logOnePlus + (1 - x) * (z + logOnePlus)
                squared += pow(1 / (1 + exp(-z)) - x, 2)
            }
            #expect(abs(bce[i] - plain) < 1e-9 * max(1, plain))
            #expect(abs(bce[i] - op) < 1e-4 * max(1, op))
            #expect(abs(mse[i] - squared / Double(pixels)) < 1e-12)
        }
    }

    @Test func topScoresHighestFirstTiesByIndex() {
        #expect(OutlierScores.top(3, of: [1, 5, 3, 5, 0]) == [1, 3, 2])
        #expect(OutlierScores.top(10, of: [2, 1]) == [0, 1])
        #expect(OutlierScores.top(0, of: [2, 1]).isEmpty)
    }

    // MARK: Command line

    @Test func excludeTrainLabelLeavesTheDigitOut() throws {
        let dir = Fixture.temporaryDirectory("exclude")
        let run = try starling("data", "mnist", "--source", Fixture.mnistSample, "--out", dir + "/m.h5", "--exclude-train-label", "9")
        #expect(run.status == 0, "\(run.error)")
        let full = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train").allLabels()
        let kept = try ImageDataset(path: dir + "/m.h5", split: "train")
        let labels = try kept.allLabels()
        #expect(!labels.contains(9) && labels == full.filter { $0 != 9 })
        #expect(run.output.contains("left \(full.count - labels.count) training images of digit 9 out"))
        // The kept images are the originals, in order: the first non-9 image of the full set comes first.
        let first = full.firstIndex { $0 != 9 } ?? 0
        let original = try ImageDataset(path: try Fixture.sampleHDF5(), split: "train").batch(indices: [first], modelInputShape: [784])
        #expect(try kept.batch(indices: [0], modelInputShape: [784]).images.toArray() == original.images.toArray())
        #expect(try HDF5File.open(dir + "/m.h5").root.group("train").intAttribute("excluded_label") == 9)
        #expect(try ImageDataset(path: dir + "/m.h5", split: "test").count == 1000)
        expectCleanFailure(try starling("data", "mnist", "--source", Fixture.mnistSample, "--out", dir + "/bad.h5", "--exclude-train-label", "10"),
                           mentioning: ["--exclude-train-label"], usage: true)
    }

    @Test func outliersCommandScoresAndReportsAUC() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let dir = Fixture.temporaryDirectory("outliers")
        let run = try starling("outliers", "--checkpoint", checkpoint, "--data", data, "--top", "7", "--out", dir, "--outlier-label", "1")
        #expect(run.status == 0, "\(run.error)")
        let csv = try String(contentsOfFile: dir + "/fc-ae-best-outliers.csv", encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 1001 && csv[0] == "index,label,score,mse")
        let rows = csv.dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        let labels = rows.map { Int32($0[1]) ?? -1 }, scores = rows.map { Double($0[2]) ?? .nan }
        #expect(labels == (try ImageDataset(path: data, split: "test").allLabels()))
        // The printed AUC is the pairwise count over the CSV's scores.
        var wins = 0.0, pairs = 0.0
        for i in rows.indices where labels[i] == 1 {
            for j in rows.indices where labels[j] != 1 { pairs += 1; wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0 }
        }
        #expect(run.output.contains("ROC AUC, BCE score:  \(String(format: "%.4f", wins / pairs))"), "\(run.output)")
        // The score is the BCE sum per image: its mean is `eval`'s BCE per image.
        let loaded = try Checkpoint.load(from: checkpoint)
        let report = try ReconstructionEvaluation.evaluate(try #require(loaded.model as? any Autoencoder), data: ImageDataset(path: data, split: "test"))
        #expect(abs(scores.reduce(0, +) / 1000 - report.bcePerImage) < 1e-4 * report.bcePerImage)
        // The sheet: the highest-scoring image first, drawn 3x below the title (22 pixels) and a 4-pixel gap.
        let png = try PNGImage.read(path: dir + "/fc-ae-best-outliers-top7.png", channels: 1)
        let highest = try #require(scores.indices.max { scores[$0] != scores[$1] ? scores[$0] < scores[$1] : $0 > $1 })
        let image = try ImageDataset(path: data, split: "test").batch(indices: [highest], modelInputShape: [784]).images.toArray()
        #expect(png.width >= 7 * (84 + 4) + 4 && png.height > 2 * 84)
        #expect((0..<28).allSatisfy { y in (0..<28).allSatisfy { x in
            png.pixels[(22 + 4 + 3 * y + 1) * png.width + 4 + 3 * x + 2] == UInt8((image[y * 28 + x] * 255).rounded()) } })
    }

    /// Bad input: one line, non-zero exit, nothing written.
    @Test func outliersBadInput() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let dir = Fixture.temporaryDirectory("outliers-bad")
        let unlabelled = try TrainedFixture.smallDataset(labels: false)
        expectCleanFailure(try starling("outliers", "--checkpoint", checkpoint, "--data", unlabelled, "--out", dir, "--outlier-label", "9"),
                           mentioning: ["dataset has no labels", "data.h5"])
        let wrongSize = try TrainedFixture.smallDataset(height: 20, width: 20, labels: true)
        expectCleanFailure(try starling("outliers", "--checkpoint", checkpoint, "--data", wrongSize, "--out", dir),
                           mentioning: ["[20, 20]", "fc-ae"])
        expectCleanFailure(try starling("outliers", "--checkpoint", checkpoint, "--data", data, "--out", dir, "--outlier-label", "42"),
                           mentioning: ["no image of /test has label 42"])
        expectCleanFailure(try starling("outliers", "--checkpoint", data, "--data", data, "--out", dir), mentioning: ["not a Starling checkpoint"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        // Without --outlier-label an unlabelled set is fine: scores with empty labels.
        let ok = try starling("outliers", "--checkpoint", checkpoint, "--data", unlabelled, "--out", dir, "--top", "2")
        #expect(ok.status == 0, "\(ok.error)")
        #expect(try String(contentsOfFile: dir + "/fc-ae-best-outliers.csv", encoding: .utf8).split(separator: "\n")[1].hasPrefix("0,,"))
    }
}
