/// Chooses a process's thread count by timing its own steady training steps (issue 18: one process must never train
/// slower for having more threads).
///
/// Whether threads pay depends on the step, not on the family's name: SSD7's 0.7 s steps run 1.8x faster on two
/// threads, fc-ae's 1 ms steps ran slower on two than on one (each short loop, sgemm and oneDNN call then waits for a
/// worker, and the prefetch thread wants a core too). A fixed threshold on FLOPs or elements would be one more number
/// tuned on one machine; timing the real step, with its data pipeline, on the machine it runs on needs none.
///
/// The schedule, step by step:
/// - settling: the run's first `settleSteps` steps on one thread, the count that costs least when it is the wrong one
///   (two threads lose up to 40 % on 1 ms steps, one thread loses 20-45 % on long ones). The first steps are not the
///   steady ones (buffers are faulted in, the allocator grows, the prefetch queue is full from before the first step):
///   deep-ae's two threads won while the first steps were timed and lost afterwards. The last `settleSteps / 2` of
///   them give the step's time, which sets the block length.
/// - `rounds` rounds in which each candidate runs a block: one step that is not timed (the switch: sleeping workers
///   wake, and the first step at a count makes its oneDNN plans), then `blockSteps` timed steps. The order alternates
///   round by round (ABBA) so that a drift in the machine's load falls on both alike. A block lasts about
///   `targetBlockSeconds`, and all the rounds together at most `budgetFraction` of the run's steps (at least one timed
///   step a block), so that on a short run the calibration stays a small share of it.
///
/// The settling and the block length are counted in steps from the run's planned length, which every rank knows; the
/// step times are agreed over the ranks (the largest: the slowest rank sets the step) after the settling and after
/// every round, so every rank switches at the same step and takes the same decision. The fastest candidate by its
/// median over rounds wins; a candidate `clearRatio` times slower than another in one round of blocks that lasted at
/// least `targetBlockSeconds` is dropped at once, which keeps the cost of timing a large model on one thread to a single
/// block.
public struct ThreadCalibration: Sendable, Equatable {
    /// Thread counts tried: all of them first, then one.
    public let candidates: [Int]
    public let rounds: Int
    public let targetBlockSeconds: Double
    /// Steps on one thread before anything is timed.
    public let settleSteps: Int
    /// The most steps the timed rounds may take (switch steps included).
    public let budgetSteps: Int
    /// The decision, once made (at once when there is only one candidate).
    public private(set) var chosen: Int?
    /// Seconds a step per candidate (in `candidates`' order), one entry per round, as the ranks agreed on them.
    public private(set) var secondsPerStep: [[Double]] = []
    /// Timed steps in each block, agreed by the ranks after the settling (nil before).
    public private(set) var blockSteps: Int?
    /// Steps the calibration has run so far.
    public private(set) var steps = 0

    private var settleSeconds = 0.0
    private var slot = 0, stepsInBlock = 0
    private var blockSeconds = 0.0
    private var roundSeconds: [Double]

    /// A candidate this many times slower than another in a round loses at once.
    public static let clearRatio = 1.5
    /// The longest block, in timed steps.
    public static let maximumBlockSteps = 32
    /// The settling's length bounds, in steps, and its share of the run between them.
    public static let settleStepsRange = 4...40
    public static let settleFraction = 0.02

    /// `plannedSteps`: the steps the run has left to train (the settling and the budget are shares of it).
    public init(threads: Int, plannedSteps: Int, rounds: Int = 3, targetBlockSeconds: Double = 0.03, budgetFraction: Double = 0.06) {
        candidates = threads > 1 ? [threads, 1] : [Swift.max(1, threads)]
        self.rounds = Swift.max(1, rounds)
        self.targetBlockSeconds = targetBlockSeconds
        let planned = Double(Swift.max(0, plannedSteps))
        settleSteps = Swift.min(Self.settleStepsRange.upperBound, Swift.max(Self.settleStepsRange.lowerBound, Int(planned * Self.settleFraction)))
        // At least one timed step after each switch step, in every block of every round.
        budgetSteps = Swift.max(2 * candidates.count * self.rounds, Int(planned * budgetFraction))
        roundSeconds = Array(repeating: 0, count: candidates.count)
        if candidates.count == 1 { chosen = candidates[0] }
    }

    /// The candidate index each slot of the current round times: 0, 1 in even rounds, 1, 0 in odd ones.
    private var roundOrder: [Int] {
        secondsPerStep.count % 2 == 0 ? Array(candidates.indices) : candidates.indices.reversed()
    }

    /// The thread count the next training step runs on.
    public var threadsForNextStep: Int {
        if let chosen { return chosen }
        if blockSteps == nil { return candidates[candidates.count - 1] }
        return candidates[roundOrder[slot]]
    }

    /// Records the seconds of the step just run on `threadsForNextStep`. When figures are due for agreement it returns
    /// them: the trainer takes each one's maximum over the ranks (on one process, as they are) and hands them to `agree`.
    public mutating func record(seconds: Double) -> [Double]? {
        guard chosen == nil else { return nil }
        steps += 1
        guard let blockSteps else {
            if steps > settleSteps - settleSteps / 2 { settleSeconds += seconds }
            return steps == settleSteps ? [settleSeconds / Double(settleSteps / 2)] : nil
        }
        stepsInBlock += 1
        guard stepsInBlock > 1 else { return nil }   // the switch step
        blockSeconds += seconds
        guard stepsInBlock == blockSteps + 1 else { return nil }
        roundSeconds[roundOrder[slot]] = blockSeconds / Double(blockSteps)
        (blockSeconds, stepsInBlock) = (0, 0)
        slot += 1
        guard slot == candidates.count else { return nil }
        slot = 0
        return roundSeconds
    }

    /// Takes the figures `record` returned, as agreed over the ranks: the settling's step time sets the block length, a
    /// round's times may end the calibration.
    public mutating func agree(_ figures: [Double]) {
        guard chosen == nil else { return }
        guard blockSteps != nil else {
            let perStep = Swift.max(figures.first ?? 0, 1e-6)
            let wanted = Int((targetBlockSeconds / perStep).rounded(.up))
            let affordable = budgetSteps / (rounds * candidates.count) - 1
            blockSteps = Swift.max(1, Swift.min(Self.maximumBlockSteps, wanted, affordable))
            return
        }
        secondsPerStep.append(figures)
        let medians = medianSecondsPerStep
        guard let best = medians.indices.min(by: { medians[$0] < medians[$1] }) else { return }
        // Only a block long enough to be a fair sample decides early: one 1 ms step against another can be 2x apart by
        // a single page fault or wake-up.
        let longEnough = Double(blockSteps ?? 1) * figures[best] >= targetBlockSeconds
        let clear = longEnough && figures.indices.contains { k in k != best && figures[k] > Self.clearRatio * figures[best] }
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
