import CHDF5

/// A group: a directory of datasets and other groups. Paths may contain "/" ("train/images") and are
/// relative to this group, or absolute when they start with "/".
public final class HDF5Group: HDF5Object, HDF5AttributeHolder, @unchecked Sendable {
    /// Opens an existing group.
    public func group(_ path: String) throws -> HDF5Group {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard try linkExists(path, in: id) else { throw error("no such group", object: full) }
            let child = H5Gopen2(id, path, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw failure("cannot open group", object: full) }
            return HDF5Group(file: file, id: child, name: full)
        }
    }

    /// Creates a group, and any missing groups on the way ("a/b/c" creates "a" and "a/b" if needed).
    /// Throws if it already exists.
    public func createGroup(_ path: String) throws -> HDF5Group {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard file.isWritable else { throw error("cannot create group: file is read-only", object: full) }
            guard try !linkExists(path, in: id) else { throw error("already exists", object: full) }
            try createParents(of: path, in: id, object: full)
            let creation = try untimedCreationList(starling_h5p_group_create(), object: full)
            defer { H5Pclose(creation) }
            let child = H5Gcreate2(id, path, hid_t(H5P_DEFAULT), creation, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw failure("cannot create group", object: full) }
            return HDF5Group(file: file, id: child, name: full)
        }
    }

    /// True if a group or dataset exists at `path`.
    public func contains(_ path: String) -> Bool {
        HDF5Library.call(file.path) {
            guard let id = try? openID() else { return false }
            return (try? linkExists(path, in: id)) ?? false
        }
    }

    /// The names of the direct children (groups and datasets), sorted.
    public func childNames() throws -> [String] {
        try HDF5Library.call(file.path) {
            let id = try openID()
            var info = H5G_info_t()
            guard H5Gget_info(id, &info) >= 0 else { throw failure("cannot list group") }
            var names: [String] = []
            for index in 0..<info.nlinks {
                let length = H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, index, nil, 0, hid_t(H5P_DEFAULT))
                guard length >= 0 else { throw failure("cannot list group") }
                var buffer = [CChar](repeating: 0, count: Int(length) + 1)
                guard H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, index, &buffer, buffer.count,
                                         hid_t(H5P_DEFAULT)) >= 0 else { throw failure("cannot list group") }
                names.append(String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
            return names.sorted()
        }
    }

    /// Removes the link `path` (a dataset or a group) from this group. HDF5 does not reclaim the space the object used
    /// until the file is rewritten.
    public func remove(_ path: String) throws {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard file.isWritable else { throw error("cannot remove: file is read-only", object: full) }
            guard try linkExists(path, in: id) else { throw error("no such dataset or group", object: full) }
            guard H5Ldelete(id, path, hid_t(H5P_DEFAULT)) >= 0 else { throw failure("cannot remove", object: full) }
        }
    }

    /// Opens an existing dataset.
    public func dataset(_ path: String) throws -> HDF5Dataset {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard try linkExists(path, in: id) else { throw error("no such dataset", object: full) }
            let child = H5Dopen2(id, path, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw failure("cannot open dataset", object: full) }
            return try HDF5Dataset(file: file, datasetID: child, name: full)
        }
    }

    /// Creates a dataset of `type` and fixed `shape` (`[]` for a scalar), creating missing parent groups.
    ///
    /// - chunk: the chunk shape, for datasets read in pieces or compressed. When `deflate` is given without a
    ///   chunk, `HDF5Dataset.defaultChunk` picks one. Without both the data is stored contiguously, which is
    ///   fastest for datasets read whole (weights).
    /// - deflate: gzip level 0...9. Multi-byte element types also get the shuffle filter, which groups the bytes
    ///   of equal significance and typically makes float data compress much better.
    public func createDataset(_ path: String, type: HDF5ElementType, shape: [Int], chunk: [Int]? = nil,
                              deflate: Int? = nil) throws -> HDF5Dataset {
        try HDF5Library.call(file.path) {
            let id = try openID()
            let full = childPath(path)
            guard file.isWritable else { throw error("cannot create dataset: file is read-only", object: full) }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw error("negative dimension in shape \(shape)", object: full) }
            guard try !linkExists(path, in: id) else { throw error("already exists", object: full) }
            if let deflate, !(0...9).contains(deflate) {
                throw error("deflate level \(deflate) is not in 0...9", object: full)
            }
            // An empty or scalar dataset cannot be chunked; store it contiguously.
            let chunkable = !shape.isEmpty && !shape.contains(0)
            var chunkShape = chunk ?? (deflate != nil ? HDF5Dataset.defaultChunk(shape: shape, elementSize: type.byteSize) : nil)
            if !chunkable { chunkShape = nil }
            if let chunkShape {
                guard chunkShape.count == shape.count, zip(chunkShape, shape).allSatisfy({ $0 >= 1 && $0 <= $1 }) else {
                    throw error("chunk \(chunkShape) does not fit shape \(shape)", object: full)
                }
            }

            let space = shape.isEmpty ? H5Screate(H5S_SCALAR)
                : H5Screate_simple(Int32(shape.count), shape.map { hsize_t($0) }, nil)
            guard space >= 0 else { throw failure("cannot make a dataspace for shape \(shape)", object: full) }
            defer { H5Sclose(space) }
            let creation = try untimedCreationList(starling_h5p_dataset_create(), object: full)
            defer { H5Pclose(creation) }
            if let chunkShape {
                guard H5Pset_chunk(creation, Int32(chunkShape.count), chunkShape.map { hsize_t($0) }) >= 0 else {
                    throw failure("cannot set chunk \(chunkShape)", object: full)
                }
                if let deflate {
                    if type.byteSize > 1, H5Pset_shuffle(creation) < 0 { throw failure("cannot set shuffle", object: full) }
                    guard H5Pset_deflate(creation, UInt32(deflate)) >= 0 else {
                        throw failure("cannot set deflate", object: full)
                    }
                }
            }
            try createParents(of: path, in: id, object: full)
            let fileType = HDF5TypeID.file(type)
            defer { fileType.close() }
            let child = H5Dcreate2(id, path, fileType.id, space, hid_t(H5P_DEFAULT), creation, hid_t(H5P_DEFAULT))
            guard child >= 0 else { throw failure("cannot create dataset", object: full) }
            return try HDF5Dataset(file: file, datasetID: child, name: full)
        }
    }

    // MARK: - Helpers (callers hold HDF5Library's lock)

    /// True if every component of `path` exists. `H5Lexists` alone fails, instead of answering false,
    /// when an intermediate group is missing.
    private func linkExists(_ path: String, in id: hid_t) throws -> Bool {
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        if components.isEmpty { return true }  // "/" or "" is this group (or the root) itself
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in components {
            let parent = prefix
            prefix += "/" + component
            let exists = H5Lexists(id, prefix, hid_t(H5P_DEFAULT))
            if exists < 0 {
                // The usual cause: a dataset used as a group ("images/x" with "images" a dataset).
                let parentName = path.hasPrefix("/") ? parent : childPath(String(parent.dropFirst(2)))
                throw failure("cannot look up \(path): is \(parentName) a group?", object: childPath(path))
            }
            if exists == 0 { return false }
        }
        return true
    }

    /// Creates the missing groups on the way to `path` ("a/b/c": "a" and "a/b"), untimed. Starling makes them
    /// itself rather than through HDF5's intermediate-group link property, whose groups always record times.
    private func createParents(of path: String, in id: hid_t, object: String) throws {
        let components = path.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in components {
            prefix += "/" + component
            let exists = H5Lexists(id, prefix, hid_t(H5P_DEFAULT))
            if exists > 0 { continue }
            guard exists == 0 else { throw failure("cannot look up \(prefix): is it a group?", object: object) }
            let creation = try untimedCreationList(starling_h5p_group_create(), object: object)
            defer { H5Pclose(creation) }
            let group = H5Gcreate2(id, prefix, hid_t(H5P_DEFAULT), creation, hid_t(H5P_DEFAULT))
            guard group >= 0 else { throw failure("cannot create group \(prefix)", object: object) }
            H5Gclose(group)
        }
    }

    /// A creation property list of `kind` (group or dataset) whose objects record no times: HDF5 otherwise stamps
    /// every object header with the second it was made, and the same checkpoint written twice differed in 67 bytes
    /// (the fuzzer's checkpoint seeds, written afresh for each run, with them).
    private func untimedCreationList(_ kind: hid_t, object: String) throws -> hid_t {
        let list = H5Pcreate(kind)
        guard list >= 0, H5Pset_obj_track_times(list, false) >= 0 else {
            if list >= 0 { H5Pclose(list) }
            throw failure("cannot make creation properties", object: object)
        }
        return list
    }
}
