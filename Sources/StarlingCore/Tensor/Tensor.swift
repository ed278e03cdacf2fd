/// A Float32 tensor with define-by-run reverse-mode automatic differentiation.
///
/// Each op creates its result with `Tensor.result(...)`, passing its inputs and a closure that reads the
/// result's gradient and accumulates (`+=`) into its inputs' gradients. `backward()` walks the recorded
/// graph in reverse topological order. The closure receives the result as an argument instead of capturing
/// it, so the graph (result -> closure -> inputs) has no reference cycles and is freed with the loss.
/// Images are NCHW.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    /// The values. Replaced by an empty block only by `releaseValues()`, for an op that recovers what its backward needs
    /// from elsewhere (in-place activated batch norm: `batchNormLeakyReLU(..., keepingInput: false)`).
    public private(set) var storage: FloatStorage
    public let name: String?
    /// True for parameters and for every value computed from one while gradients are recorded.
    public let requiresGrad: Bool
    /// Gradient buffer; views into the flat gradient buffer for parameters, lazily allocated otherwise.
    public private(set) var gradStorage: FloatStorage?

    // The recorded graph: inputs of the op that produced this tensor and its backward closure.
    internal private(set) var inputs: [Tensor]
    internal private(set) var backwardFn: ((Tensor) -> Void)?
    private let isLeaf: Bool
    /// False when the op that made this tensor reads only its gradient, never its values, in backward.
    private let backwardReadsValues: Bool
    /// During a backward sweep, the recorded ops that take this tensor as an input and whose backward has not run.
    private var pendingUsers = 0
    /// A parameter whose gradient no op has written since `ParameterStore.deferGradientZeroing()`: its view holds the
    /// last step's values, which the first op to push a gradient writes over (`gradientForWriting`) or zeroes first (`grad`).
    private var gradientUnwritten = false

    /// The raw data. Hoist it out of loops: `let x = t.data` then index `x`.
    @inlinable public var data: UnsafeMutablePointer<Float> { storage.pointer }

    /// A constant (no gradient) tensor of zeros.
    public convenience init(zeros shape: [Int], name: String? = nil) {
        self.init(shape: shape, storage: FloatStorage(count: Tensor.elementCount(shape)), requiresGrad: false, name: name)
    }

    /// A constant tensor holding `values`.
    public convenience init(shape: [Int], values: [Float], name: String? = nil) {
        precondition(values.count == Tensor.elementCount(shape), "value count \(values.count) does not match shape \(shape)")
        let s = FloatStorage(count: values.count)
        values.withUnsafeBufferPointer { s.pointer.update(from: $0.baseAddress!, count: values.count) }
        self.init(shape: shape, storage: s, requiresGrad: false, name: name)
    }

    /// A leaf that takes part in autodiff with its own gradient buffer (tests, inputs one differentiates by).
    public static func variable(shape: [Int], values: [Float], name: String? = nil) -> Tensor {
        let t = Tensor(shape: shape, values: values)
        return Tensor(shape: shape, storage: t.storage, grad: FloatStorage(count: t.count), name: name)
    }

    /// A leaf over existing storage. `grad` (a view into a flat gradient buffer) marks a parameter.
    public init(shape: [Int], storage: FloatStorage, grad: FloatStorage? = nil, requiresGrad: Bool = false, name: String? = nil) {
        let n = Tensor.elementCount(shape)
        precondition(storage.count == n, "storage of \(storage.count) floats for shape \(shape)")
        precondition(grad == nil || grad!.count == n, "gradient storage does not match shape \(shape)")
        self.shape = shape
        self.count = n
        self.storage = storage
        self.gradStorage = grad
        self.requiresGrad = requiresGrad || grad != nil
        self.name = name
        self.inputs = []
        self.backwardFn = nil
        self.isLeaf = true
        self.backwardReadsValues = true
    }

    private init(shape: [Int], storage: FloatStorage, inputs: [Tensor], backward: ((Tensor) -> Void)?, backwardReadsValues: Bool) {
        self.shape = shape
        self.count = storage.count
        self.storage = storage
        self.name = nil
        self.requiresGrad = backward != nil
        self.gradStorage = nil
        self.inputs = backward == nil ? [] : inputs
        self.backwardFn = backward
        self.isLeaf = false
        self.backwardReadsValues = backwardReadsValues
    }

    /// Creates an op's result. The graph is recorded only when gradients are enabled and an input needs one.
    /// `backwardReadsResult: false` declares that `backward` reads the result's gradient but never its values, which
    /// lets the one op left to read the values write its input gradient over them (`gradientForWriting(overValues:)`).
    public static func result(shape: [Int], storage: FloatStorage? = nil, inputs: [Tensor], backwardReadsResult: Bool = true,
                              backward: @escaping (Tensor) -> Void) -> Tensor {
        let s = storage ?? FloatStorage(count: elementCount(shape))
        precondition(s.count == elementCount(shape), "result storage does not match shape \(shape)")
        let record = GradMode.isEnabled && inputs.contains { $0.requiresGrad }
        return Tensor(shape: shape, storage: s, inputs: inputs, backward: record ? backward : nil, backwardReadsValues: backwardReadsResult)
    }

    public static func elementCount(_ shape: [Int]) -> Int {
        var n = 1
        for d in shape { precondition(d >= 0, "negative dimension in \(shape)"); n *= d }
        return n
    }

    public var rank: Int { shape.count }
    public func toArray() -> [Float] { storage.toArray() }
    public subscript(flat i: Int) -> Float { storage.pointer[i] }
    /// The single value of a one-element tensor.
    public var item: Float { precondition(count == 1, "item of a tensor of shape \(shape)"); return storage.pointer[0] }

    /// Gradient pointer, allocated (zeroed) on first use. Backward closures accumulate into it.
    public var grad: UnsafeMutablePointer<Float> {
        if let g = gradStorage {
            if gradientUnwritten { settleGradient() }
            return g.pointer
        }
        let g = FloatStorage(count: count)
        gradStorage = g
        return g.pointer
    }
    public var gradArray: [Float]? { settleGradient(); return gradStorage?.toArray() }

    /// A parameter's gradient view becomes "not yet written": the next op to push into it stores instead of adding.
    func markGradientUnwritten() {
        if isLeaf && gradStorage != nil { gradientUnwritten = true }
    }

    /// Zero-fills a parameter's gradient that no op wrote since it was marked unwritten (a parameter this step's
    /// loss does not use), so that the flat buffer holds this step's gradients only.
    func settleGradient() {
        guard gradientUnwritten else { return }
        gradientUnwritten = false
        gradStorage?.zero()
    }

    /// The gradient buffer for a backward closure about to produce a value for every element. `overwrite` is true
    /// when no gradient exists yet: the buffer is then fresh and uninitialised, and the closure must write, not add,
    /// every element (which saves zeroing it and reading it back). Otherwise the closure adds, as into `grad`.
    ///
    /// `overValues: true` is for a closure that writes each gradient element after its last read of the same value
    /// element (element-wise: batch norm's input gradient): when nothing else will read the values (this op is the
    /// last of the sweep's users to run and the op that made them reads only its gradient), the gradient is written
    /// over the values instead of into a new buffer, one activation less at the sweep's peak (SSD7's first
    /// convolution's output: 295 MB at batch 16). The values then hold the gradient.
    public func gradientForWriting(overValues: Bool = false) -> (pointer: UnsafeMutablePointer<Float>, overwrite: Bool) {
        if let g = gradStorage {
            // A parameter's first gradient of a step under `ParameterStore.deferGradientZeroing()`: written over.
            if gradientUnwritten { gradientUnwritten = false; return (g.pointer, true) }
            return (g.pointer, false)
        }
        if overValues && !isLeaf && !backwardReadsValues && pendingUsers == 1 && !valuesReleased {
            gradStorage = storage
            return (storage.pointer, true)
        }
        let g = FloatStorage(uninitializedCount: count)
        gradStorage = g
        return (g.pointer, true)
    }

    /// The gradient buffer for a backward closure that has computed the gradient's values into `scratch` (a buffer of
    /// this tensor's size that it owns and no longer needs otherwise): with no gradient yet, `scratch` becomes the
    /// gradient and nil is returned (the values are in place, nothing to add); otherwise the existing gradient, which
    /// the closure adds `scratch` into.
    func gradientAdopting(_ scratch: FloatStorage) -> UnsafeMutablePointer<Float>? {
        precondition(scratch.count == count, "gradient of \(scratch.count) floats for \(shape)")
        if let g = gradStorage {
            guard gradientUnwritten else { return g.pointer }
            gradientUnwritten = false
            g.pointer.update(from: scratch.pointer, count: count)
            return nil
        }
        gradStorage = scratch
        return nil
    }

    /// True when this tensor's values may be given up after forward (`releaseValues`): an op's result (not a leaf:
    /// parameters and inputs stay) whose own op never reads them in backward.
    var valuesReleasable: Bool { !isLeaf && !backwardReadsValues }

    /// Gives the values' memory back before backward, for an op that read them last in forward and recovers what its
    /// backward needs without them. The caller guarantees that nothing reads the values afterwards (their reader
    /// decides it: `LayoutTensor` runs the convolution again for any later reader); the tensor keeps its place in the
    /// graph and its gradient. Its `data` then points at an empty block.
    func releaseValues() {
        precondition(valuesReleasable, "releasing the values of a tensor whose backward reads them, or of a leaf")
        storage = Tensor.releasedValues
        recomputation = nil   // the releasing op recovers them itself
    }

    /// Whether `releaseValues()` (or `releaseRecomputableValues()`) has run and the values are not back.
    public var valuesReleased: Bool { storage === Tensor.releasedValues }

    /// How to compute the values again, the same bits, from what the graph keeps anyway (`recomputable(by:)`).
    private var recomputation: (() -> FloatStorage)?

    /// Declares that `compute` gives these values again, bit for bit, from values the graph holds for backward anyway and
    /// at a small cost beside a step (the producing op's kept input and statistics, run through the same kernel): a
    /// reader that reads them last in forward may then give them back (`releaseRecomputableValues`), and the backward
    /// sweep computes them again just before the first op that reads them (`restoreValues`). SSD7's pooled blocks, the
    /// next convolution's input: 53 MB a rank of batch 8 not held at the end of forward.
    ///
    /// `alsoInBackward`: the value costs so little to compute (SSD300's conv1_1: 27 multiply-adds a value) that a
    /// convolution reading it gives it back in backward too, after its weight gradient (`releaseForInputGradient`), for the
    /// input gradient to take its place; the sweep then computes it a second time for the op that made it.
    public func recomputable(alsoInBackward: Bool = false, by compute: @escaping () -> FloatStorage) {
        recomputation = compute
        givenBackInBackward = alsoInBackward
    }
    private var givenBackInBackward = false

    /// For a convolution's backward between its weight gradient and its input gradient, its input: gives the values back
    /// if they were declared `recomputable(alsoInBackward: true)` and returns whether it did.
    func releaseForInputGradient() -> Bool {
        guard releasesForInputGradient else { return false }
        storage = Tensor.releasedValues
        return true
    }

    /// Whether `releaseForInputGradient()` would give the values back.
    var releasesForInputGradient: Bool { givenBackInBackward && recomputation != nil && Tensor.givesBackRecomputableValues && !valuesReleased }

    /// False keeps recomputable values through the step (tests compare the two: the same bits).
    @TaskLocal public static var givesBackRecomputableValues = true

    /// Whether `recomputable(by:)` was declared.
    public var isRecomputable: Bool { recomputation != nil }

    /// Gives the values back, while gradients are recorded, if they were declared recomputable (nothing otherwise): for
    /// the reader that read them last in forward and keeps them for its backward (a convolution's input). Any later read
    /// must go through `restoreValues()` first: `LayoutTensor` and its deferred ops do, and so does the backward sweep
    /// for every node and its inputs.
    public func releaseRecomputableValues() {
        guard recomputation != nil, GradMode.isEnabled, Tensor.givesBackRecomputableValues, !valuesReleased else { return }
        storage = Tensor.releasedValues
    }

    /// Computes values given back by `releaseRecomputableValues()` again (nothing when they are there, or were given back
    /// by `releaseValues()`, whose op recovers them itself).
    public func restoreValues() {
        guard let recomputation, valuesReleased else { return }
        let values = recomputation()
        precondition(values.count == count, "values computed again: \(values.count) for \(shape)")
        storage = values
    }

    private static let releasedValues = FloatStorage(count: 0)

    /// Drops the gradient of a non-parameter tensor (parameters keep their view into the flat buffer).
    public func clearGrad() {
        gradientUnwritten = false
        if !isLeaf || gradStorage == nil { gradStorage = nil } else { gradStorage?.zero() }
    }

    /// Reverse-mode sweep from this tensor. `seed` is d(objective)/d(self); by default ones, so that a scalar
    /// loss gets d loss/d loss = 1. Gradients accumulate into parameters; the graph is released afterwards.
    ///
    /// `onLeafReady` is called for each leaf (parameter) as soon as every op that used it has pushed its gradient,
    /// which lets a data-parallel trainer start allreducing gradient buckets while backward continues.
    ///
    /// `afterEachNode` is called after each node's backward, while its inputs' values and gradients are still held (`bench
    /// --suite --memory-breakdown` reads the allocators' peak there to say which node's backward holds the most).
    public func backward(seed: [Float]? = nil, onLeafReady: ((Tensor) -> Void)? = nil, afterEachNode: ((Tensor) -> Void)? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not depend on any parameter")
        let g = grad
        if let seed {
            precondition(seed.count == count, "seed of \(seed.count) values for \(count) elements")
            for i in 0..<count { g[i] += seed[i] }
        } else {
            for i in 0..<count { g[i] += 1 }
        }
        // Reverse sweep over the nodes, inputs before the ops that use them in `order`. When a node's backward has
        // run, every op that reads its values or its gradient has run before it (its users come later in the order),
        // so its closure, its gradient and the sweep's reference go at once: activations and their gradients are
        // freed layer by layer during backward instead of all at its end (SSD7 at batch 16: live peak 3.1 -> 1.8 GB).
        var order = topologicalOrder()
        // Count, for each leaf, the ops still to push into it; a leaf is ready when its count reaches zero.
        var pending: [ObjectIdentifier: Int] = [:]
        if onLeafReady != nil {
            for node in order where !node.isLeaf {
                for leaf in Set(node.inputs.filter { $0.isLeaf && $0.requiresGrad }.map(ObjectIdentifier.init)) { pending[leaf, default: 0] += 1 }
            }
            if isLeaf { settleGradient(); onLeafReady?(self) }
        }
        for node in order { for input in node.inputs { input.pendingUsers += 1 } }
        while let node = order.popLast() {
            // Values given back after forward (`releaseRecomputableValues`) come back before the first op that may read them.
            node.restoreValues()
            for input in node.inputs { input.restoreValues() }
            node.backwardFn?(node)
            afterEachNode?(node)
            for input in node.inputs { input.pendingUsers -= 1 }
            if let onLeafReady {
                var seen = Set<ObjectIdentifier>()
                for input in node.inputs where input.isLeaf && input.requiresGrad && seen.insert(ObjectIdentifier(input)).inserted {
                    let id = ObjectIdentifier(input)
                    let left = (pending[id] ?? 1) - 1
                    pending[id] = left
                    if left == 0 { input.settleGradient(); onLeafReady(input) }
                }
            }
            if !node.isLeaf { node.release() }
        }
    }

    /// The shapes of the recorded op's inputs (for the memory breakdown's account of a node).
    public var inputShapes: [[Int]] { inputs.map(\.shape) }

    private func release() {
        inputs = []
        backwardFn = nil
        gradStorage = nil
        recomputation = nil
        givenBackInBackward = false
    }

    /// Nodes reachable through recorded edges, inputs before the ops that use them (iterative DFS).
    private func topologicalOrder() -> [Tensor] {
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Int)] = [(self, 0)]
        visited.insert(ObjectIdentifier(self))
        while let (node, next) = stack.popLast() {
            if next < node.inputs.count {
                stack.append((node, next + 1))
                let child = node.inputs[next]
                if child.requiresGrad && visited.insert(ObjectIdentifier(child)).inserted {
                    stack.append((child, 0))
                }
            } else {
                order.append(node)
            }
        }
        return order
    }

    /// The values the recorded graph under this tensor keeps alive (each owning block once, views counted as their
    /// owner, blocks in `excluding` left out: the parameters), grouped by the shape of the first node seen holding
    /// them, largest total first. Closures' captures are not seen: what an op keeps only there is live memory the
    /// graph does not show (the memory ledger prints the difference).
    public func tapeValues(excluding: [FloatStorage] = []) -> [(shape: [Int], blocks: Int, bytes: Int)] {
        var seen = Set(excluding.map { ObjectIdentifier($0.root) })
        var groups: [[Int]: (blocks: Int, bytes: Int)] = [:]
        var visited = Set<ObjectIdentifier>()
        var stack: [Tensor] = [self]
        visited.insert(ObjectIdentifier(self))
        while let node = stack.popLast() {
            for storage in [node.storage, node.gradStorage].compactMap({ $0 }) {
                let root = storage.root
                if seen.insert(ObjectIdentifier(root)).inserted {
                    groups[node.shape, default: (0, 0)].blocks += 1
                    groups[node.shape, default: (0, 0)].bytes += max(root.count, 1) * 4
                }
            }
            for input in node.inputs where visited.insert(ObjectIdentifier(input)).inserted { stack.append(input) }
        }
        return groups.map { (shape: $0.key, blocks: $0.value.blocks, bytes: $0.value.bytes) }.sorted { $0.bytes > $1.bytes }
    }

    /// A copy of the values that is cut off from the graph.
    public func detached() -> Tensor {
        let s = FloatStorage(count: count)
        s.copy(from: storage)
        return Tensor(shape: shape, storage: s)
    }
}

/// Whether ops record the graph. Evaluation runs under `GradMode.disabled { ... }`.
/// A task-local, so that concurrently running tests or threads do not switch each other's mode.
public enum GradMode {
    @TaskLocal private static var enabled = true
    public static var isEnabled: Bool { enabled }
    public static func disabled<T>(_ body: () throws -> T) rethrows -> T {
        try $enabled.withValue(false) { try body() }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let values = count <= 8 ? toArray().map { "\($0)" }.joined(separator: ", ") : "\(count) values"
        return "Tensor(\(shape): \(values))"
    }
}
