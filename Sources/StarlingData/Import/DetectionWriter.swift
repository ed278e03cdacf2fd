import Foundation
import StarlingIO
import StarlingNN

/// The last pass of `DetectionImport`: decodes, resizes and writes the images one at a time, then the annotations
/// of the images written, in the layout `DetectionDataset` reads.
enum DetectionWriter {
    /// The annotations of one split, gathered while its images are written.
    private struct Split {
        let name: String
        let images: HDF5Dataset
        let planned: Int
        var written = 0
        var offsets: [Int64] = [0]
        var boxes: [Float] = [], classes: [Int32] = [], difficult: [UInt8] = []
        var imageIDs: [Int64] = [], sizes: [Int32] = [], fileNames: [String] = []
    }

    static func write(_ prepared: [DetectionImport.PreparedImage], isVal: [Bool], mapping: ClassMapping,
                      options: DetectionImportOptions, ssd: SSDKerasSource?, summary: inout DetectionImportSummary) throws {
        let (height, width) = (options.height, options.width)
        let good = prepared.indices.filter { prepared[$0].problems.isEmpty }
        let valCount = good.filter { isVal[$0] }.count
        let started = Date()
        try writeHDF5Atomically(to: options.output) { file in
            let root = file.root
            try root.setAttribute("format", DetectionDataset.format)
            try root.setAttribute("format_version", DetectionDataset.formatVersion)
            try root.setAttribute("class_names", ["background"] + mapping.names)
            try root.setAttribute("image_height", height)
            try root.setAttribute("image_width", width)
            try root.setAttribute("source", "\(options.format.rawValue): labels \(options.labels)" + (options.images.map { ", images \($0)" } ?? ""))
            try root.setAttribute("box_convention", "corners-absolute-pixels")
            func makeSplit(_ name: String, count: Int) throws -> Split {
                let images = try root.createDataset("\(name)/images", type: .uint8, shape: [count, height, width, 3],
                                                    chunk: [1, height, width, 3], deflate: options.deflate)
                return Split(name: name, images: images, planned: count)
            }
            var splits = [try makeSplit("train", count: good.count - valCount), try makeSplit("val", count: valCount)]
            var resized = [UInt8](repeating: 0, count: height * width * 3)
            for (done, i) in good.enumerated() {
                let image = prepared[i]
                let decoded: (width: Int, height: Int, pixels: [UInt8])
                do {
                    decoded = try image.embedded.map { try ssd!.readRGB($0) } ?? ImageFile.readRGB(path: image.path!)
                    guard decoded.width == image.width && decoded.height == image.height else {
                        throw DataError(file: image.path ?? image.name, message: "decodes to \(decoded.width)x\(decoded.height), its header says \(image.width)x\(image.height)")
                    }
                } catch {
                    let issue = ImportIssue(location: image.location, problem: .unreadableImage, message: "\(error)")
                    guard options.skipBad else { throw DetectionImportError(issues: [issue]) }
                    summary.issues.append(issue)
                    summary.skippedImages[.unreadableImage, default: 0] += 1
                    continue
                }
                decoded.pixels.withUnsafeBufferPointer { source in
                    resized.withUnsafeMutableBufferPointer { target in
                        ImageResize.bilinear(source, width: image.width, height: image.height, channels: 3,
                                             into: target, width: width, height: height)
                    }
                }
                let s = isVal[i] ? 1 : 0
                try splits[s].images.writeRows(startingAt: splits[s].written, resized)
                splits[s].written += 1
                splits[s].boxes += image.boxes
                splits[s].classes += image.classes
                splits[s].difficult += image.difficult
                splits[s].offsets.append(Int64(splits[s].classes.count))
                splits[s].imageIDs.append(image.imageID)
                splits[s].sizes += [Int32(image.height), Int32(image.width)]
                splits[s].fileNames.append(image.name)
                count(image, split: s, into: &summary)
                if let progress = options.progress, (done + 1) % 1000 == 0 {
                    let rate = Double(done + 1) / max(Date().timeIntervalSince(started), 1e-9)
                    progress(String(format: "%d/%d images, %.0f images/s", done + 1, good.count, rate))
                }
            }
            for split in splits { try finish(split, in: root) }
        }
    }

    /// Writes a split's annotations and, if images were skipped while writing, shrinks its image dataset.
    private static func finish(_ split: Split, in root: HDF5Group) throws {
        if split.written < split.planned { _ = try split.images.truncatingRows(to: split.written) }
        let group = try root.group(split.name)
        func put<T: HDF5Scalar>(_ name: String, _ type: HDF5ElementType, _ shape: [Int], _ values: [T]) throws {
            try group.createDataset(name, type: type, shape: shape).write(values)
        }
        let m = split.classes.count, n = split.written
        try put("box_offsets", .int64, [n + 1], split.offsets)
        try put("boxes", .float32, [m, 4], split.boxes)
        try put("classes", .int32, [m], split.classes)
        try put("difficult", .uint8, [m], split.difficult)
        try put("image_ids", .int64, [n], split.imageIDs)
        try put("original_sizes", .int32, [n, 2], split.sizes)
        try group.setAttribute("file_names", split.fileNames)
    }

    private static func count(_ image: DetectionImport.PreparedImage, split: Int, into summary: inout DetectionImportSummary) {
        if split == 0 { summary.trainImages += 1 } else { summary.valImages += 1 }
        for (k, id) in image.classes.enumerated() {
            if image.difficult[k] != 0 {
                if split == 0 { summary.trainDifficult += 1 } else { summary.valDifficult += 1 }
            } else if split == 0 {
                summary.trainBoxes[Int(id) - 1] += 1
            } else {
                summary.valBoxes[Int(id) - 1] += 1
            }
        }
        summary.clippedBoxes += image.clipped
        summary.rescaledAnnotations += image.rescaled ? 1 : 0
        summary.roboflowNames += image.roboflow ? 1 : 0
        summary.dontCareRegions += image.dontCare
        for (label, n) in image.dropped { summary.droppedObjects[label, default: 0] += n }
    }
}
