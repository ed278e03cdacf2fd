import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingData
@testable import StarlingDetection
@testable import StarlingTraining

/// An rcnn small enough for a debug build: 32-pixel windows, 1/8 of the channels, 32 hidden units.
private func smallRCNN(height: Int, width: Int, classNames: [String], seed: UInt64 = 1, rois: Int = 16) throws -> RCNN {
    var config = try RCNN.configuration(for: DatasetDescription(path: "d.h5", sampleShape: [3, height, width], classNames: classNames))
    config.options["width"] = 0.125
    config.options["hidden"] = 32
    config.options["warp"] = 32
    config.options["rois_per_image"] = Double(rois)
    return try ModelRegistry.build(config, seed: seed) as! RCNN
}

// Serialized: Foundation's readDataToEndOfFile (in `run`) traps on EINTR, which another test's child exiting can cause.
@Suite(.serialized) struct RCNNTests {
    /// Appendix A's warp: the window is the box dilated so that 16 / 227 of the warped side is context on each side, and
    /// the warped pixels are bilinear samples at the centres of a warp x warp grid over it (checked on a ramp image,
    /// whose value at a point is its x coordinate).
    @Test func windowsCarryContextAndWarpBilinearly() throws {
        let model = try smallRCNN(height: 40, width: 64, classNames: ["background", "thing"])
        #expect(model.warp == 32 && abs(model.contextPadding - 16 * 32 / 227) < 1e-6)
        let windows = model.windows([[BoxCorners(xmin: 10, ymin: 10, xmax: 50, ymax: 30)]])
        let grow = Float(32) / (32 - 2 * 16 * 32 / 227)
        let expected: [Float] = [0, 30 - 20 * grow, 20 - 10 * grow, 30 + 20 * grow, 20 + 10 * grow]
        for j in 0..<5 { #expect(abs(windows.data[j] - expected[j]) < 1e-4) }
        // Context in warped pixels: the box's edge lands 16 x 32 / 227 pixels inside the window's.
        let boxInWarped = (10 - windows.data[1]) / (windows.data[3] - windows.data[1]) * 32
        #expect(abs(boxInWarped - 16 * 32 / 227) < 1e-3)

        let (h, w) = (40, 64)
        let ramp = Tensor(shape: [1, 3, h, w], values: (0..<(3 * h * w)).map { Float($0 % w) })
        let crops = model.crops(ramp, windows: windows)
        #expect(crops.shape == [1, 3, 32, 32])
        let (x0, x1) = (windows.data[1], windows.data[3])
        for j in [0, 5, 16, 31] {
            // Sample j's centre in continuous pixels, as a pixel index (centres at k + 0.5), clamped at the borders.
            let index = min(max(x0 + (Float(j) + 0.5) * (x1 - x0) / 32 - 0.5, 0), Float(w - 1))
            #expect(abs(crops.data[12 * 32 + j] - (index / 127.5 - 1)) < 1e-4, "column \(j)")
        }
    }

    /// The fine-tuning loss is the softmax cross-entropy of the sampled windows (by hand, in float64), and two simulated
    /// ranks with unequal window counts average to one process's loss.
    @Test func lossIsTheWindowsCrossEntropyOverTheGlobalCount() throws {
        let (h, w) = (48, 64)
        let model = try smallRCNN(height: h, width: w, classNames: ["background", "car", "person"], seed: 3)
        var rng = RandomGenerator(seed: 9)
        let images = Tensor(shape: [3, 3, h, w], values: (0..<(3 * 3 * h * w)).map { _ in rng.uniform(0, 255) })
        let objects: [[Object]] = [[Object(box: BoxCorners(xmin: 8, ymin: 6, xmax: 30, ymax: 40), classID: 1)],
                                   [Object(box: BoxCorners(xmin: 30, ymin: 10, xmax: 60, ymax: 40), classID: 2)],
                                   [Object(box: BoxCorners(xmin: 5, ymin: 5, xmax: 25, ymax: 30), classID: 1),
                                    Object(box: BoxCorners(xmin: 34, ymin: 20, xmax: 60, ymax: 44), classID: 2)]]
        var batch = Batch(images: images, indices: [4, 11, 7], epoch: 2, seed: 17)
        batch.objects = objects
        batch.proposals = objects.map { objs in
            objs.flatMap { o in (0..<10).map { _ in
                let dx = rng.uniform(-0.5, 0.5) * o.box.width, dy = rng.uniform(-0.5, 0.5) * o.box.height
                return BoxCorners(xmin: max(0, o.box.xmin + dx), ymin: max(0, o.box.ymin + dy),
                                  xmax: min(Float(w), o.box.xmax + dx), ymax: min(Float(h), o.box.ymax + dy))
            } } + [BoxCorners(xmin: 0, ymin: 0, xmax: 6, ymax: 6)]
        }
        let loss = GradMode.disabled { model.loss(batch, training: true).item }
        let samples = model.sample(batch, training: true)
        #expect(samples.allSatisfy { $0.foregroundCount > 0 && $0.foregroundCount <= 4 && $0.rois.count <= 16 })
        // No lower IoU bound for R-CNN's background: the far 6x6 proposal may be drawn.
        #expect(model.sampling.matcher.low == 0)
        let logits = GradMode.disabled { model.forward(model.crops(images, windows: model.windows(samples.map(\.rois)))).logits }
        let labels = samples.flatMap(\.labels)
        var expected = 0.0
        for r in labels.indices {
            let z = (0..<3).map { Double(logits.data[r * 3 + $0]) }
            let top = z.max()!
            expected += log(z.map { exp($0 - top) }.reduce(0, +)) + top - z[Int(labels[r])]
        }
        expected /= Double(labels.count)
        #expect(abs(Double(loss) - expected) <= 1e-5 * abs(expected), "family \(loss), by hand \(expected)")

        let halves = [slice(batch, 0..<2), slice(batch, 2..<3)]
        let counts = halves.map { model.sample($0, training: true).reduce(0) { $0 + $1.rois.count } }
        var perRank: [Double] = []
        for (k, half) in halves.enumerated() {
            let other = Double(counts[1 - k])
            model.crossReplica = CrossReplica(size: 2, sum: { $0[0] += other }, allgather: { $0 })
            perRank.append(Double(GradMode.disabled { model.loss(half, training: true).item }))
        }
        model.crossReplica = .single
        // Windows are classified one by one (no batch norm): the ranks' mean is the whole batch's loss.
        #expect(abs((perRank[0] + perRank[1]) / 2 - Double(loss)) <= 1e-5 * Double(loss), "ranks \(perRank), one process \(loss)")
    }

    /// The course's three steps on four real Penn-Fudan frames with their selective-search proposals: fine-tuning brings
    /// the windows' loss down; the SVM stage (hard negative mining, regressors) then detects every pedestrian of the
    /// frames with a box at IoU >= 0.5, and its SVMs separate each frame's pedestrians from its mined negatives.
    @Test func threeStagesOnRealFrames() throws {
        let dir = Fixture.temporaryDirectory("rcnn-stages")
        guard let data = try pennFudanFrames(dir) else { return }   // shared data not here
        let source = try DetectionSource.withProposals(path: data, split: "train")
        var config = try RCNN.configuration(for: source.datasetDescription)
        config.options["width"] = 0.25
        config.options["hidden"] = 64
        config.options["warp"] = 32
        config.options["test_proposals"] = 300
        let model = try ModelRegistry.build(config, seed: 2) as! RCNN
        var batch = try source.batch(indices: Array(0..<source.count), epoch: 0, training: true, config: config)
        batch.seed = 1
        let (first, last) = overfit(model, &batch, steps: 50, learningRate: 1e-3)
        #expect(last < first / 4, "loss \(first) -> \(last)")

        var settings = RCNNSVMTraining.Settings()
        settings.retrainLimit = 200
        settings.imagesPerRound = 2
        let report = try RCNNSVMTraining.train(model, source: source, settings: settings)
        #expect(model.hasSVMs && report.positives == [batch.objects!.reduce(0) { $0 + $1.filter { !$0.difficult }.count }])
        #expect(report.solves[0] >= 2 && report.cachedNegatives[0] > 0 && report.regressionSamples[0] > 0)
        // Mining goes image by image whatever the rounds: rounds of one image give the same machines and regressors.
        let (svms, regressors) = (model.svms, model.regressors)
        settings.imagesPerRound = 1
        let again = try RCNNSVMTraining.train(model, source: source, settings: settings)
        #expect(model.svms == svms && again.solves == report.solves && again.featureScale == report.featureScale)
        #expect(zip(model.regressors, regressors).allSatisfy { $0.weights == $1.weights && $0.bias == $1.bias })

        let plain = try source.batch(indices: Array(0..<source.count), epoch: 0, training: false, config: config)
        // Evaluation's decoding: with four frames' positives, C = 0.001 keeps the margins small (scores near 0.5), and
        // the ranking is what counts.
        let found = model.detect(plain, decoding: .evaluation)
        for (n, objects) in (plain.objects ?? []).enumerated() {
            for o in objects where !o.difficult {
                #expect(found[n].contains { $0.classID == o.classID && iou($0.box, o.box) >= 0.5 },
                        "frame \(n): no detection at \(o.box); found \(found[n].prefix(4))")
            }
        }
        // The stored SVM scores a frame's pedestrians above its negatives (proposals away from every pedestrian).
        let svm = model.svms[0]
        for k in 0..<source.count {
            let truths = plain.objects![k].filter { !$0.difficult }
            let far = plain.proposals![k].prefix(300).filter { p in truths.allSatisfy { iou(p, $0.box) < 0.3 } }
            let scored = { (boxes: [BoxCorners]) -> [Float] in
                let f = model.regionFeatures(plain.images, image: k, boxes: boxes).fc7.map { $0 * model.featureScale }
                return (0..<boxes.count).map { i in f.withUnsafeBufferPointer { svm.score($0.baseAddress! + i * model.fc7Dimension) } }
            }
            let (positive, negative) = (scored(truths.map(\.box)), scored(Array(far)))
            let sorted = negative.sorted()
            #expect(positive.allSatisfy { $0 > sorted[sorted.count * 95 / 100] }, "frame \(k): pedestrians \(positive), negatives' 95th percentile \(sorted[sorted.count * 95 / 100])")
        }
    }

    /// `starling train --model rcnn` then `starling rcnn-svm` on one rank and on two: the SVMs and regressors agree (the
    /// ranks exchange their hard negatives per round and add their regression sums), the checkpoints load and detect.
    @Test func svmStageOnTwoRanksMatchesOneProcess() throws {
        let dir = Fixture.temporaryDirectory("rcnn-svm-ranks")
        guard let data = try pennFudanFrames(dir) else { return }   // shared data not here
        let trained = try run(Fixture.starling, ["train", "--model", "rcnn", "--data", data, "--width-multiplier", "0.125", "--option", "hidden=32",
                                                 "--option", "warp=32", "--epochs", "3", "--batch-size", "2", "--val-split", "none", "--seed", "4",
                                                 "--no-augment", "--out", dir + "/ck"])
        try #require(trained.status == 0, "\(trained.error)")
        // Rounds of different sizes on one rank and on two: the machines do not depend on them.
        let args = ["rcnn-svm", "--checkpoint", dir + "/ck/rcnn-last.h5", "--data", data, "--retrain-limit", "100"]
        let one = try run(Fixture.starling, args + ["--images-per-round", "3", "--out", dir + "/one.h5"])
        #expect(one.status == 0, "\(one.error)")
        let two = try mpirun(2, args + ["--images-per-round", "2", "--out", dir + "/two.h5"])
        #expect(two.status == 0, "\(two.output)\(two.error)")
        let (a, b) = (try Checkpoint.load(from: dir + "/one.h5").model as! RCNN, try Checkpoint.load(from: dir + "/two.h5").model as! RCNN)
        #expect(a.hasSVMs && b.hasSVMs)
        for (x, y) in zip(a.svms, b.svms) {
            let scale = x.weights.reduce(Float(0)) { max($0, abs($1)) }
            let worst = zip(x.weights, y.weights).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            #expect(worst <= 1e-3 * scale && abs(x.bias - y.bias) <= 1e-3 * max(abs(x.bias), 1), "SVM weights differ by \(worst) at scale \(scale)")
        }
        for (x, y) in zip(a.regressors, b.regressors) {
            for k in 0..<4 {
                let worst = zip(x.weights[k], y.weights[k]).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
                #expect(worst <= 1e-4, "regressor \(k) differs by \(worst)")
            }
        }
        #expect(one.output.contains("on 1 rank(s)") && two.output.contains("on 2 rank(s)"))
        // The SVM checkpoint evaluates and predicts through the commands (the frames' own split: no validation split).
        let scored = try run(Fixture.starling, ["eval", "--checkpoint", dir + "/one.h5", "--data", data, "--split", "train"])
        #expect(scored.status == 0 && scored.output.contains("proposals per image") && scored.output.contains("mAP"), "\(scored.output)\(scored.error)")
        let drawn = try run(Fixture.starling, ["predict", "--checkpoint", dir + "/one.h5", "--data", data, "--split", "train", "--limit", "1",
                                                "--confidence", "0.3", "--out", dir + "/pictures"])
        #expect(drawn.status == 0 && FileManager.default.fileExists(atPath: dir + "/pictures/train-0-predictions.png"), "\(drawn.error)")
    }
}
