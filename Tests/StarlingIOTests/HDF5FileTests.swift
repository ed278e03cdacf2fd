import Foundation
import Testing
@testable import StarlingIO

@Suite struct HDF5FileTests {
    private struct LayerConfig: Codable, Equatable {
        var name: String
        var units: Int
        var rates: [Double]
        var activation: String?
    }

    /// Sets one attribute of each kind on `holder` and checks them after the file is reopened.
    private func writeAttributes(_ holder: some HDF5AttributeHolder) throws {
        try holder.setAttribute("text", "héllo, wörld ✓")
        try holder.setAttribute("empty", "")
        try holder.setAttribute("int", -1_234_567_890_123)
        try holder.setAttribute("double", 0.1)
        try holder.setAttribute("ints", [3, -1, 4, 1 << 40])
        try holder.setAttribute("no_ints", [Int]())
        try holder.setAttribute("names", ["dense_1", "conv2d_10/kernel:0", "", "ü"])
        try holder.setAttribute("no_names", [String]())
        try holder.setJSONAttribute("config", LayerConfig(name: "dense", units: 10, rates: [0.5, 1e-3], activation: nil))
        try holder.setAttribute("replaced", 1)
        try holder.setAttribute("replaced", "now a string")
    }

    private func checkAttributes(_ holder: some HDF5AttributeHolder, object: String, file: String) throws {
        #expect(try holder.stringAttribute("text") == "héllo, wörld ✓")
        #expect(try holder.stringAttribute("empty") == "")
        #expect(try holder.intAttribute("int") == -1_234_567_890_123)
        #expect(try holder.doubleAttribute("double") == 0.1)
        #expect(try holder.doubleAttribute("int") == -1_234_567_890_123)
        #expect(try holder.intArrayAttribute("ints") == [3, -1, 4, 1 << 40])
        #expect(try holder.intArrayAttribute("int") == [-1_234_567_890_123])
        #expect(try holder.intArrayAttribute("no_ints") == [])
        #expect(try holder.stringArrayAttribute("names") == ["dense_1", "conv2d_10/kernel:0", "", "ü"])
        #expect(try holder.stringArrayAttribute("no_names") == [])
        #expect(try holder.stringArrayAttribute("text") == ["héllo, wörld ✓"])
        #expect(try holder.jsonAttribute("config", as: LayerConfig.self)
            == LayerConfig(name: "dense", units: 10, rates: [0.5, 1e-3], activation: nil))
        #expect(try holder.stringAttribute("replaced") == "now a string")
        #expect(holder.hasAttribute("int"))
        #expect(!holder.hasAttribute("nope"))

        expectError(HDF5Error.self, containing: [file, object, "no attribute \"nope\""]) {
            _ = try holder.intAttribute("nope")
        }
        expectError(HDF5Error.self, containing: [file, object, "\"text\"", "not an integer"]) {
            _ = try holder.intAttribute("text")
        }
        expectError(HDF5Error.self, containing: [object, "\"int\"", "not a string"]) {
            _ = try holder.stringAttribute("int")
        }
        expectError(HDF5Error.self, containing: [object, "\"ints\"", "4 integers"]) {
            _ = try holder.intAttribute("ints")
        }
        expectError(HDF5Error.self, containing: [object, "\"text\"", "invalid JSON"]) {
            _ = try holder.jsonAttribute("text", as: LayerConfig.self)
        }
    }

    @Test func attributesOfEveryKindRoundTrip() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/attributes.h5"
            let file = try HDF5File.create(path)
            try writeAttributes(file.root)
            let group = try file.root.createGroup("model_weights")
            try writeAttributes(group)
            try writeAttributes(try group.createDataset("kernel", type: .float32, shape: [2, 2]))
            file.close()

            let reopened = try HDF5File.open(path)
            try checkAttributes(reopened.root, object: "/", file: path)
            try checkAttributes(try reopened.root.group("model_weights"), object: "/model_weights", file: path)
            try checkAttributes(try reopened.root.dataset("model_weights/kernel"), object: "/model_weights/kernel", file: path)
            expectError(HDF5Error.self, containing: [path, "read-only"]) {
                try reopened.root.setAttribute("x", 1)
            }
        }
    }

    /// Keras stores every weight name of a model in one attribute; with thousands of names that exceeds the
    /// 64 KiB object-header limit of HDF5's oldest file format.
    @Test func largeStringArrayAttribute() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/large.h5"
            let names = (0..<4000).map { "block_\($0)/conv2d_\($0)/kernel:0" }
            let long = String(repeating: "{\"layer\": 1}, ", count: 20_000)
            let file = try HDF5File.create(path)
            try file.root.setAttribute("weight_names", names)
            try file.root.setAttribute("model_config", long)
            file.close()
            let reopened = try HDF5File.open(path)
            #expect(try reopened.root.stringArrayAttribute("weight_names") == names)
            #expect(try reopened.root.stringAttribute("model_config") == long)
        }
    }

    @Test func groupsAndPaths() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/groups.h5"
            let file = try HDF5File.create(path)
            let c = try file.root.createGroup("a/b/c")
            #expect(c.name == "/a/b/c")
            let data = try c.createDataset("data", type: .int32, shape: [2])
            #expect(data.name == "/a/b/c/data")
            _ = try file.root.createDataset("z/deep/values", type: .uint8, shape: [1])
            _ = try file.root.createGroup("m")
            #expect(file.root.contains("a/b"))
            #expect(file.root.contains("/a/b/c/data"))
            #expect(try file.root.group("a").contains("b/c"))
            #expect(!file.root.contains("a/x/y"))
            #expect(!file.root.contains("q"))
            #expect(try file.root.childNames() == ["a", "m", "z"])
            #expect(try file.root.group("a/b/c").childNames() == ["data"])
            #expect(try file.root.group("a").group("b").name == "/a/b")

            expectError(HDF5Error.self, containing: [path, "/a/b/c", "already exists"]) {
                _ = try file.root.createGroup("a/b/c")
            }
            expectError(HDF5Error.self, containing: [path, "/a/nope", "no such group"]) {
                _ = try file.root.group("a/nope")
            }
            expectError(HDF5Error.self, containing: [path, "/a/b/c/data", "already exists"]) {
                _ = try c.createDataset("data", type: .int32, shape: [2])
            }
            expectError(HDF5Error.self, containing: [path, "chunk"]) {
                _ = try file.root.createDataset("bad", type: .int32, shape: [4, 4], chunk: [8, 4])
            }
        }
    }

    @Test func missingFileNonHDF5FileAndMissingDataset() throws {
        try withTemporaryDirectory { dir in
            let missing = dir + "/missing.h5"
            expectError(HDF5Error.self, containing: [missing, "no such file"]) { _ = try HDF5File.open(missing) }

            let text = dir + "/notes.h5"
            try Data("this is not HDF5\n".utf8).write(to: URL(fileURLWithPath: text))
            expectError(HDF5Error.self, containing: [text, "not an HDF5 file"]) { _ = try HDF5File.open(text) }

            let path = dir + "/weights.h5"
            let file = try HDF5File.create(path)
            _ = try file.root.createDataset("layer/kernel", type: .float32, shape: [2])
            expectError(HDF5Error.self, containing: [path, "/layer/bias", "no such dataset"]) {
                _ = try file.root.dataset("layer/bias")
            }
            expectError(HDF5Error.self, containing: [path, "/nope/bias", "no such dataset"]) {
                _ = try file.root.group("/").dataset("nope/bias")
            }
        }
    }

    @Test func truncatedFileIsAnError() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/full.h5"
            let file = try HDF5File.create(path)
            try file.root.createDataset("x", type: .float64, shape: [20_000]).write([Double](repeating: 1.5, count: 20_000))
            file.close()
            let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            let truncated = dir + "/truncated.h5"
            try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: truncated))
            expectError(HDF5Error.self, containing: [truncated, "truncated"]) {
                let file = try HDF5File.open(truncated)
                _ = try file.root.dataset("x").read(as: Double.self)
            }
        }
    }

    @Test func closedFilesAndReadOnlyFiles() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/closed.h5"
            let file = try HDF5File.create(path)
            let dataset = try file.root.createDataset("x", type: .int16, shape: [3])
            try dataset.write([1, 2, 3] as [Int16])
            try file.flush()
            file.close()
            file.close()  // idempotent
            #expect(!file.isOpen)
            expectError(HDF5Error.self, containing: [path, "/x", "file is closed"]) { _ = try dataset.read(as: Int16.self) }
            expectError(HDF5Error.self, containing: [path, "file is closed"]) { _ = try file.root.childNames() }
            #expect(!file.root.contains("x"))

            let readOnly = try HDF5File.open(path)
            expectError(HDF5Error.self, containing: [path, "/x", "read-only"]) {
                try readOnly.root.dataset("x").write([4, 5, 6] as [Int16])
            }
            readOnly.close()
            let writable = try HDF5File.open(path, writable: true)
            try writable.root.dataset("x").write([4, 5, 6] as [Int16])
            writable.close()
            #expect(try HDF5File.open(path).root.dataset("x").read(as: Int16.self) == [4, 5, 6])
        }
    }

    @Test func atomicWriteReplacesOrLeavesTheOldFile() throws {
        struct Abort: Error {}
        try withTemporaryDirectory { dir in
            let path = dir + "/checkpoint.h5"
            try writeHDF5Atomically(to: path) { file in
                try file.root.setAttribute("step", 1)
                try file.root.createDataset("w", type: .float32, shape: [2]).write([1, 2] as [Float])
            }
            #expect(directoryContents(dir) == ["checkpoint.h5"])

            #expect(throws: Abort.self) {
                try writeHDF5Atomically(to: path) { file in
                    try file.root.setAttribute("step", 2)
                    try file.root.createDataset("w", type: .float32, shape: [2]).write([3, 4] as [Float])
                    throw Abort()
                }
            }
            #expect(directoryContents(dir) == ["checkpoint.h5"])
            do {
                let file = try HDF5File.open(path)
                #expect(try file.root.intAttribute("step") == 1)
                #expect(try file.root.dataset("w").read(as: Float.self) == [1, 2])
            }

            expectError(StarlingIOError.self, containing: ["no such directory"]) {
                try writeHDF5Atomically(to: dir + "/missing/x.h5") { _ in }
            }
        }
    }

    /// A dataset kept past the body is closed with the file, not left dangling.
    @Test func objectsEscapingTheAtomicBodyAreClosed() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/escape.h5"
            let escaped = try writeEscaping(to: path)
            #expect(directoryContents(dir) == ["escape.h5"])
            #expect(try HDF5File.open(path).root.dataset("w").read(as: Float.self) == [5, 6])
            expectError(HDF5Error.self, containing: ["/w", "file is closed"]) { try escaped.write([7, 8] as [Float]) }
        }
    }

    private func writeEscaping(to path: String) throws -> HDF5Dataset {
        let box = DatasetBox()
        try writeHDF5Atomically(to: path) { file in
            let dataset = try file.root.createDataset("w", type: .float32, shape: [2])
            try dataset.write([5, 6] as [Float])
            box.dataset = dataset
        }
        guard let dataset = box.dataset else { throw HDF5Error(file: path, object: "/w", message: "not created") }
        return dataset
    }

    private final class DatasetBox { var dataset: HDF5Dataset? }
}
