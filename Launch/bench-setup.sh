# Sourced by the benchmark scripts: a release build ($bin), the full MNIST in HDF5 ($data, converted once), and the
# mpirun options for root ($mpi_root). Run from the repository's top folder. STARLING_BIN: a starling binary to use
# instead of this tree's release build (A/B runs against another commit's).
if [ -n "${STARLING_BIN:-}" ]; then
  bin=$STARLING_BIN
else
  swift build -c release --product starling >&2
  bin=$(swift build -c release --show-bin-path)/starling
fi
data=Checkpoints/bench/mnist.h5
mkdir -p Checkpoints/bench
[ -f "$data" ] || "$bin" data mnist --source "${MNIST_DIR:-../shared/data/mnist}" --out "$data" >&2
mpi_root=()
[ "$(id -u)" -eq 0 ] && mpi_root+=(--allow-run-as-root)
