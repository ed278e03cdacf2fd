// The umbrella module: `import StarlingModels` brings in every model target (see Package.swift for their layering),
// as the single module of that name did before the split. The CLI and the tests import it.
@_exported import StarlingNN
@_exported import StarlingPlots
@_exported import StarlingONNX
@_exported import StarlingData
@_exported import StarlingProposals
@_exported import StarlingDetection
@_exported import StarlingAutoencoders
@_exported import StarlingSegmentation
@_exported import StarlingTraining
@_exported import StarlingEvaluation
@_exported import StarlingConversion
