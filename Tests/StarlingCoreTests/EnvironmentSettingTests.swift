import Foundation
import Testing
@testable import StarlingCore

/// The one reader of the `STARLING_*` choices (`EnvironmentSetting`): unset and empty are the default, an accepted
/// name is taken exactly as written, anything else is refused in one line naming the variable and what it accepts; and
/// the variables that use it say so.
@Suite struct EnvironmentSettingTests {
    static let choices: [(name: String, value: Int)] = [("8", 8), ("16", 16), ("32", 32)]

    @Test func acceptsItsValuesAndDefaultsWhenUnset() {
        #expect(EnvironmentSetting.parse("STARLING_X", nil, accepting: Self.choices) == .success(nil))
        #expect(EnvironmentSetting.parse("STARLING_X", "", accepting: Self.choices) == .success(nil))
        #expect(EnvironmentSetting.parse("STARLING_X", "16", accepting: Self.choices) == .success(16))
        #expect(EnvironmentSetting.parse("STARLING_X", "32", accepting: Self.choices) == .success(32))
    }

    @Test func refusesEverythingElseInOneLine() {
        for bad in ["12", "016", " 8", "8 ", "sixteen", "0x10"] {
            let result = EnvironmentSetting.parse("STARLING_X", bad, accepting: Self.choices)
            #expect(result == .failure(SettingValueError(variable: "STARLING_X", value: bad, accepted: ["8", "16", "32"])))
            guard case .failure(let error) = result else { continue }
            #expect(error.description == "STARLING_X=\(bad): expected 8, 16 or 32")
            #expect(!error.description.contains("\n"))
        }
        #expect(SettingValueError(variable: "STARLING_Y", value: "b", accepted: ["a"]).description == "STARLING_Y=b: expected a")
        #expect(SettingValueError(variable: "STARLING_Y", value: "c", accepted: ["a", "b"]).description == "STARLING_Y=c: expected a or b")
    }

    /// `read` takes the value from this process's environment (a variable no other test sets).
    @Test func readsTheEnvironment() {
        let name = "STARLING_ENVIRONMENT_SETTING_TEST"
        unsetenv(name)
        #expect(EnvironmentSetting.read(name, accepting: Self.choices) == .success(nil))
        setenv(name, "8", 1)
        #expect(EnvironmentSetting.read(name, accepting: Self.choices) == .success(8))
        setenv(name, "9", 1)
        #expect(EnvironmentSetting.read(name, accepting: Self.choices)
                == .failure(SettingValueError(variable: name, value: "9", accepted: ["8", "16", "32"])))
        unsetenv(name)
    }

    /// The three settings read through it, with their own names and values.
    @Test func theSettingsUseIt() {
        #expect(WinogradSetting.parse("yes") == .failure(SettingValueError(variable: "STARLING_WINOGRAD", value: "yes", accepted: ["0", "1"])))
        #expect(KernelDispatch.level(named: "sse", supported: KernelDispatch.Level.allCases)
                == .failure(SettingValueError(variable: "STARLING_KERNELS", value: "sse", accepted: ["baseline", "avx2", "avx512"])))
        #expect(ChannelLayout.blockWidthSetting(value: "12")
                == .failure(SettingValueError(variable: "STARLING_BLOCK", value: "12", accepted: ["8", "16"])))
        #expect(ChannelLayout.blockWidthSetting(value: "16") == .success(16))
    }
}
