import Foundation

/// A line plot drawn into a `PixelCanvas`: axes with ticks and grid, a title, axis labels and a legend.
public struct LinePlot: Sendable {
    public struct Series: Sendable {
        public var label: String
        public var x: [Double]
        public var y: [Double]
        public init(label: String, x: [Double], y: [Double]) {
            precondition(x.count == y.count, "series \(label): \(x.count) x values, \(y.count) y values")
            self.label = label; self.x = x; self.y = y
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var xRange: ClosedRange<Double> = 0...1
    public var yRange: ClosedRange<Double> = 0...1
    /// Tick intervals on each axis.
    public var ticks = 5
    public var width = 760
    public var height = 480

    public init(title: String, xLabel: String, yLabel: String) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel
    }

    private static let legendWidth = 200

    public func render(_ series: [Series]) -> PixelCanvas {
        var canvas = PixelCanvas(width: width, height: height)
        let left = 64, top = 36, right = width - Self.legendWidth - 24, bottom = height - 48
        let plotWidth = right - left, plotHeight = bottom - top
        func px(_ x: Double) -> Int { left + Int(((x - xRange.lowerBound) / (xRange.upperBound - xRange.lowerBound) * Double(plotWidth)).rounded()) }
        func py(_ y: Double) -> Int { bottom - Int(((y - yRange.lowerBound) / (yRange.upperBound - yRange.lowerBound) * Double(plotHeight)).rounded()) }

        // Grid, ticks and their labels.
        for i in 0...ticks {
            let fx = xRange.lowerBound + Double(i) * (xRange.upperBound - xRange.lowerBound) / Double(ticks)
            let fy = yRange.lowerBound + Double(i) * (yRange.upperBound - yRange.lowerBound) / Double(ticks)
            let x = px(fx), y = py(fy)
            canvas.fillRect(x: x, y: top, width: 1, height: plotHeight, color: .lightGray)
            canvas.fillRect(x: left, y: y, width: plotWidth, height: 1, color: .lightGray)
            canvas.fillRect(x: x, y: bottom, width: 1, height: 5, color: .black)
            canvas.fillRect(x: left - 5, y: y, width: 5, height: 1, color: .black)
            let xt = String(format: "%.1f", fx), yt = String(format: "%.1f", fy)
            canvas.text(xt, x: x - BitmapFont.width(of: xt) / 2, y: bottom + 9, color: .black)
            canvas.text(yt, x: left - 9 - BitmapFont.width(of: yt), y: y - 3, color: .black)
        }
        canvas.strokeRect(x: left, y: top, width: plotWidth + 1, height: plotHeight + 1, color: .black)
        canvas.text(xLabel, x: left + (plotWidth - 2 * BitmapFont.width(of: xLabel)) / 2, y: bottom + 24, color: .black, scale: 2)
        canvas.text(yLabel, x: 10, y: top + (plotHeight + 2 * BitmapFont.width(of: yLabel)) / 2, color: .black, scale: 2, vertical: true)
        let titleScale = 2 * BitmapFont.width(of: title) <= width - 20 ? 2 : 1
        canvas.text(title, x: max(4, (width - titleScale * BitmapFont.width(of: title)) / 2), y: 10, color: .black, scale: titleScale)

        // The series, in palette colors, then the legend beside the plot.
        for (s, one) in series.enumerated() {
            let color = RGB.palette[s % RGB.palette.count]
            var previous: (x: Int, y: Int)?
            for (x, y) in zip(one.x, one.y) where x.isFinite && y.isFinite {
                let point = (x: px(min(max(x, xRange.lowerBound), xRange.upperBound)), y: py(min(max(y, yRange.lowerBound), yRange.upperBound)))
                if let p = previous {
                    if p != point { canvas.line(from: p, to: point, color: color, thickness: 2) }
                } else {
                    canvas.fillRect(x: point.x - 1, y: point.y - 1, width: 3, height: 3, color: color)
                }
                previous = point
            }
        }
        let rowHeight = 14, legendX = right + 16, characters = (Self.legendWidth - 20) / BitmapFont.advance
        let rows = max(1, plotHeight / rowHeight)
        let shown = series.count <= rows ? series.count : rows - 1
        for (s, one) in series.prefix(shown).enumerated() {
            let y = top + s * rowHeight
            canvas.fillRect(x: legendX, y: y + 2, width: 14, height: 3, color: RGB.palette[s % RGB.palette.count])
            canvas.text(String(one.label.prefix(characters)), x: legendX + 20, y: y, color: .black)
        }
        if shown < series.count {
            canvas.text("+\(series.count - shown) more", x: legendX + 20, y: top + shown * rowHeight, color: .gray)
        }
        return canvas
    }
}

/// Precision-recall curves of a detection evaluation as PNG plots.
public enum PRCurvePlot {
    /// One plot with every class's curve (legend: class name and AP).
    public static func render(_ curves: [PRCurve], title: String) -> PixelCanvas {
        LinePlot(title: title, xLabel: "recall", yLabel: "precision").render(curves.map { curve in
            LinePlot.Series(label: "\(curve.name) \(curve.ap.map { String(format: "%.3f", $0) } ?? "n/a")",
                            x: curve.recall, y: curve.precision)
        })
    }

    public static func write(_ curves: [PRCurve], title: String, path: String) throws {
        try render(curves, title: title).writePNG(path: path)
    }
}
