/// A binary mask in COCO's run-length encoding (the COCO API's maskApi.c, re-implemented): the pixels read column by
/// column (Fortran order), as alternating runs of 0s and 1s, the first run of 0s (possibly empty). Results files carry
/// it as `{"size": [h, w], "counts": "<compressed>"}`, the counts compressed by `compressed` (maskApi's `rleToString`).
/// Mask AP compares these (`iou`), as pycocotools' `maskUtils.iou` does.
public struct RunLengthMask: Equatable, Sendable {
    public let height: Int, width: Int
    public let counts: [UInt32]

    public init(height: Int, width: Int, counts: [UInt32]) {
        self.height = height
        self.width = width
        self.counts = counts
    }

    /// The encoding of a row-major H x W mask (nonzero inside).
    public init(mask: [UInt8], height: Int, width: Int) {
        precondition(mask.count == height * width, "mask of \(mask.count) pixels for \(height)x\(width)")
        var counts: [UInt32] = []
        var current: UInt8 = 0, run: UInt32 = 0
        mask.withUnsafeBufferPointer { m in
            for x in 0..<width {
                for y in 0..<height {
                    let v: UInt8 = m[y * width + x] != 0 ? 1 : 0
                    if v != current {
                        counts.append(run)
                        run = 0
                        current = v
                    }
                    run += 1
                }
            }
        }
        counts.append(run)
        self.init(height: height, width: width, counts: counts)
    }

    /// The row-major H x W mask, 1 inside.
    public func decoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: height * width)
        var position = 0
        for (j, run) in counts.enumerated() {
            if j % 2 == 1 {
                for p in position..<(position + Int(run)) { out[(p % height) * width + p / height] = 1 }
            }
            position += Int(run)
        }
        return out
    }

    /// Pixels inside (maskApi's `rleArea`).
    public var area: Int { stride(from: 1, to: counts.count, by: 2).reduce(0) { $0 + Int(counts[$1]) } }

    /// The tight box (x, y, width, height) of the pixels inside, maskApi's `rleToBbox` to the letter: a run of 1s that
    /// wraps into a later column spans the column's whole height.
    public var boundingBox: (x: Double, y: Double, width: Double, height: Double) {
        let m = (counts.count / 2) * 2
        guard m > 0 else { return (0, 0, 0, 0) }
        let h = UInt32(height)
        var (xs, ys, xe, ye) = (UInt32(width), UInt32(height), UInt32(0), UInt32(0))
        var cc: UInt32 = 0, xp: UInt32 = 0
        for j in 0..<m {
            cc &+= counts[j]
            let t = cc &- UInt32(j % 2)
            let y = t % h, x = (t - y) / h
            if j % 2 == 0 { xp = x } else if xp < x { ys = 0; ye = h - 1 }
            xs = min(xs, x); xe = max(xe, x); ys = min(ys, y); ye = max(ye, y)
        }
        return (Double(xs), Double(ys), Double(xe) - Double(xs) + 1, Double(ye) - Double(ys) + 1)
    }

    /// maskApi's `rleToString`: each count (from the fourth on, less the count two before) in 5-bit groups, low first,
    /// with a continuation bit, as ASCII from 48.
    public var compressed: String {
        var bytes: [UInt8] = []
        for i in counts.indices {
            var x = Int64(counts[i])
            if i > 2 { x -= Int64(counts[i - 2]) }
            var more = true
            while more {
                var c = UInt8(x & 0x1F)
                x >>= 5
                more = (c & 0x10) != 0 ? x != -1 : x != 0
                if more { c |= 0x20 }
                bytes.append(c + 48)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// maskApi's `rleFrString`; nil when the string is not such an encoding of an H x W mask.
    public init?(compressed: String, height: Int, width: Int) {
        var counts: [UInt32] = []
        let bytes = Array(compressed.utf8)
        var p = 0
        while p < bytes.count {
            var x: Int64 = 0, k = 0, more = true
            while more {
                guard p < bytes.count, bytes[p] >= 48, k < 12 else { return nil }
                let c = Int64(bytes[p] - 48)
                x |= (c & 0x1F) << (5 * k)
                more = (c & 0x20) != 0
                p += 1
                k += 1
                if !more && (c & 0x10) != 0 { x |= -1 << (5 * k) }
            }
            if counts.count > 2 { x += Int64(counts[counts.count - 2]) }
            guard x >= 0, x <= Int64(UInt32.max) else { return nil }
            counts.append(UInt32(x))
        }
        guard counts.reduce(0, { $0 + Int($1) }) == height * width else { return nil }
        self.init(height: height, width: width, counts: counts)
    }

    /// maskApi's `rleIou` of a detection and a ground-truth mask: |d ∩ g| / |d ∪ g|, or / |d| for a crowd region; 0
    /// without overlap; -1 for masks of different sizes (as the COCO API).
    public static func iou(_ d: RunLengthMask, _ g: RunLengthMask, crowd: Bool) -> Double {
        guard d.height == g.height, d.width == g.width else { return -1 }
        guard !d.counts.isEmpty, !g.counts.isEmpty else { return 0 }
        // Walk both run lists together, each step consuming the shorter of the two current runs; both cover the
        // same H x W pixels, so they end together.
        var (a, b) = (0, 0)
        var (ra, rb) = (d.counts[0], g.counts[0])
        var (va, vb) = (false, false)
        var intersection = 0, union = 0
        while a < d.counts.count && b < g.counts.count {
            if ra == 0 {
                a += 1
                if a < d.counts.count { ra = d.counts[a]; va.toggle() }
                continue
            }
            if rb == 0 {
                b += 1
                if b < g.counts.count { rb = g.counts[b]; vb.toggle() }
                continue
            }
            let c = min(ra, rb)
            if va || vb {
                union += Int(c)
                if va && vb { intersection += Int(c) }
            }
            ra -= c
            rb -= c
        }
        guard intersection > 0 else { return 0 }
        return Double(intersection) / Double(crowd ? d.area : union)
    }
}
