/// The number format gradients travel in between ranks. The ranks' gradients and the weights stay float32; only the
/// allreduce's messages shrink. The sum is taken in float32 inside the reduction (two 16-bit values widened, added,
/// rounded back), so every partial sum of a ring or tree allreduce is rounded once more: N ranks round N - 1 times.
public enum GradientWire: String, Sendable, CaseIterable {
    case float32 = "fp32"
    /// bfloat16: float32's exponent range with 8 bits of significand (relative rounding error at most 2^-9).
    case bfloat16 = "bf16"
    /// IEEE binary16: 11 bits of significand (2^-12) but a range of 6e-8 (subnormal) to 65504, so gradients are
    /// multiplied by a power-of-two scale first (see GradientSynchronizer).
    case float16 = "fp16"

    public var bytesPerValue: Int { self == .float32 ? 4 : 2 }

    /// bfloat16 bits of `x`, rounded to nearest, ties to even; NaN stays NaN (quieted), infinities stay infinite.
    @inlinable
    public static func bfloat16Bits(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let roundingBias = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    /// The float32 a bfloat16 stands for (exact).
    @inlinable
    public static func bfloat16Value(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

    #if !(os(macOS) && arch(x86_64))
    /// binary16 bits of `x`, rounded to nearest, ties to even (Swift's Float16); beyond ±65504 gives infinity.
    @inlinable
    public static func float16Bits(_ x: Float) -> UInt16 { Float16(x).bitPattern }
    @inlinable
    public static func float16Value(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
    public static let float16Available = true
    #else
    // Swift has no Float16 on Intel Macs; Starling's targets (Linux, Apple silicon) all have it.
    public static func float16Bits(_ x: Float) -> UInt16 { 0 }
    public static func float16Value(_ bits: UInt16) -> Float { .nan }
    public static let float16Available = false
    #endif

    /// False if any of the float16 values is infinite or NaN (all exponent bits set).
    public static func float16AllFinite(_ bits: UnsafePointer<UInt16>, count: Int) -> Bool {
        for i in 0..<count where bits[i] & 0x7C00 == 0x7C00 { return false }
        return true
    }

    /// `count` floats times `scale` into 16-bit values.
    public func encode(_ source: UnsafePointer<Float>, scale: Float, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        switch self {
        case .float32: preconditionFailure("float32 gradients are sent as they are")
        case .bfloat16: for i in 0..<count { destination[i] = Self.bfloat16Bits(source[i] * scale) }
        case .float16: for i in 0..<count { destination[i] = Self.float16Bits(source[i] * scale) }
        }
    }

    /// 16-bit values divided by `scale` into floats; the largest magnitude decoded, or infinity if any value is
    /// infinite or NaN (a float16 sum that overflowed).
    @discardableResult
    public func decode(_ source: UnsafePointer<UInt16>, scale: Float, into destination: UnsafeMutablePointer<Float>, count: Int) -> Float {
        precondition(self != .float32, "float32 gradients are sent as they are")
        let inverse = 1 / scale
        var largest: Float = 0
        var finite = true
        for i in 0..<count {
            let x = self == .bfloat16 ? Self.bfloat16Value(source[i]) : Self.float16Value(source[i])
            finite = finite && x.isFinite
            largest = Swift.max(largest, abs(x))
            destination[i] = x * inverse
        }
        return finite ? largest * inverse : .infinity
    }
}
