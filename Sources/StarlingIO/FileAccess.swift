#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The current `errno` as text, e.g. "No such file or directory".
func errnoString() -> String { String(cString: strerror(errno)) }

/// True if `path` names an existing file (or directory); used to say "no such file" instead of a library's
/// less direct message.
func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// The whole contents of a file.
func readWholeFile(_ path: String) throws -> [UInt8] {
    guard fileExists(path) else { throw StarlingIOError(file: path, message: "no such file") }
    guard let handle = fopen(path, "rb") else {
        throw StarlingIOError(file: path, message: "cannot open: \(errnoString())")
    }
    defer { fclose(handle) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let count = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, handle) }
        if count > 0 { bytes.append(contentsOf: chunk[..<count]) }
        if count < chunk.count { break }
    }
    guard ferror(handle) == 0 else { throw StarlingIOError(file: path, message: "read failed: \(errnoString())") }
    return bytes
}
