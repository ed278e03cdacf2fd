import Foundation
import Testing
@testable import StarlingModels
import StarlingIO

/// Item 3 of issue 16: bad input as users meet it, each file made here from the real data (the MNIST sample, the
/// Udacity, KITTI and COCO128 samples, a checkpoint trained here), run through the `starling` binary as a user runs
/// it. Every case must end with exit code 1-127, an error naming the bad file (and line or record where there is
/// one), no output file and no temporary left behind.
@Suite(.serialized) struct BadInputCorpusTests {
    struct Case {
        var name: String
        var arguments: [String]
        /// Text the error must hold: the bad file's path, and the line or record where there is one.
        var names: String
        /// Files the command would write; none may exist afterwards.
        var outputs: [String] = []
    }

    /// An IDX file: magic 0x0000 08 rank, dimensions big-endian, then bytes.
    static func idx(_ dimensions: [Int], _ bytes: [UInt8], magic: [UInt8]? = nil) -> Data {
        var data = Data(magic ?? [0, 0, 8, UInt8(dimensions.count)])
        for d in dimensions { data.append(contentsOf: withUnsafeBytes(of: UInt32(d).bigEndian) { Array($0) }) }
        data.append(contentsOf: bytes)
        return data
    }

    @Test func everyBadInputIsRefusedNamingTheFile() throws {
        guard let shared = ReliabilityTests.sharedData else { return }
        let fm = FileManager.default
        let dir = Fixture.temporaryDirectory("corpus")
        let out = dir + "/out"
        try fm.createDirectory(atPath: out, withIntermediateDirectories: true)
        func write(_ name: String, _ data: Data) throws -> String {
            let path = dir + "/" + name
            try fm.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try data.write(to: URL(fileURLWithPath: path))
            return path
        }
        func text(_ name: String, _ content: String) throws -> String { try write(name, Data(content.utf8)) }
        func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }
        var cases: [Case] = []

        // MNIST IDX folders: the sample's four files, raw, with one of them spoiled.
        let sample = Fixture.mnistSample
        let parts = try ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"].map {
            ($0, try IDX.read(sample + "/\($0).gz"))
        }
        func mnistFolder(_ name: String, spoil file: String, with data: Data?) throws -> (folder: String, file: String) {
            let folder = dir + "/mnist-" + name
            for (part, array) in parts where part != file {
                _ = try write("mnist-\(name)/\(part)", Self.idx(array.dimensions, array.bytes))
            }
            if let data { _ = try write("mnist-\(name)/\(file)", data) }
            return (folder, folder + "/" + file)
        }
        let trainImages = parts[0].1, trainLabels = parts[1].1, testImages = parts[2].1
        let mnistCases: [(String, String, Data?)] = [
            ("wrong-magic", "train-images-idx3-ubyte", Self.idx(trainImages.dimensions, trainImages.bytes, magic: [0x1f, 0x8c, 8, 3])),
            ("truncated", "train-images-idx3-ubyte", Self.idx(trainImages.dimensions, Array(trainImages.bytes.prefix(5000)))),
            ("empty", "train-images-idx3-ubyte", Data()),
            ("header-cut", "train-images-idx3-ubyte", Data([0, 0, 8, 3, 0, 0])),
            ("rank-2", "train-images-idx3-ubyte", Self.idx([3000, 784], trainImages.bytes)),
            ("float-type", "train-images-idx3-ubyte", Self.idx(trainImages.dimensions, trainImages.bytes, magic: [0, 0, 0x0d, 3])),
            ("count-mismatch", "train-labels-idx1-ubyte", Self.idx([2999], Array(trainLabels.bytes.prefix(2999)))),
            ("label-not-digit", "train-labels-idx1-ubyte", Self.idx([3000], [12] + Array(trainLabels.bytes.dropFirst()))),
            ("missing-labels", "train-labels-idx1-ubyte", nil),
            ("garbage-gz", "train-images-idx3-ubyte.gz", Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) })),
            ("27x28", "t10k-images-idx3-ubyte", Self.idx([1000, 27, 28], Array(testImages.bytes.prefix(1000 * 27 * 28)))),
            // Both splits 27x28: they agree, but MNIST's images are 28x28 (`--any-size` converts other sizes).
            ("27x28-both", "train-images-idx3-ubyte", Self.idx([3000, 27, 28], Array(trainImages.bytes.prefix(3000 * 27 * 28)))),
        ]
        for (name, file, data) in mnistCases {
            var (folder, path) = try mnistFolder(name, spoil: file, with: data)
            if name == "garbage-gz" { try fm.removeItem(atPath: folder + "/train-images-idx3-ubyte") }
            if name == "27x28-both" { _ = try write("mnist-\(name)/t10k-images-idx3-ubyte", Self.idx([1000, 27, 28], Array(testImages.bytes.prefix(1000 * 27 * 28)))) }
            // A missing file, or two files that disagree: the error names the folder (and both sizes).
            if data == nil || name == "27x28" { path = folder }
            let output = out + "/mnist-\(name).h5"
            cases.append(Case(name: "mnist \(name)", arguments: ["data", "mnist", "--source", folder, "--out", output], names: path, outputs: [output]))
        }

        // The same 27x28 set is converted when asked for: `--any-size` keeps the check that train and test agree only.
        let anySize = try run(Fixture.starling, ["data", "mnist", "--source", dir + "/mnist-27x28-both", "--out", out + "/any-size.h5", "--any-size"])
        #expect(anySize.status == 0 && anySize.output.contains("27x28"), "\(anySize.error)\(anySize.output)")
        try? fm.removeItem(atPath: out + "/any-size.h5")

        // HDF5 datasets given to train.
        let good = try Fixture.sampleHDF5()
        let goodBytes = try bytes(good)
        let truncatedSet = try write("truncated.h5", goodBytes.prefix(goodBytes.count / 2))
        var header = goodBytes
        header.replaceSubrange(8..<520, with: Data(repeating: 0xA5, count: 512))
        let corruptHeader = try write("corrupt-header.h5", header)
        let emptySet = try write("empty.h5", Data())
        let textSet = try text("text.h5", "frame,xmin\n")
        func trainCase(_ name: String, _ data: String, _ extra: [String] = [], names: String? = nil, model: String = "fc-ae") -> Case {
            let folder = out + "/train-" + name.replacingOccurrences(of: " ", with: "-")
            return Case(name: "train \(name)", arguments: ["train", "--model", model, "--data", data, "--epochs", "1", "--steps-per-epoch", "1",
                                                           "--batch-size", "32", "--val-split", "none", "--out", folder] + extra,
                        names: names ?? data, outputs: [folder + "/\(model)-last.h5"])
        }
        cases += [trainCase("truncated dataset", truncatedSet), trainCase("corrupt dataset header", corruptHeader),
                  trainCase("empty dataset file", emptySet), trainCase("text as dataset", textSet)]
        // NaN and infinite pixels: an image set whose pixels are float32 (NaN, Inf and ordinary values). Pixels are
        // uint8 in every Starling dataset (the importers quantise), so a float set is refused naming the file before any
        // pixel is read, by `train` and by `eval`, rather than scanned for non-finite values.
        let floatPixels = dir + "/float-pixels.h5"
        try fm.copyItem(atPath: good, toPath: floatPixels)
        try updateHDF5Atomically(floatPixels) { file in
            for split in ["train", "test"] where file.root.contains(split) {
                let group = try file.root.group(split)
                let shape = try group.dataset("images").shape
                try group.remove("images")
                var values = [Float](repeating: 0.5, count: shape.reduce(1, *))
                values[0] = .nan
                values[1] = .infinity
                values[2] = -.infinity
                try group.createDataset("images", type: .float32, shape: shape).write(values)
            }
        }
        cases.append(trainCase("nan and inf pixels", floatPixels))

        // A checkpoint trained here, and spoiled copies.
        let trained = dir + "/trained"
        #expect(try run(Fixture.starling, ["train", "--model", "fc-ae", "--data", good, "--epochs", "1", "--steps-per-epoch", "2",
                                           "--batch-size", "64", "--val-split", "none", "--out", trained]).status == 0)
        let checkpoint = trained + "/fc-ae-last.h5"
        let checkpointBytes = try bytes(checkpoint)
        cases.append(Case(name: "eval nan and inf pixels", arguments: ["eval", "--checkpoint", checkpoint, "--data", floatPixels, "--limit", "64",
                                                                       "--plots", out + "/eval-float-pixels"],
                          names: floatPixels, outputs: [out + "/eval-float-pixels/fc-ae-last-reconstructions.png"]))
        func spoiled(_ name: String, _ change: (HDF5File) throws -> Void) throws -> String {
            let path = dir + "/" + name + ".h5"
            try fm.copyItem(atPath: checkpoint, toPath: path)
            try updateHDF5Atomically(path, change)
            return path
        }
        let checkpoints: [(String, String)] = [
            ("truncated", try write("truncated-checkpoint.h5", checkpointBytes.prefix(checkpointBytes.count / 2))),
            ("cut-at-1k", try write("cut-checkpoint.h5", checkpointBytes.prefix(1024))),
            ("empty", try write("empty-checkpoint.h5", Data())),
            ("negative-step", try spoiled("negative-step") { try $0.root.setAttribute("step", -5) }),
            ("negative-epoch", try spoiled("negative-epoch") { try $0.root.setAttribute("epoch", -1) }),
            ("zero-world", try spoiled("zero-world") { try $0.root.setAttribute("world_size", 0) }),
            ("epoch-beyond-step", try spoiled("epoch-beyond-step") { try $0.root.setAttribute("epoch", 50) }),
            ("version-99", try spoiled("version-99") { try $0.root.setAttribute("format_version", 99) }),
            ("garbage-config", try spoiled("garbage-config") { try $0.root.setAttribute("model_config", "{\"family\": ") }),
            ("unknown-family", try spoiled("unknown-family") {
                try $0.root.setAttribute("model_config", try $0.root.stringAttribute("model_config").replacingOccurrences(of: "fc-ae", with: "no-such-ae"))
            }),
            ("nan-weight", try spoiled("nan-weight") { file in
                let weights = try file.root.group("model_weights").dataset("encoder/kernel")
                var values = try weights.read(as: Float.self)
                values[7] = .nan
                try weights.write(values)
            }),
            ("missing-weight", try spoiled("missing-weight") { try $0.root.group("model_weights").remove("decoder/bias") }),
            ("dataset-as-checkpoint", good),
        ]
        for (name, path) in checkpoints {
            cases.append(Case(name: "inspect \(name)", arguments: ["inspect", path], names: path))
            let picture = out + "/eval-\(name)"
            cases.append(Case(name: "eval \(name)", arguments: ["eval", "--checkpoint", path, "--data", good, "--limit", "64", "--plots", picture,
                                                                "--json", picture + ".json"],
                              names: path, outputs: [picture + "/\((path as NSString).deletingPathExtension.split(separator: "/").last!)-reconstructions.png", picture + ".json"]))
        }
        for (name, path) in checkpoints where ["negative-step", "nan-weight", "version-99"].contains(name) {
            cases.append(trainCase("resume \(name)", good, ["--resume", path], names: path))
        }
        cases.append(trainCase("batch larger than the data", good, ["--batch-size", "5000"], names: good))
        cases.append(trainCase("split that does not exist", good, ["--train-split", "nosuch"], names: good))

        // Detection label sets made from the Udacity sample.
        let udacity = try String(contentsOfFile: shared + "/udacity/labels.csv", encoding: .utf8).split(separator: "\n").map(String.init)
        let udacityImages = shared + "/udacity/images"
        func csv(_ name: String, _ change: (inout [String]) -> Void) throws -> String {
            var lines = udacity
            change(&lines)
            return try text("udacity-\(name).csv", lines.joined(separator: "\n") + "\n")
        }
        func row(_ line: String, _ column: Int, _ value: String) -> String {
            var fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            fields[column] = value
            return fields.joined(separator: ",")
        }
        let csvCases: [(String, (inout [String]) -> Void, String)] = [
            ("extra-field", { $0[2] += ",9" }, ":3"),
            ("missing-field", { $0[2] = $0[2].split(separator: ",").dropLast().joined(separator: ",") }, ":3"),
            ("non-numeric", { $0[3] = row($0[3], 1, "abc") }, ":4"),
            ("nan", { $0[3] = row($0[3], 1, "nan") }, ":4"),
            ("inf", { $0[3] = row($0[3], 2, "inf") }, ":4"),
            ("inverted", { $0[2] = row(row($0[2], 1, "454"), 2, "437") }, ":3"),
            ("outside", { $0[2] = row(row($0[2], 1, "5000"), 2, "5100") }, ":3"),
            ("class-out-of-range", { $0[4] = row($0[4], 5, "99") }, ":5"),
            ("class-not-a-number", { $0[4] = row($0[4], 5, "car") }, ":5"),
            ("missing-image", { $0[5] = row($0[5], 0, "no-such-frame.jpg") }, ":6"),
            ("header-only", { $0 = [$0[0]] }, ""),
            ("no-header", { $0.removeFirst() }, ": line 1 must be a header"),
        ]
        for (name, change, line) in csvCases {
            let path = try csv(name, change)
            let output = out + "/udacity-\(name).h5"
            cases.append(Case(name: "udacity \(name)", arguments: ["data", "detection", "--format", "udacity", "--images", udacityImages,
                                                                   "--labels", path, "--out", output, "--height", "60", "--width", "96"],
                              names: path + line, outputs: [output]))
        }
        let emptyCSV = try text("udacity-empty.csv", "")
        cases.append(Case(name: "udacity empty file", arguments: ["data", "detection", "--format", "udacity", "--images", udacityImages,
                                                                  "--labels", emptyCSV, "--out", out + "/udacity-empty.h5"],
                          names: emptyCSV, outputs: [out + "/udacity-empty.h5"]))
        // Images cut short or garbage, in a copy of the Udacity images folder.
        let frames = try fm.contentsOfDirectory(atPath: udacityImages).sorted()
        for (name, change) in [("jpeg-cut-short", { (d: Data) in d.prefix(d.count / 3) }), ("jpeg-garbage", { (d: Data) in Data(d.prefix(2)) + Data(repeating: 0x5A, count: d.count - 2) }),
                               ("jpeg-empty", { (_: Data) in Data() })] as [(String, (Data) -> Data)] {
            let folder = dir + "/images-\(name)"
            try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
            for frame in frames { try fm.copyItem(atPath: udacityImages + "/" + frame, toPath: folder + "/" + frame) }
            let victim = folder + "/" + frames[0]
            try change(try bytes(victim)).write(to: URL(fileURLWithPath: victim))
            let output = out + "/\(name).h5"
            cases.append(Case(name: "udacity \(name)", arguments: ["data", "detection", "--format", "udacity", "--images", folder,
                                                                   "--labels", shared + "/udacity/labels.csv", "--out", output, "--height", "60", "--width", "96"],
                              names: victim, outputs: [output]))
        }

        // A PNG cut short reaching `data detection`: the first Udacity frame written as PNG, then truncated.
        let pngFolder = dir + "/images-png-cut-short"
        try fm.createDirectory(atPath: pngFolder, withIntermediateDirectories: true)
        for frame in frames.dropFirst() { try fm.copyItem(atPath: udacityImages + "/" + frame, toPath: pngFolder + "/" + frame) }
        let firstFrame = try JPEGImage.decode(data: [UInt8](try bytes(udacityImages + "/" + frames[0])), name: frames[0])
        let pngVictim = pngFolder + "/" + (frames[0] as NSString).deletingPathExtension + ".png"
        try PNGImage.write(path: pngVictim, width: firstFrame.width, height: firstFrame.height, channels: 3, pixels: firstFrame.pixels)
        try bytes(pngVictim).prefix(try bytes(pngVictim).count / 2).write(to: URL(fileURLWithPath: pngVictim))
        let pngLabels = try text("udacity-png.csv", String(decoding: try bytes(shared + "/udacity/labels.csv"), as: UTF8.self)
            .replacingOccurrences(of: frames[0], with: (frames[0] as NSString).deletingPathExtension + ".png"))
        cases.append(Case(name: "udacity png-cut-short", arguments: ["data", "detection", "--format", "udacity", "--images", pngFolder,
                                                                     "--labels", pngLabels, "--out", out + "/png-cut-short.h5", "--height", "60", "--width", "96"],
                          names: pngVictim, outputs: [out + "/png-cut-short.h5"]))

        // Segmentation imports (issue 16 item 3): two membrane images with one file spoiled, and a Penn-Fudan mask
        // whose instance 2 is empty, through the binary (SegmentationImportTests checks the same refusals in process).
        func membrane(_ name: String, spoil: (String) throws -> Void) throws -> String {
            let folder = dir + "/membrane-" + name
            for k in 0..<2 {
                for part in ["image", "label"] {
                    try fm.createDirectory(atPath: "\(folder)/train/\(part)", withIntermediateDirectories: true)
                    try fm.copyItem(atPath: shared + "/membrane/train/\(part)/\(k).png", toPath: "\(folder)/train/\(part)/\(k).png")
                }
            }
            try spoil(folder)
            return folder
        }
        let membraneCases: [(String, String, (String) throws -> Void)] = [
            ("png-cut-short", "train/image/1.png", { folder in
                let path = folder + "/train/image/1.png"
                try bytes(path).prefix(try bytes(path).count / 3).write(to: URL(fileURLWithPath: path))
            }),
            ("label-of-another-size", "train/label/1.png", { folder in
                try PNGImage.write(path: folder + "/train/label/1.png", width: 10, height: 10, channels: 1, pixels: [UInt8](repeating: 255, count: 100))
            }),
        ]
        for (name, file, spoil) in membraneCases {
            let folder = try membrane(name, spoil: spoil)
            let output = out + "/membrane-\(name).h5"
            cases.append(Case(name: "membrane \(name)", arguments: ["data", "segmentation", "--format", "membrane", "--source", folder, "--out", output,
                                                                     "--val-count", "1"], names: folder + "/" + file, outputs: [output]))
        }
        let pennFudan = dir + "/pennfudan-empty-instance"
        for part in ["PNGImages/FudanPed00001.png", "PNGImages/FudanPed00002.png", "PedMasks/FudanPed00002_mask.png"] {
            try fm.createDirectory(atPath: pennFudan + "/" + (part as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try fm.copyItem(atPath: shared + "/pennfudan/PennFudanPed/" + part, toPath: pennFudan + "/" + part)
        }
        var mask = try PNGImage.read(path: shared + "/pennfudan/PennFudanPed/PedMasks/FudanPed00001_mask.png")
        mask.pixels = mask.pixels.map { $0 == 2 ? 3 : $0 }
        try PNGImage.write(path: pennFudan + "/PedMasks/FudanPed00001_mask.png", width: mask.width, height: mask.height, channels: 1, pixels: mask.pixels)
        cases.append(Case(name: "pennfudan empty instance", arguments: ["data", "segmentation", "--format", "pennfudan", "--source", pennFudan,
                                                                         "--out", out + "/pennfudan.h5", "--val-count", "1", "--height", "96", "--width", "128"],
                          names: pennFudan + "/PedMasks/FudanPed00001_mask.png", outputs: [out + "/pennfudan.h5"]))

        // KITTI label folders: the sample's, with one file spoiled.
        let kitti = shared + "/kitti/kitti_tiny/training"
        let kittiCases: [(String, (inout [String]) -> Void, String)] = [
            ("empty", { $0 = [] }, ""),
            ("short-line", { $0[0] = $0[0].split(separator: " ").prefix(7).joined(separator: " ") }, ":1"),
            ("long-line", { $0[0] += " 1 2" }, ":1"),
            ("non-numeric", { var f = $0[0].split(separator: " ").map(String.init); f[5] = "top"; $0[0] = f.joined(separator: " ") }, ":1"),
            ("inverted", { var f = $0[0].split(separator: " ").map(String.init); (f[4], f[6]) = (f[6], f[4]); $0[0] = f.joined(separator: " ") }, ":1"),
            ("unknown-type", { var f = $0[0].split(separator: " ").map(String.init); f[0] = "Spaceship"; $0[0] = f.joined(separator: " ") }, ":1"),
        ]
        for (name, change, line) in kittiCases {
            let folder = dir + "/kitti-\(name)"
            try fm.copyItem(atPath: kitti + "/label_2", toPath: folder)
            var lines = try String(contentsOfFile: folder + "/000003.txt", encoding: .utf8).split(separator: "\n").map(String.init)
            change(&lines)
            try lines.joined(separator: "\n").write(toFile: folder + "/000003.txt", atomically: true, encoding: .utf8)
            let output = out + "/kitti-\(name).h5"
            cases.append(Case(name: "kitti \(name)", arguments: ["data", "detection", "--format", "kitti", "--images", kitti + "/image_2",
                                                                 "--labels", folder, "--out", output, "--height", "60", "--width", "192"],
                              names: folder + "/000003.txt" + line, outputs: [output]))
        }

        // VOC annotations for the first Udacity frame.
        let stem = (frames[0] as NSString).deletingPathExtension
        let boxes = udacity.dropFirst().filter { $0.hasPrefix(frames[0]) }.map { $0.split(separator: ",").map(String.init) }
        let objects = boxes.map { "<object><name>car</name><difficult>0</difficult><bndbox><xmin>\($0[1])</xmin><ymin>\($0[3])</ymin><xmax>\($0[2])</xmax><ymax>\($0[4])</ymax></bndbox></object>" }
        let voc = "<annotation><filename>\(frames[0])</filename><size><width>480</width><height>300</height><depth>3</depth></size>\(objects.joined())</annotation>"
        let vocCases: [(String, String)] = [
            ("empty", ""), ("cut-short", String(voc.prefix(voc.count / 2))),
            ("no-name", voc.replacingOccurrences(of: "<name>car</name>", with: "")),
            ("non-numeric", voc.replacingOccurrences(of: "<xmin>\(boxes[0][1])</xmin>", with: "<xmin>left</xmin>")),
            ("unknown-class", voc.replacingOccurrences(of: "<name>car</name>", with: "<name>spaceship</name>")),
        ]
        let vocImages = dir + "/voc-images"
        try fm.createDirectory(atPath: vocImages, withIntermediateDirectories: true)
        try fm.copyItem(atPath: udacityImages + "/" + frames[0], toPath: vocImages + "/" + frames[0])
        for (name, xml) in vocCases {
            let file = try text("voc-\(name)/\(stem).xml", xml)
            let output = out + "/voc-\(name).h5"
            cases.append(Case(name: "voc \(name)", arguments: ["data", "detection", "--format", "voc", "--images", vocImages,
                                                               "--labels", (file as NSString).deletingLastPathComponent, "--classes", "car",
                                                               "--out", output, "--height", "60", "--width", "96"],
                              names: file, outputs: [output]))
        }

        // COCO annotations for the Udacity frames.
        let cocoImages = frames.enumerated().map { "{\"id\": \($0.offset + 1), \"file_name\": \"\($0.element)\", \"width\": 480, \"height\": 300}" }
        func coco(_ bbox: String, category: Int = 1) -> String {
            "{\"images\": [\(cocoImages.joined(separator: ", "))], \"categories\": [{\"id\": 1, \"name\": \"car\"}], " +
            "\"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": \(category), \"bbox\": \(bbox), \"iscrowd\": 0, \"area\": 100}]}"
        }
        let cocoCases: [(String, String)] = [
            ("empty", ""), ("cut-short", String(coco("[237, 143, 14, 12]").prefix(120))),
            ("three-numbers", coco("[237, 143, 14]")), ("unknown-category", coco("[237, 143, 14, 12]", category: 7)),
            ("negative-size", coco("[237, 143, -14, 12]")), ("string-coordinate", coco("[\"a\", 143, 14, 12]")),
        ]
        for (name, json) in cocoCases {
            let file = try text("coco-\(name).json", json)
            let output = out + "/coco-\(name).h5"
            cases.append(Case(name: "coco \(name)", arguments: ["data", "detection", "--format", "coco", "--images", udacityImages,
                                                                "--labels", file, "--out", output, "--height", "60", "--width", "96"],
                              names: file, outputs: [output]))
        }

        // YOLO labels: COCO128's images and labels, one label file spoiled.
        let yoloImages = shared + "/coco128/images/train2017", yoloLabels = shared + "/coco128/labels/train2017"
        let names = try text("coco.names", (0..<80).map { "class\($0)" }.joined(separator: "\n") + "\n")
        let yoloFrames = try fm.contentsOfDirectory(atPath: yoloLabels).sorted().prefix(4)
        let yoloCases: [(String, (inout [String]) -> Void, String)] = [
            ("four-fields", { $0[0] = $0[0].split(separator: " ").prefix(4).joined(separator: " ") }, ":1"),
            ("class-out-of-range", { var f = $0[0].split(separator: " ").map(String.init); f[0] = "80"; $0[0] = f.joined(separator: " ") }, ":1"),
            ("beyond-the-image", { var f = $0[0].split(separator: " ").map(String.init); f[1] = "1.7"; $0[0] = f.joined(separator: " ") }, ":1"),
            ("non-numeric", { var f = $0[0].split(separator: " ").map(String.init); f[2] = "middle"; $0[0] = f.joined(separator: " ") }, ":1"),
            ("negative-class", { var f = $0[0].split(separator: " ").map(String.init); f[0] = "-1"; $0[0] = f.joined(separator: " ") }, ":1"),
        ]
        for (name, change, line) in yoloCases {
            let images = dir + "/yolo-\(name)/images", labels = dir + "/yolo-\(name)/labels"
            try fm.createDirectory(atPath: images, withIntermediateDirectories: true)
            try fm.createDirectory(atPath: labels, withIntermediateDirectories: true)
            for frame in yoloFrames {
                let stem = (frame as NSString).deletingPathExtension
                try fm.copyItem(atPath: yoloImages + "/\(stem).jpg", toPath: images + "/\(stem).jpg")
                try fm.copyItem(atPath: yoloLabels + "/" + frame, toPath: labels + "/" + frame)
            }
            let victim = labels + "/" + yoloFrames.first!
            var lines = try String(contentsOfFile: victim, encoding: .utf8).split(separator: "\n").map(String.init)
            change(&lines)
            try lines.joined(separator: "\n").write(toFile: victim, atomically: true, encoding: .utf8)
            let output = out + "/yolo-\(name).h5"
            cases.append(Case(name: "yolo \(name)", arguments: ["data", "detection", "--format", "yolo", "--images", images, "--labels", labels,
                                                                "--names", names, "--out", output, "--height", "64", "--width", "64"],
                              names: victim + line, outputs: [output]))
        }

        // Evaluation outputs and detection files.
        let missingFolder = out + "/no-such-folder/figures.json"
        cases.append(Case(name: "eval json into a missing folder", arguments: ["eval", "--checkpoint", checkpoint, "--data", good, "--limit", "64",
                                                                               "--plots", out + "/eval-missing", "--json", missingFolder],
                          names: missingFolder, outputs: [out + "/eval-missing/fc-ae-last-reconstructions.png", missingFolder]))
        let gtPath = out + "/gt.json"
        cases.append(Case(name: "eval-detections missing ground truth", arguments: ["eval-detections", "--gt", dir + "/no-such-gt.json", "--detections", dir + "/none.json", "--ap-mode", "coco"],
                          names: dir + "/no-such-gt.json"))
        let badResults = try text("bad-results.json", "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, 3], \"score\": 0.5}]")
        let goodGT = try text("gt-ok.json", coco("[237, 143, 14, 12]"))
        cases.append(Case(name: "eval-detections bbox of three numbers", arguments: ["eval-detections", "--gt", goodGT, "--detections", badResults, "--ap-mode", "coco"],
                          names: badResults, outputs: [gtPath]))

        #expect(cases.count >= 60, "\(cases.count) cases")
        var failures: [String] = []
        for c in cases {
            let r = try run(Fixture.starling, c.arguments)
            let message = r.error + r.output
            var problems: [String] = []
            if !(1..<128).contains(r.status) { problems.append("exit \(r.status)") }
            if !r.error.contains(c.names) { problems.append("error does not name '\(c.names)'") }
            if r.error.contains("NSCocoaErrorDomain") || r.error.contains("Fatal error") { problems.append("raw error") }
            for o in c.outputs where fm.fileExists(atPath: o) { problems.append("left \(o)") }
            let temporaries = (fm.enumerator(atPath: out)?.allObjects as? [String] ?? []).filter { $0.contains(".tmp-") }
            if !temporaries.isEmpty { problems.append("left temporaries \(temporaries)") }
            if !problems.isEmpty { failures.append("\(c.name): \(problems.joined(separator: "; ")) | \(message.prefix(400))") }
        }
        #expect(failures.isEmpty, "\(failures.count) of \(cases.count) cases failed:\n\(failures.joined(separator: "\n"))")
        print("bad-input corpus: \(cases.count) cases, \(cases.count - failures.count) refused as required")
    }
}
