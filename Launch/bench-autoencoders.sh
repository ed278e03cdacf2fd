#!/usr/bin/env bash
# Training throughput of every autoencoder at the tutorial's batch size, on 1 rank and on 2 ranks (1 OpenBLAS thread
# each), on the full MNIST (converted once to Checkpoints/bench/mnist.h5): images/s, the scaling, and the allreduce
# wait left after backward. The machine's OpenBLAS kernel settings are left as they are; the kernel is printed.
#   Launch/bench-autoencoders.sh            STEPS=40 by default (timed steps per model, after as many to warm up)
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
steps=${STEPS:-40}
models=(fc-ae sparse-ae deep-ae conv-ae denoising-ae seq2seq-ae vae conv-vae)
batches=(256 256 256 128 128 128 32 128)
args=()
for i in "${!models[@]}"; do args+=(--models "${models[$i]}" --batch-sizes "${batches[$i]}"); done
echo "== 1 rank"
one=$(mpirun -np 1 "${mpi_root[@]}" "$bin" bench --distributed --data "$data" --steps "$steps" "${args[@]}")
echo "$one"
echo "== 2 ranks"
two=$(mpirun -np 2 "${mpi_root[@]}" "$bin" bench --distributed --data "$data" --steps "$steps" "${args[@]}" | grep -v '^allreduce')
echo "$two"
echo "== scaling (2 ranks over 1, same global batch)"
for model in "${models[@]}"; do
  a=$(grep "^$model " <<<"$one" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  b=$(grep "^$model " <<<"$two" | sed -E 's/.*: ([0-9]+) images\/s.*/\1/')
  awk -v m="$model" -v a="$a" -v b="$b" 'BEGIN { printf "%-13s %7d -> %7d images/s  %.2fx\n", m, a, b, b / a }'
done
