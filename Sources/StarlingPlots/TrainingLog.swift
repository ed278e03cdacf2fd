import Foundation
import StarlingNN

/// The per-epoch CSV log `starling train` writes beside its checkpoints (`<family>-log.csv`, header
/// `epoch,step,loss,val_loss,...`), read back for the loss-curve figure.
public struct TrainingLog: Sendable, Equatable {
    public struct Epoch: Sendable, Equatable {
        public var epoch: Int
        public var loss: Double
        /// Empty in the log when training ran without validation.
        public var validationLoss: Double?
    }

    /// One entry per epoch in increasing order. A resumed run appends to the log and may repeat an epoch it
    /// had not finished checkpointing; the later line wins.
    public let epochs: [Epoch]

    public static func read(path: String) throws -> TrainingLog {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw DataError(file: path, message: "cannot read the training log")
        }
        let lines = text.split(whereSeparator: \.isNewline).map(String.init)
        guard let header = lines.first?.split(separator: ",", omittingEmptySubsequences: false).map(String.init),
              let epochColumn = header.firstIndex(of: "epoch"), let lossColumn = header.firstIndex(of: "loss") else {
            throw DataError(file: path, message: "not a training log: the first line lacks the columns epoch and loss")
        }
        let validationColumn = header.firstIndex(of: "val_loss")
        var byEpoch: [Int: Epoch] = [:]
        for (number, line) in lines.enumerated().dropFirst() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == header.count, let epoch = Int(fields[epochColumn]), let loss = Double(fields[lossColumn]) else {
                throw DataError(file: path, message: "line \(number + 1) is not a row of \(header.count) fields with an epoch and a loss")
            }
            let validation = validationColumn.flatMap { Double(fields[$0]) }
            byEpoch[epoch] = Epoch(epoch: epoch, loss: loss, validationLoss: validation)
        }
        return TrainingLog(epochs: byEpoch.keys.sorted().compactMap { byEpoch[$0] })
    }

    /// Training and validation loss against the epoch.
    public func plot(title: String) -> Plot {
        var plot = Plot(title: title, xLabel: "epoch", yLabel: "loss")
        let x = epochs.map { Double($0.epoch) }
        plot.line(x: x, y: epochs.map(\.loss), label: "train")
        if epochs.contains(where: { $0.validationLoss != nil }) {
            plot.line(x: x, y: epochs.map { $0.validationLoss ?? .nan }, label: "validation")
        }
        return plot
    }
}
