#!/usr/bin/env bash
# The main job on the small real MNIST sample committed in Launch/data/mnist-sample:
# install, build (release), convert to HDF5, train the fully connected autoencoder, evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash Launch/install-deps.sh
swift build -c release --product starling
bin=$(swift build -c release --show-bin-path)/starling
out=${STARLING_OUT:-Checkpoints/quickstart}
mkdir -p "$out"
"$bin" data mnist --source Launch/data/mnist-sample --out "$out/mnist-sample.h5"
"$bin" train --model fc-ae --data "$out/mnist-sample.h5" --epochs "${EPOCHS:-30}" --batch-size 256 --out "$out"
"$bin" eval --checkpoint "$out/fc-ae-best.h5" --data "$out/mnist-sample.h5" --json "$out/fc-ae-eval.json"
echo
echo "outputs in $out: checkpoints fc-ae-best.h5 and fc-ae-last.h5, training log fc-ae-log.csv,"
echo "reconstructions fc-ae-best-reconstructions.png, figures fc-ae-eval.json"
