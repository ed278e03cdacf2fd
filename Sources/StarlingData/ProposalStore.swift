import StarlingIO
import StarlingNN

/// Region proposals stored beside a detection split, for R-CNN and Fast R-CNN training (`starling proposals --store`):
///
/// ```
/// /<split>/proposal_offsets  int64   [N + 1]  image i's proposals are rows proposal_offsets[i] ..< proposal_offsets[i + 1]
/// /<split>/proposals         float32 [P, 4]   xmin, ymin, xmax, ymax in pixels of the stored image, best first per image
/// /<split>                   attribute proposals_method (e.g. "selective search fast, seed 0, at most 2000 an image")
/// ```
public enum ProposalStore {
    /// Writes `proposals` (one ranked list per image of the split) into the dataset file, replacing stored ones.
    ///
    /// Atomic: the file is copied to a temporary beside it, the proposals are written into the copy, and the copy is
    /// synced and renamed over the original, so a reader sees the old file or the complete new one. Proposals
    /// written before are unlinked in the copy; HDF5 keeps their bytes, so each rewrite grows the file by the old
    /// proposals' size (a `h5repack` reclaims it).
    public static func write(_ proposals: [[BoxCorners]], method: String, split: String, to path: String) throws {
        let dataset = try DetectionDataset(path: path, split: split)
        guard proposals.count == dataset.count else {
            throw DataError(file: path, message: "\(proposals.count) proposal lists for the \(dataset.count) images of /\(split)")
        }
        var offsets: [Int64] = [0]
        var boxes: [Float] = []
        for list in proposals {
            for b in list { boxes += [b.xmin, b.ymin, b.xmax, b.ymax] }
            offsets.append(offsets.last! + Int64(list.count))
        }
        try updateHDF5Atomically(path) { file in
            let group = try file.root.group(split)
            for name in ["proposals", "proposal_offsets"] where group.contains(name) { try group.remove(name) }
            try group.createDataset("proposal_offsets", type: .int64, shape: [offsets.count]).write(offsets)
            let stored = try group.createDataset("proposals", type: .float32, shape: [boxes.count / 4, 4],
                                                 chunk: boxes.isEmpty ? nil : [min(boxes.count / 4, 4096), 4], deflate: boxes.isEmpty ? nil : 4)
            try stored.write(boxes)
            try group.setAttribute("proposals_method", method)
        }
    }

    /// The stored proposals of a split, one ranked list per image; an error naming the file when there are none, they do
    /// not fit the split, or a box is empty or outside the images.
    public static func read(path: String, split: String) throws -> (proposals: [[BoxCorners]], method: String) {
        let dataset = try DetectionDataset(path: path, split: split)
        let file = try HDF5File.open(path)
        let group = try file.root.group(split)
        guard group.contains("proposals") && group.contains("proposal_offsets") else {
            throw DataError(file: path, message: "no proposals in /\(split); store them with `starling proposals --data \(path) --split \(split) --store`")
        }
        let offsetsArray = try group.dataset("proposal_offsets"), boxesArray = try group.dataset("proposals")
        try offsetsArray.require(.integers, shape: [dataset.count + 1], in: path, what: "the first proposal of each of \(dataset.count) images, then their count")
        try boxesArray.require(.numbers, shape: [nil, 4], in: path, what: "xmin, ymin, xmax, ymax of each proposal")
        let offsets = try offsetsArray.read(as: Int64.self)
        let values = try boxesArray.read(as: Float.self)
        guard offsets.count == dataset.count + 1, offsets.first == 0, offsets.last.map({ Int($0) * 4 }) == values.count,
              zip(offsets, offsets.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            throw DataError(file: path, message: "/\(split)/proposal_offsets and proposals do not fit the split's \(dataset.count) images")
        }
        let method = group.hasAttribute("proposals_method") ? try group.stringAttribute("proposals_method") : "unknown"
        var lists: [[BoxCorners]] = []
        for i in 0..<dataset.count {
            lists.append((Int(offsets[i])..<Int(offsets[i + 1])).map { r in
                BoxCorners(xmin: values[4 * r], ymin: values[4 * r + 1], xmax: values[4 * r + 2], ymax: values[4 * r + 3])
            })
        }
        let (w, h) = (Float(dataset.imageWidth), Float(dataset.imageHeight))
        if let bad = lists.joined().first(where: { !$0.isValid || $0.xmin < 0 || $0.ymin < 0 || $0.xmax > w || $0.ymax > h }) {
            throw DataError(file: path, message: "/\(split)/proposals holds a box \(bad) that is empty, not finite or outside the \(Int(w))x\(Int(h)) images")
        }
        return (lists, method)
    }
}

/// Reads one split's stored proposals image by image (a hyperslab of `proposal_offsets` and one of `proposals` per
/// image), so a split of 22,000 images x 2,000 proposals never sits in memory whole. Opening it checks that the split
/// has proposals, one offset per image and rows for the last offset; each image's boxes are checked as they are read.
public final class ProposalReader: @unchecked Sendable {
    public let path: String
    public let split: String
    public let count: Int
    public let method: String
    let imageHeight: Float, imageWidth: Float
    private let file: HDF5File
    private let offsets: HDF5Dataset
    private let boxes: HDF5Dataset
    private let rows: Int

    /// The proposals of `dataset`'s split; an error naming the file, and the command that stores them, when there are none.
    public init(dataset: DetectionDataset) throws {
        path = dataset.path
        split = dataset.split
        count = dataset.count
        (imageHeight, imageWidth) = (Float(dataset.imageHeight), Float(dataset.imageWidth))
        file = try HDF5File.open(path)
        let group = try file.root.group(split)
        guard group.contains("proposals") && group.contains("proposal_offsets") else {
            throw DataError(file: path, message: "no proposals in /\(split); store them with `starling proposals --data \(path) --split \(split) --store`")
        }
        offsets = try group.dataset("proposal_offsets")
        boxes = try group.dataset("proposals")
        try offsets.require(.integers, shape: [count + 1], in: path, what: "the first proposal of each of \(count) images, then their count")
        try boxes.require(.numbers, shape: [nil, 4], in: path, what: "xmin, ymin, xmax, ymax of each proposal")
        rows = boxes.shape[0]
        let last = try offsets.readRows(count..<(count + 1), as: Int64.self)[0]
        guard last == Int64(rows) else {
            throw DataError(file: path, message: "/\(split)/proposal_offsets ends at \(last), but /\(split)/proposals has \(rows) rows")
        }
        method = group.hasAttribute("proposals_method") ? try group.stringAttribute("proposals_method") : "unknown"
    }

    /// Image `i`'s proposals, best first.
    public func proposals(of i: Int) throws -> [BoxCorners] {
        guard i >= 0 && i < count else { throw DataError(file: path, message: "image index \(i) out of range 0..<\(count) in /\(split)") }
        let range = try offsets.readRows(i..<(i + 2), as: Int64.self)
        guard range[0] >= 0, range[0] <= range[1], range[1] <= Int64(rows) else {
            throw DataError(file: path, message: "/\(split)/proposal_offsets[\(i)...\(i + 1)] = \(range) is not a range of the \(rows) proposals")
        }
        let values = try boxes.readRows(Int(range[0])..<Int(range[1]), as: Float.self)
        return try (0..<(values.count / 4)).map { r in
            let b = BoxCorners(xmin: values[4 * r], ymin: values[4 * r + 1], xmax: values[4 * r + 2], ymax: values[4 * r + 3])
            guard b.isValid, b.xmin >= 0, b.ymin >= 0, b.xmax <= imageWidth, b.ymax <= imageHeight else {
                throw DataError(file: path, message: "/\(split)/proposals row \(Int(range[0]) + r) of image \(i) is \(b): empty, not finite or outside the \(Int(imageWidth))x\(Int(imageHeight)) images")
            }
            return b
        }
    }
}
