/// The input and output transforms of Starling's Winograd F(2x2, 3x3) (StarlingCore's `WinogradF2x3`) over a block of
/// tiles, here so that they are compiled for AVX2 and FMA in `StarlingKernelsAVX2` (one ymm register an 8-channel pixel)
/// rather than for baseline x86-64 (two xmm halves). They only add, subtract and store, so every build gives the same
/// bits (tested).
///
/// The geometry of one call: `images` of `inBlocks` 8-channel planes of height x width in, `outBlocks` planes of
/// outHeight x outWidth out, 2 x 2 output tiles numbered image by image, row by row; output pixel (r, q) reads input
/// rows r - padTop ... r - padTop + 2 and columns likewise, reads outside the input being zeros.
public struct WinogradTiling: Sendable {
    public let inBlocks: Int, height: Int, width: Int
    public let outBlocks: Int, outHeight: Int, outWidth: Int
    public let padTop: Int, padLeft: Int
    public let tileColumns: Int, tilesPerImage: Int

    @inlinable
    public init(inBlocks: Int, height: Int, width: Int, outBlocks: Int, outHeight: Int, outWidth: Int, padTop: Int, padLeft: Int) {
        (self.inBlocks, self.height, self.width) = (inBlocks, height, width)
        (self.outBlocks, self.outHeight, self.outWidth) = (outBlocks, outHeight, outWidth)
        (self.padTop, self.padLeft) = (padTop, padLeft)
        tileColumns = (outWidth + 1) / 2
        tilesPerImage = ((outHeight + 1) / 2) * tileColumns
    }
}

public enum WinogradTransforms {
    /// B^T d B of tiles first ..< first + count (numbered over the whole call) from the blocked input x, tile t of the
    /// block at v + t * inBlocks * 8 + e * stride for its 16 elements e (V[e] = [count x Cin] row-major, rows `stride`
    /// floats apart per element).
    /// Only the 8-channel blocks `blocks` of the input with `blocks` (the weight gradient's share of a thread): rows of
    /// blocks.count * 8 floats, block `blocks.lowerBound` first.
    @inlinable @inline(__always)
    public static func inputTiles(_ s: WinogradTiling, first: Int, count: Int, x: UnsafePointer<Float>, blocks: Range<Int>? = nil,
                                  into v: UnsafeMutablePointer<Float>, stride: Int) {
        let blocks = blocks ?? 0..<s.inBlocks
        let (rowFloats, inPlane) = (blocks.count * 8, s.height * s.width * 8)
        for t in 0..<count {
            let (image, tile) = (first + t).quotientAndRemainder(dividingBy: s.tilesPerImage)
            let (tileRow, tileColumn) = tile.quotientAndRemainder(dividingBy: s.tileColumns)
            let (top, left) = (2 * tileRow - s.padTop, 2 * tileColumn - s.padLeft)
            let inside = top >= 0 && left >= 0 && top + 4 <= s.height && left + 4 <= s.width
            for b in blocks {
                let plane = x + (image * s.inBlocks + b) * inPlane
                inputTile(plane, top: top, left: left, height: s.height, width: s.width, inside: inside,
                          into: v + t * rowFloats + (b - blocks.lowerBound) * 8, stride: stride)
            }
        }
    }

    /// The weight gradient's transform of the output gradient: A dY A^T (the gradient of the products M, as
    /// Y = A^T M A) of tiles first ..< first + count from the blocked dy (outBlocks planes of outHeight x outWidth),
    /// tile t's element e at m + t * outBlocks * 8 + e * stride; pixels past the bottom and right edges are zeros.
    @inlinable @inline(__always)
    public static func gradientTiles(_ s: WinogradTiling, first: Int, count: Int, dy: UnsafePointer<Float>,
                                     into m: UnsafeMutablePointer<Float>, stride: Int) {
        typealias V = SIMD8<Float>
        let (outChannels, outPlane) = (s.outBlocks * 8, s.outHeight * s.outWidth * 8)
        for t in 0..<count {
            let (image, tile) = (first + t).quotientAndRemainder(dividingBy: s.tilesPerImage)
            let (tileRow, tileColumn) = tile.quotientAndRemainder(dividingBy: s.tileColumns)
            let (row, column) = (2 * tileRow, 2 * tileColumn)
            let rows = Swift.min(2, s.outHeight &- row), columns = Swift.min(2, s.outWidth &- column)
            let rowFloats = s.outWidth * 8, corner = (row * s.outWidth + column) * 8
            for b in 0..<s.outBlocks {
                let plane: UnsafePointer<Float> = dy + ((image * s.outBlocks + b) * outPlane + corner)
                @inline(__always) func load(_ i: Int, _ j: Int) -> V {
                    if i >= rows || j >= columns { return V() }
                    let at: UnsafePointer<Float> = plane + (i * rowFloats + j * 8)
                    return UnsafeRawPointer(at).loadUnaligned(as: V.self)
                }
                // A = [1 0; 1 1; 1 -1; 0 -1]. Per column j of dY: (A dY)[i][j] for i = 0...3; then each row times A^T.
                @inline(__always) func column(_ j: Int) -> (V, V, V, V) {
                    let (d0, d1) = (load(0, j), load(1, j))
                    return (d0, d0 + d1, d0 - d1, V() - d1)
                }
                let (c0, c1) = (column(0), column(1))
                let out = m + t * outChannels + b * 8
                @inline(__always) func row(_ i: Int, _ a: V, _ b: V) {
                    let base = UnsafeMutableRawPointer(out + 4 * i * stride), step = stride * 4
                    base.storeBytes(of: a, as: V.self)
                    base.storeBytes(of: a + b, toByteOffset: step, as: V.self)
                    base.storeBytes(of: a - b, toByteOffset: 2 * step, as: V.self)
                    base.storeBytes(of: V() - b, toByteOffset: 3 * step, as: V.self)
                }
                row(0, c0.0, c1.0)
                row(1, c0.1, c1.1)
                row(2, c0.2, c1.2)
                row(3, c0.3, c1.3)
            }
        }
    }

    /// A^T M A (+ bias, then max(., 0) with `relu`) of tiles first ..< first + count from the products m (tile t's
    /// element e at m + t * outBlocks * 8 + e * stride), stored (or added, with `accumulate`) into the blocked output y,
    /// cut at the bottom and right edges.
    @inlinable @inline(__always)
    public static func outputTiles(_ s: WinogradTiling, first: Int, count: Int, m: UnsafePointer<Float>, stride: Int,
                                   bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, accumulate: Bool, relu: Bool) {
        let (outChannels, outPlane) = (s.outBlocks * 8, s.outHeight * s.outWidth * 8)
        for t in 0..<count {
            let (image, tile) = (first + t).quotientAndRemainder(dividingBy: s.tilesPerImage)
            let (tileRow, tileColumn) = tile.quotientAndRemainder(dividingBy: s.tileColumns)
            let (row, column) = (2 * tileRow, 2 * tileColumn)
            let (rows, columns) = (Swift.min(2, s.outHeight - row), Swift.min(2, s.outWidth - column))
            for b in 0..<s.outBlocks {
                let out = y + (image * s.outBlocks + b) * outPlane + (row * s.outWidth + column) * 8
                outputTile(m + t * outChannels + b * 8, stride: stride, bias: bias.map { $0 + b * 8 }, into: out,
                           rowFloats: s.outWidth * 8, rows: rows, columns: columns, accumulate: accumulate, relu: relu)
            }
        }
    }

    /// B^T d B of the 4 x 4 tile of 8-channel pixels whose top left is (top, left) in a plane of height x width pixels
    /// (zeros outside), element e stored at out + e * stride. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
    @inlinable @inline(__always)
    public static func inputTile(_ plane: UnsafePointer<Float>, top: Int, left: Int, height: Int, width: Int, inside: Bool,
                                 into out: UnsafeMutablePointer<Float>, stride: Int) {
        typealias V = SIMD8<Float>
        @inline(__always) func load(_ i: Int, _ j: Int) -> V {
            let (r, q) = (top + i, left + j)
            if !inside && (r < 0 || r >= height || q < 0 || q >= width) { return V() }
            return UnsafeRawPointer(plane + (r * width + q) * 8).loadUnaligned(as: V.self)
        }
        // Per column j: (B^T d)[i][j] for i = 0...3; then each row of that times B.
        @inline(__always) func column(_ j: Int) -> (V, V, V, V) {
            let (d0, d1, d2, d3) = (load(0, j), load(1, j), load(2, j), load(3, j))
            return (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
        }
        let (c0, c1, c2, c3) = (column(0), column(1), column(2), column(3))
        @inline(__always) func row(_ i: Int, _ a: V, _ b: V, _ c: V, _ d: V) {
            let base = UnsafeMutableRawPointer(out + 4 * i * stride), step = stride * 4
            base.storeBytes(of: a - c, as: V.self)
            base.storeBytes(of: b + c, toByteOffset: step, as: V.self)
            base.storeBytes(of: c - b, toByteOffset: 2 * step, as: V.self)
            base.storeBytes(of: b - d, toByteOffset: 3 * step, as: V.self)
        }
        row(0, c0.0, c1.0, c2.0, c3.0)
        row(1, c0.1, c1.1, c2.1, c3.1)
        row(2, c0.2, c1.2, c2.2, c3.2)
        row(3, c0.3, c1.3, c2.3, c3.3)
    }

    /// A^T m A (+ bias) of the 16 product elements at m + e * stride (one 8-channel block), stored or added into the
    /// rows x columns (1 or 2 each) pixels from `out`. A^T = [1 1 1 0; 0 1 -1 -1].
    @inlinable @inline(__always)
    public static func outputTile(_ m: UnsafePointer<Float>, stride: Int, bias: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>,
                                  rowFloats: Int, rows: Int, columns: Int, accumulate: Bool, relu: Bool) {
        typealias V = SIMD8<Float>
        @inline(__always) func load(_ e: Int) -> V { UnsafeRawPointer(m + e * stride).loadUnaligned(as: V.self) }
        // Per column j: (A^T m)[0][j] and [1][j]; then each of those two rows times A.
        @inline(__always) func column(_ j: Int) -> (V, V) {
            let (m0, m1, m2, m3) = (load(j), load(4 + j), load(8 + j), load(12 + j))
            return (m0 + m1 + m2, m1 - m2 - m3)
        }
        let (c0, c1, c2, c3) = (column(0), column(1), column(2), column(3))
        let b = bias.map { UnsafeRawPointer($0).loadUnaligned(as: V.self) } ?? V()
        @inline(__always) func store(_ value: V, _ i: Int, _ j: Int) {
            let p = UnsafeMutableRawPointer(out + i * rowFloats + j * 8)
            var value = value
            if accumulate { value += p.loadUnaligned(as: V.self) }
            if relu { value = value.replacing(with: 0, where: .!(value .> 0)) }   // as `relu()`: NaN to 0 too
            p.storeBytes(of: value, as: V.self)
        }
        store(c0.0 + c1.0 + c2.0 + b, 0, 0)
        if columns > 1 { store(c1.0 - c2.0 - c3.0 + b, 0, 1) }
        if rows > 1 {
            store(c0.1 + c1.1 + c2.1 + b, 1, 0)
            if columns > 1 { store(c1.1 - c2.1 - c3.1 + b, 1, 1) }
        }
    }
}

/// The element-wise stage of Starling's Winograd F(2x2, 3x3): for each of the 16 elements e of the transformed tile,
/// M[e] = V[e] U[e], the products summed over the K channels a pass reads. Written here rather than as 16 sgemm calls
/// because the shapes are small and many: U-Net's 16- and 32-channel layers sum over K = 16 or 32, where OpenBLAS
/// spent as long zeroing C (beta = 0) and packing A and B as multiplying (BENCHMARKS.md, "U-Net at width 0.25 against
/// PyTorch on AVX2"). A register block of 6 tiles x 16 output channels (12 accumulators) reads V straight from the
/// transform's rows and U's rows in place: nothing is packed and nothing zeroed. Each product is summed over k in order,
/// one tile at a time, so a tile's result does not depend on the block or thread that computes it.
public enum WinogradProducts {
    /// M[e] (count x n, rows n floats apart, at m + e * mStride) = V[e] (count x k, rows k floats apart, at
    /// v + e * vStride) times U[e] (k x n row-major at u + e * k * n), for e = 0..<16; n a multiple of 8.
    @inlinable @inline(__always)
    public static func multiply<F: MultiplyAdd>(count: Int, k: Int, n: Int, v: UnsafePointer<Float>, vStride: Int,
                                                u: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>, mStride: Int, _: F.Type) {
        typealias V = SIMD8<Float>
        for e in 0..<16 {
            let ve = v + e &* vStride, ue = u + e &* k &* n, me = m + e &* mStride
            var column = 0
            while column < n {
                let wide = n &- column >= 16
                let uc = ue + column
                var t = 0
                while t &+ 6 <= count {
                    let a = ve + t &* k
                    var (c00, c01, c10, c11, c20, c21) = (V(), V(), V(), V(), V(), V())
                    var (c30, c31, c40, c41, c50, c51) = (V(), V(), V(), V(), V(), V())
                    if wide {
                        for j in 0..<k {
                            let b0 = V.load(uc + j &* n), b1 = V.load(uc + (j &* n &+ 8))
                            let r = a + j
                            var x = V(repeating: r[0])
                            c00 = F.multiplyAdd(x, b0, c00); c01 = F.multiplyAdd(x, b1, c01)
                            x = V(repeating: r[k])
                            c10 = F.multiplyAdd(x, b0, c10); c11 = F.multiplyAdd(x, b1, c11)
                            x = V(repeating: r[2 &* k])
                            c20 = F.multiplyAdd(x, b0, c20); c21 = F.multiplyAdd(x, b1, c21)
                            x = V(repeating: r[3 &* k])
                            c30 = F.multiplyAdd(x, b0, c30); c31 = F.multiplyAdd(x, b1, c31)
                            x = V(repeating: r[4 &* k])
                            c40 = F.multiplyAdd(x, b0, c40); c41 = F.multiplyAdd(x, b1, c41)
                            x = V(repeating: r[5 &* k])
                            c50 = F.multiplyAdd(x, b0, c50); c51 = F.multiplyAdd(x, b1, c51)
                        }
                    } else {
                        for j in 0..<k {
                            let b0 = V.load(uc + j &* n)
                            let r = a + j
                            c00 = F.multiplyAdd(V(repeating: r[0]), b0, c00)
                            c10 = F.multiplyAdd(V(repeating: r[k]), b0, c10)
                            c20 = F.multiplyAdd(V(repeating: r[2 &* k]), b0, c20)
                            c30 = F.multiplyAdd(V(repeating: r[3 &* k]), b0, c30)
                            c40 = F.multiplyAdd(V(repeating: r[4 &* k]), b0, c40)
                            c50 = F.multiplyAdd(V(repeating: r[5 &* k]), b0, c50)
                        }
                    }
                    let out = me + (t &* n &+ column)
                    c00.store(out); c10.store(out + n); c20.store(out + 2 &* n)
                    c30.store(out + 3 &* n); c40.store(out + 4 &* n); c50.store(out + 5 &* n)
                    if wide {
                        c01.store(out + 8); c11.store(out + (n &+ 8)); c21.store(out + (2 &* n &+ 8))
                        c31.store(out + (3 &* n &+ 8)); c41.store(out + (4 &* n &+ 8)); c51.store(out + (5 &* n &+ 8))
                    }
                    t &+= 6
                }
                // The last tiles, one at a time (the same sums in the same order).
                while t < count {
                    let a = ve + t &* k
                    var (c0, c1) = (V(), V())
                    for j in 0..<k {
                        let x = V(repeating: a[j])
                        c0 = F.multiplyAdd(x, V.load(uc + j &* n), c0)
                        if wide { c1 = F.multiplyAdd(x, V.load(uc + (j &* n &+ 8)), c1) }
                    }
                    let out = me + (t &* n &+ column)
                    c0.store(out)
                    if wide { c1.store(out + 8) }
                    t &+= 1
                }
                column &+= wide ? 16 : 8
            }
        }
    }
}

extension WinogradProducts {
    /// The weight gradient's element-wise stage: for e = 0..<16, C[e] += A[e]^T B[e], summed over the `count` tiles of a
    /// block: A[e] (count x n, the output gradient's transformed tiles, rows n floats apart, at a + e * aStride), B[e]
    /// (count x k, the input's, rows k floats apart, at b + e * bStride), C[e] (n x k, rows ldc floats apart, at
    /// c + e * cStride); k a multiple of 8. A register block of 6 rows x 16 columns (12 accumulators) runs over the tiles,
    /// then adds into C: each element of C gets its block's sum over the tiles in tile order, then that sum, whatever
    /// the columns or rows around it, so a thread's share of the columns does not change the bits.
    @inlinable @inline(__always)
    public static func accumulateTransposed<F: MultiplyAdd>(count: Int, n: Int, k: Int, a: UnsafePointer<Float>, aStride: Int,
                                                            b: UnsafePointer<Float>, bStride: Int, c: UnsafeMutablePointer<Float>,
                                                            cStride: Int, ldc: Int, _: F.Type) {
        typealias V = SIMD8<Float>
        for e in 0..<16 {
            let ae = a + e &* aStride, be = b + e &* bStride, ce = c + e &* cStride
            var column = 0
            while column < k {
                let wide = k &- column >= 16
                let bc = be + column
                var i = 0
                while i &+ 6 <= n {
                    var (c00, c01, c10, c11, c20, c21) = (V(), V(), V(), V(), V(), V())
                    var (c30, c31, c40, c41, c50, c51) = (V(), V(), V(), V(), V(), V())
                    if wide {
                        for t in 0..<count {
                            let b0 = V.load(bc + t &* k), b1 = V.load(bc + (t &* k &+ 8))
                            let r = ae + (t &* n &+ i)
                            var x = V(repeating: r[0])
                            c00 = F.multiplyAdd(x, b0, c00); c01 = F.multiplyAdd(x, b1, c01)
                            x = V(repeating: r[1])
                            c10 = F.multiplyAdd(x, b0, c10); c11 = F.multiplyAdd(x, b1, c11)
                            x = V(repeating: r[2])
                            c20 = F.multiplyAdd(x, b0, c20); c21 = F.multiplyAdd(x, b1, c21)
                            x = V(repeating: r[3])
                            c30 = F.multiplyAdd(x, b0, c30); c31 = F.multiplyAdd(x, b1, c31)
                            x = V(repeating: r[4])
                            c40 = F.multiplyAdd(x, b0, c40); c41 = F.multiplyAdd(x, b1, c41)
                            x = V(repeating: r[5])
                            c50 = F.multiplyAdd(x, b0, c50); c51 = F.multiplyAdd(x, b1, c51)
                        }
                    } else {
                        for t in 0..<count {
                            let b0 = V.load(bc + t &* k)
                            let r = ae + (t &* n &+ i)
                            c00 = F.multiplyAdd(V(repeating: r[0]), b0, c00)
                            c10 = F.multiplyAdd(V(repeating: r[1]), b0, c10)
                            c20 = F.multiplyAdd(V(repeating: r[2]), b0, c20)
                            c30 = F.multiplyAdd(V(repeating: r[3]), b0, c30)
                            c40 = F.multiplyAdd(V(repeating: r[4]), b0, c40)
                            c50 = F.multiplyAdd(V(repeating: r[5]), b0, c50)
                        }
                    }
                    @inline(__always) func add(_ value: V, _ row: Int, _ offset: Int) {
                        let p = ce + ((i &+ row) &* ldc &+ column &+ offset)
                        (V.load(p) + value).store(p)
                    }
                    add(c00, 0, 0); add(c10, 1, 0); add(c20, 2, 0); add(c30, 3, 0); add(c40, 4, 0); add(c50, 5, 0)
                    if wide { add(c01, 0, 8); add(c11, 1, 8); add(c21, 2, 8); add(c31, 3, 8); add(c41, 4, 8); add(c51, 5, 8) }
                    i &+= 6
                }
                // The last rows, one at a time (the same sums in the same order).
                while i < n {
                    var (c0, c1) = (V(), V())
                    for t in 0..<count {
                        let x = V(repeating: ae[t &* n &+ i])
                        c0 = F.multiplyAdd(x, V.load(bc + t &* k), c0)
                        if wide { c1 = F.multiplyAdd(x, V.load(bc + (t &* k &+ 8)), c1) }
                    }
                    let p = ce + (i &* ldc &+ column)
                    (V.load(p) + c0).store(p)
                    if wide { (V.load(p + 8) + c1).store(p + 8) }
                    i &+= 1
                }
                column &+= wide ? 16 : 8
            }
        }
    }
}

/// `WinogradTransforms` as entry points of a module built for an instruction set above baseline (a protocol of its own
/// beside `FusedKernelSet`, which `KernelDispatch.winogradKernels` picks by level).
public protocol WinogradKernelSet {
    static func winogradInputTiles(_ s: WinogradTiling, first: Int, count: Int, x: UnsafePointer<Float>, blocks: Range<Int>?,
                                   into v: UnsafeMutablePointer<Float>, stride: Int)
    static func winogradGradientTiles(_ s: WinogradTiling, first: Int, count: Int, dy: UnsafePointer<Float>,
                                      into m: UnsafeMutablePointer<Float>, stride: Int)
    static func winogradWeightProducts(count: Int, n: Int, k: Int, a: UnsafePointer<Float>, aStride: Int, b: UnsafePointer<Float>,
                                       bStride: Int, c: UnsafeMutablePointer<Float>, cStride: Int, ldc: Int)
    static func winogradOutputTiles(_ s: WinogradTiling, first: Int, count: Int, m: UnsafePointer<Float>, stride: Int,
                                    bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, accumulate: Bool, relu: Bool)
    static func winogradProducts(count: Int, k: Int, n: Int, v: UnsafePointer<Float>, vStride: Int, u: UnsafePointer<Float>,
                                 m: UnsafeMutablePointer<Float>, mStride: Int)
}
