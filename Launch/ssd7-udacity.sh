#!/usr/bin/env bash
# The course project: SSD7 on the Udacity driving set, configured as ssd_keras's SSD7 training notebook. The settings
# are Launch/configs/ssd7-udacity.yaml (300x480 frames, Adam lr 1e-3, batch 16, 20 epochs of 1,000 steps, early
# stopping, plateau); this script converts the data and runs that configuration, overriding only data, output and ranks.
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
args=(train --config Launch/configs/ssd7-udacity.yaml --data "$data" --out "$out" --ranks "$ranks")
[ $# -eq 0 ] && args+=(--batch-size 2 --epochs 2 --val-split none)
"$bin" "${args[@]}"
"$bin" predict --checkpoint "$out/ssd7-last.h5" --data "$data" --split "$([ $# -eq 0 ] && echo train || echo val)" --limit 2 --out "$out"
