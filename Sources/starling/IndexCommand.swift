import ArgumentParser
import Foundation
import StarlingCore
import StarlingIO
import StarlingModels

struct IndexCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index",
        abstract: "Inverse image search: index a split by an encoder's codes, query it by image or id, measure precision@k.",
        subcommands: [IndexBuildCommand.self, IndexQueryCommand.self, IndexEvalCommand.self, IndexMapCommand.self])
}

struct IndexBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "build", abstract: "Encode a split into an HDF5 index (written atomically).")

    @Option(help: "Checkpoint of a model with an encoder (any autoencoder).") var checkpoint: String
    @Option(help: "Dataset in Starling's HDF5 layout.") var data: String
    @Option(help: "Split to index.") var split: String = "test"
    @Option(help: "The index file to write.") var out: String
    @Option(help: "Images per batch.") var batchSize: Int = 256
    @Option(help: "Index only the first N images.") var limit: Int?

    func validate() throws {
        guard batchSize > 0 else { throw ValidationError("--batch-size must be positive") }
        if let l = limit, l <= 0 { throw ValidationError("--limit must be positive") }
    }

    func run() throws {
        try reportingErrors {
            let loaded = try Checkpoint.load(from: checkpoint)
            guard let encoder = loaded.model as? any Encoding else {
                throw IndexError(file: checkpoint, message: "model \(loaded.model.config.family) has no encoder to index with")
            }
            let dataset = try ImageDataset(path: data, split: split)
            let start = Date()
            let index = try CodeIndex.build(encoder: encoder, checkpoint: checkpoint, data: dataset, limit: limit, batchSize: batchSize)
            try index.write(to: out)
            print("indexed \(index.count) images of \(data) [\(split)] as \(index.dimension)-value codes of \(index.modelConfig.family) "
                  + "in \(String(format: "%.1f", Date().timeIntervalSince(start))) s: \(out)")
        }
    }
}

struct IndexQueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query", abstract: "The k nearest images to a PNG image or to an indexed image, as a table and a PNG strip.")

    @Option(help: "Index written by `starling index build`.") var index: String
    @Option(help: "Query image (PNG of the dataset's image size, as the dataset stores it: MNIST is white on black).") var image: String?
    @Option(help: "Query by an indexed image's id (its row in the split); it is left out of the results.") var id: Int?
    @Option(name: .short, help: "Neighbours to return.") var k: Int = 10
    @Option(help: "Distance: l2 or cosine.") var metric: String = "l2"
    @Option(help: "Write the query and its neighbours as a PNG strip.") var out: String?

    func validate() throws {
        guard (image == nil) != (id == nil) else { throw ValidationError("give --image or --id (one of them)") }
        guard k > 0 else { throw ValidationError("-k must be positive") }
        guard DistanceMetric(rawValue: metric) != nil else { throw ValidationError("--metric must be l2 or cosine, not '\(metric)'") }
    }

    func run() throws {
        try reportingErrors {
            let index = try CodeIndex.read(from: index)
            let metric = DistanceMetric(rawValue: metric) ?? .l2
            let query: [Float], queryPixels: [Float], exclude: Int?
            if let id {
                let row = try index.row(ofID: id)
                (query, exclude) = (index.code(row: row), row)
                queryPixels = try IndexImages.pixels(of: [Int(index.ids[row])], index: index)[0]
            } else {
                queryPixels = try IndexImages.read(png: image ?? "", for: index)
                let encoder = try index.loadEncoder()
                let input = Tensor(shape: [1] + encoder.config.inputShape, values: queryPixels)
                (query, exclude) = (encoder.code(input).toArray(), nil)
            }
            let found = NearestNeighbours.search(queries: query, database: index.codes, dimension: index.dimension, k: k,
                                                 metric: metric, exclude: [exclude])[0]
            let ids = found.map { Int(index.ids[$0.index]) }
            var strip: PixelCanvas?
            if out != nil {   // read the neighbours' pixels before printing, so a missing dataset fails cleanly
                let neighbours = try IndexImages.pixels(of: ids, index: index)
                let queryLabel = exclude.flatMap { row in index.labels.map { "label \($0[row])" } } ?? ""
                var tiles = [TileSheet.Tile(pixels: queryPixels, caption: [id.map { "query #\($0)" } ?? "query", queryLabel])]
                for (j, n) in found.enumerated() {
                    tiles.append(TileSheet.Tile(pixels: neighbours[j], caption: ["#\(ids[j])", index.labels.map { "label \($0[n.index])" } ?? "",
                                                                                String(format: "d %.3f", n.distance)]))
                }
                var sheet = TileSheet(height: index.sampleShape[0], width: index.sampleShape[1], channels: index.sampleShape.count == 3 ? index.sampleShape[2] : 1)
                sheet.scale = 3
                sheet.title = "Nearest \(found.count) by \(metric.rawValue) on \(index.modelConfig.family) codes"
                strip = sheet.render([tiles])
            }
            print("rank  id        label  distance (\(metric.rawValue))")
            for (j, n) in found.enumerated() {
                let label = index.labels.map { "\($0[n.index])" } ?? "-"
                print("\(String(j + 1).padding(toLength: 6, withPad: " ", startingAt: 0))\(String(ids[j]).padding(toLength: 10, withPad: " ", startingAt: 0))"
                      + "\(label.padding(toLength: 7, withPad: " ", startingAt: 0))\(String(format: "%.5f", n.distance))")
            }
            if let strip, let out {
                try strip.writePNG(path: out)
                print("query and neighbours: \(out)")
            }
        }
    }
}

struct IndexEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Precision@k by label agreement: every indexed image queried against all the others.")

    @Option(help: "Index written by `starling index build`.") var index: String
    @Option(name: .short, help: "Neighbours per query.") var k: Int = 10
    @Option(help: "Distance: l2 or cosine.") var metric: String = "l2"

    func validate() throws {
        guard k > 0 else { throw ValidationError("-k must be positive") }
        guard DistanceMetric(rawValue: metric) != nil else { throw ValidationError("--metric must be l2 or cosine, not '\(metric)'") }
    }

    func run() throws {
        try reportingErrors {
            let index = try CodeIndex.read(from: index)
            guard let labels = index.labels else {
                throw IndexError(file: index.path, message: "the index has no labels (its dataset had none): precision@k needs them")
            }
            guard index.count > k else { throw IndexError(file: index.path, message: "\(index.count) images cannot give \(k) neighbours each") }
            let metric = DistanceMetric(rawValue: metric) ?? .l2
            let start = Date()
            let found = NearestNeighbours.search(queries: index.codes, database: index.codes, dimension: index.dimension, k: k,
                                                 metric: metric, exclude: (0..<index.count).map { $0 })
            let precision = NearestNeighbours.precisionAtK(queryLabels: labels, neighbours: found, databaseLabels: labels, k: k)
            print("\(index.modelConfig.family) codes (\(index.dimension) values) of \(index.count) images of \(index.data) [\(index.split)]")
            print("  precision@\(k) by label, \(metric.rawValue): \(String(format: "%.4f", precision)) "
                  + "(each image against the other \(index.count - 1), \(String(format: "%.1f", Date().timeIntervalSince(start))) s)")
        }
    }
}

/// The pixels of indexed images and of query images, checked against the index's image size.
enum IndexImages {
    /// The images of the index's split with these ids (rows), as values in [0, 1].
    static func pixels(of ids: [Int], index: CodeIndex) throws -> [[Float]] {
        let dataset = try ImageDataset(path: index.data, split: index.split)
        guard dataset.sampleShape == index.sampleShape else {
            throw DataError(file: index.data, message: "images of /\(index.split) are \(dataset.sampleShape) now; the index was built on \(index.sampleShape)")
        }
        let size = dataset.sampleSize
        return try ids.map { id in
            var values = [Float](repeating: 0, count: size)
            _ = try values.withUnsafeMutableBufferPointer { try dataset.read(indices: [id], into: $0.baseAddress!) }
            return values
        }
    }

    /// A PNG query image as values in [0, 1], refused unless it has the dataset's size.
    static func read(png path: String, for index: CodeIndex) throws -> [Float] {
        let shape = index.sampleShape
        let channels = shape.count == 3 ? shape[2] : 1
        let png = try PNGImage.read(path: path, channels: channels)
        guard png.height == shape[0], png.width == shape[1] else {
            throw DataError(file: path, message: "image is \(png.width)x\(png.height); the index's model \(index.modelConfig.family) takes \(shape[1])x\(shape[0]) images")
        }
        return png.pixels.map { Float($0) / 255 }
    }
}

struct IndexMapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map", abstract: "The index's codes projected to 2-D (t-SNE or PCA) and drawn coloured by label.")

    @Option(help: "Index written by `starling index build`.") var index: String
    @Option(help: "The picture to write (PNG).") var out: String
    @Option(help: "Projection: tsne (exact up to --exact-up-to points, Barnes-Hut beyond) or pca.") var method: String = CodeMap.Method.tsne.rawValue
    @Option(help: "t-SNE: the perplexity, about the neighbours each point keeps close.") var perplexity: Double = CodeMap.TSNESettings().perplexity
    @Option(help: "t-SNE: optimisation steps.") var iterations: Int = CodeMap.TSNESettings().iterations
    @Option(help: "t-SNE: the exact gradient up to this many points, Barnes-Hut (theta 0.5) beyond.") var exactUpTo: Int = CodeMap.TSNESettings().exactUpTo
    @Option(help: "t-SNE: seed of the starting positions.") var seed: UInt64 = 0
    @Option(help: "Map only the first N codes.") var limit: Int?

    func validate() throws {
        guard CodeMap.Method(rawValue: method) != nil else { throw ValidationError("--method must be tsne or pca, not '\(method)'") }
        guard perplexity > 0, perplexity.isFinite else { throw ValidationError("--perplexity must be positive") }
        guard iterations > 0 else { throw ValidationError("--iterations must be positive") }
        guard exactUpTo >= 0 else { throw ValidationError("--exact-up-to cannot be negative") }
        if let l = limit, l <= 1 { throw ValidationError("--limit must be at least 2") }
    }

    func run() throws {
        try reportingErrors {
            let index = try CodeIndex.read(from: index)
            let n = min(index.count, limit ?? index.count)
            guard n >= 2 else { throw IndexError(file: index.path, message: "\(index.count) codes: a map needs at least 2") }
            let codes = Array(index.codes.prefix(n * index.dimension))
            let method = CodeMap.Method(rawValue: method) ?? .tsne
            let start = Date()
            let points: [Double]
            var how: String
            switch method {
            case .pca:
                points = CodeMap.pca(codes, count: n, dimension: index.dimension)
                how = "first two principal components"
            case .tsne:
                var settings = CodeMap.TSNESettings()
                (settings.perplexity, settings.iterations, settings.seed, settings.exactUpTo) = (perplexity, iterations, seed, exactUpTo)
                points = CodeMap.tsne(codes, count: n, dimension: index.dimension, settings: settings)
                how = "t-SNE, perplexity \(perplexity), \(iterations) iterations, " + (n <= exactUpTo ? "exact" : "Barnes-Hut")
            }
            let labels = index.labels.map { Array($0.prefix(n)) }
            let title = "\(index.modelConfig.family) codes of \(n) images of [\(index.split)]: \(method == .pca ? "PCA" : "t-SNE")"
            try CodeMap.plot(points, labels: labels, title: title, method: method).writePNG(path: out)
            print("\(n) codes (\(index.dimension) values each) of \(index.data) [\(index.split)] mapped to 2-D (\(how)) in "
                  + "\(String(format: "%.1f", Date().timeIntervalSince(start))) s: \(out)")
        }
    }
}
