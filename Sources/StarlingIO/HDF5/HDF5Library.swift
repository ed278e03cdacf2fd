import CHDF5
import Foundation

/// A failed HDF5 operation: `"<file>: <object>: <message>"` on one line.
public struct HDF5Error: Error, CustomStringConvertible, Sendable {
    public let file: String
    /// The path of the group, dataset or attribute inside the file ("/" for the file itself).
    public let object: String
    public let message: String

    public init(file: String, object: String, message: String) {
        self.file = file
        self.object = object
        self.message = message
    }

    public var description: String { "\(file): \(object): \(message)" }
}

/// The single gate every HDF5 call passes through.
///
/// - It serialises calls with one process-wide lock. Debian's libhdf5 is built thread-safe (it takes its own
///   global lock), but other builds (Homebrew, source builds) are not, and HDF5 never runs calls in parallel
///   anyway, so the extra lock costs nothing and makes the wrappers safe to use from any thread.
/// - It turns off HDF5's automatic error printing. In thread-safe builds that setting lives in a per-thread
///   error stack, so "once at startup" would only silence the first thread; setting it on every entry is cheap.
/// - `failure(...)` turns HDF5's error stack into a one-line message.
enum HDF5Library {
    private static let lock = NSRecursiveLock()

    static func call<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        H5Eset_auto2(hid_t(H5E_DEFAULT), nil, nil)
        HDF5GuardedDriver.lastProblem = nil
        return try body()
    }

    /// An `HDF5Error` for a failed call: `context` plus the most specific message on HDF5's error stack,
    /// e.g. "cannot open file (file signature not found)". Clears the stack.
    static func failure(file: String, object: String, _ context: String) -> HDF5Error {
        var messages: [String] = []
        withUnsafeMutablePointer(to: &messages) { messagesPointer in
            _ = H5Ewalk2(hid_t(H5E_DEFAULT), H5E_WALK_UPWARD, { _, error, clientData in
                guard let error, let clientData, let description = error.pointee.desc else { return 0 }
                clientData.assumingMemoryBound(to: [String].self).pointee.append(String(cString: description))
                return 0
            }, messagesPointer)
        }
        H5Eclear2(hid_t(H5E_DEFAULT))
        // A read the guarded driver refused says why better than HDF5's "read failed".
        let guarded = HDF5GuardedDriver.lastProblem
        HDF5GuardedDriver.lastProblem = nil
        let detail = (guarded ?? messages.first(where: { !$0.isEmpty })).map { " (\($0))" } ?? ""
        return HDF5Error(file: file, object: object, message: context + detail)
    }
}
