import Foundation
import Testing
@testable import StarlingIO

/// Issue 16: HDF5 1.10 reads a global heap collection whose free space has size 0 forever. Files open through
/// `HDF5GuardedDriver`, which walks each collection first (`HDF5GlobalHeapCheck`). The collections here are HDF5's
/// own, written by the library through Starling's string attributes, then damaged byte by byte.
@Suite struct HDF5GuardTests {
    /// A file with string attributes (stored in a global heap collection), its bytes, and where the collection is.
    static func fileWithHeap(_ dir: String) throws -> (path: String, bytes: [UInt8], heap: Int, size: Int) {
        let path = dir + "/strings.h5"
        let file = try HDF5File.create(path)
        try file.root.setAttribute("format", "starling-checkpoint")
        try file.root.setAttribute("config", String(repeating: "{\"layers\": [1, 2, 3]} ", count: 20))
        try file.root.createGroup("weights").setAttribute("note", "a third string")
        file.close()
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let heap = try #require(firstCollection(in: bytes))
        let size = Int(load(bytes, heap + 8, 8))
        return (path, bytes, heap, size)
    }

    static func firstCollection(in bytes: [UInt8]) -> Int? {
        let signature = Array("GCOL".utf8)
        return (0..<(bytes.count - 4)).first { Array(bytes[$0..<($0 + 4)]) == signature }
    }

    static func load(_ bytes: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
        (0..<width).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64(bytes[offset + $1]) }
    }

    static func store(_ value: UInt64, _ bytes: inout [UInt8], _ offset: Int, _ width: Int) {
        for i in 0..<width { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    /// The byte offsets (in the file) of the collection's objects: (index, offset), the free space last.
    static func objects(_ bytes: [UInt8], heap: Int, size: Int) -> [(index: Int, offset: Int)] {
        var found: [(Int, Int)] = []
        var p = heap + 16
        while p + 16 <= heap + size {
            let index = Int(load(bytes, p, 2)), objectSize = Int(load(bytes, p + 8, 8))
            found.append((index, p))
            p += index == 0 ? objectSize : 16 + (objectSize + 7) / 8 * 8
            if index == 0 { break }
        }
        return found
    }

    /// Runs `body`, ending the test process with a message if it has not returned after `seconds`: a regression of the
    /// guard would otherwise hang the whole test run inside HDF5.
    static func withDeadline<R>(_ seconds: Double, _ what: String, _ body: () throws -> R) rethrows -> R {
        let finished = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            if finished.wait(timeout: .now() + seconds) == .timedOut {
                FileHandle.standardError.write(Data("HDF5GuardTests: \(what) did not finish in \(seconds) s (HDF5 reading a corrupt global heap forever)\n".utf8))
                exit(1)
            }
        }
        defer { finished.signal() }
        return try body()
    }

    @Test func collectionsHDF5WritesPassTheCheckAndReadBack() throws {
        try withTemporaryDirectory { dir in
            let (path, bytes, heap, size) = try Self.fileWithHeap(dir)
            #expect(size >= 4096 && heap + size <= bytes.count)
            #expect(HDF5GlobalHeapCheck.problem(inCollection: Array(bytes[heap..<(heap + size)])) == nil)
            let objects = Self.objects(bytes, heap: heap, size: size)
            #expect(objects.filter { $0.index > 0 }.count == 3 && objects.last?.index == 0, "\(objects)")
            // Read back through the guarded driver, then changed in place through it and read again.
            let file = try HDF5File.open(path)
            #expect(try file.root.stringAttribute("format") == "starling-checkpoint")
            #expect(try file.root.group("weights").stringAttribute("note") == "a third string")
            file.close()
            let writable = try HDF5File.open(path, writable: true)
            try writable.root.setAttribute("format", "changed")
            try writable.root.createDataset("values", type: .float32, shape: [3]).write([Float](arrayLiteral: 1, 2, 3))
            writable.close()
            let reread = try HDF5File.open(path)
            #expect(try reread.root.stringAttribute("format") == "changed")
            #expect(try reread.root.dataset("values").read(as: Float.self) == [1, 2, 3])
            #expect(try reread.root.stringAttribute("config").hasPrefix("{\"layers\""))
        }
    }

    @Test func corruptCollectionsAreRefusedNamingTheFile() throws {
        try withTemporaryDirectory { dir in
            let (path, bytes, heap, size) = try Self.fileWithHeap(dir)
            let objects = Self.objects(bytes, heap: heap, size: size)
            let free = try #require(objects.last(where: { $0.index == 0 })).offset
            let first = try #require(objects.first(where: { $0.index > 0 })).offset
            var cases: [(name: String, bytes: [UInt8], problem: String)] = []
            // What the fuzzer found: free space of size 0, which HDF5 1.10's walk steps over by nothing, forever.
            var zeroFree = bytes
            Self.store(0, &zeroFree, free + 8, 8)
            cases.append(("free space of size 0", zeroFree, "has size 0"))
            // An object larger than its collection: HDF5 would walk out of the collection's memory.
            var overrun = bytes
            Self.store(UInt64(size), &overrun, first + 8, 8)
            cases.append(("object past the end", overrun, "past the collection's end"))
            // A size that wraps HDF5's arithmetic around.
            var wrapping = bytes
            Self.store(UInt64.max - 3, &wrapping, first + 8, 8)
            cases.append(("object size near 2^64", wrapping, "claims"))
            // A collection claiming more bytes than the file has.
            var huge = bytes
            Self.store(1 << 40, &huge, heap + 8, 8)
            cases.append(("collection past the end of the file", huge, "past the end of the file"))
            for (name, damaged, problem) in cases {
                let found = HDF5GlobalHeapCheck.problem(inCollection: Array(damaged[heap..<min(damaged.count, heap + size)]))
                #expect(found != nil, "\(name): the check found nothing")
                let copy = dir + "/damaged.h5"
                try Data(damaged).write(to: URL(fileURLWithPath: copy))
                Self.withDeadline(60, name) {
                    expectError(HDF5Error.self, containing: [copy, "attribute \"format\"", "corrupt global heap collection at byte \(heap)", problem]) {
                        _ = try HDF5File.open(copy).root.stringAttribute("format")
                    }
                }
            }
            _ = path
        }
    }
}
