import CHDF5

/// An n-dimensional array of numbers in an HDF5 file. Its shape is fixed at creation. Reads and writes convert
/// between the Swift element type and the stored type (see `HDF5Scalar`); "rows" are slices along axis 0, the
/// sample axis of every Starling dataset.
public final class HDF5Dataset: HDF5Object, HDF5AttributeHolder, @unchecked Sendable {
    public let shape: [Int]
    public let elementType: HDF5ElementType
    /// Elements per row (the product of all dimensions but the first); 1 for 1-D and scalar datasets.
    public let elementsPerRow: Int
    public let elementCount: Int

    /// Callers hold HDF5Library's lock. Takes ownership of `id` (closed here if the dataset is unusable).
    init(file: HDF5File, datasetID id: hid_t, name: String) throws {
        let space = H5Dget_space(id)
        let type = H5Dget_type(id)
        defer {
            if space >= 0 { H5Sclose(space) }
            if type >= 0 { H5Tclose(type) }
        }
        let rank = space >= 0 ? Int(H5Sget_simple_extent_ndims(space)) : -1
        guard space >= 0, type >= 0, rank >= 0 else {
            let failure = HDF5Library.failure(file: file.path, object: name, "cannot read dataset shape and type")
            H5Dclose(id)
            throw failure
        }
        var dimensions = [hsize_t](repeating: 0, count: rank)
        H5Sget_simple_extent_dims(space, &dimensions, nil)
        guard let elementType = HDF5TypeID.elementType(of: type) else {
            let description = HDF5TypeID.describe(type)
            H5Dclose(id)
            throw HDF5Error(file: file.path, object: name, message: "unsupported element type \(description)")
        }
        self.shape = dimensions.map { Int($0) }
        self.elementType = elementType
        self.elementsPerRow = shape.count <= 1 ? 1 : shape.dropFirst().reduce(1, *)
        self.elementCount = shape.reduce(1, *)
        super.init(file: file, id: id, name: name)
    }

    /// The chunk shape, or nil for contiguous storage.
    public var chunk: [Int]? {
        get throws {
            try HDF5Library.call(file.path) {
                let id = try openID()
                let creation = H5Dget_create_plist(id)
                guard creation >= 0 else { throw failure("cannot read storage properties") }
                defer { H5Pclose(creation) }
                guard H5Pget_layout(creation) == H5D_CHUNKED else { return nil }
                var dimensions = [hsize_t](repeating: 0, count: max(1, shape.count))
                guard H5Pget_chunk(creation, Int32(dimensions.count), &dimensions) >= 0 else {
                    throw failure("cannot read chunk shape")
                }
                return dimensions.prefix(shape.count).map { Int($0) }
            }
        }
    }

    /// The chunk shape used when none is given: whole rows, as many as fit in about 256 KiB, rounded down to a
    /// power of two and capped at the row count.
    ///
    /// Why: rows are read in contiguous ranges (mini-batches), so a chunk must span whole rows; HDF5's default
    /// per-dataset chunk cache is 1 MiB, so a 256 KiB chunk stays cached while a batch straddles two chunks and
    /// a compressed chunk is inflated once per pass, not once per batch. For MNIST (784-byte rows) this gives
    /// [256, 28, 28]: a 64-image batch touches one or two chunks.
    public static func defaultChunk(shape: [Int], elementSize: Int, targetBytes: Int = 256 * 1024) -> [Int] {
        guard let rows = shape.first else { return [] }
        let rowBytes = max(1, shape.dropFirst().reduce(elementSize, *))
        var chunkRows = 1
        while chunkRows * 2 * rowBytes <= targetBytes { chunkRows *= 2 }
        return [max(1, min(rows, chunkRows))] + shape.dropFirst()
    }

    // MARK: - Whole dataset

    public func write<T: HDF5Scalar>(_ values: [T]) throws {
        try values.withUnsafeBufferPointer { try write($0) }
    }

    /// Writes the whole dataset; `values.count` must equal the element count.
    public func write<T: HDF5Scalar>(_ values: UnsafeBufferPointer<T>) throws {
        guard values.count == elementCount else {
            throw error("cannot write \(values.count) values to a dataset of shape \(shape) (\(elementCount) elements)")
        }
        try transfer(rows: nil, T.hdf5Type, UnsafeMutableRawPointer(mutating: values.baseAddress), writing: true)
    }

    public func read<T: HDF5Scalar>(as: T.Type) throws -> [T] {
        try [T](unsafeUninitializedCapacity: elementCount) { buffer, initialized in
            try read(into: buffer)
            initialized = elementCount
        }
    }

    /// Reads the whole dataset into `buffer`, whose count must equal the element count.
    public func read<T: HDF5Scalar>(into buffer: UnsafeMutableBufferPointer<T>) throws {
        guard buffer.count == elementCount else {
            throw error("cannot read a dataset of shape \(shape) (\(elementCount) elements) into \(buffer.count) values")
        }
        try transfer(rows: nil, T.hdf5Type, UnsafeMutableRawPointer(buffer.baseAddress), writing: false)
    }

    // MARK: - Row ranges (hyperslabs on axis 0)

    public func readRows<T: HDF5Scalar>(_ rows: Range<Int>, as: T.Type) throws -> [T] {
        let count = rows.count * elementsPerRow
        return try [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            try readRows(rows, into: buffer)
            initialized = count
        }
    }

    /// Reads rows `rows` into `buffer`, whose count must be `rows.count * elementsPerRow`.
    public func readRows<T: HDF5Scalar>(_ rows: Range<Int>, into buffer: UnsafeMutableBufferPointer<T>) throws {
        try checkRows(rows, valueCount: buffer.count)
        try transfer(rows: rows, T.hdf5Type, UnsafeMutableRawPointer(buffer.baseAddress), writing: false)
    }

    /// Writes `values.count / elementsPerRow` rows starting at `row`.
    public func writeRows<T: HDF5Scalar>(startingAt row: Int, _ values: UnsafeBufferPointer<T>) throws {
        guard elementsPerRow > 0, values.count % elementsPerRow == 0 else {
            throw error("\(values.count) values are not whole rows of \(elementsPerRow) elements")
        }
        let rows = row ..< row + values.count / elementsPerRow
        try checkRows(rows, valueCount: values.count)
        try transfer(rows: rows, T.hdf5Type, UnsafeMutableRawPointer(mutating: values.baseAddress), writing: true)
    }

    public func writeRows<T: HDF5Scalar>(startingAt row: Int, _ values: [T]) throws {
        try values.withUnsafeBufferPointer { try writeRows(startingAt: row, $0) }
    }

    // MARK: - Transfer

    private func checkRows(_ rows: Range<Int>, valueCount: Int) throws {
        guard !shape.isEmpty else { throw error("a scalar dataset has no rows") }
        guard rows.lowerBound >= 0, rows.upperBound <= shape[0] else {
            throw error("rows \(rows) out of range 0..<\(shape[0])")
        }
        guard valueCount == rows.count * elementsPerRow else {
            throw error("rows \(rows) hold \(rows.count * elementsPerRow) values, buffer has \(valueCount)")
        }
    }

    /// Moves data between memory and the whole dataset (`rows == nil`) or a range of rows.
    private func transfer(rows: Range<Int>?, _ memoryType: HDF5ElementType, _ buffer: UnsafeMutableRawPointer?,
                          writing: Bool) throws {
        let count = rows.map { $0.count * elementsPerRow } ?? elementCount
        guard count > 0, let buffer else { return }  // nothing to move; HDF5 wants a real buffer otherwise
        try HDF5Library.call(file.path) {
            let id = try openID()
            if writing && !file.isWritable { throw error("cannot write: file is read-only") }
            var fileSpace = H5S_ALL
            var memorySpace = H5S_ALL
            defer {
                if fileSpace != H5S_ALL { H5Sclose(fileSpace) }
                if memorySpace != H5S_ALL { H5Sclose(memorySpace) }
            }
            if let rows {
                fileSpace = H5Dget_space(id)
                guard fileSpace >= 0 else { throw failure("cannot get dataspace") }
                var start = [hsize_t](repeating: 0, count: shape.count)
                var extent = shape.map { hsize_t($0) }
                start[0] = hsize_t(rows.lowerBound)
                extent[0] = hsize_t(rows.count)
                guard H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, start, nil, extent, nil) >= 0 else {
                    throw failure("cannot select rows \(rows)")
                }
                memorySpace = H5Screate_simple(Int32(extent.count), extent, nil)
                guard memorySpace >= 0 else { throw failure("cannot make a dataspace for rows \(rows)") }
            }
            let type = HDF5TypeID.memory(memoryType)
            defer { type.close() }
            HDF5GuardedDriver.numericTransfer = true
            defer { HDF5GuardedDriver.numericTransfer = false }
            let status = writing
                ? H5Dwrite(id, type.id, memorySpace, fileSpace, hid_t(H5P_DEFAULT), buffer)
                : H5Dread(id, type.id, memorySpace, fileSpace, hid_t(H5P_DEFAULT), buffer)
            guard status >= 0 else {
                let what = rows.map { "rows \($0)" } ?? "dataset"
                throw failure("cannot \(writing ? "write" : "read") \(what) as \(memoryType)")
            }
        }
    }
}
