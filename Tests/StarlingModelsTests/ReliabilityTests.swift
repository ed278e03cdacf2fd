import Foundation
import Testing
@testable import StarlingModels
import StarlingIO

/// Faults a user meets on a shared cluster: a rank that stops answering must end the job, not hang it.
@Suite(.serialized) struct ReliabilityTests {
    /// A job started in the background, its output going to a file (a stopped rank keeps pipes open).
    struct BackgroundJob {
        let process = Process()
        let outputPath: String

        init(_ arguments: [String], directory: String) throws {
            outputPath = directory + "/job-output.txt"
            FileManager.default.createFile(atPath: outputPath, contents: nil)
            let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["mpirun", "-np", "2", Fixture.starling] + arguments
            process.environment = childEnvironment(mpiEnvironment)
            process.standardOutput = output
            process.standardError = output
            try process.run()
        }

        var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

        /// The ranks' process ids, rank 0 first (mpirun starts them in rank order).
        func ranks() throws -> [Int32] {
            try run("/usr/bin/env", ["pgrep", "-P", "\(process.processIdentifier)", "-f", "starling"]).output
                .split(separator: "\n").compactMap { Int32($0) }.sorted()
        }

        /// Waits up to `seconds` for the job to end; true if it did.
        func waitForExit(_ seconds: Double) -> Bool {
            let start = Date()
            while process.isRunning && Date().timeIntervalSince(start) < seconds { usleep(50_000) }
            return !process.isRunning
        }
    }

    /// Item 1 of issue 16: a rank stopped with SIGSTOP at a random moment (forward pass, gradient buckets, loss,
    /// checkpoint writes, validation) ends the job within the watchdog's two timeouts plus 10 s, ten times out of
    /// ten, with a non-zero exit below 128, the watchdog naming where it waited and the last good checkpoint, which
    /// still loads.
    @Test func stoppedRankEndsTheJob() throws {
        let data = try Fixture.sampleHDF5()
        let (warn, abort) = (1.0, 2.0)
        var generator = SystemRandomNumberGenerator()
        for trial in 0..<10 {
            let dir = Fixture.temporaryDirectory("stop\(trial)")
            let job = try BackgroundJob(["train", "--model", "fc-ae", "--data", data, "--epochs", "100000", "--batch-size", "32",
                                         "--steps-per-epoch", "12", "--val-limit", "256", "--checkpoint-every", "5",
                                         "--watchdog-seconds", "\(warn)", "--watchdog-abort-seconds", "\(abort)", "--out", dir],
                                        directory: dir)
            defer { if job.process.isRunning { job.process.terminate() } }
            let checkpoint = dir + "/fc-ae-last.h5"
            var waited = 0.0
            while !FileManager.default.fileExists(atPath: checkpoint) && waited < 60 && job.process.isRunning { usleep(50_000); waited += 0.05 }
            let pids = try job.ranks()
            try #require(pids.count == 2, "trial \(trial): ranks \(pids)\n\(job.output)")
            // Alternate the victim, so that both the root's naming and the other ranks' aborts are exercised.
            let victim = pids[trial % 2]
            let delay = Double.random(in: 0..<1.5, using: &generator)
            usleep(useconds_t(delay * 1_000_000))
            kill(victim, SIGSTOP)
            let stoppedAt = Date()
            let ended = job.waitForExit(warn + abort + 10)
            let seconds = Date().timeIntervalSince(stoppedAt)
            kill(victim, SIGKILL)   // in case mpirun left it stopped
            let output = job.output
            #expect(ended, "trial \(trial): rank \(trial % 2) stopped after \(delay) s; job still running after \(seconds) s\n\(output)")
            guard ended else { job.process.terminate(); continue }
            #expect(job.process.terminationStatus != 0 && job.process.terminationStatus < 128,
                    "trial \(trial): exit \(job.process.terminationStatus)\n\(output)")
            #expect(output.contains("watchdog: rank \(1 - trial % 2) has waited"), "trial \(trial):\n\(output)")
            #expect(output.contains("aborting the job after 3 s"), "trial \(trial):\n\(output)")
            #expect(output.contains("the last good checkpoint is \(checkpoint)"), "trial \(trial):\n\(output)")
            // Rank 0 names rank 1 when rank 1 stopped before a collective; stopped inside one, it had already arrived.
            if trial % 2 == 1 {
                #expect(output.contains("ranks not yet at this collective: 1 (last seen at step") || output.contains("every rank has reached this collective"),
                        "trial \(trial):\n\(output)")
            }
            #expect(try Checkpoint.load(from: checkpoint).state.step > 0)
        }
    }

    /// `mpirun -np 1 starling ARGS0 : -np 1 starling ARGS1`: each rank with its own command line.
    func twoRanks(_ rank0: [String], _ rank1: [String]) throws -> Run {
        try run("/usr/bin/env", ["mpirun", "-np", "1", Fixture.starling] + rank0 + [":", "-np", "1", Fixture.starling] + rank1,
                environment: mpiEnvironment)
    }

    /// Item 2 of issue 16: ranks started with settings that change the computation are refused before training,
    /// the refusal naming the setting and what each rank has, with an ordinary exit code (no trap, no segmentation
    /// fault from a collective of mismatched sizes), and nothing written.
    @Test func ranksDisagreeingOnAnySettingAreRefused() throws {
        let sample = Fixture.mnistSample
        let dir = Fixture.temporaryDirectory("agreement")
        // Two files of the same shape (2,600 training digits) and different contents: the sample's first 2,600 digits,
        // and its first 2,600 that are not 1s.
        let plain = dir + "/plain.h5", other = dir + "/other.h5"
        #expect(try starling("data", "mnist", "--source", sample, "--out", plain, "--limit-train", "2600").status == 0)
        #expect(try starling("data", "mnist", "--source", sample, "--out", other, "--limit-train", "2600", "--exclude-train-label", "1").status == 0)
        func train(_ data: String, _ out: String, _ extra: [String] = []) -> [String] {
            ["train", "--model", "fc-ae", "--data", data, "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "64",
             "--val-split", "none", "--out", out] + extra
        }
        let resumable = dir + "/first"
        #expect(try run(Fixture.starling, train(plain, resumable, ["--max-steps", "2"])).status == 0)
        let checkpoint = resumable + "/fc-ae-last.h5"
        let cases: [(name: String, rank0: [String], rank1: [String], data1: String, expected: [String])] = [
            ("optimizer", ["--optimizer", "adam"], ["--optimizer", "sgd"], plain,
             ["--optimizer: rank 0 has adam beta1=0.9", "rank 1 has sgd momentum=0.9"]),
            ("weight decay", ["--weight-decay", "0"], ["--weight-decay", "0.1"], plain,
             ["--optimizer: rank 0 has adam", "weight-decay=0.0; rank 1 has adam", "weight-decay=0.1"]),
            ("resume on one rank", [], ["--resume", checkpoint], plain,
             ["--resume: rank 0 has none; rank 1 has \(checkpoint)", "the resume checkpoint's contents: rank 0 has none; rank 1 has "]),
            ("data", [], [], other,
             ["the training data: rank 0 has split train, 2600 samples of [28, 28], content hash", "rank 1 has split train, 2600 samples of [28, 28], content hash"]),
        ]
        for c in cases {
            let out = dir + "/" + c.name.replacingOccurrences(of: " ", with: "-")
            let r = try twoRanks(train(plain, out, c.rank0), train(c.data1, out, c.rank1))
            let text = r.output + r.error
            #expect(r.status != 0 && r.status < 128, "\(c.name): exit \(r.status)\n\(text)")
            #expect(text.contains("ranks were started with different configurations"), "\(c.name):\n\(text)")
            for e in c.expected { #expect(text.contains(e), "\(c.name): missing '\(e)'\n\(text)") }
            #expect(!text.contains("Read -1"), "\(c.name):\n\(text)")
            #expect(!FileManager.default.fileExists(atPath: out + "/fc-ae-last.h5"), "\(c.name)")
        }
        // The same settings and the same data (converted twice) train.
        let twin = dir + "/twin.h5"
        #expect(try starling("data", "mnist", "--source", sample, "--out", twin, "--limit-train", "2600").status == 0)
        let agreed = try twoRanks(train(plain, dir + "/agreed"), train(twin, dir + "/agreed"))
        #expect(agreed.status == 0, "\(agreed.output)\(agreed.error)")
    }

    /// Item 4 and the checkpoint refusals of "What failed": impossible counters are refused by `inspect` and
    /// `train --resume`, a checkpoint of another family or without optimizer state is refused naming the file, and
    /// a temporary left by a dead writer is removed when training starts (a live writer's is kept).
    @Test func checkpointFaultsAreRefusedNamingTheFile() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("checkpoint-faults")
        func train(_ family: String, _ out: String, _ extra: [String] = []) throws -> Run {
            try run(Fixture.starling, ["train", "--model", family, "--data", data, "--epochs", "1", "--steps-per-epoch", "2",
                                       "--batch-size", "64", "--val-split", "none", "--out", out] + extra)
        }
        #expect(try train("fc-ae", dir + "/a").status == 0)
        let good = dir + "/a/fc-ae-last.h5"

        // A write cut at any byte is never taken for a complete checkpoint (what a killed writer leaves in its
        // temporary): 40 cut points spread over the file, the first and last bytes included.
        let full = try Data(contentsOf: URL(fileURLWithPath: good))
        let cuts = Set((0..<40).map { $0 * (full.count - 1) / 39 } + [full.count - 1])
        for cut in cuts.sorted() {
            let partial = dir + "/cut-\(cut).h5"
            try full.prefix(cut).write(to: URL(fileURLWithPath: partial))
            #expect(throws: (any Error).self, "cut at byte \(cut) of \(full.count) loaded") { try Checkpoint.load(from: partial) }
            try FileManager.default.removeItem(atPath: partial)
        }

        let negative = dir + "/negative-step.h5"
        try FileManager.default.copyItem(atPath: good, toPath: negative)
        try updateHDF5Atomically(negative) { try $0.root.setAttribute("step", -5) }
        let inspected = try starling("inspect", negative)
        #expect(inspected.status == 1, "\(inspected.output)\(inspected.error)")
        #expect(inspected.error.contains("\(negative): integrity check failed: impossible step -5 (negative)"), "\(inspected.error)")
        let fromNegative = try train("fc-ae", dir + "/b", ["--resume", negative])
        #expect(fromNegative.status == 1 && fromNegative.error.contains("\(negative): impossible step -5 (negative)"), "\(fromNegative.error)")

        #expect(try train("deep-ae", dir + "/deep").status == 0)
        let otherFamily = dir + "/deep/deep-ae-last.h5"
        let fromOther = try train("fc-ae", dir + "/c", ["--resume", otherFamily])
        #expect(fromOther.status == 1 && fromOther.error.contains("\(otherFamily): holds model deep-ae"), "\(fromOther.error)")

        let inferenceOnly = dir + "/inference-only.h5"
        #expect(try starling("convert", good, inferenceOnly, "--inference-only").status == 0)
        let fromInference = try train("fc-ae", dir + "/d", ["--resume", inferenceOnly])
        #expect(fromInference.status == 1 && fromInference.error.contains("\(inferenceOnly): no optimizer state 'm'"), "\(fromInference.error)")
        for r in [fromNegative, fromOther, fromInference] {
            #expect(r.error.split(separator: "\n").count == 1, "one line: \(r.error)")
        }

        // A temporary of a process that has ended, and one of a process still running (this one).
        let ended = Process()
        ended.executableURL = URL(fileURLWithPath: "/bin/true")
        try ended.run()
        ended.waitUntilExit()
        let stale = dir + "/a/fc-ae-last.h5.tmp-\(ended.processIdentifier)", live = dir + "/a/fc-ae-last.h5.tmp-\(getpid())"
        for path in [stale, live] { FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3])) }
        let again = try train("fc-ae", dir + "/a")
        #expect(again.status == 0 && again.output.contains("removed 1 temporary file(s) left in \(dir)/a by a killed write: fc-ae-last.h5.tmp-\(ended.processIdentifier)"),
                "\(again.output)")
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: live))
    }

    /// The shared data folder (`../shared/data`), where the real label sets live; nil where it is not mounted.
    static var sharedData: String? {
        let path = Fixture.repository.deletingLastPathComponent().appendingPathComponent("shared/data").path
        return FileManager.default.fileExists(atPath: path + "/udacity/labels.csv") ? path : nil
    }

    /// Bad label files of "What failed", made from the real Udacity and KITTI samples: each is refused with one line
    /// naming the file (and line) and the problem, exit code 1, and no output file.
    @Test func badLabelFilesAreRefusedNamingTheFile() throws {
        guard let shared = Self.sharedData else { return }
        let dir = Fixture.temporaryDirectory("bad-labels")
        let udacityLines = try String(contentsOfFile: shared + "/udacity/labels.csv", encoding: .utf8).split(separator: "\n").map(String.init)
        let extraField = dir + "/extra-field.csv"
        try (udacityLines.prefix(2) + [udacityLines[2] + ",7"] + udacityLines.dropFirst(3)).joined(separator: "\n").write(toFile: extraField, atomically: true, encoding: .utf8)
        let headerOnly = dir + "/header-only.csv"
        try (udacityLines[0] + "\n").write(toFile: headerOnly, atomically: true, encoding: .utf8)
        // KITTI label folders: a copy of the sample's with one file emptied, one line cut short, one line with a field too many.
        let kittiLabels = shared + "/kitti/kitti_tiny/training/label_2", kittiImages = shared + "/kitti/kitti_tiny/training/image_2"
        func kittiCopy(_ name: String, change: (inout [String]) -> Void) throws -> String {
            let folder = dir + "/" + name
            try FileManager.default.copyItem(atPath: kittiLabels, toPath: folder)
            var lines = try String(contentsOfFile: folder + "/000003.txt", encoding: .utf8).split(separator: "\n").map(String.init)
            change(&lines)
            try lines.joined(separator: "\n").write(toFile: folder + "/000003.txt", atomically: true, encoding: .utf8)
            return folder
        }
        let kittiEmpty = try kittiCopy("kitti-empty") { $0 = [] }
        let kittiShort = try kittiCopy("kitti-short") { $0[0] = $0[0].split(separator: " ").prefix(7).joined(separator: " ") }
        let kittiLong = try kittiCopy("kitti-long") { $0[0] += " 0.5 0.5" }
        // A VOC folder whose one annotation is an empty file, beside a real image.
        let vocImages = dir + "/voc-images", vocLabels = dir + "/voc-labels"
        try FileManager.default.createDirectory(atPath: vocImages, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: vocLabels, withIntermediateDirectories: true)
        let frame = udacityLines[1].split(separator: ",")[0]
        try FileManager.default.copyItem(atPath: shared + "/udacity/images/\(frame)", toPath: vocImages + "/\(frame)")
        let stem = (String(frame) as NSString).deletingPathExtension
        FileManager.default.createFile(atPath: vocLabels + "/\(stem).xml", contents: Data())

        let cases: [(name: String, arguments: [String], expected: String)] = [
            ("udacity row with an extra field", ["--format", "udacity", "--images", shared + "/udacity/images", "--labels", extraField],
             "\(extraField):3: malformed label: 7 fields, the header has 6"),
            ("udacity header only", ["--format", "udacity", "--images", shared + "/udacity/images", "--labels", headerOnly],
             "\(headerOnly): no labelled images"),
            ("kitti empty label file", ["--format", "kitti", "--images", kittiImages, "--labels", kittiEmpty],
             "\(kittiEmpty)/000003.txt: malformed label: empty label file"),
            ("kitti line cut short", ["--format", "kitti", "--images", kittiImages, "--labels", kittiShort],
             "\(kittiShort)/000003.txt:1: malformed label: 7 fields; expected 15"),
            ("kitti line with extra fields", ["--format", "kitti", "--images", kittiImages, "--labels", kittiLong],
             "\(kittiLong)/000003.txt:1: malformed label: 17 fields; expected 15"),
            ("voc empty annotation", ["--format", "voc", "--images", vocImages, "--labels", vocLabels, "--classes", "car"],
             "\(vocLabels)/\(stem).xml: malformed label: empty file"),
        ]
        for c in cases {
            let out = dir + "/out-" + c.name.replacingOccurrences(of: " ", with: "-") + ".h5"
            let r = try run(Fixture.starling, ["data", "detection"] + c.arguments + ["--out", out, "--height", "60", "--width", "96"])
            #expect(r.status == 1, "\(c.name): exit \(r.status)\n\(r.output)\(r.error)")
            #expect(r.error.contains(c.expected), "\(c.name): \(r.error)")
            // Strict imports list every bad row before the refusal: each line names the file.
            let file = c.expected.split(separator: ":")[0]
            #expect(r.error.split(separator: "\n").allSatisfy { $0.contains(file) }, "\(c.name): \(r.error)")
            #expect(!FileManager.default.fileExists(atPath: out), "\(c.name)")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
            #expect(leftovers.isEmpty, "\(c.name): \(leftovers)")
        }
    }

    /// KITTI's DontCare regions are ignore regions for every class: COCO scoring counts only the real objects and
    /// `eval --detections F --save-gt G` writes them with iscrowd 1 (it used to ignore --save-gt).
    @Test func kittiDontCareIsAnIgnoreRegion() throws {
        guard let shared = Self.sharedData else { return }
        let dir = Fixture.temporaryDirectory("kitti-dontcare")
        let data = dir + "/kitti.h5"
        let imported = try starling("data", "detection", "--format", "kitti", "--images", shared + "/kitti/kitti_tiny/training/image_2",
                                    "--labels", shared + "/kitti/kitti_tiny/training/label_2", "--out", data, "--height", "64", "--width", "192")
        #expect(imported.status == 0, "\(imported.error)")
        let dataset = try DetectionDataset(path: data, split: "val")
        let objects = (0..<dataset.count).flatMap { dataset.objects(of: $0) }
        let real = objects.filter { !$0.difficult }.count, ignore = objects.filter(\.ignoreRegion).count
        #expect(real > 0 && ignore > 0)
        let truth = DetectorEvaluation.groundTruth(dataset)
        #expect(truth.boxes.filter(\.isCrowd).count == ignore)
        let empty = dir + "/no-detections.json"
        try "[]".write(toFile: empty, atomically: true, encoding: .utf8)
        let report = try DetectionEvaluationReport.evaluate(groundTruth: truth, detections: [], mode: .coco)
        #expect(report.summary.perClass.reduce(0) { $0 + $1.groundTruth } == real)
        let gt = dir + "/gt.json"
        let scored = try starling("eval", "--data", data, "--detections", empty, "--ap-mode", "coco", "--save-gt", gt)
        #expect(scored.status == 0, "\(scored.error)")
        #expect(scored.output.contains("\(objects.count) ground-truth boxes (\(real) to find"), "\(scored.output)")
        let written = try COCOJSON.readAnnotations(path: gt)
        #expect(written.boxes.filter(\.isCrowd).count == ignore)
        #expect(written.boxes.filter { !$0.isCrowd && !$0.difficult }.count == real)
        // A missing output folder is refused before anything is written.
        let missing = dir + "/no-such-folder/summary.json"
        let refused = try starling("eval", "--data", data, "--detections", empty, "--json", missing)
        #expect(refused.status == 1 && refused.error.contains("\(missing): cannot write --json: no folder \(dir)/no-such-folder"), "\(refused.error)")
        #expect(!refused.error.contains("NSCocoaErrorDomain"))
    }

    /// Item 5: a NaN loss or an infinite gradient on one rank is seen by every rank at the same step: the run stops
    /// together (exit 1, no checkpoint written after the fault) or, with --skip-nonfinite, skips the step on every
    /// rank and ends with finite weights.
    @Test func nonFiniteValuesStopOrSkipOnEveryRank() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("nonfinite")
        func job(_ fault: String, _ out: String, _ extra: [String] = []) throws -> Run {
            var env = mpiEnvironment
            env["STARLING_TEST_NONFINITE"] = fault
            return try run("/usr/bin/env", ["mpirun", "-np", "2", "-x", "STARLING_TEST_NONFINITE", Fixture.starling, "train", "--model", "fc-ae",
                                            "--data", data, "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "64",
                                            "--val-split", "none", "--out", out] + extra, environment: env)
        }
        // Stop: the gradient of rank 1 at global step 5 (epoch 2), after epoch 1's checkpoint.
        let stopped = try job("1:5:gradient", dir + "/stop")
        let text = stopped.output + stopped.error
        #expect(stopped.status == 1, "\(text)")
        #expect(text.contains("a gradient became non-finite (inf in "), "\(text)")
        #expect(text.contains("at epoch 2, step 2 (global step 5): training stopped on every rank"), "\(text)")
        #expect(text.contains("the last good checkpoint is \(dir)/stop/fc-ae-last.h5"), "\(text)")
        #expect(try Checkpoint.load(from: dir + "/stop/fc-ae-last.h5").state.step == 4)
        // Stop: the loss of rank 0 at step 2, before any checkpoint.
        let lossStopped = try job("0:2:loss", dir + "/loss")
        #expect(lossStopped.status == 1 && (lossStopped.output + lossStopped.error).contains("the loss became non-finite on 1 rank(s) at epoch 1, step 3"),
                "\(lossStopped.output)\(lossStopped.error)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/loss/fc-ae-last.h5"))
        // Skip: both kinds, within the allowance.
        for fault in ["1:5:gradient", "0:2:loss"] {
            let skipped = try job(fault, dir + "/skip-\(fault.split(separator: ":").last!)", ["--skip-nonfinite", "1"])
            #expect(skipped.status == 0, "\(skipped.output)\(skipped.error)")
            #expect(skipped.output.contains("step skipped without an update (1 of 1 allowed by --skip-nonfinite)"), "\(skipped.output)")
            let weights = try weights(dir + "/skip-\(fault.split(separator: ":").last!)/fc-ae-last.h5")
            #expect(weights.values.allSatisfy { $0.allSatisfy(\.isFinite) })
        }
    }

    /// The fallback for an HDF5 call that never returns (a loop inside the library the guarded driver does not know):
    /// past STARLING_HDF5_CALL_SECONDS the process prints one line naming the file and exits 1; in an MPI job the rank
    /// aborts the job, so the other rank does not wait for it in a collective. The stall is injected in the driver's
    /// reads (STARLING_TEST_HDF5_READ_STALL, 30 s a read); without the watchdog each run would take minutes.
    @Test func stuckHDF5CallEndsTheRun() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("hdf5-stall")
        let checkpoint = dir + "/fc-ae.h5"
        try Checkpoint.save(to: checkpoint, model: try ModelRegistry.build(ModelConfig(family: "fc-ae", inputShape: [16], options: ["code_size": 4]), seed: 1),
                            optimizer: nil, state: .init())
        let stall = ["STARLING_TEST_HDF5_READ_STALL": "30", "STARLING_HDF5_CALL_SECONDS": "2"]
        var started = Date()
        let inspected = try run("/usr/bin/timeout", ["-k", "5", "60", Fixture.starling, "inspect", checkpoint], environment: stall)
        let inspectSeconds = Date().timeIntervalSince(started)
        let lines = inspected.error.split(separator: "\n").filter { !$0.isEmpty }
        #expect(inspected.status == 1 && lines.count == 1, "exit \(inspected.status): \(inspected.error)")
        #expect(lines.first?.hasPrefix("Error: \(checkpoint): an HDF5 call has not returned after 2 s") == true, "\(inspected.error)")
        #expect(inspectSeconds < 20, "ended after \(inspectSeconds) s")
        // Two ranks, rank 1's reads stalled (an MPMD launch gives it its own environment): the job ends, not hangs.
        started = Date()
        let job = try run("/usr/bin/timeout", ["-k", "5", "120", "mpirun", "-np", "1", Fixture.starling, "train", "--model", "fc-ae", "--data", data,
                                               "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "64", "--out", dir + "/out", ":",
                                               "-np", "1", "/usr/bin/env", "STARLING_TEST_HDF5_READ_STALL=30", "STARLING_HDF5_CALL_SECONDS=2",
                                               Fixture.starling, "train", "--model", "fc-ae", "--data", data, "--epochs", "1",
                                               "--steps-per-epoch", "2", "--batch-size", "64", "--out", dir + "/out"],
                      environment: mpiEnvironment)
        let jobSeconds = Date().timeIntervalSince(started)
        let text = job.output + job.error
        #expect(job.status != 0 && job.status < 124, "exit \(job.status) (124: the job hung): \(text)")
        #expect(text.contains("Error: \(data): an HDF5 call has not returned after 2 s"), "\(text)")
        #expect(jobSeconds < 60, "ended after \(jobSeconds) s")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out/fc-ae-last.h5"))
        // A limit that is no number is refused before anything runs.
        let bad = try run(Fixture.starling, ["inspect", checkpoint], environment: ["STARLING_HDF5_CALL_SECONDS": "soon"])
        #expect(bad.status != 0 && bad.error.contains("STARLING_HDF5_CALL_SECONDS=soon: expected a number of seconds"), "\(bad.error)")
        print("stuck HDF5 call: inspect ended in \(String(format: "%.1f", inspectSeconds)) s, the 2-rank job in \(String(format: "%.1f", jobSeconds)) s")
    }
}
