import Foundation
import StarlingCore
import StarlingIO
import StarlingModels

/// `predict --frames`: a clip, frame by frame at batch 1, as a camera would deliver it.
extension PredictCommand {
    /// Seconds spent in each part of the per-frame loop, summed over the frames.
    struct FrameTimes {
        var decodeAndResize = 0.0, proposals = 0.0, forward = 0.0, masks = 0.0, draw = 0.0, write = 0.0
        var loop: Double { decodeAndResize + proposals + forward + masks + draw }

        /// `body`'s result, its seconds added to `part`.
        mutating func measure<T>(_ part: WritableKeyPath<FrameTimes, Double>, _ body: () throws -> T) rethrows -> T {
            let start = monotonicSeconds()
            defer { self[keyPath: part] += monotonicSeconds() - start }
            return try body()
        }
    }

    /// A decoded frame, as `ImageFile.readRGB` returns it.
    typealias RGBImage = (width: Int, height: Int, pixels: [UInt8])

    /// A frame decoded and resized bilinearly to the model's `height` x `width` (RGB).
    static func readResized(_ path: String, height: Int, width: Int) throws -> (frame: RGBImage, resized: [UInt8]) {
        let frame = try ImageFile.readRGB(path: path)
        return (frame, ImageResize.bilinear(frame.pixels, width: frame.width, height: frame.height, channels: 3, toWidth: width, toHeight: height))
    }

    /// A box found in the model's `height` x `width` input, in the pixels of a `frame`.
    static func toFrame(_ box: BoxCorners, frame: RGBImage, height: Int, width: Int) -> BoxCorners {
        let (sx, sy) = (Float(frame.width) / Float(width), Float(frame.height) / Float(height))
        return BoxCorners(xmin: box.xmin * sx, ymin: box.ymin * sy, xmax: box.xmax * sx, ymax: box.ymax * sy)
    }

    /// Writes the drawn frames, once every frame has been read (a bad frame leaves nothing written).
    func writePictures(_ pictures: [(String, PixelCanvas)], to folder: String, times: inout FrameTimes) throws {
        try makeDirectory(folder)
        try times.measure(\.write) {
            for (path, canvas) in pictures { try canvas.writePNG(path: Self.picturePath(folder, path)) }
        }
    }

    func predictFrames(_ model: any Model, frames spec: String) throws {
        let paths = try FrameSequence.frames(spec)
        let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().appendingPathComponent("frames").path
        // Every frame is decoded before anything is written, so that a bad frame leaves no half-written output.
        var times = FrameTimes()
        let inputShape = model.config.inputShape
        switch model {
        case let maskRCNN as MaskRCNN:
            try predictInstanceFrames(maskRCNN, paths: paths, spec: spec, folder: folder, times: &times)
        case is any Detector, is any RegionDetector:
            guard let names = model.config.classNames, inputShape.count == 3 else {
                throw EvalError("\(checkpoint): detector \(model.config.family) has no class names")
            }
            let decoding = DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK)
            let (h, w) = (inputShape[1], inputShape[2])
            let searches = (model as? any RegionDetector)?.readsProposals == true
            var results: [Detection] = []
            var pictures: [(String, PixelCanvas)] = []
            for (index, path) in paths.enumerated() {
                let (picture, resized) = try times.measure(\.decodeAndResize) { try Self.readResized(path, height: h, width: w) }
                // rcnn and fast-rcnn score selective search's regions of the frame, searched here as for `--image`.
                let proposals = searches ? times.measure(\.proposals) { Self.searchProposals(resized, height: h, width: w) } : []
                let found = try times.measure(\.forward) {
                    try detect(model, resized, proposals: { proposals }, decoding: decoding).map { d -> DetectedBox in
                        var d = d
                        d.box = Self.toFrame(d.box, frame: picture, height: h, width: w)
                        return d
                    }
                }
                let canvas = times.measure(\.draw) {
                    DetectionDrawing.draw(rgb: picture.pixels, width: picture.width, height: picture.height, detections: found,
                                          groundTruth: [], classNames: names)
                }
                pictures.append((path, canvas))
                results += found.map { Detection(imageID: index + 1, classID: $0.classID, box: $0.box.inDouble, score: Double($0.score)) }
            }
            try writePictures(pictures, to: folder, times: &times)
            let json = detections ?? folder + "/detections.json"
            try COCOJSON.writeResults(results, to: json)
            print("\(paths.count) frames of \(spec): \(results.count) detections at confidence \(confidence) (COCO results, image_id = frame number from 1): \(json)")
        case let autoencoder as any Autoencoder:
            // The autoencoders read gray 28 x 28 digits in 0...1 ([784] or [1, 28, 28]).
            let side = Int(Double(inputShape.reduce(1, *)).squareRoot())
            guard side * side == inputShape.reduce(1, *) else { throw EvalError("\(checkpoint): model \(model.config.family) does not take square gray images") }
            var pictures: [(String, PixelCanvas)] = []
            for path in paths {
                let input = try times.measure(\.decodeAndResize) {
                    let picture = try ImageFile.readRGB(path: path)
                    let gray = stride(from: 0, to: picture.pixels.count, by: 3).map { i -> UInt8 in
                        let (r, g, b) = (Float(picture.pixels[i]), Float(picture.pixels[i + 1]), Float(picture.pixels[i + 2]))
                        return UInt8((0.299 * r + 0.587 * g + 0.114 * b).rounded())
                    }
                    let small = ImageResize.bilinear(gray, width: picture.width, height: picture.height, channels: 1, toWidth: side, toHeight: side)
                    let input = Tensor(zeros: [1] + inputShape)
                    for p in 0..<(side * side) { input.data[p] = Float(small[p]) / 255 }
                    return input
                }
                let reconstruction = times.measure(\.forward) { GradMode.disabled { autoencoder.reconstruction(input) } }
                let canvas = times.measure(\.draw) {
                    // Input beside reconstruction, four screen pixels a pixel.
                    var canvas = PixelCanvas(width: 2 * side * 4 + 4, height: side * 4)
                    canvas.image((0..<(side * side)).map { input.data[$0] }, height: side, width: side, channels: 1, x: 0, y: 0, scale: 4)
                    canvas.image((0..<(side * side)).map { reconstruction.data[$0] }, height: side, width: side, channels: 1, x: side * 4 + 4, y: 0, scale: 4)
                    return canvas
                }
                pictures.append((path, canvas))
            }
            try writePictures(pictures, to: folder, times: &times)
            print("\(paths.count) frames of \(spec): input and reconstruction (gray, \(side)x\(side)) side by side")
        case let unet as UNet:
            let (h, w) = (inputShape[1], inputShape[2])
            let window = unet.outputWindow
            var pictures: [(String, PixelCanvas)] = []
            for path in paths {
                let (_, resized) = try times.measure(\.decodeAndResize) { try Self.readResized(path, height: h, width: w) }
                let classes = times.measure(\.forward) { unet.predictClasses(Self.tensor(resized, height: h, width: w)) }
                let canvas = times.measure(\.draw) {
                    var canvas = PixelCanvas(width: 2 * w + 4, height: h)
                    canvas.image(resized.map { Float($0) / 255 }, height: h, width: w, channels: 3, x: 0, y: 0)
                    for p in 0..<classes.count {
                        canvas.set(x: w + 4 + window.left + p % window.width, y: window.top + p / window.width,
                                   SegmentationEvaluation.colour(UInt8(classes[p]), void: 255))
                    }
                    return canvas
                }
                pictures.append((path, canvas))
            }
            try writePictures(pictures, to: folder, times: &times)
            print("\(paths.count) frames of \(spec): image and predicted classes (\(w)x\(h)) side by side")
        default:
            throw EvalError("\(checkpoint): model \(model.config.family) is neither a detector, an autoencoder nor a segmentation model")
        }
        let n = Double(paths.count)
        var parts = [String(format: "decode and resize %.1f ms", 1000 * times.decodeAndResize / n)]
        if times.proposals > 0 { parts.append(String(format: "selective search %.1f ms", 1000 * times.proposals / n)) }
        parts.append(String(format: "forward and decoding (NMS) %.1f ms", 1000 * times.forward / n))
        if times.masks > 0 { parts.append(String(format: "masks to the frame's size and RLE %.1f ms", 1000 * times.masks / n)) }
        parts.append(String(format: "draw %.1f ms", 1000 * times.draw / n))
        print(String(format: "%.1f FPS over the loop (%@ a frame; batch 1, %d BLAS threads); writing the pictures took %.1f ms a frame",
                     n / max(times.loop, 1e-9), parts.joined(separator: ", "), BLAS.threadCount, 1000 * times.write / n))
        print("pictures: \(folder)")
    }

    /// Mask R-CNN over frames: each frame resized to the model's input (sides multiples of 32), its instances found
    /// there, their boxes scaled back and their masks resized to the frame's pixels by nearest neighbour; drawn on the
    /// frame and written as COCO results with each mask as compressed RLE of the frame's size.
    func predictInstanceFrames(_ model: MaskRCNN, paths: [String], spec: String, folder: String, times: inout FrameTimes) throws {
        let names = model.config.classNames ?? []
        let (h, w) = (model.config.inputShape[1], model.config.inputShape[2])
        let decoding = DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK)
        var results: [Detection] = []
        var pictures: [(String, PixelCanvas)] = []
        for (index, path) in paths.enumerated() {
            let (picture, resized) = try times.measure(\.decodeAndResize) { try Self.readResized(path, height: h, width: w) }
            let found = times.measure(\.forward) {
                model.detectInstances(Batch(images: Self.tensor(resized, height: h, width: w)), decoding: decoding)[0]
            }
            let instances = times.measure(\.masks) {
                let instances = found.map { instance -> (detection: DetectedBox, mask: [UInt8]) in
                    var d = instance.detection
                    d.box = Self.toFrame(d.box, frame: picture, height: h, width: w)
                    return (d, Self.nearest(instance.mask, height: h, width: w, toHeight: picture.height, toWidth: picture.width))
                }
                results += instances.map {
                    Detection(imageID: index + 1, classID: $0.detection.classID, box: $0.detection.box.inDouble, score: Double($0.detection.score),
                              mask: RunLengthMask(mask: $0.mask, height: picture.height, width: picture.width))
                }
                return instances
            }
            let canvas = times.measure(\.draw) {
                DetectionDrawing.draw(rgb: picture.pixels, width: picture.width, height: picture.height, instances: instances, classNames: names)
            }
            pictures.append((path, canvas))
        }
        try writePictures(pictures, to: folder, times: &times)
        let json = detections ?? folder + "/detections.json"
        try COCOJSON.writeResults(results, to: json)
        print("\(paths.count) frames of \(spec): \(results.count) instances at confidence \(confidence) (COCO results with masks as compressed RLE, image_id = frame number from 1): \(json)")
    }

    /// A row-major mask resized by nearest neighbour (the source pixel under each target pixel's centre).
    static func nearest(_ mask: [UInt8], height: Int, width: Int, toHeight: Int, toWidth: Int) -> [UInt8] {
        if height == toHeight && width == toWidth { return mask }
        let columns = (0..<toWidth).map { min(width - 1, Int((Double($0) + 0.5) * Double(width) / Double(toWidth))) }
        var out = [UInt8](repeating: 0, count: toHeight * toWidth)
        for y in 0..<toHeight {
            let row = min(height - 1, Int((Double(y) + 0.5) * Double(height) / Double(toHeight))) * width
            for x in 0..<toWidth { out[y * toWidth + x] = mask[row + columns[x]] }
        }
        return out
    }

    /// `frame0001.jpg` -> `FOLDER/frame0001.png`.
    static func picturePath(_ folder: String, _ frame: String) -> String {
        folder + "/" + URL(fileURLWithPath: frame).deletingPathExtension().lastPathComponent + ".png"
    }
}
