import CHDF5
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// HDF5's POSIX file driver with one addition: every global heap collection is checked before HDF5 decodes it.
///
/// HDF5 1.10 (Debian 12's 1.10.8; fixed upstream only in later releases) decodes a global heap collection - where
/// variable-length strings and sequences live: every string attribute Starling writes, h5py's strings, ssd_keras's
/// ragged box lists - by walking its objects, each header giving the size of the next step; an object 0 (free space)
/// of size 0 makes that walk step by nothing, forever (`H5HG__cache_heap_deserialize`, reached from `H5Aread`'s and
/// `H5Dread`'s `H5HG_read`), and a size larger than the collection walks out of it. Such a file is damaged, but HDF5
/// would hang the process rather than fail. `HDF5File.open` therefore opens existing files through this driver: it
/// reads as HDF5's `sec2` driver does (pread/pwrite, no caching of its own), and when a read starts a global heap
/// collection - the library reads them as raw data, starting with the collection's signature - it walks the
/// collection's objects first with the same arithmetic and bounds checks (`HDF5GlobalHeapCheck`), and a collection
/// that would not end or overruns makes the read fail. HDF5 then reports a failed read and Starling's error names the
/// file, the object and the problem.
///
/// The driver does not advertise metadata accumulation, so every read reaches it (HDF5 would otherwise serve small
/// metadata reads from a buffer it filled earlier); data sieving and allocation are as with `sec2`.
enum HDF5GuardedDriver {
    /// What the last refused read found, for `HDF5Library.failure`'s message; read and cleared under HDF5Library's lock.
    nonisolated(unsafe) static var lastProblem: String?

    /// Set (under HDF5Library's lock) while `HDF5Dataset` moves a numeric dataset's elements (`H5Dread`, `H5Dwrite`,
    /// which may read to fill its sieve buffer): the raw-data reads HDF5 makes then are the dataset's elements, never
    /// a global heap collection, however their bytes start. HDF5 1.10 hands heap loads to the driver as raw data too
    /// (`H5F_block_read` maps H5FD_MEM_GHEAP to H5FD_MEM_DRAW), so the read's type alone cannot tell them apart; a
    /// numeric transfer cannot load a heap (HDF5 has no conversion from a variable-length type to a number, and a
    /// numeric fill value lives in the object header). Everything else - attributes, variable-length datasets, the
    /// heap loads of attribute deletes and overwrites - stays checked.
    nonisolated(unsafe) static var numericTransfer = false

    /// Test hooks for `HDF5CallWatchdog` (HDF5GuardTests): files opened while set sleep this long in every read, as
    /// an HDF5 call that never returns would. `stalledReads` stalls the file at `path` only (the test process runs
    /// other HDF5 tests alongside); STARLING_TEST_HDF5_READ_STALL=SECONDS every file of the process (the CLI's test).
    nonisolated(unsafe) static var stalledReads: (path: String, seconds: Double)?
    static let environmentReadStall: Double = getenv("STARLING_TEST_HDF5_READ_STALL").flatMap { Double(String(cString: $0)) } ?? 0

    static func readStall(path: String) -> Double {
        if let stalled = stalledReads, stalled.path == path { return stalled.seconds }
        return environmentReadStall
    }

    /// The registered driver's id (registered once, for the life of the process).
    static let id: hid_t = HDF5Library.call {
        var driver = H5FD_class_t()
        driver.name = UnsafePointer(strdup("starling-guarded"))
        // sec2's limit: the largest offset an off_t can hold.
        driver.maxaddr = haddr_t(Int64.max)
        driver.fc_degree = H5F_CLOSE_WEAK
        driver.open = guardedOpen
        driver.close = guardedClose
        driver.cmp = guardedCompare
        driver.query = guardedQuery
        driver.get_eoa = { file, _ in file.map { UnsafeRawPointer($0).assumingMemoryBound(to: starling_guarded_file.self).pointee.eoa } ?? haddr_t.max }
        driver.set_eoa = { file, _, address in
            guard let file else { return -1 }
            UnsafeMutableRawPointer(file).assumingMemoryBound(to: starling_guarded_file.self).pointee.eoa = address
            return 0
        }
        driver.get_eof = { file, _ in file.map { UnsafeRawPointer($0).assumingMemoryBound(to: starling_guarded_file.self).pointee.eof } ?? haddr_t.max }
        driver.get_handle = { file, _, handle in
            guard let file, let handle else { return -1 }
            handle.pointee = UnsafeMutableRawPointer(file) + MemoryLayout<starling_guarded_file>.offset(of: \.fd)!
            return 0
        }
        driver.read = guardedRead
        driver.write = guardedWrite
        driver.truncate = guardedTruncate
        // sec2's free-list map: metadata in one list, raw data and global heaps in the other.
        // (default, superblock, B-tree, raw data, global heap, local heap, object header)
        driver.fl_map = (H5FD_MEM_SUPER, H5FD_MEM_SUPER, H5FD_MEM_SUPER, H5FD_MEM_DRAW, H5FD_MEM_DRAW, H5FD_MEM_SUPER,
                         H5FD_MEM_SUPER)
        let pointer = UnsafeMutablePointer<H5FD_class_t>.allocate(capacity: 1)
        pointer.initialize(to: driver)
        return H5FDregister(pointer)
    }
}

private func guarded(_ file: UnsafeMutablePointer<H5FD_t>) -> UnsafeMutablePointer<starling_guarded_file> {
    UnsafeMutableRawPointer(file).assumingMemoryBound(to: starling_guarded_file.self)
}

private let guardedOpen: @convention(c) (UnsafePointer<CChar>?, UInt32, hid_t, haddr_t) -> UnsafeMutablePointer<H5FD_t>? = { name, flags, _, _ in
    guard let name else { return nil }
    var mode = flags & 0x0001 != 0 ? O_RDWR : O_RDONLY
    if flags & 0x0002 != 0 { mode |= O_TRUNC }
    if flags & 0x0010 != 0 { mode |= O_CREAT }
    if flags & 0x0004 != 0 { mode |= O_EXCL }
    let fd = Glibc.open(name, mode, 0o666)
    guard fd >= 0 else { return nil }
    var status = stat()
    guard fstat(fd, &status) == 0 else {
        Glibc.close(fd)
        return nil
    }
    // HDF5 fills the public part after open returns; it must start zeroed.
    guard let raw = calloc(1, MemoryLayout<starling_guarded_file>.size) else {
        Glibc.close(fd)
        return nil
    }
    let file = raw.assumingMemoryBound(to: starling_guarded_file.self)
    file.pointee.fd = fd
    file.pointee.eof = haddr_t(status.st_size)
    file.pointee.device = status.st_dev
    file.pointee.inode = status.st_ino
    file.pointee.stall_seconds = HDF5GuardedDriver.readStall(path: String(cString: name))
    return raw.assumingMemoryBound(to: H5FD_t.self)
}

private let guardedClose: @convention(c) (UnsafeMutablePointer<H5FD_t>?) -> herr_t = { file in
    guard let file else { return -1 }
    let status = Glibc.close(guarded(file).pointee.fd)
    free(file)
    return status == 0 ? 0 : -1
}

private let guardedCompare: @convention(c) (UnsafePointer<H5FD_t>?, UnsafePointer<H5FD_t>?) -> Int32 = { a, b in
    guard let a, let b else { return 0 }
    let x = guarded(UnsafeMutablePointer(mutating: a)).pointee, y = guarded(UnsafeMutablePointer(mutating: b)).pointee
    if x.device != y.device { return x.device < y.device ? -1 : 1 }
    if x.inode != y.inode { return x.inode < y.inode ? -1 : 1 }
    return 0
}

private let guardedQuery: @convention(c) (UnsafePointer<H5FD_t>?, UnsafeMutablePointer<UInt>?) -> herr_t = { _, flags in
    // As sec2, less metadata accumulation (see HDF5GuardedDriver).
    flags?.pointee = UInt(H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_DATA_SIEVE | H5FD_FEAT_AGGREGATE_SMALLDATA |
                          H5FD_FEAT_POSIX_COMPAT_HANDLE)
    return 0
}

private let guardedRead: @convention(c) (UnsafeMutablePointer<H5FD_t>?, H5FD_mem_t, hid_t, haddr_t, Int, UnsafeMutableRawPointer?) -> herr_t = { file, type, _, address, size, buffer in
    guard let file, let buffer, address <= haddr_t(Int64.max), size <= Int.max - Int(address) else { return -1 }
    let state = guarded(file)
    let fd = state.pointee.fd
    if state.pointee.stall_seconds > 0 { usleep(useconds_t(state.pointee.stall_seconds * 1_000_000)) }
    guard readFully(fd, buffer, size, off_t(address)) else { return -1 }
    // Global heap collections arrive as raw data in HDF5 1.10 (H5F_block_read maps H5FD_MEM_GHEAP to H5FD_MEM_DRAW;
    // later releases may pass the type through); a numeric dataset's elements are raw data that is never one. A read
    // that continues the collection last checked (HDF5 reads the first 4 KiB, then the rest) is not a new one.
    let continuing = address > state.pointee.checked_start && address < state.pointee.checked_end
    let mayBeHeap = type == H5FD_MEM_GHEAP || (type == H5FD_MEM_DRAW && !HDF5GuardedDriver.numericTransfer)
    if mayBeHeap, !continuing, HDF5GlobalHeapCheck.startsCollection(UnsafeRawBufferPointer(start: buffer, count: size)) {
        switch HDF5GlobalHeapCheck.check(fd: fd, at: address, fileSize: state.pointee.eof) {
        case .success(let end):
            state.pointee.checked_start = address
            state.pointee.checked_end = end
        case .failure(let problem):
            HDF5GuardedDriver.lastProblem = problem.message
            return -1
        }
    }
    return 0
}

private let guardedWrite: @convention(c) (UnsafeMutablePointer<H5FD_t>?, H5FD_mem_t, hid_t, haddr_t, Int, UnsafeRawPointer?) -> herr_t = { file, _, _, address, size, buffer in
    guard let file, let buffer, address <= haddr_t(Int64.max), size <= Int.max - Int(address) else { return -1 }
    let state = guarded(file)
    var done = 0
    while done < size {
        let n = pwrite(state.pointee.fd, buffer + done, size - done, off_t(address) + off_t(done))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return -1 }
        done += n
    }
    state.pointee.eof = max(state.pointee.eof, address + haddr_t(size))
    // A rewritten collection is checked again when next read.
    state.pointee.checked_start = 0
    state.pointee.checked_end = 0
    return 0
}

private let guardedTruncate: @convention(c) (UnsafeMutablePointer<H5FD_t>?, hid_t, hbool_t) -> herr_t = { file, _, _ in
    guard let file else { return -1 }
    let state = guarded(file)
    // As sec2: the file ends where HDF5's allocation ends.
    if state.pointee.eoa != state.pointee.eof {
        guard ftruncate(state.pointee.fd, off_t(state.pointee.eoa)) == 0 else { return -1 }
        state.pointee.eof = state.pointee.eoa
    }
    return 0
}

/// Reads `size` bytes at `offset`; bytes past the end of the file read as zeros (as sec2's).
private func readFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ size: Int, _ offset: off_t) -> Bool {
    var done = 0
    while done < size {
        let n = pread(fd, buffer + done, size - done, offset + off_t(done))
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return false }
        if n == 0 {
            memset(buffer + done, 0, size - done)
            return true
        }
        done += n
    }
    return true
}

/// The checks `HDF5GuardedDriver` runs on a global heap collection (HDF5 file format specification, "Global Heap"):
/// the 16-byte header ("GCOL", version 1, three reserved bytes, the collection's size as an 8-byte length), then
/// objects, each a 16-byte header (index UInt16, reference count UInt16, four reserved bytes, size UInt64) and its
/// data padded to 8 bytes; object 0 is the free space, whose size counts its header and is not padded. The walk is
/// HDF5 1.10's, with the checks it lacks.
public enum HDF5GlobalHeapCheck {
    public struct Problem: Error, Equatable {
        public let message: String
    }

    static let headerSize = 16
    static let objectHeaderSize = 16
    /// The smallest collection HDF5 writes.
    static let minimumSize = 4096
    /// Collections larger than this are refused rather than read into memory to be checked (HDF5 makes a collection
    /// just large enough for an object that does not fit a 4 KiB one; Starling's largest strings are run
    /// configurations of a few KiB).
    static let maximumSize: haddr_t = 1 << 30

    /// Whether `bytes` start with a collection's signature and version.
    static func startsCollection(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 8 && bytes[0] == 0x47 && bytes[1] == 0x43 && bytes[2] == 0x4F && bytes[3] == 0x4C && bytes[4] == 1
    }

    /// Reads the collection at `address` and checks it; returns where it ends.
    static func check(fd: Int32, at address: haddr_t, fileSize: haddr_t) -> Result<haddr_t, Problem> {
        objects(fd: fd, at: address, fileSize: fileSize).map { $0.end }
    }

    /// Reads the collection at `address` and checks it; returns where it ends and its objects' sizes by index (as
    /// HDF5 decodes them: a later object of the same index replaces an earlier one).
    static func objects(fd: Int32, at address: haddr_t, fileSize: haddr_t) -> Result<(end: haddr_t, sizes: [UInt16: UInt64]), Problem> {
        var header = [UInt8](repeating: 0, count: headerSize)
        guard header.withUnsafeMutableBytes({ readFully(fd, $0.baseAddress!, headerSize, off_t(address)) }) else {
            return .failure(Problem(message: "cannot read the global heap collection at byte \(address)"))
        }
        guard header.withUnsafeBytes({ startsCollection($0) }) else {
            return .failure(Problem(message: "no global heap collection at byte \(address)"))
        }
        let size = haddr_t(load(UInt64.self, header, 8))
        guard size <= maximumSize, address <= fileSize, size <= fileSize - address else {
            return .failure(Problem(message: "corrupt global heap collection at byte \(address): it claims \(size) bytes, past the end of the file (\(fileSize) bytes)"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        guard bytes.withUnsafeMutableBytes({ size == 0 || readFully(fd, $0.baseAddress!, Int(size), off_t(address)) }) else {
            return .failure(Problem(message: "cannot read the global heap collection at byte \(address)"))
        }
        switch walk(bytes, at: Int(address)) {
        case .failure(let problem):
            return .failure(Problem(message: "corrupt global heap collection at byte \(address): \(problem.message)"))
        case .success(let sizes):
            return .success((address + size, sizes))
        }
    }

    /// What is wrong with a whole collection's bytes, or nil if HDF5 can decode it: its walk over the objects ends
    /// exactly at the collection's end, every step moving forward and staying inside. Messages give byte offsets
    /// from `base`, the collection's place in its file.
    public static func problem(inCollection bytes: [UInt8], at base: Int = 0) -> String? {
        if case .failure(let problem) = walk(bytes, at: base) { return problem.message }
        return nil
    }

    /// The walk `problem(inCollection:)` describes; the objects' sizes by index when it ends well.
    static func walk(_ bytes: [UInt8], at base: Int) -> Result<[UInt16: UInt64], Problem> {
        func fail(_ message: String) -> Result<[UInt16: UInt64], Problem> { .failure(Problem(message: message)) }
        guard bytes.count >= headerSize else { return fail("\(bytes.count) bytes, shorter than its header") }
        let size = load(UInt64.self, bytes, 8)
        guard size == UInt64(bytes.count) else { return fail("its header gives \(size) bytes where \(bytes.count) were read") }
        guard size >= UInt64(minimumSize) else { return fail("\(size) bytes, less than the 4096 of the smallest collection") }
        var sizes: [UInt16: UInt64] = [:]
        var offset = headerSize
        while offset < bytes.count {
            let remaining = bytes.count - offset
            // HDF5 takes a tail too short for an object header as free space.
            if remaining < objectHeaderSize { break }
            let index = load(UInt16.self, bytes, offset)
            let objectSize = load(UInt64.self, bytes, offset + 8)
            let step: UInt64
            if index == 0 {
                step = objectSize
            } else {
                // 16 + the size rounded up to 8, without wrapping around as HDF5's arithmetic would.
                let (padded, overflow) = objectSize.addingReportingOverflow(7)
                guard !overflow else { return fail("object \(index) at byte \(base + offset) claims \(objectSize) bytes") }
                step = UInt64(objectHeaderSize) + padded / 8 * 8
                sizes[index] = objectSize
            }
            guard step > 0 else {
                return fail("its free space at byte \(base + offset) has size 0 (HDF5 1.10 would read it forever)")
            }
            guard step <= UInt64(remaining) else {
                return fail("object \(index) at byte \(base + offset) claims \(objectSize) bytes, past the collection's end (\(remaining) left)")
            }
            offset += Int(step)
        }
        return .success(sizes)
    }

    private static func load<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], _ offset: Int) -> T {
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { $0.copyBytes(from: bytes[offset..<(offset + MemoryLayout<T>.size)]) }
        return T(littleEndian: value)
    }
}
