import Foundation
import Testing
import StarlingDistributed
@testable import StarlingModels
@testable import StarlingTraining

/// `--gradient-precision bf16|fp16`: gradients cross the network in 16 bits, weights stay float32.
@Suite(.serialized) struct GradientPrecisionTests {
    /// bfloat16 rounding against bit patterns worked out by hand (7 fraction bits, ties to even).
    @Test func bfloat16RoundsToNearestEven() {
        #expect(GradientWire.bfloat16Bits(1) == 0x3F80)
        #expect(GradientWire.bfloat16Bits(-2.5) == 0xC020)
        #expect(GradientWire.bfloat16Bits(1 + 0x1p-8) == 0x3F80)                // tie, 0x3F80 is even: down
        #expect(GradientWire.bfloat16Bits(1 + 0x1p-7 + 0x1p-8) == 0x3F82)       // tie, 0x3F81 is odd: up
        #expect(GradientWire.bfloat16Bits(1 + 0x1p-8 + 0x1p-20) == 0x3F81)      // above the tie: up
        #expect(GradientWire.bfloat16Bits(.greatestFiniteMagnitude) == 0x7F80)  // past bfloat16's largest: infinity
        #expect(GradientWire.bfloat16Bits(.infinity) == 0x7F80)
        #expect(GradientWire.bfloat16Value(GradientWire.bfloat16Bits(.nan)).isNaN)
        #expect(GradientWire.bfloat16Value(0x3F81) == 1 + 0x1p-7)
        #expect(GradientWire.bfloat16Value(0x0001) == 0x1p-133)                  // the smallest subnormal
    }

    /// Encoding with a scale and decoding return each value within the format's half ulp; the largest decoded
    /// magnitude is reported, and an infinity flags the bucket.
    @Test func encodeAndDecodeWithScale() {
        let values: [Float] = [3e-6, -1.5e-7, 0.25, -7e-5, 0]
        for (wire, ulp) in [(GradientWire.bfloat16, Float(0x1p-8)), (.float16, Float(0x1p-11))] {
            var bits = [UInt16](repeating: 0, count: values.count), back = [Float](repeating: 0, count: values.count)
            let scale = GradientSynchronizer.float16Scale(largest: 0.25, previous: 1)
            #expect(scale == 0x1p15)   // 0.25 x 2^15 = 2^13
            wire.encode(values, scale: scale, into: &bits, count: values.count)
            let largest = wire.decode(bits, scale: scale, into: &back, count: values.count)
            #expect(largest == 0.25)
            for (x, y) in zip(values, back) { #expect(abs(x - y) <= ulp * abs(x), "\(wire): \(x) came back as \(y)") }
        }
        // Without the scale, float16 flushes 1.5e-7 to its subnormal grid (6e-8 apart): the reason for the scale.
        var bits: [UInt16] = [0], back: [Float] = [0]
        GradientWire.float16.encode([1.5e-7], scale: 1, into: &bits, count: 1)
        GradientWire.float16.decode(bits, scale: 1, into: &back, count: 1)
        #expect(abs(back[0] - 1.5e-7) > 1e-8)
        bits = [0x7C00]
        #expect(!GradientWire.float16AllFinite(bits, count: 1))
        #expect(GradientWire.float16.decode(bits, scale: 1, into: &back, count: 1) == .infinity)
    }

    /// The 16-bit sums on 2 and 3 ranks: exact sums, a tie rounded to even, the same bits on every rank.
    @Test(arguments: [2, 3])
    func sixteenBitCollectives(ranks: Int) throws {
        let r = try mpirun(ranks, ["check-mpi", "--count", "300000"])
        #expect(r.status == 0, "\(r.output)\(r.error)")
        #expect(r.output.components(separatedBy: "collectives ok").count - 1 == ranks)
    }

    /// Two ranks with bf16 or fp16 gradients train close to one process in float32 (the difference is the rounding
    /// of the gradients, not a fault: it stays within a few 16-bit ulps of the weights' steps), and not bit for bit
    /// like two ranks in float32, which shows the 16-bit path ran.
    @Test func sixteenBitGradientsTrainCloseToFloat32() throws {
        let data = try Fixture.sampleHDF5()
        let dir = Fixture.temporaryDirectory("dp-precision")
        func args(_ out: String, _ extra: [String] = []) -> [String] {
            ["train", "--model", "fc-ae", "--data", data, "--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "96",
             "--val-split", "none", "--seed", "4", "--out", out] + extra
        }
        #expect(try mpirun(2, args(dir + "/fp32")).status == 0)
        let reference = try weights(dir + "/fp32/fc-ae-last.h5")
        let initial = try run(Fixture.starling, args(dir + "/start", ["--max-steps", "1", "--lr", "1e-30"]))
        #expect(initial.status == 0, "\(initial.error)")
        let start = try weights(dir + "/start/fc-ae-last.h5")
        for precision in ["bf16", "fp16"] {
            let r = try mpirun(2, args(dir + "/" + precision, ["--gradient-precision", precision]))
            #expect(r.status == 0, "\(r.output)\(r.error)")
            let w = try weights(dir + "/\(precision)/fc-ae-last.h5")
            #expect(w.count == reference.count)
            // How far training moved the weights, against how far the 16-bit run lands from float32's.
            var moved: Float = 0, apart: Float = 0
            for (name, x) in reference {
                guard let y = w[name], let s = start[name] else { continue }
                for i in x.indices { moved = max(moved, abs(x[i] - s[i])); apart = max(apart, abs(x[i] - y[i])) }
            }
            #expect(apart > 0, "\(precision) trained bit for bit like float32")
            #expect(apart < 0.05 * moved, "\(precision): \(apart) from float32 after moving \(moved)")
        }
        let bad = try run(Fixture.starling, args(dir + "/bad", ["--gradient-precision", "fp8"]))
        #expect(bad.status != 0 && bad.error.contains("--gradient-precision must be fp32, bf16 or fp16, not 'fp8'"), "\(bad.error)")
    }
}
