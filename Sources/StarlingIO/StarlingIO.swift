// StarlingIO: the file formats Starling reads and writes, with no dependency on the tensor core.
//
// - HDF5 (datasets, checkpoints, Keras-style weight files): `HDF5File`, `HDF5Group`, `HDF5Dataset`,
//   `writeHDF5Atomically`.
// - IDX (the MNIST distribution format) and the MNIST -> HDF5 converter: `IDX`, `MNIST`.
// - Images: `PNGImage` (libpng's simplified API), `JPEGImage` (the TurboJPEG API).
//
// Every failure is a thrown error whose one-line description names the file and the problem; no C library
// prints on stderr or jumps out of Swift frames. Every file written here is written atomically (temporary file
// in the same directory, fsync, rename), so a reader never sees half a file.

/// A failure reading or writing a non-HDF5 file: `"<file>: <message>"` on one line.
public struct StarlingIOError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let message: String

    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }

    public var description: String { "\(file): \(message)" }
}
