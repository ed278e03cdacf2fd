/// The entry points of a module that instantiates these kernels for an instruction set above baseline x86-64
/// (`StarlingKernelsAVX2`, `StarlingKernelsAVX512`: one source file compiled twice), so that `KernelDispatch` picks the
/// module once and calls through it instead of repeating a case per level at every entry point.
public protocol FusedKernelSet {
    static func bceLogitsTerms(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                     probabilities p: UnsafeMutablePointer<Float>, terms l: UnsafeMutablePointer<Float>)
    static func adam(_ n: Int, weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                     m mp: UnsafeMutablePointer<Float>, v vp: UnsafeMutablePointer<Float>, gradientScale: Float, beta1: Float,
                     beta2: Float, epsilon: Float, correctedRate: Float, coupledDecay: Float, decoupledDecay: Float)
    static func elu(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, alpha: Float)
    static func affineELU(_ n: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, mean: Float, scale: Float, shift: Float,
                     alpha: Float)
    static func fiveWideWeightGradient(images: Int, channels: Int, height: Int, width: Int, kernelH: Int, padTop: Int, padLeft: Int,
                     outHeight: Int, outWidth: Int, outBlocks: Int, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                     dw: UnsafeMutablePointer<Float>, biasGradient: UnsafeMutablePointer<Float>?, blockPairs: Range<Int>,
                     padded: UnsafeMutablePointer<Float>)
    static func blockedWeightGradient3x3Row(_ y: Int, height: Int, width: Int, input: UnsafePointer<Float>,
                     outputGradient: UnsafePointer<Float>, outBlockCount: Int, partial: UnsafeMutablePointer<SIMD8<Float>>,
                     withBias: Bool)
    static func directForwardRow(_ y: Int, width: Int, rowFloats: Int, blocked: Bool, padded: UnsafePointer<Float>,
                     steps: UnsafePointer<Int>, stepCount: Int, weights: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                     out0: UnsafeMutablePointer<Float>, out1: UnsafeMutablePointer<Float>, moments: UnsafeMutablePointer<SIMD8<Double>>?)
    static func bceLogitsSum(_ n: Int, logits z: UnsafePointer<Float>, targets t: UnsafePointer<Float>,
                     probabilities p: UnsafeMutablePointer<Float>) -> Double
    static func exponentCarry(_ p: UnsafePointer<Float>, count: Int, added: UInt32) -> UInt32
    static func bceLogitsGradient(_ n: Int, probabilities p: UnsafeMutablePointer<Float>, targets t: UnsafePointer<Float>, scale g: Float)
    static func scaledFloats(_ n: Int, _ source: UnsafePointer<UInt8>, _ out: UnsafeMutablePointer<Float>, scale: Float)
    // The blocked layout's loops, at width 8 or 16, per-channel constants from the block's first channel.
    static func affineELUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                     mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, alpha: Float)
    static func affineLeakyReLUBlocked(width: Int, _ pixels: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
                     mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, slope: Float)
    static func blockedSumAndDot(width: Int, _ pixels: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                     shift: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>)
    static func blockedInputGradient(width: Int, _ pixels: Int, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                     into dx: UnsafeMutablePointer<Float>, mean: UnsafePointer<Float>, scale: UnsafePointer<Float>,
                     slope: UnsafePointer<Float>, offset: UnsafePointer<Float>, overwrite: Bool)
    static func maxPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     into y: UnsafeMutablePointer<Float>)
    static func maxPoolRowGradient(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     y: UnsafePointer<Float>, dy: UnsafePointer<Float>, topGradient: UnsafeMutablePointer<Float>,
                     bottomGradient: UnsafeMutablePointer<Float>, overwrite: Bool)
    static func pooledForwardRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, activation: PooledActivation,
                     into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer?)
    static func pooledGradientSums(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer, mean: UnsafePointer<Float>,
                     activation: PooledActivation, sums: UnsafeMutablePointer<Double>, products: UnsafeMutablePointer<Double>)
    static func pooledInputGradientRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     y: UnsafePointer<Float>, dy: UnsafePointer<Float>, windows: UnsafeRawPointer,
                     topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>,
                     mean: UnsafePointer<Float>, scale: UnsafePointer<Float>, slope: UnsafePointer<Float>,
                     offset: UnsafePointer<Float>, activation: PooledActivation, overwrite: Bool)
    static func rectifiedPoolRow(width: Int, _ pixels: Int, top: UnsafePointer<Float>, bottom: UnsafePointer<Float>,
                     into y: UnsafeMutablePointer<Float>, windows: UnsafeMutableRawPointer)
    static func rectifiedPoolGradientRow(width: Int, _ pixels: Int, y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                     windows: UnsafeRawPointer, topGradient: UnsafeMutablePointer<Float>, bottomGradient: UnsafeMutablePointer<Float>)
}
