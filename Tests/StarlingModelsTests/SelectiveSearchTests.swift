import Foundation
import Testing
import StarlingCore
import StarlingNN
@testable import StarlingProposals

@Suite struct SelectiveSearchTests {
    /// An RGB image of `height` x `width` filled with `background`, rectangles (x0, y0, x1, y1 exclusive) painted in
    /// order, and a deterministic noise of +-`noise` on every value.
    private func picture(height: Int, width: Int, background: (UInt8, UInt8, UInt8),
                         rectangles: [(Int, Int, Int, Int, (UInt8, UInt8, UInt8))], noise: Int) -> [UInt8] {
        var pixels = [UInt8](repeating: 0, count: height * width * 3)
        var rng = RandomGenerator(seed: 17)
        for y in 0..<height {
            for x in 0..<width {
                var colour = background
                for (x0, y0, x1, y1, c) in rectangles where x >= x0 && x < x1 && y >= y0 && y < y1 { colour = c }
                let values = [colour.0, colour.1, colour.2]
                for c in 0..<3 {
                    let jitter = noise > 0 ? Int(rng.next() % UInt64(2 * noise + 1)) - noise : 0
                    pixels[(y * width + x) * 3 + c] = UInt8(Swift.min(Swift.max(Int(values[c]) + jitter, 0), 255))
                }
            }
        }
        return pixels
    }

    @Test func unionFindJoinsAndCounts() {
        var sets = UnionFind(count: 6)
        let a = sets.join(sets.find(0), sets.find(1))
        let b = sets.join(sets.find(2), sets.find(3))
        let c = sets.join(a, b)
        #expect(sets.find(3) == c && sets.find(0) == c && sets.size[c] == 4)
        #expect(sets.find(4) == 4 && sets.find(5) == 5 && sets.size[4] == 1)
    }

    /// Two flat halves are two segments at any k below their contrast; a flat image is one; a speck smaller than
    /// the minimum size joins its surroundings.
    @Test func graphSegmentationOnWorkedImages() {
        let (h, w) = (6, 8)
        let halves = PlanarImage(height: h, width: w, channels: 1, values: (0..<(h * w)).map { $0 % w < 4 ? 0 : 200 })
        let two = graphSegmentation(halves, k: 50, minSize: 1)
        #expect(two.count == 2)
        #expect(two.labels == (0..<(h * w)).map { Int32($0 % w < 4 ? 0 : 1) })
        let flat = graphSegmentation(PlanarImage(height: h, width: w, channels: 3, values: [Float](repeating: 7, count: 3 * h * w)),
                                     k: 1, minSize: 1)
        #expect(flat.count == 1)
        var speck = [Float](repeating: 0, count: h * w)
        speck[2 * w + 3] = 255
        #expect(graphSegmentation(PlanarImage(height: h, width: w, channels: 1, values: speck), k: 1, minSize: 1).count == 2)
        #expect(graphSegmentation(PlanarImage(height: h, width: w, channels: 1, values: speck), k: 1, minSize: 2).count == 1)
        // k decides: a weak edge (10) joins the halves at k = 50 x 24 pixels' worth of threshold, not at k = 1.
        let weak = PlanarImage(height: h, width: w, channels: 1, values: (0..<(h * w)).map { $0 % w < 4 ? 0 : 10 })
        #expect(graphSegmentation(weak, k: 1, minSize: 1).count == 2)
        #expect(graphSegmentation(weak, k: 300, minSize: 1).count == 1)
    }

    /// scikit-image's segmentation of the same images (Fixtures/felzenszwalb_skimage.py): the same partition, pixel for
    /// pixel, on colour and grey images, with and without the minimum-size pass.
    @Test func graphSegmentationMatchesScikitImage() {
        for c in FelzenszwalbFixtures.cases {
            let image = PlanarImage(height: c.height, width: c.width, channels: c.channels, values: c.values.map { $0 * 255 })
            let (labels, count) = graphSegmentation(image, k: c.k, minSize: c.minSize)
            #expect(count == Int((c.labels.max() ?? -1) + 1), "\(c.name): \(count) segments")
            #expect(labels == c.labels, "\(c.name): \(zip(labels, c.labels).filter { $0 != $1 }.count) pixels differ")
        }
    }

    @Test func colourSpacesOnWorkedPixels() {
        let pixels: [UInt8] = [255, 0, 0, 255, 255, 255, 30, 60, 90]
        pixels.withUnsafeBufferPointer { p in
            let hsv = colourChannels(p, height: 1, width: 3, space: .hsv).values
            // Hues red 0, white 0, (30, 60, 90) 210 degrees; saturations 1, 0, 60/90; values 1, 1, 90/255.
            let expected: [Float] = [0, 0, 7.0 / 12, 1, 0, 2.0 / 3, 1, 1, 90.0 / 255]
            #expect(zip(hsv, expected).allSatisfy { abs($0 - $1) < 1e-6 })
            let lab = colourChannels(p, height: 1, width: 3, space: .lab).values
            // White: L 100, a = b = 0; sRGB red: L 53.24, a 80.09, b 67.20 (the CIE formulas' standard values).
            #expect(abs(lab[1] - 1) < 1e-3 && abs(lab[4] - 128.0 / 255) < 2e-3 && abs(lab[7] - 128.0 / 255) < 2e-3)
            #expect(abs(lab[0] - 0.5324) < 2e-3 && abs(lab[3] - (80.09 + 128) / 255) < 2e-3 && abs(lab[6] - (67.20 + 128) / 255) < 2e-3)
            let rgi = colourChannels(p, height: 1, width: 3, space: .rgi).values
            #expect(rgi[2] == 1.0 / 6 && rgi[5] == 1.0 / 3 && rgi[8] == 180.0 / 765)
        }
    }

    /// Three segments of a 4 x 4 image under size + fill: s(0, 1) = (1 - 8/16) + (1 - (8 - 8)/16) = 1.5 beats
    /// s(0, 2) = s(1, 2) = (1 - 12/16) + (1 - (16 - 12)/16) = 1, so 0 and 1 merge first, then everything.
    @Test func groupingMergesByHandComputedSimilarity() {
        let labels: [Int32] = [0, 0, 1, 1,
                               0, 0, 1, 1,
                               2, 2, 2, 2,
                               2, 2, 2, 2]
        let pixels = [UInt8](repeating: 90, count: 48)
        let features = pixels.withUnsafeBufferPointer { RegionPixels(pixels: $0, height: 4, width: 4, space: .hsv) }
        let regions = RegionSet(labels: labels, count: 3, pixels: features)
        #expect(regions.similarity(0, 1, [.size, .fill], imageSize: 16) == 1.5)
        #expect(regions.similarity(0, 2, [.size, .fill], imageSize: 16) == 1)
        // One flat colour: every colour and texture histogram is one bin, their intersection 1.
        #expect(regions.similarity(0, 2, [.colour, .texture], imageSize: 16) == 2)
        let boxes = hierarchicalGrouping(labels: labels, count: 3, pixels: features, similarities: [.size, .fill])
        #expect(boxes.map { [$0.xmin, $0.ymin, $0.xmax, $0.ymax] } == [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 4, 4], [0, 0, 4, 2], [0, 0, 4, 4]])
    }

    /// Known rectangles of distinct colours (one nested in another) on a background, with noise: fast mode proposes
    /// each at IoU >= 0.9, and the whole image; ranking is reproducible from the seed and has no duplicates.
    @Test func everyRectangleIsProposed() {
        let (h, w) = (96, 128)
        let rectangles: [(Int, Int, Int, Int, (UInt8, UInt8, UInt8))] = [
            (10, 8, 40, 36, (200, 40, 40)), (60, 12, 110, 50, (40, 170, 60)), (75, 20, 95, 40, (30, 50, 200)),
            (20, 55, 70, 88, (230, 210, 40)), (100, 70, 120, 90, (140, 60, 160)),
        ]
        let pixels = picture(height: h, width: w, background: (120, 120, 110), rectangles: rectangles, noise: 6)
        let search = SelectiveSearch(mode: .fast)
        let proposals = pixels.withUnsafeBufferPointer { search.proposals(pixels: $0, height: h, width: w, seed: 1) }
        for (x0, y0, x1, y1, _) in rectangles + [(0, 0, w, h, (0, 0, 0))] {
            let truth = BoxCorners(xmin: Float(x0), ymin: Float(y0), xmax: Float(x1), ymax: Float(y1))
            let best = proposals.map { iou($0, truth) }.max() ?? 0
            #expect(best >= 0.9, "rectangle \(x0),\(y0),\(x1),\(y1): best IoU \(best) over \(proposals.count) proposals")
        }
        #expect(Set(proposals).count == proposals.count)
        let inside = proposals.allSatisfy { (b: BoxCorners) -> Bool in
            b.isValid && b.xmin >= 0 && b.ymin >= 0 && b.xmax <= Float(w) && b.ymax <= Float(h)
        }
        #expect(inside)
        let again = pixels.withUnsafeBufferPointer { search.proposals(pixels: $0, height: h, width: w, seed: 1) }
        #expect(again == proposals)
        let other = pixels.withUnsafeBufferPointer { search.proposals(pixels: $0, height: h, width: w, seed: 2) }
        #expect(Set(other) == Set(proposals) && other != proposals)
        #expect(SelectiveSearch.strategies(.fast).count == 8 && SelectiveSearch.strategies(.quality).count == 80)
    }
}

@Suite struct ProposalRecallTests {
    /// Two boxes, four ranked proposals: box A is matched at IoU 1 by rank 2 and at 0.5 by rank 0; box B only at IoU
    /// 0.6 (rank 3). Budgets 1, 3 and all: A at 0.5 from budget 1, at 0.7 from 3; B at 0.5 only in "all".
    @Test func recallByBudgetAndThreshold() {
        let a = BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 10), b = BoxCorners(xmin: 50, ymin: 50, xmax: 60, ymax: 60)
        let ranked = [BoxCorners(xmin: 0, ymin: 0, xmax: 10, ymax: 5),       // IoU 0.5 with A
                      BoxCorners(xmin: 20, ymin: 20, xmax: 30, ymax: 30),    // nothing
                      a,                                                     // IoU 1 with A
                      BoxCorners(xmin: 50, ymin: 50, xmax: 60, ymax: 56)]    // IoU 0.6 with B
        var recall = ProposalRecall(budgets: [1, 3], thresholds: [0.5, 0.7])
        recall.add(proposals: ranked, truths: [a, b])
        recall.add(proposals: [], truths: [])
        #expect(recall.recalled == [[1, 0], [1, 1], [2, 1]])
        #expect(recall.recall(budget: 2, threshold: 0) == 1 && recall.recall(budget: 0, threshold: 1) == 0)
        #expect(recall.truths == 2 && recall.images == 2 && recall.proposalsPerImage == 2)
        // Best overlaps 1 (A) and 0.6 (B): one class, MABO 0.8; as two classes, (1 + 0.6) / 2 too; a third class with
        // one unmatched box pulls the mean of three classes down to 1.6 / 3.
        #expect(abs(recall.meanAverageBestOverlap - 0.8) < 1e-6)
        var classes = ProposalRecall()
        classes.add(proposals: ranked, truths: [a, b, BoxCorners(xmin: 80, ymin: 80, xmax: 90, ymax: 90)], classes: [1, 2, 3])
        #expect(abs(classes.meanAverageBestOverlap - 1.6 / 3) < 1e-6)
    }
}
