import Foundation
import Testing
import StarlingCore
import StarlingIO
@testable import StarlingModels
@testable import StarlingEvaluation

/// `index map`: PCA against a projection computed by hand, t-SNE (exact and Barnes-Hut) keeping separated clusters
/// apart, and the command's picture.
@Suite struct CodeMapTests {
    @Test func pcaMatchesTheHandComputedProjection() {
        // x_i = m + t_i u + s_i w with u, w orthonormal and t, s uncorrelated, var(t) = 5 > var(s) = 1: the principal
        // axes are u and w, and the coordinates t_i and s_i. w's largest coefficient (-6/7) is negative, so the
        // second axis is -w and the coordinate -s_i.
        let u: [Double] = [2.0 / 7, 3.0 / 7, 6.0 / 7], w: [Double] = [3.0 / 7, -6.0 / 7, 2.0 / 7], m: [Double] = [1, 2, 3]
        let t: [Double] = [-3, -1, 1, 3], s: [Double] = [1, -1, -1, 1]
        var codes: [Float] = []
        for i in 0..<4 { for k in 0..<3 { codes.append(Float(m[k] + t[i] * u[k] + s[i] * w[k])) } }
        let projected = CodeMap.pca(codes, count: 4, dimension: 3)
        for i in 0..<4 {
            #expect(abs(projected[2 * i] - t[i]) < 1e-5, "point \(i): \(projected[2 * i]) against \(t[i])")
            #expect(abs(projected[2 * i + 1] + s[i]) < 1e-5, "point \(i): \(projected[2 * i + 1]) against \(-s[i])")
        }
    }

    /// Three clusters 20 apart in 10-D with unit noise, 30 points each.
    private func clusters() -> (codes: [Float], labels: [Int]) {
        var rng = RandomGenerator(seed: 42)
        var codes: [Float] = [], labels: [Int] = []
        for c in 0..<3 {
            for _ in 0..<30 {
                for k in 0..<10 { codes.append((k == c ? 20 : 0) + rng.normal()) }
                labels.append(c)
            }
        }
        return (codes, labels)
    }

    private func expectSeparated(_ y: [Double], _ labels: [Int], sourceLocation: SourceLocation = #_sourceLocation) {
        let n = labels.count
        var sameLabelNearest = 0
        for i in 0..<n {
            var (best, nearest) = (Double.infinity, -1)
            for j in 0..<n where j != i {
                let d = pow(y[2 * i] - y[2 * j], 2) + pow(y[2 * i + 1] - y[2 * j + 1], 2)
                if d < best { (best, nearest) = (d, j) }
            }
            if labels[nearest] == labels[i] { sameLabelNearest += 1 }
        }
        #expect(sameLabelNearest == n, "\(sameLabelNearest) of \(n) points have a nearest neighbour of their cluster", sourceLocation: sourceLocation)
        // Cluster centres farther apart than three times the widest cluster's RMS radius.
        let centres = (0..<3).map { c -> (Double, Double) in
            let members = (0..<n).filter { labels[$0] == c }
            return (members.map { y[2 * $0] }.reduce(0, +) / Double(members.count), members.map { y[2 * $0 + 1] }.reduce(0, +) / Double(members.count))
        }
        let radius = (0..<3).map { c -> Double in
            let members = (0..<n).filter { labels[$0] == c }
            return (members.map { pow(y[2 * $0] - centres[c].0, 2) + pow(y[2 * $0 + 1] - centres[c].1, 2) }.reduce(0, +) / Double(members.count)).squareRoot()
        }.max() ?? 0
        for a in 0..<3 { for b in (a + 1)..<3 {
            let gap = (pow(centres[a].0 - centres[b].0, 2) + pow(centres[a].1 - centres[b].1, 2)).squareRoot()
            #expect(gap > 3 * radius, "clusters \(a) and \(b): centres \(gap) apart, radius \(radius)", sourceLocation: sourceLocation)
        } }
    }

    @Test func tsneKeepsSeparatedClustersApart() {
        let (codes, labels) = clusters()
        var settings = CodeMap.TSNESettings()
        (settings.perplexity, settings.iterations) = (10, 400)
        let exact = CodeMap.tsne(codes, count: 90, dimension: 10, settings: settings)
        #expect(exact.allSatisfy { $0.isFinite })
        expectSeparated(exact, labels)
        settings.exactUpTo = 0   // Barnes-Hut on the same points
        let barnesHut = CodeMap.tsne(codes, count: 90, dimension: 10, settings: settings)
        #expect(barnesHut.allSatisfy { $0.isFinite })
        expectSeparated(barnesHut, labels)
    }

    /// With theta 0 Barnes-Hut opens every cell, so its gradient is the exact one.
    @Test func barnesHutWithThetaZeroIsExact() {
        var rng = RandomGenerator(seed: 7)
        let y = (0..<80).map { _ in Double(rng.normal()) * 3 }
        let affinity = (0..<40).map { i in [(index: (i + 1) % 40, p: 0.01), (index: (i + 7) % 40, p: 0.02)] }
        var exact = [Double](repeating: 0, count: 80), tree = exact
        CodeMap.exactGradient(y, affinity: affinity, exaggeration: 1, into: &exact)
        CodeMap.barnesHutGradient(y, affinity: affinity, exaggeration: 1, theta: 0, into: &tree)
        for k in 0..<80 { #expect(abs(exact[k] - tree[k]) < 1e-9 * max(1, abs(exact[k])), "\(k): \(exact[k]) \(tree[k])") }
    }

    @Test func mapCommandDrawsTheIndex() throws {
        let dir = Fixture.temporaryDirectory("index-map")
        let model = try ModelRegistry.build(FCAutoencoder.defaultConfig(), seed: 1)
        try Checkpoint.save(to: dir + "/fc-ae.h5", model: model, optimizer: nil as (any Optimizer)?, state: Checkpoint.TrainingState())
        let build = try starling("index", "build", "--checkpoint", dir + "/fc-ae.h5", "--data", try Fixture.sampleHDF5(), "--limit", "80",
                                 "--out", dir + "/index.h5")
        #expect(build.status == 0, "\(build.error)")
        for method in ["pca", "tsne"] {
            let run = try starling("index", "map", "--index", dir + "/index.h5", "--out", "\(dir)/\(method).png", "--method", method,
                                   "--iterations", "300", "--perplexity", "10")
            #expect(run.status == 0, "\(run.error)")
            #expect(run.output.contains("80 codes"))
            let png = try PNGImage.read(path: "\(dir)/\(method).png")
            #expect(png.width == 640 && png.height == 480)
        }
        let bad = try starling("index", "map", "--index", dir + "/fc-ae.h5", "--out", dir + "/bad.png")
        #expect(bad.status != 0 && bad.error.contains("fc-ae.h5") && !FileManager.default.fileExists(atPath: dir + "/bad.png"), "\(bad.error)")
    }
}
