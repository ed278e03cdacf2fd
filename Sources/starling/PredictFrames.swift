import Foundation
import StarlingCore
import StarlingIO
import StarlingModels

/// `predict --frames`: a clip, frame by frame at batch 1, as a camera would deliver it.
extension PredictCommand {
    /// Seconds spent in each part of the per-frame loop, summed over the frames.
    struct FrameTimes {
        var decodeAndResize = 0.0, forward = 0.0, draw = 0.0, write = 0.0
        var loop: Double { decodeAndResize + forward + draw }
    }

    func predictFrames(_ model: any Model, frames spec: String) throws {
        let paths = try FrameSequence.frames(spec)
        let folder = out ?? URL(fileURLWithPath: checkpoint).deletingLastPathComponent().appendingPathComponent("frames").path
        // Every frame is decoded before anything is written, so that a bad frame leaves no half-written output.
        var times = FrameTimes()
        let inputShape = model.config.inputShape
        switch model {
        case let detector as any Detector:
            guard let names = detector.config.classNames, inputShape.count == 3 else {
                throw EvalError("\(checkpoint): detector \(model.config.family) has no class names")
            }
            let decoding = DetectionDecoding(confidenceThreshold: confidence, iouThreshold: nmsIou, topK: topK)
            let (h, w) = (inputShape[1], inputShape[2])
            var results: [Detection] = []
            var pictures: [(String, PixelCanvas)] = []
            for (index, path) in paths.enumerated() {
                var start = monotonicSeconds()
                let picture = try ImageFile.readRGB(path: path)
                let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
                var now = monotonicSeconds()
                times.decodeAndResize += now - start
                start = now
                let (sx, sy) = (Float(picture.width) / Float(w), Float(picture.height) / Float(h))
                let found = detector.detect(Self.tensor(resized, height: h, width: w), decoding: decoding)[0].map { d -> DetectedBox in
                    var d = d
                    d.box = BoxCorners(xmin: d.box.xmin * sx, ymin: d.box.ymin * sy, xmax: d.box.xmax * sx, ymax: d.box.ymax * sy)
                    return d
                }
                now = monotonicSeconds()
                times.forward += now - start
                start = now
                let canvas = DetectionDrawing.draw(rgb: picture.pixels, width: picture.width, height: picture.height, detections: found,
                                                   groundTruth: [], classNames: names)
                times.draw += monotonicSeconds() - start
                pictures.append((path, canvas))
                results += found.map { Detection(imageID: index + 1, classID: $0.classID, box: $0.box.inDouble, score: Double($0.score)) }
            }
            try makeDirectory(folder)
            let start = monotonicSeconds()
            for (path, canvas) in pictures { try canvas.writePNG(path: Self.picturePath(folder, path)) }
            times.write = monotonicSeconds() - start
            let json = detections ?? folder + "/detections.json"
            try COCOJSON.writeResults(results, to: json)
            print("\(paths.count) frames of \(spec): \(results.count) detections at confidence \(confidence) (COCO results, image_id = frame number from 1): \(json)")
        case let autoencoder as any Autoencoder:
            // The autoencoders read gray 28 x 28 digits in 0...1 ([784] or [1, 28, 28]).
            let side = Int(Double(inputShape.reduce(1, *)).squareRoot())
            guard side * side == inputShape.reduce(1, *) else { throw EvalError("\(checkpoint): model \(model.config.family) does not take square gray images") }
            var pictures: [(String, PixelCanvas)] = []
            for path in paths {
                var start = monotonicSeconds()
                let picture = try ImageFile.readRGB(path: path)
                let gray = stride(from: 0, to: picture.pixels.count, by: 3).map { i -> UInt8 in
                    let (r, g, b) = (Float(picture.pixels[i]), Float(picture.pixels[i + 1]), Float(picture.pixels[i + 2]))
                    return UInt8((0.299 * r + 0.587 * g + 0.114 * b).rounded())
                }
                let small = ImageResize.bilinear(gray, width: picture.width, height: picture.height, channels: 1, toWidth: side, toHeight: side)
                let input = Tensor(zeros: [1] + inputShape)
                for p in 0..<(side * side) { input.data[p] = Float(small[p]) / 255 }
                var now = monotonicSeconds()
                times.decodeAndResize += now - start
                start = now
                let reconstruction = GradMode.disabled { autoencoder.reconstruction(input) }
                now = monotonicSeconds()
                times.forward += now - start
                start = now
                // Input beside reconstruction, four screen pixels a pixel.
                var canvas = PixelCanvas(width: 2 * side * 4 + 4, height: side * 4)
                canvas.image((0..<(side * side)).map { input.data[$0] }, height: side, width: side, channels: 1, x: 0, y: 0, scale: 4)
                canvas.image((0..<(side * side)).map { reconstruction.data[$0] }, height: side, width: side, channels: 1, x: side * 4 + 4, y: 0, scale: 4)
                times.draw += monotonicSeconds() - start
                pictures.append((path, canvas))
            }
            try makeDirectory(folder)
            let start = monotonicSeconds()
            for (path, canvas) in pictures { try canvas.writePNG(path: Self.picturePath(folder, path)) }
            times.write = monotonicSeconds() - start
            print("\(paths.count) frames of \(spec): input and reconstruction (gray, \(side)x\(side)) side by side")
        case let unet as UNet:
            let (h, w) = (inputShape[1], inputShape[2])
            let window = unet.outputWindow
            var pictures: [(String, PixelCanvas)] = []
            for path in paths {
                var start = monotonicSeconds()
                let picture = try ImageFile.readRGB(path: path)
                let resized = ImageResize.bilinear(picture.pixels, width: picture.width, height: picture.height, channels: 3, toWidth: w, toHeight: h)
                var now = monotonicSeconds()
                times.decodeAndResize += now - start
                start = now
                let classes = unet.predictClasses(Self.tensor(resized, height: h, width: w))
                now = monotonicSeconds()
                times.forward += now - start
                start = now
                var canvas = PixelCanvas(width: 2 * w + 4, height: h)
                canvas.image(resized.map { Float($0) / 255 }, height: h, width: w, channels: 3, x: 0, y: 0)
                for p in 0..<classes.count {
                    canvas.set(x: w + 4 + window.left + p % window.width, y: window.top + p / window.width,
                               SegmentationEvaluation.colour(UInt8(classes[p]), void: 255))
                }
                times.draw += monotonicSeconds() - start
                pictures.append((path, canvas))
            }
            try makeDirectory(folder)
            let start = monotonicSeconds()
            for (path, canvas) in pictures { try canvas.writePNG(path: Self.picturePath(folder, path)) }
            times.write = monotonicSeconds() - start
            print("\(paths.count) frames of \(spec): image and predicted classes (\(w)x\(h)) side by side")
        default:
            throw EvalError("\(checkpoint): model \(model.config.family) is neither a detector, an autoencoder nor a segmentation model")
        }
        let n = Double(paths.count)
        print(String(format: "%.1f FPS over the loop (decode and resize %.1f ms, forward and decoding %.1f ms, draw %.1f ms a frame; batch 1, %d BLAS threads); writing the pictures took %.1f ms a frame",
                     n / max(times.loop, 1e-9), 1000 * times.decodeAndResize / n, 1000 * times.forward / n, 1000 * times.draw / n,
                     BLAS.threadCount, 1000 * times.write / n))
        print("pictures: \(folder)")
    }

    /// `frame0001.jpg` -> `FOLDER/frame0001.png`.
    static func picturePath(_ folder: String, _ frame: String) -> String {
        folder + "/" + URL(fileURLWithPath: frame).deletingPathExtension().lastPathComponent + ".png"
    }
}
