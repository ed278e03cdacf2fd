#!/usr/bin/env bash
# The main job on the small real MNIST sample committed in Launch/data/mnist-sample:
# install, build (release), convert to HDF5, train the fully connected autoencoder data-parallel on every core
# (one MPI rank a core; one process where mpirun is missing), evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/install-deps.sh
swift build -c release --product starling
bin=$(swift build -c release --show-bin-path)/starling
out=${STARLING_OUT:-Checkpoints/quickstart}
mkdir -p "$out"
"$bin" data mnist --source Launch/data/mnist-sample --out "$out/mnist-sample.h5"
# Batch 32: 3,000 digits give 93 steps an epoch, enough for reconstructions that read as their digits within a
# minute; the global batch is rounded up to a multiple of the ranks so that it splits evenly over them.
ranks=$(nproc)
batch=$(( (32 + ranks - 1) / ranks * ranks ))
if command -v mpirun >/dev/null && [ "$ranks" -gt 1 ]; then
  echo "training data-parallel: $ranks MPI ranks (one a core), global batch $batch"
  launch=(--ranks "$ranks")
else
  echo "training in one process (mpirun $(command -v mpirun >/dev/null && echo "not needed: one core" || echo "not found")), batch $batch"
  launch=()
fi
"$bin" train --model fc-ae --data "$out/mnist-sample.h5" --epochs "${EPOCHS:-60}" --batch-size "$batch" --out "$out" "${launch[@]}"
"$bin" eval --checkpoint "$out/fc-ae-best.h5" --data "$out/mnist-sample.h5" --json "$out/fc-ae-eval.json"
echo
echo "outputs in $out: checkpoints fc-ae-best.h5 and fc-ae-last.h5, training log fc-ae-log.csv, resolved configuration"
echo "fc-ae-config.yaml, reconstructions fc-ae-best-reconstructions.png (originals over reconstructions), figures fc-ae-eval.json"
