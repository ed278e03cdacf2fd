import Foundation
import CCPU
#if canImport(Glibc)
import Glibc
#endif

/// A phase boundary in a training step, a rendezvous or the data pipeline (`Timeline`).
public enum TimelineEvent: UInt8, CaseIterable, Sendable {
    /// A step starts (before the batch is taken).
    case stepStart
    /// The step's batch is in hand.
    case batchReady
    /// The forward pass and the loss are done.
    case forwardDone
    /// Backward is done and the gradients settled.
    case backwardDone
    /// The gradients' sum (reduce-scatter or allreduce) is done, with the step's scalars agreed.
    case reduceDone
    /// The optimizer's update is done.
    case updateDone
    /// The step's last collective (the replicas' barrier, the ranks' allgather) is done.
    case stepEnd
    /// A replica arrives at a rendezvous.
    case rendezvousEnter
    /// It has polled without the others arriving and goes to sleep.
    case rendezvousSleep
    /// It leaves the rendezvous, every replica having arrived; `aux` 1 where it was the last to arrive.
    case rendezvousLeave
    /// A replica's share of a sum starts and ends.
    case sumStart, sumEnd
    /// A batch is made (read, decoded, its targets encoded), by the prefetch thread or by the consumer itself.
    case makeStart, makeEnd
}

/// One thread's events, in preallocated arrays written by that thread only (`Timeline.register`).
final class TimelineTrack: @unchecked Sendable {
    let name: String
    let capacity: Int
    let times: UnsafeMutablePointer<UInt64>
    let aux: UnsafeMutablePointer<UInt64>
    let cpu: UnsafeMutablePointer<UInt64>
    let codes: UnsafeMutablePointer<UInt8>
    var count = 0
    var dropped = 0

    init(name: String, capacity: Int) {
        self.name = name
        self.capacity = capacity
        times = .allocate(capacity: capacity)
        aux = .allocate(capacity: capacity)
        cpu = .allocate(capacity: capacity)
        codes = .allocate(capacity: capacity)
    }

    deinit { times.deallocate(); aux.deallocate(); cpu.deallocate(); codes.deallocate() }

    @inline(__always)
    func append(_ event: TimelineEvent, aux value: UInt64) {
        guard count < capacity else { dropped += 1; return }
        times[count] = Timeline.nowNanoseconds()
        cpu[count] = Timeline.threadCPUNanoseconds()
        aux[count] = value
        codes[count] = event.rawValue
        count += 1
    }
}

/// A per-thread record of where training's wall time goes (`STARLING_TIMELINE=path`): monotonic timestamps at each
/// phase boundary of a step (batch in hand, forward, backward, the sum, the update, the step's last collective), at
/// each rendezvous (arrival, sleep after the poll, leave) and around each batch the data pipeline makes, in arrays
/// allocated once a thread. `finish` writes every event to the path (tab-separated) and prints a summary: each
/// replica's phases a step, how long it waits at each rendezvous and for what (the other replica still working, or
/// its own wake-up once the last one arrived), and what the prefetch thread ran beside the replicas. Unset, `mark`
/// reads one static and returns: nothing is allocated or timed.
public enum Timeline {
    /// Events kept a thread (about 6.5 MB of arrays each); later ones are counted as dropped. A replica step of the
    /// autoencoders makes ~15: ~17,000 steps.
    static let capacity = 1 << 18

    public static let recorder: TimelineRecorder? = {
        guard let value = getenv("STARLING_TIMELINE").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        return TimelineRecorder(path: value)
    }()

    public static var isOn: Bool { recorder != nil }

    /// Gives the calling thread a track named `name` (a replica's, a prefetch thread's); its marks go there.
    public static func register(_ name: String) { recorder?.register(name) }

    /// Records `event` on the calling thread's track (nothing where the thread has none, or the timeline is off).
    @inline(__always)
    public static func mark(_ event: TimelineEvent, aux: UInt64 = 0) {
        guard let recorder else { return }
        recorder.mark(event, aux: aux)
    }

    /// Writes the events to the path (`.rank` appended where there are several ranks) and returns the summary
    /// (nil when off). The recording threads must have stopped.
    public static func finish(rank: Int = 0, ranks: Int = 1) throws -> String? {
        guard let recorder else { return nil }
        return try recorder.finish(path: ranks > 1 ? "\(recorder.path).\(rank)" : recorder.path)
    }

    @inline(__always)
    static func nowNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    static func threadCPUNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }
}

/// The tracks of a run with `STARLING_TIMELINE` set.
public final class TimelineRecorder: @unchecked Sendable {
    public let path: String
    private let lock = NSLock()
    private var tracks: [TimelineTrack] = []
    private var key = pthread_key_t()

    init(path: String) {
        self.path = path
        pthread_key_create(&key, nil)
    }

    func register(_ name: String) {
        let track = TimelineTrack(name: name, capacity: Timeline.capacity)
        lock.withLock { tracks.append(track) }
        // The recorder holds the track for the process's life: the thread's pointer never dangles.
        pthread_setspecific(key, Unmanaged.passUnretained(track).toOpaque())
    }

    @inline(__always)
    func mark(_ event: TimelineEvent, aux: UInt64) {
        guard let raw = pthread_getspecific(key) else { return }
        Unmanaged<TimelineTrack>.fromOpaque(raw).takeUnretainedValue().append(event, aux: aux)
    }

    func finish(path: String) throws -> String {
        let all = lock.withLock { tracks }
        let origin = all.compactMap { $0.count > 0 ? $0.times[0] : nil }.min() ?? 0
        var text = "track\tname\tevent\tmicroseconds\tcpu_microseconds\taux\n"
        for (t, track) in all.enumerated() {
            for i in 0..<track.count {
                let us = Double(track.times[i] &- origin) / 1000
                let cpu = Double(track.cpu[i]) / 1000
                text += "\(t)\t\(track.name)\t\(TimelineEvent(rawValue: track.codes[i]).map { "\($0)" } ?? "?")\t\(us)\t\(cpu)\t\(track.aux[i])\n"
            }
        }
        // Written whole or not at all, as every output of a run.
        do { try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic) } catch { throw TimelineError(path: path) }
        return TimelineSummary(tracks: all.map(TimelineSummary.Track.init)).text
    }
}

public struct TimelineError: Error, CustomStringConvertible {
    public let path: String
    public var description: String { "STARLING_TIMELINE=\(path): cannot write the timeline there" }
}

/// The summary of a timeline: per compute track (a replica, a rank, one process), the phases of its steps; per
/// rendezvous, who waited for whom and how long the waker's release took to reach the sleeper; what the other
/// threads (the prefetch thread) ran and whether it overlapped the replicas' work or their waits.
struct TimelineSummary {
    struct Event { var time: Double; var cpu: Double; var code: TimelineEvent; var aux: UInt64 }
    struct Track {
        var name: String
        var events: [Event]
        var dropped: Int
        init(name: String, events: [Event], dropped: Int) { (self.name, self.events, self.dropped) = (name, events, dropped) }
        init(_ t: TimelineTrack) {
            name = t.name
            dropped = t.dropped
            events = (0..<t.count).map {
                Event(time: Double(t.times[$0]) / 1000, cpu: Double(t.cpu[$0]) / 1000, code: TimelineEvent(rawValue: t.codes[$0]) ?? .stepStart, aux: t.aux[$0])
            }
        }
    }

    /// One rendezvous on one track: arrival, when it began to sleep (nil: the poll saw the others), leave, whether
    /// it arrived last, and which step phase it ends (the sum's or the step's end).
    struct Rendezvous { var enter: Double; var sleep: Double?; var leave: Double; var last: Bool; var phase: String; var cpu = 0.0 }

    /// A step's phases on one track, in microseconds, and its CPU (nil for the last step).
    struct Step {
        var start: Double
        var phases: [String: Double] = [:]
        var rendezvous: [Rendezvous] = []
        var next: Double?
        var cpu: Double?
    }

    static let phaseNames = ["data", "forward", "backward", "sum", "update", "barrier", "tail"]
    let tracks: [Track]

    static func steps(_ track: Track) -> [Step] {
        var steps: [Step] = []
        var current: Step?
        var previous: (TimelineEvent, Double) = (.stepStart, 0)
        var cpuStart = 0.0
        var open: Rendezvous?
        let phaseOf: [TimelineEvent: String] = [.batchReady: "data", .forwardDone: "forward", .backwardDone: "backward",
                                                 .reduceDone: "sum", .updateDone: "update", .stepEnd: "barrier"]
        for e in track.events {
            switch e.code {
            case .stepStart:
                if var s = current {
                    s.phases["tail", default: 0] += e.time - previous.1
                    s.next = e.time
                    s.cpu = e.cpu - cpuStart
                    steps.append(s)
                }
                current = Step(start: e.time)
                cpuStart = e.cpu
                previous = (.stepStart, e.time)
            case .batchReady, .forwardDone, .backwardDone, .reduceDone, .updateDone, .stepEnd:
                guard var s = current, let name = phaseOf[e.code] else { continue }
                s.phases[name, default: 0] += e.time - previous.1
                current = s
                previous = (e.code, e.time)
            case .rendezvousEnter:
                open = Rendezvous(enter: e.time, sleep: nil, leave: e.time, last: false, phase: "", cpu: -e.cpu)
            case .rendezvousSleep:
                open?.sleep = e.time
            case .rendezvousLeave:
                guard var r = open, var s = current else { continue }
                r.leave = e.time
                r.cpu += e.cpu
                r.last = e.aux == 1
                // The phase it ends: the sum's after backward, the barrier's after the update, else what it lies in.
                r.phase = previous.0 == .backwardDone ? "sum" : previous.0 == .updateDone ? "barrier" : "\(previous.0)"
                s.rendezvous.append(r)
                current = s
                open = nil
            default: continue
            }
        }
        return steps
    }

    static func median(_ xs: [Double]) -> Double {
        guard !xs.isEmpty else { return 0 }
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func f(_ x: Double) -> String { String(format: "%.1f", x) }

    var text: String {
        let compute = tracks.filter { $0.events.contains { $0.code == .stepStart } }
        let others = tracks.filter { t in !t.events.contains { $0.code == .stepStart } && !t.events.isEmpty }
        var lines: [String] = []
        guard !compute.isEmpty else { return "timeline: no training steps recorded" }
        // The first tenth of the steps (warm-up: caches, oneDNN's first calls) is left out of every figure.
        let all = compute.map { Self.steps($0) }
        let n = all.map(\.count).min() ?? 0
        let skip = n / 10
        let window = skip..<n
        guard !window.isEmpty, let first = all.map({ $0[skip].start }).min(), let end = all.compactMap({ $0[n - 1].next }).max() else {
            return "timeline: too few steps recorded"
        }
        let wall = end - first
        lines.append("timeline: steps \(skip + 1)-\(n) (\(window.count) steps, the first \(skip) left out), \(Self.f(wall / 1000)) ms, \(Self.f(wall / Double(window.count))) us a step; " +
                     "microseconds a step (mean, median)")
        lines.append("  track         " + Self.phaseNames.map { $0.padding(toLength: 15, withPad: " ", startingAt: 0) }.joined() + "step           cpu (mean)")
        for (k, track) in compute.enumerated() {
            let steps = Array(all[k][window])
            var row = "  " + track.name.padding(toLength: 14, withPad: " ", startingAt: 0)
            for p in Self.phaseNames {
                let xs = steps.map { $0.phases[p] ?? 0 }
                row += "\(Self.f(xs.reduce(0, +) / Double(xs.count))), \(Self.f(Self.median(xs)))".padding(toLength: 15, withPad: " ", startingAt: 0)
            }
            let total = steps.compactMap { s in s.next.map { $0 - s.start } }
            let cpu = steps.compactMap(\.cpu)
            row += "\(Self.f(total.reduce(0, +) / Double(max(1, total.count)))), \(Self.f(Self.median(total)))".padding(toLength: 15, withPad: " ", startingAt: 0)
            row += "\(Self.f(cpu.reduce(0, +) / Double(max(1, cpu.count))))"
            lines.append(row)
        }
        // Off the CPU outside the rendezvous: preempted (or blocked on a lock) while working, which no rendezvous causes.
        for (k, track) in compute.enumerated() {
            let steps = all[k][window].compactMap { s in s.next.flatMap { next in s.cpu.map { (step: s, next: next, cpu: $0) } } }
            guard !steps.isEmpty else { continue }
            let work = steps.map { s in (s.next - s.step.start) - s.step.rendezvous.reduce(0) { $0 + $1.leave - $1.enter } }
            let workCPU = steps.map { s in s.cpu - s.step.rendezvous.reduce(0) { $0 + $1.cpu } }
            let waitCPU = steps.map { s in s.step.rendezvous.reduce(0) { $0 + $1.cpu } }
            let off = zip(work, workCPU).map { $0 - $1 }
            lines.append("  \(track.name): outside rendezvous \(Self.f(work.reduce(0, +) / Double(steps.count))) us a step, " +
                         "of it off the CPU \(Self.f(off.reduce(0, +) / Double(steps.count))) (median \(Self.f(Self.median(off)))); " +
                         "CPU inside rendezvous \(Self.f(waitCPU.reduce(0, +) / Double(steps.count)))")
        }
        // Rendezvous: where each track waits, for the others (arrival to the last arrival) and for its own wake-up (the
        // last arrival to its leave), by the phase it ends.
        if all.contains(where: { $0[window].contains { !$0.rendezvous.isEmpty } }) {
            lines.append("  rendezvous (microseconds a step: waiting for the others to arrive / from the last arrival to leaving; arrived last; slept):")
            for (k, track) in compute.enumerated() {
                var waits: [String: (others: Double, wake: Double, last: Int, slept: Int, count: Int)] = [:]
                for i in window {
                    let mine = all[k][i].rendezvous
                    for (j, r) in mine.enumerated() {
                        // The last arrival over every track at the same rendezvous (the same index in the same step).
                        let arrivals = all.compactMap { $0[i].rendezvous.count > j ? $0[i].rendezvous[j].enter : nil }
                        let lastArrival = arrivals.max() ?? r.enter
                        var w = waits[r.phase] ?? (0, 0, 0, 0, 0)
                        w.others += max(0, lastArrival - r.enter)
                        w.wake += max(0, r.leave - max(lastArrival, r.enter))
                        w.last += r.last ? 1 : 0
                        w.slept += r.sleep != nil ? 1 : 0
                        w.count += 1
                        waits[r.phase] = w
                    }
                }
                let steps = Double(window.count)
                let parts = waits.sorted { $0.key < $1.key }.map { p, w in
                    return "\(p) \(Self.f(w.others / steps)) / \(Self.f(w.wake / steps)); last \(w.last), slept \(w.slept) of \(w.count)"
                }
                lines.append("    \(track.name): " + parts.joined(separator: "; "))
            }
        }
        // Other threads (the prefetch thread): their work in the window, and how much of it ran while every compute
        // track was working (outside any rendezvous: one thread more than the cores where those fill them).
        for track in others {
            var made: [(Double, Double)] = []
            var open: Double?
            for e in track.events {
                if e.code == .makeStart { open = e.time }
                if e.code == .makeEnd, let s = open { made.append((s, e.time)); open = nil }
            }
            let inside = made.filter { $0.0 >= first && $0.1 <= end }
            let busy = inside.reduce(0) { $0 + $1.1 - $1.0 }
            // Intervals in which some compute track waits at a rendezvous.
            var waiting: [(Double, Double)] = []
            for k in all.indices { for s in all[k][window] { for r in s.rendezvous { waiting.append((r.enter, r.leave)) } } }
            waiting.sort { $0.0 < $1.0 }
            var merged: [(Double, Double)] = []
            for w in waiting {
                if let l = merged.last, w.0 <= l.1 { merged[merged.count - 1].1 = max(l.1, w.1) } else { merged.append(w) }
            }
            var overlap = 0.0
            var j = 0
            for m in inside {
                while j < merged.count && merged[j].1 < m.0 { j += 1 }
                var q = j
                while q < merged.count && merged[q].0 < m.1 {
                    overlap += max(0, min(m.1, merged[q].1) - max(m.0, merged[q].0))
                    q += 1
                }
            }
            lines.append("  \(track.name): \(inside.count) batches made in the window, \(Self.f(busy / Double(window.count))) us a step, " +
                         "\(Self.f(busy > 0 ? 100 * overlap / busy : 0)) % of it while some compute track waited at a rendezvous")
        }
        // Batches a compute track made itself (none ready from the prefetcher).
        for track in compute {
            var count = 0
            var total = 0.0
            var open: Double?
            for e in track.events where e.time >= first && e.time <= end {
                if e.code == .makeStart { open = e.time }
                if e.code == .makeEnd, let s = open { count += 1; total += e.time - s; open = nil }
            }
            if count > 0 { lines.append("  \(track.name) made \(count) batches itself, \(Self.f(total / Double(window.count))) us a step") }
        }
        let dropped = tracks.reduce(0) { $0 + $1.dropped }
        if dropped > 0 { lines.append("  \(dropped) events dropped (more than \(Timeline.capacity) on a thread)") }
        return lines.joined(separator: "\n")
    }
}
