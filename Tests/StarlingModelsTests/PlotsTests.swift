import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingPlots

/// The plot API draws where the documented layout says, and `eval --plots` writes the autoencoder figures.
@Suite struct PlotsTests {
    static let red = RGB(255, 0, 0)

    /// 400 x 300, x and y over 0...10: ticks 0, 2, ..., 10, the widest y label "10" is 11 pixels, so
    /// left = 30 + 11 + 9 = 50; no legend, so right = 400 - 16 - 1 = 383; top = 40; bottom = 300 - 50 - 1 = 249.
    @Test func scatterPointLandsOnItsPixel() {
        var plot = Plot(title: "t", xLabel: "x", yLabel: "y", xRange: 0...10, yRange: 0...10)
        (plot.width, plot.height) = (400, 300)
        plot.scatter(x: [3], y: [7], color: Self.red, size: 3)
        let f = plot.frame()
        #expect((f.left, f.right, f.top, f.bottom) == (50, 383, 40, 249))
        #expect(f.xTicks == [0, 2, 4, 6, 8, 10] && f.yTicks == f.xTicks)
        // (3, 7): x = 50 + round(0.3 * 333 = 99.9) = 150, y = 249 - round(0.7 * 209 = 146.3) = 103.
        #expect(f.pixel(x: 3, y: 7) == (150, 103))
        #expect(f.pixel(x: 0, y: 0) == (50, 249) && f.pixel(x: 10, y: 10) == (383, 40))
        let canvas = plot.render()
        #expect(canvas.width == 400 && canvas.height == 300)
        for (x, y) in [(149, 102), (150, 103), (151, 104)] { #expect(canvas.pixel(x: x, y: y) == Self.red, "\(x), \(y)") }
        #expect(canvas.pixel(x: 148, y: 103) == .white && canvas.pixel(x: 152, y: 103) == .white)
        // The frame's corners, and a grid line at x = 4: 50 + round(0.4 * 333 = 133.2) = 183.
        #expect(canvas.pixel(x: 50, y: 40) == .black && canvas.pixel(x: 383, y: 249) == .black)
        #expect(canvas.pixel(x: 183, y: 120) == .lightGray)
        // A point outside the ranges is not drawn (no clamping onto the frame).
        var outside = plot
        outside.scatter(x: [11], y: [5], color: .black)
        #expect(outside.render().pixels == canvas.pixels)
    }

    /// A labelled line makes a legend: width("train") = 5 * 6 - 1 = 29, legend 29 + 36 = 65, right = 400 - 16 - 65 - 1 = 318;
    /// its swatch is 14 x 3 at (right + 16, top + 2).
    @Test func lineWithLegend() {
        var plot = Plot(title: "t", xLabel: "x", yLabel: "y", xRange: 0...10, yRange: 0...10)
        (plot.width, plot.height) = (400, 300)
        plot.line(x: [0, 10], y: [0, 10], label: "train")
        let f = plot.frame()
        #expect(f.right == 318)
        let canvas = plot.render()
        let blue = RGB.palette[0]
        #expect(canvas.pixel(x: 334, y: 42) == blue && canvas.pixel(x: 347, y: 44) == blue && canvas.pixel(x: 348, y: 43) == .white)
        // The diagonal passes the middle of the frame: (5, 5) -> (50 + 134, 249 - round(104.5)) = (184, 144), within a pixel.
        let middle = f.pixel(x: 5, y: 5)
        #expect(middle == (184, 144))
        #expect((-1...1).contains { dy in (-1...1).contains { dx in canvas.pixel(x: middle.x + dx, y: middle.y + dy) == blue } })
        #expect(canvas.pixel(x: 184, y: 60) != blue)
    }

    @Test func histogramCountsAndBars() {
        var h = Histogram(range: 0...1, bins: 4)
        for v in [0, 0.1, 0.25, 0.5, 0.99, 1.0, 1.5, .nan] { h.add(v) }
        // [0, .25): 0, 0.1; [.25, .5): 0.25; [.5, .75): 0.5; [.75, 1]: 0.99 and the upper edge 1.0. Outside: 1.5, nan.
        #expect(h.counts == [2, 1, 1, 2] && h.outside == 2)
        #expect(h.edges(3) == (0.75, 1.0))
        var plot = Plot(title: "h", xLabel: "v", yLabel: "n", xRange: 0...1, yRange: 0...4)
        (plot.width, plot.height) = (400, 300)
        plot.histogram(h, color: Self.red)
        // Widest y label "4" is 5 pixels: left = 44, right = 383. Bar 0 (count 2): x 44 ... 44 + round(0.25 * 339) - 1 = 127,
        // top 249 - round(2 / 4 * 209 = 104.5) = 144. Bar 1 (count 1): top 249 - round(52.25) = 197.
        let canvas = plot.render()
        #expect(canvas.pixel(x: 80, y: 200) == Self.red && canvas.pixel(x: 80, y: 145) == Self.red && canvas.pixel(x: 80, y: 140) == .white)
        #expect(canvas.pixel(x: 170, y: 220) == Self.red && canvas.pixel(x: 170, y: 190) == .white)
        #expect(canvas.pixel(x: 128, y: 220) == .white)   // the gap between bars 0 and 1
    }

    @Test func automaticRangesAndTicks() {
        #expect(Plot.niceStep(1.88) == 2 && Plot.niceStep(0.23) == 0.5 && Plot.niceStep(1) == 1 && abs(Plot.niceStep(0.07) - 0.1) < 1e-15)
        let (range, ticks) = Plot.axis(explicit: nil, data: 0.3...9.7, ticks: 5)
        #expect(range == 0...10 && ticks == [0, 2, 4, 6, 8, 10])
        let (single, singleTicks) = Plot.axis(explicit: nil, data: 3...3, ticks: 5)   // one value: 2...4, step 0.5
        #expect(single == 2...4 && singleTicks == [2, 2.5, 3, 3.5, 4])
        #expect(Plot.tickLabel(2.5, ticks: singleTicks) == "2.5" && Plot.tickLabel(10, ticks: ticks) == "10")
        let negative = Plot.axis(explicit: nil, data: -0.31...0.02, ticks: 5).0   // step 0.1
        #expect(abs(negative.lowerBound + 0.4) < 1e-12 && abs(negative.upperBound - 0.1) < 1e-12)
    }

    @Test func pngHasTheCanvasPixels() throws {
        var plot = Plot(title: "Loss", xLabel: "epoch", yLabel: "loss")
        plot.line(x: [1, 2, 3], y: [0.3, 0.2, 0.15], label: "train")
        let path = Fixture.temporaryDirectory("plots") + "/plot.png"
        try plot.writePNG(path: path)
        let png = try PNGImage.read(path: path)
        #expect(png.width == 640 && png.height == 480 && png.channels == 3)
        #expect(png.pixels == plot.render().pixels)
    }

    /// Two 2 x 2 tiles, scale 2, gap 4: 2 * (4 + 4) + 4 = 20 wide, 8 + 4 = 12 high; tile 1 starts at x = 4 + 8.
    @Test func tileSheetPlacesImages() {
        var sheet = TileSheet(height: 2, width: 2)
        (sheet.scale, sheet.gap) = (2, 4)
        let canvas = sheet.render([[TileSheet.Tile(pixels: [0.2, 1, 0.5, 0.25]), TileSheet.Tile(pixels: [0, 0, 0, 0.6])]])
        #expect(canvas.width == 20 && canvas.height == 12)
        // 0.2 * 255 = 51, 0.5 * 255 = 127.5 -> 128, 0.25 * 255 = 63.75 -> 64, 0.6 * 255 = 153.
        #expect(canvas.pixel(x: 4, y: 4) == RGB(51, 51, 51) && canvas.pixel(x: 5, y: 5) == RGB(51, 51, 51))
        #expect(canvas.pixel(x: 6, y: 4) == .white && canvas.pixel(x: 4, y: 6) == RGB(128, 128, 128) && canvas.pixel(x: 7, y: 7) == RGB(64, 64, 64))
        #expect(canvas.pixel(x: 12, y: 4) == .black && canvas.pixel(x: 15, y: 7) == RGB(153, 153, 153) && canvas.pixel(x: 16, y: 7) == .white)
    }

    /// Against the standard normal table (Abramowitz and Stegun 26.2): z(0.95) = 1.644853627, z(0.975) = 1.959963985.
    @Test func normalQuantiles() {
        #expect(abs(AutoencoderFigures.normalQuantile(0.5)) < 1e-12)
        #expect(abs(AutoencoderFigures.normalQuantile(0.95) - 1.644853627) < 1e-8)
        #expect(abs(AutoencoderFigures.normalQuantile(0.05) + 1.644853627) < 1e-8)
        #expect(abs(AutoencoderFigures.normalQuantile(0.975) - 1.959963985) < 1e-8)
        #expect(abs(AutoencoderFigures.normalQuantile(0.001) + 3.090232306) < 1e-8)
    }

    @Test func latentScatterColoursByLabel() {
        var plot = AutoencoderFigures.latentScatter([1, 2, 3, 4, 1.5, 2.5], labels: [0, 3, 0], family: "vae", split: "test")
        (plot.xRange, plot.yRange) = (0...5, 0...5)
        let canvas = plot.render(), f = plot.frame()
        let p0 = f.pixel(x: 1, y: 2), p1 = f.pixel(x: 3, y: 4)
        #expect(canvas.pixel(x: p0.x, y: p0.y) == RGB.palette[0] && canvas.pixel(x: p1.x, y: p1.y) == RGB.palette[3])
        #expect(plot.layers.map(\.label) == ["0", "3"])
    }

    /// The manifold's tiles are the decodings of z = (quantile of column, quantile of the row counted from the bottom).
    @Test func manifoldTilesAreDecodedQuantiles() throws {
        let config = ModelConfig(family: "vae", inputShape: [16], options: ["intermediate_dim": 5, "latent_dim": 2])
        let vae = try #require(try ModelRegistry.build(config, seed: 4) as? any VariationalModel)
        let canvas = AutoencoderFigures.manifold(vae, sampleShape: [4, 4], n: 3)
        let q = [AutoencoderFigures.normalQuantile(0.05), 0, AutoencoderFigures.normalQuantile(0.95)]
        let titleHeight = 2 * BitmapFont.lineHeight + 4
        for (row, column) in [(0, 0), (2, 1), (1, 2)] {
            let z = Tensor(shape: [1, 2], values: [Float(q[column]), Float(q[2 - row])])
            let decoded = vae.decoderLogits(z, imageShape: [1, 16]).sigmoid().toArray()
            for y in 0..<4 {
                for x in 0..<4 {
                    let expected = UInt8((decoded[y * 4 + x] * 255).rounded())
                    #expect(canvas.pixel(x: column * 4 + x, y: titleHeight + row * 4 + y).r == expected, "tile \(row), \(column)")
                }
            }
        }
    }

    @Test func trainingLogKeepsTheLastLineOfAnEpoch() throws {
        let dir = Fixture.temporaryDirectory("log")
        // A resumed run repeated epoch 2; epoch 1 had no validation.
        try "epoch,step,loss,val_loss,lr\n1,10,0.5,,0.001\n2,20,0.3,0.31,0.001\n2,20,0.25,0.2,0.001\n3,30,0.2,0.19,0.001\n"
            .write(toFile: dir + "/log.csv", atomically: true, encoding: .utf8)
        let log = try TrainingLog.read(path: dir + "/log.csv")
        #expect(log.epochs == [TrainingLog.Epoch(epoch: 1, loss: 0.5, validationLoss: nil), TrainingLog.Epoch(epoch: 2, loss: 0.25, validationLoss: 0.2),
                               TrainingLog.Epoch(epoch: 3, loss: 0.2, validationLoss: 0.19)])
        #expect(log.plot(title: "x").layers.count == 2)
        try "epoch,loss\n1\n".write(toFile: dir + "/short.csv", atomically: true, encoding: .utf8)
        let short = #expect(throws: DataError.self) { try TrainingLog.read(path: dir + "/short.csv") }
        #expect(short.map { "\($0)".contains("short.csv") && "\($0)".contains("line 2") } == true)
        try "a,b\n".write(toFile: dir + "/other.csv", atomically: true, encoding: .utf8)
        let other = #expect(throws: DataError.self) { try TrainingLog.read(path: dir + "/other.csv") }
        #expect(other.map { "\($0)".contains("epoch and loss") } == true)
    }

    // MARK: starling eval --plots

    @Test func evalWritesTheFigures() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let dir = Fixture.temporaryDirectory("eval-plots")
        let run = try starling("eval", "--checkpoint", checkpoint, "--data", data, "--plots", dir, "--json", dir + "/eval.json")
        #expect(run.status == 0, "\(run.error)")
        for name in ["reconstructions", "code-histogram", "loss"] {
            #expect(FileManager.default.fileExists(atPath: "\(dir)/fc-ae-best-\(name).png"), "\(name)")
        }
        let histogram = try PNGImage.read(path: dir + "/fc-ae-best-code-histogram.png")
        #expect(histogram.width == 640 && histogram.height == 480)
        // The histogram's mean is the evaluation's mean code value.
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/eval.json"))) as? [String: Any]
        let mean = try #require(json?["meanCodeActivation"] as? Double)
        #expect(run.output.contains("code values (mean \(String(format: "%.4f", mean)))"), "\(run.output)")

        // A VAE with a 2-D latent (untrained, no log beside it): scatter and manifold, loss curves skipped.
        let vaeDir = Fixture.temporaryDirectory("eval-vae")
        let vae = try ModelRegistry.build(VariationalAutoencoder.defaultConfig(), seed: 2)
        try Checkpoint.save(to: vaeDir + "/vae.h5", model: vae, optimizer: nil, state: Checkpoint.TrainingState())
        let vaeRun = try starling("eval", "--checkpoint", vaeDir + "/vae.h5", "--data", data, "--limit", "64")
        #expect(vaeRun.status == 0, "\(vaeRun.error)")
        #expect(vaeRun.output.contains("loss curves skipped: no training log"))
        #expect(try PNGImage.read(path: vaeDir + "/vae-latent.png").width == 640)
        #expect(try PNGImage.read(path: vaeDir + "/vae-manifold.png").width == 15 * 28)
        #expect(!FileManager.default.fileExists(atPath: vaeDir + "/vae-loss.png"))
    }
}
