#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Replaces files atomically: readers see either the old file or the complete new one, never a partial write,
/// even if the process dies mid-write or the machine loses power after `replace` returns.
public enum AtomicFile {
    /// The temporary name used for `path`: same directory (so `rename` is atomic) and tagged with the process id
    /// (so two processes, e.g. MPI ranks, never write each other's temporary).
    public static func temporaryPath(for path: String) -> String { "\(path).tmp-\(getpid())" }

    /// Removes the temporaries (`NAME.tmp-PID`) in `directory` whose writer is no longer running on this machine: a
    /// killed write leaves its temporary behind, and nothing else would ever remove it. Returns the names removed.
    /// A temporary of a live process is kept, whoever it is: it may be mid-write.
    @discardableResult
    public static func removeStaleTemporaries(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            names.append(name)
        }
        closedir(dir)
        var removed: [String] = []
        for name in names {
            guard let marker = name.range(of: ".tmp-", options: .backwards), let pid = pid_t(name[marker.upperBound...]), pid > 0 else { continue }
            // ESRCH: no such process. EPERM means it exists under another user, so it is left alone.
            guard kill(pid, 0) != 0 && errno == ESRCH else { continue }
            if unlink(directory + "/" + name) == 0 { removed.append(name) }
        }
        return removed.sorted()
    }

    /// Calls `body` with a temporary path to write, then fsyncs it and renames it over `path`.
    /// If `body` or any later step throws, the temporary is removed and `path` is left untouched.
    public static func replace(_ path: String, _ body: (String) throws -> Void) throws {
        let directory = parentDirectory(of: path)
        var info = stat()
        guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            throw StarlingIOError(file: path, message: "no such directory \(directory)")
        }
        let temporary = temporaryPath(for: path)
        unlink(temporary)  // a stale temporary of a crashed earlier run with the same pid
        do {
            try body(temporary)
            try fsyncPath(temporary, reportAs: path)
            guard rename(temporary, path) == 0 else {
                throw StarlingIOError(file: path, message: "cannot rename \(temporary) over it: \(errnoString())")
            }
        } catch {
            unlink(temporary)
            throw error
        }
        // Make the rename itself durable. Some file systems refuse to fsync a directory; the data is safe anyway.
        try? fsyncPath(directory, reportAs: directory)
    }

    /// Writes `bytes` to `path` atomically.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try replace(path) { temporary in
            guard let handle = fopen(temporary, "wb") else {
                throw StarlingIOError(file: temporary, message: "cannot create: \(errnoString())")
            }
            let written = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, handle) }
            let closed = fclose(handle)
            guard written == bytes.count, closed == 0 else {
                throw StarlingIOError(file: temporary, message: "write failed: \(errnoString())")
            }
        }
    }

    /// The bytes of `source` into a new file `destination` (errors name `reportedAs`, the file the user asked for).
    static func copy(_ source: String, to destination: String, reportedAs path: String) throws {
        guard let input = fopen(source, "rb") else { throw StarlingIOError(file: source, message: "cannot open: \(errnoString())") }
        defer { fclose(input) }
        guard let output = fopen(destination, "wb") else { throw StarlingIOError(file: destination, message: "cannot create: \(errnoString())") }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var failed = false
        while true {
            let n = buffer.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, input) }
            if n == 0 { failed = ferror(input) != 0; break }
            if buffer.withUnsafeBytes({ fwrite($0.baseAddress, 1, n, output) }) != n { failed = true; break }
        }
        if fclose(output) != 0 || failed { throw StarlingIOError(file: path, message: "cannot copy \(source) to \(destination): \(errnoString())") }
    }

    /// Makes `path` a second name of the complete file `source` (a hard link, or a copy where the file system has
    /// none), atomically: `path` is always either its old content or all of `source`'s.
    public static func publish(_ source: String, as path: String) throws {
        try replace(path) { temporary in
            if link(source, temporary) == 0 { return }
            try copy(source, to: temporary, reportedAs: path)
        }
    }

    static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = String(path[..<slash])
        return parent.isEmpty ? "/" : parent
    }

    private static func fsyncPath(_ path: String, reportAs name: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw StarlingIOError(file: name, message: "cannot open for fsync: \(errnoString())") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw StarlingIOError(file: name, message: "fsync failed: \(errnoString())") }
    }
}
