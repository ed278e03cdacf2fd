#!/usr/bin/env bash
# SSD7 at the project's 300x480: training images/s at global batch 16 on 1 rank and on 2 ranks (1 OpenBLAS thread
# each, the real input pipeline: HDF5 reads, ssd_keras's augmentation and anchor encoding on the prefetch thread),
# from the KITTI sample converted once to Checkpoints/bench/kitti-300x480.h5; then inference FPS and peak memory
# (`bench --only ssd7`) and the input pipeline alone (`bench --only pipeline`).
#   Launch/bench-ssd7.sh            at most STEPS=6 steps an epoch (the 75-frame sample gives 4), 3 epochs; the last is timed
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
data=Checkpoints/bench/kitti-300x480.h5
kitti=${KITTI_DIR:-../shared/data/kitti/kitti_tiny/training}
mkdir -p Checkpoints/bench
[ -f "$data" ] || "$bin" data detection --format kitti --images "$kitti/image_2" --labels "$kitti/label_2" --out "$data" >&2
steps=${STEPS:-6}
extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ranks in 1 2; do
  mpirun -np "$ranks" "${extra[@]}" "$bin" train --model ssd7 --data "$data" --batch-size 16 --epochs 3 \
    --steps-per-epoch "$steps" --val-split none --blas-threads 1 --out "$out/r$ranks" > "$out/r$ranks.log" 2>&1
  # The last epoch's rate: its steps (an epoch of the small sample may hold fewer than STEPS) over its wall time.
  epoch_steps=$(grep -o 'epoch 3/3 *step [0-9]*/[0-9]*' "$out/r$ranks.log" | tail -1 | sed 's|.*/||')
  secs=$(grep -o 'epoch 3/3 done in [0-9.]*s' "$out/r$ranks.log" | grep -o '[0-9.]*s$' | tr -d s)
  awk -v r="$ranks" -v s="$secs" -v n="$epoch_steps" 'BEGIN { printf "ssd7 training, %d rank(s) x 1 thread, global batch 16: %.1f images/s (%.1f s an epoch of %d steps)\n", r, 16 * n / s, s, n }'
done
"$bin" bench --only ssd7 --steps 3 --threads 1 | tail -1
"$bin" bench --only pipeline --detection-data "$data" | tail -1
