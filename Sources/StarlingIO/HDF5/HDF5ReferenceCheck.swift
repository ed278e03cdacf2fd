import CHDF5
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Checks the references of variable-length data (strings, ragged sequences) before HDF5 1.10 follows them.
///
/// In the file a variable-length element is a reference: its length, the address of a global heap collection and an
/// object index in it. HDF5 1.10.8 trusts all three: `H5HG_read` takes the object at that index from its table of the
/// collection's objects without checking the index against the table (only an assertion, compiled out), and copies
/// the object's size into a buffer made for the reference's length. Found by changing the reference of a real
/// checkpoint's `format` attribute (and its block's checksum, so that HDF5 takes the block): indices 65535, 65536 and
/// 2^32 - 1 ended the process with SIGSEGV, a length of 2^31 allocated 4 GiB and read past the object (HDF5 1.14,
/// h5py's, refuses all of them). `HDF5GuardedDriver` sees the collection but not the reference, which lives in an
/// object header or a dataset's raw data. So before a variable-length read Starling reads the references themselves -
/// HDF5 converts the stored elements into an opaque type of Starling's through a conversion function registered
/// with `H5Tregister`, which receives them as they are in the file - and checks each: its collection must pass
/// `HDF5GlobalHeapCheck`, hold an object of that index, and that object must have exactly the length the reference
/// gives (HDF5 writes them so). A reference that fails makes the read fail with one line naming the file, the object
/// and the element.
enum HDF5ReferenceCheck {
    struct Reference: Equatable {
        var length: UInt32
        var address: UInt64
        var index: UInt32
    }

    static let tag = "starling: variable-length references as stored"
    /// Bytes of one element of `referenceType`: length, an 8-byte address, index (files with 4-byte addresses are
    /// widened by the conversion).
    static let referenceSize = 16

    /// The opaque type stored references convert to; the conversion is registered with it (once per process).
    static let referenceType: hid_t = {
        let type = H5Tcreate(H5T_OPAQUE, referenceSize)
        guard type >= 0, H5Tset_tag(type, tag) >= 0 else { return -1 }
        let source = H5Tcopy(starling_h5t_c_s1())
        defer { if source >= 0 { H5Tclose(source) } }
        guard source >= 0, H5Tset_size(source, starling_h5t_variable()) >= 0,
              H5Tregister(H5T_PERS_SOFT, "starling-references", source, type, referenceConversion) >= 0 else { return -1 }
        return type
    }()

    /// The stored references of `count` elements read by `read` (H5Aread or H5Dread with the given memory type).
    /// Callers hold HDF5Library's lock.
    static func references(count: Int, _ read: (hid_t, UnsafeMutableRawPointer) -> herr_t) -> [Reference]? {
        guard referenceType >= 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: max(1, count) * referenceSize)
        guard bytes.withUnsafeMutableBytes({ read(referenceType, $0.baseAddress!) }) >= 0 else { return nil }
        return (0..<count).map { i in
            let p = i * referenceSize
            return Reference(length: load(UInt32.self, bytes, p), address: load(UInt64.self, bytes, p + 4),
                             index: load(UInt32.self, bytes, p + 12))
        }
    }

    /// What is wrong with `references` (elements of `elementSize` bytes each) in the file at `path`, whose HDF5
    /// addresses start at byte `base`; nil when HDF5 can follow every one.
    static func problem(_ references: [Reference], elementSize: Int, path: String, base: UInt64, firstElement: Int = 0) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "cannot open the file to check its variable-length references" }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { return "cannot read the file's size" }
        let fileSize = haddr_t(status.st_size)
        var collections: [haddr_t: [UInt16: UInt64]] = [:]
        for (offset, reference) in references.enumerated() where reference.address != 0 && reference.length > 0 {
            let element = firstElement + offset
            let (bytes, overflow) = UInt64(reference.length).multipliedReportingOverflow(by: UInt64(elementSize))
            guard !overflow, bytes <= UInt64(HDF5GlobalHeapCheck.maximumSize) else {
                return "element \(element) claims \(reference.length) values, more than a global heap collection holds"
            }
            let (start, wraps) = haddr_t(base).addingReportingOverflow(haddr_t(reference.address))
            guard !wraps, start < fileSize else {
                return "element \(element) refers to byte \(reference.address) past the end of the file"
            }
            let sizes: [UInt16: UInt64]
            if let known = collections[start] {
                sizes = known
            } else {
                switch HDF5GlobalHeapCheck.objects(fd: fd, at: start, fileSize: fileSize) {
                case .failure(let problem): return "element \(element): \(problem.message)"
                case .success(let found): sizes = found.sizes
                }
                collections[start] = sizes
            }
            guard reference.index > 0, reference.index <= UInt32(UInt16.max), let size = sizes[UInt16(reference.index)] else {
                let held = sizes.keys.sorted().map(String.init).joined(separator: ", ")
                return "element \(element) refers to object \(reference.index) of the global heap collection at byte \(start), which holds objects \(held.isEmpty ? "none" : held) (HDF5 1.10 would read outside it)"
            }
            guard size == bytes else {
                return "element \(element) claims \(bytes) bytes where object \(reference.index) of the global heap collection at byte \(start) holds \(size)"
            }
        }
        return nil
    }

    private static func load<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes[offset..<(offset + MemoryLayout<T>.size)]) }
        return T(littleEndian: value)
    }
}

/// HDF5's conversion from a stored variable-length element (length, address, index; 16 bytes, or 12 with 4-byte
/// addresses) to `HDF5ReferenceCheck.referenceType`: the elements are widened in place, last first.
extension HDF5Object {
    /// Reads the stored references of the `count` elements `read` reads (given a memory type and a buffer) and throws
    /// naming `what` if HDF5 could not follow one safely (`HDF5ReferenceCheck`). Callers hold HDF5Library's lock.
    /// Files HDF5 created in this process are its own writing and are not checked (their collections may still be in
    /// its cache only); a file opened writable is flushed first, so that the check reads what HDF5 would.
    func checkVariableLengthReferences(count: Int, elementSize: Int, what: String, firstElement: Int = 0,
                                       _ read: (hid_t, UnsafeMutableRawPointer) -> herr_t) throws {
        guard file.isGuarded, count > 0 else { return }
        let fileID = try file.openID(object: name)
        if file.isWritable && H5Fflush(fileID, H5F_SCOPE_LOCAL) < 0 { throw failure("cannot flush before reading \(what)") }
        guard let references = HDF5ReferenceCheck.references(count: count, read) else { throw failure("cannot read \(what)") }
        var base: hsize_t = 0
        let creation = H5Fget_create_plist(fileID)
        guard creation >= 0, H5Pget_userblock(creation, &base) >= 0 else {
            if creation >= 0 { H5Pclose(creation) }
            throw failure("cannot read the file's user block size")
        }
        H5Pclose(creation)
        if let problem = HDF5ReferenceCheck.problem(references, elementSize: elementSize, path: file.path, base: UInt64(base),
                                                  firstElement: firstElement) {
            throw error("cannot read \(what) (\(problem))")
        }
    }
}

private let referenceConversion: H5T_conv_t = { source, destination, cdata, count, elementStride, _, buffer, _, _ in
    guard let cdata else { return -1 }
    switch cdata.pointee.command {
    case H5T_CONV_INIT:
        var tag: String?
        if let raw = H5Tget_tag(destination) {
            tag = String(cString: raw)
            H5free_memory(raw)
        }
        let sourceClass = H5Tget_class(source)
        guard H5Tget_class(destination) == H5T_OPAQUE, tag == HDF5ReferenceCheck.tag,
              sourceClass == H5T_VLEN || (sourceClass == H5T_STRING && H5Tis_variable_str(source) > 0) else { return -1 }
        cdata.pointee.need_bkg = H5T_BKG_NO
        return 0
    case H5T_CONV_CONV:
        let sourceSize = H5Tget_size(source)
        // Only the stored form (4 + address + 4 bytes) can be read this way: a variable-length type in memory is not.
        guard let buffer, elementStride == 0, sourceSize == 12 || sourceSize == 16 else { return -1 }
        let addressSize = sourceSize - 8
        let bytes = buffer.assumingMemoryBound(to: UInt8.self)
        for element in stride(from: count - 1, through: 0, by: -1) {
            let from = bytes + element * sourceSize, to = bytes + element * HDF5ReferenceCheck.referenceSize
            var length: UInt32 = 0, address: UInt64 = 0, index: UInt32 = 0
            for i in 0..<4 { length |= UInt32(from[i]) << (8 * UInt32(i)) }
            for i in 0..<addressSize { address |= UInt64(from[4 + i]) << (8 * UInt64(i)) }
            for i in 0..<4 { index |= UInt32(from[4 + addressSize + i]) << (8 * UInt32(i)) }
            for i in 0..<4 { to[i] = UInt8(truncatingIfNeeded: length >> (8 * UInt32(i))) }
            for i in 0..<8 { to[4 + i] = UInt8(truncatingIfNeeded: address >> (8 * UInt64(i))) }
            for i in 0..<4 { to[12 + i] = UInt8(truncatingIfNeeded: index >> (8 * UInt32(i))) }
        }
        return 0
    default:
        return 0
    }
}
