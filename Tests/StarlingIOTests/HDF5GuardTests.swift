import CHDF5
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

    /// Bytes that look like a corrupt collection to the check: the signature, version 1, the given size, and a free
    /// space object of size 0 (what HDF5 1.10 would read forever as a heap).
    static func collectionLookalike(count: Int, claimedSize: UInt64) -> [UInt8] {
        var bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        bytes.replaceSubrange(0..<8, with: Array("GCOL".utf8) + [1, 0, 0, 0])
        store(claimedSize, &bytes, 8, 8)
        bytes.replaceSubrange(16..<32, with: [UInt8](repeating: 0, count: 16))
        return bytes
    }

    /// A numeric dataset's elements are never a global heap, whatever their first bytes: HDF5 1.10 hands both to the
    /// driver as raw data, and the driver checks neither the elements of a whole-dataset read nor those of a read of
    /// rows, nor the sieve reads of a write, while variable-length data in the same file stays checked.
    @Test func rawDataStartingWithTheSignatureIsNotAHeap() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/raw.h5"
            // Exactly the 4 KiB HDF5 loads a collection with, one larger claiming more than the file, and a chunked
            // array of rows whose fourth row starts like a collection.
            let small = Self.collectionLookalike(count: 4096, claimedSize: 4096)
            let large = Self.collectionLookalike(count: 8192, claimedSize: 1 << 40)
            var rows = [UInt8](repeating: 7, count: 8 * 512)
            rows.replaceSubrange((3 * 512)..<(4 * 512), with: Self.collectionLookalike(count: 512, claimedSize: 4096))
            #expect(HDF5GlobalHeapCheck.problem(inCollection: small) != nil, "the lookalike must fail the check as a heap")
            let file = try HDF5File.create(path)
            try file.root.createDataset("small", type: .uint8, shape: [4096]).write(small)
            try file.root.createDataset("large", type: .uint8, shape: [8192]).write(large)
            try file.root.createDataset("rows", type: .uint8, shape: [8, 512], chunk: [2, 512]).write(rows)
            try file.root.createDataset("contiguousRows", type: .uint8, shape: [8, 512]).write(rows)
            try file.root.setAttribute("format", "a string in a real collection")
            file.close()
            try Self.withDeadline(60, "raw data") {
                let reader = try HDF5File.open(path)
                #expect(try reader.root.dataset("small").read(as: UInt8.self) == small)
                #expect(try reader.root.dataset("large").read(as: UInt8.self) == large)
                #expect(try reader.root.dataset("rows").readRows(3..<5, as: UInt8.self) == Array(rows[(3 * 512)..<(5 * 512)]))
                #expect(try reader.root.dataset("contiguousRows").readRows(3..<4, as: UInt8.self) == Array(rows[(3 * 512)..<(4 * 512)]))
                #expect(try reader.root.dataset("small").read(as: Float.self).count == 4096)
                #expect(try reader.root.stringAttribute("format") == "a string in a real collection")
                reader.close()
                // A write of one row (HDF5 reads around it into its sieve buffer) and the rows read back.
                let writer = try HDF5File.open(path, writable: true)
                try writer.root.dataset("contiguousRows").writeRows(startingAt: 5, [UInt8](repeating: 9, count: 512))
                writer.close()
                var expected = rows
                expected.replaceSubrange((5 * 512)..<(6 * 512), with: [UInt8](repeating: 9, count: 512))
                #expect(try HDF5File.open(path).root.dataset("contiguousRows").read(as: UInt8.self) == expected)
            }
        }
    }

    final class Lines: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: [String] = []
        func append(_ line: String) { lock.withLock { stored.append(line) } }
        var all: [String] { lock.withLock { stored } }
    }

    /// The fallback for any other loop inside HDF5: a call that does not return within the limit ends with one line
    /// naming its file. The stall is injected in the driver's reads of this test's file only (other tests use HDF5 in
    /// this process at the same time); the recorder stands in for the exit, which the CLI's test sees
    /// (`ReliabilityTests.stuckHDF5CallEndsTheRun`).
    @Test func stuckCallIsReportedNamingItsFile() throws {
        try withTemporaryDirectory { dir in
            let (path, _, _, _) = try Self.fileWithHeap(dir)
            let lines = Lines()
            HDF5CallWatchdog.testOverride = (path, 0.2, { lines.append($0) })
            defer {
                HDF5CallWatchdog.testOverride = nil
                HDF5GuardedDriver.stalledReads = nil
            }
            // Not stalled: calls well within the limit are left alone.
            #expect(try HDF5File.open(path).root.stringAttribute("format") == "starling-checkpoint")
            Thread.sleep(forTimeInterval: 0.3)
            #expect(lines.all.isEmpty, "\(lines.all)")
            HDF5GuardedDriver.stalledReads = (path, 0.3)
            let started = Date()
            let file = try HDF5File.open(path)
            HDF5GuardedDriver.stalledReads = nil
            #expect(try file.root.stringAttribute("format") == "starling-checkpoint")
            let reported = lines.all
            // Each call past the limit (the open, the attribute's read: all this file's reads stall) is reported once.
            #expect(!reported.isEmpty && reported.allSatisfy { $0.hasPrefix(path + ": an HDF5 call has not returned after ") },
                    "\(reported) after \(Date().timeIntervalSince(started)) s")
            #expect(reported.first?.contains("STARLING_HDF5_CALL_SECONDS") == true)
        }
    }

    @Test func callLimitSettingIsChecked() {
        #expect(HDF5CallWatchdog.limit(named: nil) == .success(120))
        #expect(HDF5CallWatchdog.limit(named: "") == .success(120))
        #expect(HDF5CallWatchdog.limit(named: "300") == .success(300))
        #expect(HDF5CallWatchdog.limit(named: "0.5") == .success(0.5))
        #expect(HDF5CallWatchdog.limit(named: "0") == .success(0))
        for bad in ["-1", "two minutes", "inf", "nan"] {
            #expect(HDF5CallWatchdog.limit(named: bad) == .failure(HDF5CallLimitError(value: bad)))
        }
    }

    /// A file made with the C API and HDF5's earliest format (object headers without checksums, as HDF5 1.6 and
    /// many tools write): a variable-length string attribute on the root, a string dataset and a ragged int32
    /// dataset. Returns its bytes.
    static func fileWithReferences(_ path: String) throws -> [UInt8] {
        let P = hid_t(H5P_DEFAULT)
        let file = H5Fcreate(path, starling_h5f_acc_trunc(), P, P)
        let string = H5Tcopy(starling_h5t_c_s1())
        H5Tset_size(string, starling_h5t_variable())
        let scalar = H5Screate(H5S_SCALAR)
        let attribute = H5Acreate2(file, "format", string, scalar, P, P)
        var format = [strdup("starling-checkpoint")]
        #expect(H5Awrite(attribute, string, &format) >= 0)
        format.forEach { free($0) }
        H5Aclose(attribute)
        var two = [hsize_t(2)]
        let pair = H5Screate_simple(1, &two, nil)
        let ragged = H5Tvlen_create(starling_h5t_native_int32())
        let set = H5Dcreate2(file, "ints", ragged, pair, P, P, P)
        let first: [Int32] = [-5, 70000, 3], second: [Int32] = [7]
        first.withUnsafeBufferPointer { a in second.withUnsafeBufferPointer { b in
            var sequences = [hvl_t(len: 3, p: UnsafeMutableRawPointer(mutating: a.baseAddress)),
                             hvl_t(len: 1, p: UnsafeMutableRawPointer(mutating: b.baseAddress))]
            #expect(H5Dwrite(set, ragged, H5S_ALL, H5S_ALL, P, &sequences) >= 0)
        } }
        H5Dclose(set)
        let names = H5Dcreate2(file, "names", string, pair, P, P, P)
        var values = [strdup("first name"), strdup("second")]
        #expect(H5Dwrite(names, string, H5S_ALL, H5S_ALL, P, &values) >= 0)
        values.forEach { free($0) }
        H5Dclose(names)
        H5Tclose(ragged); H5Sclose(pair); H5Sclose(scalar); H5Tclose(string)
        H5Fclose(file)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Where the reference (of `length` elements) to the object holding exactly `content` is stored: (offset of the
    /// reference, the collection's address, the object's index).
    static func reference(to content: [UInt8], length: Int, in bytes: [UInt8]) -> (offset: Int, collection: Int, index: Int)? {
        guard let heap = firstCollection(in: bytes) else { return nil }
        let size = Int(load(bytes, heap + 8, 8))
        for (index, offset) in objects(bytes, heap: heap, size: size) where index > 0 {
            let objectSize = Int(load(bytes, offset + 8, 8))
            guard Array(bytes[(offset + 16)..<(offset + 16 + objectSize)]) == content else { continue }
            var pattern = [UInt8](repeating: 0, count: 16)
            store(UInt64(length), &pattern, 0, 4)
            store(UInt64(heap), &pattern, 4, 8)
            store(UInt64(index), &pattern, 12, 4)
            guard let at = (0...(bytes.count - 16)).first(where: { Array(bytes[$0..<($0 + 16)]) == pattern }) else { return nil }
            return (at, heap, index)
        }
        return nil
    }

    /// HDF5 1.10.8 follows a stored reference without checking it: an object index past the collection's table ended
    /// the process with SIGSEGV, a length that is not the object's read past it (or allocated gigabytes). Each such
    /// reference is refused before HDF5 follows it, naming the file, the object and the element; intact ones read.
    @Test func badVariableLengthReferencesAreRefused() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/references.h5"
            let bytes = try Self.fileWithReferences(path)
            let attribute = try #require(Self.reference(to: Array("starling-checkpoint".utf8), length: 19, in: bytes))
            let ints = try #require(Self.reference(to: [Int32(-5), 70000, 3].flatMap { v in withUnsafeBytes(of: v.littleEndian) { Array($0) } }, length: 3, in: bytes))
            let name = try #require(Self.reference(to: Array("second".utf8), length: 6, in: bytes))
            // Intact: everything reads.
            let intact = try HDF5File.open(path)
            #expect(try intact.root.stringAttribute("format") == "starling-checkpoint")
            #expect(try intact.root.variableLengthDataset("ints").row(0, as: Int32.self) == [-5, 70000, 3])
            #expect(try intact.root.variableLengthDataset("names").strings() == ["first name", "second"])
            intact.close()
            typealias Damage = (name: String, at: Int, field: Int, width: Int, value: UInt64, read: (HDF5Group) throws -> Void, expected: [String])
            let heap = attribute.collection
            let damages: [Damage] = [
                ("attribute index past the table", attribute.offset, 12, 4, 70000, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "element 0 refers to object 70000 of the global heap collection at byte \(heap)", "HDF5 1.10 would read outside it"]),
                ("attribute index 65535", attribute.offset, 12, 4, 65535, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "refers to object 65535"]),
                ("attribute index of no object", attribute.offset, 12, 4, 9, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "refers to object 9"]),
                ("attribute index of the free space", attribute.offset, 12, 4, 0, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "refers to object 0"]),
                ("attribute length short of its object", attribute.offset, 0, 4, 4, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "element 0 claims 4 bytes where object \(attribute.index) of the global heap collection at byte \(heap) holds 19"]),
                ("attribute length of 2^31", attribute.offset, 0, 4, 1 << 31, { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "element 0 claims 2147483648 values, more than a global heap collection holds"]),
                ("attribute collection elsewhere", attribute.offset, 4, 8, UInt64(heap + 16), { _ = try $0.stringAttribute("format") },
                 ["attribute \"format\"", "element 0: no global heap collection at byte \(heap + 16)"]),
                ("ragged element index", ints.offset, 12, 4, 4_000_000_000, { _ = try $0.variableLengthDataset("ints").row(0, as: Int32.self) },
                 ["/ints", "cannot read element 0 (element 0 refers to object 4000000000"]),
                ("ragged element length", ints.offset, 0, 4, 2, { _ = try $0.variableLengthDataset("ints").row(0, as: Int32.self) },
                 ["/ints", "element 0 claims 8 bytes where object \(ints.index)", "holds 12"]),
                ("string element index", name.offset, 12, 4, 300, { _ = try $0.variableLengthDataset("names").strings() },
                 ["/names", "cannot read strings (element 1 refers to object 300"]),
            ]
            for damage in damages {
                var damaged = bytes
                Self.store(damage.value, &damaged, damage.at + damage.field, damage.width)
                let copy = dir + "/damaged.h5"
                try Data(damaged).write(to: URL(fileURLWithPath: copy))
                Self.withDeadline(60, damage.name) {
                    expectError(HDF5Error.self, containing: [copy] + damage.expected) { try damage.read(try HDF5File.open(copy).root) }
                }
            }
        }
    }
}
