#if canImport(Glibc)
import Glibc
#endif

/// The `STARLING_*` variables that choose among a fixed set of values (STARLING_KERNELS, STARLING_BLOCK,
/// STARLING_WINOGRAD): read once, an unset or empty variable meaning the default, a value among the accepted ones taken
/// as it is written, anything else an error the CLI reports in one line before the command starts (a benchmark asked
/// for one setting must never time another).
public enum EnvironmentSetting {
    /// `value` (the variable's, nil when unset) as the choice it names: nil when unset or empty, else the value of the
    /// pair whose name it is exactly, else an error naming the variable and every accepted name. A pure function, for
    /// the tests; `read` takes the value from this process's environment.
    public static func parse<Value>(_ variable: String, _ value: String?, accepting choices: [(name: String, value: Value)])
        -> Result<Value?, SettingValueError> {
        guard let value, !value.isEmpty else { return .success(nil) }
        guard let choice = choices.first(where: { $0.name == value }) else {
            return .failure(SettingValueError(variable: variable, value: value, accepted: choices.map(\.name)))
        }
        return .success(choice.value)
    }

    /// `parse` on the variable as this process's environment has it.
    public static func read<Value>(_ variable: String, accepting choices: [(name: String, value: Value)]) -> Result<Value?, SettingValueError> {
        parse(variable, getenv(variable).map { String(cString: $0) }, accepting: choices)
    }
}

/// A `STARLING_*` variable set to something it does not accept, or to a choice this machine cannot run.
public struct SettingValueError: Error, Equatable, CustomStringConvertible {
    public let variable: String
    public let value: String
    /// The names the variable accepts, in the order the message lists them.
    public let accepted: [String]
    /// Why an accepted value cannot run here (STARLING_KERNELS=avx512 on an AVX2 CPU), or nil for a value not accepted.
    public var unavailable: String?

    public init(variable: String, value: String, accepted: [String], unavailable: String? = nil) {
        (self.variable, self.value, self.accepted, self.unavailable) = (variable, value, accepted, unavailable)
    }

    /// One line: "STARLING_BLOCK=12: expected 8 or 16".
    public var description: String {
        let list = accepted.count > 1 ? accepted.dropLast().joined(separator: ", ") + " or " + accepted[accepted.count - 1]
            : accepted.joined()
        return "\(variable)=\(value): " + (unavailable ?? "expected \(list)")
    }
}
