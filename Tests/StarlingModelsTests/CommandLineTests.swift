import Foundation
import Testing
import StarlingIO
@testable import StarlingModels

/// The `starling` binary as a user runs it.
@Suite struct CommandLineTests {
    @Test func convertTrainEvaluate() throws {
        let dir = Fixture.temporaryDirectory("cli")
        let data = dir + "/mnist.h5"
        let convert = try starling("data", "mnist", "--source", Fixture.mnistSample, "--out", data)
        #expect(convert.status == 0, "\(convert.error)")
        #expect(convert.output.contains("3000") && convert.output.contains("1000"))
        let train = try starling("train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "4",
                                 "--batch-size", "128", "--val-limit", "256", "--out", dir + "/out")
        #expect(train.status == 0, "\(train.error)")
        #expect(train.output.contains("epoch 2/2 done") && train.output.contains("val_loss") && train.output.contains("img/s"))
        for file in ["fc-ae-last.h5", "fc-ae-best.h5", "fc-ae-log.csv"] {
            #expect(FileManager.default.fileExists(atPath: dir + "/out/" + file), "\(file) missing")
        }
        let eval = try starling("eval", "--checkpoint", dir + "/out/fc-ae-best.h5", "--data", data, "--json", dir + "/eval.json")
        #expect(eval.status == 0, "\(eval.error)")
        #expect(eval.output.contains("BCE per pixel") && eval.output.contains("per image"))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json"))) as? [String: Any]
        let perPixel = json?["bcePerPixel"] as? Double ?? -1, perImage = json?["bcePerImage"] as? Double ?? -1
        #expect(perPixel > 0.05 && perPixel < 0.7)
        #expect(abs(perImage - perPixel * 784) < 1e-6 * perImage)
        #expect(json?["images"] as? Int == 1000)
        let png = try PNGImage.read(path: dir + "/out/fc-ae-best-reconstructions.png")
        #expect(png.height > 2 * 28 && png.width > 10 * 28)
    }

    /// Every mistake gets one line that names the file or flag, a non-zero exit, and no output file.
    @Test func badInputFailsCleanly() throws {
        let dir = Fixture.temporaryDirectory("cli-bad")
        let data = try Fixture.sampleHDF5()
        func expectFailure(_ r: Run, mentioning words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(r.status != 0, "expected failure", sourceLocation: sourceLocation)
            let message = r.error.trimmingCharacters(in: .whitespacesAndNewlines)
            for w in words { #expect(message.contains(w), "'\(message)' lacks '\(w)'", sourceLocation: sourceLocation) }
            #expect(!message.contains("Fatal error") && !message.contains("Stack dump") && !message.contains("Backtrac"), sourceLocation: sourceLocation)
        }
        expectFailure(try starling("train", "--model", "resnet", "--data", data, "--out", dir), mentioning: ["unknown model 'resnet'"])
        expectFailure(try starling("train", "--model", "fc-ae", "--data", dir + "/missing.h5", "--out", dir), mentioning: ["missing.h5"])
        try "not hdf5".write(toFile: dir + "/text.h5", atomically: true, encoding: .utf8)
        expectFailure(try starling("train", "--model", "fc-ae", "--data", dir + "/text.h5", "--out", dir), mentioning: ["text.h5"])
        expectFailure(try starling("train", "--model", "fc-ae", "--data", data, "--train-split", "validation", "--out", dir),
                      mentioning: ["/validation"])
        expectFailure(try starling("train", "--model", "fc-ae", "--data", data, "--batch-size", "0"), mentioning: ["--batch-size"])
        expectFailure(try starling("eval", "--checkpoint", data, "--data", data), mentioning: ["not a Starling checkpoint"])
        for width in ["12", "sixteen"] {
            let bad = try run(Fixture.starling, ["train", "--model", "fc-ae", "--data", data, "--out", dir + "/block"],
                              environment: ["STARLING_BLOCK": width])
            expectFailure(bad, mentioning: ["STARLING_BLOCK=\(width): expected 8 or 16"])
            #expect(!FileManager.default.fileExists(atPath: dir + "/block"), "nothing written before the refusal")
        }
        for (name, value) in [("STARLING_KERNELS", "avx1024"), ("STARLING_KERNELS", "sse"), ("STARLING_GEMM", "mkl"), ("STARLING_WINOGRAD", "yes"),
                              ("STARLING_WINOGRAD_CALL_MB", "0"), ("STARLING_REPLICA_SPIN_US", "-5"), ("STARLING_REPLICA_SPIN_US", "fast"),
                              ("STARLING_REPLICA_BIND", "yes"), ("STARLING_GIVE_BACK_FREE_PAGES", "on")] {
            let bad = try run(Fixture.starling, ["train", "--model", "fc-ae", "--data", data, "--out", dir + "/kernels"],
                              environment: [name: value])
            expectFailure(bad, mentioning: ["\(name)=\(value): expected "])
            #expect(bad.error.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\n").count == 1, "one line: \(bad.error)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/kernels"), "nothing written before the refusal")
        }
        // A truncated IDX file: an error naming it, and no HDF5 file left behind.
        let idx = dir + "/idx"
        try FileManager.default.createDirectory(atPath: idx, withIntermediateDirectories: true)
        for name in ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
            try FileManager.default.copyItem(atPath: Fixture.mnistSample + "/" + name, toPath: idx + "/" + name)
        }
        let images = try Data(contentsOf: URL(fileURLWithPath: Fixture.mnistSample + "/train-images-idx3-ubyte.gz"))
        try images.prefix(images.count / 3).write(to: URL(fileURLWithPath: idx + "/train-images-idx3-ubyte.gz"))
        expectFailure(try starling("data", "mnist", "--source", idx, "--out", dir + "/out.h5"), mentioning: ["train-images-idx3-ubyte"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.h5"))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") }
        #expect(leftovers.isEmpty, "temporary files left: \(leftovers)")
    }
}
