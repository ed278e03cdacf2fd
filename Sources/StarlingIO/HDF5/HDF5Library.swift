import CCPU
import CHDF5
import Foundation
#if canImport(Glibc)
import Glibc
#endif

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

    /// Runs `body` holding the lock, timed by `HDF5CallWatchdog` (`file`: the file the call works on, for its message).
    static func call<R>(_ file: String? = nil, _ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        HDF5CallWatchdog.enter(file: file)
        defer { HDF5CallWatchdog.leave() }
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

/// Ends the process when a single HDF5 call has not returned after a limit (STARLING_HDF5_CALL_SECONDS, default 120 s):
/// one line naming the file on stderr, then exit code 1 (`abortJob` first, which the CLI sets to MPI_Abort in an MPI
/// run, so the other ranks do not wait for this one in a collective).
///
/// `HDF5GuardedDriver` refuses the global heap damage known to make HDF5 1.10 read forever; this is the fallback for
/// any other loop inside the library, which no caller can interrupt (the stuck thread holds HDF5's lock, and HDF5's
/// own exit handler would wait for it, hence `_exit`). The clock runs from entering the outermost
/// `HDF5Library.call` to leaving it; one thread of its own looks at it about once a second. Starling's calls move
/// at most a batch or a checkpoint, so a call that takes minutes is stuck, not slow; a file system that is that slow
/// can raise the limit, and 0 turns the watch off.
public enum HDF5CallWatchdog {
    public static let defaultLimit: Double = 120

    /// STARLING_HDF5_CALL_SECONDS, checked (the CLI refuses to start with a bad one: `settingError`).
    static let setting: Result<Double, HDF5CallLimitError> =
        limit(named: getenv("STARLING_HDF5_CALL_SECONDS").map { String(cString: $0) })

    /// The limit `value` gives: seconds (a finite number >= 0; 0 is off), the default when nil or empty.
    public static func limit(named value: String?) -> Result<Double, HDF5CallLimitError> {
        guard let value, !value.isEmpty else { return .success(defaultLimit) }
        guard let seconds = Double(value), seconds.isFinite, seconds >= 0 else { return .failure(HDF5CallLimitError(value: value)) }
        return .success(seconds)
    }

    /// The error a bad STARLING_HDF5_CALL_SECONDS gives, or nil.
    public static var settingError: HDF5CallLimitError? {
        if case .failure(let error) = setting { return error }
        return nil
    }

    /// Seconds one call may take (0: no limit).
    public static let limit: Double = (try? setting.get()) ?? defaultLimit

    /// Called on the watch thread with the exit code before the process ends: the CLI ends the whole MPI job here.
    nonisolated(unsafe) public static var abortJob: (@Sendable (Int32) -> Void)?

    /// A test hook: calls on `file` get `limit` and end with `expired` (a recorder) instead of the process ending.
    nonisolated(unsafe) static var testOverride: (file: String, limit: Double, expired: @Sendable (String) -> Void)?

    private static let watchLock = NSLock()
    // Guarded by watchLock: the outermost call in progress, and whether its end was already called.
    nonisolated(unsafe) private static var current: (file: String?, since: Double, serial: Int)?
    nonisolated(unsafe) private static var serial = 0
    nonisolated(unsafe) private static var expiredSerial = -1
    nonisolated(unsafe) private static var watching = false
    // Touched only by the thread holding HDF5Library's lock.
    nonisolated(unsafe) private static var depth = 0

    static func enter(file: String?) {
        depth += 1
        watchLock.lock()
        defer { watchLock.unlock() }
        if depth == 1 {
            serial += 1
            current = (file, monotonicSeconds(), serial)
        } else if current?.file == nil, let file {
            current?.file = file
        }
        if !watching && (limit > 0 || testOverride != nil) {
            watching = true
            let thread = Thread {
                starling_name_current_thread("hdf5-watchdog")
                watch()
            }
            thread.start()
        }
    }

    static func leave() {
        depth -= 1
        guard depth == 0 else { return }
        watchLock.withLock { current = nil }
    }

    private static func watch() {
        while true {
            usleep(useconds_t(testOverride == nil ? 1_000_000 : 100_000))
            let expired = watchLock.withLock { () -> (file: String?, waited: Double, limit: Double, test: (@Sendable (String) -> Void)?)? in
                guard let call = current, call.serial != expiredSerial else { return nil }
                let waited = monotonicSeconds() - call.since
                if let test = testOverride, test.file == call.file {
                    guard waited > test.limit else { return nil }
                    expiredSerial = call.serial
                    return (call.file, waited, test.limit, test.expired)
                }
                guard limit > 0, waited > limit else { return nil }
                expiredSerial = call.serial
                return (call.file, waited, limit, nil)
            }
            guard let expired else { continue }
            let line = "\(expired.file ?? "an HDF5 file"): an HDF5 call has not returned after \(Int(expired.waited)) s (the file may be damaged in a way HDF5 reads forever, or its file system has stopped answering); ending the run (STARLING_HDF5_CALL_SECONDS sets the limit, \(formatted(expired.limit)) s)"
            if let test = expired.test {
                test(line)
                continue
            }
            FileHandle.standardError.write(Data("Error: \(line)\n".utf8))
            abortJob?(1)
            _exit(1)
        }
    }

    private static func formatted(_ seconds: Double) -> String {
        seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
    }

    private static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}

public struct HDF5CallLimitError: Error, Equatable, CustomStringConvertible {
    public let value: String
    public var description: String { "STARLING_HDF5_CALL_SECONDS=\(value): expected a number of seconds (0 turns the limit off)" }
}
