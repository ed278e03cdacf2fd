import Foundation
#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// How training shows its progress: on a terminal one line that updates in place (bar, rate, ETA, loss), cut to the
/// terminal's width; in a log file, a pipe or under mpirun plain lines, about ten an epoch, with no control characters.
///
/// Open MPI hands each rank a pseudo-terminal for its output, so `isatty` says yes under mpirun even when mpirun
/// writes into a file; the updating line then reached log files as carriage returns without newlines, several
/// steps run together on one line. Under a launcher the plain lines are used whatever `isatty` says.
public struct ProgressDisplay {
    public enum Mode: Equatable, Sendable { case live, plain }

    public let mode: Mode
    /// Columns of the terminal (live mode), at least 20.
    public let width: Int
    /// True while a live line is on screen without its newline.
    private var lineOpen = false

    public init(mode: Mode, width: Int = 80) {
        self.mode = mode
        self.width = max(20, width)
    }

    /// The display for this process's standard output.
    public static func forStandardOutput(worldSize: Int) -> ProgressDisplay {
        let mode = chooseMode(isTerminal: isatty(STDOUT_FILENO) != 0, environment: ProcessInfo.processInfo.environment, worldSize: worldSize)
        var size = winsize()
        let columns = ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 80
        return ProgressDisplay(mode: mode, width: columns)
    }

    /// Live only on a terminal that understands carriage returns, outside any MPI launcher.
    public static func chooseMode(isTerminal: Bool, environment: [String: String], worldSize: Int) -> Mode {
        let launched = worldSize > 1 || ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"].contains { environment[$0] != nil }
        let dumb = environment["TERM"].map { $0.isEmpty || $0 == "dumb" } ?? true
        return isTerminal && !launched && !dumb ? .live : .plain
    }

    /// Whether step `step` (0-based) of `steps` gets a plain line: about ten an epoch and always the last.
    public static func plainLineDue(step: Int, steps: Int) -> Bool {
        step + 1 == steps || (step + 1) % max(1, steps / 10) == 0
    }

    /// The plain line, as logs have always had it.
    public static func plainLine(epoch: Int, epochs: Int, step: Int, steps: Int, imagesPerSecond: Double, eta: Double, loss: String) -> String {
        "epoch \(epoch)/\(epochs)  step \(step)/\(steps)  \(Int(imagesPerSecond)) img/s  ETA \(formatDuration(eta))  loss \(loss)"
    }

    /// The live line, at most `width` columns: `epoch 3/30 [#####-----] 12/40 5123 img/s ETA 1.2s loss 0.123`.
    /// The bar takes what the figures leave, and goes when the terminal is too narrow for it.
    public static func liveLine(epoch: Int, epochs: Int, step: Int, steps: Int, imagesPerSecond: Double, eta: Double, loss: String, width: Int) -> String {
        let head = "epoch \(epoch)/\(epochs) "
        let tail = " \(step)/\(steps) \(Int(imagesPerSecond)) img/s ETA \(formatDuration(eta)) loss \(loss)"
        // One column is left free: writing the last column makes some terminals wrap before the carriage return.
        let room = width - 1 - head.count - tail.count - 2
        guard room >= 5 else { return String((head + tail.dropFirst()).prefix(width - 1)) }
        let barWidth = min(room, 30)
        let filled = steps > 0 ? min(barWidth, barWidth * step / steps) : 0
        return head + "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: barWidth - filled) + "]" + tail
    }

    /// Shows a step's progress: live, the line rewritten in place; plain, a line when one is due.
    public mutating func show(epoch: Int, epochs: Int, step: Int, steps: Int, imagesPerSecond: Double, eta: Double, loss: String,
                              plain log: (String) -> Void) {
        switch mode {
        case .live:
            let line = Self.liveLine(epoch: epoch, epochs: epochs, step: step, steps: steps, imagesPerSecond: imagesPerSecond,
                                     eta: eta, loss: loss, width: width)
            // Carriage return, the line, then erase what a longer previous line left to its right.
            print("\r" + line + "\u{1B}[K", terminator: "")
            lineOpen = true
            if step == steps { finishLine() } else { fflush(nil) }
        case .plain:
            log(Self.plainLine(epoch: epoch, epochs: epochs, step: step, steps: steps, imagesPerSecond: imagesPerSecond, eta: eta, loss: loss))
        }
    }

    /// Ends a live line (before any other output, so that nothing is written over it).
    public mutating func finishLine() {
        guard lineOpen else { return }
        print("")
        fflush(nil)
        lineOpen = false
    }
}
