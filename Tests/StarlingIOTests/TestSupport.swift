import Foundation
import Testing

/// Runs `body` with a fresh directory under the system temporary directory and removes it afterwards.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("starling-io-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url.path)
}

func withTemporaryDirectoryAsync(_ body: (String) async throws -> Void) async throws {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("starling-io-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    try await body(url.path)
}

func directoryContents(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? NSNumber)?.intValue ?? -1
}

/// Expects `body` to throw an `E` whose description is one line and contains every string in `parts`.
func expectError<E: Error & CustomStringConvertible>(
    _ errorType: E.Type, containing parts: [String], sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected \(E.self) containing \(parts), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as E {
        let text = error.description
        #expect(!text.contains("\n"), "error is not one line: \(text)", sourceLocation: sourceLocation)
        for part in parts {
            #expect(text.contains(part), "\"\(text)\" does not contain \"\(part)\"", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected \(E.self), got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
}

/// The team's real data, beside the repository (`../shared/data`), as in CI's checkout.
let sharedData: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<4 { url = url.deletingLastPathComponent() }   // TestSupport.swift, StarlingIOTests, Tests, repository
    return url.appendingPathComponent("shared/data").path
}()
