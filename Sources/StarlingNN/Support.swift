#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

// Helpers every layer above uses (data, plots, evaluation, conversion, training): kept here, at the bottom.

/// Prints a line and flushes stdout at once: under mpirun stdout is a block-buffered pipe.
public func printLine(_ line: String) {
    print(line)
    fflush(nil)
}

/// A figure rounded to five decimals, for logs and reports.
package func format(_ x: Double) -> String {
    let scaled = (x * 1e5).rounded() / 1e5
    return "\(scaled)"
}

/// An error's description on one line.
package func oneLineDescription(_ error: Error) -> String {
    "\(error)".split(whereSeparator: \.isNewline).joined(separator: " ")
}

/// Creates a directory and its parents; an existing one is fine.
public func makeDirectory(_ path: String) throws {
    var built = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/") {
        built += "/" + part
        if mkdir(built, 0o755) != 0 && errno != EEXIST {
            throw TrainingError("cannot create directory \(built): \(String(cString: strerror(errno)))")
        }
    }
}

/// A training failure a user can act on (a non-finite loss, an unusable batch size, ...).
public struct TrainingError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
