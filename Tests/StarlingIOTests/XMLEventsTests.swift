import Foundation
import Testing
@testable import StarlingIO

/// The events are written out by hand from the documents below.
@Suite struct XMLEventsTests {
    private func events(_ text: String) throws(XMLReadError) -> [XMLEvent] {
        var seen: [XMLEvent] = []
        try XMLEvents.read(Data(text.utf8)) { seen.append($0) }
        return seen
    }

    @Test func walksElementsTextAndEmptyElements() throws {
        let document = """
        <?xml version="1.0"?>
        <!-- a VOC annotation -->
        <annotation>
          <filename>a&amp;b.jpg</filename><?note data?>
          <object><name><![CDATA[car<1>]]></name><truncated/></object>
        </annotation>
        """
        let seen = try events(document).filter { if case .text(let t) = $0 { return !t.allSatisfy(\.isWhitespace) } else { return true } }
        #expect(seen == [.start(name: "annotation", line: 3), .start(name: "filename", line: 4), .text("a&b.jpg"),
                         .end(name: "filename"), .start(name: "object", line: 5), .start(name: "name", line: 5),
                         .text("car<1>"), .end(name: "name"), .start(name: "truncated", line: 5), .end(name: "truncated"),
                         .end(name: "object"), .end(name: "annotation")])
    }

    @Test func refusesDocumentsThatAreNotWellFormed() {
        // A mismatched closing tag on line 2, an undeclared entity, a processing instruction without data and no
        // element (FoundationXML's SAX wrapper crashed on this one), an unclosed element.
        let cases: [(String, Int, String)] = [
            ("<a>\n<b></a>", 2, "Opening and ending tag mismatch"),
            ("<a>&nope;</a>", 1, "Entity 'nope' not defined"),
            ("<?ewidth?>3eth?>3e", 1, "Document is empty"),
            ("<a><b>", 1, "Premature end of data|Extra content at the end of the document"),  // libxml2 2.9.14 says the latter
        ]
        for (document, line, message) in cases {
            do {
                _ = try events(document)
                Issue.record("accepted \(document)")
            } catch {
                #expect(error.line == line, "\(document): \(error)")
                #expect(message.split(separator: "|").contains { error.message.contains($0) }, "\(document): \(error)")
            }
        }
    }

    @Test func neverFetchesAnExternalEntity() throws {
        // No network and no DTD loading: the external entity is not resolved, so its reference yields no text.
        let document = "<!DOCTYPE a [<!ENTITY x SYSTEM \"http://127.0.0.1:9/x\">]><a>&x;</a>"
        #expect(try events(document) == [.start(name: "a", line: 1), .end(name: "a")])
    }
}
