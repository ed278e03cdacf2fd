#!/usr/bin/env bash
# N ranks on this machine: Launch/local.sh N starling-arguments...
#   Launch/local.sh 2 train --model fc-ae --data mnist.h5 --epochs 50
# One OpenBLAS thread per rank (the measured best on these machines); ranks are bound to cores by Open MPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:?usage: Launch/local.sh RANKS starling-arguments...}
shift
if [ -z "${STARLING_BIN:-}" ]; then
  swift build -c release --product starling >&2   # a no-op when the build is current
  STARLING_BIN=$(swift build -c release --show-bin-path)/starling
fi
bin=$STARLING_BIN
extra=()
[ "$ranks" -gt "$(nproc)" ] && extra+=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
exec mpirun -np "$ranks" "${extra[@]}" -x OPENBLAS_NUM_THREADS=1 "$bin" "$@"
