import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

@Suite struct ProposalsCommandTests {
    static let udacity = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity").path

    /// Two real frames: the recall table, `--store` into the file (readable back, equal to the search run here, and
    /// replaced by a second store), and one-line refusals naming the file.
    @Test func recallTableStoreAndRefusals() throws {
        guard FileManager.default.fileExists(atPath: Self.udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("proposals-cli")
        let data = dir + "/udacity.h5"
        #expect(try starling("data", "detection", "--format", "udacity", "--images", Self.udacity + "/images", "--labels",
                             Self.udacity + "/labels.csv", "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0").status == 0)
        let report = try starling("proposals", "--data", data, "--mode", "single", "--keep", "300", "--seed", "4")
        #expect(report.status == 0, "\(report.error)")
        #expect(report.output.contains("recall@0.5") && report.output.contains("seconds per image"))
        #expect(report.output.split(separator: "\n").contains { $0.hasPrefix("      100") })

        // Two images searched side by side store what one thread finds (checked against the search run here below).
        let store = try starling("proposals", "--data", data, "--mode", "single", "--keep", "300", "--seed", "4", "--store", "--threads", "2")
        #expect(store.status == 0, "\(store.error)")
        let (stored, method) = try ProposalStore.read(path: data, split: "train")
        #expect(method.contains("single") && method.contains("seed 4"))
        let dataset = try DetectionDataset(path: data, split: "train")
        #expect(stored.count == dataset.count && dataset.count == 2)
        var pixels = [UInt8](repeating: 0, count: dataset.imageHeight * dataset.imageWidth * 3)
        for i in 0..<dataset.count {
            try pixels.withUnsafeMutableBufferPointer { try dataset.readImages([i], into: $0) }
            let expected = pixels.withUnsafeBufferPointer {
                SelectiveSearch(mode: .single).proposals(pixels: $0, height: dataset.imageHeight, width: dataset.imageWidth,
                                                         seed: SelectiveSearch.imageSeed(4, index: i))
            }
            #expect(stored[i] == Array(expected.prefix(300)) && !stored[i].isEmpty)
        }
        // Stored again with other settings: replaced, the file still a valid dataset.
        #expect(try starling("proposals", "--data", data, "--mode", "single", "--keep", "5", "--store").status == 0)
        #expect(try ProposalStore.read(path: data, split: "train").proposals.allSatisfy { $0.count == 5 })
        #expect(!FileManager.default.fileExists(atPath: AtomicFile.temporaryPath(for: data)))

        for (arguments, needle) in [(["--data", dir + "/missing.h5"], dir + "/missing.h5"), (["--data", data, "--split", "val"], data),
                                    (["--data", data, "--store", "--limit", "1"], "--limit")] {
            let refused = try run(Fixture.starling, ["proposals"] + arguments)
            #expect(refused.status != 0)
            let lines = refused.error.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.contains("--help") }
            #expect(lines.count == 1 && refused.error.contains(needle), "\(refused.error)")
        }
        #expect(throws: (any Error).self) { try ProposalStore.read(path: data, split: "val") }
    }
}
