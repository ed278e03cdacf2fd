import Testing
@testable import StarlingCore
#if canImport(Glibc)
import Glibc
#endif

/// Softmax or log-softmax in Double along the axis of a tensor seen as [outer, length, inner].
private func naiveSoftmax(_ x: [Float], outer: Int, length: Int, inner: Int, log: Bool) -> [Float] {
    var y = [Float](repeating: 0, count: x.count)
    for o in 0..<outer {
        for i in 0..<inner {
            let index = (0..<length).map { (o * length + $0) * inner + i }
            let m = index.map { Double(x[$0]) }.max() ?? 0
            let s = index.map { exp(Double(x[$0]) - m) }.reduce(0, +)
            for j in index { y[j] = Float(log ? Double(x[j]) - m - Glibc.log(s) : exp(Double(x[j]) - m) / s) }
        }
    }
    return y
}

@Suite struct SoftmaxTests {
    @Test func rowsMatchDoubleReferenceAndSumToOne() {
        // 13 classes: one full 8-lane block and a tail of 5.
        let x = randomVariable([4, 13], seed: 1, -5, 5)
        let p = x.softmax().toArray()
        expectClose(p, naiveSoftmax(x.toArray(), outer: 4, length: 13, inner: 1, log: false), tolerance: 1e-6)
        for r in 0..<4 { #expect(abs(p[(r * 13)..<(r * 13 + 13)].reduce(0, +) - 1) < 1e-5) }
        expectClose(x.logSoftmax().toArray(), naiveSoftmax(x.toArray(), outer: 4, length: 13, inner: 1, log: true), tolerance: 1e-5)
    }

    @Test func handComputedValues() {
        // softmax([0, ln 2, ln 5]) = [1, 2, 5] / 8.
        let p = Tensor(shape: [3], values: [0, logf(2), logf(5)]).softmax().toArray()
        expectClose(p, [0.125, 0.25, 0.625], tolerance: 1e-6)
    }

    @Test func extremeLogitsStayFinite() {
        let x = Tensor(shape: [2, 3], values: [1000, -1000, 0, -1000, -1000, 1000])
        let p = x.softmax().toArray()
        #expect(p.allSatisfy { $0.isFinite })
        expectClose(p, [1, 0, 0, 0, 0, 1], tolerance: 1e-6)
        let lp = x.logSoftmax().toArray()
        #expect(lp.allSatisfy { $0.isFinite })
        expectClose(lp, [0, -2000, -1000, -2000, -2000, 0], tolerance: 1e-6)
        // The same over the channel axis of NCHW: 2 channels over 9 pixels.
        let planes = Tensor(shape: [1, 2, 3, 3], values: (0..<18).map { $0 < 9 ? 1000 : -1000 })
        let q = planes.softmax(axis: 1).toArray()
        #expect(q.allSatisfy { $0.isFinite })
        expectClose(q, (0..<18).map { $0 < 9 ? 1 : 0 }, tolerance: 1e-6)
        #expect(planes.logSoftmax(axis: 1).toArray().allSatisfy { $0.isFinite })
    }

    @Test func channelAxisOfNCHW() {
        // [N=2, C=3, H=3, W=5]: 15 pixels per plane, a full vector block and a tail.
        let x = randomVariable([2, 3, 3, 5], seed: 2, -4, 4)
        let p = x.softmax(axis: 1).toArray()
        expectClose(p, naiveSoftmax(x.toArray(), outer: 2, length: 3, inner: 15, log: false), tolerance: 1e-6)
        for n in 0..<2 { for i in 0..<15 {
            let s = (0..<3).map { p[(n * 3 + $0) * 15 + i] }.reduce(0, +)
            #expect(abs(s - 1) < 1e-5)
        } }
        expectClose(x.logSoftmax(axis: 1).toArray(), naiveSoftmax(x.toArray(), outer: 2, length: 3, inner: 15, log: true), tolerance: 1e-5)
        // A middle axis of a 3-D tensor goes through the same plane path.
        let z = randomVariable([2, 4, 3], seed: 3)
        expectClose(z.softmax(axis: -2).toArray(), naiveSoftmax(z.toArray(), outer: 2, length: 4, inner: 3, log: false), tolerance: 1e-6)
    }

    @Test func gradients() {
        checkGradients([randomVariable([3, 11], seed: 4, -2, 2)]) { $0[0].softmax() }
        checkGradients([randomVariable([3, 11], seed: 5, -2, 2)]) { $0[0].logSoftmax() }
        checkGradients([randomVariable([2, 3, 2, 5], seed: 6, -2, 2)]) { $0[0].softmax(axis: 1) }
        checkGradients([randomVariable([2, 3, 2, 5], seed: 7, -2, 2)]) { $0[0].logSoftmax(axis: 1) }
        checkGradients([randomVariable([4, 3], seed: 8, -2, 2)]) { $0[0].softmax(axis: 0) }
    }
}
