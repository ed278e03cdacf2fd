import CHDF5

/// An open HDF5 file. Groups and datasets opened from it keep it alive; `close()` (or deinit) closes the file
/// and every object still open in it ("strong" close degree), so a file is really closed when `close()` returns
/// and objects used afterwards throw "file is closed" instead of touching freed handles.
///
/// Files are created with the HDF5 1.8 object format (readable by HDF5 >= 1.8 and h5py) rather than the 1.6
/// default, because only that format stores attributes larger than 64 KiB, such as the long string arrays of
/// Keras weight files.
public final class HDF5File: @unchecked Sendable {
    public let path: String
    public let isWritable: Bool
    // Guarded by HDF5Library's lock.
    private var id: hid_t
    private var closed = false
    /// A sealed file opened writable: sealed again over its new contents when it closes (`HDF5Seal`).
    private let resealsOnClose: Bool
    /// Opened through `HDF5GuardedDriver` (an existing file), not created by HDF5 in this process.
    let isGuarded: Bool

    private init(path: String, id: hid_t, writable: Bool, reseals: Bool = false, guarded: Bool = false) {
        self.path = path
        self.id = id
        self.isWritable = writable
        self.resealsOnClose = reseals
        self.isGuarded = guarded
    }

    deinit { close() }

    /// Creates `path`, truncating any existing file; `userBlock` bytes (0, or a power of two from 512) are reserved
    /// in front of HDF5's superblock for `HDF5Seal`.
    public static func create(_ path: String, userBlock: Int = 0) throws -> HDF5File {
        try HDF5Library.call(path) {
            let access = try fileAccessList(path)
            defer { H5Pclose(access) }
            let creation = H5Pcreate(starling_h5p_file_create())
            guard creation >= 0 else { throw HDF5Library.failure(file: path, object: "/", "cannot set up file creation properties") }
            defer { H5Pclose(creation) }
            // The root group records no times, as no group or dataset Starling makes does (HDF5Group).
            guard H5Pset_obj_track_times(creation, false) >= 0 else {
                throw HDF5Library.failure(file: path, object: "/", "cannot set up file creation properties")
            }
            if userBlock > 0 && H5Pset_userblock(creation, hsize_t(userBlock)) < 0 {
                throw HDF5Library.failure(file: path, object: "/", "cannot reserve a \(userBlock)-byte user block")
            }
            let id = H5Fcreate(path, starling_h5f_acc_trunc(), creation, access)
            guard id >= 0 else { throw HDF5Library.failure(file: path, object: "/", "cannot create file") }
            return HDF5File(path: path, id: id, writable: true)
        }
    }

    /// Opens an existing file, read-only unless `writable`. A sealed file (`HDF5Seal`) is checked against its seal
    /// first, so a damaged one is refused before HDF5 parses it; any file is read through `HDF5GuardedDriver`, so a
    /// corrupt global heap is refused rather than read forever.
    public static func open(_ path: String, writable: Bool = false) throws -> HDF5File {
        try HDF5Library.call(path) {
            guard fileExists(path) else { throw HDF5Error(file: path, object: "/", message: "no such file") }
            let sealed = try HDF5Seal.verify(path)
            guard H5Fis_hdf5(path) > 0 else {
                H5Eclear2(hid_t(H5E_DEFAULT))
                throw HDF5Error(file: path, object: "/", message: "not an HDF5 file")
            }
            let access = try fileAccessList(path, guarded: true)
            defer { H5Pclose(access) }
            let flags = writable ? starling_h5f_acc_rdwr() : starling_h5f_acc_rdonly()
            let id = H5Fopen(path, flags, access)
            guard id >= 0 else { throw HDF5Library.failure(file: path, object: "/", "cannot open file") }
            return HDF5File(path: path, id: id, writable: writable, reseals: writable && sealed, guarded: true)
        }
    }

    /// The root group "/".
    public var root: HDF5Group {
        HDF5Library.call(path) {
            // Opening "/" of an open file cannot fail; on a closed file the group gets an invalid id and its
            // methods throw "file is closed".
            HDF5Group(file: self, id: closed ? -1 : H5Gopen2(id, "/", hid_t(H5P_DEFAULT)), name: "/")
        }
    }

    public var isOpen: Bool { HDF5Library.call(path) { !closed } }

    /// Writes all buffered data and metadata to the operating system.
    public func flush() throws {
        try HDF5Library.call(path) {
            let id = try openID(object: "/")
            guard H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0 else {
                throw HDF5Library.failure(file: path, object: "/", "cannot flush file")
            }
        }
    }

    /// Closes the file and all objects still open in it. Safe to call more than once.
    public func close() {
        try? closeChecked()
    }

    /// `close()` that reports a failure to write the file's final metadata (used before an atomic rename).
    func closeChecked() throws {
        try HDF5Library.call(path) {
            if closed { return }
            closed = true
            guard H5Fclose(id) >= 0 else { throw HDF5Library.failure(file: path, object: "/", "cannot close file") }
            if resealsOnClose { try HDF5Seal.seal(path, reportAs: path) }
        }
    }

    /// The file id, or "file is closed". Callers hold HDF5Library's lock.
    func openID(object: String) throws -> hid_t {
        if closed { throw HDF5Error(file: path, object: object, message: "file is closed") }
        return id
    }

    /// `guarded`: through `HDF5GuardedDriver`, for files HDF5 did not just write in this process.
    private static func fileAccessList(_ path: String, guarded: Bool = false) throws -> hid_t {
        let access = H5Pcreate(starling_h5p_file_access())
        guard access >= 0,
              !guarded || H5Pset_driver(access, HDF5GuardedDriver.id, nil) >= 0,
              H5Pset_fclose_degree(access, H5F_CLOSE_STRONG) >= 0,
              H5Pset_libver_bounds(access, H5F_LIBVER_V18, H5F_LIBVER_V18) >= 0 else {
            if access >= 0 { H5Pclose(access) }
            throw HDF5Library.failure(file: path, object: "/", "cannot set up file access properties")
        }
        return access
    }
}

/// Writes a new HDF5 file atomically: `body` writes into `<path>.tmp-<pid>` in the same directory, the file is
/// flushed and closed, fsync'ed, then renamed over `path`. On any thrown error the temporary is removed and
/// `path` is untouched, so a checkpoint or dataset on disk is always complete.
/// With `sealed`, the closed file gets a checksum in its user block (`HDF5Seal`) before the rename.
public func writeHDF5Atomically(to path: String, sealed: Bool = false, _ body: (HDF5File) throws -> Void) throws {
    try AtomicFile.replace(path) { temporary in
        let file = try HDF5File.create(temporary, userBlock: sealed ? HDF5Seal.blockSize : 0)
        do {
            try body(file)
            try file.flush()
            try file.closeChecked()
        } catch {
            file.close()
            throw error
        }
        if sealed { try HDF5Seal.seal(temporary, reportAs: path) }
    }
}

/// Changes an existing HDF5 file atomically: the file is copied to `<path>.tmp-<pid>` beside it, `body` changes the
/// copy (opened writable), which is flushed, closed, fsync'ed and renamed over `path`. On any thrown error the
/// temporary is removed and `path` is untouched; a reader sees the old file or the whole new one. A sealed file is
/// sealed again over its new contents as it closes.
public func updateHDF5Atomically(_ path: String, _ body: (HDF5File) throws -> Void) throws {
    try AtomicFile.replace(path) { temporary in
        try AtomicFile.copy(path, to: temporary, reportedAs: path)
        let file = try HDF5File.open(temporary, writable: true)
        do {
            try body(file)
            try file.flush()
            try file.closeChecked()
        } catch {
            file.close()
            throw error
        }
    }
}
