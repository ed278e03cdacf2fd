



/// How source labels become Starling class ids (1...C; 0 is background and never stored).
struct ClassMapping: Sendable {
    enum Decision: Equatable {
        /// Class id 1...C.
        case keep(Int)
        /// A region that is neither object nor background for every class (KITTI DontCare): stored as one difficult
        /// box per class, since the layout gives each box one class.
        case dontCare
        /// Left out on purpose and counted (KITTI Misc, Tram).
        case drop
    }

    /// Foreground class names; class id k is `names[k - 1]`.
    let names: [String]
    /// The decision for a label, or nil for an unknown class.
    let decide: @Sendable (String) -> Decision?
    /// How the known labels look, for the "unknown class" message.
    let expected: String

    /// The five classes of the Udacity driving set as the course (ssd_keras) numbers them.
    static let drivingClasses = ["car", "truck", "pedestrian", "bicyclist", "light"]

    /// Integer labels 1...C (the course CSV, ssd_keras HDF5 files).
    static func oneBasedIDs(_ names: [String]) -> ClassMapping {
        ClassMapping(names: names, decide: { label in
            guard let id = Int(label), (1...names.count).contains(id) else { return nil }
            return .keep(id)
        }, expected: "a class id 1...\(names.count)")
    }

    /// Integer labels 0...C-1 (YOLO).
    static func zeroBasedIDs(_ names: [String]) -> ClassMapping {
        ClassMapping(names: names, decide: { label in
            guard let id = Int(label), (0..<names.count).contains(id) else { return nil }
            return .keep(id + 1)
        }, expected: "a class id 0...\(names.count - 1)")
    }

    /// Labels that are the class names themselves (VOC, COCO).
    static func byName(_ names: [String]) -> ClassMapping {
        let ids = Dictionary(names.enumerated().map { ($1, $0 + 1) }, uniquingKeysWith: { a, _ in a })
        return ClassMapping(names: names, decide: { ids[$0].map { .keep($0) } },
                            expected: "one of \(names.prefix(12).joined(separator: ", "))\(names.count > 12 ? ", ..." : "")")
    }

    /// Udacity's original label names (Autti: car, truck, pedestrian, biker, trafficLight; CrowdAI: Car, Truck,
    /// Pedestrian), case-insensitively, onto the five driving classes.
    static let udacityNames: ClassMapping = {
        let table = ["car": 1, "truck": 2, "pedestrian": 3, "biker": 4, "bicyclist": 4, "trafficlight": 5, "light": 5]
        return ClassMapping(names: drivingClasses, decide: { table[$0.lowercased()].map { .keep($0) } },
                            expected: "car, truck, pedestrian, biker or trafficLight")
    }()

    /// KITTI types onto the first four driving classes (KITTI has no traffic lights), so the ids match the
    /// Udacity set's: 1 car, 2 truck, 3 pedestrian, 4 bicyclist.
    static let kitti: ClassMapping = {
        let table: [String: Decision] = [
            "Car": .keep(1), "Van": .keep(1), "Truck": .keep(2), "Pedestrian": .keep(3), "Person_sitting": .keep(3),
            "Cyclist": .keep(4), "DontCare": .dontCare, "Misc": .drop, "Tram": .drop,
        ]
        return ClassMapping(names: Array(drivingClasses.prefix(4)), decide: { table[$0] },
                            expected: "Car, Van, Truck, Pedestrian, Person_sitting, Cyclist, Tram, Misc or DontCare")
    }()
}
