import CCPU

extension KernelDispatch {
    /// out[j] = Float(source[j]) * scale (`PixelKernels.scaledFloats`): the same bits in every build.
    public static func scaledFloats(_ n: Int, _ source: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<Float>, scale: Float,
                                    kernels: Level = current) {
        switch kernels {
        case .baseline: PixelKernels.scaledFloats(n, source, out, scale: scale)
        default: fused(kernels).scaledFloats(n, source, out, scale: scale)
        }
    }
}

/// A batch gathered from rows of uint8 pixels held in memory (an image split read whole, `ImageDataset`).
public enum PixelGather {
    /// Rows asked for ahead of the one being converted. A batch's rows lie at random places of the split (MNIST's
    /// 47 MB, beyond the L3 cache), so each row begins with a miss to memory; the hardware prefetcher follows a row
    /// once it has started but cannot guess the next one. Four rows (52 lines of MNIST's 784-byte rows) keep that many
    /// misses in flight against the core's ~64 without crowding out the rows being converted.
    static let rowsAhead = 4

    /// Row `rows[k]` of `source` (`rowBytes` each) into out[k * rowBytes ..< (k + 1) * rowBytes] as Float(v) * scale,
    /// the next rows' lines prefetched while one is converted. The values are `scaledFloats`' on each row, whatever
    /// the order or the prefetching.
    public static func rows(_ rows: UnsafeBufferPointer<Int>, of source: UnsafePointer<UInt8>, rowBytes: Int, scale: Float,
                            into out: UnsafeMutablePointer<Float>, kernels: KernelDispatch.Level = KernelDispatch.current) {
        let count = rows.count
        for k in 0..<Swift.min(rowsAhead, count) { starling_prefetch_range(source + rows[k] * rowBytes, rowBytes) }
        for k in 0..<count {
            if k + rowsAhead < count { starling_prefetch_range(source + rows[k + rowsAhead] * rowBytes, rowBytes) }
            KernelDispatch.scaledFloats(rowBytes, source + rows[k] * rowBytes, out + k * rowBytes, scale: scale, kernels: kernels)
        }
    }
}
