# Sourced by the benchmark scripts: a release build ($bin), the full MNIST in HDF5 ($data, converted once), and the
# mpirun options for root ($mpi_root). Run from the repository's top folder.
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
data=Checkpoints/bench/mnist.h5
mkdir -p Checkpoints/bench
[ -f "$data" ] || "$bin" data mnist --source "${MNIST_DIR:-../shared/data/mnist}" --out "$data" >&2
mpi_root=()
[ "$(id -u)" -eq 0 ] && mpi_root+=(--allow-run-as-root)
