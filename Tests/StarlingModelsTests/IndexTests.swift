import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels

@Suite struct IndexTests {
    /// The plain definition: every distance in Double, sorted by (distance, row).
    static func naive(query: [Float], database: [Float], dimension: Int, k: Int, metric: DistanceMetric, exclude: Int?) -> [(Int, Double)] {
        let q = query.map(Double.init)
        var all: [(Int, Double)] = []
        for r in 0..<(database.count / dimension) where r != exclude {
            let x = database[(r * dimension)..<((r + 1) * dimension)].map(Double.init)
            switch metric {
            case .l2: all.append((r, zip(q, x).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()))
            case .cosine:
                let dot = zip(q, x).map { $0 * $1 }.reduce(0, +)
                let norms = q.map { $0 * $0 }.reduce(0, +).squareRoot() * x.map { $0 * $0 }.reduce(0, +).squareRoot()
                all.append((r, norms > 0 ? 1 - dot / norms : 1))
            }
        }
        return Array(all.sorted { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 < $1.0 }.prefix(k))
    }

    /// Blocked sgemm search against the naive loop, with blocks smaller than the sets so that every path runs.
    @Test func nearestNeighboursMatchNaiveLoop() {
        var rng = RandomGenerator(seed: 21)
        let (rows, dimension, queries, k) = (53, 5, 9, 4)
        let database = (0..<(rows * dimension)).map { _ in rng.uniform(-1, 1) }
        var queryValues = (0..<(queries * dimension)).map { _ in rng.uniform(-1, 1) }
        queryValues.replaceSubrange(0..<dimension, with: database[(7 * dimension)..<(8 * dimension)])   // query 0 is row 7
        let exclude: [Int?] = [7] + [Int?](repeating: nil, count: queries - 1)
        for metric in DistanceMetric.allCases {
            for (blockRows, queryBlock) in [(8, 3), (4096, 256), (1, 1)] {
                let found = NearestNeighbours.search(queries: queryValues, database: database, dimension: dimension, k: k, metric: metric,
                                                     exclude: exclude, blockRows: blockRows, queryBlock: queryBlock)
                for q in 0..<queries {
                    let expected = Self.naive(query: Array(queryValues[(q * dimension)..<((q + 1) * dimension)]), database: database,
                                              dimension: dimension, k: k, metric: metric, exclude: exclude[q])
                    #expect(found[q].map(\.index) == expected.map(\.0), "\(metric) query \(q) blocks \(blockRows)x\(queryBlock)")
                    for (f, e) in zip(found[q], expected) { #expect(abs(Double(f.distance) - e.1) < 1e-5) }
                }
            }
        }
        // Without the exclusion, row 7 finds itself first at distance 0.
        let itself = NearestNeighbours.search(queries: Array(queryValues[0..<dimension]), database: database, dimension: dimension, k: 1, metric: .l2)
        #expect(itself[0][0].index == 7 && itself[0][0].distance < 1e-3)
    }

    @Test func equalDistancesComeInRowOrderAndZeroVectorsAreCosineOne() {
        // Rows 0 and 2 are the same point; row 1 is farther.
        let database: [Float] = [1, 0, 3, 0, 1, 0]
        let found = NearestNeighbours.search(queries: [1, 0], database: database, dimension: 2, k: 3, metric: .l2, blockRows: 1)
        #expect(found[0].map(\.index) == [0, 2, 1] && found[0].map(\.distance) == [0, 0, 2])
        // Cosine: rows 0, 1, 2 all point along x (distance 0, in row order); a zero row is at 1.
        let cosine = NearestNeighbours.search(queries: [2, 0], database: [1, 0, 3, 0, 0, 0, 0, 5], dimension: 2, k: 4, metric: .cosine)
        #expect(cosine[0].map(\.index) == [0, 1, 2, 3] && cosine[0].map(\.distance) == [0, 0, 1, 1])
    }

    /// 1-D codes 0, 1, 2, 10, 11 labelled A A B B B, each queried against the others, k = 2:
    /// 0 -> 1 (A), 2 (B): 1/2;  1 -> 0 and 2 tie at 1, row order: A, B: 1/2;  2 -> 1, 0: A, A: 0;
    /// 10 -> 11, 2: B, B: 1;  11 -> 10, 2: B, B: 1.  Mean (0.5 + 0.5 + 0 + 1 + 1) / 5 = 0.6.
    @Test func precisionAtKHandCase() {
        let codes: [Float] = [0, 1, 2, 10, 11], labels: [Int32] = [0, 0, 1, 1, 1]
        let found = NearestNeighbours.search(queries: codes, database: codes, dimension: 1, k: 2, metric: .l2, exclude: [0, 1, 2, 3, 4])
        #expect(found.map { $0.map(\.index) } == [[1, 2], [0, 2], [1, 0], [4, 2], [3, 2]])
        #expect(abs(NearestNeighbours.precisionAtK(queryLabels: labels, neighbours: found, databaseLabels: labels, k: 2) - 0.6) < 1e-12)
        // A short list still divides by k: one correct neighbour of k = 2 is 1/2.
        #expect(NearestNeighbours.precisionAtK(queryLabels: [0], neighbours: [[Neighbour(index: 0, distance: 0)]], databaseLabels: [0], k: 2) == 0.5)
    }

    @Test func indexRoundTripsAndFingerprintsWeights() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let encoder = try #require(try Checkpoint.load(from: checkpoint).model as? any Encoding)
        let index = try CodeIndex.build(encoder: encoder, checkpoint: checkpoint, data: ImageDataset(path: data, split: "test"), limit: 30, batchSize: 7)
        #expect(index.count == 30 && index.dimension == 32 && index.ids == (0..<30).map { Int64($0) })
        let path = Fixture.temporaryDirectory("index") + "/index.h5"
        try index.write(to: path)
        let read = try CodeIndex.read(from: path)
        #expect(read.codes == index.codes && read.labels == index.labels && read.modelConfig == index.modelConfig)
        #expect(read.weightsFingerprint == index.weightsFingerprint && read.sampleShape == [28, 28] && read.split == "test")
        // Codes in batches of 7 are the codes of the whole batch.
        let first = try ImageDataset(path: data, split: "test").batch(indices: Array(0..<30), modelInputShape: [784])
        #expect(zip(encoder.code(first.images).toArray(), index.codes).allSatisfy { abs($0 - $1) < 1e-5 })
        // One changed weight changes the fingerprint; the same weights give the same one.
        let copy = try Checkpoint.load(from: checkpoint).model
        #expect(WeightsFingerprint.of(copy) == index.weightsFingerprint && index.weightsFingerprint.count == 16)
        copy.parameters.parameters[0].value.data[0] += 1e-6
        #expect(WeightsFingerprint.of(copy) != index.weightsFingerprint)
        #expect(throws: IndexError.self) { try read.row(ofID: 30) }
        #expect(try read.row(ofID: 29) == 29)
    }

    // MARK: Command line

    @Test func buildQueryAndEvaluateThroughTheBinary() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let dir = Fixture.temporaryDirectory("index-cli")
        let build = try starling("index", "build", "--checkpoint", checkpoint, "--data", data, "--out", dir + "/index.h5")
        #expect(build.status == 0 && build.output.contains("indexed 1000 images"), "\(build.error)")
        let index = try CodeIndex.read(from: dir + "/index.h5")
        let labels = try #require(index.labels)

        // By id: k rows of table, the query left out, the order of the naive search.
        let query = try starling("index", "query", "--index", dir + "/index.h5", "--id", "5", "-k", "3", "--out", dir + "/strip.png")
        #expect(query.status == 0, "\(query.error)")
        let rows = query.output.split(separator: "\n").dropFirst().prefix(3).map { $0.split(separator: " ") }
        let expected = Self.naive(query: index.code(row: 5), database: index.codes, dimension: 32, k: 3, metric: .l2, exclude: 5)
        #expect(rows.map { Int($0[1]) ?? -1 } == expected.map(\.0))
        #expect(rows.map { Int32($0[2]) ?? -1 } == expected.map { labels[$0.0] })
        // The strip: query, then the neighbours, each 84 pixels (3x) and 4 apart, below the title (22 pixels) and a gap.
        let strip = try PNGImage.read(path: dir + "/strip.png", channels: 1)
        let test = try ImageDataset(path: data, split: "test")
        #expect(strip.width >= 4 * (84 + 4) + 4)
        for (tile, id) in [5, expected[0].0].enumerated() {
            let image = try test.batch(indices: [id], modelInputShape: [784]).images.toArray()
            #expect((0..<28).allSatisfy { y in (0..<28).allSatisfy { x in
                strip.pixels[(26 + 3 * y) * strip.width + 4 + tile * 88 + 3 * x] == UInt8((image[y * 28 + x] * 255).rounded()) } }, "tile \(tile)")
        }

        // By image: test image 5 as a PNG finds itself at distance 0 first.
        var pixels = [Float](repeating: 0, count: 784)
        _ = try pixels.withUnsafeMutableBufferPointer { try ImageDataset(path: data, split: "test").read(indices: [5], into: $0.baseAddress!) }
        try PNGImage.write(path: dir + "/five.png", width: 28, height: 28, channels: 1, pixels: pixels.map { UInt8(($0 * 255).rounded()) })
        let byImage = try starling("index", "query", "--index", dir + "/index.h5", "--image", dir + "/five.png", "-k", "2", "--metric", "cosine")
        #expect(byImage.status == 0, "\(byImage.error)")
        let top = byImage.output.split(separator: "\n")[1].split(separator: " ")
        #expect(top[1] == "5" && abs(Double(top[3]) ?? 1) < 1e-4, "\(byImage.output)")

        // precision@10 as the library computes it.
        let eval = try starling("index", "eval", "--index", dir + "/index.h5", "-k", "10")
        #expect(eval.status == 0, "\(eval.error)")
        let found = NearestNeighbours.search(queries: index.codes, database: index.codes, dimension: 32, k: 10, metric: .l2, exclude: Array(0..<1000))
        let precision = NearestNeighbours.precisionAtK(queryLabels: labels, neighbours: found, databaseLabels: labels, k: 10)
        #expect(eval.output.contains("precision@10 by label, l2: \(String(format: "%.4f", precision))"), "\(eval.output)")
        #expect(precision > 0.1)   // better than chance on ten digits even after a few steps
    }

    @Test func indexBadInput() throws {
        let (data, checkpoint) = try TrainedFixture.fcAE()
        let dir = Fixture.temporaryDirectory("index-bad")
        // The index's encoder: a copy of the checkpoint, so that it can be changed and removed.
        let encoder = dir + "/encoder.h5"
        try FileManager.default.copyItem(atPath: checkpoint, toPath: encoder)
        #expect(try starling("index", "build", "--checkpoint", encoder, "--data", data, "--out", dir + "/index.h5", "--limit", "50").status == 0)
        let out = dir + "/strip.png"
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5", "--id", "50", "--out", out),
                           mentioning: ["index.h5", "id 50 is not in the index"])
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5", "--id=-1", "--out", out), mentioning: ["id -1"])
        try PNGImage.write(path: dir + "/small.png", width: 20, height: 20, channels: 1, pixels: [UInt8](repeating: 0, count: 400))
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5", "--image", dir + "/small.png", "--out", out),
                           mentioning: ["small.png", "20x20", "28x28"])
        try PNGImage.write(path: dir + "/right.png", width: 28, height: 28, channels: 1, pixels: [UInt8](repeating: 0, count: 784))
        // Another encoder under the same name: a freshly initialised fc-ae.
        let other = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 99)
        try Checkpoint.save(to: encoder, model: other, optimizer: nil, state: Checkpoint.TrainingState())
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5", "--image", dir + "/right.png", "--out", out),
                           mentioning: ["encoder.h5", "index built with another encoder"])
        try FileManager.default.removeItem(atPath: encoder)
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5", "--image", dir + "/right.png", "--out", out),
                           mentioning: ["encoder.h5", "missing"])
        expectCleanFailure(try starling("index", "query", "--index", data, "--id", "1"), mentioning: ["not a Starling image index"])
        expectCleanFailure(try starling("index", "query", "--index", dir + "/index.h5"), mentioning: ["--image or --id"], usage: true)
        // No labels: building works, precision needs them.
        let unlabelled = try TrainedFixture.smallDataset(labels: false)
        #expect(try starling("index", "build", "--checkpoint", checkpoint, "--data", unlabelled, "--out", dir + "/plain.h5").status == 0)
        expectCleanFailure(try starling("index", "eval", "--index", dir + "/plain.h5"), mentioning: ["plain.h5", "no labels"])
        let wrongSize = try TrainedFixture.smallDataset(height: 20, width: 20, labels: true)
        expectCleanFailure(try starling("index", "build", "--checkpoint", checkpoint, "--data", wrongSize, "--out", dir + "/wrong.h5"),
                           mentioning: ["[20, 20]", "fc-ae"])
        #expect(!FileManager.default.fileExists(atPath: out) && !FileManager.default.fileExists(atPath: dir + "/wrong.h5"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") }.isEmpty)
    }
}
