import XCTest
@testable import StarlingDistributed

/// `STARLING_TIMELINE`'s summary on a made-up timeline of two replicas whose waits are known by construction.
final class TimelineTests: XCTestCase {
    /// Replica 0 reaches the sum 10 us before replica 1 and sleeps, leaving 10 us after replica 1 arrives; replica 1
    /// reaches the barrier 10 us before replica 0 and leaves 5 us after it arrives. 11 steps of 100 us: 10 complete,
    /// the first left out as warm-up.
    func testSummaryNamesWhoWaitsForWhomAndTheWakeUp() {
        typealias E = TimelineSummary.Event
        func track(_ name: String, _ step: (Double) -> [(Double, TimelineEvent, UInt64)]) -> TimelineSummary.Track {
            var events: [E] = []
            for s in 0..<11 {
                let t = Double(s) * 100
                events.append(E(time: t, cpu: Double(s) * 60, code: .stepStart, aux: 0))
                if s < 10 { events += step(t).map { E(time: $0.0, cpu: 0, code: $0.1, aux: $0.2) } }
            }
            return TimelineSummary.Track(name: name, events: events, dropped: 0)
        }
        let zero = track("replica-0") { t in
            [(t + 5, .batchReady, 0), (t + 25, .forwardDone, 0), (t + 60, .backwardDone, 0),
             (t + 60, .rendezvousEnter, 0), (t + 62, .rendezvousSleep, 0), (t + 80, .rendezvousLeave, 0), (t + 82, .reduceDone, 0),
             (t + 90, .updateDone, 0), (t + 90, .rendezvousEnter, 0), (t + 90, .rendezvousLeave, 1), (t + 90, .stepEnd, 0)]
        }
        let one = track("replica-1") { t in
            [(t + 5, .batchReady, 0), (t + 30, .forwardDone, 0), (t + 70, .backwardDone, 0),
             (t + 70, .rendezvousEnter, 0), (t + 70, .rendezvousLeave, 1), (t + 72, .reduceDone, 0),
             (t + 80, .updateDone, 0), (t + 80, .rendezvousEnter, 0), (t + 95, .rendezvousLeave, 0), (t + 95, .stepEnd, 0)]
        }
        let prefetch = TimelineSummary.Track(name: "prefetch", events: (1..<10).flatMap { s -> [E] in
            // 20 us a step, half of it while replica 0 waits at the sum (60-80).
            let t = Double(s) * 100
            return [E(time: t + 50, cpu: 0, code: .makeStart, aux: 0), E(time: t + 70, cpu: 0, code: .makeEnd, aux: 0)]
        }, dropped: 0)
        let text = TimelineSummary(tracks: [zero, one, prefetch]).text
        XCTAssertTrue(text.contains("steps 2-10 (9 steps, the first 1 left out)"), text)
        XCTAssertTrue(text.contains("replica-0: barrier 0.0 / 0.0; last 9, slept 0 of 9; sum 10.0 / 10.0; last 0, slept 9 of 9"), text)
        XCTAssertTrue(text.contains("replica-1: barrier 10.0 / 5.0; last 0, slept 0 of 9; sum 0.0 / 0.0; last 9, slept 0 of 9"), text)
        // 100 us a step, 20 of it at rendezvous; 60 us of CPU: 20 us off the CPU while working.
        XCTAssertTrue(text.contains("replica-0: outside rendezvous 80.0 us a step, of it off the CPU 20.0 (median 20.0); CPU inside rendezvous 0.0"), text)
        XCTAssertTrue(text.contains("prefetch: 9 batches made in the window, 20.0 us a step, 50.0 % of it while some compute track waited"), text)
        // Phases of replica 0 (data 5, forward 20, backward 35, sum 22, update 8, barrier 0, tail 10), a 100 us step
        // and 60 us of CPU.
        let row = text.split(separator: "\n").first { $0.hasPrefix("  replica-0 ") }.map(String.init) ?? ""
        let numbers = row.split(whereSeparator: { $0 == " " || $0 == "," }).dropFirst().compactMap { Double($0) }
        XCTAssertEqual(numbers, [5, 5, 20, 20, 35, 35, 22, 22, 8, 8, 0, 0, 10, 10, 100, 100, 60], row)
    }

    /// Unset (as in the tests), the timeline records nothing and a mark is harmless on any thread.
    func testOffByDefault() {
        XCTAssertFalse(Timeline.isOn)
        Timeline.mark(.stepStart)
        XCTAssertNil(try Timeline.finish())
    }
}
