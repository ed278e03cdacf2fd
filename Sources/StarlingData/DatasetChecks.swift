import StarlingIO
import StarlingNN

/// What a stored array must hold for a dataset reader to take it as it is. HDF5 converts any numeric type to the type
/// a reader asks for, silently: float pixels in [0, 1] read as bytes become 0 and 1 (a black image), int16 pixels clip
/// at 255, a class id of 1.7 truncates to 1. The readers therefore check each array's element type and shape when the
/// dataset opens, and refuse a mismatch naming the file, the array and what was expected.
enum StoredElements {
    /// Image pixels and class maps: uint8 only (Starling's importers quantise; `starling data` converts).
    case bytes
    /// Counts, offsets, ids and class ids: any integer type (values are range-checked where they are used).
    case integers
    /// Coordinates: any integer or float type.
    case numbers

    func accepts(_ type: HDF5ElementType) -> Bool {
        switch self {
        case .bytes: return type == .uint8
        case .integers: return [.uint8, .int8, .int16, .uint16, .int32, .int64].contains(type)
        case .numbers: return true
        }
    }

    var expected: String {
        switch self {
        case .bytes: return "uint8"
        case .integers: return "integers"
        case .numbers: return "numbers"
        }
    }
}

extension HDF5Dataset {
    /// Throws, naming `path` and this array, unless its element type is `elements` and its shape `shape` (nil entries
    /// match any size).
    func require(_ elements: StoredElements, shape expected: [Int?], in path: String, what: String = "values") throws {
        let shapeMatches = shape.count == expected.count && zip(shape, expected).allSatisfy { $1 == nil || $0 == $1 }
        guard elements.accepts(elementType) && shapeMatches else {
            let wanted = "[" + expected.map { $0.map(String.init) ?? "_" }.joined(separator: ", ") + "]"
            throw DataError(file: path, message: "\(name) holds \(elementType) \(shape); expected \(elements.expected) \(wanted) (\(what))")
        }
    }
}
