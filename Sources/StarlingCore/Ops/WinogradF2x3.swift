import StarlingKernelsAVX2
import StarlingKernelsAVX512

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
/// to stay in cache between the transform and the GEMMs), each thread its own blocks (`convolve`); the transforms are
/// `StarlingKernels`' `WinogradTransforms`, run in the AVX2 build where the CPU has it (`KernelDispatch`).
///
/// The input gradient of a stride-1 convolution is the same computation on dy with the kernels rotated 180 degrees and
/// the channel roles swapped, padded 2 - p on the top and left (reads past any edge are zeros), so both passes run
/// `convolve`. The weight gradient (`weightGradient`) sums the products of both sides' transformed tiles over the tiles
/// and turns the 4 x 4 sums back into 3 x 3 kernels.
enum WinogradF2x3 {
    /// Floats of transformed input and product tiles held at once (256 KB): a block of tiles whose transforms and
    /// products stay in L2 between the input transform, the products and the output transform.
    static let blockFloats = 1 << 16

    /// Whether the products run on `WinogradProducts` (a register block of 6 tiles x 16 channels reading V and U in
    /// place) rather than 16 sgemm calls a block: up to 128 x 128 channels, where the GEMMs are small and OpenBLAS's
    /// packing and zeroing of C cost as much as the multiplications. Above, sgemm's packed, cache-blocked kernel reads
    /// the large U fewer times (yolov3-tiny's 256 -> 512 at 13 x 13 ran 0.4-0.6x direct on the register block, 1.1x
    /// on sgemm; BENCHMARKS.md, "U-Net at width 0.25 against PyTorch on AVX2").
    static func ownProducts(inChannels: Int, outChannels: Int) -> Bool { inChannels * outChannels <= 128 * 128 }

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
    /// of any size on any side).
    ///
    /// The tiles go through in blocks, and each of `threads` threads (by default the process's) takes its own run of
    /// blocks from start to end: input transform, the 16 GEMMs on OpenBLAS's one thread (`BLAS.withOneThread`), output
    /// transform, in its own scratch. One OpenMP region a call and no threaded GEMM: with the transforms in regions of
    /// their own between OpenBLAS's threaded GEMMs, each pool's threads spun while the other's worked and a U-Net step
    /// on 2 threads took twice the CPU (BENCHMARKS.md, "Starling's Winograd F(2x2, 3x3) on AVX2, part 2"). A block's
    /// arithmetic does not depend on the thread that runs it, so for the same blocks any thread count gives the same
    /// bits. Blocks hold at most `tilesPerBlock` tiles (`tilesPerBlock(inChannels:outChannels:)` by default; tests
    /// pass small ones that end inside images and rows) and at most a thread's share of the call's tiles, so that every
    /// thread has work. `kernels`: the build of the transforms (tests compare them).
    static func convolve(images: Int, input x: UnsafePointer<Float>, inChannels: Int, height: Int, width: Int,
                         transformedWeights u: UnsafePointer<Float>, outChannels: Int, outHeight: Int, outWidth: Int,
                         padTop: Int, padLeft: Int, bias: UnsafePointer<Float>?, output y: UnsafeMutablePointer<Float>,
                         accumulate: Bool, relu: Bool = false, tilesPerBlock: Int? = nil, threads: Int? = nil,
                         kernels: KernelDispatch.Level = KernelDispatch.current) {
        precondition(inChannels % 8 == 0 && outChannels % 8 == 0, "Winograd F(2x2, 3x3) runs on 8-channel blocks")
        let s = WinogradTiling(inBlocks: inChannels / 8, height: height, width: width, outBlocks: outChannels / 8,
                               outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft)
        let tiles = images * s.tilesPerImage
        guard tiles > 0 else { return }
        let threads = Swift.max(1, Swift.min(threads ?? BLAS.threadCount, tiles))
        let block = Swift.min((tiles + threads - 1) / threads,
                              tilesPerBlock ?? Self.tilesPerBlock(inChannels: inChannels, outChannels: outChannels))
        let blocks = (tiles + block - 1) / block
        let workers = Swift.min(threads, blocks)
        // Per worker: V[e] = [block x inChannels], then M[e] = [block x outChannels], e = 0..<16.
        // One cache line more than the rows need: with strides of a power of two (blocks of 2^k tiles of 2^j channels) the
        // 16 elements of a tile, stored 16 strides apart, fell in one set of the L1 cache.
        let (vStride, mStride) = (block * inChannels + 16, block * outChannels + 16)
        let scratchFloats = 16 * (vStride + mStride)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: workers * scratchFloats)
        defer { scratch.deallocate() }
        let ownProducts = Self.ownProducts(inChannels: inChannels, outChannels: outChannels)
        let run = {
            Parallel.forEachChunk(of: workers, work: .max, threads: workers) { slots in
                for slot in slots {
                    let v = scratch + slot * scratchFloats, m = v + 16 * vStride
                    for index in (blocks * slot / workers)..<(blocks * (slot + 1) / workers) {
                        let first = index * block, count = Swift.min(block, tiles - first)
                        KernelDispatch.winogradInputTiles(s, first: first, count: count, x: x, into: v, stride: vStride, kernels: kernels)
                        // The products, summed over the input channels: M[e] = V[e] U[e].
                        if ownProducts {
                            KernelDispatch.winogradProducts(count: count, k: inChannels, n: outChannels, v: v, vStride: vStride, u: u,
                                                            m: m, mStride: mStride, kernels: kernels)
                        } else {
                            for e in 0..<16 {
                                BLAS.sgemm(transA: false, transB: false, m: count, n: outChannels, k: inChannels,
                                           a: v + e * vStride, lda: inChannels, b: u + e * inChannels * outChannels, ldb: outChannels,
                                           beta: 0, c: m + e * mStride, ldc: outChannels)
                            }
                        }
                        KernelDispatch.winogradOutputTiles(s, first: first, count: count, m: m, stride: mStride, bias: bias, y: y,
                                                           accumulate: accumulate, relu: relu, kernels: kernels)
                    }
                }
            }
        }
        if ownProducts { run() } else { BLAS.withOneThread(run) }
    }

    /// dw += the weight gradient of y = conv(x, w) given dy, w OIHW [outChannels, inChannels, 3, 3], x and dy blocked as
    /// in `convolve` (padding and edges likewise). With U = G g G^T, V = B^T d B and Y = A^T (U (.) V) A per tile and
    /// channel pair, dL/dU[e] = the sum over tiles of (A dY A^T)[e] V[e], and dw = G^T (dL/dU) G: per element e one
    /// product [Cout x tiles] x [tiles x Cin], summed over every tile of the call (`WinogradProducts.accumulateTransposed`
    /// on the register block), then the 4 x 4 sums turned back into 3 x 3 kernels (`addTransformedBack`).
    ///
    /// The tiles are cut into `parts` runs (`weightGradientParts`, by default from the shape alone), each summed into
    /// 16 Cin Cout sums of its own in blocks of at most `tilesPerBlock` tiles; the parts' sums are then added in part
    /// order. The threads take parts, so with two parts on two threads each transforms half of dy and x once: splitting
    /// the input channels instead (the split before this one) had each thread transform all of dy, 1.5x one thread's
    /// transforms, and SSD7 on one process of two threads lost 4 % to it (BENCHMARKS.md, "After the eleventh session's
    /// merges"; this split: "Winograd's weight gradient on two threads"). Threads beyond the parts split each part's
    /// input channels (8-channel blocks; each transforms its channels of x and all of its part's dy), which changes no
    /// sum: every element of a part's sums runs over the part's tiles in tile order whatever the threads, so any
    /// thread count gives the same bits for the same parts.
    /// Scratch: `parts` x 16 Cin Cout sums and, per thread, a block of transformed tiles.
    ///
    /// With `biasGradient`, the bias gradient too, added into it: the sum of dy over the pixels, which is the sum over
    /// the tiles of element 5 of A dY A^T ((A dY A^T)[1][1] adds the tile's 4 pixels, zeros past the edges), summed per
    /// part in tile order as the tiles are transformed, the parts added in order: no pass of its own over dy (one
    /// thread, one running sum, over 110 MB of dy for SSD7's conv2 at batch 16), as Starling's direct kernels sum it.
    static func weightGradient(images: Int, input x: UnsafePointer<Float>, inChannels: Int, height: Int, width: Int,
                               outputGrad dy: UnsafePointer<Float>, outChannels: Int, outHeight: Int, outWidth: Int, padTop: Int, padLeft: Int,
                               into dw: UnsafeMutablePointer<Float>, biasGradient: UnsafeMutablePointer<Float>? = nil,
                               tilesPerBlock: Int? = nil, parts: Int? = nil, threads: Int? = nil,
                               kernels: KernelDispatch.Level = KernelDispatch.current) {
        precondition(inChannels % 8 == 0 && outChannels % 8 == 0, "Winograd F(2x2, 3x3) runs on 8-channel blocks")
        let s = WinogradTiling(inBlocks: inChannels / 8, height: height, width: width, outBlocks: outChannels / 8,
                               outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft)
        let tiles = images * s.tilesPerImage
        guard tiles > 0 else { return }
        let parts = Swift.max(1, Swift.min(parts ?? weightGradientParts(tiles: tiles, inChannels: inChannels, outChannels: outChannels), tiles))
        let block = Swift.min((tiles + parts - 1) / parts, tilesPerBlock ?? Self.tilesPerBlock(inChannels: inChannels, outChannels: outChannels))
        let threads = Swift.max(1, threads ?? BLAS.threadCount)
        // Work items: each part's input channels in `groups` runs of 8-channel blocks, as many as the threads need.
        let groups = Swift.min(s.inBlocks, (threads + parts - 1) / parts)
        let items = parts * groups
        let workers = Swift.min(threads, items)
        let matrix = outChannels * inChannels
        // Per part, dL/dU[e] = [outChannels x inChannels] row-major, e = 0..<16.
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: parts * 16 * matrix)
        defer { sums.deallocate() }
        // Per part, the bias gradient's sums (written by the part's first channel group).
        let biasSums = UnsafeMutablePointer<Float>.allocate(capacity: biasGradient == nil ? 0 : parts * outChannels)
        defer { biasSums.deallocate() }
        // Per worker: V[e] = [block x its channels], then M[e] = [block x outChannels], one cache line past the rows (as
        // in `convolve`).
        let widest = (s.inBlocks + groups - 1) / groups * 8
        let (vStride, mStride) = (block * widest + 16, block * outChannels + 16)
        let scratchFloats = 16 * (vStride + mStride)
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: workers * scratchFloats)
        defer { scratch.deallocate() }
        Parallel.forEachChunk(of: workers, work: .max, threads: workers) { slots in
            for slot in slots {
                let v = scratch + slot * scratchFloats, m = v + 16 * vStride
                for item in (items * slot / workers)..<(items * (slot + 1) / workers) {
                    let (part, group) = item.quotientAndRemainder(dividingBy: groups)
                    let channelBlocks = (s.inBlocks * group / groups)..<(s.inBlocks * (group + 1) / groups)
                    let (firstChannel, channels) = (channelBlocks.lowerBound * 8, channelBlocks.count * 8)
                    let c = sums + part * 16 * matrix + firstChannel
                    // This item's columns of its part's sums, zeroed by the thread that adds into them.
                    for row in 0..<(16 * outChannels) { (c + row * inChannels).initialize(repeating: 0, count: channels) }
                    let bias: UnsafeMutablePointer<Float>? = biasGradient == nil || group != 0 ? nil : biasSums + part * outChannels
                    bias?.initialize(repeating: 0, count: outChannels)
                    var first = tiles * part / parts
                    let end = tiles * (part + 1) / parts
                    while first < end {
                        let count = Swift.min(block, end - first)
                        KernelDispatch.winogradInputTiles(s, first: first, count: count, x: x, blocks: channelBlocks, into: v, stride: vStride,
                                                          kernels: kernels)
                        KernelDispatch.winogradGradientTiles(s, first: first, count: count, dy: dy, into: m, stride: mStride, kernels: kernels)
                        if let bias {
                            let m5 = UnsafePointer(m + 5 * mStride)
                            for t in 0..<count {
                                let row = m5 + t * outChannels
                                for o in 0..<outChannels { bias[o] += row[o] }
                            }
                        }
                        KernelDispatch.winogradWeightProducts(count: count, n: outChannels, k: channels, a: m, aStride: mStride, b: v,
                                                              bStride: vStride, c: c, cStride: matrix, ldc: inChannels, kernels: kernels)
                        first += count
                    }
                }
            }
        }
        addTransformedBack(sums, parts: parts, outChannels: outChannels, inChannels: inChannels, into: dw)
        if let biasGradient {
            for o in 0..<outChannels {
                var total = biasSums[o]
                for p in 1..<parts { total += biasSums[p * outChannels + o] }
                biasGradient[o] += total
            }
        }
    }

    /// How many parts `weightGradient` cuts a call's tiles into: two below 64 x 64 channel pairs, so that two threads
    /// (the cores of the machines this layout runs on, and a process's threads in the suite's layouts) each transform
    /// half the tiles once; one from 64 x 64 (the threads then split the input channels) and below 64 tiles. On two
    /// threads, the same binary with one part against two (BENCHMARKS.md, "Winograd's weight gradient on two
    /// threads"): two parts took 1.07-1.18x less CPU on U-Net's 32-channel layers and SSD7's conv2 and conv3 (the
    /// transforms a large share there), level at 64 x 64, and 1.1-1.4x more at 128 x 64 and 128 x 128 (each thread's
    /// sums, 16 Cin Cout floats, 0.5-1 MB, beside its block of tiles no longer fitting its core's cache, where the
    /// channel split holds half). From the shape only, never the thread count, so that every thread count adds the
    /// same partial sums; threads beyond two split channels within the parts.
    static func weightGradientParts(tiles: Int, inChannels: Int, outChannels: Int) -> Int {
        tiles >= 64 && inChannels * outChannels < 64 * 64 ? 2 : 1
    }

    /// dw[o][c] += G^T S G (3 x 3) for the 4 x 4 sums S[e] = the sum over the parts p, in order, of
    /// sums[(p * 16 + e) * Cout Cin + o Cin + c] (`weightGradient`'s), G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
    static func addTransformedBack(_ sums: UnsafePointer<Float>, parts: Int = 1, outChannels: Int, inChannels: Int,
                                   into dw: UnsafeMutablePointer<Float>) {
        let matrix = outChannels * inChannels
        Parallel.forEachChunk(of: outChannels, work: matrix * 16 * parts) { range in
            for o in range {
                for c in 0..<inChannels {
                    let at = sums + o * inChannels + c
                    // Row i of S as a SIMD4 over its 4 columns, the parts added in order; then t = G^T S (3 x 4), then t G.
                    @inline(__always) func row(_ i: Int) -> SIMD4<Float> {
                        var r = SIMD4(at[(4 * i) * matrix], at[(4 * i + 1) * matrix], at[(4 * i + 2) * matrix], at[(4 * i + 3) * matrix])
                        for p in 1..<Swift.max(1, parts) {
                            let q = at + p * 16 * matrix
                            r += SIMD4(q[(4 * i) * matrix], q[(4 * i + 1) * matrix], q[(4 * i + 2) * matrix], q[(4 * i + 3) * matrix])
                        }
                        return r
                    }
                    let (s0, s1, s2, s3) = (row(0), row(1), row(2), row(3))
                    let (t0, t1, t2) = (s0 + 0.5 * (s1 + s2), 0.5 * (s1 - s2), 0.5 * (s1 + s2) + s3)
                    let g = dw + (o * inChannels + c) * 9
                    // Row by row, without an array of the three rows on every channel pair.
                    @inline(__always) func add(_ t: SIMD4<Float>, row i: Int) {
                        g[i * 3] += t[0] + 0.5 * (t[1] + t[2])
                        g[i * 3 + 1] += 0.5 * (t[1] - t[2])
                        g[i * 3 + 2] += 0.5 * (t[1] + t[2]) + t[3]
                    }
                    add(t0, row: 0)
                    add(t1, row: 1)
                    add(t2, row: 2)
                }
            }
        }
    }
}

extension KernelDispatch {
    /// The Winograd transforms of a level above baseline.
    static func winogradKernels(_ level: Level) -> (any WinogradKernelSet.Type)? {
        switch level {
        case .baseline: nil
        case .avx2: StarlingKernelsAVX2.FusedKernels.self
        case .avx512: StarlingKernelsAVX512.FusedKernels.self
        }
    }

    /// `WinogradTransforms.inputTiles` in the build `kernels`.
    static func winogradInputTiles(_ s: WinogradTiling, first: Int, count: Int, x: UnsafePointer<Float>, blocks: Range<Int>? = nil,
                                   into v: UnsafeMutablePointer<Float>, stride: Int, kernels: Level = current) {
        if let k = winogradKernels(kernels) {
            k.winogradInputTiles(s, first: first, count: count, x: x, blocks: blocks, into: v, stride: stride)
        } else {
            WinogradTransforms.inputTiles(s, first: first, count: count, x: x, blocks: blocks, into: v, stride: stride)
        }
    }

    /// `WinogradTransforms.gradientTiles` in the build `kernels`.
    static func winogradGradientTiles(_ s: WinogradTiling, first: Int, count: Int, dy: UnsafePointer<Float>,
                                      into m: UnsafeMutablePointer<Float>, stride: Int, kernels: Level = current) {
        if let k = winogradKernels(kernels) {
            k.winogradGradientTiles(s, first: first, count: count, dy: dy, into: m, stride: stride)
        } else {
            WinogradTransforms.gradientTiles(s, first: first, count: count, dy: dy, into: m, stride: stride)
        }
    }

    /// `WinogradProducts.accumulateTransposed` in the build `kernels` (fused multiply-adds above baseline).
    static func winogradWeightProducts(count: Int, n: Int, k: Int, a: UnsafePointer<Float>, aStride: Int, b: UnsafePointer<Float>,
                                       bStride: Int, c: UnsafeMutablePointer<Float>, cStride: Int, ldc: Int, kernels: Level = current) {
        if let set = winogradKernels(kernels) {
            set.winogradWeightProducts(count: count, n: n, k: k, a: a, aStride: aStride, b: b, bStride: bStride, c: c, cStride: cStride,
                                       ldc: ldc)
        } else {
            WinogradProducts.accumulateTransposed(count: count, n: n, k: k, a: a, aStride: aStride, b: b, bStride: bStride, c: c,
                                                  cStride: cStride, ldc: ldc, SeparateMultiplyAdd.self)
        }
    }

    /// `WinogradProducts.multiply` in the build `kernels` (fused multiply-adds above baseline).
    static func winogradProducts(count: Int, k: Int, n: Int, v: UnsafePointer<Float>, vStride: Int, u: UnsafePointer<Float>,
                                 m: UnsafeMutablePointer<Float>, mStride: Int, kernels: Level = current) {
        if let set = winogradKernels(kernels) {
            set.winogradProducts(count: count, k: k, n: n, v: v, vStride: vStride, u: u, m: m, mStride: mStride)
        } else {
            WinogradProducts.multiply(count: count, k: k, n: n, v: v, vStride: vStride, u: u, m: m, mStride: mStride,
                                      SeparateMultiplyAdd.self)
        }
    }

    /// `WinogradTransforms.outputTiles` in the build `kernels`.
    static func winogradOutputTiles(_ s: WinogradTiling, first: Int, count: Int, m: UnsafePointer<Float>, stride: Int,
                                    bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, accumulate: Bool, relu: Bool,
                                    kernels: Level = current) {
        if let k = winogradKernels(kernels) {
            k.winogradOutputTiles(s, first: first, count: count, m: m, stride: stride, bias: bias, y: y, accumulate: accumulate, relu: relu)
        } else {
            WinogradTransforms.outputTiles(s, first: first, count: count, m: m, stride: stride, bias: bias, y: y, accumulate: accumulate,
                                           relu: relu)
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
    /// STARLING_WINOGRAD's): 1 wherever the shape allows, 0 never, unset where `ownWinogradPays`. `anyCPU` (tests)
    /// lets it run on AVX-512 CPUs too; `forcedForTests` (a task-local) runs it through the ops as
    /// STARLING_WINOGRAD=1 would on any CPU.
    func runsOwnWinograd(_ pass: ConvolutionPass, _ layouts: DNNLConvPlan.Layouts, setting: WinogradSetting? = nil,
                         anyCPU: Bool = false) -> Bool {
        guard ownWinogradShape(layouts) else { return false }
        if Self.ownWinogradForcedForTests && setting == nil && winograd == nil { return true }
        guard anyCPU || (Self.ownKernels && !DNNLActivation.instructionSet.hasPrefix("avx512")) else { return false }
        switch setting ?? winograd ?? WinogradSetting.current {
        case .always: return true
        case .never: return false
        case .rule: return ownWinogradPays(pass)
        }
    }

    /// Where Starling's F(2x2, 3x3) beat the direct path (Starling's direct forward kernel or oneDNN's jit:avx2) per
    /// layer and in whole steps on this AVX2 machine (AMD EPYC family 25 model 1, 2 cores; `bench --only
    /// conv-algorithms`, one and two threads, and `Launch/bench-winograd.sh`; BENCHMARKS.md "Starling's Winograd
    /// F(2x2, 3x3) on AVX2, part 2"): a pass that sums over 128 channels or more into 128 or more, with 256 to 512 on
    /// its wider side, on maps of 26 pixels or more a side, or 13 or more with 512 on the wider side (yolov3-tiny's
    /// conv_8, conv_10, conv_14 and conv_21, 1.1-1.6x per layer; U-Net's 256 -> 128 at 16 x 16 was level, 1.01x and
    /// 1.07x, and its scratch raised U-Net's peak by 10 MB, to 0.52 of PyTorch's). With fewer channels each GEMM sums over too few for the transforms (whose cost per channel
    /// does not shrink) to pay for the 2.25x fewer multiplications: 16 and 32 channels lost (0.4-0.9x), and 64-128
    /// (U-Net's 16 x 16 and 32 x 32 layers at width 0.25, yolov3-tiny's conv_6) were level per layer, and a U-Net step
    /// with them was too, 10 MB higher at its peak. On 8 x 8 maps the tiles are few against the weights' transform,
    /// made every call (0.4-0.8x), and 512 -> 1024 at 13 x 13 (yolov3-tiny's conv_12, 0.7-0.97x) reads 32 MB of
    /// transformed weights a block. Depends on one image's shape and the pass only, so every rank, replica and thread
    /// count of a job runs the same algorithm.
    ///
    /// The weight gradient (`weightGradient`, on its own register block whatever the channels) takes the same passes up
    /// to 128 x 128 channels: 32 channels or more on both sides, maps of 14 pixels or more a side, 1.19-1.57x Starling's
    /// blocked 3x3 kernel or oneDNN's direct one on U-Net's layers at width 0.25, 1.14x and 1.39x on yolov3-tiny's
    /// conv_4 and conv_6, 1.03-1.35x on SSD7's conv2-conv5, 1.39x and 1.49x on denoising-ae's 14 x 14 layers (one
    /// thread; BENCHMARKS.md, "Winograd's weight gradient on AVX2"). Not above 128 x 128 (yolov3-tiny's conv_8 and
    /// conv_21, U-Net's 256 -> 128 won 1.13-1.37x there, but their sums and scratch, several MB, were not measured in
    /// whole steps or peaks), nor 16-channel sides (0.67-1.0x) or 8 x 8 maps.
    ///
    /// Since the products of layers up to 128 x 128 channels run on `WinogradProducts` (BENCHMARKS.md, "U-Net at width
    /// 0.25 against PyTorch on AVX2"), those layers also take it where both sides have 32 channels or more on maps of 14
    /// pixels or more a side: U-Net's 32- to 128-channel layers at width 0.25 (1.1-1.4x per pass on one thread, a few
    /// level), yolov3-tiny's conv_4 and conv_6, SSD7's conv2-conv5, denoising-ae's 14 x 14 layers. 16-channel passes
    /// (0.76-1.1x) and 8 x 8 maps (0.6-0.8x) stay direct.
    func ownWinogradPays(_ pass: ConvolutionPass) -> Bool {
        if pass == .backwardWeights {
            return WinogradF2x3.ownProducts(inChannels: inChannels, outChannels: outChannels) && Swift.min(inChannels, outChannels) >= 32
                && Swift.min(outHeight, outWidth) >= 14
        }
        let (summed, written) = pass == .backwardData ? (outChannels, inChannels) : (inChannels, outChannels)
        let wider = Swift.max(summed, written)
        let side = Swift.min(outHeight, outWidth)
        if WinogradF2x3.ownProducts(inChannels: inChannels, outChannels: outChannels) {
            return Swift.min(summed, written) >= 32 && side >= 14
        }
        return Swift.min(summed, written) >= 128 && (256...512).contains(wider) && (side >= 26 || (side >= 13 && wider == 512))
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

    /// The weight gradient by Starling's F(2x2, 3x3) when `runsOwnWinograd(.backwardWeights, layouts)`: dw += dL/dw
    /// (`WinogradF2x3.weightGradient`), and the bias gradient into `biasGradient` if given. False, doing nothing, otherwise.
    func ownWinogradWeightGradient(input x: UnsafePointer<Float>, outputGrad dy: UnsafePointer<Float>, into dw: UnsafeMutablePointer<Float>,
                                   biasGradient: UnsafeMutablePointer<Float>? = nil, layouts: DNNLConvPlan.Layouts,
                                   setting: WinogradSetting? = nil, anyCPU: Bool = false, tilesPerBlock: Int? = nil) -> Bool {
        guard runsOwnWinograd(.backwardWeights, layouts, setting: setting, anyCPU: anyCPU) else { return false }
        WinogradF2x3.weightGradient(images: batch, input: x, inChannels: inChannels, height: height, width: width, outputGrad: dy,
                                    outChannels: outChannels, outHeight: outHeight, outWidth: outWidth, padTop: padTop, padLeft: padLeft,
                                    into: dw, biasGradient: biasGradient, tilesPerBlock: tilesPerBlock)
        return true
    }
}
