import Foundation
import StarlingNN

/// A chart drawn on a `PixelCanvas`: scatter points, lines and histogram bars in data coordinates, inside a frame
/// with ticks, tick labels and grid lines, under a title, with axis labels and a legend to the right.
///
///     var plot = Plot(title: "Loss per epoch", xLabel: "epoch", yLabel: "loss")
///     plot.line(x: epochs, y: trainLoss, label: "train")
///     plot.line(x: epochs, y: validationLoss, label: "validation")
///     try plot.writePNG(path: "loss.png")
///
/// A range left nil is fitted to the data and widened to whole tick steps (1, 2 or 5 times a power of ten).
/// Points outside the ranges are not drawn; lines are clamped to the frame.
public struct Plot: Sendable {
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var xRange: ClosedRange<Double>?
    public var yRange: ClosedRange<Double>?
    public var width = 640
    public var height = 480
    /// About how many tick intervals each axis gets.
    public var ticks = 5

    enum Mark: Sendable {
        case points(size: Int)
        case line(thickness: Int)
        case bars(Histogram)
    }

    struct Layer: Sendable {
        var label: String?
        var color: RGB
        var mark: Mark
        var x: [Double]
        var y: [Double]
    }

    private(set) var layers: [Layer] = []

    public init(title: String, xLabel: String, yLabel: String, xRange: ClosedRange<Double>? = nil, yRange: ClosedRange<Double>? = nil) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.xRange = xRange
        self.yRange = yRange
    }

    /// The next palette color, so that layers added without a color differ.
    private var nextColor: RGB { RGB.palette[layers.count % RGB.palette.count] }

    /// Points as `size` x `size` squares centred on their pixel.
    public mutating func scatter(x: [Double], y: [Double], label: String? = nil, color: RGB? = nil, size: Int = 3) {
        precondition(x.count == y.count, "scatter \(label ?? ""): \(x.count) x values, \(y.count) y values")
        layers.append(Layer(label: label, color: color ?? nextColor, mark: .points(size: size), x: x, y: y))
    }

    /// Consecutive points joined by straight lines; non-finite points are skipped.
    public mutating func line(x: [Double], y: [Double], label: String? = nil, color: RGB? = nil, thickness: Int = 2) {
        precondition(x.count == y.count, "line \(label ?? ""): \(x.count) x values, \(y.count) y values")
        layers.append(Layer(label: label, color: color ?? nextColor, mark: .line(thickness: thickness), x: x, y: y))
    }

    /// One bar per bin, from 0 to the bin's count.
    public mutating func histogram(_ histogram: Histogram, label: String? = nil, color: RGB? = nil) {
        layers.append(Layer(label: label, color: color ?? nextColor, mark: .bars(histogram), x: [], y: []))
    }

    // MARK: Layout

    /// Where the data area sits on the canvas and how data coordinates map to pixels.
    public struct Frame: Sendable {
        /// The data area's pixel box: x from `left` to `right`, y from `top` to `bottom` (inclusive).
        public let left: Int, top: Int, right: Int, bottom: Int
        public let xRange: ClosedRange<Double>, yRange: ClosedRange<Double>
        public let xTicks: [Double], yTicks: [Double]

        /// The pixel of data point (x, y): the range's lower bounds at the bottom-left corner, rounded to the nearest pixel.
        public func pixel(x: Double, y: Double) -> (x: Int, y: Int) {
            let fx = (x - xRange.lowerBound) / (xRange.upperBound - xRange.lowerBound)
            let fy = (y - yRange.lowerBound) / (yRange.upperBound - yRange.lowerBound)
            return (left + Int((fx * Double(right - left)).rounded()), bottom - Int((fy * Double(bottom - top)).rounded()))
        }
    }

    static let titleHeight = 40, bottomMargin = 50, rightMargin = 16, legendRow = 14

    /// The frame this plot renders with (ranges resolved, margins sized to the tick labels and legend).
    public func frame() -> Frame {
        let (xRange, xTicks) = Self.axis(explicit: xRange, data: dataExtent(\.x), ticks: ticks)
        let (yRange, yTicks) = Self.axis(explicit: yRange, data: dataExtent(\.y), ticks: ticks)
        let yLabelWidth = yTicks.map { BitmapFont.width(of: Self.tickLabel($0, ticks: yTicks)) }.max() ?? 0
        let left = 30 + yLabelWidth + 9   // vertical axis label (14 px at scale 2), gap, tick labels, tick mark
        let right = width - Self.rightMargin - legendWidth - 1
        precondition(right - left >= 20 && height - Self.bottomMargin - Self.titleHeight >= 20, "plot \(width)x\(height) is too small")
        return Frame(left: left, top: Self.titleHeight, right: right, bottom: height - Self.bottomMargin - 1,
                     xRange: xRange, yRange: yRange, xTicks: xTicks, yTicks: yTicks)
    }

    private var legendEntries: [(label: String, color: RGB, mark: Mark)] {
        layers.compactMap { layer in layer.label.map { ($0, layer.color, layer.mark) } }
    }

    private static let legendCharacters = 30
    private var legendWidth: Int {
        let widest = legendEntries.map { BitmapFont.width(of: String($0.label.prefix(Self.legendCharacters))) }.max()
        return widest.map { $0 + 36 } ?? 0
    }

    /// Smallest and largest finite value over the layers on one axis (bars: their edges, and 0 up to the tallest).
    private func dataExtent(_ axis: KeyPath<Layer, [Double]>) -> ClosedRange<Double>? {
        var lo = Double.infinity, hi = -Double.infinity
        for layer in layers {
            var values = layer[keyPath: axis]
            if case .bars(let h) = layer.mark {
                values = axis == \Layer.x ? [h.range.lowerBound, h.range.upperBound] : [0, Double(h.counts.max() ?? 0)]
            }
            for v in values where v.isFinite { lo = min(lo, v); hi = max(hi, v) }
        }
        return lo <= hi ? lo...hi : nil
    }

    /// An axis's range and ticks: the explicit range with ticks inside it, or the data's range widened to whole steps.
    static func axis(explicit: ClosedRange<Double>?, data: ClosedRange<Double>?, ticks: Int) -> (ClosedRange<Double>, [Double]) {
        if let explicit {
            precondition(explicit.upperBound > explicit.lowerBound, "an axis range must not be empty")
            let step = niceStep((explicit.upperBound - explicit.lowerBound) / Double(ticks))
            return (explicit, tickValues(explicit, step: step))
        }
        var range = data ?? 0...1
        if range.upperBound == range.lowerBound {   // one value: a unit either side
            range = (range.lowerBound - 1)...(range.upperBound + 1)
        }
        let step = niceStep((range.upperBound - range.lowerBound) / Double(ticks))
        let widened = (floor(range.lowerBound / step) * step)...(ceil(range.upperBound / step) * step)
        return (widened, tickValues(widened, step: step))
    }

    /// 1, 2 or 5 times a power of ten, the smallest such at least `raw`.
    static func niceStep(_ raw: Double) -> Double {
        let magnitude = pow(10, floor(log10(raw)))
        let fraction = raw / magnitude
        let nice: Double = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10
        return nice * magnitude
    }

    /// The multiples of `step` inside `range` (with a little slack for rounding).
    static func tickValues(_ range: ClosedRange<Double>, step: Double) -> [Double] {
        let slack = 1e-9 * (range.upperBound - range.lowerBound)
        var values: [Double] = []
        var k = ceil((range.lowerBound - slack) / step)
        while k * step <= range.upperBound + slack {
            values.append(abs(k * step) < slack ? 0 : k * step)
            k += 1
        }
        return values
    }

    /// A tick's label with as many decimals as the step between ticks needs.
    static func tickLabel(_ value: Double, ticks: [Double]) -> String {
        let step = ticks.count > 1 ? ticks[1] - ticks[0] : 1
        let decimals = max(0, -Int(floor(log10(step) + 1e-9)))
        return String(format: "%.\(decimals)f", value)
    }

    // MARK: Drawing

    public func render() -> PixelCanvas {
        var canvas = PixelCanvas(width: width, height: height)
        let f = frame()
        let plotWidth = f.right - f.left, plotHeight = f.bottom - f.top

        for t in f.xTicks { canvas.fillRect(x: f.pixel(x: t, y: 0).x, y: f.top, width: 1, height: plotHeight, color: .lightGray) }
        for t in f.yTicks { canvas.fillRect(x: f.left, y: f.pixel(x: 0, y: t).y, width: plotWidth, height: 1, color: .lightGray) }
        for layer in layers { draw(layer, frame: f, on: &canvas) }
        canvas.strokeRect(x: f.left, y: f.top, width: plotWidth + 1, height: plotHeight + 1, color: .black)

        for t in f.xTicks {
            let x = f.pixel(x: t, y: 0).x, label = Self.tickLabel(t, ticks: f.xTicks)
            canvas.fillRect(x: x, y: f.bottom + 1, width: 1, height: 5, color: .black)
            canvas.text(label, x: x - BitmapFont.width(of: label) / 2, y: f.bottom + 9, color: .black)
        }
        for t in f.yTicks {
            let y = f.pixel(x: 0, y: t).y, label = Self.tickLabel(t, ticks: f.yTicks)
            canvas.fillRect(x: f.left - 5, y: y, width: 5, height: 1, color: .black)
            canvas.text(label, x: f.left - 9 - BitmapFont.width(of: label), y: y - 3, color: .black)
        }
        canvas.text(xLabel, x: f.left + (plotWidth - 2 * BitmapFont.width(of: xLabel)) / 2, y: f.bottom + 24, color: .black, scale: 2)
        canvas.text(yLabel, x: 8, y: f.top + (plotHeight + 2 * BitmapFont.width(of: yLabel)) / 2, color: .black, scale: 2, vertical: true)
        let titleScale = 2 * BitmapFont.width(of: title) <= width - 20 ? 2 : 1
        canvas.text(title, x: max(4, (width - titleScale * BitmapFont.width(of: title)) / 2), y: 12, color: .black, scale: titleScale)
        drawLegend(frame: f, on: &canvas)
        return canvas
    }

    public func writePNG(path: String) throws { try render().writePNG(path: path) }

    private func draw(_ layer: Layer, frame f: Frame, on canvas: inout PixelCanvas) {
        switch layer.mark {
        case .points(let size):
            for (x, y) in zip(layer.x, layer.y) where f.xRange.contains(x) && f.yRange.contains(y) {
                let p = f.pixel(x: x, y: y)
                canvas.fillRect(x: p.x - (size - 1) / 2, y: p.y - (size - 1) / 2, width: size, height: size, color: layer.color)
            }
        case .line(let thickness):
            var previous: (x: Int, y: Int)?
            for (x, y) in zip(layer.x, layer.y) where x.isFinite && y.isFinite {
                let p = f.pixel(x: min(max(x, f.xRange.lowerBound), f.xRange.upperBound),
                                y: min(max(y, f.yRange.lowerBound), f.yRange.upperBound))
                if let q = previous {
                    if q != p { canvas.line(from: q, to: p, color: layer.color, thickness: thickness) }
                } else {
                    canvas.fillRect(x: p.x - 1, y: p.y - 1, width: 3, height: 3, color: layer.color)
                }
                previous = p
            }
        case .bars(let h):
            let floor = min(max(0, f.yRange.lowerBound), f.yRange.upperBound)
            for (bin, count) in h.counts.enumerated() where count > 0 {
                let (lo, hi) = h.edges(bin)
                guard hi > f.xRange.lowerBound, lo < f.xRange.upperBound else { continue }
                let a = f.pixel(x: max(lo, f.xRange.lowerBound), y: min(Double(count), f.yRange.upperBound))
                let b = f.pixel(x: min(hi, f.xRange.upperBound), y: floor)
                let gap = b.x - a.x > 3 ? 1 : 0   // keep neighbouring bars apart when they are wide enough
                canvas.fillRect(x: a.x, y: a.y, width: max(1, b.x - a.x - gap), height: b.y - a.y + 1, color: layer.color)
            }
        }
    }

    private func drawLegend(frame f: Frame, on canvas: inout PixelCanvas) {
        let entries = legendEntries
        guard !entries.isEmpty else { return }
        let x = f.right + 16
        let rows = max(1, (f.bottom - f.top) / Self.legendRow)
        let shown = entries.count <= rows ? entries.count : rows - 1
        for (i, entry) in entries.prefix(shown).enumerated() {
            let y = f.top + i * Self.legendRow
            switch entry.mark {
            case .points: canvas.fillRect(x: x + 4, y: y + 1, width: 5, height: 5, color: entry.color)
            case .line: canvas.fillRect(x: x, y: y + 2, width: 14, height: 3, color: entry.color)
            case .bars: canvas.fillRect(x: x + 2, y: y - 1, width: 10, height: 9, color: entry.color)
            }
            canvas.text(String(entry.label.prefix(Self.legendCharacters)), x: x + 20, y: y, color: .black)
        }
        if shown < entries.count {
            canvas.text("+\(entries.count - shown) more", x: x + 20, y: f.top + shown * Self.legendRow, color: .gray)
        }
    }
}

/// Counts of values in equal-width bins over a fixed range, filled one value at a time (so it can stream).
public struct Histogram: Sendable, Equatable {
    public let range: ClosedRange<Double>
    public private(set) var counts: [Int]
    /// Values outside the range, and non-finite ones: not in any bin.
    public private(set) var outside = 0

    public init(range: ClosedRange<Double>, bins: Int) {
        precondition(bins > 0 && range.upperBound > range.lowerBound, "a histogram needs bins and a non-empty range")
        self.range = range
        counts = [Int](repeating: 0, count: bins)
    }

    /// Bin i holds [lo + i w, lo + (i + 1) w), the last bin also its upper edge.
    public mutating func add(_ value: Double) {
        guard value.isFinite, range.contains(value) else { outside += 1; return }
        let fraction = (value - range.lowerBound) / (range.upperBound - range.lowerBound)
        counts[min(counts.count - 1, Int(fraction * Double(counts.count)))] += 1
    }

    public func edges(_ bin: Int) -> (lower: Double, upper: Double) {
        let w = (range.upperBound - range.lowerBound) / Double(counts.count)
        return (range.lowerBound + Double(bin) * w, bin == counts.count - 1 ? range.upperBound : range.lowerBound + Double(bin + 1) * w)
    }
}
