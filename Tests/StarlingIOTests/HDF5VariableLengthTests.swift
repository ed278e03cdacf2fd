import CHDF5
import Foundation
import Testing
@testable import StarlingIO

/// Reading the variable-length datasets h5py writes (`special_dtype(vlen=...)`), from a file made here with the C API.
@Suite struct HDF5VariableLengthTests {
    private static let P = hid_t(H5P_DEFAULT)

    /// A one-dimensional vlen dataset of `base` holding `rows`.
    private static func writeVlen<T>(_ file: hid_t, _ name: String, base: hid_t, _ rows: [[T]]) {
        var n = [hsize_t(rows.count)]
        let space = H5Screate_simple(1, &n, nil), type = H5Tvlen_create(base)
        let set = H5Dcreate2(file, name, type, space, P, P, P)
        let buffers = rows.map { row -> UnsafeMutablePointer<T> in
            let p = UnsafeMutablePointer<T>.allocate(capacity: max(1, row.count))
            p.initialize(from: row, count: row.count)
            return p
        }
        var sequences = zip(rows, buffers).map { hvl_t(len: $0.count, p: UnsafeMutableRawPointer($1)) }
        #expect(H5Dwrite(set, type, H5S_ALL, H5S_ALL, P, &sequences) >= 0)
        buffers.forEach { $0.deallocate() }
        H5Dclose(set); H5Tclose(type); H5Sclose(space)
    }

    private static func writeStrings(_ file: hid_t, _ name: String, _ values: [String], fixedWidth: Int?) {
        var n = [hsize_t(values.count)]
        let space = H5Screate_simple(1, &n, nil), type = H5Tcopy(starling_h5t_c_s1())
        H5Tset_size(type, fixedWidth ?? starling_h5t_variable())
        let set = H5Dcreate2(file, name, type, space, P, P, P)
        if let width = fixedWidth {
            var bytes = [UInt8](repeating: 0, count: width * values.count)
            for (i, v) in values.enumerated() { for (k, b) in v.utf8.prefix(width).enumerated() { bytes[i * width + k] = b } }
            H5Dwrite(set, type, H5S_ALL, H5S_ALL, P, bytes)
        } else {
            let pointers = values.map { strdup($0) }
            H5Dwrite(set, type, H5S_ALL, H5S_ALL, P, pointers)
            pointers.forEach { free($0) }
        }
        H5Dclose(set); H5Tclose(type); H5Sclose(space)
    }

    @Test func readsRaggedNumbersFlagsAndStrings() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/vlen.h5"
            let file = H5Fcreate(path, starling_h5f_acc_trunc(), Self.P, Self.P)
            Self.writeVlen(file, "bytes", base: starling_h5t_native_uint8(), [[1, 2, 3], [], [255]] as [[UInt8]])
            Self.writeVlen(file, "ints", base: starling_h5t_native_int32(), [[-5, 70000], [7]] as [[Int32]])
            // h5py's bool: an enum over int8 with FALSE = 0 and TRUE = 1.
            let boolean = H5Tenum_create(starling_h5t_native_int8())
            var no: Int8 = 0, yes: Int8 = 1
            H5Tenum_insert(boolean, "FALSE", &no); H5Tenum_insert(boolean, "TRUE", &yes)
            Self.writeVlen(file, "flags", base: boolean, [[0, 1, 1], [0]] as [[Int8]])
            H5Tclose(boolean)
            Self.writeStrings(file, "names", ["000005", "ünï", ""], fixedWidth: nil)
            Self.writeStrings(file, "fixed", ["ab", "abcd"], fixedWidth: 4)
            H5Fclose(file)

            let root = try HDF5File.open(path).root
            let bytes = try root.variableLengthDataset("bytes")
            #expect(bytes.count == 3 && bytes.content == .numbers(.uint8))
            #expect(try bytes.row(0, as: UInt8.self) == [1, 2, 3] && bytes.row(1, as: UInt8.self).isEmpty && bytes.row(2, as: UInt8.self) == [255])
            #expect(try bytes.row(0, as: Float.self) == [1, 2, 3], "HDF5 converts the element type")
            let ints = try root.variableLengthDataset("ints")
            #expect(try ints.row(0, as: Int32.self) == [-5, 70000] && ints.row(1, as: Double.self) == [7])
            let flags = try root.variableLengthDataset("flags")
            #expect(flags.content == .enumeration)
            #expect(try flags.flags(0) == [false, true, true] && flags.flags(1) == [false])
            #expect(try root.variableLengthDataset("names").strings() == ["000005", "ünï", ""])
            #expect(try root.variableLengthDataset("fixed").strings() == ["ab", "abcd"])

            expectError(HDF5Error.self, containing: ["/bytes", "element 3 out of range"]) { _ = try bytes.row(3, as: UInt8.self) }
            expectError(HDF5Error.self, containing: ["/flags", "not numbers"]) { _ = try flags.row(0, as: UInt8.self) }
            expectError(HDF5Error.self, containing: ["/missing", "no such dataset"]) { _ = try root.variableLengthDataset("missing") }
            // A plain dataset is not variable-length, and the plain reader refuses vlen ones.
            let plain = try HDF5File.create(dir + "/plain.h5")
            _ = try plain.root.createDataset("x", type: .float32, shape: [2])
            expectError(HDF5Error.self, containing: ["/x", "not a variable-length dataset"]) { _ = try plain.root.variableLengthDataset("x") }
            expectError(HDF5Error.self, containing: ["/bytes", "unsupported element type"]) { _ = try root.dataset("bytes") }
        }
    }

    @Test func truncatingRowsShrinksAChunkedDataset() throws {
        try withTemporaryDirectory { dir in
            let file = try HDF5File.create(dir + "/t.h5")
            let set = try file.root.createDataset("images", type: .uint8, shape: [5, 2, 3], chunk: [1, 2, 3])
            try set.writeRows(startingAt: 0, (0..<18).map(UInt8.init))
            let shorter = try set.truncatingRows(to: 3)
            #expect(shorter.shape == [3, 2, 3])
            #expect(try shorter.read(as: UInt8.self) == (0..<18).map(UInt8.init))
            #expect(try file.root.dataset("images").shape == [3, 2, 3])
            expectError(HDF5Error.self, containing: ["/images", "cannot truncate"]) { _ = try shorter.truncatingRows(to: 4) }
        }
    }
}
