import CXML2
import Foundation

/// One step of an XML document as libxml2's streaming reader (`xmlTextReader`) walks it: an element opens, text
/// (character data or CDATA) arrives, an element closes. An empty element (`<a/>`) gives a start and an end.
public enum XMLEvent: Equatable {
    case start(name: String, line: Int)
    case text(String)
    case end(name: String)
}

/// Where libxml2 stopped on a document that is not well-formed XML, and its message.
public struct XMLReadError: Error, Equatable {
    public var line: Int
    public var message: String
}

/// Reads XML with libxml2 directly. FoundationXML's `XMLParser` on Linux wraps the same library through SAX callbacks
/// that crash on inputs libxml2 itself handles (a processing instruction without data: strlen of a null pointer; an
/// element name that is not UTF-8: a trap), both found by fuzzing (`Launch/fuzz.sh voc`); the pull reader hands back
/// only strings libxml2 owns and checks. No network access, no DTD loading, no entity substitution: an annotation file
/// is data, not a document that may fetch or expand others.
public enum XMLEvents {
    private static let initialised: Void = {
        xmlInitParser()
        starling_xml_silence_errors()
    }()

    /// Calls `handle` with each event of `data` in document order; throws at the first well-formedness error, after
    /// the events before it.
    public static func read(_ data: Data, handle: (XMLEvent) -> Void) throws(XMLReadError) {
        _ = initialised
        guard data.count < Int(Int32.max) else { throw XMLReadError(line: 0, message: "larger than 2 GB") }
        let options = Int32(bitPattern: XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue)
        xmlResetLastError()
        let outcome: XMLReadError? = data.withUnsafeBytes { raw -> XMLReadError? in
            // libxml2 reads `size` bytes and never past them; an empty buffer still needs a valid pointer.
            let empty: CChar = 0
            let base = raw.baseAddress?.assumingMemoryBound(to: CChar.self)
            guard let reader = withUnsafePointer(to: empty, { xmlReaderForMemory(base ?? $0, Int32(data.count), nil, nil, options) }) else {
                return XMLReadError(line: 0, message: "libxml2 could not start a reader")
            }
            defer { xmlFreeTextReader(reader) }
            while true {
                let status = xmlTextReaderRead(reader)
                if status == 0 { return nil }
                if status < 0 { return lastError(line: Int(xmlTextReaderGetParserLineNumber(reader))) }
                let type = xmlTextReaderNodeType(reader)
                switch UInt32(type) {
                case XML_READER_TYPE_ELEMENT.rawValue:
                    let name = string(xmlTextReaderConstName(reader))
                    // The node's own line: the parser itself may already have read ahead.
                    handle(.start(name: name, line: xmlGetLineNo(xmlTextReaderCurrentNode(reader))))
                    if xmlTextReaderIsEmptyElement(reader) == 1 { handle(.end(name: name)) }
                case XML_READER_TYPE_END_ELEMENT.rawValue:
                    handle(.end(name: string(xmlTextReaderConstName(reader))))
                case XML_READER_TYPE_TEXT.rawValue, XML_READER_TYPE_CDATA.rawValue,
                     XML_READER_TYPE_SIGNIFICANT_WHITESPACE.rawValue, XML_READER_TYPE_WHITESPACE.rawValue:
                    handle(.text(string(xmlTextReaderConstValue(reader))))
                default:
                    break  // comments, processing instructions, the document type, entity references
                }
            }
        }
        if let outcome { throw outcome }
    }

    private static func string(_ pointer: UnsafePointer<xmlChar>?) -> String {
        guard let pointer else { return "" }
        return String(cString: pointer)
    }

    private static func lastError(line: Int) -> XMLReadError {
        guard let error = xmlGetLastError(), let message = error.pointee.message else {
            return XMLReadError(line: line, message: "not well-formed XML")
        }
        let text = String(cString: message).split(whereSeparator: \.isNewline).joined(separator: " ")
            .trimmingCharacters(in: .whitespaces)
        return XMLReadError(line: error.pointee.line > 0 ? Int(error.pointee.line) : line, message: text)
    }
}
