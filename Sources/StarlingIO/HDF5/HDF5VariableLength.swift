import CHDF5

/// A one-dimensional dataset of variable-length elements, as h5py writes them for `special_dtype(vlen=...)`:
/// ragged arrays of numbers (each element a sequence of its own length), of booleans (h5py's bool is an HDF5 enum
/// over int8), or strings. Read-only: Starling writes fixed shapes; this exists to import files made by
/// Python tools (ssd_keras's `create_hdf5_dataset`).
public final class HDF5VariableLengthDataset: HDF5Object, @unchecked Sendable {
    public enum Content: Equatable, Sendable {
        /// Sequences of numbers of this stored type.
        case numbers(HDF5ElementType)
        /// Sequences of an enum over an integer (h5py's bool): read with `flags(_:)`.
        case enumeration
        /// One string per element, variable- or fixed-length.
        case strings
    }

    public let count: Int
    public let content: Content

    /// Callers hold HDF5Library's lock. Takes ownership of `id`.
    init(file: HDF5File, datasetID id: hid_t, name: String) throws {
        let space = H5Dget_space(id), type = H5Dget_type(id)
        defer {
            if space >= 0 { H5Sclose(space) }
            if type >= 0 { H5Tclose(type) }
        }
        func fail(_ message: String) -> HDF5Error {
            H5Dclose(id)
            return HDF5Error(file: file.path, object: name, message: message)
        }
        guard space >= 0, type >= 0 else { throw fail("cannot read dataset shape and type") }
        var dimensions = [hsize_t](repeating: 0, count: 1)
        guard H5Sget_simple_extent_ndims(space) == 1, H5Sget_simple_extent_dims(space, &dimensions, nil) == 1 else {
            throw fail("variable-length datasets are read as one-dimensional; this one is not")
        }
        switch H5Tget_class(type) {
        case H5T_STRING:
            content = .strings
        case H5T_VLEN:
            let base = H5Tget_super(type)
            defer { if base >= 0 { H5Tclose(base) } }
            if base >= 0 && H5Tget_class(base) == H5T_ENUM {
                content = .enumeration
            } else if base >= 0, let element = HDF5TypeID.elementType(of: base) {
                content = .numbers(element)
            } else {
                throw fail("unsupported variable-length element type \(base >= 0 ? HDF5TypeID.describe(base) : "?")")
            }
        default:
            throw fail("not a variable-length dataset (element type \(HDF5TypeID.describe(type)))")
        }
        count = Int(dimensions[0])
        super.init(file: file, id: id, name: name)
    }

    /// Element `index` as numbers, converted by HDF5 to `T`.
    public func row<T: HDF5Scalar>(_ index: Int, as: T.Type) throws -> [T] {
        guard case .numbers = content else { throw error("holds \(content), not numbers") }
        let memoryBase = HDF5TypeID.memory(T.hdf5Type)
        defer { memoryBase.close() }
        return try readSequence(index, base: memoryBase.id) { pointer, length in
            Array(UnsafeBufferPointer(start: pointer?.assumingMemoryBound(to: T.self), count: length))
        }
    }

    /// Element `index` of an enum (h5py bool) or integer sequence as flags: true where the stored value is non-zero.
    public func flags(_ index: Int) throws -> [Bool] {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let fileType = H5Dget_type(id)
            guard fileType >= 0 else { throw failure("cannot read the element type") }
            defer { H5Tclose(fileType) }
            let fileBase = H5Tget_super(fileType)
            guard fileBase >= 0 else { throw failure("cannot read the element type") }
            defer { H5Tclose(fileBase) }
            guard H5Tget_class(fileBase) == H5T_ENUM || H5Tget_class(fileBase) == H5T_INTEGER else {
                throw error("holds \(content), not flags")
            }
            // HDF5 converts enums only to enums: read the values in their own (native) layout and test the bytes.
            let nativeBase = H5Tget_native_type(fileBase, H5T_DIR_ASCEND)
            guard nativeBase >= 0 else { throw failure("cannot make a native element type") }
            defer { H5Tclose(nativeBase) }
            let size = H5Tget_size(nativeBase)
            return try readSequence(index, base: nativeBase) { pointer, length in
                guard let bytes = pointer?.assumingMemoryBound(to: UInt8.self) else { return [] }
                return (0..<length).map { i in (0..<size).contains { bytes[i * size + $0] != 0 } }
            }
        }
    }

    /// All elements as strings (UTF-8).
    public func strings() throws -> [String] {
        guard content == .strings else { throw error("holds \(content), not strings") }
        return try HDF5Library.call(file.path) {
            let id = try openID()
            let fileType = H5Dget_type(id)
            guard fileType >= 0 else { throw failure("cannot read the element type") }
            defer { H5Tclose(fileType) }
            if H5Tis_variable_str(fileType) > 0 {
                let memoryType = H5Tcopy(starling_h5t_c_s1())
                guard memoryType >= 0, H5Tset_size(memoryType, starling_h5t_variable()) >= 0,
                      H5Tset_cset(memoryType, H5Tget_cset(fileType)) >= 0 else { throw failure("cannot make a string type") }
                defer { H5Tclose(memoryType) }
                try checkVariableLengthReferences(count: count, elementSize: 1, what: "strings") {
                    H5Dread(id, $0, H5S_ALL, H5S_ALL, hid_t(H5P_DEFAULT), $1)
                }
                var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count + 1)
                guard pointers.withUnsafeMutableBufferPointer({
                    H5Dread(id, memoryType, H5S_ALL, H5S_ALL, hid_t(H5P_DEFAULT), $0.baseAddress)
                }) >= 0 else { throw failure("cannot read strings") }
                defer { for pointer in pointers where pointer != nil { H5free_memory(pointer) } }
                return pointers.prefix(count).map { $0.map { String(cString: $0) } ?? "" }
            }
            let width = H5Tget_size(fileType)
            let memoryType = H5Tcopy(fileType)
            guard width > 0, memoryType >= 0 else { throw failure("cannot make a string type") }
            defer { H5Tclose(memoryType) }
            var buffer = [UInt8](repeating: 0, count: width * count + 1)
            guard buffer.withUnsafeMutableBytes({
                H5Dread(id, memoryType, H5S_ALL, H5S_ALL, hid_t(H5P_DEFAULT), $0.baseAddress)
            }) >= 0 else { throw failure("cannot read strings") }
            return (0..<count).map { i in
                var slot = buffer[(i * width)..<((i + 1) * width)]
                if let end = slot.firstIndex(of: 0) { slot = slot[..<end] }
                while slot.last == 0x20 { slot = slot.dropLast() }
                return String(decoding: slot, as: UTF8.self)
            }
        }
    }

    /// Reads element `index` as a sequence of `base` values and hands the library's buffer to `body`.
    private func readSequence<R>(_ index: Int, base: hid_t, _ body: (UnsafeMutableRawPointer?, Int) throws -> R) throws -> R {
        guard index >= 0 && index < count else { throw error("element \(index) out of range 0..<\(count)") }
        return try HDF5Library.call(file.path) {
            let id = try openID()
            let memoryType = H5Tvlen_create(base)
            guard memoryType >= 0 else { throw failure("cannot make a variable-length type") }
            defer { H5Tclose(memoryType) }
            let fileSpace = H5Dget_space(id)
            guard fileSpace >= 0 else { throw failure("cannot get dataspace") }
            defer { H5Sclose(fileSpace) }
            var start = [hsize_t(index)], extent = [hsize_t(1)]
            guard H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, &start, nil, &extent, nil) >= 0 else {
                throw failure("cannot select element \(index)")
            }
            let memorySpace = H5Screate_simple(1, &extent, nil)
            guard memorySpace >= 0 else { throw failure("cannot make a dataspace") }
            defer { H5Sclose(memorySpace) }
            let fileType = H5Dget_type(id)
            let fileBase = fileType >= 0 ? H5Tget_super(fileType) : -1
            let elementSize = fileBase >= 0 ? H5Tget_size(fileBase) : 0
            if fileBase >= 0 { H5Tclose(fileBase) }
            if fileType >= 0 { H5Tclose(fileType) }
            guard elementSize > 0 else { throw failure("cannot read the element type") }
            try checkVariableLengthReferences(count: 1, elementSize: elementSize, what: "element \(index)", firstElement: index) {
                H5Dread(id, $0, memorySpace, fileSpace, hid_t(H5P_DEFAULT), $1)
            }
            var sequence = hvl_t()
            guard H5Dread(id, memoryType, memorySpace, fileSpace, hid_t(H5P_DEFAULT), &sequence) >= 0 else {
                throw failure("cannot read element \(index)")
            }
            defer { H5Dvlen_reclaim(memoryType, memorySpace, hid_t(H5P_DEFAULT), &sequence) }
            return try body(sequence.p, sequence.p == nil ? 0 : Int(sequence.len))
        }
    }
}

extension HDF5Group {
    /// Opens an existing variable-length (ragged or string) dataset.
    public func variableLengthDataset(_ path: String) throws -> HDF5VariableLengthDataset {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard contains(path) else { throw error("no such dataset", object: full) }
            let child = H5Dopen2(id, path, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw failure("cannot open dataset", object: full) }
            return try HDF5VariableLengthDataset(file: file, datasetID: child, name: full)
        }
    }
}

extension HDF5Dataset {
    /// Shrinks a chunked dataset to its first `rows` rows; HDF5 frees the chunks past them. Returns a handle with
    /// the new shape (this one keeps describing the old). Used by writers that size a dataset for the rows they
    /// expect and learn only while writing that some are missing.
    public func truncatingRows(to rows: Int) throws -> HDF5Dataset {
        guard !shape.isEmpty, rows >= 0, rows <= shape[0] else { throw error("cannot truncate shape \(shape) to \(rows) rows") }
        return try HDF5Library.call(file.path) {
            let id = try openID()
            var extent = shape.map { hsize_t($0) }
            extent[0] = hsize_t(rows)
            guard H5Dset_extent(id, &extent) >= 0 else { throw failure("cannot resize to \(rows) rows") }
            let fileID = try file.openID(object: name)
            let reopened = H5Dopen2(fileID, name, hid_t(H5P_DEFAULT))
            guard reopened >= 0 else { throw failure("cannot reopen after resizing") }
            return try HDF5Dataset(file: file, datasetID: reopened, name: name)
        }
    }
}
