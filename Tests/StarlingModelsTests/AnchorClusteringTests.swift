import Testing
@testable import StarlingModels
@testable import StarlingDetection

@Suite struct AnchorClusteringTests {
    @Test func shapeIoUByHand() {
        // 10x20 and 20x10 centred: intersection 10x10 = 100, union 200 + 200 - 100 = 300.
        #expect(AnchorClustering.shapeIoU(10, 20, 20, 10) == Float(100) / 300)
        #expect(AnchorClustering.shapeIoU(8, 8, 8, 8) == 1)
    }

    /// Two well separated families of shapes: the clusters are their medians and the mean IoU is what a direct
    /// computation gives.
    @Test func recoversTwoFamilies() {
        var sizes: [(Float, Float)] = []
        for d: Float in [-1, 0, 1] { sizes.append((10 + d, 30 + d)); sizes.append((60 + d, 20 + d)) }
        let result = AnchorClustering(sizes: sizes, k: 2, seed: 3)
        #expect(result.clusters == [.init(width: 10, height: 30, count: 3), .init(width: 60, height: 20, count: 3)])
        let direct = sizes.map { s in result.clusters.map { AnchorClustering.shapeIoU(s.0, s.1, $0.width, $0.height) }.max()! }.reduce(0, +) / 6
        #expect(abs(result.meanIoU - direct) < 1e-6)
        #expect(result.meanIoU > 0.9)
        // As many clusters as boxes: every box is its own centroid.
        #expect(AnchorClustering(sizes: Array(sizes.prefix(2)), k: 5).meanIoU == 1)
    }
}
