import ArgumentParser
import Foundation
import StarlingModels

extension SelectiveSearch.Mode: ExpressibleByArgument {}

/// `starling proposals`: selective search over a detection split, the recall of its boxes against the number of
/// proposals, and optionally the proposals stored in the file for R-CNN and Fast R-CNN.
struct ProposalsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proposals",
        abstract: "Selective search proposals for a detection split: recall of the ground-truth boxes at IoU 0.5 and 0.7 against the number of proposals, proposals and seconds per image; --store writes them into the file.")

    @Option(help: "Detection dataset (`starling data detection`).") var data: String
    @Option(help: "Split to search.") var split: String = "train"
    @Option(help: "Selective search's strategies: single (HSV, k = 100, all similarities), fast (8 strategies), quality (80).") var mode: SelectiveSearch.Mode = .fast
    @Option(help: "Search only the first N images (a quick measure; not with --store).") var limit: Int?
    @Option(help: "Proposals kept per image, best first (stored, and the 'all' row).") var keep: Int = 2000
    @Option(help: "Seed of the ranking's random numbers (image i uses seed and i).") var seed: UInt64 = 0
    @Flag(help: "Write the proposals into the dataset file (/<split>/proposals and proposal_offsets), atomically.") var store = false

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be positive") }
        guard keep > 0 else { throw ValidationError("--keep must be positive") }
        if store && limit != nil { throw ValidationError("--store writes proposals for every image of the split: drop --limit") }
    }

    func run() throws {
        try reportingErrors {
            let dataset = try DetectionDataset(path: data, split: split)
            guard dataset.count > 0 else { throw DataError(file: data, message: "/\(split) has no images") }
            let count = min(limit ?? dataset.count, dataset.count)
            let (h, w) = (dataset.imageHeight, dataset.imageWidth)
            let search = SelectiveSearch(mode: mode)
            print("selective search (\(mode.rawValue), \(search.strategies.count) strategies) on \(count) images of \(data) [\(split)], \(w)x\(h)")
            var recall = ProposalRecall()
            var stored: [[BoxCorners]] = []
            var pixels = [UInt8](repeating: 0, count: h * w * 3)
            var seconds = 0.0
            for i in 0..<count {
                try pixels.withUnsafeMutableBufferPointer { try dataset.readImages([i], into: $0) }
                let start = DispatchTime.now().uptimeNanoseconds
                let proposals = Array(pixels.withUnsafeBufferPointer {
                    search.proposals(pixels: $0, height: h, width: w, seed: SelectiveSearch.imageSeed(seed, index: i))
                }.prefix(keep))
                seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                let objects = dataset.objects(of: i).filter { !$0.difficult }
                recall.add(proposals: proposals, truths: objects.map(\.box), classes: objects.map(\.classID))
                if store { stored.append(proposals) }
                if (i + 1) % 10 == 0 || i + 1 == count {
                    FileHandle.standardError.write(Data(String(format: "\r%d/%d images, %.2f s an image", i + 1, count, seconds / Double(i + 1)).utf8))
                }
            }
            FileHandle.standardError.write(Data("\n".utf8))
            print("\(recall.truths) ground-truth boxes (difficult ones left out)")
            print("proposals  recall@0.5  recall@0.7")
            for b in 0...recall.budgets.count {
                let label = b < recall.budgets.count ? String(recall.budgets[b]) : "all"
                let padded = label.count < 9 ? String(repeating: " ", count: 9 - label.count) + label : label
                print(padded + String(format: "  %10.4f  %10.4f", recall.recall(budget: b, threshold: 0), recall.recall(budget: b, threshold: 1)))
            }
            print(String(format: "MABO (mean over classes of each box's best IoU with the kept proposals): %.4f", recall.meanAverageBestOverlap))
            print(String(format: "proposals per image: %.1f (at most %d kept); seconds per image: %.3f (one thread)", recall.proposalsPerImage, keep,
                         seconds / Double(count)))
            if store {
                let method = "selective search \(mode.rawValue), seed \(seed), at most \(keep) an image"
                try ProposalStore.write(stored, method: method, split: split, to: data)
                print("stored \(stored.map(\.count).reduce(0, +)) proposals in \(data) /\(split)/proposals (\(method))")
            }
        }
    }
}
