import Foundation
import StarlingData
import StarlingEvaluation
import StarlingIO
import StarlingNN
import StarlingTraining

/// Issue 16 item 7: libFuzzer targets for the label parsers, the image decoders' wrappers and the checkpoint reader.
///
/// Built by Launch/fuzz.sh with libFuzzer and AddressSanitizer (`-sanitize=fuzzer,address`, `-DSTARLING_LIBFUZZER`)
/// into .build-fuzz, libFuzzer owns `main` and calls `LLVMFuzzerTestOneInput` for the target named by
/// STARLING_FUZZ_TARGET. In the ordinary build (no sanitizer flags) the same file is a replay tool:
/// `starling-fuzz TARGET FILE...` runs saved inputs through a target, and `starling-fuzz seeds OUT SHARED` writes the
/// seed corpora from the sample data. Every parser takes a path, so each input is written to a per-process folder
/// under the file name the parser expects.
enum FuzzTarget: String, CaseIterable {
    case idx, csv, kitti, voc, coco, cocoResults = "coco-results", yolo, jpeg, png, checkpoint

    /// Where inputs are written: STARLING_FUZZ_WORK (Launch/fuzz.sh gives every fuzzer run the same relative path, as
    /// a path that varies reaches the comparisons libFuzzer steers by), else a folder of this process's own.
    static let workDirectory: String = {
        let given = ProcessInfo.processInfo.environment["STARLING_FUZZ_WORK"].flatMap { $0.isEmpty ? nil : $0 }
        let dir = given ?? NSTemporaryDirectory() + "/starling-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }()

    /// The image the YOLO labels belong to: YOLOLabels pairs each label file with an image of the same stem.
    static let yoloImages: ImageDirectory? = {
        let dir = workDirectory + "/yolo-images"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try? PNGImage.write(path: dir + "/frame.png", width: 8, height: 6, channels: 3, pixels: [UInt8](repeating: 128, count: 8 * 6 * 3))
        return try? ImageDirectory(root: dir)
    }()

    /// The path an input is written to: a name the parser accepts for that kind of file.
    var inputPath: String {
        let dir = Self.workDirectory
        switch self {
        case .idx: return dir + "/labels-idx1-ubyte"
        case .csv: return dir + "/labels.csv"
        case .kitti: return dir + "/kitti/000000.txt"
        case .voc: return dir + "/annotation.xml"
        case .coco: return dir + "/annotations.json"
        case .cocoResults: return dir + "/results.json"
        case .yolo: return dir + "/yolo-labels/frame.txt"
        case .jpeg: return dir + "/input.jpg"
        case .png: return dir + "/input.png"
        case .checkpoint: return dir + "/checkpoint.h5"
        }
    }

    /// Runs one input; returns nil when the parser accepted it, else its refusal. Throwing is a refusal; anything
    /// else that ends the process (a trap, a signal, a sanitizer report) is the fault being looked for.
    @discardableResult
    func run(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        let path = inputPath
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        // Written in place: FileManager's atomic write goes through a temporary file with a random name, and such
        // bytes can reach the comparisons libFuzzer steers by.
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { return "cannot write \(path)" }
        let written = bytes.count == 0 ? 0 : write(fd, bytes.baseAddress!, bytes.count)
        close(fd)
        guard written == bytes.count else { return "cannot write \(path)" }
        do {
            switch self {
            case .idx: _ = try IDX.read(path)
            case .csv: _ = try CSVLabels.parseUdacity(path)
            case .kitti: _ = try KITTILabels.parse(directory: Self.workDirectory + "/kitti")
            case .voc: return VOCLabels.parseXML(path, oneBased: true).problems.first.map { "\($0)" }
            case .coco: _ = try COCOLabels.parse(path)
            case .cocoResults: _ = try COCOJSON.readResults(path: path)
            case .yolo:
                guard let images = Self.yoloImages else { return "no images folder" }
                _ = try YOLOLabels.parse(labels: Self.workDirectory + "/yolo-labels", images: images)
            case .jpeg, .png: _ = try ImageFile.readRGB(path: path)
            case .checkpoint: _ = try Checkpoint.load(from: path)
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// Writes each target's seed corpus into `out/TARGET/` from the sample data in `shared` (../shared/data) and the
    /// repository's MNIST sample: real files, not committed blobs.
    static func writeSeeds(out: String, shared: String, mnistSample: String) throws {
        let fm = FileManager.default
        func put(_ target: FuzzTarget, _ name: String, _ data: Data) throws {
            let dir = out + "/" + target.rawValue
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try data.write(to: URL(fileURLWithPath: dir + "/" + name))
        }
        func file(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }
        func lines(_ path: String, _ count: Int) throws -> Data {
            Data((String(decoding: try file(path), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
                .prefix(count).joined(separator: "\n") + "\n").utf8)
        }
        // IDX: the first 64 labels and the first 4 images of the MNIST sample, headers rewritten to those counts.
        func idx(_ array: IDXArray, count: Int) -> Data {
            var dims = array.dimensions
            dims[0] = count
            let per = dims.dropFirst().reduce(1, *)
            var bytes: [UInt8] = [0, 0, 8, UInt8(dims.count)]
            for d in dims { bytes += withUnsafeBytes(of: UInt32(d).bigEndian) { Array($0) } }
            return Data(bytes + array.bytes.prefix(count * per))
        }
        try put(.idx, "labels", idx(try IDX.read(mnistSample + "/t10k-labels-idx1-ubyte.gz"), count: 64))
        try put(.idx, "images", idx(try IDX.read(mnistSample + "/t10k-images-idx3-ubyte.gz"), count: 4))
        try put(.csv, "udacity", try lines(shared + "/udacity/labels.csv", 40))
        let kitti = shared + "/kitti/kitti_tiny/training/label_2"
        for name in try fm.contentsOfDirectory(atPath: kitti).sorted().prefix(4) { try put(.kitti, name, try file(kitti + "/" + name)) }
        try put(.voc, "udacity.xml", Data(("<annotation><filename>a.jpg</filename><size><width>480</width><height>300</height><depth>3</depth></size>" +
            "<object><name>car</name><difficult>0</difficult><bndbox><xmin>237</xmin><ymin>143</ymin><xmax>251</xmax><ymax>155</ymax></bndbox></object></annotation>").utf8))
        // COCO annotations made from the first COCO128 YOLO label file's boxes (COCO128 ships YOLO labels only).
        let yoloLabel = shared + "/coco128/labels/train2017/000000000009.txt"
        var annotations: [String] = []
        for (i, line) in String(decoding: try file(yoloLabel), as: UTF8.self).split(separator: "\n").enumerated() {
            let f = line.split(separator: " ").compactMap { Double($0) }
            guard f.count == 5 else { continue }
            let (w, h) = (f[3] * 640, f[4] * 480)
            annotations.append("{\"id\": \(i + 1), \"image_id\": 9, \"category_id\": \(Int(f[0]) + 1), \"bbox\": [\((f[1] * 640 - w / 2).rounded()), \((f[2] * 480 - h / 2).rounded()), \(w.rounded()), \(h.rounded())], \"iscrowd\": 0, \"area\": \((w * h).rounded())}")
        }
        try put(.coco, "coco128.json", Data(("{\"images\": [{\"id\": 9, \"file_name\": \"000000000009.jpg\", \"width\": 640, \"height\": 480}], " +
            "\"categories\": [{\"id\": 1, \"name\": \"person\"}, {\"id\": 46, \"name\": \"bowl\"}, {\"id\": 50, \"name\": \"orange\"}, {\"id\": 51, \"name\": \"broccoli\"}], " +
            "\"annotations\": [\(annotations.joined(separator: ", "))]}").utf8))
        try put(.cocoResults, "results.json", Data("[{\"image_id\": 9, \"category_id\": 46, \"bbox\": [1.5, 187.0, 610.3, 285.8], \"score\": 0.91}, {\"image_id\": 9, \"category_id\": 50, \"bbox\": [250, 229, 316, 246], \"score\": 0.4}]".utf8))
        try put(.yolo, "coco128.txt", try file(yoloLabel))
        // Images: a real Udacity frame, a small JPEG and PNG made from a 32x24 crop of it (small inputs fuzz faster).
        let frame = try file(shared + "/udacity/images/1478019952686311006.jpg")
        try put(.jpeg, "udacity.jpg", frame)
        let decoded = try JPEGImage.decode(data: [UInt8](frame), name: "frame")
        var crop = [UInt8]()
        for y in 0..<24 { crop += decoded.pixels[(y * decoded.width * 3)..<(y * decoded.width * 3 + 32 * 3)] }
        try PNGImage.write(path: out + "/crop.png", width: 32, height: 24, channels: 3, pixels: crop)
        try put(.png, "crop.png", try file(out + "/crop.png"))
        try fm.removeItem(atPath: out + "/crop.png")
        // Checkpoints: a small fc-ae written by Checkpoint.save, with and without training state.
        let model = try ModelRegistry.build(ModelConfig(family: "fc-ae", inputShape: [16], options: ["code_size": 4]), seed: 1)
        var state = Checkpoint.TrainingState()
        try Checkpoint.save(to: out + "/checkpoint.h5", model: model, optimizer: nil, state: state)
        try put(.checkpoint, "fc-ae.h5", try file(out + "/checkpoint.h5"))
        state.step = 12
        state.epoch = 2
        state.bestValidationLoss = 0.25
        try Checkpoint.save(to: out + "/checkpoint.h5", model: model, optimizer: nil, state: state)
        let sealed = try file(out + "/checkpoint.h5")
        try put(.checkpoint, "fc-ae-step12.h5", sealed)
        // The same file with its seal's magic wiped: read as an unsealed checkpoint, so mutations reach HDF5's parser
        // instead of stopping at the checksum (HDF5Seal).
        var unsealed = sealed
        unsealed.replaceSubrange(0..<16, with: Data(count: 16))
        try put(.checkpoint, "fc-ae-step12-unsealed.h5", unsealed)
        try fm.removeItem(atPath: out + "/checkpoint.h5")
    }
}

#if STARLING_LIBFUZZER
nonisolated(unsafe) private var selectedTarget: FuzzTarget?

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let name = ProcessInfo.processInfo.environment["STARLING_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("STARLING_FUZZ_TARGET must be one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")); got '\(name)'\n".utf8))
        exit(2)
    }
    selectedTarget = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selectedTarget?.run(UnsafeBufferPointer(start: data, count: data == nil ? 0 : size))
    return 0
}
#else
@main struct Replay {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "seeds", arguments.count == 4 {
            do { try FuzzTarget.writeSeeds(out: arguments[1], shared: arguments[2], mnistSample: arguments[3]) } catch {
                FileHandle.standardError.write(Data("starling-fuzz seeds: \(error)\n".utf8))
                exit(1)
            }
            return
        }
        guard arguments.count >= 2, let target = FuzzTarget(rawValue: arguments[0]) else {
            FileHandle.standardError.write(Data(("usage: starling-fuzz TARGET FILE... (replays inputs; TARGET: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n" +
                "       starling-fuzz seeds OUT SHARED_DATA MNIST_SAMPLE (writes the seed corpora)\n").utf8))
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("starling-fuzz: cannot read \(path)\n".utf8))
                exit(1)
            }
            let refusal = [UInt8](data).withUnsafeBufferPointer { target.run($0) }
            print("\(path): \(refusal.map { "refused: " + $0 } ?? "accepted")")
        }
    }
}
#endif
