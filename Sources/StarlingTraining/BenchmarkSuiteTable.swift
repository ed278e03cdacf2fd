import Foundation
import StarlingNN

/// The suite's rows (Starling's and the PyTorch peer's, JSON lines) as one Markdown table with ratios, and the targets
/// of issue 18 item 5 per entry: `starling bench --suite-table FILE`, which Launch/bench-suite.sh runs on one run's rows.
public enum SuiteTable {
    /// The rows in `text`: every line holding a JSON object after an optional "suite-row " prefix; other lines are
    /// skipped (the wrapper's log). A malformed row throws, naming its line.
    public static func rows(parsing text: String, file: String) throws -> [BenchmarkSuite.Row] {
        var rows: [BenchmarkSuite.Row] = []
        let decoder = JSONDecoder()
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("suite-row ") { line = String(line.dropFirst("suite-row ".count)) }
            guard line.hasPrefix("{") else { continue }
            do {
                rows.append(try decoder.decode(BenchmarkSuite.Row.self, from: Data(line.utf8)))
            } catch {
                throw TrainingError("\(file):\(number + 1): not a suite row (\(error.localizedDescription))")
            }
        }
        return rows
    }

    static func number(_ value: Double) -> String {
        switch value {
        case 1000...:
            // Thousands separated by commas, as BENCHMARKS.md writes them.
            var digits = String(Int(value.rounded())), grouped = ""
            while digits.count > 3 { grouped = "," + digits.suffix(3) + grouped; digits.removeLast(3) }
            return digits + grouped
        case 100...: return String(format: "%.0f", value)
        case 10...: return String(format: "%.1f", value)
        default: return String(format: "%.2f", value)
        }
    }

    /// The cores a Starling row ran on: ranks x threads, or replicas x one thread.
    static func cores(_ row: BenchmarkSuite.Row) -> Int { row.ranks * row.threads * (row.replicas ?? 1) }

    static func layout(_ row: BenchmarkSuite.Row) -> String {
        if row.side == "starling", let replicas = row.replicas { return "1 process x \(replicas) replicas" }
        return row.side == "starling" ? "\(row.ranks) rank\(row.ranks == 1 ? "" : "s") x \(row.threads)"
            : "\(row.threads) thread\(row.threads == 1 ? "" : "s")\(row.layout.map { ", \($0)" } ?? "")"
    }

    static func milliseconds(_ b: BenchmarkSuite.Breakdown?) -> String {
        guard let b else { return "-" }
        return [b.forward, b.backward, b.allreduce, b.optimizer, b.data].map { String(format: "%.1f", $0 * 1000) }.joined(separator: " / ")
    }

    /// The fastest PyTorch row of `entry` on `threads` threads (over its memory layouts).
    static func bestPeer(_ rows: [BenchmarkSuite.Row], entry: String, threads: Int) -> BenchmarkSuite.Row? {
        rows.filter { $0.side == "pytorch" && $0.entry == entry && $0.threads == threads }.max { $0.trainImagesPerSecond < $1.trainImagesPerSecond }
    }

    /// Per entry, one line per Starling layout beside PyTorch's best on as many threads, then the whole machine's best
    /// against PyTorch's best with the targets (training >= 2x, peak memory <= 1/2, and for SSD7 >= 60 % of sgemm).
    public static func markdown(_ rows: [BenchmarkSuite.Row]) -> String {
        var lines = [
            "| model (batch) | Starling layout | Starling images/s | PyTorch best (same threads) | ratio | GFLOP/s (% of sgemm) | peak MB Starling / PyTorch | Starling step ms: fwd / bwd / allreduce / optim / data | inference images/s Starling / PyTorch |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        var entries: [String] = []
        for row in rows where !entries.contains(row.entry) { entries.append(row.entry) }
        var summary: [String] = []
        for entry in entries {
            let ours = rows.filter { $0.side == "starling" && $0.entry == entry }
                .sorted { (Self.cores($0), $0.ranks, $0.replicas ?? 0) < (Self.cores($1), $1.ranks, $1.replicas ?? 0) }
            guard let first = ours.first else { continue }
            for row in ours {
                let peer = bestPeer(rows, entry: entry, threads: Self.cores(row))
                let gflops = row.trainGFLOPS.map { g in
                    number(g) + (row.sgemmGFLOPS.map { String(format: " (%.0f %%)", 100 * g / $0) } ?? "")
                } ?? "-"
                lines.append("| \(entry) (\(row.batch)) | \(layout(row)) | \(number(row.trainImagesPerSecond)) | "
                             + (peer.map { "\(number($0.trainImagesPerSecond)) (\($0.layout ?? "-"))" } ?? "-") + " | "
                             + (peer.map { String(format: "%.2fx", row.trainImagesPerSecond / $0.trainImagesPerSecond) } ?? "-") + " | \(gflops) | "
                             + "\(number(row.peakMB)) / " + (peer.map { number($0.peakMB) } ?? "-") + " | \(milliseconds(row.breakdown)) | "
                             + "\(number(row.inferenceImagesPerSecond)) / " + (peer.map { number($0.inferenceImagesPerSecond) } ?? "-") + " |")
            }
            // The whole machine: Starling's best layout on all its cores against PyTorch's best on as many threads.
            let machine = ours.map { Self.cores($0) }.max() ?? 1
            guard let best = ours.filter({ Self.cores($0) == machine }).max(by: { $0.trainImagesPerSecond < $1.trainImagesPerSecond }) else { continue }
            var verdict = "\(entry) (\(first.batch)), \(machine) cores: Starling \(number(best.trainImagesPerSecond)) images/s (\(layout(best)))"
            if let peer = bestPeer(rows, entry: entry, threads: machine) {
                let speed = best.trainImagesPerSecond / peer.trainImagesPerSecond, memory = best.peakMB / peer.peakMB
                verdict += String(format: ", PyTorch %@ (%@): %.2fx (target 2x: %@), peak memory %.2f of PyTorch's (target 0.5: %@)",
                                  number(peer.trainImagesPerSecond), peer.layout ?? "-", speed, speed >= 2 ? "met" : "not met",
                                  memory, memory <= 0.5 ? "met" : "not met")
                if peer.parameters != best.parameters {
                    verdict += "; parameters differ (Starling \(best.parameters), PyTorch \(peer.parameters))"
                }
            } else {
                verdict += ", no PyTorch peer"
            }
            if entry == "ssd7", let g = best.trainGFLOPS, let peak = best.sgemmGFLOPS {
                verdict += String(format: "; %.0f %% of sgemm (target 60 %%: %@)", 100 * g / peak, g >= 0.6 * peak ? "met" : "not met")
            }
            summary.append("- " + verdict)
        }
        return (lines + [""] + summary).joined(separator: "\n") + "\n"
    }
}
