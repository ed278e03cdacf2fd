/// Winograd's minimal filtering F(2x2, 3x3) of Starling's own (Lavin and Gray, "Fast Algorithms for Convolutional Neural
/// Networks", 2016), for 3x3 convolutions at stride 1 in the blocked layout of 8-channel blocks: the layout of AVX2 CPUs,
/// where oneDNN 2.x has no Winograd (its only f32 kernel, F(4x4, 3x3), is AVX-512's). Each 2 x 2 output tile is computed
/// from a 4 x 4 input tile with 16 multiplications per channel pair in place of 36:
///
///     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
///
/// summed over the input channels. The element-wise products, summed over channels, are 16 GEMMs of [tiles x Cin] x
/// [Cin x Cout] (one per element of the 4 x 4 transformed tile) on `BLAS.sgemm`; the transforms use only 0, +-1 and
/// +-1/2, so the result stays close to direct's (`WinogradF2x3Tests`). The tiles of every image of the call go through
/// in blocks of at most `blockFloats` floats of transformed tiles (scratch bounded whatever the batch, and small enough
/// to stay in cache between the transform and the GEMMs); the transforms of a block are shared out over the process's
/// threads, the GEMMs over BLAS's.
///
/// The input gradient of a stride-1 convolution is the same computation on dy with the kernels rotated 180 degrees and
/// the channel roles swapped, padded 2 - p on the top and left (reads past any edge are zeros), so both passes run
/// `convolve`. The weight gradient stays on Starling's blocked 3x3 kernel or oneDNN's direct one.
enum WinogradF2x3 {
    /// Floats of transformed input and product tiles held at once (2 MB): a block of tiles whose transforms and products
    /// stay in L2/L3 between the transform, the GEMMs and the output transform.
    static let blockFloats = 1 << 19

    /// Tiles per block: `blockFloats` worth of transformed tiles, but at least 32 (the GEMMs' rows) and at least
    /// 2 Cin Cout / (Cin + Cout), so that the transformed weights, read once a block, take at most half the traffic
    /// of the tiles (yolov3-tiny's 512 -> 1024 at 13 x 13: blocks of 32 tiles read its 32 MB of weights 42 times a
    /// call and ran 0.73x direct).
    static func tilesPerBlock(inChannels: Int, outChannels: Int) -> Int {
        Swift.max(32, blockFloats / (16 * (inChannels + outChannels)), 2 * inChannels * outChannels / (inChannels + outChannels))
    }

    /// U[e][k][n] = (G g G^T)[e] for the 16 elements e of the 4 x 4 transformed kernel, as 16 row-major [K x N] matrices
    /// (`u` holds 16 K N floats), from OIHW weights w[o][c][3][3]. Forward: K = Cin (c), N = Cout (o). `rotated` (the
    /// input gradient): K = Cout (o), N = Cin (c), each kernel turned 180 degrees.
    static func transformWeights(_ w: UnsafePointer<Float>, outChannels: Int, inChannels: Int, rotated: Bool,
                                 into u: UnsafeMutablePointer<Float>) {
        let matrix = outChannels * inChannels
        Parallel.forEachChunk(of: outChannels, work: matrix * 16) { range in
            for o in range {
                for c in 0..<inChannels {
                    let g = w + (o * inChannels + c) * 9
                    // g[i][j], turned 180 degrees for the input gradient.
                    @inline(__always) func tap(_ i: Int, _ j: Int) -> Float { rotated ? g[(2 - i) * 3 + 2 - j] : g[i * 3 + j] }
                    // t = G g (4 x 3, one SIMD4 per column j), G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
                    @inline(__always) func column(_ j: Int) -> SIMD4<Float> {
                        let (g0, g1, g2) = (tap(0, j), tap(1, j), tap(2, j))
                        return SIMD4<Float>(g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2)
                    }
                    let (t0, t1, t2) = (column(0), column(1), column(2))
                    // U = t G^T: column 0 = t0, 1 = (t0 + t1 + t2) / 2, 2 = (t0 - t1 + t2) / 2, 3 = t2.
                    let (u1, u2) = (0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2))
                    let at = u + (rotated ? o * inChannels + c : c * outChannels + o)
                    for row in 0..<4 {
                        at[(row * 4) * matrix] = t0[row]
                        at[(row * 4 + 1) * matrix] = u1[row]
                        at[(row * 4 + 2) * matrix] = u2[row]
                        at[(row * 4 + 3) * matrix] = t2[row]
                    }
                }
            }
        }
    }

    /// y = conv(x, w) (+ bias) (then max(., 0) with `relu`), or y += conv(x, w) with `accumulate`, for `images` images
    /// in 8-channel blocks: x is [images, inChannels / 8, height, width, 8], y [images, outChannels / 8, outHeight,
    /// outWidth, 8], `u` the weights from `transformWeights` (K = inChannels, N = outChannels). Output pixel (r, q)
    /// reads input rows r - padTop ... r - padTop + 2 and columns likewise; reads outside the input are zeros (padding
    /// of any size on any side). `tilesPerBlock` only for tests (blocks that cut the batch at odd places).
    static func convolve(images: Int, input x: UnsafePointer<Float>, inChannels: Int, height: Int, width: Int,
                         transformedWeights u: UnsafePointer<Float>, outChannels: Int, outHeight: Int, outWidth: Int,
                         padTop: Int, padLeft: Int, bias: UnsafePointer<Float>?, output y: UnsafeMutablePointer<Float>,
                         accumulate: Bool, relu: Bool = false, tilesPerBlock: Int? = nil) {
        precondition(inChannels % 8 == 0 && outChannels % 8 == 0, "Winograd F(2x2, 3x3) runs on 8-channel blocks")
        let (tileRows, tileColumns) = ((outHeight + 1) / 2, (outWidth + 1) / 2)
        let tilesPerImage = tileRows * tileColumns, tiles = images * tilesPerImage
        guard tiles > 0 else { return }
        let block = Swift.min(tiles, tilesPerBlock ?? Self.tilesPerBlock(inChannels: inChannels, outChannels: outChannels))
        let (inBlocks, outBlocks) = (inChannels / 8, outChannels / 8)
        let (inPlane, outPlane) = (height * width * 8, outHeight * outWidth * 8)
        // V[e] = [block x inChannels], M[e] = [block x outChannels], e = 0..<16.
        let v = UnsafeMutablePointer<Float>.allocate(capacity: 16 * block * inChannels)
        let m = UnsafeMutablePointer<Float>.allocate(capacity: 16 * block * outChannels)
        defer { v.deallocate(); m.deallocate() }
        let (vStride, mStride) = (block * inChannels, block * outChannels)
        for first in stride(from: 0, to: tiles, by: block) {
            let count = Swift.min(block, tiles - first)
            // B^T d B of every tile and input block.
            Parallel.forEachChunk(of: count, work: count * 16 * (inChannels + outChannels)) { range in
                for t in range {
                    let (image, tile) = (first + t).quotientAndRemainder(dividingBy: tilesPerImage)
                    let (tileRow, tileColumn) = tile.quotientAndRemainder(dividingBy: tileColumns)
                    let (top, left) = (2 * tileRow - padTop, 2 * tileColumn - padLeft)
                    let inside = top >= 0 && left >= 0 && top + 4 <= height && left + 4 <= width
                    for b in 0..<inBlocks {
                        let plane = x + (image * inBlocks + b) * inPlane
                        inputTile(plane, top: top, left: left, height: height, width: width, inside: inside,
                                  into: v + t * inChannels + b * 8, stride: vStride)
                    }
                }
            }
            // The products, summed over the input channels: M[e] = V[e] U[e].
            for e in 0..<16 {
                BLAS.sgemm(transA: false, transB: false, m: count, n: outChannels, k: inChannels,
                           a: v + e * vStride, lda: inChannels, b: u + e * inChannels * outChannels, ldb: outChannels,
                           beta: 0, c: m + e * mStride, ldc: outChannels)
            }
            // A^T M A (+ bias) into the output, cut at the bottom and right edges.
            Parallel.forEachChunk(of: count, work: count * 16 * (inChannels + outChannels)) { range in
                for t in range {
                    let (image, tile) = (first + t).quotientAndRemainder(dividingBy: tilesPerImage)
                    let (tileRow, tileColumn) = tile.quotientAndRemainder(dividingBy: tileColumns)
                    let (row, column) = (2 * tileRow, 2 * tileColumn)
                    let (rows, columns) = (Swift.min(2, outHeight - row), Swift.min(2, outWidth - column))
                    for b in 0..<outBlocks {
                        let out = y + (image * outBlocks + b) * outPlane + (row * outWidth + column) * 8
                        outputTile(m + t * outChannels + b * 8, stride: mStride, bias: bias.map { $0 + b * 8 }, into: out,
                                   rowFloats: outWidth * 8, rows: rows, columns: columns, accumulate: accumulate, relu: relu)
                    }
                }
            }
        }
    }

    /// B^T d B of the 4 x 4 tile of 8-channel pixels whose top left is (top, left) in a plane of height x width pixels
    /// (zeros outside), element e stored at out + e * stride. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
    @inline(__always)
    static func inputTile(_ plane: UnsafePointer<Float>, top: Int, left: Int, height: Int, width: Int, inside: Bool,
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
    @inline(__always)
    static func outputTile(_ m: UnsafePointer<Float>, stride: Int, bias: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>,
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

extension ConvGeometry {
    /// A convolution Starling's F(2x2, 3x3) computes: 3x3 at stride 1 without dilation or groups, padding at most 1
    /// on each side (`winogradShape`), both sides in 8-channel blocks.
    func ownWinogradShape(_ layouts: DNNLConvPlan.Layouts) -> Bool {
        winogradShape && layouts.sourceBlocked && layouts.destinationBlocked && layouts.sourceWidth == 8 && layouts.destinationWidth == 8
            && inChannels % 8 == 0 && outChannels % 8 == 0
    }

    /// Whether Starling's F(2x2, 3x3) runs `pass` here: a shape it computes, on a CPU where oneDNN has no Winograd of its
    /// own (below AVX-512) and Starling's kernels are on, under `setting` (by default this geometry's `winograd`, else
    /// STARLING_WINOGRAD's): 1 wherever the shape allows, 0 or unset never. Unset is off because it did not pay in
    /// whole training steps on this AVX2 machine (BENCHMARKS.md "Starling's Winograd F(2x2, 3x3) on AVX2"): alone, on
    /// one thread, it ran the passes of 64 channels or more on maps of 16-52 pixels 1.05-1.5x as fast as direct (and
    /// 0.4-0.9x elsewhere), but a U-Net or yolov3-tiny step on 2 threads took about twice the CPU time with those passes
    /// on it, and on 2 ranks x 1 thread the difference was within the noise of a loaded machine. `anyCPU` (tests)
    /// lets it run on AVX-512 CPUs too; `forcedForTests` (a task-local) runs it through the ops as
    /// STARLING_WINOGRAD=1 would on any CPU.
    func runsOwnWinograd(_ pass: ConvolutionPass, _ layouts: DNNLConvPlan.Layouts, setting: WinogradSetting? = nil,
                         anyCPU: Bool = false) -> Bool {
        guard pass != .backwardWeights, ownWinogradShape(layouts) else { return false }
        if Self.ownWinogradForcedForTests && setting == nil && winograd == nil { return true }
        guard anyCPU || (Self.ownKernels && !DNNLActivation.instructionSet.hasPrefix("avx512")) else { return false }
        return (setting ?? winograd ?? WinogradSetting.current) == .always
    }

    /// Set by tests around an op call to run Starling's F(2x2, 3x3) wherever its shape allows, on any CPU.
    @TaskLocal static var ownWinogradForcedForTests = false

    /// The forward pass by Starling's F(2x2, 3x3) when `runsOwnWinograd(.forward, layouts)`: y = conv(x, w) + bias
    /// (rectified with `relu`). False, doing nothing, otherwise.
    func ownWinogradForward(input x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                            output y: UnsafeMutablePointer<Float>, layouts: DNNLConvPlan.Layouts, relu: Bool = false,
                            setting: WinogradSetting? = nil, anyCPU: Bool = false, tilesPerBlock: Int? = nil) -> Bool {
        guard runsOwnWinograd(.forward, layouts, setting: setting, anyCPU: anyCPU) else { return false }
        let u = UnsafeMutablePointer<Float>.allocate(capacity: 16 * inChannels * outChannels)
        defer { u.deallocate() }
        WinogradF2x3.transformWeights(w, outChannels: outChannels, inChannels: inChannels, rotated: false, into: u)
        WinogradF2x3.convolve(images: batch, input: x, inChannels: inChannels, height: height, width: width, transformedWeights: u,
                              outChannels: outChannels, outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft,
                              bias: bias, output: y, accumulate: false, relu: relu, tilesPerBlock: tilesPerBlock)
        return true
    }

    /// The input gradient by Starling's F(2x2, 3x3) when `runsOwnWinograd(.backwardData, layouts)`: dx = conv^T(dy, w),
    /// or dx += it with `accumulate`; the forward computation on dy with the kernels turned 180 degrees, Cin and Cout
    /// swapped and 2 - p pixels of padding. False, doing nothing, otherwise.
    func ownWinogradInputGradient(outputGrad dy: UnsafePointer<Float>, weight w: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>,
                                  accumulate: Bool, layouts: DNNLConvPlan.Layouts, setting: WinogradSetting? = nil,
                                  anyCPU: Bool = false, tilesPerBlock: Int? = nil) -> Bool {
        guard runsOwnWinograd(.backwardData, layouts, setting: setting, anyCPU: anyCPU) else { return false }
        let u = UnsafeMutablePointer<Float>.allocate(capacity: 16 * inChannels * outChannels)
        defer { u.deallocate() }
        WinogradF2x3.transformWeights(w, outChannels: outChannels, inChannels: inChannels, rotated: true, into: u)
        WinogradF2x3.convolve(images: batch, input: dy, inChannels: outChannels, height: outHeight, width: outWidth, transformedWeights: u,
                              outChannels: inChannels, outHeight: height, outWidth: width, padTop: 2 - padTop, padLeft: 2 - padLeft,
                              bias: nil, output: dx, accumulate: accumulate, tilesPerBlock: tilesPerBlock)
        return true
    }
}
