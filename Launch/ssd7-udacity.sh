#!/usr/bin/env bash
# The course project: SSD7 on the Udacity driving set, configured as ssd_keras's SSD7 training notebook:
# 300x480 frames, classes car, truck, pedestrian, bicyclist, light; Adam lr 1e-3, batch 16, L2 5e-4 (the model's
# default), 20 epochs of 1,000 steps, early stopping after 10 epochs without val_loss improvement, learning rate x0.2
# after 8 (not below 1e-5), checkpoints named with epoch and losses, a CSV log.
#
#   Launch/ssd7-udacity.sh IMAGES_DIR LABELS_CSV [RANKS]
# With no arguments it runs on the two-frame sample in ../shared/data/udacity (a smoke test: a few steps).
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-../shared/data/udacity/images}
labels=${2:-../shared/data/udacity/labels.csv}
ranks=${3:-1}
out=${STARLING_OUT:-Checkpoints/ssd7-udacity}
mkdir -p "$out"
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
data="$out/udacity.h5"
if [ ! -f "$data" ]; then
  # The sample has two frames: keep both for training (no validation split) so the smoke test can run.
  split=(--val-fraction 0.1)
  [ $# -eq 0 ] && split=(--val-fraction 0)
  "$bin" data detection --format udacity --images "$images" --labels "$labels" --out "$data" --height 300 --width 480 "${split[@]}"
fi
args=(train --model ssd7 --data "$data" --batch-size 16 --lr 1e-3 --epochs 20 --steps-per-epoch 1000
      --early-stopping 10 --plateau-patience 8 --plateau-factor 0.2 --min-lr 1e-5 --out "$out")
[ $# -eq 0 ] && args=(train --model ssd7 --data "$data" --batch-size 2 --epochs 2 --val-split none --out "$out")
if [ "$ranks" -gt 1 ]; then
  STARLING_BIN="$bin" Launch/local.sh "$ranks" "${args[@]}"
else
  "$bin" "${args[@]}"
fi
"$bin" predict --checkpoint "$out/ssd7-last.h5" --data "$data" --split "$([ $# -eq 0 ] && echo train || echo val)" --limit 2 --out "$out"
