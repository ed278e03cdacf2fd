/// One pixel of the blocked layout: the channels of one block, 8 (oneDNN's nChw8c, one AVX2 register) or 16 (nChw16c,
/// one AVX-512 register). The blocked layout's kernels are written once, generic over it, and instantiated at both
/// widths in every build (the baseline build runs a 16-channel pixel as four SSE registers, the AVX2 build as two).
///
/// Comparisons, selects, the Float -> Double widening and the bit tricks of `VectorMath.exp` are requirements that each
/// width implements on its concrete type: Swift's generic SIMD versions of those compiled to one lane at a time (a
/// function call per Float -> Double conversion, a branch per lane of a compare; checked in the assembly), while its
/// generic arithmetic compiles to the same vector instructions as the concrete one.
public protocol BlockVector: SIMD where Scalar == Float {
    /// Double lanes, for sums over a plane.
    associatedtype Sums: SIMD where Sums.Scalar == Double
    /// A lane mask.
    associatedtype Lanes

    static func widened(_ v: Self) -> Sums
    /// Lanes where a > b.
    static func greater(_ a: Self, _ b: Self) -> Lanes
    /// Lanes where a == b.
    static func equal(_ a: Self, _ b: Self) -> Lanes
    /// Lanes of a that are not in b.
    static func lanes(_ a: Lanes, without b: Lanes) -> Lanes
    static func union(_ a: Lanes, _ b: Lanes) -> Lanes
    /// b where the mask is set, a elsewhere.
    static func select(_ a: Self, _ b: Self, where mask: Lanes) -> Self
    /// c + a b, rounded once.
    static func fusedMultiplyAdd(_ a: Self, _ b: Self, _ c: Self) -> Self
    /// 2x2 pooling windows' 2-bit indices, one a lane (lane l in bits 2l and 2l + 1): bit 1 set in `lower` lanes, bit 0
    /// where the maximum is the right input of its row (`bottomRight` in lower lanes, `topRight` elsewhere).
    static func packedWindowIndices(lower: Lanes, topRight: Lanes, bottomRight: Lanes) -> UInt32
    /// The lanes whose window index (`packedWindowIndices`) is 0, 1, 2 and 3.
    static func windowLanes(_ packed: UInt32) -> (Lanes, Lanes, Lanes, Lanes)
    /// 2^n from `shifted` = t + `magic` (`VectorMath.exp`'s rounding trick), n = round(t) read from its low mantissa bits.
    static func powerOfTwo(fromShifted shifted: Self, magic: Float) -> Self
}

extension BlockVector {
    @inlinable @inline(__always)
    public static func load(_ p: UnsafePointer<Float>) -> Self { UnsafeRawPointer(p).loadUnaligned(as: Self.self) }

    @inlinable @inline(__always)
    public func store(_ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: self, as: Self.self) }

    /// The lane-wise maximum, b where b > a (a where they are equal or b is NaN).
    @inlinable @inline(__always)
    public static func maximum(_ a: Self, _ b: Self) -> Self { select(a, b, where: greater(b, a)) }
}

extension SIMD8: BlockVector where Scalar == Float {
    public typealias Sums = SIMD8<Double>
    public typealias Lanes = SIMDMask<SIMD8<Int32>>

    @inlinable @inline(__always) public static func widened(_ v: Self) -> SIMD8<Double> { SIMD8<Double>(v) }
    @inlinable @inline(__always) public static func greater(_ a: Self, _ b: Self) -> Lanes { a .> b }
    @inlinable @inline(__always) public static func equal(_ a: Self, _ b: Self) -> Lanes { a .== b }
    @inlinable @inline(__always) public static func lanes(_ a: Lanes, without b: Lanes) -> Lanes { a .& .!b }
    @inlinable @inline(__always) public static func union(_ a: Lanes, _ b: Lanes) -> Lanes { a .| b }
    @inlinable @inline(__always) public static func select(_ a: Self, _ b: Self, where mask: Lanes) -> Self { a.replacing(with: b, where: mask) }
    @inlinable @inline(__always) public static func fusedMultiplyAdd(_ a: Self, _ b: Self, _ c: Self) -> Self { c.addingProduct(a, b) }
    /// Each lane's shift in a packed word of window indices.
    @inlinable static var windowShifts: SIMD8<Int32> { SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14) }
    // Masks as lanes of all ones or zeros, and only bitwise ops on them: Swift's integer SIMD comparisons and
    // mask selects compiled to a loop over the lanes (a compare and a branch each; 7x slower backward, measured).
    @inlinable @inline(__always)
    public static func packedWindowIndices(lower: Lanes, topRight: Lanes, bottomRight: Lanes) -> UInt32 {
        let (low, top, bottom) = (unsafeBitCast(lower, to: SIMD8<Int32>.self), unsafeBitCast(topRight, to: SIMD8<Int32>.self),
                                  unsafeBitCast(bottomRight, to: SIMD8<Int32>.self))
        let right = (low & bottom) | (~low & top)
        let index = (low & SIMD8<Int32>(repeating: 2)) | (right & SIMD8<Int32>(repeating: 1))
        return UInt32(bitPattern: (index &<< windowShifts).wrappedSum())   // disjoint bits: the sum is their union
    }
    @inlinable @inline(__always)
    public static func windowLanes(_ packed: UInt32) -> (Lanes, Lanes, Lanes, Lanes) {
        let index = SIMD8<Int32>(repeating: Int32(bitPattern: packed)) &>> windowShifts
        let zero = SIMD8<Int32>(repeating: 0), one = SIMD8<Int32>(repeating: 1)
        let high = zero &- ((index &>> 1) & one), low = zero &- (index & one)   // all ones where the bit is set
        func lanes(_ bits: SIMD8<Int32>) -> Lanes { unsafeBitCast(bits, to: Lanes.self) }
        return (lanes(~high & ~low), lanes(~high & low), lanes(high & ~low), lanes(high & low))
    }
    @inlinable @inline(__always)
    public static func powerOfTwo(fromShifted shifted: Self, magic: Float) -> Self {
        let n = unsafeBitCast(shifted, to: SIMD8<UInt32>.self) &- magic.bitPattern
        return unsafeBitCast((n &+ 127) &<< 23, to: Self.self)
    }
}

extension SIMD16: BlockVector where Scalar == Float {
    public typealias Sums = SIMD16<Double>
    public typealias Lanes = SIMDMask<SIMD16<Int32>>

    /// In halves: SIMD16<Double>(SIMD16<Float>) compiled to a call per vector.
    @inlinable @inline(__always)
    public static func widened(_ v: Self) -> SIMD16<Double> {
        SIMD16<Double>(lowHalf: SIMD8<Double>(v.lowHalf), highHalf: SIMD8<Double>(v.highHalf))
    }
    @inlinable @inline(__always) public static func greater(_ a: Self, _ b: Self) -> Lanes { a .> b }
    @inlinable @inline(__always) public static func equal(_ a: Self, _ b: Self) -> Lanes { a .== b }
    @inlinable @inline(__always) public static func lanes(_ a: Lanes, without b: Lanes) -> Lanes { a .& .!b }
    @inlinable @inline(__always) public static func union(_ a: Lanes, _ b: Lanes) -> Lanes { a .| b }
    @inlinable @inline(__always) public static func select(_ a: Self, _ b: Self, where mask: Lanes) -> Self { a.replacing(with: b, where: mask) }
    @inlinable @inline(__always) public static func fusedMultiplyAdd(_ a: Self, _ b: Self, _ c: Self) -> Self { c.addingProduct(a, b) }
    /// Each lane's shift in a packed word of window indices.
    @inlinable static var windowShifts: SIMD16<Int32> { SIMD16<Int32>(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) }
    // Masks as lanes of all ones or zeros, and only bitwise ops on them: Swift's integer SIMD comparisons and
    // mask selects compiled to a loop over the lanes (a compare and a branch each; 7x slower backward, measured).
    @inlinable @inline(__always)
    public static func packedWindowIndices(lower: Lanes, topRight: Lanes, bottomRight: Lanes) -> UInt32 {
        let (low, top, bottom) = (unsafeBitCast(lower, to: SIMD16<Int32>.self), unsafeBitCast(topRight, to: SIMD16<Int32>.self),
                                  unsafeBitCast(bottomRight, to: SIMD16<Int32>.self))
        let right = (low & bottom) | (~low & top)
        let index = (low & SIMD16<Int32>(repeating: 2)) | (right & SIMD16<Int32>(repeating: 1))
        return UInt32(bitPattern: (index &<< windowShifts).wrappedSum())   // disjoint bits: the sum is their union
    }
    @inlinable @inline(__always)
    public static func windowLanes(_ packed: UInt32) -> (Lanes, Lanes, Lanes, Lanes) {
        let index = SIMD16<Int32>(repeating: Int32(bitPattern: packed)) &>> windowShifts
        let zero = SIMD16<Int32>(repeating: 0), one = SIMD16<Int32>(repeating: 1)
        let high = zero &- ((index &>> 1) & one), low = zero &- (index & one)   // all ones where the bit is set
        func lanes(_ bits: SIMD16<Int32>) -> Lanes { unsafeBitCast(bits, to: Lanes.self) }
        return (lanes(~high & ~low), lanes(~high & low), lanes(high & ~low), lanes(high & low))
    }
    @inlinable @inline(__always)
    public static func powerOfTwo(fromShifted shifted: Self, magic: Float) -> Self {
        let n = unsafeBitCast(shifted, to: SIMD16<UInt32>.self) &- magic.bitPattern
        return unsafeBitCast((n &+ 127) &<< 23, to: Self.self)
    }
}
