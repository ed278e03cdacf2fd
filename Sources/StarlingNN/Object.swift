/// One annotated object.
public struct Object: Equatable, Sendable {
    public var box: BoxCorners
    public var classID: Int
    public var difficult: Bool
    public init(box: BoxCorners, classID: Int, difficult: Bool = false) {
        self.box = box; self.classID = classID; self.difficult = difficult
    }
}
