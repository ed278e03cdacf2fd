import CHDF5
import Foundation
import Testing
import StarlingIO
@testable import StarlingModels

/// `starling data detection`: every label format into the HDF5 layout and back through `DetectionDataset`, bad input
/// reported with file and line, and the real sample sets.
@Suite struct DetectionImportTests {
    /// The shared real data beside the repository (../shared/data); the tests that read it are skipped where it
    /// is absent.
    static let shared = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data").path
    static func has(_ path: String) -> Bool { FileManager.default.fileExists(atPath: shared + "/" + path) }

    // MARK: - Helpers

    /// A smooth test picture (JPEG or PNG by extension); returns the pixels as the decoder gives them back.
    @discardableResult
    static func writeImage(_ path: String, width: Int, height: Int, seed: Int = 0) throws -> [UInt8] {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        for y in 0..<height {
            for x in 0..<width {
                let i = 3 * (y * width + x)
                pixels[i] = UInt8(x * 255 / max(1, width - 1))
                pixels[i + 1] = UInt8(y * 255 / max(1, height - 1))
                pixels[i + 2] = UInt8((x + 2 * y + 40 * seed) % 256)
            }
        }
        if path.hasSuffix(".png") {
            try PNGImage.write(path: path, width: width, height: height, channels: 3, pixels: pixels)
        } else {
            try JPEGImage.write(path: path, width: width, height: height, pixels: pixels, quality: 95)
        }
        return try ImageFile.readRGB(path: path).pixels
    }

    static func write(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    static func options(_ format: DetectionImportFormat, images: String?, labels: String, out: String,
                        height: Int = 30, width: Int = 48, valFraction: Double = 0) -> DetectionImportOptions {
        var o = DetectionImportOptions(format: format, images: images, labels: labels, output: out)
        o.height = height
        o.width = width
        o.split = .fraction(valFraction, seed: 0)
        return o
    }

    /// Every image of both splits by file name: its objects and pixels.
    static func readBack(_ path: String) throws -> [String: (objects: [Object], pixels: [UInt8], id: Int64, size: (Int, Int))] {
        var out: [String: (objects: [Object], pixels: [UInt8], id: Int64, size: (Int, Int))] = [:]
        for split in ["train", "val"] {
            let data = try DetectionDataset(path: path, split: split)
            let names = try #require(data.fileNames)
            let sizes = try #require(data.originalSizes)
            let size = data.imageHeight * data.imageWidth * 3
            var pixels = [UInt8](repeating: 0, count: data.count * size)
            try pixels.withUnsafeMutableBufferPointer { try data.readImages(Array(0..<data.count), into: $0) }
            for i in 0..<data.count {
                out[names[i]] = (data.objects(of: i), Array(pixels[(i * size)..<((i + 1) * size)]), data.imageIDs[i], (sizes[i].height, sizes[i].width))
            }
        }
        return out
    }

    /// Expects `body` to refuse the set with problems whose descriptions contain each of `expected` (in order).
    static func expectRefused(_ expected: [[String]], output: String, sourceLocation: SourceLocation = #_sourceLocation,
                              _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("the set was accepted", sourceLocation: sourceLocation)
        } catch let error as DetectionImportError {
            #expect(error.issues.count == expected.count, "\(error.issues)", sourceLocation: sourceLocation)
            for (issue, parts) in zip(error.issues, expected) {
                for part in parts { #expect(issue.description.contains(part), "'\(issue)' lacks '\(part)'", sourceLocation: sourceLocation) }
            }
            #expect(!error.description.contains("\n"), sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
        #expect(!FileManager.default.fileExists(atPath: output), "output written although refused", sourceLocation: sourceLocation)
    }

    static func expectBox(_ box: BoxCorners, _ expected: (Double, Double, Double, Double), tolerance: Float = 1e-4,
                          sourceLocation: SourceLocation = #_sourceLocation) {
        let e = [Float(expected.0), Float(expected.1), Float(expected.2), Float(expected.3)]
        let got = [box.xmin, box.ymin, box.xmax, box.ymax]
        #expect(zip(got, e).allSatisfy { abs($0 - $1) <= tolerance }, "box \(got) != \(e)", sourceLocation: sourceLocation)
    }

    // MARK: - Udacity CSV (the course format)

    @Test func udacityRoundTrip() throws {
        let dir = Fixture.temporaryDirectory("det-udacity")
        // name, width, height; one PNG among the JPEGs.
        let images = [("f0.jpg", 96, 60), ("f1.jpg", 120, 80), ("f2.jpg", 64, 64), ("f3.png", 100, 50), ("f4.jpg", 96, 60), ("f5.jpg", 80, 40)]
        var decoded: [String: [UInt8]] = [:]
        for (k, (name, w, h)) in images.enumerated() { decoded[name] = try Self.writeImage(dir + "/" + name, width: w, height: h, seed: k) }
        // frame, xmin, xmax, ymin, ymax, class_id
        let rows: [(String, Double, Double, Double, Double, Int)] = [
            ("f0.jpg", 10, 50, 5, 40, 1), ("f0.jpg", 60, 90, 20, 58, 3), ("f1.jpg", 0, 120, 0, 80, 2),
            ("f2.jpg", 5, 20, 5, 20, 5), ("f3.png", 30, 70, 10, 45, 4), ("f4.jpg", 1, 2, 3, 4, 1), ("f5.jpg", 50, 79.5, 10, 39, 1),
        ]
        let csv = "frame,xmin,xmax,ymin,ymax,class_id\n" + rows.map { "\($0.0),\($0.1),\($0.2),\($0.3),\($0.4),\($0.5)" }.joined(separator: "\n") + "\n"
        try Self.write(csv, to: dir + "/labels.csv")
        let out = dir + "/out.h5"
        let summary = try DetectionImport.run(Self.options(.udacity, images: dir, labels: dir + "/labels.csv", out: out, valFraction: 0.5))
        #expect(summary.trainImages == 3 && summary.valImages == 3)
        #expect(summary.trainBoxes.reduce(0, +) + summary.valBoxes.reduce(0, +) == rows.count)
        #expect(summary.classNames == ["car", "truck", "pedestrian", "bicyclist", "light"])

        let back = try Self.readBack(out)
        #expect(Set(back.keys) == Set(images.map(\.0)))
        for (k, (name, w, h)) in images.enumerated() {
            let image = try #require(back[name])
            #expect(image.id == Int64(k), "image ids are the index in source order")
            #expect(image.size == (h, w))
            // Boxes scaled by 48/w and 30/h; classes as in the CSV.
            let expected = rows.filter { $0.0 == name }
            #expect(image.objects.count == expected.count)
            for (object, row) in zip(image.objects, expected) {
                let (sx, sy): (Double, Double) = (48 / Double(w), 30 / Double(h))
                Self.expectBox(object.box, (row.1 * sx, row.3 * sy, row.2 * sx, row.4 * sy))
                #expect(object.classID == row.5 && !object.difficult)
            }
            // Pixels: the decoded image through the same bilinear resize.
            #expect(image.pixels == ImageResize.bilinear(decoded[name]!, width: w, height: h, channels: 3, toWidth: 48, toHeight: 30))
        }
        let root = try HDF5File.open(out).root
        #expect(try root.stringArrayAttribute("class_names") == ["background", "car", "truck", "pedestrian", "bicyclist", "light"])
        #expect(try root.stringAttribute("box_convention") == "corners-absolute-pixels")
        #expect(try root.group("train").dataset("images").chunk == [1, 30, 48, 3])
    }

    @Test func validationSplitIsSeededAndDeterministic() throws {
        let dir = Fixture.temporaryDirectory("det-split")
        var csv = "frame,xmin,xmax,ymin,ymax,class_id\n"
        for i in 0..<20 {
            try Self.writeImage(dir + "/i\(i).jpg", width: 16, height: 12)
            csv += "i\(i).jpg,1,9,1,9,\(1 + i % 5)\n"
        }
        try Self.write(csv, to: dir + "/labels.csv")
        func valNames(seed: UInt64, _ tag: String) throws -> Set<String> {
            var o = Self.options(.udacity, images: dir, labels: dir + "/labels.csv", out: dir + "/\(tag).h5", height: 6, width: 8)
            o.split = .fraction(0.25, seed: seed)
            _ = try DetectionImport.run(o)
            return Set(try #require(DetectionDataset(path: dir + "/\(tag).h5", split: "val").fileNames))
        }
        let a = try valNames(seed: 7, "a"), b = try valNames(seed: 7, "b"), c = try valNames(seed: 8, "c")
        #expect(a.count == 5 && a == b)
        #expect(c.count == 5 && c != a)
        // An explicit list: file names and stems, comments and blank lines allowed; an unknown name is a problem.
        try Self.write("# val\ni3.jpg\n\ni11\n", to: dir + "/val.txt")
        var o = Self.options(.udacity, images: dir, labels: dir + "/labels.csv", out: dir + "/list.h5", height: 6, width: 8)
        o.split = .list(dir + "/val.txt")
        _ = try DetectionImport.run(o)
        #expect(try DetectionDataset(path: dir + "/list.h5", split: "val").fileNames == ["i3.jpg", "i11.jpg"])
        try Self.write("i3.jpg\ni99.jpg\n", to: dir + "/val2.txt")
        o.split = .list(dir + "/val2.txt")
        o.output = dir + "/list2.h5"
        Self.expectRefused([["val2.txt:2", "i99.jpg"]], output: o.output) { _ = try DetectionImport.run(o) }
    }

    /// Each kind of bad row names its file and line; --strict writes nothing, --skip-bad counts each.
    @Test func badInputStrictAndSkipped() throws {
        let dir = Fixture.temporaryDirectory("det-bad")
        for name in ["good", "class", "empty", "outside", "trunc", "malformed", "clip"] {
            try Self.writeImage(dir + "/\(name).jpg", width: 64, height: 48)
        }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/trunc.jpg"))
        try bytes.prefix(bytes.count * 6 / 10).write(to: URL(fileURLWithPath: dir + "/trunc.jpg"))
        try Self.write("not an image", to: dir + "/garbage.jpg")
        let csv = """
            frame,xmin,xmax,ymin,ymax,class_id
            good.jpg,4,20,4,20,1
            class.jpg,4,20,4,20,9
            empty.jpg,20,20,4,30,1
            outside.jpg,70,90,4,20,1
            missing.jpg,4,20,4,20,1
            trunc.jpg,4,20,4,20,1
            malformed.jpg,4,x,4,20,1
            ,,,,,
            clip.jpg,-5,30,4,60,2
            garbage.jpg,4,20,4,20,1

            """
        let labels = dir + "/labels.csv"
        try Self.write(csv, to: labels)
        let out = dir + "/out.h5"
        Self.expectRefused([
            ["labels.csv:9", "malformed", "no frame name"],
            ["labels.csv:3", "unknown class", "'9'"],
            ["labels.csv:4", "empty or inverted box"],
            ["labels.csv:5", "box outside the image", "64x48"],
            ["labels.csv:6", "no image file", "missing.jpg"],
            ["labels.csv:8", "malformed", "not a number"],
            ["labels.csv:11", "unreadable image", "garbage.jpg"],
        ], output: out) { _ = try DetectionImport.run(Self.options(.udacity, images: dir, labels: labels, out: out)) }

        var o = Self.options(.udacity, images: dir, labels: labels, out: out)
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.trainImages == 2)  // good, clip
        #expect(summary.skippedImages == [.unknownClass: 1, .emptyBox: 1, .outsideImage: 1, .missingImage: 1,
                                          .malformed: 1, .unreadableImage: 2])
        #expect(summary.skippedRows == [.malformed: 1])
        #expect(summary.clippedBoxes == 1)
        #expect(summary.issues.contains { $0.description.contains("labels.csv:7") && $0.description.contains("trunc.jpg") })
        let back = try Self.readBack(out)
        #expect(Set(back.keys) == ["good.jpg", "clip.jpg"])
        // Clipped to the 64x48 image, then scaled to 48x30.
        Self.expectBox(back["clip.jpg"]!.objects[0].box, (0, 4 * 30.0 / 48, 30 * 48.0 / 64, 30))
        #expect(summary.description.contains("skipped images: 7"))

        // A truncated JPEG passes the header check; --strict still refuses the set when decoding finds it.
        try Self.write("frame,xmin,xmax,ymin,ymax,class_id\ngood.jpg,4,20,4,20,1\ntrunc.jpg,4,20,4,20,1\n", to: labels)
        let out2 = dir + "/out2.h5"
        Self.expectRefused([["labels.csv:3", "unreadable image", "trunc.jpg", "truncated"]], output: out2) {
            _ = try DetectionImport.run(Self.options(.udacity, images: dir, labels: labels, out: out2))
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") }
        #expect(leftovers.isEmpty)
    }

    // MARK: - Udacity's original files

    @Test func auttiAndCrowdAI() throws {
        let dir = Fixture.temporaryDirectory("det-autti")
        try Self.writeImage(dir + "/a.jpg", width: 192, height: 120)
        try Self.writeImage(dir + "/b.jpg", width: 192, height: 120)
        try Self.write("""
            a.jpg 10 20 50 60 0 "car"
            a.jpg 100 10 120 40 1 "trafficLight" "Red"
            b.jpg 5 5 30 30 0 "biker"
            b.jpg 40 5 60 30 0 "pedestrian"
            b.jpg 70 5 90 30 0 "truck"

            """, to: dir + "/autti.csv")
        let out = dir + "/autti.h5"
        _ = try DetectionImport.run(Self.options(.autti, images: dir, labels: dir + "/autti.csv", out: out, height: 60, width: 96))
        var back = try Self.readBack(out)
        #expect(back["a.jpg"]!.objects.map(\.classID) == [1, 5])
        #expect(back["b.jpg"]!.objects.map(\.classID) == [4, 3, 2])
        Self.expectBox(back["a.jpg"]!.objects[0].box, (5, 10, 25, 30))  // half size

        // CrowdAI's header names the columns wrongly; the data is xmin, ymin, xmax, ymax.
        try Self.write("""
            xmin,xmax,ymin,ymax,Frame,Label,Preview URL
            10,20,50,60,a.jpg,Car,http://example.com/a
            5,5,30,30,b.jpg,Pedestrian,http://example.com/b
            5,5,30,30,b.jpg,Bus,http://example.com/b

            """, to: dir + "/crowdai.csv")
        let out2 = dir + "/crowdai.h5"
        Self.expectRefused([["crowdai.csv:4", "unknown class", "'Bus'"]], output: out2) {
            _ = try DetectionImport.run(Self.options(.crowdai, images: dir, labels: dir + "/crowdai.csv", out: out2, height: 60, width: 96))
        }
        var o = Self.options(.crowdai, images: dir, labels: dir + "/crowdai.csv", out: out2, height: 60, width: 96)
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.notes.contains { $0.contains("xmin,xmax,ymin,ymax") })
        back = try Self.readBack(out2)
        #expect(back.keys.sorted() == ["a.jpg"])
        Self.expectBox(back["a.jpg"]!.objects[0].box, (5, 10, 25, 30))
    }

    /// The two real frames: the course CSV's boxes land where it says, scaled to the stored size; the original Autti
    /// XML (1920x1200 coordinates, one frame under its Roboflow name) lands within a pixel of them.
    @Test(.enabled(if: has("udacity"))) func realUdacityFrames() throws {
        let dir = Fixture.temporaryDirectory("det-real-udacity")
        let images = Self.shared + "/udacity/images"
        let csvOut = dir + "/csv.h5"
        _ = try DetectionImport.run(Self.options(.udacity, images: images, labels: Self.shared + "/udacity/labels.csv", out: csvOut, height: 300, width: 480))
        let csv = try Self.readBack(csvOut)
        let first = try #require(csv["1478019952686311006.jpg"])
        #expect(first.size == (300, 480))
        // 480x300 already: the CSV's numbers exactly (frame,xmin,xmax,ymin,ymax,class_id).
        Self.expectBox(first.objects[0].box, (237, 143, 251, 155)); #expect(first.objects[0].classID == 1)
        Self.expectBox(first.objects[1].box, (437, 120, 454, 186)); #expect(first.objects[1].classID == 3)
        let second = try #require(csv["1478020202688242798_jpg.rf.49c13f8414aaebf9a018f6c0fcc82a0e.jpg"])
        #expect(second.size == (512, 512))
        // 512x512 scaled to 480x300: x * 480/512, y * 300/512.
        let (sx, sy): (Double, Double) = (480.0 / 512, 300.0 / 512)
        Self.expectBox(second.objects[0].box, (214 * sx, 238 * sy, 231 * sx, 259 * sy))
        #expect(second.objects.map(\.classID) == [1, 5, 5])

        let xmlOut = dir + "/xml.h5"
        let annotations = Self.shared + "/udacity/original_labels/BeSlower_Udacity_object_dataset/object-detection-autti/annotations"
        let summary = try DetectionImport.run(Self.options(.autti, images: images, labels: annotations, out: xmlOut, height: 300, width: 480))
        #expect(summary.rescaledAnnotations == 2 && summary.roboflowNames == 1)
        let xml = try Self.readBack(xmlOut)
        // The XML lacks the first frame's car (a known defect of that conversion); every other box matches.
        #expect(xml["1478019952686311006.jpg"]!.objects.count == 1)
        let pairs = [(xml["1478019952686311006.jpg"]!.objects[0], first.objects[1])]
            + zip(xml["1478020202688242798_jpg.rf.49c13f8414aaebf9a018f6c0fcc82a0e.jpg"]!.objects, second.objects).map { ($0, $1) }
        #expect(pairs.count == 4)
        for (a, b) in pairs {
            #expect(a.classID == b.classID)
            #expect(abs(a.box.xmin - b.box.xmin) <= 1 && abs(a.box.ymin - b.box.ymin) <= 1
                    && abs(a.box.xmax - b.box.xmax) <= 1 && abs(a.box.ymax - b.box.ymax) <= 1, "\(a.box) vs \(b.box)")
        }
    }

    // MARK: - KITTI

    @Test func kittiGenerated() throws {
        let dir = Fixture.temporaryDirectory("det-kitti")
        let (imageDir, labelDir) = (dir + "/image_2", dir + "/label_2")
        for d in [imageDir, labelDir] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try Self.writeImage(imageDir + "/000000.png", width: 124, height: 38)
        try Self.writeImage(imageDir + "/000001.jpeg", width: 124, height: 38)
        let tail = " 1.5 1.6 3.9 1.0 1.7 9.0 0.1"
        try Self.write("""
            Car 0.00 0 -1.5 10.5 2.0 40.25 30.0\(tail)
            Van 0.00 0 -1.5 50 2 70 30\(tail)
            DontCare -1 -1 -10 80 5 100 20 -1 -1 -1 -1000 -1000 -1000 -10
            Tram 0.00 0 0 0 0 20 20\(tail)
            Person_sitting 0.00 0 0 100 10 110 36\(tail)
            Cyclist 0.00 0 0 1 1 9 9\(tail)
            Truck 0.00 0 0 1 1 9 9\(tail)

            """, to: labelDir + "/000000.txt")
        try Self.write("Bus 0.00 0 0 1 1 9 9\(tail)\nCar 0.00 0 0 1 1\n", to: labelDir + "/000001.txt")
        let out = dir + "/out.h5"
        Self.expectRefused([["000001.txt:2", "malformed", "6 fields"], ["000001.txt:1", "unknown class", "'Bus'"]], output: out) {
            _ = try DetectionImport.run(Self.options(.kitti, images: imageDir, labels: labelDir, out: out, height: 38, width: 124))
        }
        var o = Self.options(.kitti, images: imageDir, labels: labelDir, out: out, height: 38, width: 124)
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.classNames == ["car", "truck", "pedestrian", "bicyclist"])
        #expect(summary.droppedObjects == ["Tram": 1] && summary.dontCareRegions == 1)
        let objects = try #require(Self.readBack(out)["000000.png"]).objects
        // Car, Van, DontCare (one difficult box per class), Person_sitting, Cyclist, Truck; Tram dropped.
        #expect(objects.map(\.classID) == [1, 1, 1, 2, 3, 4, 3, 4, 2])
        #expect(objects.map(\.difficult) == [false, false, true, true, true, true, false, false, false])
        Self.expectBox(objects[0].box, (10.5, 2, 40.25, 30))
        #expect(objects[2...5].allSatisfy { $0.box == objects[2].box })
    }

    /// The real kitti_tiny frames: the class mapping over all 75 files (counts from the set's PROVENANCE: Car 209,
    /// Van 25, Truck 10, Pedestrian 36, Person_sitting 5, Cyclist 14, DontCare 188, Tram 9, Misc 3).
    @Test(.enabled(if: has("kitti"))) func kittiSample() throws {
        let dir = Fixture.temporaryDirectory("det-kitti-real")
        let base = Self.shared + "/kitti/kitti_tiny/training"
        let summary = try DetectionImport.run(Self.options(.kitti, images: base + "/image_2", labels: base + "/label_2",
                                                           out: dir + "/out.h5", height: 24, width: 80, valFraction: 0.2))
        #expect(summary.trainImages + summary.valImages == 75 && summary.valImages == 15)
        let boxes = zip(summary.trainBoxes, summary.valBoxes).map { $0 + $1 }
        #expect(boxes == [209 + 25, 10, 36 + 5, 14])
        #expect(summary.dontCareRegions == 188 && summary.trainDifficult + summary.valDifficult == 188 * 4)
        #expect(summary.droppedObjects == ["Tram": 9, "Misc": 3])
        #expect(summary.clippedBoxes == 0 && summary.issues.isEmpty)
        // Frame 000000 holds KITTI's known single pedestrian (712.40 143.00 810.73 307.92), scaled from its size.
        let frame = try #require(Self.readBack(dir + "/out.h5")["000000.jpeg"])
        let (sx, sy) = (80.0 / Double(frame.size.1), 24.0 / Double(frame.size.0))
        #expect(frame.objects.count == 1 && frame.objects[0].classID == 3)
        Self.expectBox(frame.objects[0].box, (712.40 * sx, 143.00 * sy, 810.73 * sx, 307.92 * sy))
    }

    // MARK: - VOC and Penn-Fudan

    @Test func vocXML() throws {
        let dir = Fixture.temporaryDirectory("det-voc")
        let (imageDir, annotationDir) = (dir + "/JPEGImages", dir + "/Annotations")
        for d in [imageDir, annotationDir] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try Self.writeImage(imageDir + "/000005.jpg", width: 100, height: 80)
        try Self.writeImage(imageDir + "/000007.jpg", width: 50, height: 40)
        func object(_ name: String, _ box: (Int, Int, Int, Int), difficult: Int = 0, part: Bool = false) -> String {
            let partXML = part ? "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>" : ""
            return """
                <object><name>\(name)</name><difficult>\(difficult)</difficult>\(partXML)
                <bndbox><xmin>\(box.0)</xmin><ymin>\(box.1)</ymin><xmax>\(box.2)</xmax><ymax>\(box.3)</ymax></bndbox></object>
                """
        }
        try Self.write("""
            <annotation><filename>000005.jpg</filename><size><width>100</width><height>80</height><depth>3</depth></size>
            \(object("person", (1, 1, 10, 20), part: true))
            \(object("chair", (50, 40, 100, 80), difficult: 1))
            </annotation>
            """, to: annotationDir + "/000005.xml")
        // Annotated at twice the stored size: the boxes are rescaled to the file's 50x40.
        try Self.write("""
            <annotation><filename>000007.jpg</filename><size><width>100</width><height>80</height></size>
            \(object("person", (21, 11, 60, 50)))
            </annotation>
            """, to: annotationDir + "/000007.xml")
        let out = dir + "/out.h5"
        let summary = try DetectionImport.run(Self.options(.voc, images: imageDir, labels: annotationDir, out: out, height: 40, width: 50))
        #expect(summary.classNames == ["chair", "person"] && summary.rescaledAnnotations == 1)
        let back = try Self.readBack(out)
        let five = back["000005.jpg"]!.objects
        // 1-based inclusive (1, 1, 10, 20) covers pixels 0...9 x 0...19: corners (0, 0, 10, 20), halved.
        #expect(five.map(\.classID) == [2, 1] && five.map(\.difficult) == [false, true])
        Self.expectBox(five[0].box, (0, 0, 5, 10))
        Self.expectBox(five[1].box, (24.5, 19.5, 50, 40))
        Self.expectBox(back["000007.jpg"]!.objects[0].box, (10, 5, 30, 25))

        try Self.write("<annotation><object><name>person</name>\n<bndbox><xmin>1</xmin></bndbox>\n</annotation>", to: annotationDir + "/000005.xml")
        let out2 = dir + "/out2.h5"
        Self.expectRefused([["000005.xml:", "malformed", "XML"]], output: out2) {
            _ = try DetectionImport.run(Self.options(.voc, images: imageDir, labels: annotationDir, out: out2))
        }
    }

    /// Three real Penn-Fudan annotations (PASCAL 1.00 text, 1-based) against the real PNGs.
    @Test(.enabled(if: has("pennfudan"))) func pennFudanSample() throws {
        let dir = Fixture.temporaryDirectory("det-pennfudan")
        let base = Self.shared + "/pennfudan/PennFudanPed"
        let annotations = dir + "/Annotation"
        try FileManager.default.createDirectory(atPath: annotations, withIntermediateDirectories: true)
        for name in ["FudanPed00001.txt", "PennPed00011.txt", "PennPed00096.txt"] {
            try FileManager.default.copyItem(atPath: base + "/Annotation/" + name, toPath: annotations + "/" + name)
        }
        let summary = try DetectionImport.run(Self.options(.voc, images: base + "/PNGImages", labels: annotations,
                                                           out: dir + "/out.h5", height: 53, width: 55))
        #expect(summary.classNames == ["pedestrian"] && summary.trainImages == 3 && summary.rescaledAnnotations == 0)
        let first = try #require(Self.readBack(dir + "/out.h5")["FudanPed00001.png"])
        #expect(first.size == (536, 559))
        // "(160, 182) - (302, 431)" and "(420, 171) - (535, 486)", 1-based inclusive, scaled to 55x53.
        let (sx, sy) = (55.0 / 559, 53.0 / 536)
        Self.expectBox(first.objects[0].box, (159 * sx, 181 * sy, 302 * sx, 431 * sy))
        Self.expectBox(first.objects[1].box, (419 * sx, 170 * sy, 535 * sx, 486 * sy))
    }

    // MARK: - COCO

    @Test func cocoJSON() throws {
        let dir = Fixture.temporaryDirectory("det-coco")
        try Self.writeImage(dir + "/a.jpg", width: 64, height: 48)
        try Self.writeImage(dir + "/b.jpg", width: 32, height: 32)
        let json = """
            {"images": [{"id": 139, "file_name": "a.jpg", "width": 64, "height": 48},
                        {"id": 285, "file_name": "b.jpg", "width": 32, "height": 32}],
             "annotations": [
                {"id": 1, "image_id": 139, "category_id": 18, "bbox": [10.5, 4.25, 20, 30], "iscrowd": 0},
                {"id": 2, "image_id": 139, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
                {"id": 3, "image_id": 285, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},
                {"id": 4, "image_id": 777, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
             "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]}
            """
        try Self.write(json, to: dir + "/instances.json")
        let out = dir + "/out.h5"
        Self.expectRefused([["annotations[3] (id 4)", "image_id 777"], ["annotations[2] (id 3)", "unknown class", "category_id 99"]], output: out) {
            _ = try DetectionImport.run(Self.options(.coco, images: dir, labels: dir + "/instances.json", out: out, height: 24, width: 32))
        }
        var o = Self.options(.coco, images: dir, labels: dir + "/instances.json", out: out, height: 24, width: 32)
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.classNames == ["person", "dog"])  // category id order
        let a = try #require(Self.readBack(out)["a.jpg"])
        #expect(a.id == 139)
        #expect(a.objects.map(\.classID) == [2, 1] && a.objects.map(\.difficult) == [false, true])
        Self.expectBox(a.objects[0].box, (5.25, 2.125, 15.25, 17.125))
    }

    // MARK: - YOLO

    @Test func yoloGenerated() throws {
        let dir = Fixture.temporaryDirectory("det-yolo")
        let (imageDir, labelDir) = (dir + "/images", dir + "/labels")
        for d in [imageDir, labelDir] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        try Self.writeImage(imageDir + "/x.jpg", width: 80, height: 40)
        try Self.writeImage(imageDir + "/background.jpg", width: 80, height: 40)
        try Self.write("0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.4 0.4\n", to: labelDir + "/x.txt")
        try Self.write("2 0.5 0.5 0.1 0.1\n", to: labelDir + "/orphan.txt")
        let out = dir + "/out.h5"
        var o = Self.options(.yolo, images: imageDir, labels: labelDir, out: out, height: 20, width: 40)
        Self.expectError(DataError.self, containing: ["--classes"]) { _ = try DetectionImport.run(o) }
        o.classes = ["cat", "dog"]
        Self.expectRefused([["orphan.txt", "no image file"]], output: out) { _ = try DetectionImport.run(o) }
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.trainImages == 2 && summary.notes.contains { $0.contains("1 images without a label file") })
        #expect(summary.skippedImages == [.missingImage: 1])
        let back = try Self.readBack(out)
        #expect(back["background.jpg"]!.objects.isEmpty)
        let x = back["x.jpg"]!.objects
        #expect(x.map(\.classID) == [1, 2])
        // (cx, cy, w, h) = (0.5, 0.5, 0.25, 0.5) of 40x20: corners (15, 5, 25, 15); the second reaches past the
        // top-left corner and is clipped: (-0.1, -0.1, 0.3, 0.3) -> (0, 0, 12, 6).
        Self.expectBox(x[0].box, (15, 5, 25, 15))
        Self.expectBox(x[1].box, (0, 0, 12, 6))
        #expect(summary.clippedBoxes == 1)
    }

    static let coco80 = """
        person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,parking meter,bench,\
        bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,tie,suitcase,frisbee,skis,snowboard,\
        sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket,bottle,wine glass,cup,fork,knife,spoon,\
        bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,\
        toilet,tv,laptop,mouse,remote,keyboard,cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,\
        teddy bear,hair drier,toothbrush
        """.split(separator: ",").map(String.init)

    /// COCO128 through the command line: its two label files without images are reported (--strict refuses, --skip-bad
    /// counts them); the counts match the set's PROVENANCE (929 boxes on the 126 labelled images with a file,
    /// person 254, car 46) and its two unlabelled images come in as background.
    @Test(.enabled(if: has("coco128"))) func coco128ViaYOLO() throws {
        #expect(Self.coco80.count == 80)
        let dir = Fixture.temporaryDirectory("det-coco128")
        let base = Self.shared + "/coco128"
        let out = dir + "/out.h5"
        let args = ["data", "detection", "--format", "yolo", "--images", base + "/images/train2017", "--labels", base + "/labels/train2017",
                    "--out", out, "--height", "48", "--width", "64", "--classes", Self.coco80.joined(separator: ",")]
        let strict = try run(Fixture.starling, args)
        #expect(strict.status != 0)
        #expect(strict.error.contains("000000000656.txt: no image file") && strict.error.contains("000000000659.txt: no image file"))
        #expect(!FileManager.default.fileExists(atPath: out))
        // The same classes from a darknet .names file.
        try Self.write(Self.coco80.joined(separator: "\n") + "\n", to: dir + "/coco.names")
        let namesArgs = Array(args.dropLast(2)) + ["--names", dir + "/coco.names"]
        let skipped = try run(Fixture.starling, namesArgs + ["--skip-bad"])
        #expect(skipped.status == 0, "\(skipped.error)")
        #expect(skipped.output.contains("wrote \(out): 128 images") && skipped.output.contains("skipped images: 2 (no image file 2)"))
        let train = try DetectionDataset(path: out, split: "train"), val = try DetectionDataset(path: out, split: "val")
        // The split is drawn over the 130 labelled names before the two without images are left out.
        #expect(train.count + val.count == 128 && (12...13).contains(val.count))
        var perClass = [Int](repeating: 0, count: 81), total = 0
        for data in [train, val] {
            for i in 0..<data.count {
                for object in data.objects(of: i) { perClass[object.classID] += 1; total += 1 }
            }
        }
        #expect(total == 929 && perClass[1] == 254 && perClass[3] == 46)
        #expect(train.classNames.count == 81 && train.classNames[10] == "traffic light")
    }

    // MARK: - ssd_keras HDF5

    /// Writes an ssd_keras-style file with HDF5's C API, the way h5py lays it out: vlen uint8 images, vlen int32
    /// labels, vlen str ids, and eval_neutral as vlen of h5py's bool enum.
    static func writeSSDKerasFile(_ path: String, images: [(h: Int, w: Int, c: Int, pixels: [UInt8])],
                                  labels: [[Int32]], neutral: [[Bool]], ids: [String]) {
        let P = hid_t(H5P_DEFAULT)
        let file = H5Fcreate(path, starling_h5f_acc_trunc(), P, P)
        defer { H5Fclose(file) }
        var n = [hsize_t(images.count)]
        let space = H5Screate_simple(1, &n, nil)
        defer { H5Sclose(space) }
        func vlen<T>(_ name: String, base: hid_t, _ rows: [[T]]) {
            let type = H5Tvlen_create(base)
            let set = H5Dcreate2(file, name, type, space, P, P, P)
            let buffers = rows.map { row -> UnsafeMutablePointer<T> in
                let p = UnsafeMutablePointer<T>.allocate(capacity: max(1, row.count))
                p.initialize(from: row, count: row.count)
                return p
            }
            var sequences = zip(rows, buffers).map { hvl_t(len: $0.count, p: UnsafeMutableRawPointer($1)) }
            H5Dwrite(set, type, H5S_ALL, H5S_ALL, P, &sequences)
            for b in buffers { b.deallocate() }
            H5Dclose(set); H5Tclose(type)
        }
        func matrix(_ name: String, _ values: [Int32], columns: Int) {
            var dims = [hsize_t(images.count), hsize_t(columns)]
            let s = H5Screate_simple(2, &dims, nil)
            let set = H5Dcreate2(file, name, starling_h5t_std_i32le(), s, P, P, P)
            H5Dwrite(set, starling_h5t_native_int32(), H5S_ALL, H5S_ALL, P, values)
            H5Dclose(set); H5Sclose(s)
        }
        vlen("images", base: starling_h5t_native_uint8(), images.map(\.pixels))
        matrix("image_shapes", images.flatMap { [Int32($0.h), Int32($0.w), Int32($0.c)] }, columns: 3)
        vlen("labels", base: starling_h5t_native_int32(), labels)
        matrix("label_shapes", labels.flatMap { [Int32($0.count / 5), 5] }, columns: 2)
        let boolean = H5Tenum_create(starling_h5t_native_int8())
        var no: Int8 = 0, yes: Int8 = 1
        H5Tenum_insert(boolean, "FALSE", &no); H5Tenum_insert(boolean, "TRUE", &yes)
        vlen("eval_neutral", base: boolean, neutral.map { $0.map { Int8($0 ? 1 : 0) } })
        H5Tclose(boolean)
        let text = H5Tcopy(starling_h5t_c_s1())
        H5Tset_size(text, starling_h5t_variable())
        H5Tset_cset(text, H5T_CSET_UTF8)
        let set = H5Dcreate2(file, "image_ids", text, space, P, P, P)
        let cStrings = ids.map { strdup($0) }
        H5Dwrite(set, text, H5S_ALL, H5S_ALL, P, cStrings)
        cStrings.forEach { free($0) }
        H5Dclose(set); H5Tclose(text)
    }

    @Test func ssdKerasHDF5() throws {
        let dir = Fixture.temporaryDirectory("det-ssdkeras")
        let rgb = (0..<(20 * 30 * 3)).map { UInt8($0 % 251) }
        let gray = (0..<(10 * 16)).map { UInt8($0) }
        let path = dir + "/ssd.h5"
        Self.writeSSDKerasFile(path, images: [(20, 30, 3, rgb), (10, 16, 1, gray), (10, 16, 3, Array(repeating: 7, count: 480))],
                               labels: [[1, 2, 3, 12, 13, 5, 0, 0, 30, 20], [3, 1, 1, 5, 5], [9, 1, 1, 5, 5]],
                               neutral: [[false, true], [false], [false]], ids: ["000001", "000002", "000003"])
        let out = dir + "/out.h5"
        var o = Self.options(.ssdKeras, images: nil, labels: path, out: out, height: 10, width: 15)
        Self.expectError(DataError.self, containing: ["--classes"]) { _ = try DetectionImport.run(o) }
        o.classes = ["car", "truck", "pedestrian", "bicyclist", "light"]
        Self.expectRefused([["ssd.h5: labels[2] box 0", "unknown class", "'9'"]], output: out) { _ = try DetectionImport.run(o) }
        o.skipBad = true
        let summary = try DetectionImport.run(o)
        #expect(summary.trainImages == 2)
        let data = try DetectionDataset(path: out, split: "train")
        #expect(data.fileNames == ["images[0] (000001)", "images[1] (000002)"])
        #expect(data.objects(of: 0).map(\.classID) == [1, 5] && data.objects(of: 0).map(\.difficult) == [false, true])
        Self.expectBox(data.objects(of: 0)[0].box, (1, 1.5, 6, 6.5))
        Self.expectBox(data.objects(of: 1)[0].box, (0.9375, 1, 4.6875, 5))  // x scaled by 15/16
        // The gray image is repeated into three equal channels.
        var pixels = [UInt8](repeating: 0, count: 10 * 15 * 3)
        try pixels.withUnsafeMutableBufferPointer { try data.readImages([1], into: $0) }
        let expected = ImageResize.bilinear(gray.flatMap { [$0, $0, $0] }, width: 16, height: 10, channels: 3, toWidth: 15, toHeight: 10)
        #expect(pixels == expected)
    }

    // MARK: - Command line

    @Test func commandLine() throws {
        let dir = Fixture.temporaryDirectory("det-cli")
        try Self.writeImage(dir + "/a.jpg", width: 32, height: 24)
        try Self.write("frame,xmin,xmax,ymin,ymax,class_id\na.jpg,1,10,1,10,1\na.jpg,1,10,1,10,6\n", to: dir + "/labels.csv")
        let out = dir + "/out.h5"
        let args = ["data", "detection", "--format", "udacity", "--images", dir, "--labels", dir + "/labels.csv", "--out", out]
        let refused = try run(Fixture.starling, args)
        #expect(refused.status != 0 && refused.error.contains("labels.csv:3: unknown class: '6' is not a class id 1...5"))
        #expect(!FileManager.default.fileExists(atPath: out))
        let bad = try run(Fixture.starling, ["data", "detection", "--format", "pascal", "--labels", "x", "--out", out])
        #expect(bad.status != 0 && bad.error.contains("unknown --format 'pascal'"))
        try Self.write("frame,xmin,xmax,ymin,ymax,class_id\na.jpg,1,10,1,10,1\n", to: dir + "/labels.csv")
        let ok = try run(Fixture.starling, args + ["--height", "12", "--width", "16", "--val-fraction", "0"])
        #expect(ok.status == 0, "\(ok.error)")
        #expect(ok.output.contains("wrote \(out): 1 images (train 1, val 0), 16x12, 5 classes"))
        #expect(try DetectionDataset(path: out, split: "train").count == 1)
    }
}

extension DetectionImportTests {
    /// Expects `body` to throw an `E` whose description contains every string in `parts`.
    static func expectError<E: Error & CustomStringConvertible>(_ type: E.Type, containing parts: [String],
                                                               sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected \(E.self)", sourceLocation: sourceLocation)
        } catch let error as E {
            for part in parts { #expect(error.description.contains(part), "'\(error)' lacks '\(part)'", sourceLocation: sourceLocation) }
        } catch {
            Issue.record("expected \(E.self), got \(error)", sourceLocation: sourceLocation)
        }
    }
}
