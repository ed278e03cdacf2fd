import Testing
import CDNNL
@testable import StarlingCore

/// Row-major strides of a shape.
private func strides(_ shape: [Int]) -> [Int] {
    var s = [Int](repeating: 1, count: shape.count)
    for k in stride(from: shape.count - 2, through: 0, by: -1) { s[k] = s[k + 1] * shape[k + 1] }
    return s
}

/// The multi-index of flat position `flat` in a row-major array of `shape`.
private func multiIndex(_ flat: Int, _ shape: [Int]) -> [Int] {
    zip(strides(shape), shape).map { (flat / $0.0) % $0.1 }
}

/// Naive permutation: out[i_0, ..., i_r] = x[j] with j[perm[k]] = i_k.
private func naivePermute(_ x: [Float], _ shape: [Int], _ perm: [Int]) -> [Float] {
    let outShape = perm.map { shape[$0] }, inStrides = strides(shape)
    return (0..<x.count).map { flat in
        let i = multiIndex(flat, outShape)
        var source = 0
        for k in 0..<perm.count { source += i[k] * inStrides[perm[k]] }
        return x[source]
    }
}

/// Naive concatenation: out[..., j, ...] comes from the tensor whose axis range holds j.
private func naiveConcat(_ parts: [Tensor], axis: Int) -> [Float] {
    var shape = parts[0].shape
    shape[axis] = parts.map { $0.shape[axis] }.reduce(0, +)
    return (0..<Tensor.elementCount(shape)).map { flat in
        var i = multiIndex(flat, shape)
        for p in parts {
            if i[axis] < p.shape[axis] { return p.toArray()[zip(i, strides(p.shape)).map { $0 * $1 }.reduce(0, +)] }
            i[axis] -= p.shape[axis]
        }
        return .nan
    }
}

@Suite struct ShapeOpsTests {
    @Test func concatMatchesNaiveAlongEveryAxis() {
        for axis in 0..<3 {
            var shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
            for (k, extra) in [1, 3, 2].enumerated() { shapes[k][axis] = extra }
            let parts = shapes.enumerated().map { randomVariable($0.element, seed: UInt64(10 * axis + $0.offset)) }
            let joined = Tensor.concat(parts, axis: axis)
            #expect(joined.shape[axis] == 6)
            #expect(joined.toArray() == naiveConcat(parts, axis: axis))
            #expect(Tensor.concat(parts, axis: axis - 3).toArray() == joined.toArray())   // negative axis
            checkGradients(parts) { Tensor.concat($0, axis: axis) }
        }
    }

    /// Inference's channel concatenation in oneDNN's layouts (`DNNLActivation.concatChannels`) against the naive one on
    /// NCHW, exactly: NHWC parts of any channel count, and blocked parts whose counts fill their blocks; anything else
    /// (mixed layouts, a padded block, other spatial sizes) is left to the caller.
    @Test func inferenceConcatenationInOneDNNLayouts() throws {
        guard DNNLActivation.isAvailable else { return }
        func parts(_ counts: [Int], _ tag: dnnl_format_tag_t, size: (Int, Int) = (3, 5)) -> (planar: [Tensor], laidOut: [DNNLActivation]) {
            let planar = counts.enumerated().map { k, c in
                Tensor(shape: [2, c, size.0, size.1], values: randomValues(2 * c * size.0 * size.1, seed: UInt64(40 + k)))
            }
            return (planar, planar.map { DNNLActivation($0).laidOut(as: DNNL.descriptor($0.shape, tag)) })
        }
        for (counts, tag) in [([3, 5, 16], dnnl_acdb), ([128, 256], dnnl_acdb), ([16, 32], dnnl_aBcd16b), ([8, 24, 8], dnnl_aBcd8b)] {
            let (planar, laidOut) = parts(counts, tag)
            let y = try #require(DNNLActivation.concatChannels(laidOut), "\(counts)")
            #expect(DNNL.equal(y.md, DNNL.descriptor(y.shape, tag)), "the output keeps the parts' layout")
            #expect(y.tensor().toArray() == naiveConcat(planar, axis: 1), "\(counts)")
        }
        #expect(DNNLActivation.concatChannels(parts([16, 24], dnnl_aBcd16b).laidOut) == nil)
        #expect(DNNLActivation.concatChannels(parts([16, 16], dnnl_nchw).laidOut) == nil)
        #expect(DNNLActivation.concatChannels([parts([16], dnnl_acdb).laidOut[0], parts([16], dnnl_aBcd16b).laidOut[0]]) == nil)
        #expect(DNNLActivation.concatChannels([parts([8], dnnl_acdb).laidOut[0], parts([8], dnnl_acdb, size: (3, 4)).laidOut[0]]) == nil)
    }

    @Test func concatOfOneTensorRepeatedAccumulates() {
        let x = randomVariable([2, 3], seed: 1)
        checkGradients([x]) { Tensor.concat([$0[0], $0[0].square()], axis: 1) }
    }

    @Test func concatWithAConstantLeavesItWithoutGradient() {
        let x = Tensor.variable(shape: [1, 2], values: [1, 2]), c = Tensor(shape: [1, 1], values: [5])
        let y = Tensor.concat([c, x], axis: 1)
        #expect(y.toArray() == [5, 1, 2])
        y.backward(seed: [10, 20, 30])
        #expect(x.gradArray == [20, 30])
        #expect(c.gradArray == nil)
    }

    @Test func sliceAndSplit() {
        let x = randomVariable([3, 5, 2], seed: 4)
        let v = x.toArray()
        // Axis 1, indices 1..<4: element (i, j, k) of the slice is x[i, j + 1, k].
        let s = x.slice(axis: 1, start: 1, end: 4)
        #expect(s.shape == [3, 3, 2])
        var expected: [Float] = []
        for i in 0..<3 { for j in 1..<4 { for k in 0..<2 { expected.append(v[(i * 5 + j) * 2 + k]) } } }
        #expect(s.toArray() == expected)
        #expect(x.slice(axis: -1, start: 1, end: 2).toArray() == stride(from: 1, to: 30, by: 2).map { v[$0] })
        checkGradients([x]) { $0[0].slice(axis: 1, start: 1, end: 4) }

        let pieces = x.split(sizes: [2, 0, 3], axis: 1)
        #expect(pieces.map(\.shape) == [[3, 2, 2], [3, 0, 2], [3, 3, 2]])
        #expect(Tensor.concat(pieces, axis: 1).toArray() == v)
        // A piece left unused gets no gradient: only the first two columns of axis 1 are used here.
        checkGradients([x]) { $0[0].split(sizes: [2, 3], axis: 1)[0].square() }
        x.clearGrad()
        x.split(sizes: [2, 3], axis: 1)[0].sum().backward()
        let g = x.gradArray ?? []
        for i in 0..<3 { for j in 0..<5 { for k in 0..<2 { #expect(g[(i * 5 + j) * 2 + k] == (j < 2 ? 1 : 0)) } } }
    }

    @Test func transposeMatchesNaivePermutation() {
        let shape = [2, 3, 4, 5]
        let x = randomVariable(shape, seed: 7)
        for perm in [[0, 2, 3, 1], [3, 1, 0, 2], [0, 1, 2, 3], [1, 0, 3, 2]] {
            let y = x.transposed(perm)
            #expect(y.shape == perm.map { shape[$0] })
            #expect(y.toArray() == naivePermute(x.toArray(), shape, perm))
        }
        // NCHW -> NHWC -> NCHW is the identity.
        #expect(x.transposed([0, 2, 3, 1]).transposed([0, 3, 1, 2]).toArray() == x.toArray())
        // A plain matrix transpose: y[j, i] = x[i, j].
        let m = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]).transposed([1, 0])
        #expect(m.toArray() == [1, 4, 2, 5, 3, 6])
        checkGradients([randomVariable([2, 3, 4], seed: 8)]) { $0[0].transposed([2, 0, 1]) }
        checkGradients([randomVariable([2, 3, 2, 3], seed: 9)]) { $0[0].transposed([3, 1, 0, 2]) }
    }
}
