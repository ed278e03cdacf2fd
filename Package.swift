// swift-tools-version:6.0
import PackageDescription

// Native libraries come from Debian packages via pkg-config (see README "Dependencies").
func systemLibrary(_ name: String, _ pkg: String, _ apt: String) -> Target {
    .systemLibrary(name: name, path: "Sources/\(name)", pkgConfig: pkg, providers: [.apt([apt])])
}

// StarlingKernelsAVX2 holds the element-wise kernels compiled for Haswell's instruction set (AVX2, FMA), and
// StarlingKernelsAVX512 the same file (a symbolic link) compiled for Skylake-SP's (AVX-512 F/CD/BW/DQ/VL); everything
// else is built for baseline x86-64, and StarlingCore calls those kernels only on CPUs that report the set (KernelDispatch).
// LLVM's Skylake-SP tuning prefers 256-bit vectors (Intel's early AVX-512 parts lowered their clock on 512-bit code);
// "-prefer-256-bit" turns that off so that the loops vectorise 16 lanes wide, which is the point of the module.
// Incremental builds do not recompile StarlingKernelsAVX2 when only an @inlinable body in StarlingKernels changes (seen
// with Swift 6.3.1: the AVX2 build kept running the old loop): after editing a kernel, touch
// Sources/StarlingKernelsAVX2/Kernels.swift (both modules' file). Clean builds (CI) are unaffected.
// -fno-math-errno: Swift's squareRoot() goes through a C shim that otherwise branches to libm's sqrtf for negative
// inputs (to set errno, which nothing reads), and that branch keeps loops with a square root from vectorising.
// The core and the kernels are optimised in debug builds too: the test suite runs them on real-sized data, and
// unoptimised SIMD code made it slow (whole suite 110 -> 60 s; SSD7's overfitting test 27-66 -> 2.5 s). Not in the
// AddressSanitizer and libFuzzer builds (Launch/sanitize.sh and Launch/fuzz.sh set STARLING_DEBUG_UNOPTIMIZED=1): their
// code parses files rather than trains, and StarlingCore took 3x the compile time at -O (86 against 24-29 s of CPU).
let optimizeDebug = Context.environment["STARLING_DEBUG_UNOPTIMIZED"] == nil
let noMathErrno: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-fno-math-errno"])]
    + (optimizeDebug ? [.unsafeFlags(["-O"], .when(configuration: .debug))] : [])
#if arch(x86_64)
let haswell: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])] + noMathErrno
let skylakeAVX512: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "skylake-avx512",
                                                    "-Xcc", "-Xclang", "-Xcc", "-target-feature", "-Xcc", "-Xclang", "-Xcc", "-prefer-256-bit"])]
    + noMathErrno
#else
let haswell: [SwiftSetting] = noMathErrno
let skylakeAVX512: [SwiftSetting] = noMathErrno
#endif

let package = Package(
    name: "Starling",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "starling", targets: ["starling"]),
        .library(name: "StarlingCore", targets: ["StarlingCore"]),
        .library(name: "StarlingIO", targets: ["StarlingIO"]),
        .library(name: "StarlingDistributed", targets: ["StarlingDistributed"]),
        .library(name: "StarlingModels", targets: ["StarlingModels"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        systemLibrary("CMPI", "ompi-c", "libopenmpi-dev"),
        systemLibrary("COpenBLAS", "openblas", "libopenblas-dev"),
        systemLibrary("CHDF5", "hdf5-serial", "libhdf5-dev"),
        systemLibrary("CTurboJPEG", "libturbojpeg", "libturbojpeg0-dev"),
        systemLibrary("CPNG", "libpng", "libpng-dev"),
        systemLibrary("CZlib", "zlib", "zlib1g-dev"),
        systemLibrary("CXML2", "libxml-2.0", "libxml2-dev"),
        // oneDNN (Debian: libdnnl-dev) ships no pkg-config file; its module map links libdnnl.
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL", providers: [.apt(["libdnnl-dev"])]),
        // cpuid, header-only.
        .systemLibrary(name: "CCPU", path: "Sources/CCPU"),
        .target(name: "StarlingKernels"),
        .target(name: "StarlingKernelsAVX2", dependencies: ["StarlingKernels"], swiftSettings: haswell),
        .target(name: "StarlingKernelsAVX512", dependencies: ["StarlingKernels"], swiftSettings: skylakeAVX512),
        .target(name: "StarlingCore", dependencies: ["COpenBLAS", "CDNNL", "CCPU", "StarlingKernels", "StarlingKernelsAVX2",
                                                     "StarlingKernelsAVX512"],
                swiftSettings: noMathErrno),
        .target(name: "StarlingIO", dependencies: ["CCPU", "CHDF5", "CPNG", "CTurboJPEG", "CZlib", "CXML2"]),
        .target(name: "StarlingDistributed", dependencies: ["CMPI", "CCPU"]),
        // onnx.proto compiled once (see the file's header); the runtime is swift-protobuf.
        .target(name: "ONNXProto", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        // Starling's model code, one target per concern, bottom to top: each uses only targets above it in this list (SwiftPM
        // refuses cycles). Formerly internal symbols another of these targets uses are `package`, not `public`.
        //   StarlingNN:           Model protocols, ModelConfig/AnchorConfig, Batch, layers, NetworkValue, Box, Object, CrossReplica, helpers; uses Core, Distributed
        //   StarlingPlots:        PNG canvas, bitmap font, plots, tile sheets, training-log plots (no models); uses NN, IO
        //   StarlingONNX:         ONNXGraph, ONNXValue (a NetworkValue), ONNXExportable, ONNXAutoencoder; uses NN, ONNXProto
        //   StarlingData:         datasets, training sources, prefetcher, detection augmentation, label import; uses NN, IO
        //   StarlingProposals:    selective search (Felzenszwalb-Huttenlocher segmentation, hierarchical grouping, ranking); uses NN, Core.
        //                         Optimised in debug builds too, as the core: its tests segment real-sized images
        //   StarlingDetection:    detector families, SSD/YOLO heads and losses, box encoding, NMS, anchor clustering, drawing; uses NN, ONNX, Plots
        //   StarlingAutoencoders: autoencoder families, VariationalModel, ONNXVariational; uses NN, ONNX
        //   StarlingSegmentation: segmentation families (U-Net), their pixel weights and loss; uses NN, ONNX
        //   StarlingTraining:     Trainer, Checkpoint (+ its half precision), GradientSynchronizer, registry of all families, benchmarks and the suite (FLOPs from the ONNX description); uses NN, ONNX, Data, Detection, Autoencoders, Segmentation
        //   StarlingEvaluation:   detection evaluation, reconstruction/segmentation metrics and pictures, outliers, code index, autoencoder figures; uses NN, Plots, Data, Detection, Autoencoders, Segmentation, Training
        //   StarlingConversion:   Keras, safetensors, PyTorch weights, ONNX files, inspection, class re-sampling; uses NN, ONNX, Detection, Autoencoders, Training
        //   StarlingModels:       umbrella that re-exports all of the above (the CLI and the tests import it)
        .target(name: "StarlingNN", dependencies: ["StarlingCore", "StarlingDistributed"]),
        .target(name: "StarlingPlots", dependencies: ["StarlingNN", "StarlingIO"]),
        .target(name: "StarlingONNX", dependencies: ["StarlingNN", "StarlingCore", "ONNXProto"]),
        .target(name: "StarlingData", dependencies: ["StarlingNN", "StarlingCore", "StarlingIO"]),
        .target(name: "StarlingProposals", dependencies: ["StarlingNN", "StarlingCore"], swiftSettings: noMathErrno),
        .target(name: "StarlingDetection", dependencies: [
            "StarlingNN", "StarlingONNX", "StarlingPlots", "StarlingCore", "StarlingIO", "ONNXProto",
        ]),
        .target(name: "StarlingAutoencoders", dependencies: ["StarlingNN", "StarlingONNX", "StarlingCore"]),
        .target(name: "StarlingSegmentation", dependencies: ["StarlingNN", "StarlingONNX", "StarlingCore"]),
        .target(name: "StarlingTraining", dependencies: [
            "StarlingNN", "StarlingData", "StarlingDetection", "StarlingAutoencoders", "StarlingSegmentation",
            "StarlingCore", "StarlingIO", "StarlingDistributed", "StarlingONNX",
        ]),
        .target(name: "StarlingEvaluation", dependencies: [
            "StarlingNN", "StarlingPlots", "StarlingData", "StarlingDetection", "StarlingAutoencoders", "StarlingSegmentation", "StarlingTraining",
            "StarlingCore", "StarlingIO",
        ]),
        .target(name: "StarlingConversion", dependencies: [
            "StarlingNN", "StarlingONNX", "StarlingDetection", "StarlingAutoencoders", "StarlingTraining",
            "StarlingCore", "StarlingIO", "ONNXProto", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .target(name: "StarlingModels", dependencies: [
            "StarlingNN", "StarlingPlots", "StarlingONNX", "StarlingData", "StarlingProposals", "StarlingDetection",
            "StarlingAutoencoders", "StarlingSegmentation", "StarlingTraining", "StarlingEvaluation", "StarlingConversion",
        ]),
        .executableTarget(name: "starling", dependencies: [
            "StarlingModels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            // Run configurations in YAML files (`train --config`).
            .product(name: "Yams", package: "Yams"),
        ]),
        // Issue 16 item 7: libFuzzer targets when Launch/fuzz.sh builds it with --sanitize=fuzzer (into .build-fuzz);
        // in this ordinary build, a tool that replays saved inputs through the same targets and writes the seed corpora.
        .executableTarget(name: "starling-fuzz", dependencies: ["StarlingData", "StarlingEvaluation", "StarlingIO", "StarlingNN", "StarlingTraining"]),
        .testTarget(name: "StarlingCoreTests", dependencies: ["StarlingCore"],
                    exclude: ["Fixtures/roi_align_torchvision.py"]),   // the script that wrote RoIAlignFixtures.swift
        .testTarget(name: "StarlingIOTests", dependencies: ["StarlingIO"]),
        // The umbrella for what the tests use publicly; the targets whose internals they test, for `@testable import`.
        .testTarget(name: "StarlingModelsTests", dependencies: [
            "StarlingModels", "starling", "starling-fuzz", "StarlingPlots", "StarlingONNX", "StarlingData", "StarlingProposals", "StarlingDetection",
            "StarlingAutoencoders", "StarlingSegmentation", "StarlingEvaluation", "StarlingConversion",
        ], exclude: ["Fixtures/felzenszwalb_skimage.py"]),   // the script that wrote FelzenszwalbFixtures.swift
    ]
)
