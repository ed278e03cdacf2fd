/// Space-to-depth of NCHW images (YOLOv2's passthrough layer), forward and backward.

extension Tensor {
    /// Every b x b block of pixels stacked along the channels: [N, C, H, W] -> [N, C b^2, H / b, W / b], output
    /// channel (dy b + dx) C + c at (i, j) holding input channel c at (i b + dy, j b + dx). This is ONNX's
    /// SpaceToDepth and TensorFlow's space_to_depth (the block offset outermost, "DCR"), and the order of AlexeyAB's
    /// darknet reorg layer; pjreddie's darknet reorg is this op between two reshapes (YOLOv2's `darknetReorg`).
    public func spaceToDepth(blockSize b: Int) -> Tensor {
        precondition(rank == 4 && b > 0 && shape[2] % b == 0 && shape[3] % b == 0,
                     "spaceToDepth(blockSize: \(b)) needs NCHW input with sides divisible by \(b), got \(shape)")
        let x = self
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        let (oh, ow) = (h / b, w / b)
        /// Calls body(output index, input index) for every element, row by row.
        func pairs(_ body: (Int, Int) -> Void) {
            for s in 0..<n {
                for dy in 0..<b {
                    for dx in 0..<b {
                        for k in 0..<c {
                            let channel = s * c * b * b + (dy * b + dx) * c + k
                            for i in 0..<oh {
                                let outRow = (channel * oh + i) * ow, inRow = ((s * c + k) * h + i * b + dy) * w + dx
                                for j in 0..<ow { body(outRow + j, inRow + j * b) }
                            }
                        }
                    }
                }
            }
        }
        // Every output element is a copy of one input element, written below.
        let out = Tensor.result(shape: [n, c * b * b, oh, ow], storage: FloatStorage(uninitializedCount: count), inputs: [x]) { out in
            let dy = out.grad, dx = x.grad
            pairs { o, i in dx[i] += dy[o] }
        }
        let xd = x.data, y = out.data
        pairs { o, i in y[o] = xd[i] }
        return out
    }
}
