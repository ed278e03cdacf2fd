import ArgumentParser
import Foundation
import StarlingCore
import StarlingIO
import StarlingModels

/// `starling predict`: a detector's boxes on an image file or on a dataset's images, as a table and as pictures.
struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict", abstract: "Detect objects (print `class conf xmin ymin xmax ymax` and draw the boxes) or segment an image (draw its classes).")

    @Option(help: "Detector checkpoint.") var checkpoint: String
    @Option(help: "A JPEG or PNG image (resized to the model's input; boxes reported in the image's own pixels).") var image: String?
    @Option(help: "A detection dataset (`starling data detection`): predictions drawn beside the ground truth.") var data: String?
    @Option(help: "Split of --data.") var split: String = "val"
    @Option(help: "Images of --data to predict.") var limit: Int = 8
    @Option(help: "Confidence threshold (0.5 for display).") var confidence: Float = 0.5
    @Option(help: "Per-class NMS IoU.") var nmsIou: Float = 0.45
    @Option(help: "Detections kept per image.") var topK: Int = 200
    @Option(help: "A folder of JPEG or PNG frames (in the natural order of their names) or a numbered sequence such as clip/frame%05d.jpg: every frame predicted, drawn into --out, the loop's FPS printed; detectors, autoencoders (reconstructions) and segmentation models.") var frames: String?
    @Option(help: "--frames with a detector or mask-rcnn: the COCO results JSON (default: detections.json in --out; mask-rcnn's masks as compressed RLE of the frame's size); image_id is the frame's number in order, from 1.") var detections: String?
    @Option(help: "Folder for the pictures (default: next to the checkpoint; --frames: a folder 'frames' there).") var out: String?

    func validate() throws {
        guard [image, data, frames].compactMap({ $0 }).count == 1 else { throw ValidationError("give exactly one of --image, --data and --frames") }
        if detections != nil, frames == nil { throw ValidationError("--detections goes with --frames") }
        guard limit > 0 else { throw ValidationError("--limit must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let loaded = try Checkpoint.load(from: checkpoint)
            if let frames { return try predictFrames(loaded.model, frames: frames) }
            if let unet = loaded.model as? UNet { return try segment(unet) }
            if let maskRCNN = loaded.model as? MaskRCNN { return try instances(maskRCNN) }
            let model = loaded.model
            guard model is any Detector || model is any RegionDetector, let names = model.config.classNames else {
                throw EvalError("\(checkpoint): model \(loaded.model.config.family) is not a detector")
            }
            let decoding = DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK)
            let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
            try makeDirectory(folder)
            let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
            if let image {
                let picture = try ImageFile.readRGB(path: image)
                let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
                let found = try detect(model, resized, proposals: { Self.searchProposals(resized, height: h, width: w) }, decoding: decoding).map { d -> DetectedBox in
                    // Back to the image's own pixels.
                    let (sx, sy) = (Float(picture.width) / Float(w), Float(picture.height) / Float(h))
                    var d = d
                    d.box = BoxCorners(xmin: d.box.xmin * sx, ymin: d.box.ymin * sy, xmax: d.box.xmax * sx, ymax: d.box.ymax * sy)
                    return d
                }
                print(image)
                print(DetectionDrawing.table(found, classNames: names))
                let path = "\(folder)/\(URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent)-predictions.png"
                try DetectionDrawing.draw(rgb: picture.pixels, width: picture.width, height: picture.height, detections: found, groundTruth: [], classNames: names).writePNG(path: path)
                print("picture: \(path)")
            }
            if let data {
                let dataset = try DetectionDataset(path: data, split: split)
                guard dataset.classNames == names, dataset.imageHeight == h, dataset.imageWidth == w else {
                    throw EvalError("\(data) holds \(dataset.imageHeight)x\(dataset.imageWidth) images of classes \(dataset.classNames.dropFirst().joined(separator: ", ")); the model takes \(h)x\(w) and \(names.dropFirst().joined(separator: ", "))")
                }
                let reader = (model as? any RegionDetector)?.readsProposals == true ? try ProposalReader(dataset: dataset) : nil
                for i in 0..<min(limit, dataset.count) {
                    var rgb = [UInt8](repeating: 0, count: h * w * 3)
                    try rgb.withUnsafeMutableBufferPointer { try dataset.readImages([i], into: $0) }
                    let found = try detect(model, rgb, proposals: { try reader?.proposals(of: i) ?? [] }, decoding: decoding)
                    let name = dataset.fileNames?[i] ?? "image \(dataset.imageIDs[i])"
                    print("\(name) (ground truth \(dataset.objects(of: i).count) boxes)")
                    print(DetectionDrawing.table(found, classNames: names))
                    let path = "\(folder)/\(split)-\(i)-predictions.png"
                    try DetectionDrawing.draw(rgb: rgb, width: w, height: h, detections: found, groundTruth: dataset.objects(of: i), classNames: names).writePNG(path: path)
                    print("picture (predictions in colour, ground truth in white): \(path)\n")
                }
            }
        }
    }

    /// Mask R-CNN: each instance's class, score, box and mask, on an image file (resized to the model's input and drawn
    /// at that size) or on an instance dataset's images (the truth's mask outlines in white).
    func instances(_ model: MaskRCNN) throws {
        let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
        try makeDirectory(folder)
        let names = model.config.classNames ?? []
        let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
        let decoding = DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK)
        func predict(_ rgb: [UInt8]) -> [(detection: DetectedBox, mask: [UInt8])] {
            model.detectInstances(Batch(images: Self.tensor(rgb, height: h, width: w)), decoding: decoding)[0].map { ($0.detection, $0.mask) }
        }
        func report(_ found: [(detection: DetectedBox, mask: [UInt8])]) {
            print(DetectionDrawing.table(found.map(\.detection), classNames: names))
            let pixels = found.map { $0.mask.reduce(0) { $0 + Int($1) } }
            print("\(found.count) instances, \(pixels.reduce(0, +)) mask pixels in all")
        }
        if let image {
            let picture = try ImageFile.readRGB(path: image)
            let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
            let found = predict(resized)
            print("\(image) (\(picture.width)x\(picture.height), predicted and drawn at \(w)x\(h))")
            report(found)
            let path = "\(folder)/\(URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent)-instances.png"
            try DetectionDrawing.draw(rgb: resized, width: w, height: h, instances: found, classNames: names).writePNG(path: path)
            print("picture: \(path)")
        }
        if let data {
            let dataset = try SegmentationDataset(path: data, split: split)
            let source = SegmentationSource(dataset: dataset)
            try source.checkCompatible(with: model.config)
            var pictures: [(path: String, canvas: PixelCanvas)] = []
            for i in 0..<min(limit, dataset.count) {
                let batch = try source.batch(indices: [i], epoch: 0, training: false, config: model.config)
                let rgb = (0..<(h * w * 3)).map { UInt8(batch.images.data[($0 % 3) * h * w + $0 / 3]) }
                let found = predict(rgb)
                print("\(split) image \(i) (ground truth \(batch.objects?[0].count ?? 0) instances)")
                report(found)
                pictures.append(("\(folder)/\(split)-\(i)-instances.png",
                                 DetectionDrawing.draw(rgb: rgb, width: w, height: h, instances: found,
                                                       truthMasks: batch.segmentation?.instanceMasks?[0] ?? [], classNames: names)))
            }
            // Written after every image predicted, so a bad image leaves no pictures behind.
            for picture in pictures {
                try picture.canvas.writePNG(path: picture.path)
                print("picture (instances in colour, truth outlines in white): \(picture.path)")
            }
        }
    }

    /// A segmentation model: each pixel's class on an image file (resized to the model's input) or beside the truth
    /// on a dataset's images; the share of each class printed, the picture drawn in the class palette.
    func segment(_ model: UNet) throws {
        let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
        try makeDirectory(folder)
        let names = model.config.classNames ?? []
        let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
        if let image {
            let picture = try ImageFile.readRGB(path: image)
            let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
            let classes = model.predictClasses(Self.tensor(resized, height: h, width: w))
            let window = model.outputWindow
            print("\(image) (\(picture.width)x\(picture.height), segmented at \(w)x\(h), window \(window.width)x\(window.height))")
            for (c, name) in names.enumerated() {
                let share = Double(classes.filter { $0 == Int32(c) }.count) / Double(max(classes.count, 1))
                print("  " + name.padding(toLength: 14, withPad: " ", startingAt: 0) + String(format: " %6.2f %%", 100 * share))
            }
            var canvas = PixelCanvas(width: 2 * w + 4, height: h)
            canvas.image(resized.map { Float($0) / 255 }, height: h, width: w, channels: 3, x: 0, y: 0)
            for p in 0..<classes.count {
                canvas.set(x: w + 4 + window.left + p % window.width, y: window.top + p / window.width,
                           SegmentationEvaluation.colour(UInt8(classes[p]), void: 255))
            }
            let path = "\(folder)/\(URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent)-segmentation.png"
            try canvas.writePNG(path: path)
            print("picture (image, prediction): \(path)")
            print("palette: " + names.enumerated().map { c, name in
                let colour = SegmentationEvaluation.colour(UInt8(c), void: 255)
                return "\(name) (\(colour.r), \(colour.g), \(colour.b))"
            }.joined(separator: ", "))
        }
        if let data {
            let dataset = try SegmentationDataset(path: data, split: split)
            let path = "\(folder)/\(split)-segmentation.png"
            try SegmentationEvaluation.picture(model, data: dataset, indices: Array(0..<min(limit, dataset.count))).writePNG(path: path)
            print("picture (image, truth, prediction for \(min(limit, dataset.count)) images of \(data) [\(split)]): \(path)")
        }
    }

    /// One image's detections (HWC bytes at the model's input size); `proposals` gives its regions to a two-stage
    /// detector that reads them.
    func detect(_ model: any Model, _ rgb: [UInt8], proposals: () throws -> [BoxCorners], decoding: DetectionDecoding) throws -> [DetectedBox] {
        let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
        if let twoStage = model as? any RegionDetector {
            var batch = Batch(images: Self.tensor(rgb, height: h, width: w))
            if twoStage.readsProposals { batch.proposals = [try proposals()] }
            return twoStage.detect(batch, decoding: decoding)[0]
        }
        guard let detector = model as? any Detector else { return [] }
        return detector.detect(Self.tensor(rgb, height: h, width: w), decoding: decoding)[0]
    }

    /// Selective search's fast mode on an image at the model's input size (seed 0, the best 2,000 kept), as
    /// `starling proposals --store` searches a dataset's images: the proposals of a raw image for fast-rcnn.
    static func searchProposals(_ rgb: [UInt8], height: Int, width: Int) -> [BoxCorners] {
        let found = rgb.withUnsafeBufferPointer {
            SelectiveSearch(mode: .fast).proposals(pixels: $0, height: height, width: width, seed: SelectiveSearch.imageSeed(0, index: 0))
        }
        return Array(found.prefix(2000))
    }

    /// HWC bytes to a [1, 3, H, W] tensor of 0...255 values.
    static func tensor(_ rgb: [UInt8], height h: Int, width w: Int) -> Tensor {
        let t = Tensor(zeros: [1, 3, h, w])
        for c in 0..<3 { for p in 0..<(h * w) { t.data[c * h * w + p] = Float(rgb[3 * p + c]) } }
        return t
    }
}
