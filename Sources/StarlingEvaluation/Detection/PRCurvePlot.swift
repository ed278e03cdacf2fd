import Foundation
import StarlingPlots
import StarlingNN

/// Precision-recall curves of a detection evaluation as PNG plots.
public enum PRCurvePlot {
    /// One plot with every class's curve (legend: class name and AP).
    public static func render(_ curves: [PRCurve], title: String) -> PixelCanvas {
        var plot = Plot(title: title, xLabel: "recall", yLabel: "precision", xRange: 0...1, yRange: 0...1)
        (plot.width, plot.height) = (760, 480)
        for curve in curves {
            plot.line(x: curve.recall, y: curve.precision, label: "\(curve.name) \(curve.ap.map { String(format: "%.3f", $0) } ?? "n/a")")
        }
        return plot.render()
    }

    public static func write(_ curves: [PRCurve], title: String, path: String) throws {
        try render(curves, title: title).writePNG(path: path)
    }
}
