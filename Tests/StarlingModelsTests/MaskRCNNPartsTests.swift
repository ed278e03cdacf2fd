import Foundation
import Testing
import StarlingCore
import StarlingNN
@testable import StarlingDetection
@testable import StarlingEvaluation
import StarlingPlots

/// Mask R-CNN's own parts (issue 19): the mask head, its targets through RoIAlign, the paste back into the image, and
/// COCO's run-length masks against the COCO API.
@Suite(.serialized) struct MaskRCNNPartsTests {
    /// A 56 x 56 mask of random 2x2 blocks.
    static func blockMask(seed: UInt64) -> [UInt8] {
        var rng = RandomGenerator(seed: seed)
        let blocks = (0..<(28 * 28)).map { _ in rng.uniform(0, 1) < 0.4 ? UInt8(1) : 0 }
        return (0..<(56 * 56)).map { p in blocks[(p / 56 / 2) * 28 + (p % 56) / 2] }
    }

    @Test func headShapesAndLoss() {
        let store = ParameterStore()
        let head = MaskHead(store, channels: 8, width: 16, classCount: 3)
        var rng = RandomGenerator(seed: 1)
        store.allocate(rng: &rng)
        let pooled = Tensor(shape: [5, 8, 14, 14], values: (0..<(5 * 8 * 196)).map { _ in rng.uniform(-1, 1) })
        let logits = head(pooled)
        #expect(logits.shape == [5, 3, 28, 28])
        #expect(store.parameters.map(\.name) == ["mask_fcn1/kernel", "mask_fcn1/bias", "mask_fcn2/kernel", "mask_fcn2/bias", "mask_fcn3/kernel",
                                                 "mask_fcn3/bias", "mask_fcn4/kernel", "mask_fcn4/bias", "conv5_mask/kernel", "conv5_mask/bias",
                                                 "mask_fcn_logits/kernel", "mask_fcn_logits/bias"])
        // L_mask: the selected channels' mean BCE over the RoIs of the global batch; two simulated ranks of 3 and 2
        // RoIs average to it.
        let targets = Tensor(shape: [5, 28, 28], values: (0..<(5 * 784)).map { _ in rng.uniform(0, 1) < 0.5 ? 0 : 1 })
        let classes: [Int32] = [1, 2, 2, 1, 1]
        let whole = head.loss(maskLogits: logits, classes: classes, targets: targets, crossReplica: .single)!.item
        let sum = logits.selectedChannelBCESum(classes: classes, targets: targets).item
        #expect(abs(whole - sum / (5 * 784)) <= 1e-6 * whole)
        func part(_ range: Range<Int>, other: Double) -> Float {
            let l = Tensor(shape: [range.count, 3, 28, 28], values: Array(logits.toArray()[(range.lowerBound * 3 * 784)..<(range.upperBound * 3 * 784)]))
            let t = Tensor(shape: [range.count, 28, 28], values: Array(targets.toArray()[(range.lowerBound * 784)..<(range.upperBound * 784)]))
            return head.loss(maskLogits: l, classes: Array(classes[range]), targets: t,
                             crossReplica: CrossReplica(size: 2, sum: { $0[0] += other }, allgather: { $0 }))!.item
        }
        #expect(abs((part(0..<3, other: 2) + part(3..<5, other: 3)) / 2 - whole) <= 1e-5 * whole)
        // A rank without positive RoIs joins the sum and gets nil.
        #expect(head.loss(maskLogits: Tensor(zeros: [0, 3, 28, 28]), classes: [], targets: Tensor(zeros: [0, 28, 28]),
                          crossReplica: CrossReplica(size: 2, sum: { $0[0] += 5 }, allgather: { $0 })) == nil)
    }

    /// RoIAlign with a pixel-aligned RoI reads the mask exactly: a 28 x 28 RoI gives the mask's pixels, a 56 x 56 one
    /// the 2x2 blocks' means binarised at 0.5 (here every block is all 0 or all 1, so the blocks themselves).
    @Test func targetsCutAndResampleTheInstanceMask() {
        let (h, w) = (64, 72)
        let block = Self.blockMask(seed: 3)
        var mask = [UInt8](repeating: 0, count: h * w)
        for y in 0..<56 { for x in 0..<56 { mask[(y + 4) * w + x + 8] = block[y * 56 + x] } }
        var other = [UInt8](repeating: 1, count: h * w)
        other[0] = 0
        let rois = [BoxCorners(xmin: 8, ymin: 4, xmax: 64, ymax: 60), BoxCorners(xmin: 20, ymin: 10, xmax: 48, ymax: 38),
                    BoxCorners(xmin: 30, ymin: 30, xmax: 40, ymax: 45)]
        let t = MaskTargets.targets(masks: [other, mask], height: h, width: w, rois: rois, instances: [1, 1, 0])
        #expect(t.shape == [3, 28, 28])
        for y in 0..<28 {
            for x in 0..<28 {
                #expect(t.data[y * 28 + x] == Float(block[(2 * y) * 56 + 2 * x]), "whole RoI at (\(y), \(x))")
                #expect(t.data[784 + y * 28 + x] == Float(mask[(10 + y) * w + 20 + x]), "pixel RoI at (\(y), \(x))")
            }
        }
        #expect((0..<784).allSatisfy { t.data[2 * 784 + $0] == 1 }, "the all-ones instance")
    }

    @Test func pasteFollowsTheBox() {
        // A pixel-aligned 28 x 28 box: the mask lands as it is.
        let block = Self.blockMask(seed: 4)
        let probabilities = (0..<784).map { Float(block[(2 * ($0 / 28)) * 56 + 2 * ($0 % 28)]) * 0.9 }
        let pasted = probabilities.withUnsafeBufferPointer {
            MaskTargets.paste($0.baseAddress!, box: BoxCorners(xmin: 10, ymin: 6, xmax: 38, ymax: 34), height: 40, width: 50)
        }
        for y in 0..<40 {
            for x in 0..<50 {
                let inside = (6..<34).contains(y) && (10..<38).contains(x)
                #expect(pasted[y * 50 + x] == (inside && probabilities[(y - 6) * 28 + x - 10] >= 0.5 ? 1 : 0), "(\(y), \(x))")
            }
        }
        // A constant mask fills exactly the pixels whose centres lie in a fractional box: x 10...20, y 5...15.
        let ones = [Float](repeating: 1, count: 784)
        let filled = ones.withUnsafeBufferPointer {
            MaskTargets.paste($0.baseAddress!, box: BoxCorners(xmin: 10.3, ymin: 5.2, xmax: 20.7, ymax: 15.9), height: 30, width: 30)
        }
        for y in 0..<30 { for x in 0..<30 { #expect(filled[y * 30 + x] == ((10...20).contains(x) && (5...15).contains(y) ? 1 : 0)) } }
        // A box twice the mask: a left-half mask covers the box's left half.
        let left = (0..<784).map { Float($0 % 28 < 14 ? 1 : 0) }
        let half = left.withUnsafeBufferPointer { MaskTargets.paste($0.baseAddress!, box: BoxCorners(xmin: 0, ymin: 0, xmax: 56, ymax: 56), height: 56, width: 56) }
        #expect((0..<56).allSatisfy { y in (0..<56).allSatisfy { x in half[y * 56 + x] == (x < 28 ? 1 : 0) } })
    }

    @Test func runLengthByHand() {
        // Rows [0 1 1] and [1 1 0]: column by column 0,1 | 1,1 | 1,0: runs 1, 4, 1.
        let rle = RunLengthMask(mask: [0, 1, 1, 1, 1, 0], height: 2, width: 3)
        #expect(rle.counts == [1, 4, 1] && rle.area == 4 && rle.compressed == "141")
        #expect(rle.boundingBox == (0, 0, 3, 2))
        #expect(rle.decoded() == [0, 1, 1, 1, 1, 0])
        #expect(RunLengthMask(compressed: "141", height: 2, width: 3) == rle)
        #expect(RunLengthMask(compressed: "141", height: 2, width: 4) == nil, "counts that do not cover the image")
        // Starting inside: an empty first run of 0s.
        #expect(RunLengthMask(mask: [1, 0, 0, 0], height: 2, width: 2).counts == [0, 1, 3])
        let a = RunLengthMask(mask: [1, 1, 0, 0, 1, 1], height: 3, width: 2), b = RunLengthMask(mask: [1, 0, 1, 0, 1, 0], height: 3, width: 2)
        // a: pixels (0,0) (0,1) (2,0) (2,1); b: (0,0) (1,0) (2,0). Intersection 2, union 5; crowd: 2 / |a| = 0.5.
        #expect(RunLengthMask.iou(a, b, crowd: false) == 0.4 && RunLengthMask.iou(a, b, crowd: true) == 0.5)
    }

    /// Random blob masks encoded here and by pycocotools (`maskUtils.encode`, `area`, `toBbox`, `iou` with crowd flags,
    /// and decoding this encoding's strings): identical. Skipped where python3 lacks pycocotools.
    @Test func runLengthMatchesTheCOCOAPI() throws {
        guard (try? run("/usr/bin/env", ["python3", "-c", "import pycocotools.mask"]))?.status == 0 else { return }
        let (h, w, n) = (37, 53, 12)
        var rng = RandomGenerator(seed: 21)
        var masks: [[UInt8]] = []
        for k in 0..<n {
            // Ellipses and rectangles of random size, some touching the border, one empty, one full.
            let (cx, cy) = (rng.uniform(-5, Float(w) + 5), rng.uniform(-5, Float(h) + 5))
            let (rx, ry) = (rng.uniform(2, 30), rng.uniform(2, 20))
            masks.append((0..<(h * w)).map { p in
                if k == 0 { return 0 }
                if k == 1 { return 1 }
                let (x, y) = (Float(p % w), Float(p / w))
                let inside = k % 2 == 0 ? ((x - cx) / rx) * ((x - cx) / rx) + ((y - cy) / ry) * ((y - cy) / ry) <= 1 : abs(x - cx) <= rx && abs(y - cy) <= ry
                return inside ? 1 : 0
            })
        }
        let dir = Fixture.temporaryDirectory("rle-coco")
        try Data(masks.flatMap { $0 }).write(to: URL(fileURLWithPath: dir + "/masks.bin"))
        let encoded = masks.map { RunLengthMask(mask: $0, height: h, width: w) }
        let script = """
        import json, sys, numpy as np, pycocotools.mask as m
        a = np.fromfile(sys.argv[1], dtype=np.uint8).reshape(\(n), \(h), \(w))
        rles = [m.encode(np.asfortranarray(x)) for x in a]
        crowd = [k % 3 == 0 for k in range(\(n))]
        ours = [{"size": [\(h), \(w)], "counts": s} for s in json.loads(sys.argv[2])]
        print(json.dumps({"counts": [r["counts"].decode() for r in rles], "area": [int(x) for x in m.area(rles)],
                          "bbox": m.toBbox(rles).tolist(), "iou": m.iou(rles, rles, crowd).tolist(),
                          "decoded": [m.decode(r).T.flatten().tolist() == a[k].T.flatten().tolist() for k, r in enumerate(ours)]}))
        """
        let ours = String(decoding: try JSONEncoder().encode(encoded.map(\.compressed)), as: UTF8.self)
        let result = try run("/usr/bin/env", ["python3", "-c", script, dir + "/masks.bin", ours])
        try #require(result.status == 0, "\(result.error)")
        struct Reference: Decodable { var counts: [String]; var area: [Int]; var bbox: [[Double]]; var iou: [[Double]]; var decoded: [Bool] }
        let reference = try JSONDecoder().decode(Reference.self, from: Data(result.output.utf8))
        #expect(reference.counts == encoded.map(\.compressed))
        #expect(reference.area == encoded.map(\.area))
        #expect(reference.decoded.allSatisfy { $0 })
        for k in 0..<n {
            let b = encoded[k].boundingBox
            #expect(reference.bbox[k] == [b.x, b.y, b.width, b.height], "mask \(k)")
            for g in 0..<n {
                // pycocotools' iou(dt, gt, iscrowd) is [dt][gt] with the crowd flag of the gt.
                #expect(abs(reference.iou[k][g] - RunLengthMask.iou(encoded[k], encoded[g], crowd: g % 3 == 0)) < 1e-12, "dt \(k) gt \(g)")
            }
        }
    }
    // MARK: ResNet-FPN and multi-scale RoIAlign

    @Test func pyramidLevelsAndTheFastPathsAgree() {
        let store = ParameterStore(), buffers = ParameterStore(trainable: false)
        let fpn = ResNetFPN(store, buffers: buffers, width: 1.0 / 16, depth: 1.0 / 3)
        var rng = RandomGenerator(seed: 2)
        store.allocate(rng: &rng)
        var unused = RandomGenerator(seed: 0)
        buffers.allocate(rng: &unused)
        #expect(fpn.pyramidChannels == 16)
        // Depth 1/3: 1, 1, 2, 1 blocks; the first of each stage projects its shortcut.
        let names = store.parameters.map(\.name)
        #expect(names.contains("layer3.1.conv3/kernel") && !names.contains("layer3.2.conv1/kernel") && !names.contains("layer2.1.conv1/kernel"))
        #expect(names.filter { $0.hasSuffix("downsample/kernel") }.count == 4)
        let images = Tensor(shape: [2, 3, 64, 96], values: (0..<(2 * 3 * 64 * 96)).map { _ in rng.uniform(-1, 1) })
        let planar = fpn(images, training: true, crossReplicaSum: nil)
        #expect(planar.map(\.shape) == [[2, 16, 16, 24], [2, 16, 8, 12], [2, 16, 4, 6], [2, 16, 2, 3], [2, 16, 1, 2]])
        // The same pass through the layouts' fast paths (blocked convolutions, additions, upsampling, pooling).
        let laidOut = fpn(LayoutTensor(images), training: true, crossReplicaSum: nil).map(\.tensor)
        for (a, b) in zip(planar, laidOut) {
            let worst = zip(a.toArray(), b.toArray()).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            let scale = a.toArray().reduce(Float(0)) { max($0, abs($1)) }
            #expect(a.shape == b.shape && worst <= 1e-4 * max(scale, 1), "level \(a.shape): \(worst) at scale \(scale)")
        }
    }

    @Test func roisGoToTheLevelOfTheirSize() {
        func square(_ side: Float) -> BoxCorners { BoxCorners(xmin: 0, ymin: 0, xmax: side, ymax: side) }
        // 224 x 224 reads P4; each halving one level down, each doubling one up, clamped to P2 ... P5.
        #expect([224, 112, 56, 448, 1000, 10, 223.9, 8].map { MultiScaleRoIAlign.level(of: square($0)) } == [4, 3, 2, 5, 5, 2, 3, 2])
        #expect(MultiScaleRoIAlign.level(of: BoxCorners(xmin: 0, ymin: 0, xmax: 448, ymax: 112)) == 4)

        var rng = RandomGenerator(seed: 6)
        let pyramid = [16, 8, 4, 2].map { side in Tensor(shape: [2, 3, side, side * 2], values: (0..<(2 * 3 * side * side * 2)).map { _ in rng.uniform(-1, 1) }) }
        let rois: [(image: Int, box: BoxCorners)] = [(0, BoxCorners(xmin: 2, ymin: 3, xmax: 60, ymax: 50)), (1, BoxCorners(xmin: 1, ymin: 1, xmax: 20, ymax: 15)),
                                                    (0, BoxCorners(xmin: 0, ymin: 0, xmax: 120, ymax: 60)), (1, BoxCorners(xmin: 30, ymin: 10, xmax: 40, ymax: 24))]
        let order = MultiScaleRoIAlign.order(rois)
        #expect(order.map { MultiScaleRoIAlign.level(of: rois[$0].box) } == order.map { MultiScaleRoIAlign.level(of: rois[$0].box) }.sorted())
        let pooled = MultiScaleRoIAlign(outputSize: 3)(pyramid, rois: order.map { rois[$0] })
        #expect(pooled.shape == [4, 3, 3, 3])
        // Row by row: RoIAlign of that RoI alone on its level.
        for (row, r) in order.enumerated() {
            let k = MultiScaleRoIAlign.level(of: rois[r].box), b = rois[r].box
            let alone = pyramid[k - 2].roiAlign(rois: Tensor(shape: [1, 5], values: [Float(rois[r].image), b.xmin, b.ymin, b.xmax, b.ymax]),
                                                outputHeight: 3, outputWidth: 3, spatialScale: 1 / Float(1 << k), samplingRatio: 2, aligned: true)
            #expect(Array(pooled.toArray()[(row * 27)..<((row + 1) * 27)]) == alone.toArray(), "RoI \(r) on P\(k)")
        }
        #expect(MultiScaleRoIAlign.restore(order.map { "roi \($0)" }, order: order) == ["roi 0", "roi 1", "roi 2", "roi 3"])
    }
    // MARK: Mask AP

    /// COCO's mask AP (`COCOEvaluator(iouType: .segm)`) against pycocotools' COCOeval with iouType 'segm' on the same
    /// masks: three images of random blobs, detections that are the objects' masks shifted by a few pixels, others
    /// false, one crowd region; the twelve summary figures agree. Skipped where python3 lacks pycocotools.
    @Test func maskAPMatchesTheCOCOAPI() throws {
        guard (try? run("/usr/bin/env", ["python3", "-c", "import pycocotools.cocoeval"]))?.status == 0 else { return }
        let (h, w) = (40, 60)
        var rng = RandomGenerator(seed: 31)
        func blob(cx: Float, cy: Float, rx: Float, ry: Float) -> [UInt8] {
            (0..<(h * w)).map { p in
                let (x, y) = (Float(p % w), Float(p / w))
                return ((x - cx) / rx) * ((x - cx) / rx) + ((y - cy) / ry) * ((y - cy) / ry) <= 1 ? 1 : 0
            }
        }
        var truths: [GroundTruthBox] = [], found: [Detection] = []
        var annotations: [[String: Any]] = [], results: [[String: Any]] = []
        func record(_ mask: RunLengthMask) -> [String: Any] { ["size": [h, w], "counts": mask.compressed] }
        func box(_ m: RunLengthMask) -> BoundingBox {
            let b = m.boundingBox
            return BoundingBox(xmin: b.x, ymin: b.y, xmax: b.x + b.width, ymax: b.y + b.height)
        }
        for image in 1...3 {
            for k in 0..<4 {
                let (cx, cy) = (rng.uniform(5, Float(w) - 5), rng.uniform(5, Float(h) - 5))
                let (rx, ry) = (rng.uniform(2, 14), rng.uniform(2, 10))
                let mask = RunLengthMask(mask: blob(cx: cx, cy: cy, rx: rx, ry: ry), height: h, width: w)
                guard mask.area > 0 else { continue }
                let crowd = image == 2 && k == 0, classID = 1 + k % 2
                truths.append(GroundTruthBox(imageID: image, classID: classID, box: box(mask), isCrowd: crowd, mask: mask))
                let b = mask.boundingBox
                annotations.append(["id": annotations.count + 1, "image_id": image, "category_id": classID, "segmentation": record(mask),
                                    "area": mask.area, "bbox": [b.x, b.y, b.width, b.height], "iscrowd": crowd ? 1 : 0])
                // A detection near the object, and now and then a stray one.
                for shift in [Float(0), rng.uniform(-4, 4)] {
                    let d = RunLengthMask(mask: blob(cx: cx + shift, cy: cy - shift / 2, rx: rx * rng.uniform(0.8, 1.2), ry: ry), height: h, width: w)
                    guard d.area > 0 else { continue }
                    let score = Double(rng.uniform(0.05, 1))
                    found.append(Detection(imageID: image, classID: classID, box: box(d), score: score, mask: d))
                    results.append(["image_id": image, "category_id": classID, "segmentation": record(d), "score": score])
                }
            }
        }
        let ours = try COCOEvaluator(iouType: .segm).evaluate(groundTruth: truths, detections: found).stats
        let dir = Fixture.temporaryDirectory("mask-ap")
        let gt: [String: Any] = ["images": (1...3).map { ["id": $0, "height": h, "width": w] }, "annotations": annotations,
                                 "categories": [["id": 1, "name": "a"], ["id": 2, "name": "b"]]]
        try JSONSerialization.data(withJSONObject: gt).write(to: URL(fileURLWithPath: dir + "/gt.json"))
        try JSONSerialization.data(withJSONObject: results).write(to: URL(fileURLWithPath: dir + "/dt.json"))
        let script = """
        import json, sys, io, contextlib
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2])
            e = COCOeval(gt, dt, 'segm'); e.evaluate(); e.accumulate(); e.summarize()
        print(json.dumps(list(e.stats)))
        """
        let result = try run("/usr/bin/env", ["python3", "-c", script, dir + "/gt.json", dir + "/dt.json"])
        try #require(result.status == 0, "\(result.error)")
        let reference = try JSONDecoder().decode([Double].self, from: Data(result.output.utf8))
        #expect(reference.count == 12 && ours.count == 12)
        for (k, (a, b)) in zip(ours, reference).enumerated() { #expect(abs(a - b) < 1e-9, "stat \(k): \(a) against pycocotools' \(b)") }
        #expect(ours[0] > 0.1 && ours[0] < 0.99, "a mask AP that tells nothing: \(ours[0])")
        // The same through Starling's own files (`eval --save-gt` and `--save-detections`: masks as compressed RLE beside
        // the boxes), each detection's bbox dropped before loadRes as detectron2 does, so its area is its mask's.
        try COCOJSON.writeAnnotations(DetectionGroundTruth(boxes: truths, images: (1...3).map { .init(id: $0, width: w, height: h) },
                                                           categories: [.init(id: 1, name: "a"), .init(id: 2, name: "b")]), to: dir + "/gt-written.json")
        try COCOJSON.writeResults(found, to: dir + "/dt-written.json")
        let dropBoxes = script.replacingOccurrences(of: "dt = gt.loadRes(sys.argv[2])",
                                                    with: "rows = json.load(open(sys.argv[2]))\n    for r in rows: r.pop('bbox')\n    dt = gt.loadRes(rows)")
        let written = try run("/usr/bin/env", ["python3", "-c", dropBoxes, dir + "/gt-written.json", dir + "/dt-written.json"])
        try #require(written.status == 0, "\(written.error)")
        let fromFiles = try JSONDecoder().decode([Double].self, from: Data(written.output.utf8))
        for (k, (a, b)) in zip(ours, fromFiles).enumerated() { #expect(abs(a - b) < 1e-9, "stat \(k): \(a) against pycocotools' \(b) on the written files") }
        // Masks required.
        #expect(throws: DetectionEvaluationError.self) {
            _ = try COCOEvaluator(iouType: .segm).evaluate(groundTruth: truths, detections: [Detection(imageID: 1, classID: 1, box: truths[0].box, score: 1)])
        }
    }
    /// Instance pictures: a mask's pixels take half its colour, the rest of the image stays, a truth mask's outline is white.
    @Test func instancePicturesBlendMasksAndOutlineTheTruth() {
        let (h, w) = (20, 30)
        let rgb = [UInt8](repeating: 100, count: h * w * 3)
        var mask = [UInt8](repeating: 0, count: h * w), truth = mask
        for y in 12..<16 { for x in 20..<26 { mask[y * w + x] = 1 } }
        for y in 2..<8 { for x in 2..<8 { truth[y * w + x] = 1 } }
        let box = DetectedBox(box: BoxCorners(xmin: 18, ymin: 10, xmax: 28, ymax: 18), classID: 1, score: 0.9)
        let canvas = DetectionDrawing.draw(rgb: rgb, width: w, height: h, instances: [(box, mask)], truthMasks: [truth], classNames: ["background", "person"])
        let color = RGB.palette[0]
        let half = RGB(UInt8((100 + Int(color.r)) / 2), UInt8((100 + Int(color.g)) / 2), UInt8((100 + Int(color.b)) / 2))
        #expect(canvas.pixel(x: 22, y: 14) == half)
        #expect(canvas.pixel(x: 12, y: 4) == RGB(100, 100, 100), "outside every mask and box")
        #expect(canvas.pixel(x: 2, y: 4) == .white && canvas.pixel(x: 4, y: 4) == RGB(100, 100, 100), "truth outline, and its inside")
    }
}



