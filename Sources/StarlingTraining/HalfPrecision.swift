import StarlingIO

/// Weights stored as IEEE 754 binary16 (`starling convert --half`): half the file, and about three significant
/// decimal digits per weight (a relative error of at most 2^-11 from rounding to nearest, ties to even). Values
/// beyond float16's range would turn into infinities, which `Checkpoint.load` refuses, so they are refused here.
package enum HalfPrecision {
    /// The largest finite float16.
    static let largest: Float = 65504

    /// Throws unless every value of weight `name` fits float16's range.
    static func checkRange(_ values: UnsafeBufferPointer<Float>, name: String, file: String) throws {
        for (i, x) in values.enumerated() where !(abs(x) <= largest) {
            throw ConversionError(file: file, message: "weight '\(name)' holds \(x) at index \(i), outside float16's range (±\(Int(largest))): keep float32")
        }
    }

    #if !(os(macOS) && arch(x86_64))
    /// Writes `values` rounded to half precision into a float16 dataset.
    package static func write(_ values: UnsafeBufferPointer<Float>, to dataset: HDF5Dataset, name: String, file: String) throws {
        try checkRange(values, name: name, file: file)
        try dataset.write(values.map { Float16($0) })
    }

    /// The float16 bit patterns of `values` (rounded to nearest, ties to even), for files written byte by byte.
    package static func bits(_ values: [Float], name: String, file: String) throws -> [UInt16] {
        try values.withUnsafeBufferPointer { try checkRange($0, name: name, file: file) }
        return values.map { Float16($0).bitPattern }
    }

    /// A float16 bit pattern widened to float32 (exact).
    package static func float(bits: UInt16) throws -> Float { Float(Float16(bitPattern: bits)) }
    #else
    // Swift has no Float16 on Intel Macs; Starling's targets (Linux, Apple silicon) all have it.
    package static func write(_ values: UnsafeBufferPointer<Float>, to dataset: HDF5Dataset, name: String, file: String) throws {
        throw ConversionError(file: file, message: "half precision needs Swift's Float16, which Intel Macs lack")
    }
    package static func bits(_ values: [Float], name: String, file: String) throws -> [UInt16] {
        throw ConversionError(file: file, message: "half precision needs Swift's Float16, which Intel Macs lack")
    }
    package static func float(bits: UInt16) throws -> Float {
        throw ConversionError(file: "", message: "half precision needs Swift's Float16, which Intel Macs lack")
    }
    #endif
}

/// A conversion that cannot go ahead: the file concerned and the reason, on one line.
public struct ConversionError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { file.isEmpty ? message : "\(file): \(message)" }
}
