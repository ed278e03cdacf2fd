import StarlingNN
import StarlingPlots

/// Pictures of detections: boxes with class name and confidence over the image, and the ground truth beside them,
/// as the course's predict notebook shows them.
public enum DetectionDrawing {
    /// Draws `detections` (coloured by class, labelled "name 0.93") and `groundTruth` (white, thin) on an RGB image.
    public static func draw(rgb: [UInt8], width: Int, height: Int, detections: [DetectedBox], groundTruth: [Object],
                            classNames: [String]) -> PixelCanvas {
        var canvas = PixelCanvas(width: width, height: height, rgb: rgb)
        for object in groundTruth {
            let b = object.box
            canvas.strokeRect(x: Int(b.xmin.rounded()), y: Int(b.ymin.rounded()), width: Int(b.width.rounded()), height: Int(b.height.rounded()), color: .white)
        }
        for d in detections {
            let color = RGB.palette[(d.classID - 1 + RGB.palette.count) % RGB.palette.count]
            let (x, y) = (Int(d.box.xmin.rounded()), Int(d.box.ymin.rounded()))
            let (w, h) = (Int(d.box.width.rounded()), Int(d.box.height.rounded()))
            canvas.strokeRect(x: x, y: y, width: w, height: h, color: color)
            canvas.strokeRect(x: x + 1, y: y + 1, width: max(0, w - 2), height: max(0, h - 2), color: color)
            let name = d.classID < classNames.count ? classNames[d.classID] : "\(d.classID)"
            let label = "\(name) \(String(Double((d.score * 100).rounded()) / 100))"
            let labelWidth = BitmapFont.width(of: label) + 4
            let top = max(0, y - BitmapFont.lineHeight - 1)
            canvas.fillRect(x: x, y: top, width: labelWidth, height: BitmapFont.lineHeight + 1, color: color)
            canvas.text(label, x: x + 2, y: top + 1, color: .white)
        }
        return canvas
    }

    /// Instances (Mask R-CNN): each mask blended into the image at half strength in a colour of its own (instances of
    /// one class must stay apart), then the boxes and labels of `draw`; `truthMasks`' outlines in white.
    public static func draw(rgb: [UInt8], width: Int, height: Int, instances: [(detection: DetectedBox, mask: [UInt8])],
                            truthMasks: [[UInt8]] = [], classNames: [String]) -> PixelCanvas {
        precondition(rgb.count == width * height * 3 && instances.allSatisfy { $0.mask.count == width * height }, "instance picture sizes")
        var blended = rgb
        for (k, instance) in instances.enumerated() {
            let color = RGB.palette[k % RGB.palette.count]
            for p in 0..<(width * height) where instance.mask[p] != 0 {
                blended[3 * p] = UInt8((Int(blended[3 * p]) + Int(color.r)) / 2)
                blended[3 * p + 1] = UInt8((Int(blended[3 * p + 1]) + Int(color.g)) / 2)
                blended[3 * p + 2] = UInt8((Int(blended[3 * p + 2]) + Int(color.b)) / 2)
            }
        }
        var canvas = draw(rgb: blended, width: width, height: height, detections: instances.map(\.detection), groundTruth: [], classNames: classNames)
        // A truth mask's outline: its pixels with a 4-neighbour outside it.
        for mask in truthMasks where mask.count == width * height {
            for y in 0..<height {
                for x in 0..<width where mask[y * width + x] != 0 {
                    let edge = x == 0 || y == 0 || x == width - 1 || y == height - 1 || mask[y * width + x - 1] == 0 || mask[y * width + x + 1] == 0
                        || mask[(y - 1) * width + x] == 0 || mask[(y + 1) * width + x] == 0
                    if edge { canvas.set(x: x, y: y, .white) }
                }
            }
        }
        return canvas
    }

    /// The course's table: `class conf xmin ymin xmax ymax`, one row per detection.
    public static func table(_ detections: [DetectedBox], classNames: [String]) -> String {
        var lines = ["class        conf    xmin    ymin    xmax    ymax"]
        for d in detections {
            let name = d.classID < classNames.count ? classNames[d.classID] : "\(d.classID)"
            func f(_ v: Float, _ width: Int) -> String {
                let text = String(Double((v * 100).rounded()) / 100)
                return String(repeating: " ", count: max(0, width - text.count)) + text
            }
            lines.append(name.padding(toLength: 10, withPad: " ", startingAt: 0) + f(d.score, 6) + f(d.box.xmin, 8) + f(d.box.ymin, 8) + f(d.box.xmax, 8) + f(d.box.ymax, 8))
        }
        return lines.joined(separator: "\n")
    }
}
