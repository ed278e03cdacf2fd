import Foundation
import Testing
@testable import StarlingModels
@testable import StarlingData
import StarlingIO

/// Item 7 of issue 16, the seeded random-mutation harness (this toolchain's `-sanitize=fuzzer` is not used): real
/// files mutated by a seeded generator - bytes flipped, replaced by characters parsers trip on, inserted, deleted,
/// duplicated, cut - and handed to each parser in this process, which must return or throw, never trap or crash.
/// The seed and iteration count come from STARLING_FUZZ_SEED and STARLING_FUZZ_ITERATIONS (defaults: 1 and 150 per
/// target, a few seconds in CI); a failing input is written to the temporary folder named in the failure, to be
/// added below as a regression case.
@Suite(.serialized) struct FuzzTests {
    /// SplitMix64: a seeded generator whose stream is the same in every process and on every machine.
    struct SplitMix64 {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let seed = UInt64(ProcessInfo.processInfo.environment["STARLING_FUZZ_SEED"] ?? "") ?? 1
    static let iterations = Int(ProcessInfo.processInfo.environment["STARLING_FUZZ_ITERATIONS"] ?? "") ?? 150

    /// One mutation of `input`, drawn from `rng`.
    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var bytes = input
        let tricky = Array("0-9.e+nainfNaN,\"<>/ \n\t\u{0}".utf8) + [0xFF, 0x80, 0x7F]
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let position = bytes.isEmpty ? 0 : Int(rng.next() % UInt64(bytes.count))
            switch rng.next() % 6 {
            case 0 where !bytes.isEmpty: bytes[position] ^= UInt8(1 << (rng.next() % 8))
            case 1 where !bytes.isEmpty: bytes[position] = tricky[Int(rng.next() % UInt64(tricky.count))]
            case 2: bytes.insert(contentsOf: (0..<(1 + rng.next() % 8)).map { _ in tricky[Int(rng.next() % UInt64(tricky.count))] }, at: position)
            case 3 where !bytes.isEmpty: bytes.removeSubrange(position..<min(bytes.count, position + 1 + Int(rng.next() % 16)))
            case 4 where !bytes.isEmpty:
                let piece = bytes[position..<min(bytes.count, position + 1 + Int(rng.next() % 32))]
                bytes.insert(contentsOf: piece, at: Int(rng.next() % UInt64(bytes.count)))
            default: bytes = Array(bytes.prefix(position))
            }
        }
        return bytes
    }

    /// Runs `parse` on `iterations` mutations of `input`, each written to `path`; parse must return or throw.
    static func fuzz(_ name: String, input: [UInt8], path: String, _ parse: (String) throws -> Void) throws {
        var rng = SplitMix64(state: seed ^ name.utf8.reduce(UInt64(0)) { $0 &* 31 &+ UInt64($1) })
        var refused = 0
        for _ in 0..<iterations {
            try Data(mutate(input, &rng)).write(to: URL(fileURLWithPath: path))
            do { try parse(path) } catch { refused += 1 }
        }
        print("fuzz \(name): \(iterations) mutations (seed \(seed)), \(refused) refused, none crashed")
    }

    @Test func parsersSurviveMutatedInput() throws {
        guard let shared = ReliabilityTests.sharedData else { return }
        let dir = Fixture.temporaryDirectory("fuzz")
        let read = { (path: String) in [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

        let idx = try IDX.read(Fixture.mnistSample + "/t10k-labels-idx1-ubyte.gz")
        var idxBytes: [UInt8] = [0, 0, 8, 1] + withUnsafeBytes(of: UInt32(100).bigEndian) { Array($0) }
        idxBytes += idx.bytes.prefix(100)
        try Self.fuzz("idx", input: idxBytes, path: dir + "/labels-idx1-ubyte") { _ = try IDX.read($0) }
        try Self.fuzz("udacity csv", input: try read(shared + "/udacity/labels.csv"), path: dir + "/labels.csv") { _ = try CSVLabels.parseUdacity($0) }

        let kittiDir = dir + "/kitti"
        try FileManager.default.createDirectory(atPath: kittiDir, withIntermediateDirectories: true)
        try Self.fuzz("kitti", input: try read(shared + "/kitti/kitti_tiny/training/label_2/000003.txt"), path: kittiDir + "/000003.txt") { _ in
            _ = try KITTILabels.parse(directory: kittiDir)
        }
        let voc = Array(("<annotation><filename>a.jpg</filename><size><width>480</width><height>300</height><depth>3</depth></size>" +
                         "<object><name>car</name><difficult>0</difficult><bndbox><xmin>237</xmin><ymin>143</ymin><xmax>251</xmax><ymax>155</ymax></bndbox></object></annotation>").utf8)
        // Regression: an element name that is not UTF-8 made FoundationXML trap (found by this harness, seed 1).
        try Data([UInt8]("<annotation><filename>a.jpg</filename><dept".utf8) + [0xE8] + [UInt8](">3</depth></annotation>".utf8))
            .write(to: URL(fileURLWithPath: dir + "/regression.xml"))
        #expect(VOCLabels.parseXML(dir + "/regression.xml", oneBased: true).problems.first?.message == "not UTF-8 text (and no other encoding declared)")
        // Regression: a processing instruction without data made FoundationXML's SAX callback call strlen on a null
        // pointer (found by `Launch/fuzz.sh voc`); VOC files are now read with libxml2's reader directly.
        try Data("<?ewidth?>3eth?>3e".utf8).write(to: URL(fileURLWithPath: dir + "/regression-pi.xml"))
        #expect(VOCLabels.parseXML(dir + "/regression-pi.xml", oneBased: true).problems.first?.message == "invalid XML: Document is empty")
        try Self.fuzz("voc xml", input: voc, path: dir + "/a.xml") { _ = VOCLabels.parseXML($0, oneBased: true) }
        let coco = Array(("{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 480, \"height\": 300}], \"categories\": [{\"id\": 1, \"name\": \"car\"}], " +
                          "\"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [237, 143, 14, 12], \"iscrowd\": 0, \"area\": 168}]}").utf8)
        try Self.fuzz("coco json", input: coco, path: dir + "/coco.json") { _ = try COCOLabels.parse($0) }
        // Regression: a byte that is not UTF-8 where a key starts made Foundation's JSON5 scanner trap (seed 7).
        try Data([UInt8]("[{\"image_id\": 1, ".utf8) + [0xFF] + [UInt8]("a\": 1}]".utf8)).write(to: URL(fileURLWithPath: dir + "/regression.json"))
        #expect(throws: DataError.self) { try COCOJSON.readResults(path: dir + "/regression.json") }
        try Self.fuzz("coco results", input: Array("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, 3, 4], \"score\": 0.5}]".utf8), path: dir + "/results.json") {
            _ = try COCOJSON.readResults(path: $0)
        }

        let yoloImages = dir + "/yolo-images", yoloLabels = dir + "/yolo-labels"
        for d in [yoloImages, yoloLabels] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try FileManager.default.copyItem(atPath: shared + "/coco128/images/train2017/000000000009.jpg", toPath: yoloImages + "/000000000009.jpg")
        let images = try ImageDirectory(root: yoloImages)
        try Self.fuzz("yolo", input: try read(shared + "/coco128/labels/train2017/000000000009.txt"), path: yoloLabels + "/000000000009.txt") { _ in
            _ = try YOLOLabels.parse(labels: yoloLabels, images: images)
        }

        // Image decoders' wrappers, on a real JPEG and on a PNG written from it.
        let jpeg = try read(shared + "/udacity/images/1478019952686311006.jpg")
        let decoded = try JPEGImage.decode(data: jpeg, name: "frame")
        try PNGImage.write(path: dir + "/frame.png", width: decoded.width, height: decoded.height, channels: 3, pixels: decoded.pixels)
        try Self.fuzz("jpeg", input: jpeg, path: dir + "/mutated.jpg") { _ = try ImageFile.readRGB(path: $0) }
        try Self.fuzz("png", input: try read(dir + "/frame.png"), path: dir + "/mutated.png") { _ = try ImageFile.readRGB(path: $0) }
    }

    /// The checkpoint reader, whose bytes HDF5's C library parses: a crash there would take this process with it, so
    /// the mutated checkpoints go through `starling-fuzz checkpoint` (the libFuzzer target's replay mode) in a child
    /// process, which must exit normally having refused or read each. Launch/fuzz.sh runs the same target under
    /// libFuzzer with coverage; this keeps a seeded pass in every test run.
    @Test func checkpointReaderSurvivesMutatedFiles() throws {
        guard let shared = ReliabilityTests.sharedData else { return }
        let dir = Fixture.temporaryDirectory("fuzz-checkpoint")
        let tool = Fixture.binaryDirectory + "/starling-fuzz"
        let made = try run(tool, ["seeds", dir + "/seeds", shared, Fixture.mnistSample])
        #expect(made.status == 0, "\(made.error)")
        let input = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/seeds/checkpoint/fc-ae-step12.h5")))
        var rng = SplitMix64(state: Self.seed ^ 0x4844_4635)
        var paths: [String] = []
        for i in 0..<Self.iterations {
            let path = dir + "/mutated-\(i).h5"
            try Data(Self.mutate(input, &rng)).write(to: URL(fileURLWithPath: path))
            paths.append(path)
        }
        let replay = try run(tool, ["checkpoint"] + paths)
        let lines = replay.output.split(separator: "\n")
        let crashedOn = lines.count < paths.count ? paths[lines.count] : "none"
        #expect(replay.status == 0 && lines.count == paths.count, "starling-fuzz exited \(replay.status) on \(crashedOn): \(replay.error.suffix(2000))")
        let accepted = lines.filter { $0.hasSuffix(": accepted") }.count
        print("fuzz checkpoint: \(paths.count) mutations (seed \(Self.seed)), \(paths.count - accepted) refused, none crashed")
    }
}
