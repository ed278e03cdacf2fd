import Foundation
import Testing
@testable import StarlingModels

/// Data-parallel runs under mpirun, as users launch them.
@Suite(.serialized) struct DistributedTests {
    @Test(arguments: [2, 3])
    func collectivesAreExact(ranks: Int) throws {
        let r = try mpirun(ranks, ["check-mpi", "--count", "300000"])
        #expect(r.status == 0, "\(r.output)\(r.error)")
        #expect(r.output.components(separatedBy: "collectives ok").count - 1 == ranks)
    }

    /// ZeRO's reduce-scatter, allgather and gather in rounds of 1,000 elements over parts of unequal lengths (an
    /// empty one on 3 ranks), so that a round boundary falls inside a rank's part (check-mpi's hand-computed sums).
    @Test(arguments: [2, 3])
    func shardedCollectivesInRounds(ranks: Int) throws {
        let r = try mpirun(ranks, ["check-mpi", "--count", "10007", "--round", "1000"])
        #expect(r.status == 0, "\(r.output)\(r.error)")
        #expect(r.output.components(separatedBy: "collectives ok").count - 1 == ranks)
    }

    /// `--replicas 1`: the one-process runs are the reference of one replica at the full batch (without it, one process
    /// may choose two replicas, which train what two ranks train).
    func trainArguments(_ data: String, _ out: String, extra: [String] = []) -> [String] {
        ["train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "96",
         "--val-split", "none", "--seed", "4", "--out", out, "--replicas", "1"] + extra
    }

    /// N ranks at global batch B train the same model as one rank at batch B (20 steps).
    @Test(arguments: [2, 3])
    func ranksMatchOneProcess(ranks: Int) throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp\(ranks)")
        let one = try run(Fixture.starling, trainArguments(data, dir + "/one"))
        #expect(one.status == 0, "\(one.error)")
        let many = try mpirun(ranks, trainArguments(data, dir + "/many"))
        #expect(many.status == 0, "\(many.output)\(many.error)")
        #expect(many.output.contains("over \(ranks) rank(s)"))
        let a = try weights(dir + "/one/fc-ae-last.h5"), b = try weights(dir + "/many/fc-ae-last.h5")
        #expect(maxRelativeDifference(a, b) < 1e-5)
        #expect(try Checkpoint.load(from: dir + "/many/fc-ae-last.h5").state.worldSize == ranks)
    }

    /// sparse-ae's activity penalty is l1 sum(h) over a rank's local batch divided by that batch: averaged over the
    /// ranks it is the penalty over the global batch, so 2 ranks train the same model as one process, as fc-ae does.
    @Test func sparseAutoencoderRanksMatchOneProcess() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-sparse")
        func arguments(_ out: String) -> [String] { trainArguments(data, out).map { $0 == "fc-ae" ? "sparse-ae" : $0 } }
        let one = try run(Fixture.starling, arguments(dir + "/one"))
        #expect(one.status == 0, "\(one.error)")
        let many = try mpirun(2, arguments(dir + "/many"))
        #expect(many.status == 0, "\(many.output)\(many.error)")
        let a = try weights(dir + "/one/sparse-ae-last.h5"), b = try weights(dir + "/many/sparse-ae-last.h5")
        #expect(maxRelativeDifference(a, b) < 1e-5)
    }

    /// Two ranks stopped mid-run and resumed equal two ranks uninterrupted, bit for bit; resuming on another
    /// rank count continues the same sample order.
    @Test func resumeOnRanks() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-resume")
        #expect(try mpirun(2, trainArguments(data, dir + "/straight")).status == 0)
        #expect(try mpirun(2, trainArguments(data, dir + "/split", extra: ["--max-steps", "13"])).status == 0)
        let resumed = try mpirun(2, trainArguments(data, dir + "/split", extra: ["--resume", dir + "/split/fc-ae-last.h5"]))
        #expect(resumed.status == 0, "\(resumed.error)")
        #expect(resumed.output.contains("resumed at epoch 1, step 13"))
        #expect(try weights(dir + "/split/fc-ae-last.h5") == weights(dir + "/straight/fc-ae-last.h5"))
        // The same checkpoint resumed on one process.
        #expect(try mpirun(2, trainArguments(data, dir + "/other", extra: ["--max-steps", "13"])).status == 0)
        let single = try run(Fixture.starling, trainArguments(data, dir + "/other", extra: ["--resume", dir + "/other/fc-ae-last.h5"]))
        #expect(single.status == 0 && single.output.contains("resuming a run of 2 rank(s) on 1"))
        #expect(maxRelativeDifference(try weights(dir + "/other/fc-ae-last.h5"), try weights(dir + "/straight/fc-ae-last.h5")) < 1e-5)
    }

    /// A run stopped in the middle of a plateau schedule resumes on two ranks with rank 0's learning rate and plateau
    /// memory on both (a huge --min-delta makes every epoch a plateau epoch, halving the rate each time).
    @Test func resumeKeepsTheScheduleOnEveryRank() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-plateau")
        let schedule = ["--min-delta", "10", "--plateau-patience", "1", "--plateau-factor", "0.5", "--epochs", "4", "--steps-per-epoch", "3"]
        func args(_ out: String, _ extra: [String] = []) -> [String] {
            ["train", "--model", "fc-ae", "--data", data, "--batch-size", "64", "--val-split", "none", "--out", out] + schedule + extra
        }
        #expect(try mpirun(2, args(dir + "/straight")).status == 0)
        #expect(try mpirun(2, args(dir + "/split", ["--max-steps", "7"])).status == 0)   // step 1 of epoch 3, rate 5e-4
        let resumed = try mpirun(2, args(dir + "/split", ["--resume", dir + "/split/fc-ae-last.h5"]))
        #expect(resumed.status == 0, "\(resumed.error)")
        #expect(try weights(dir + "/split/fc-ae-last.h5") == weights(dir + "/straight/fc-ae-last.h5"))
        let rates = try String(contentsOfFile: dir + "/straight/fc-ae-log.csv", encoding: .utf8).split(separator: "\n").dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false)[4] }
        #expect(rates == ["0.001", "0.001", "0.0005", "0.00025"])
    }

    /// Models with several options start on 2 ranks: the ranks compare their configurations in a canonical form
    /// (a dictionary's printed order differs between processes).
    @Test func modelsWithSeveralOptionsStartOnTwoRanks() throws {
        let data = try Fixture.sampleHDF5()
        for family in ["deep-ae", "conv-vae", "denoising-ae"] {
            let dir = Fixture.temporaryDirectory("dp-options-\(family)")
            let r = try mpirun(2, ["train", "--model", family, "--data", data, "--epochs", "1", "--steps-per-epoch", "2",
                                   "--batch-size", "16", "--val-split", "none", "--out", dir])
            #expect(r.status == 0, "\(family): \(r.error)")
        }
    }

    /// Ranks started with different settings are refused before training.
    @Test func mismatchedRanksAreRefused() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-mismatch")
        // Open MPI's MPMD syntax gives each rank its own command line.
        let args = ["mpirun", "-np", "1", Fixture.starling] + trainArguments(data, dir, extra: ["--lr", "0.001"]) +
            [":", "-np", "1", Fixture.starling] + trainArguments(data, dir, extra: ["--lr", "0.002"])
        let r = try run("/usr/bin/env", args, environment: mpiEnvironment)
        #expect(r.status != 0)
        #expect((r.output + r.error).contains("different configurations"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/fc-ae-last.h5"))
    }

    /// Ranks started with different learning-rate schedules are refused too: each would step at its own rate.
    @Test func ranksWithDifferentSchedulesAreRefused() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-schedule-mismatch")
        let args = ["mpirun", "-np", "1", Fixture.starling] + trainArguments(data, dir, extra: ["--lr-schedule", "cosine"]) +
            [":", "-np", "1", Fixture.starling] + trainArguments(data, dir, extra: ["--lr-schedule", "cosine", "--warmup-epochs", "1"])
        let r = try run("/usr/bin/env", args, environment: mpiEnvironment)
        #expect(r.status != 0)
        #expect((r.output + r.error).contains("different configurations"))
        #expect((r.output + r.error).contains("the learning-rate schedule: rank 0 has cosine warmup-epochs=0.0"), "\(r.output)\(r.error)")
        #expect((r.output + r.error).contains("rank 1 has cosine warmup-epochs=1.0"), "\(r.output)\(r.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/fc-ae-last.h5"))
    }

    /// Killing one rank ends the job with a non-zero status within seconds; the last checkpoint still loads.
    @Test func killedRankEndsTheJob() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-kill")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["mpirun", "-np", "2", Fixture.starling, "train", "--model", "fc-ae", "--data", data, "--epochs", "100000",
                             "--batch-size", "32", "--val-split", "none", "--checkpoint-every", "5", "--out", dir]
        process.environment = childEnvironment(mpiEnvironment)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let checkpoint = dir + "/fc-ae-last.h5"
        var waited = 0.0
        while !FileManager.default.fileExists(atPath: checkpoint) && waited < 60 { usleep(100_000); waited += 0.1 }
        #expect(FileManager.default.fileExists(atPath: checkpoint))
        // Rank 1 is the second starling child of mpirun.
        let children = try run("/usr/bin/env", ["pgrep", "-P", "\(process.processIdentifier)", "-f", "starling"]).output
            .split(separator: "\n").compactMap { Int32($0) }.sorted()
        #expect(children.count == 2, "children: \(children)")
        guard let victim = children.last else { return }
        kill(victim, SIGKILL)
        let killedAt = Date()
        while process.isRunning && Date().timeIntervalSince(killedAt) < 20 { usleep(100_000) }
        #expect(!process.isRunning, "job still running 20 s after a rank was killed")
        #expect(Date().timeIntervalSince(killedAt) < 10)
        if !process.isRunning { #expect(process.terminationStatus != 0) }
        #expect(try Checkpoint.load(from: checkpoint).state.step > 0)
    }

    /// A stuck rank: the others warn after the watchdog's timeout and rank 0 names the one missing.
    @Test func watchdogNamesTheMissingRank() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-watchdog")
        var env = mpiEnvironment
        env["STARLING_TEST_STALL"] = "1:5:2.5"
        let r = try run("/usr/bin/env", ["mpirun", "-np", "2", "-x", "STARLING_TEST_STALL", Fixture.starling, "train", "--model", "fc-ae",
                                         "--data", data, "--epochs", "1", "--steps-per-epoch", "8", "--batch-size", "64",
                                         "--val-split", "none", "--watchdog-seconds", "1", "--out", dir], environment: env)
        #expect(r.status == 0, "\(r.error)")
        #expect(r.output.contains("watchdog: rank 0 has waited 1 s in the loss allreduce (MPI_Iallreduce) at step 5; ranks not yet at this collective: 1 (last seen at step 4)"),
                "\(r.output)")
    }

    /// SSD7 on the two real Udacity frames (resized to 96 x 160): two ranks with --sync-bn train the same model as one
    /// process on the same global batch, including SSD's global positive count and hard-negative cut-off.
    @Test func ssd7RanksMatchOneProcessWithSyncBN() throws {
        let udacity = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/udacity").path
        guard FileManager.default.fileExists(atPath: udacity + "/labels.csv") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("dp-ssd7")
        let data = dir + "/udacity.h5"
        let convert = try starling("data", "detection", "--format", "udacity", "--images", udacity + "/images", "--labels", udacity + "/labels.csv",
                                   "--out", data, "--height", "96", "--width", "160", "--val-fraction", "0")
        #expect(convert.status == 0, "\(convert.error)")
        let args = ["train", "--replicas", "1", "--model", "ssd7", "--data", data, "--epochs", "3", "--batch-size", "2", "--no-augment",
                    "--val-split", "none", "--sync-bn", "--seed", "2"]
        let one = try run(Fixture.starling, args + ["--out", dir + "/one"])
        #expect(one.status == 0, "\(one.error)")
        let two = try mpirun(2, args + ["--out", dir + "/two"])
        #expect(two.status == 0, "\(two.output)\(two.error)")
        // The SSD loss, epoch by epoch, agrees to float precision.
        let (a, b) = (try epochLosses(dir + "/one/ssd7-log.csv"), try epochLosses(dir + "/two/ssd7-log.csv"))
        #expect(a.count == 3 && b.count == 3)
        for (x, y) in zip(a, b) { #expect(abs(x - y) <= 1e-5 * abs(x), "\(a) vs \(b)") }
        // Weights agree to rounding under plain SGD. (Adam would not show it: it turns the rounding noise of
        // gradients that are exactly zero - the conv biases in front of batch norm - into steps of size lr.)
        let step = ["--optimizer", "sgd", "--lr", "0.01", "--out"]
        #expect(try run(Fixture.starling, args + step + [dir + "/one1"]).status == 0)
        #expect(try mpirun(2, args + step + [dir + "/two1"]).status == 0)
        let (wa, wb) = (try weights(dir + "/one1/ssd7-last.h5"), try weights(dir + "/two1/ssd7-last.h5"))
        for (name, x) in wa {
            let y = wb[name] ?? []
            let worst = zip(x, y).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            let scale = x.reduce(Float(0)) { max($0, abs($1)) }
            #expect(y.count == x.count && worst <= 1e-4 * max(scale, 1e-2), "\(name): largest difference \(worst) at scale \(scale)")
        }
    }

    /// yolov3-tiny on KITTI frames (64 x 192): 2 and 3 ranks with --sync-bn train the same model as one process on the
    /// same global batch. YOLO's loss is a sum over the rank's images divided by their number, equal on every rank, so
    /// averaging the ranks' gradients gives one process's; the ignore rule and the targets are per image.
    @Test(arguments: [2, 3])
    func yoloRanksMatchOneProcessWithSyncBN(ranks: Int) throws {
        try yoloRanksMatchOneProcess(family: "yolov3-tiny", ranks: ranks, options: ["--width-multiplier", "0.125"])
    }

    /// yolov3 (three scales, residual blocks) the same way, on 2 ranks, over one epoch of two steps. Later steps
    /// drift apart by chaos, not by a fault: at these random weights the loss's gradient jumps by up to 9% when every
    /// weight moves by 1e-6 of itself (one process; yolov3-tiny up to 5% at some steps), so the float32 rounding that
    /// separates one process from two ranks after two steps grows past the tolerance by the fourth. Over one step since
    /// Winograd's convolutions (README, "Winograd for the 3x3 convolutions"): with the rule's mix of Winograd and direct
    /// passes, batch norm's betas after two steps differed by up to 2.1e-5 at a scale of 0.01 (bn_0), twice the
    /// tolerance, while both uniform choices (STARLING_WINOGRAD=0 and 1) stayed within it at two steps. Neither algorithm
    /// depends on the rank count: per image the forward pass and the input gradient are the same bits in a batch of 6
    /// or 3, and a weight gradient summed over two halves differs from the whole batch's by 1.0-1.8e-6 of its scale with
    /// either (measured with oneDNN directly); the trajectory, not the ranks, moved.
    @Test func yolov3RanksMatchOneProcessWithSyncBN() throws {
        try yoloRanksMatchOneProcess(family: "yolov3", ranks: 2, epochs: 1, stepsPerEpoch: 1,
                                     options: ["--width-multiplier", "0.125", "--depth-multiplier", "0.1"])
    }

    /// yolov2 (region-layer loss, passthrough) the same way as yolov3.
    @Test func yolov2RanksMatchOneProcessWithSyncBN() throws {
        try yoloRanksMatchOneProcess(family: "yolov2", ranks: 2, epochs: 1, options: ["--width-multiplier", "0.125"])
    }

    /// yolov1 (fully connected layers, its own head) the same way, over one step: its responsible predictor is an
    /// argmax over the cell's predictions, and at random weights the float32 rounding between one process and two
    /// ranks after one step already moves the second step's gradient by up to 9% (measured on conv_20).
    @Test func yolov1RanksMatchOneProcessWithSyncBN() throws {
        try yoloRanksMatchOneProcess(family: "yolov1", ranks: 2, epochs: 1, stepsPerEpoch: 1, options: ["--width-multiplier", "0.125"])
    }

    private func yoloRanksMatchOneProcess(family: String, ranks: Int, epochs: Int = 2, stepsPerEpoch: Int = 2, options: [String]) throws {
        let kitti = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data/kitti/kitti_tiny/training").path
        guard FileManager.default.fileExists(atPath: kitti + "/label_2") else { return }   // shared data not here
        let dir = Fixture.temporaryDirectory("dp-\(family)-\(ranks)")
        let data = dir + "/kitti.h5"
        let convert = try starling("data", "detection", "--format", "kitti", "--images", kitti + "/image_2", "--labels", kitti + "/label_2",
                                   "--out", data, "--height", "64", "--width", "192", "--val-fraction", "0")
        #expect(convert.status == 0, "\(convert.error)")
        let args = ["train", "--replicas", "1", "--model", family, "--data", data, "--epochs", "\(epochs)", "--steps-per-epoch", "\(stepsPerEpoch)", "--batch-size", "6",
                    "--no-augment", "--val-split", "none", "--sync-bn", "--seed", "2", "--optimizer", "sgd", "--lr", "0.0001"] + options
        let one = try run(Fixture.starling, args + ["--out", dir + "/one"])
        #expect(one.status == 0, "\(one.error)")
        let many = try mpirun(ranks, args + ["--out", dir + "/many"])
        #expect(many.status == 0, "\(many.output)\(many.error)")
        try expectSameRun(dir + "/one", dir + "/many", family: family, epochs: epochs)
    }

    /// fast-rcnn on four Penn-Fudan frames with their stored proposals, augmentation on: two ranks with --sync-bn train
    /// the model one process trains at the same global batch. Each image's augmentation (which moves its proposals)
    /// and RoI minibatch are drawn from its own (seed, epoch, index) stream, and the loss is divided by the RoIs of the
    /// global batch, so ranks holding different numbers of RoIs still average to one process's gradient. 400 RoIs an
    /// image is more than these images' candidates give, so the ranks' counts differ (a rank-local normaliser fails
    /// this test by 6e-4 of the loss).
    @Test func fastRCNNRanksMatchOneProcessWithSyncBN() throws {
        let dir = Fixture.temporaryDirectory("dp-fast-rcnn")
        guard let data = try pennFudanFrames(dir) else { return }   // shared data not here
        let args = ["train", "--replicas", "1", "--model", "fast-rcnn", "--data", data, "--width-multiplier", "0.0625", "--option", "hidden=32", "--option", "rois_per_image=400", "--epochs", "2",
                    "--batch-size", "4", "--val-split", "none", "--sync-bn", "--seed", "2", "--optimizer", "sgd", "--lr", "0.001"]
        let one = try run(Fixture.starling, args + ["--out", dir + "/one"])
        #expect(one.status == 0, "\(one.error)")
        let two = try mpirun(2, args + ["--out", dir + "/two"])
        #expect(two.status == 0, "\(two.output)\(two.error)")
        try expectSameRun(dir + "/one", dir + "/two", family: "fast-rcnn", epochs: 2)
    }

    /// The validation loss on ranks whose shares of the split differ in batches (5 images over 2 ranks at batch 2: three
    /// and two images, two batches and one): the trainer runs it with no collective inside the loss (SSD's positive
    /// count, YOLO's and Fast R-CNN's normalisers are this rank's), so the run ends instead of waiting (with a count
    /// allreduced in validation, rank 0 waits for ever in an allreduce rank 1 never joins).
    @Test(arguments: ["fast-rcnn", "ssd7", "yolov3-tiny"])
    func validatesOnUnequalShares(family: String) throws {
        let dir = Fixture.temporaryDirectory("dp-\(family)-val")
        guard let data = try pennFudanFrames(dir, count: 6) else { return }   // shared data not here
        let options = family == "fast-rcnn" ? ["--width-multiplier", "0.0625", "--option", "hidden=32"]
            : family == "yolov3-tiny" ? ["--width-multiplier", "0.125"] : []
        let args = ["train", "--replicas", "1", "--model", family, "--data", data, "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                    "--val-split", "train", "--val-limit", "5", "--seed", "2"] + options
        // Under `timeout`: ranks waiting in a collective the other never calls would wait for ever (mpirun ignores the
        // TERM, so KILL follows; a rank left spinning after that is the price of a failing run only).
        let two = try run("/usr/bin/env", ["timeout", "-k", "5", "60", "mpirun", "-np", "2", Fixture.starling] + args + ["--out", dir + "/two"],
                          environment: mpiEnvironment)
        #expect(two.status == 0, "\(two.output)\(two.error)")
        let log = try String(contentsOfFile: dir + "/two/\(family)-log.csv", encoding: .utf8).split(separator: "\n")
        let validation = log.dropFirst().compactMap { Double($0.split(separator: ",")[3]) }
        #expect(validation.count == 1 && validation.allSatisfy(\.isFinite), "\(log)")
    }

    /// U-Net (issue 19): two ranks at global batch 4 train the model one process trains at batch 4, with the mask-aware
    /// augmentation (elastic deformation included) and the paper's border weight map on: both are drawn or computed per
    /// sample, and the loss is divided by the pixels of the batch, which the ranks share equally.
    @Test func unetRanksMatchOneProcess() throws {
        let dir = Fixture.temporaryDirectory("dp-unet")
        let data = dir + "/discs.h5"
        try tinySegmentationSet(data)
        let args = ["train", "--replicas", "1", "--model", "unet", "--data", data, "--width-multiplier", "0.0625", "--option", "levels=3", "--option", "valid=1",
                    "--option", "border_weight=10", "--elastic", "--epochs", "3", "--batch-size", "4", "--val-split", "none", "--seed", "5"]
        let one = try run(Fixture.starling, args + ["--out", dir + "/one"])
        #expect(one.status == 0, "\(one.error)")
        let many = try mpirun(2, args + ["--out", dir + "/many"])
        #expect(many.status == 0, "\(many.output)\(many.error)")
        let (a, b) = (try epochLosses(dir + "/one/unet-log.csv"), try epochLosses(dir + "/many/unet-log.csv"))
        #expect(a.count == 3 && b.count == 3)
        for (x, y) in zip(a, b) { #expect(abs(x - y) <= 1e-5 * abs(x), "\(a) vs \(b)") }
        let (wa, wb) = (try weights(dir + "/one/unet-last.h5"), try weights(dir + "/many/unet-last.h5"))
        #expect(wa.count == wb.count && maxRelativeDifference(wa, wb) < 1e-4)
    }

    /// Two runs of `family` trained alike (one process's in `one`, the ranks' in `other`): every epoch's loss to 1e-5 and
    /// every weight to 1e-4 of its tensor's largest value. Batch norm's betas start at zero and their gradients sum every
    /// pixel's with heavy cancellation, so the order of float32 sums (one process, or ranks) shows at ~1e-3 of their
    /// still small values: the floor of the scale, 0.1, is the size of the network's other weights.
    func expectSameRun(_ one: String, _ other: String, family: String, epochs: Int, relativeTolerance: Float = 1e-4,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (a, b) = (try epochLosses(one + "/\(family)-log.csv"), try epochLosses(other + "/\(family)-log.csv"))
        #expect(a.count == epochs && b.count == epochs, sourceLocation: sourceLocation)
        for (x, y) in zip(a, b) { #expect(abs(x - y) <= 1e-5 * abs(x), "\(a) vs \(b)", sourceLocation: sourceLocation) }
        let (wa, wb) = (try weights(one + "/\(family)-last.h5"), try weights(other + "/\(family)-last.h5"))
        #expect(wa.count == wb.count && !wa.isEmpty, sourceLocation: sourceLocation)
        for (name, x) in wa {
            let y = wb[name] ?? []
            let worst = zip(x, y).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            let scale = x.reduce(Float(0)) { max($0, abs($1)) }
            #expect(y.count == x.count && worst <= relativeTolerance * max(scale, 0.1), "\(name): largest difference \(worst) at scale \(scale)", sourceLocation: sourceLocation)
        }
    }

    /// The training loss of each epoch, from a run's CSV log.
    func epochLosses(_ log: String) throws -> [Double] {
        try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").dropFirst().compactMap { Double($0.split(separator: ",")[2]) }
    }
}
