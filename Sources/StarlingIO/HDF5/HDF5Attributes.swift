import CHDF5
import Foundation

// Attribute storage choices, picked for what other HDF5 readers (h5py, Keras) expect:
// - a single string is a scalar variable-length UTF-8 string (h5py's choice for a Python str; its data lives
//   in the global heap, so long JSON configs do not hit the 64 KiB object-header limit);
// - a string array is a 1-D fixed-length, null-padded string array (Keras's `layer_names`/`weight_names`);
// - integers are int64, doubles float64; integer arrays 1-D int64.
// Readers accept both string layouts and any integer width.

extension HDF5Object {
    public func setAttribute(_ name: String, _ value: String) throws {
        try HDF5Library.call(file.path) {
            let type = try stringType(size: starling_h5t_variable(), utf8: true, attribute: name)
            defer { H5Tclose(type) }
            try writeAttribute(name, type: type, dimensions: nil) { attribute in
                value.withCString { text in
                    var pointer: UnsafePointer<CChar>? = text
                    return H5Awrite(attribute, type, &pointer)
                }
            }
        }
    }

    public func setAttribute(_ name: String, _ value: Int) throws {
        try HDF5Library.call(file.path) {
            var stored = Int64(value)
            try writeAttribute(name, type: starling_h5t_std_i64le(), dimensions: nil) {
                H5Awrite($0, starling_h5t_native_int64(), &stored)
            }
        }
    }

    public func setAttribute(_ name: String, _ value: Double) throws {
        try HDF5Library.call(file.path) {
            var stored = value
            try writeAttribute(name, type: starling_h5t_ieee_f64le(), dimensions: nil) {
                H5Awrite($0, starling_h5t_native_double(), &stored)
            }
        }
    }

    public func setAttribute(_ name: String, _ value: [Int]) throws {
        try HDF5Library.call(file.path) {
            // One spare element so the buffer has an address even for an empty array.
            let stored = value.map(Int64.init) + [0]
            try writeAttribute(name, type: starling_h5t_std_i64le(), dimensions: [value.count]) { attribute in
                stored.withUnsafeBufferPointer { H5Awrite(attribute, starling_h5t_native_int64(), $0.baseAddress) }
            }
        }
    }

    public func setAttribute(_ name: String, _ value: [String]) throws {
        try HDF5Library.call(file.path) {
            let encoded = value.map { Array($0.utf8) }
            let width = max(1, encoded.map(\.count).max() ?? 1)
            var buffer = [UInt8](repeating: 0, count: width * max(1, value.count))
            for (i, bytes) in encoded.enumerated() {
                buffer.replaceSubrange(i * width ..< i * width + bytes.count, with: bytes)
            }
            let ascii = encoded.allSatisfy { $0.allSatisfy { $0 < 128 } }
            let type = try stringType(size: width, utf8: !ascii, attribute: name)
            defer { H5Tclose(type) }
            try writeAttribute(name, type: type, dimensions: [value.count]) { attribute in
                buffer.withUnsafeBytes { H5Awrite(attribute, type, $0.baseAddress) }
            }
        }
    }

    /// Stores `value` as a JSON string attribute (keys sorted, so equal values give equal files).
    public func setJSONAttribute<T: Encodable>(_ name: String, _ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = Self.nonFiniteNumbers
        let data: Data
        do {
            data = try encoder.encode(value)
        } catch {
            throw self.error("attribute \"\(name)\": cannot encode \(T.self) as JSON: \(oneLine(error))")
        }
        try setAttribute(name, String(decoding: data, as: UTF8.self))
    }

    public func hasAttribute(_ name: String) -> Bool {
        HDF5Library.call(file.path) {
            guard let id = try? openID() else { return false }
            let exists = H5Aexists(id, name)
            if exists < 0 { H5Eclear2(hid_t(H5E_DEFAULT)) }
            return exists > 0
        }
    }

    public func stringAttribute(_ name: String) throws -> String {
        let strings = try stringArrayAttribute(name)
        guard strings.count == 1 else {
            throw error("attribute \"\(name)\" holds \(strings.count) strings, expected one")
        }
        return strings[0]
    }

    public func intAttribute(_ name: String) throws -> Int {
        let values = try intArrayAttribute(name)
        guard values.count == 1 else { throw error("attribute \"\(name)\" holds \(values.count) integers, expected one") }
        return values[0]
    }

    public func doubleAttribute(_ name: String) throws -> Double {
        try HDF5Library.call(file.path) {
            try withAttribute(name) { attribute, type, count in
                let typeClass = H5Tget_class(type)
                guard typeClass == H5T_FLOAT || typeClass == H5T_INTEGER else {
                    throw error("attribute \"\(name)\" is a \(HDF5TypeID.describe(type)), not a number")
                }
                guard count == 1 else { throw error("attribute \"\(name)\" holds \(count) numbers, expected one") }
                var value = 0.0
                guard H5Aread(attribute, starling_h5t_native_double(), &value) >= 0 else {
                    throw failure("cannot read attribute \"\(name)\"")
                }
                return value
            }
        }
    }

    public func intArrayAttribute(_ name: String) throws -> [Int] {
        try HDF5Library.call(file.path) {
            try withAttribute(name) { attribute, type, count in
                guard H5Tget_class(type) == H5T_INTEGER else {
                    throw error("attribute \"\(name)\" is a \(HDF5TypeID.describe(type)), not an integer")
                }
                var values = [Int64](repeating: 0, count: count + 1)
                let status = values.withUnsafeMutableBufferPointer {
                    H5Aread(attribute, starling_h5t_native_int64(), $0.baseAddress)
                }
                guard status >= 0 else { throw failure("cannot read attribute \"\(name)\"") }
                return values.prefix(count).map { Int($0) }
            }
        }
    }

    public func stringArrayAttribute(_ name: String) throws -> [String] {
        try HDF5Library.call(file.path) {
            try withAttribute(name) { attribute, type, count in
                guard H5Tget_class(type) == H5T_STRING else {
                    throw error("attribute \"\(name)\" is a \(HDF5TypeID.describe(type)), not a string")
                }
                return H5Tis_variable_str(type) > 0
                    ? try readVariableStrings(attribute, fileType: type, count: count, name: name)
                    : try readFixedStrings(attribute, fileType: type, count: count, name: name)
            }
        }
    }

    public func jsonAttribute<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        let text = try stringAttribute(name)
        do {
            let decoder = JSONDecoder()
            decoder.nonConformingFloatDecodingStrategy = Self.nonFiniteDecoding
            return try decoder.decode(T.self, from: Data(text.utf8))
        } catch {
            throw self.error("attribute \"\(name)\": invalid JSON for \(T.self): \(oneLine(error))")
        }
    }

    /// Infinities and NaN in JSON attributes (a plateau schedule's best loss before its first epoch ends is +inf) as
    /// the strings Python's json module spells them with; JSON itself has no such numbers.
    static let nonFiniteNumbers = JSONEncoder.NonConformingFloatEncodingStrategy.convertToString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
    static let nonFiniteDecoding = JSONDecoder.NonConformingFloatDecodingStrategy.convertFromString(positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")

    // MARK: - Helpers (callers hold HDF5Library's lock)

    private func stringType(size: Int, utf8: Bool, attribute: String) throws -> hid_t {
        let type = H5Tcopy(starling_h5t_c_s1())
        guard type >= 0, H5Tset_size(type, size) >= 0,
              H5Tset_cset(type, utf8 ? H5T_CSET_UTF8 : H5T_CSET_ASCII) >= 0,
              H5Tset_strpad(type, size == starling_h5t_variable() ? H5T_STR_NULLTERM : H5T_STR_NULLPAD) >= 0 else {
            if type >= 0 { H5Tclose(type) }
            throw failure("cannot make a string type for attribute \"\(attribute)\"")
        }
        return type
    }

    /// Creates (replacing) attribute `name` of file type `type`, scalar if `dimensions` is nil, and fills it.
    private func writeAttribute(_ name: String, type: hid_t, dimensions: [Int]?, _ write: (hid_t) -> herr_t) throws {
        let id = try openID()
        guard file.isWritable else { throw error("cannot set attribute \"\(name)\": file is read-only") }
        if H5Aexists(id, name) > 0, H5Adelete(id, name) < 0 {
            throw failure("cannot replace attribute \"\(name)\"")
        }
        let space: hid_t
        if let dimensions {
            let extent = dimensions.map { hsize_t($0) }
            space = H5Screate_simple(Int32(extent.count), extent, nil)
        } else {
            space = H5Screate(H5S_SCALAR)
        }
        guard space >= 0 else { throw failure("cannot make a dataspace for attribute \"\(name)\"") }
        defer { H5Sclose(space) }
        let attribute = H5Acreate2(id, name, type, space, hid_t(H5P_DEFAULT), hid_t(H5P_DEFAULT))
        guard attribute >= 0 else { throw failure("cannot create attribute \"\(name)\"") }
        defer { H5Aclose(attribute) }
        guard write(attribute) >= 0 else { throw failure("cannot write attribute \"\(name)\"") }
    }

    /// Opens attribute `name` and passes its id, file type and element count.
    private func withAttribute<R>(_ name: String, _ body: (hid_t, hid_t, Int) throws -> R) throws -> R {
        let id = try openID()
        guard H5Aexists(id, name) > 0 else {
            H5Eclear2(hid_t(H5E_DEFAULT))
            throw error("no attribute \"\(name)\"")
        }
        let attribute = H5Aopen(id, name, hid_t(H5P_DEFAULT))
        guard attribute >= 0 else { throw failure("cannot open attribute \"\(name)\"") }
        defer { H5Aclose(attribute) }
        let type = H5Aget_type(attribute)
        guard type >= 0 else { throw failure("cannot read the type of attribute \"\(name)\"") }
        defer { H5Tclose(type) }
        let space = H5Aget_space(attribute)
        guard space >= 0 else { throw failure("cannot read the shape of attribute \"\(name)\"") }
        defer { H5Sclose(space) }
        let count = H5Sget_simple_extent_npoints(space)
        guard count >= 0 else { throw failure("cannot read the shape of attribute \"\(name)\"") }
        return try body(attribute, type, Int(count))
    }

    private func readVariableStrings(_ attribute: hid_t, fileType: hid_t, count: Int, name: String) throws -> [String] {
        let memoryType = try stringType(size: starling_h5t_variable(), utf8: H5Tget_cset(fileType) == H5T_CSET_UTF8,
                                        attribute: name)
        defer { H5Tclose(memoryType) }
        try checkVariableLengthReferences(count: count, elementSize: 1, what: "attribute \"\(name)\"") { H5Aread(attribute, $0, $1) }
        var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count + 1)
        let status = pointers.withUnsafeMutableBufferPointer { H5Aread(attribute, memoryType, $0.baseAddress) }
        guard status >= 0 else { throw failure("cannot read attribute \"\(name)\"") }
        defer { for pointer in pointers where pointer != nil { H5free_memory(pointer) } }
        return pointers.prefix(count).map { $0.map { String(cString: $0) } ?? "" }
    }

    private func readFixedStrings(_ attribute: hid_t, fileType: hid_t, count: Int, name: String) throws -> [String] {
        let width = H5Tget_size(fileType)
        let memoryType = H5Tcopy(fileType)
        guard width > 0, memoryType >= 0 else { throw failure("cannot read attribute \"\(name)\"") }
        defer { H5Tclose(memoryType) }
        var buffer = [UInt8](repeating: 0, count: width * count + 1)
        let status = buffer.withUnsafeMutableBytes { H5Aread(attribute, memoryType, $0.baseAddress) }
        guard status >= 0 else { throw failure("cannot read attribute \"\(name)\"") }
        let spacePadded = H5Tget_strpad(fileType) == H5T_STR_SPACEPAD
        return (0..<count).map { i in
            var slot = buffer[i * width ..< (i + 1) * width]
            if let end = slot.firstIndex(of: 0) { slot = slot[..<end] }
            if spacePadded { while slot.last == 0x20 { slot = slot.dropLast() } }
            return String(decoding: slot, as: UTF8.self)
        }
    }
}

/// An error's description on one line, for embedding in another message.
func oneLine(_ error: Error) -> String {
    "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
}
