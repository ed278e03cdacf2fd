import ArgumentParser
import Foundation
import StarlingModels

extension WeightFormat: ExpressibleByArgument {}

/// `starling convert`: checkpoints to and from Keras and safetensors, lighter checkpoints, new detector classes.
struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert weights between Starling checkpoints, Keras HDF5 and safetensors; export ONNX; slim a checkpoint; re-sample a detector's classes.",
        discussion: """
            starling convert --to keras CKPT OUT.h5              Keras 2 / tf.keras save_weights layout
            starling convert --to safetensors CKPT OUT.safetensors   PyTorch state-dict names
            starling convert --to onnx CKPT OUT.onnx             inference graph, opset 13 (input "images")
            starling convert --from keras IN.h5 OUT.h5 --model ssd7 [--config-from CKPT]
            starling convert --inference-only --half CKPT OUT.h5
            starling convert --num-classes 3 --keep-classes 0,1,3 --class-names car,pedestrian,bus CKPT OUT.h5
            Imports are checkpoints at step 0 without optimizer state: eval and predict take them. Output files are \
            written atomically: on any error nothing is left at OUT.
            """)

    @Argument(help: "The file to read.") var input: String
    @Argument(help: "The file to write.") var output: String
    @Option(help: "Format of the input: \(WeightFormat.allCases.map(\.rawValue).joined(separator: ", ")).") var from: WeightFormat = .starling
    @Option(help: "Format of the output: \(WeightFormat.allCases.map(\.rawValue).joined(separator: ", ")).") var to: WeightFormat = .starling
    @Option(help: "Model family of a Keras or safetensors input (default: the configuration the file records, if Starling wrote it).") var model: String?
    @Option(help: "Take the model configuration (options, classes, anchors) of a Keras or safetensors input from this checkpoint.") var configFrom: String?
    @Flag(help: "Drop the optimizer state (a Starling output then serves eval and predict, not train --resume).") var inferenceOnly = false
    @Flag(help: "Store the weights as float16 (the optimizer state stays float32).") var half = false
    @Option(help: "Detectors: object classes of the new model, background not counted.") var numClasses: Int?
    @Option(help: "Detectors: source classes to keep, in their new order, 0 (background) first, e.g. 0,2,5.") var keepClasses: String?
    @Option(help: "Detectors: names of the new object classes, comma-separated (default: the kept classes' names, class<k> for new ones).") var classNames: String?
    @Option(help: "Seed of the new classes' initial weights.") var seed: UInt64 = 0

    func validate() throws {
        if from == .starling && (model != nil || configFrom != nil) {
            throw ValidationError("--model and --config-from describe Keras or safetensors inputs; a Starling checkpoint records its model")
        }
        if (numClasses == nil) != (keepClasses == nil) { throw ValidationError("--num-classes and --keep-classes go together") }
        if classNames != nil && numClasses == nil { throw ValidationError("--class-names needs --num-classes and --keep-classes") }
        if let keep = keepClasses, parsedKeep(keep) == nil { throw ValidationError("--keep-classes takes class numbers separated by commas, e.g. 0,2,5") }
    }

    func parsedKeep(_ text: String) -> [Int]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) ? nil : parts.compactMap { $0 }
    }

    func run() throws {
        try reportingErrors {
            var config: ModelConfig?
            if let configFrom {
                config = try Checkpoint.load(from: configFrom).model.config
                if let model, model != config?.family {
                    throw CommandFailure(ConversionError(file: configFrom, message: "holds model \(config?.family ?? "?"), not \(model)"))
                }
            } else if let model {
                let recorded = try CheckpointConversion.recordedConfig(input, format: from)
                config = recorded?.family == model ? recorded : try ModelRegistry.defaultConfig(family: model)
            }
            var (checkpoint, matched) = try CheckpointConversion.read(input, format: from, config: config)
            if let matched {
                print("layer names differ from model \(checkpoint.model.config.family)'s: matched by order, " + matched.map { "\($0.file) -> \($0.model)" }.joined(separator: ", "))
            }
            if let numClasses, let keep = keepClasses.flatMap(parsedKeep) {
                let names = classNames.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
                let before = checkpoint.model.config.classNames ?? []
                checkpoint = try CheckpointConversion.resamplingClasses(checkpoint, ClassSelection(objectClasses: numClasses, keep: keep, names: names, seed: seed), file: input)
                let after = checkpoint.model.config.classNames ?? []
                for (j, name) in after.enumerated() {
                    print("class \(j) \(name): " + (j < keep.count ? "from class \(keep[j]) \(before[keep[j]])" : "new (he_normal, seed \(seed))"))
                }
                print("re-sampled classes: training state reset to step 0, optimizer state dropped")
            }
            if inferenceOnly { checkpoint = CheckpointConversion.inferenceOnly(checkpoint) }
            if to == .onnx && !(checkpoint.model is any ONNXExportable) {
                throw ConversionError(file: input, message: "model \(checkpoint.model.config.family) has no ONNX export")
            }
            try CheckpointConversion.write(checkpoint, to: output, format: to, half: half)
            let model = checkpoint.model
            if to == .onnx {
                let (graph, outputs) = try ONNXExport.graph(of: model)
                print("wrote \(output): ONNX opset \(graph.opsetVersion), model \(model.config.family)")
                print("  input images: float32 [N, \(model.config.inputShape.map(String.init).joined(separator: ", "))]")
                if (model as? any TwoStageDetector)?.readsProposals == true {
                    print("  input rois: float32 [R, 5], each region's image index in the batch and x1, y1, x2, y2 in input pixels")
                }
                for o in outputs { print("  output \(o.name): \(o.meaning)") }
                return
            }
            let values = model.parameters.count + (model.buffers?.count ?? 0)
            let optimizer = to == .starling && checkpoint.optimizer != nil ? ", with optimizer state" : ""
            print("wrote \(output): \(to.rawValue), model \(model.config.family), \(values) values as \(half ? "float16" : "float32")\(optimizer)")
        }
    }
}
