#!/usr/bin/env bash
# Data-parallel scaling on this machine: 1 rank x 1 thread, then 2 ranks x 1 thread, on the full MNIST
# (converted once to Checkpoints/bench/mnist.h5). Prints images/s per model, the scaling, and allreduce bandwidth.
# The machine's OpenBLAS kernel settings are left as they are; the kernel in use is printed beside the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
data=Checkpoints/bench/mnist.h5
mkdir -p Checkpoints/bench
[ -f "$data" ] || "$bin" data mnist --source "${MNIST_DIR:-../shared/data/mnist}" --out "$data" >&2
steps=${STEPS:-40}
extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
echo "== 1 rank"
one=$(mpirun -np 1 "${extra[@]}" "$bin" bench --distributed --data "$data" --steps "$steps")
echo "$one"
echo "== 2 ranks"
two=$(mpirun -np 2 "${extra[@]}" "$bin" bench --distributed --data "$data" --steps "$steps")
echo "$two"
echo "== scaling (2 ranks over 1)"
for model in fc-ae conv-ae; do
  a=$(grep "^$model " <<<"$one" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  b=$(grep "^$model " <<<"$two" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  awk -v m="$model" -v a="$a" -v b="$b" 'BEGIN { printf "%s: %.2fx (efficiency %.0f%%)\n", m, b / a, 50 * b / a }'
done
echo "== overlap with small buckets (conv-ae, 2 ranks, 16 KB buckets)"
mpirun -np 2 "${extra[@]}" "$bin" bench --distributed --data "$data" --steps "$steps" --models conv-ae --batch-sizes 128 --bucket-mb 0.016 | grep conv-ae
