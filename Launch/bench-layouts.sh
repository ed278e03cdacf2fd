#!/usr/bin/env bash
# Every convolutional family's training throughput with two builds, alternating, in one run: issue 15's check that the
# fast paths behind the ops (LayoutTensor) make each family faster and none slower.
#   BEFORE=/path/to/older/starling Launch/bench-layouts.sh     (ROUNDS=2 by default)
# An older build: git worktree add ../before <commit> && (cd ../before && swift build -c release --product starling).
# Each line: family, build, images/s; 1 process, 1 thread (the machine's other core idle), so the two builds see the same
# machine. Autoencoders on the full MNIST (`bench --distributed` on one rank, 40 timed steps at the tutorial's batch),
# SSD7 and yolov3-tiny on synthetic frames (`bench --only`), SSD300 at a quarter width on Penn-Fudan at 300x300
# through `train`.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
before=${BEFORE:?set BEFORE to the older build\'s starling binary}
rounds=${ROUNDS:-2}
pennfudan=Checkpoints/bench/pennfudan-300.h5
[ -f "$pennfudan" ] || "$bin" data detection --format voc --images ../shared/data/pennfudan/PennFudanPed/PNGImages \
  --labels ../shared/data/pennfudan/PennFudanPed/Annotation --out "$pennfudan" --height 300 --width 300 >&2
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p')"
"$bin" bench --only map --threads 1 | head -1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for build in before after; do
    b=$([ "$build" = before ] && echo "$before" || echo "$bin")
    "$b" bench --distributed --data "$data" --steps 40 --threads 1 --models conv-ae --batch-sizes 128 \
      --models denoising-ae --batch-sizes 128 --models conv-vae --batch-sizes 128 |
      grep -E '^(conv-ae|denoising-ae|conv-vae) ' | sed -E "s/^([a-z-]+) .*: ([0-9]+) images\/s.*/\1 $build \2 images\/s/"
    for family in ssd7 yolov3-tiny; do
      "$b" bench --only "$family" --steps 100 --threads 1 | tail -1 | sed -E "s/^([a-z0-9-]+) .*training ([0-9.]+) images\/s.*/\1 $build \2 images\/s/"
    done
    "$b" train --model ssd300 --width-multiplier 0.25 --data "$pennfudan" --batch-size 8 --epochs 2 --steps-per-epoch 6 \
      --val-split none --no-augment --blas-threads 1 --out "$out/ssd300-$build" > "$out/ssd300.log" 2>&1
    secs=$(grep -o 'epoch 2/2 done in [0-9.]*s' "$out/ssd300.log" | grep -o '[0-9.]*s$' | tr -d s)
    awk -v b="$build" -v s="$secs" 'BEGIN { printf "ssd300 (width 0.25, 300x300) %s %.1f images/s\n", b, 48 / s }'
    rm -rf "$out/ssd300-$build"
  done
done
