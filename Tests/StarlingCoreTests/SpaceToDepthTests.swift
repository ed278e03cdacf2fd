import Testing
@testable import StarlingCore

@Suite struct SpaceToDepthTests {
    /// A 1 x 4 x 4 image with values 0...15: block (dy, dx) of every 2 x 2 window goes to channel 2 dy + dx, as ONNX's
    /// SpaceToDepth (DCR) orders it.
    @Test func handComputed() {
        let x = Tensor(shape: [1, 1, 4, 4], values: (0..<16).map(Float.init))
        let y = x.spaceToDepth(blockSize: 2)
        #expect(y.shape == [1, 4, 2, 2])
        #expect(y.toArray() == [0, 2, 8, 10,
                                1, 3, 9, 11,
                                4, 6, 12, 14,
                                5, 7, 13, 15])
        // Two channels: the block offset is outermost, the input channel inner.
        let two = Tensor(shape: [1, 2, 2, 2], values: [0, 1, 2, 3, 10, 11, 12, 13]).spaceToDepth(blockSize: 2)
        #expect(two.shape == [1, 8, 1, 1] && two.toArray() == [0, 10, 1, 11, 2, 12, 3, 13])
    }

    @Test func gradientsMatchFiniteDifferences() {
        checkGradients([randomVariable([2, 3, 4, 6], seed: 3)]) { $0[0].spaceToDepth(blockSize: 2) }
        checkGradients([randomVariable([1, 2, 6, 3], seed: 4)]) { $0[0].spaceToDepth(blockSize: 3) }
    }
}
