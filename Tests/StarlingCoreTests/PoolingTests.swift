import Testing
@testable import StarlingCore

/// Pooling by plain loops: output (oh, ow) covers input rows [oh * sh - top, + kh) and columns
/// [ow * sw - left, + kw), clipped to the image; max takes the largest real pixel, average divides by their count.
func referencePool(_ x: Tensor, max: Bool, kernel: (Int, Int), stride: (Int, Int), top: Int, left: Int,
                   outH: Int, outW: Int) -> [Float] {
    let (planes, h, w) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3])
    let v = x.toArray()
    var y = [Float]()
    for p in 0..<planes { for oh in 0..<outH { for ow in 0..<outW {
        var best = -Double.infinity, sum = 0.0, count = 0
        for r in (oh * stride.0 - top)..<(oh * stride.0 - top + kernel.0) where r >= 0 && r < h {
            for c in (ow * stride.1 - left)..<(ow * stride.1 - left + kernel.1) where c >= 0 && c < w {
                let value = Double(v[(p * h + r) * w + c])
                best = Swift.max(best, value)
                sum += value
                count += 1
            }
        }
        y.append(Float(max ? best : sum / Double(count)))
    } } }
    return y
}

/// Distinct values at least 0.05 apart, so that no finite-difference step changes which pixel is the maximum.
func tieFreeVariable(_ shape: [Int], seed: UInt64) -> Tensor {
    var rng = RandomGenerator(seed: seed)
    let n = Tensor.elementCount(shape)
    return Tensor.variable(shape: shape, values: rng.permutation(n).map { Float($0) * 0.05 - Float(n) * 0.025 })
}

struct PoolCase: CustomStringConvertible {
    var shape = [2, 3, 7, 6], kernel = (3, 3), stride: (Int, Int)? = (2, 2), padding = Padding.same
    var outH: Int, outW: Int, top: Int, left: Int
    var description: String { "\(shape) k\(kernel) s\(String(describing: stride)) \(padding)" }
}

let poolCases: [PoolCase] = [
    // same: H 7 -> 4 with total pad 3*2+3-7 = 2 (top 1); W 6 -> 3 with total pad 2*2+3-6 = 1 (all on the right).
    PoolCase(outH: 4, outW: 3, top: 1, left: 0),
    // valid with the Keras default stride = kernel: 7/2 -> 3, 6/2 -> 3.
    PoolCase(kernel: (2, 2), stride: nil, padding: .valid, outH: 3, outW: 3, top: 0, left: 0),
    // valid, non-square kernel and strides: (6-3)/1+1 = 4, (7-2)/2+1 = 3.
    PoolCase(shape: [1, 2, 6, 7], kernel: (3, 2), stride: (1, 2), padding: .valid, outH: 4, outW: 3, top: 0, left: 0),
    // explicit: (5+1+1-3)/2+1 = 3, (5+0+1-3)/2+1 = 2.
    PoolCase(shape: [2, 1, 5, 5], padding: .explicit(top: 1, bottom: 1, left: 0, right: 1), outH: 3, outW: 2, top: 1, left: 0),
    // same at stride 1 keeps the size.
    PoolCase(shape: [1, 2, 4, 5], stride: (1, 1), outH: 4, outW: 5, top: 1, left: 1),
]

@Suite struct PoolingTests {
    @Test func maxPoolHandComputed() {
        let x = Tensor(shape: [1, 1, 4, 4], values: [1, 5, 2, 0,
                                                     3, 4, 8, 6,
                                                     9, 1, 2, 3,
                                                     0, 7, 4, 1])
        #expect(x.maxPool2d(kernel: (2, 2)).toArray() == [5, 8, 9, 4])
        // 5x5 same, 2x2 stride 2: 3x3 output, the extra padding row and column at the bottom and right.
        let y = Tensor(shape: [1, 1, 5, 5], values: (0..<25).map { Float(($0 * 7) % 25) })
        // values: row0 0 7 14 21 3 | row1 10 17 24 6 13 | row2 20 2 9 16 23 | row3 5 12 19 1 8 | row4 15 22 4 11 18
        let p = y.maxPool2d(kernel: (2, 2), padding: .same)
        #expect(p.shape == [1, 1, 3, 3])
        #expect(p.toArray() == [17, 24, 13,
                                20, 19, 23,
                                22, 11, 18])
    }

    @Test func maxPoolRoutesGradientToTheArgmax() {
        let x = Tensor.variable(shape: [1, 1, 2, 4], values: [1, 5, 2, 0,
                                                             3, 4, 8, 6])
        x.maxPool2d(kernel: (2, 2)).backward(seed: [10, 20])
        #expect(x.gradArray == [0, 10, 0, 0,
                                0, 0, 20, 0])
    }

    @Test func avgPoolHandComputedSameCountsOnlyRealPixels() {
        let x = Tensor(shape: [1, 1, 3, 3], values: (1...9).map(Float.init))
        // windows: {1,2,4,5}, {3,6}, {7,8}, {9}
        #expect(x.avgPool2d(kernel: (2, 2), padding: .same).toArray() == [3, 4.5, 7.5, 9])
        #expect(x.avgPool2d(kernel: (2, 2), stride: (1, 1)).toArray() == [3, 4, 6, 7])
    }

    @Test(arguments: poolCases.indices)
    func forwardMatchesLoops(_ index: Int) {
        let c = poolCases[index]
        let x = tieFreeVariable(c.shape, seed: UInt64(index))
        let stride = c.stride ?? c.kernel
        for isMax in [true, false] {
            let y = isMax ? x.maxPool2d(kernel: c.kernel, stride: c.stride, padding: c.padding)
                          : x.avgPool2d(kernel: c.kernel, stride: c.stride, padding: c.padding)
            #expect(y.shape == [c.shape[0], c.shape[1], c.outH, c.outW], "\(c)")
            expectClose(y.toArray(), referencePool(x, max: isMax, kernel: c.kernel, stride: stride, top: c.top, left: c.left,
                                                   outH: c.outH, outW: c.outW))
        }
    }

    /// Every max-pool path against the loops: with gradients (argmax kept) and without (inference: the 2x2 windows
    /// eight at a time), each on one thread and shared over two (the planes split between oneDNN's OpenMP threads).
    /// 2 x 8 planes of 65 x 70 pixels: enough work to be split, an odd row left over, 35 windows a row (4 x 8 + 3).
    @Test func maxPoolPathsAgree() {
        let x = tieFreeVariable([2, 8, 65, 70], seed: 5)
        let reference = referencePool(x, max: true, kernel: (2, 2), stride: (2, 2), top: 0, left: 0, outH: 32, outW: 35)
        for count in [1, 2] {
            BLAS.withThreadCount(count) {
                expectClose(x.maxPool2d(kernel: (2, 2)).toArray(), reference, tolerance: 0)
                expectClose(GradMode.disabled { x.maxPool2d(kernel: (2, 2)) }.toArray(), reference, tolerance: 0)
                let y = x.maxPool2d(kernel: (3, 2), stride: (2, 2), padding: .same)   // the general loop, both ways
                expectClose(GradMode.disabled { x.maxPool2d(kernel: (3, 2), stride: (2, 2), padding: .same) }.toArray(), y.toArray(), tolerance: 0)
            }
        }
    }

    @Test(arguments: poolCases.indices)
    func gradients(_ index: Int) {
        let c = poolCases[index]
        checkGradients([tieFreeVariable(c.shape, seed: UInt64(index + 20))]) {
            $0[0].maxPool2d(kernel: c.kernel, stride: c.stride, padding: c.padding)
        }
        checkGradients([randomVariable(c.shape, seed: UInt64(index + 40))]) {
            $0[0].avgPool2d(kernel: c.kernel, stride: c.stride, padding: c.padding)
        }
    }

    @Test func globalAveragePool() {
        let x = Tensor(shape: [2, 2, 1, 3], values: [1, 2, 3, 4, 5, 9, -1, 0, 1, 6, 6, 6])
        let y = x.globalAveragePool()
        #expect(y.shape == [2, 2])
        expectClose(y.toArray(), [2, 6, 0, 6])
        checkGradients([randomVariable([2, 3, 4, 3], seed: 5)]) { $0[0].globalAveragePool() }
    }
}
