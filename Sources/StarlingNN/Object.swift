/// One annotated object.
public struct Object: Equatable, Sendable {
    public var box: BoxCorners
    public var classID: Int
    public var difficult: Bool
    /// An ignore region rather than an object (KITTI's DontCare): difficult for training and the VOC protocols,
    /// and COCO's `iscrowd` for the COCO protocol, which then neither counts it nor penalises detections inside it.
    public var ignoreRegion: Bool
    public init(box: BoxCorners, classID: Int, difficult: Bool = false, ignoreRegion: Bool = false) {
        self.box = box; self.classID = classID; self.difficult = difficult || ignoreRegion; self.ignoreRegion = ignoreRegion
    }
}
