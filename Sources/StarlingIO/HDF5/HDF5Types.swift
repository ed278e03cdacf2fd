import CHDF5

/// The element types Starling stores in HDF5 datasets. Files always hold them little-endian.
public enum HDF5ElementType: Sendable, Equatable, CustomStringConvertible {
    case uint8, int8, int16, uint16, int32, int64, float16, float32, float64

    /// Bytes per element in the file.
    public var byteSize: Int {
        switch self {
        case .uint8, .int8: return 1
        case .int16, .uint16, .float16: return 2
        case .int32, .float32: return 4
        case .int64, .float64: return 8
        }
    }

    public var description: String {
        switch self {
        case .uint8: return "uint8"
        case .int8: return "int8"
        case .int16: return "int16"
        case .uint16: return "uint16"
        case .int32: return "int32"
        case .int64: return "int64"
        case .float16: return "float16"
        case .float32: return "float32"
        case .float64: return "float64"
        }
    }
}

/// A Swift type HDF5 can read into and write from. HDF5 converts between the memory type and the dataset's
/// element type on the fly (integers clip to range, floats round), so e.g. a float16 dataset reads as `[Float]`.
public protocol HDF5Scalar {
    static var hdf5Type: HDF5ElementType { get }
}

extension UInt8: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint8 } }
extension Int8: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int8 } }
extension Int16: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int16 } }
extension UInt16: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .uint16 } }
extension Int32: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int32 } }
extension Int64: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .int64 } }
extension Float: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .float32 } }
extension Double: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .float64 } }
#if !(os(macOS) && arch(x86_64))
// Swift has no Float16 on Intel Macs.
extension Float16: HDF5Scalar { public static var hdf5Type: HDF5ElementType { .float16 } }
#endif

/// An HDF5 datatype id and whether we own it: the predefined ones belong to the library and must not be closed,
/// the half-precision type is built on demand and must be.
struct HDF5TypeID {
    let id: hid_t
    private let owned: Bool

    /// The type used in files (little-endian standard types).
    static func file(_ type: HDF5ElementType) -> HDF5TypeID {
        switch type {
        case .uint8: return HDF5TypeID(id: starling_h5t_std_u8le(), owned: false)
        case .int8: return HDF5TypeID(id: starling_h5t_std_i8le(), owned: false)
        case .int16: return HDF5TypeID(id: starling_h5t_std_i16le(), owned: false)
        case .uint16: return HDF5TypeID(id: starling_h5t_std_u16le(), owned: false)
        case .int32: return HDF5TypeID(id: starling_h5t_std_i32le(), owned: false)
        case .int64: return HDF5TypeID(id: starling_h5t_std_i64le(), owned: false)
        case .float16: return HDF5TypeID(id: starling_h5t_create_f16le(), owned: true)
        case .float32: return HDF5TypeID(id: starling_h5t_ieee_f32le(), owned: false)
        case .float64: return HDF5TypeID(id: starling_h5t_ieee_f64le(), owned: false)
        }
    }

    /// The type of Swift values in memory (native byte order).
    static func memory(_ type: HDF5ElementType) -> HDF5TypeID {
        switch type {
        case .uint8: return HDF5TypeID(id: starling_h5t_native_uint8(), owned: false)
        case .int8: return HDF5TypeID(id: starling_h5t_native_int8(), owned: false)
        case .int16: return HDF5TypeID(id: starling_h5t_native_int16(), owned: false)
        case .uint16: return HDF5TypeID(id: starling_h5t_native_uint16(), owned: false)
        case .int32: return HDF5TypeID(id: starling_h5t_native_int32(), owned: false)
        case .int64: return HDF5TypeID(id: starling_h5t_native_int64(), owned: false)
        case .float16: return HDF5TypeID(id: starling_h5t_create_f16le(), owned: true)  // every supported host is little-endian
        case .float32: return HDF5TypeID(id: starling_h5t_native_float(), owned: false)
        case .float64: return HDF5TypeID(id: starling_h5t_native_double(), owned: false)
        }
    }

    func close() {
        if owned && id >= 0 { H5Tclose(id) }
    }

    /// Classifies a datatype found in a file; nil for anything Starling does not store (strings, compounds,
    /// 32/64-bit unsigned integers, ...).
    static func elementType(of type: hid_t) -> HDF5ElementType? {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_INTEGER:
            let signed = H5Tget_sign(type) == H5T_SGN_2
            switch (size, signed) {
            case (1, false): return .uint8
            case (1, true): return .int8
            case (2, true): return .int16
            case (2, false): return .uint16
            case (4, true): return .int32
            case (8, true): return .int64
            default: return nil
            }
        case H5T_FLOAT:
            switch size {
            case 2: return .float16
            case 4: return .float32
            case 8: return .float64
            default: return nil
            }
        default:
            return nil
        }
    }

    /// A readable name for an unsupported type in error messages.
    static func describe(_ type: hid_t) -> String {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_INTEGER: return "\(H5Tget_sign(type) == H5T_SGN_2 ? "int" : "uint")\(size * 8)"
        case H5T_FLOAT: return "float\(size * 8)"
        case H5T_STRING: return "string"
        case H5T_COMPOUND: return "compound"
        default: return "HDF5 type class \(H5Tget_class(type).rawValue)"
        }
    }
}
