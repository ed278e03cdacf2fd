import StarlingCore
import StarlingNN

/// Where an input image lies inside a network's input after letterboxing, as darknet's letterbox_image places it:
/// resized by one factor on both axes so that it fits, centred, and the rest filled with grey (127.5 of 0...255).
/// The model applies it to its images (`NetworkValue.letterboxed`) and its head to the boxes: ground truth into
/// network pixels for the targets, detections back to input pixels.
public struct Letterbox: Sendable, Equatable {
    public let inputHeight: Int, inputWidth: Int
    public let networkHeight: Int, networkWidth: Int
    /// The resized image's size and its offset inside the network's input.
    public let resizedHeight: Int, resizedWidth: Int
    public let top: Int, left: Int
    /// The grey of the frame, in the 0...255 pixels models take.
    public static let fill: Float = 127.5

    public init(input: (height: Int, width: Int), network: (height: Int, width: Int)) {
        precondition(input.height > 0 && input.width > 0 && network.height > 0 && network.width > 0, "letterbox sizes")
        (inputHeight, inputWidth, networkHeight, networkWidth) = (input.height, input.width, network.height, network.width)
        let scale = min(Double(network.height) / Double(input.height), Double(network.width) / Double(input.width))
        resizedHeight = min(network.height, max(1, Int((Double(input.height) * scale).rounded())))
        resizedWidth = min(network.width, max(1, Int((Double(input.width) * scale).rounded())))
        top = (network.height - resizedHeight) / 2
        left = (network.width - resizedWidth) / 2
    }

    /// The same size in and out: nothing to resize or pad.
    public var isIdentity: Bool { inputHeight == networkHeight && inputWidth == networkWidth }

    /// Network pixels per input pixel, along x and y.
    var scaleX: Float { Float(resizedWidth) / Float(inputWidth) }
    var scaleY: Float { Float(resizedHeight) / Float(inputHeight) }

    /// A box in input pixels, in network pixels.
    public func toNetwork(_ b: BoxCorners) -> BoxCorners {
        guard !isIdentity else { return b }
        return BoxCorners(xmin: b.xmin * scaleX + Float(left), ymin: b.ymin * scaleY + Float(top),
                          xmax: b.xmax * scaleX + Float(left), ymax: b.ymax * scaleY + Float(top))
    }

    /// A box in network pixels, in input pixels.
    public func toInput(_ b: BoxCorners) -> BoxCorners {
        guard !isIdentity else { return b }
        return BoxCorners(xmin: (b.xmin - Float(left)) / scaleX, ymin: (b.ymin - Float(top)) / scaleY,
                          xmax: (b.xmax - Float(left)) / scaleX, ymax: (b.ymax - Float(top)) / scaleY)
    }
}

extension Letterbox {
    /// The network input of a letterboxing family's configuration and the letterbox that places the data's images in
    /// it: the options `network_height` and `network_width`, or the data's size rounded up to multiples of `multiple`
    /// (padding, never resizing). Throws naming the model when the options are not such multiples.
    public static func network(of config: ModelConfig, multiple: Int) throws -> Letterbox {
        guard config.inputShape.count == 3, config.inputShape[1] > 0, config.inputShape[2] > 0 else {
            throw ModelError.inputShape(family: config.family, expected: [3, 416, 416], got: config.inputShape, source: "model configuration")
        }
        let (h, w) = (config.inputShape[1], config.inputShape[2])
        func roundedUp(_ n: Int) -> Int { (n + multiple - 1) / multiple * multiple }
        let height = Int(config.option("network_height", default: Double(roundedUp(h))))
        let width = Int(config.option("network_width", default: Double(roundedUp(w))))
        guard height % multiple == 0, width % multiple == 0, height >= multiple, width >= multiple else {
            throw ModelError.configuration(family: config.family, problem: "network size \(height)x\(width): its sides must be multiples of \(multiple)")
        }
        return Letterbox(input: (h, w), network: (height, width))
    }
}

extension NetworkValue {
    /// The images placed in the network's input by `letterbox` (the values themselves when it is the identity).
    public func letterboxed(_ letterbox: Letterbox) -> Self {
        guard !letterbox.isIdentity else { return self }
        let (h, w) = (letterbox.resizedHeight, letterbox.resizedWidth)
        let resized = h == letterbox.inputHeight && w == letterbox.inputWidth ? self : self.resized(height: h, width: w)
        return resized.padded(top: letterbox.top, left: letterbox.left, bottom: letterbox.networkHeight - h - letterbox.top,
                              right: letterbox.networkWidth - w - letterbox.left, value: Letterbox.fill)
    }
}
