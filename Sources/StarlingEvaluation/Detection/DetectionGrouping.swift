



// Dense numbering of images and classes, and entries bucketed by (class, image), shared by both evaluators.

/// Image and class ids renumbered densely (ascending id order, as pycocotools' `np.unique`), and the
/// ground truth and detections bucketed by (class, image) in input order.
///
/// Bucket `c * images.count + i` holds class `c`, image `i`: the indices of its entries are
/// `gtMembers[gtStarts[b] ..< gtStarts[b + 1]]` (likewise for detections), in the order they were given.
struct DetectionGrouping {
    let imageIDs: [Int]
    let classIDs: [Int]
    let gtStarts: [Int]
    let gtMembers: [Int]
    let detectionStarts: [Int]
    let detectionMembers: [Int]

    /// `classIDs`: the classes to evaluate (default: every class seen); entries of other classes are left out.
    init(groundTruth: [GroundTruthBox], detections: [Detection], classIDs: [Int]?) {
        let images = DenseIndex(groundTruth.lazy.map(\.imageID) + detections.lazy.map(\.imageID))
        let classes = DenseIndex(classIDs ?? Array(groundTruth.lazy.map(\.classID) + detections.lazy.map(\.classID)))
        imageIDs = images.ids
        self.classIDs = classes.ids
        let imageCount = imageIDs.count
        func bucket(_ classID: Int, _ imageID: Int) -> Int? {
            guard let c = classes.index(of: classID), let i = images.index(of: imageID) else { return nil }
            return c * imageCount + i
        }
        let bucketCount = self.classIDs.count * imageCount
        (gtStarts, gtMembers) = countingSort(groundTruth.map { bucket($0.classID, $0.imageID) }, buckets: bucketCount)
        (detectionStarts, detectionMembers) = countingSort(detections.map { bucket($0.classID, $0.imageID) }, buckets: bucketCount)
    }

    var imageCount: Int { imageIDs.count }

    /// Indices of the ground truth of class `c` (dense) in image `i` (dense).
    func groundTruth(class c: Int, image i: Int) -> ArraySlice<Int> {
        let b = c * imageIDs.count + i
        return gtMembers[gtStarts[b] ..< gtStarts[b + 1]]
    }

    /// Indices of the detections of class `c` in image `i`, in input order.
    func detections(class c: Int, image i: Int) -> ArraySlice<Int> {
        let b = c * imageIDs.count + i
        return detectionMembers[detectionStarts[b] ..< detectionStarts[b + 1]]
    }

    /// Indices of all detections of class `c`, image by image, each image's in input order.
    func detections(class c: Int) -> ArraySlice<Int> {
        let n = imageIDs.count
        return detectionMembers[detectionStarts[c * n] ..< detectionStarts[(c + 1) * n]]
    }

    /// Indices of all ground truth of class `c`, image by image.
    func groundTruth(class c: Int) -> ArraySlice<Int> {
        let n = imageIDs.count
        return gtMembers[gtStarts[c * n] ..< gtStarts[(c + 1) * n]]
    }
}

/// Ids numbered 0, 1, ... in ascending order. Ids spanning a modest range (image ids usually do) are looked up
/// in a table, others in a dictionary.
struct DenseIndex {
    let ids: [Int]
    private let lowest: Int
    private let table: [Int32]          // id - lowest -> index, -1 if absent; empty when the dictionary is used
    private let dictionary: [Int: Int]

    init<S: Sequence>(_ values: S) where S.Element == Int {
        let all = Array(values)
        guard let low = all.min(), let high = all.max() else {
            (ids, lowest, table, dictionary) = ([], 0, [], [:])
            return
        }
        lowest = low
        let span = high.subtractingReportingOverflow(low)
        if !span.overflow && span.partialValue < 4 * all.count + (1 << 20) {
            var table = [Int32](repeating: -1, count: span.partialValue + 1)
            for v in all { table[v - low] = 0 }
            var ids: [Int] = []
            for k in table.indices where table[k] == 0 { table[k] = Int32(ids.count); ids.append(low + k) }
            (self.ids, self.table, dictionary) = (ids, table, [:])
        } else {
            ids = Array(Set(all)).sorted()
            table = []
            dictionary = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        }
    }

    func index(of id: Int) -> Int? {
        if table.isEmpty { return dictionary[id] }
        let (k, overflow) = id.subtractingReportingOverflow(lowest)
        guard !overflow, k >= 0, k < table.count, table[k] >= 0 else { return nil }
        return Int(table[k])
    }
}

/// A stable counting sort of entry indices by bucket (nil: left out). Returns bucket starts (count + 1) and members.
private func countingSort(_ keys: [Int?], buckets: Int) -> (starts: [Int], members: [Int]) {
    var starts = [Int](repeating: 0, count: buckets + 1)
    for case let k? in keys { starts[k + 1] += 1 }
    for b in 0..<buckets { starts[b + 1] += starts[b] }
    var next = starts
    var members = [Int](repeating: 0, count: starts[buckets])
    for (index, key) in keys.enumerated() {
        guard let k = key else { continue }
        members[next[k]] = index
        next[k] += 1
    }
    return (starts, members)
}

/// Indices of `scores` ordered by descending score; equal scores keep their order in `indices` (a stable sort,
/// written as an explicit tie-break so that it does not depend on the standard library's algorithm).
func sortedByScore<C: Collection>(_ indices: C, scores: [Double]) -> [Int] where C.Element == Int {
    if indices.count < 2 { return Array(indices) }
    // (score, position) pairs sort with their keys side by side in memory.
    var keyed = [(score: Double, position: Int, index: Int)]()
    keyed.reserveCapacity(indices.count)
    for (position, index) in indices.enumerated() { keyed.append((scores[index], position, index)) }
    keyed.sort { a, b in a.score > b.score || (a.score == b.score && a.position < b.position) }
    return keyed.map(\.index)
}
