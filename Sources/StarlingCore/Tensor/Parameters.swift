#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// How a parameter is initialised. Keras's defaults are the reference (Glorot-uniform kernels, zero biases).
public enum Initializer: Sendable {
    case zeros
    case ones
    case constant(Float)
    /// U(-l, l) with l = sqrt(6 / (fanIn + fanOut)) (Glorot & Bengio 2010).
    case glorotUniform(fanIn: Int, fanOut: Int)
    /// U(-l, l) with l = sqrt(6 / fanIn) (He et al. 2015).
    case heUniform(fanIn: Int)
    /// Keras's he_normal: a normal truncated at two standard deviations, with standard deviation
    /// sqrt(2 / fanIn) / 0.87962566 so that the truncated distribution keeps variance 2 / fanIn.
    case heNormal(fanIn: Int)
    case uniform(low: Float, high: Float)
    case normal(mean: Float, std: Float)
    /// A (rows x cols) matrix with orthonormal rows or columns, from QR of a Gaussian (Saxe et al. 2014);
    /// repeated along the first axis when the shape holds several blocks.
    case orthogonal(rows: Int, cols: Int)
}

/// A named model parameter. Its tensor is a view into the store's flat value buffer and its gradient a
/// view into the flat gradient buffer; both exist once the store is allocated.
public final class Parameter: @unchecked Sendable {
    public let name: String
    public let shape: [Int]
    public let initializer: Initializer
    public let offset: Int
    public let count: Int
    public fileprivate(set) var tensorStorage: Tensor?

    fileprivate init(name: String, shape: [Int], initializer: Initializer, offset: Int) {
        self.name = name
        self.shape = shape
        self.initializer = initializer
        self.offset = offset
        self.count = Tensor.elementCount(shape)
    }

    /// The parameter as a tensor that takes part in autodiff.
    public var value: Tensor {
        guard let t = tensorStorage else { preconditionFailure("parameter \(name) used before ParameterStore.allocate()") }
        return t
    }
}

/// All parameters of a model in one contiguous value buffer and one contiguous gradient buffer (as llm.c):
/// zeroing gradients is one memset, an allreduce is one buffer, a checkpoint is one dataset per view.
public final class ParameterStore: @unchecked Sendable {
    public private(set) var parameters: [Parameter] = []
    public private(set) var values = FloatStorage(count: 0)
    public private(set) var gradients = FloatStorage(count: 0)
    public private(set) var isAllocated = false
    private var names = Set<String>()
    /// False for a store of buffers (batch norm's moving statistics): its tensors take no gradient.
    public let trainable: Bool

    public init(trainable: Bool = true) { self.trainable = trainable }

    /// Total number of scalars.
    public var count: Int { parameters.last.map { $0.offset + $0.count } ?? 0 }

    /// Declares a parameter; names are unique, Keras-like `layer/weight` paths.
    @discardableResult
    public func declare(_ name: String, shape: [Int], initializer: Initializer) -> Parameter {
        precondition(!isAllocated, "declare \(name) after allocate()")
        precondition(names.insert(name).inserted, "duplicate parameter name \(name)")
        let p = Parameter(name: name, shape: shape, initializer: initializer, offset: count)
        parameters.append(p)
        return p
    }

    /// Allocates both flat buffers and initialises every parameter from `rng`, in declaration order,
    /// so the same seed gives bit-identical weights.
    public func allocate(rng: inout RandomGenerator) {
        precondition(!isAllocated, "allocate() called twice")
        values = FloatStorage(count: count)
        gradients = FloatStorage(count: count)
        for p in parameters {
            let v = FloatStorage(viewOf: values, offset: p.offset, count: p.count)
            let g = FloatStorage(viewOf: gradients, offset: p.offset, count: p.count)
            p.tensorStorage = trainable ? Tensor(shape: p.shape, storage: v, grad: g, name: p.name) : Tensor(shape: p.shape, storage: v, name: p.name)
            Self.initialize(v.buffer, p.initializer, &rng)
        }
        isAllocated = true
    }

    public func zeroGradients() { gradients.zero() }

    /// Gives the pages that lie wholly inside `range` of the gradient buffer back to the system (`madvise(MADV_DONTNEED)`):
    /// they read as zero from then on and are faulted in again by the next write. For gradients no one reads again
    /// before the next backward writes them (`GradientSynchronizer`: a replica's part of a bucket outside its own range,
    /// once the bucket's reduce-scatter has returned). Returns the bytes given back.
    @discardableResult
    public func releaseGradientPages(_ range: Range<Int>) -> Int {
        precondition(range.lowerBound >= 0 && range.upperBound <= gradients.count, "gradient range out of bounds")
        let page = Int(getpagesize())
        let low = Int(bitPattern: gradients.pointer + range.lowerBound), high = Int(bitPattern: gradients.pointer + range.upperBound)
        let start = (low + page - 1) / page * page, end = high / page * page
        guard end > start, let address = UnsafeMutableRawPointer(bitPattern: start),
              madvise(address, end - start, Int32(MADV_DONTNEED)) == 0 else { return 0 }
        return end - start
    }

    /// `zeroGradients()` without the pass over the buffer: each parameter's gradient is marked not yet written, the
    /// first op to push into it stores instead of adding (`Tensor.gradientForWriting`: sgemm with beta 0, the bias's
    /// first row copied; an op that only adds zeroes that parameter's view first, `Tensor.grad`), and `settleGradients()`
    /// after backward zero-fills the views no op wrote. The same gradients, but for the sign of a zero (a first write
    /// of -0 stays -0 where 0 + -0 gave +0, which no update or sum turns into another weight). Replicas read half of
    /// each other's gradient buffer: the zero fill stored into every such line, which waits for the reading core's copy
    /// to be invalidated (4.4x a one-thread fill's samples, bound); now the step's first write does, once.
    /// Only for a caller that runs one backward and then `settleGradients()` before reading the flat buffer.
    public func deferGradientZeroing() {
        for p in parameters { p.tensorStorage?.markGradientUnwritten() }
    }

    /// After a backward begun with `deferGradientZeroing()`: zero-fills the gradients no op wrote.
    public func settleGradients() {
        for p in parameters { p.tensorStorage?.settleGradient() }
    }

    /// Makes every parameter of this store read `other`'s values from now on (the same layout: the same model built
    /// again), keeping this store's own gradients; this store's own values are released. Replicas on threads of one
    /// process share one copy of the weights this way (`train --replicas`): each replica records its own graph and
    /// gradients on tensors of its own, over the one buffer that every replica reads and the optimizer updates.
    public func shareValues(of other: ParameterStore) {
        precondition(isAllocated && other.isAllocated && trainable == other.trainable, "sharing the values of an unallocated store")
        precondition(other.parameters.count == parameters.count
                     && zip(parameters, other.parameters).allSatisfy { $0.offset == $1.offset && $0.shape == $1.shape },
                     "sharing the values of another parameter layout")
        guard other.values !== values else { return }
        values = other.values
        for p in parameters {
            let v = FloatStorage(viewOf: values, offset: p.offset, count: p.count)
            let g = FloatStorage(viewOf: gradients, offset: p.offset, count: p.count)
            p.tensorStorage = trainable ? Tensor(shape: p.shape, storage: v, grad: g, name: p.name) : Tensor(shape: p.shape, storage: v, name: p.name)
        }
    }

    public subscript(name: String) -> Parameter? { parameters.first { $0.name == name } }

    static func initialize(_ out: UnsafeMutableBufferPointer<Float>, _ initializer: Initializer, _ rng: inout RandomGenerator) {
        switch initializer {
        case .zeros: out.update(repeating: 0)
        case .ones: out.update(repeating: 1)
        case .constant(let c): out.update(repeating: c)
        case .glorotUniform(let fanIn, let fanOut):
            let limit = (6 / Float(fanIn + fanOut)).squareRoot()
            for i in out.indices { out[i] = rng.uniform(-limit, limit) }
        case .heUniform(let fanIn):
            let limit = (6 / Float(fanIn)).squareRoot()
            for i in out.indices { out[i] = rng.uniform(-limit, limit) }
        case .heNormal(let fanIn):
            let std = (2 / Float(fanIn)).squareRoot() / 0.879_625_66
            for i in out.indices {
                var z = rng.normal()
                while abs(z) > 2 { z = rng.normal() }
                out[i] = std * z
            }
        case .uniform(let lo, let hi):
            for i in out.indices { out[i] = rng.uniform(lo, hi) }
        case .normal(let mean, let std):
            for i in out.indices { out[i] = mean + std * rng.normal() }
        case .orthogonal(let rows, let cols):
            let block = rows * cols
            precondition(block > 0 && out.count % block == 0, "orthogonal block \(rows)x\(cols) does not tile \(out.count) values")
            var start = 0
            while start < out.count {
                let q = orthogonalMatrix(rows: rows, cols: cols, rng: &rng)
                for i in 0..<block { out[start + i] = q[i] }
                start += block
            }
        }
    }

    /// Row-major (rows x cols) matrix with orthonormal columns (rows >= cols) or rows, via modified
    /// Gram-Schmidt on a Gaussian matrix with the sign convention of QR (diag(R) > 0), in Double.
    static func orthogonalMatrix(rows: Int, cols: Int, rng: inout RandomGenerator) -> [Float] {
        let tall = rows >= cols
        let (m, n) = tall ? (rows, cols) : (cols, rows)   // m >= n; orthonormalise the n columns of an m x n matrix
        var a = [Double](repeating: 0, count: m * n)
        for i in a.indices { a[i] = Double(rng.normal()) }
        for j in 0..<n {
            for k in 0..<j {
                var dot = 0.0
                for i in 0..<m { dot += a[i * n + j] * a[i * n + k] }
                for i in 0..<m { a[i * n + j] -= dot * a[i * n + k] }
            }
            var norm = 0.0
            for i in 0..<m { norm += a[i * n + j] * a[i * n + j] }
            norm = norm.squareRoot()
            for i in 0..<m { a[i * n + j] /= norm }
        }
        var out = [Float](repeating: 0, count: rows * cols)
        for i in 0..<m { for j in 0..<n {
            if tall { out[i * cols + j] = Float(a[i * n + j]) } else { out[j * cols + i] = Float(a[i * n + j]) }
        } }
        return out
    }
}
