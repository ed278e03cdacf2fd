import CHDF5

/// Typed attributes on a group or dataset. Setting an attribute replaces any existing one of that name.
public protocol HDF5AttributeHolder {
    func setAttribute(_ name: String, _ value: String) throws
    func setAttribute(_ name: String, _ value: Int) throws
    func setAttribute(_ name: String, _ value: Double) throws
    func setAttribute(_ name: String, _ value: [Int]) throws
    func setAttribute(_ name: String, _ value: [String]) throws
    func setJSONAttribute<T: Encodable>(_ name: String, _ value: T) throws
    func hasAttribute(_ name: String) -> Bool
    func stringAttribute(_ name: String) throws -> String
    func intAttribute(_ name: String) throws -> Int
    func doubleAttribute(_ name: String) throws -> Double
    func intArrayAttribute(_ name: String) throws -> [Int]
    func stringArrayAttribute(_ name: String) throws -> [String]
    func jsonAttribute<T: Decodable>(_ name: String, as type: T.Type) throws -> T
}

/// What groups and datasets share: the file they live in, their path, their HDF5 id and attributes
/// (implemented in HDF5Attributes.swift).
public class HDF5Object: @unchecked Sendable {
    public let file: HDF5File
    /// The full path inside the file, e.g. "/train/images".
    public let name: String
    let id: hid_t

    init(file: HDF5File, id: hid_t, name: String) {
        self.file = file
        self.id = id
        self.name = name
    }

    deinit {
        // After the file is closed its strong close degree has already closed this object.
        let id = self.id, file = self.file
        HDF5Library.call(file.path) {
            if id >= 0 && file.isOpen { H5Oclose(id) }
        }
    }

    /// This object's id, or "file is closed". Callers hold HDF5Library's lock.
    func openID() throws -> hid_t {
        _ = try file.openID(object: name)
        guard id >= 0 else { throw error("invalid object") }
        return id
    }

    func error(_ message: String, object: String? = nil) -> HDF5Error {
        HDF5Error(file: file.path, object: object ?? name, message: message)
    }

    func failure(_ context: String, object: String? = nil) -> HDF5Error {
        HDF5Library.failure(file: file.path, object: object ?? name, context)
    }

    /// The path of a child given relative to this object, for messages and `name`.
    func childPath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        return name == "/" ? "/" + path : name + "/" + path
    }
}
