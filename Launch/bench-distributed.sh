#!/usr/bin/env bash
# Data-parallel scaling on this machine: 1 rank x 1 thread, then 2 ranks x 1 thread, on the full MNIST
# (converted once to Checkpoints/bench/mnist.h5). Prints images/s per model, the scaling, and allreduce bandwidth.
# The machine's OpenBLAS kernel settings are left as they are; the kernel in use is printed beside the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
steps=${STEPS:-40}
echo "== 1 rank"
one=$(mpirun -np 1 "${mpi_root[@]}" "$bin" bench --distributed --data "$data" --steps "$steps")
echo "$one"
echo "== 2 ranks"
two=$(mpirun -np 2 "${mpi_root[@]}" "$bin" bench --distributed --data "$data" --steps "$steps")
echo "$two"
echo "== scaling (2 ranks over 1)"
for model in fc-ae conv-ae; do
  a=$(grep "^$model " <<<"$one" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  b=$(grep "^$model " <<<"$two" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  awk -v m="$model" -v a="$a" -v b="$b" 'BEGIN { printf "%s: %.2fx (efficiency %.0f%%)\n", m, b / a, 50 * b / a }'
done
echo "== overlap with small buckets (conv-ae, 2 ranks, 16 KB buckets)"
mpirun -np 2 "${mpi_root[@]}" "$bin" bench --distributed --data "$data" --steps "$steps" --models conv-ae --batch-sizes 128 --bucket-mb 0.016 | grep conv-ae
