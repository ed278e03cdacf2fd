/// Chooses a process's thread count from its own first training steps (issue 18: one process must never train slower
/// for having more threads).
///
/// Whether threads pay depends on the step, not on the family's name: SSD7's 0.7 s steps run 1.8x faster on two
/// threads, fc-ae's 1 ms steps ran slower on two than on one (each short loop, sgemm and oneDNN call then waits for a
/// worker, and the prefetch thread wants a core too). A fixed threshold on FLOPs or elements would be one more number
/// tuned on one machine; timing the real step, with its data pipeline, on the machine it runs on needs none.
///
/// The schedule, step by step: warm-up steps at every candidate (the first step at a thread count makes its oneDNN
/// plans and buffers; the all-threads step's time sets the block length), then `rounds` rounds in which each
/// candidate runs a block of consecutive steps, the order alternating round by round (ABBA) so that a drift in the
/// machine's load falls on both alike; a block lasts about `targetBlockSeconds` (at least one step), so short steps are
/// timed over many. After the warm-up and after every round the trainer has the ranks agree on the figures (the
/// largest over ranks: the slowest rank sets the step), so every rank switches at the same step and takes the same
/// decision. The fastest candidate by its median over rounds wins; a candidate 1.5x slower than another in one round
/// is dropped at once, which keeps the cost of timing a large model on one thread to a single block.
public struct ThreadCalibration: Sendable, Equatable {
    /// Thread counts tried: all of them first, then one.
    public let candidates: [Int]
    public let rounds: Int
    public let targetBlockSeconds: Double
    /// The decision, once made (at once when there is only one candidate).
    public private(set) var chosen: Int?
    /// Seconds a step per candidate (in `candidates`' order), one entry per round, as the ranks agreed on them.
    public private(set) var secondsPerStep: [[Double]] = []
    /// Steps in each timed block, agreed by the ranks after the warm-up (nil before).
    public private(set) var blockSteps: Int?
    /// Steps the calibration has run so far.
    public private(set) var steps = 0

    private var warmup: [Int]
    private var warmupSeconds = 0.0
    private var slot = 0, stepsInBlock = 0
    private var blockSeconds = 0.0
    private var roundSeconds: [Double]

    /// A candidate this many times slower than another in a round loses at once.
    public static let clearRatio = 1.5
    /// The longest block, in steps.
    public static let maximumBlockSteps = 64

    public init(threads: Int, rounds: Int = 3, targetBlockSeconds: Double = 0.05) {
        candidates = threads > 1 ? [threads, 1] : [Swift.max(1, threads)]
        self.rounds = Swift.max(1, rounds)
        self.targetBlockSeconds = targetBlockSeconds
        roundSeconds = Array(repeating: 0, count: candidates.count)
        // Two steps at all threads (the first allocates everything), one at each other count; the last all-threads
        // step is timed for the block length.
        warmup = candidates.count > 1 ? [candidates[0]] + candidates.dropFirst() + [candidates[0]] : []
        if candidates.count == 1 { chosen = candidates[0] }
    }

    /// The candidate index each slot of the current round times: 0, 1 in even rounds, 1, 0 in odd ones.
    private var roundOrder: [Int] {
        secondsPerStep.count % 2 == 0 ? Array(candidates.indices) : candidates.indices.reversed()
    }

    /// The thread count the next training step runs on.
    public var threadsForNextStep: Int {
        if let chosen { return chosen }
        if let next = warmup.first { return next }
        return candidates[roundOrder[slot]]
    }

    /// Records the seconds of the step just run on `threadsForNextStep`. When figures are due for agreement it returns
    /// them: the trainer takes each one's maximum over the ranks (on one process, as they are) and hands them to `agree`.
    public mutating func record(seconds: Double) -> [Double]? {
        guard chosen == nil else { return nil }
        steps += 1
        if !warmup.isEmpty {
            warmup.removeFirst()
            warmupSeconds = seconds
            return warmup.isEmpty ? [warmupSeconds] : nil
        }
        guard let blockSteps else { return nil }
        blockSeconds += seconds
        stepsInBlock += 1
        guard stepsInBlock == blockSteps else { return nil }
        roundSeconds[roundOrder[slot]] = blockSeconds / Double(blockSteps)
        (blockSeconds, stepsInBlock) = (0, 0)
        slot += 1
        guard slot == candidates.count else { return nil }
        slot = 0
        return roundSeconds
    }

    /// Takes the figures `record` returned, as agreed over the ranks: the warm-up's step time sets the block length, a
    /// round's times may end the calibration.
    public mutating func agree(_ figures: [Double]) {
        guard chosen == nil else { return }
        guard blockSteps != nil else {
            let perStep = Swift.max(figures.first ?? 0, 1e-6)
            blockSteps = Swift.max(1, Swift.min(Self.maximumBlockSteps, Int((targetBlockSeconds / perStep).rounded(.up))))
            return
        }
        secondsPerStep.append(figures)
        let medians = candidates.indices.map { k in median(secondsPerStep.map { $0[k] }) }
        guard let best = medians.indices.min(by: { medians[$0] < medians[$1] }) else { return }
        let clear = figures.indices.contains { k in k != best && figures[k] > Self.clearRatio * figures[best] }
        if secondsPerStep.count >= rounds || clear { chosen = candidates[best] }
    }

    /// The median seconds a step per candidate over the rounds run (for the log line).
    public var medianSecondsPerStep: [Double] {
        candidates.indices.map { k in median(secondsPerStep.map { $0[k] }) }
    }

    private func median(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return .infinity }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
