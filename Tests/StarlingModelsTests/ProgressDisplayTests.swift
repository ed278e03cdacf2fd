import Foundation
import Testing
@testable import StarlingModels

/// The progress display: an updating line on a terminal, plain lines without control characters everywhere else.
@Suite struct ProgressDisplayTests {
    @Test func modeFollowsTerminalAndLauncher() {
        let terminal = ["TERM": "xterm-256color"]
        #expect(ProgressDisplay.chooseMode(isTerminal: true, environment: terminal, worldSize: 1) == .live)
        #expect(ProgressDisplay.chooseMode(isTerminal: false, environment: terminal, worldSize: 1) == .plain)
        // Open MPI gives ranks a pseudo-terminal: isatty says yes, but the output may be going into a file.
        #expect(ProgressDisplay.chooseMode(isTerminal: true, environment: terminal.merging(["OMPI_COMM_WORLD_SIZE": "1"]) { $1 }, worldSize: 1) == .plain)
        #expect(ProgressDisplay.chooseMode(isTerminal: true, environment: terminal, worldSize: 2) == .plain)
        #expect(ProgressDisplay.chooseMode(isTerminal: true, environment: ["TERM": "dumb"], worldSize: 1) == .plain)
        #expect(ProgressDisplay.chooseMode(isTerminal: true, environment: [:], worldSize: 1) == .plain)
    }

    @Test func liveLineFitsTheTerminal() {
        for width in [20, 40, 60, 80, 200] {
            for step in [0, 7, 40] {
                let line = ProgressDisplay.liveLine(epoch: 3, epochs: 30, step: step, steps: 40, imagesPerSecond: 5123.4, eta: 75, loss: "0.12345", width: width)
                #expect(line.count < width, "\(width): \(line)")
                #expect(!line.contains("\r") && !line.contains("\n"))
            }
        }
        let wide = ProgressDisplay.liveLine(epoch: 3, epochs: 30, step: 10, steps: 40, imagesPerSecond: 5123.4, eta: 75, loss: "0.12345", width: 120)
        #expect(wide == "epoch 3/30 [#######-----------------------] 10/40 5123 img/s ETA 1m15s loss 0.12345")
        let narrow = ProgressDisplay.liveLine(epoch: 3, epochs: 30, step: 10, steps: 40, imagesPerSecond: 5123.4, eta: 75, loss: "0.12345", width: 50)
        #expect(!narrow.contains("[") && narrow.hasPrefix("epoch 3/30 10/40"))
        #expect((1...95).filter { ProgressDisplay.plainLineDue(step: $0 - 1, steps: 95) } == [9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 95])
    }

    /// Under mpirun the progress reaches a pipe through mpirun as whole lines: no carriage returns, no escapes.
    @Test func plainLinesUnderMPIRun() throws {
        let dir = Fixture.temporaryDirectory("progress-mpi")
        let run = try mpirun(2, ["train", "--model", "fc-ae", "--data", try Fixture.sampleHDF5(), "--epochs", "1", "--steps-per-epoch", "20",
                                 "--batch-size", "64", "--val-split", "none", "--out", dir])
        #expect(run.status == 0, "\(run.error)")
        let lines = run.output.split(separator: "\n").filter { $0.hasPrefix("epoch 1/1  step") }
        #expect(lines.count == 10, "\(run.output)")
        #expect(!run.output.contains("\r") && !run.output.contains("\u{1B}"))
    }
}
