import Foundation
import Testing
import StarlingIO
@testable import StarlingModels

/// `starling data segmentation`: the three layouts from real files of ../shared/data (copied in part to a temporary
/// folder, so each test stays small), read back through `SegmentationDataset`, and bad input refused with one line
/// naming the file and no output left behind.
@Suite struct SegmentationImportTests {
    static let shared = DetectionImportTests.shared
    static func has(_ path: String) -> Bool { FileManager.default.fileExists(atPath: shared + "/" + path) }

    static func copy(_ from: String, to: String) throws {
        try FileManager.default.createDirectory(atPath: (to as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: shared + "/" + from, toPath: to)
    }

    /// The stored class maps of a split, one array per image.
    static func maps(_ path: String, _ split: String) throws -> [[UInt8]] {
        let data = try SegmentationDataset(path: path, split: split)
        let plane = data.imageHeight * data.imageWidth
        let all = try data.read(Array(0..<data.count)).classMaps
        return (0..<data.count).map { Array(all[($0 * plane)..<(($0 + 1) * plane)]) }
    }

    static func run(_ format: SegmentationImportFormat, _ source: String, _ out: String, height: Int? = nil, width: Int? = nil,
                    valCount: Int? = nil) throws -> SegmentationImportSummary {
        var options = SegmentationImportOptions(format: format, source: source, output: out)
        (options.height, options.width, options.valCount) = (height, width, valCount)
        return try SegmentationImport.run(options)
    }

    /// The one-line error of a failing import, checked to name `file`; the output must not exist.
    static func refusal(_ format: SegmentationImportFormat, _ source: String, _ out: String, naming file: String, height: Int? = nil,
                        width: Int? = nil) throws -> String {
        do {
            _ = try run(format, source, out, height: height, width: width, valCount: 1)
        } catch {
            let text = "\(error)"
            #expect(text.contains(file), "\(text) does not name \(file)")
            #expect(!text.contains("\n"))
            #expect(!FileManager.default.fileExists(atPath: out), "a refused import left \(out)")
            return text
        }
        Issue.record("the import of \(source) was not refused")
        return ""
    }

    @Test(.enabled(if: has("membrane/train/label/0.png")))
    func membranesKeepTheirLabelsAndHoldOutImages() throws {
        let dir = Fixture.temporaryDirectory("seg-membrane")
        for k in 0..<4 {
            try Self.copy("membrane/train/image/\(k).png", to: "\(dir)/train/image/\(k).png")
            try Self.copy("membrane/train/label/\(k).png", to: "\(dir)/train/label/\(k).png")
        }
        let out = dir + "/membrane.h5"
        let summary = try Self.run(.membrane, dir, out, valCount: 1)
        #expect(summary.classNames == ["membrane", "cell"])
        let train = try SegmentationDataset(path: out, split: "train"), val = try SegmentationDataset(path: out, split: "val")
        #expect((train.count, val.count, train.imageHeight, train.imageWidth) == (3, 1, 512, 512))
        #expect(val.imageIDs == [2])   // one of four held out: the one at the middle of the set
        // Each stored map is the label file with 0 (membrane) -> 0 and 255 (cell) -> 1.
        let label = try PNGImage.read(path: "\(dir)/train/label/2.png")
        #expect(try Self.maps(out, "val")[0] == label.pixels.map { $0 == 0 ? 0 : 1 })
        let membraneShare = Double(label.pixels.filter { $0 == 0 }.count) / Double(label.pixels.count)
        #expect(membraneShare > 0.1 && membraneShare < 0.4)   // PROVENANCE.md: about 22% membrane
        // The image is the gray picture repeated in the three channels.
        let image: [UInt8] = try PNGImage.read(path: "\(dir)/train/image/2.png", channels: 1).pixels
        let pixels: [UInt8] = try val.read([0]).pixels
        let red = stride(from: 0, to: pixels.count, by: 3).map { pixels[$0] }
        let blue = stride(from: 2, to: pixels.count, by: 3).map { pixels[$0] }
        #expect(red == image && blue == image)
    }

    @Test(.enabled(if: has("camvid/CamVid/trainannot/0001TP_006690.png")))
    func camvidHoldsOutASequenceAndReadsIndicesAndColours() throws {
        let dir = Fixture.temporaryDirectory("seg-camvid")
        let frames = ["0001TP_006690.png", "0001TP_006720.png", "0006R0_f02910.png"]
        for name in frames {
            try Self.copy("camvid/CamVid/train/\(name)", to: "\(dir)/gray/train/\(name)")
            try Self.copy("camvid/CamVid/trainannot/\(name)", to: "\(dir)/gray/trainannot/\(name)")
        }
        let out = dir + "/camvid.h5"
        let summary = try Self.run(.camvid, dir + "/gray", out)
        #expect(summary.classNames.count == 11 && summary.classNames[3] == "Road")
        #expect(try SegmentationDataset(path: out, split: "val").count == 2)    // the 0001TP frames
        let train = try SegmentationDataset(path: out, split: "train")
        #expect((train.count, train.imageHeight, train.imageWidth, train.voidLabel) == (1, 360, 480, 255))
        let label = try PNGImage.read(path: "\(dir)/gray/trainannot/0006R0_f02910.png")
        let stored = try Self.maps(out, "train")[0]
        #expect(stored == label.pixels.map { $0 == 11 ? 255 : $0 })
        #expect(stored.contains(255) && stored.contains(3))

        // The same frames with RGB colour-coded labels (SegNet's palette) give the same maps.
        for name in frames {
            try Self.copy("camvid/CamVid/train/\(name)", to: "\(dir)/rgb/train/\(name)")
            let gray = try PNGImage.read(path: "\(dir)/gray/trainannot/\(name)")
            let rgb = gray.pixels.flatMap { v -> [UInt8] in
                if v == 11 { return [0, 0, 0] }
                let c = SegmentationImport.camvidClasses[Int(v)].colour
                return [c.0, c.1, c.2]
            }
            try FileManager.default.createDirectory(atPath: "\(dir)/rgb/trainannot", withIntermediateDirectories: true)
            try PNGImage.write(path: "\(dir)/rgb/trainannot/\(name)", width: gray.width, height: gray.height, channels: 3, pixels: rgb)
        }
        let outRGB = dir + "/camvid-rgb.h5"
        _ = try Self.run(.camvid, dir + "/rgb", outRGB)
        #expect(try Self.maps(outRGB, "train") == Self.maps(out, "train"))
        #expect(try Self.maps(outRGB, "val") == Self.maps(out, "val"))

        // An unknown colour: refused, naming the label file.
        let bad = "\(dir)/rgb/trainannot/0006R0_f02910.png"
        var image = try PNGImage.read(path: bad)
        (image.pixels[3 * 1000], image.pixels[3 * 1000 + 1], image.pixels[3 * 1000 + 2]) = (1, 2, 3)
        try PNGImage.write(path: bad, width: image.width, height: image.height, channels: 3, pixels: image.pixels)
        let text = try Self.refusal(.camvid, dir + "/rgb", dir + "/refused.h5", naming: bad)
        #expect(text.contains("(1, 2, 3)"))
        // A gray index outside the table: refused too.
        var gray = try PNGImage.read(path: "\(dir)/gray/trainannot/0006R0_f02910.png")
        gray.pixels[5] = 12
        try PNGImage.write(path: "\(dir)/gray/trainannot/0006R0_f02910.png", width: gray.width, height: gray.height, channels: 1, pixels: gray.pixels)
        _ = try Self.refusal(.camvid, dir + "/gray", dir + "/refused.h5", naming: "0006R0_f02910.png")
    }

    @Test(.enabled(if: has("pennfudan/PennFudanPed/PedMasks/FudanPed00001_mask.png")))
    func pennFudanKeepsEveryInstanceResized() throws {
        let dir = Fixture.temporaryDirectory("seg-pennfudan")
        let names = ["FudanPed00001", "FudanPed00002", "PennPed00010"]
        for name in names {
            try Self.copy("pennfudan/PennFudanPed/PNGImages/\(name).png", to: "\(dir)/PNGImages/\(name).png")
            try Self.copy("pennfudan/PennFudanPed/PedMasks/\(name)_mask.png", to: "\(dir)/PedMasks/\(name)_mask.png")
        }
        let out = dir + "/pf.h5"
        let summary = try Self.run(.pennfudan, dir, out, height: 96, width: 128, valCount: 1)
        #expect(summary.classNames == ["background", "person"])
        let train = try SegmentationDataset(path: out, split: "train")
        #expect(train.hasInstances && train.count == 2)
        for (i, name) in [(0, "FudanPed00001"), (1, "PennPed00010")] {
            let mask = try PNGImage.read(path: "\(dir)/PedMasks/\(name)_mask.png")
            let (objects, masks) = try train.instances(of: i)
            #expect(objects.count == Int(mask.pixels.max() ?? 0))
            let map = try Self.maps(out, "train")[i]
            // The class map is the union of the instances.
            #expect((0..<map.count).allSatisfy { p in (map[p] == 1) == masks.contains { $0[p] == 1 } })
            // Each box, scaled back to the file's pixels, lies near the tight box of that instance in the file.
            for (k, object) in objects.enumerated() {
                let original = try #require(SegmentationDataset.tightBox(mask.pixels.map { $0 == UInt8(k + 1) ? 1 : 0 }, height: mask.height, width: mask.width))
                let (sx, sy) = (Float(mask.width) / 128, Float(mask.height) / 96)
                #expect(abs(object.box.xmin * sx - original.xmin) <= 2 * sx && abs(object.box.ymax * sy - original.ymax) <= 2 * sy)
            }
        }
        // Sizes vary: without --height and --width the second size is refused, naming the file.
        _ = try Self.refusal(.pennfudan, dir, dir + "/refused.h5", naming: "PNGImages/")
    }

    @Test(.enabled(if: has("membrane/train/label/0.png") && has("pennfudan/PennFudanPed/PedMasks/FudanPed00001_mask.png")))
    func badFilesAreRefusedNamingThem() throws {
        let dir = Fixture.temporaryDirectory("seg-bad")
        for k in 0..<2 {
            try Self.copy("membrane/train/image/\(k).png", to: "\(dir)/m/train/image/\(k).png")
            try Self.copy("membrane/train/label/\(k).png", to: "\(dir)/m/train/label/\(k).png")
        }
        // A label of another size than its image.
        try PNGImage.write(path: "\(dir)/m/train/label/1.png", width: 10, height: 10, channels: 1, pixels: [UInt8](repeating: 255, count: 100))
        let size = try Self.refusal(.membrane, dir + "/m", dir + "/out.h5", naming: "\(dir)/m/train/label/1.png")
        #expect(size.contains("10x10"))
        // A label value that is neither membrane nor cell.
        try PNGImage.write(path: "\(dir)/m/train/label/1.png", width: 512, height: 512, channels: 1, pixels: [UInt8](repeating: 128, count: 512 * 512))
        _ = try Self.refusal(.membrane, dir + "/m", dir + "/out.h5", naming: "\(dir)/m/train/label/1.png")
        // An unreadable image.
        try Data("not a picture".utf8).write(to: URL(fileURLWithPath: "\(dir)/m/train/image/0.png"))
        _ = try Self.refusal(.membrane, dir + "/m", dir + "/out.h5", naming: "\(dir)/m/train/image/0.png")

        // An empty instance: a mask whose values skip instance 2.
        try Self.copy("pennfudan/PennFudanPed/PNGImages/FudanPed00001.png", to: "\(dir)/p/PNGImages/FudanPed00001.png")
        try Self.copy("pennfudan/PennFudanPed/PNGImages/FudanPed00002.png", to: "\(dir)/p/PNGImages/FudanPed00002.png")
        try Self.copy("pennfudan/PennFudanPed/PedMasks/FudanPed00002_mask.png", to: "\(dir)/p/PedMasks/FudanPed00002_mask.png")
        var mask = try PNGImage.read(path: Self.shared + "/pennfudan/PennFudanPed/PedMasks/FudanPed00001_mask.png")
        mask.pixels = mask.pixels.map { $0 == 2 ? 3 : $0 }
        try PNGImage.write(path: "\(dir)/p/PedMasks/FudanPed00001_mask.png", width: mask.width, height: mask.height, channels: 1, pixels: mask.pixels)
        let empty = try Self.refusal(.pennfudan, dir + "/p", dir + "/out.h5", naming: "FudanPed00001_mask.png", height: 96, width: 128)
        #expect(empty.contains("instance 2"))
    }
}
