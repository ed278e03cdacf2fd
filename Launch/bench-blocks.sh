#!/usr/bin/env bash
# The blocked layout 8 channels wide against 16 (issue 18 item 2): whole training steps of ssd7 and yolov3-tiny with
# STARLING_BLOCK=8 and =16 alternated, ROUNDS times each (AB AB ...), printing each run's figures beside its width and
# the per-round ratios of the training rate (16 over 8). The header line of each run names the CPU's kernels (OpenBLAS
# core, oneDNN ISA, Starling's kernel build) and the block width it ran.
#   Launch/bench-blocks.sh                        ssd7 and yolov3-tiny, 3 rounds, 1 thread
#   ROUNDS=5 MODELS="ssd7" THREADS=2 STEPS=30 Launch/bench-blocks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=path runs that binary instead of building this tree.
if [ -z "${BIN:-}" ]; then swift build -c release --product starling >&2; fi
bin=${BIN:-$(swift build -c release --show-bin-path)/starling}
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
models=${MODELS:-ssd7 yolov3-tiny}
for model in $models; do
  steps=${STEPS:-}; [ -n "$steps" ] || { steps=60; [ "$model" = ssd7 ] || steps=20; }
  declare -A rate=()
  for round in $(seq "$rounds"); do
    for width in 8 16; do
      out=$(STARLING_BLOCK=$width "$bin" bench --only "$model" --steps "$steps" --threads "$threads")
      [ "$round" = 1 ] && [ "$width" = 8 ] && echo "$out" | grep '^machine:'
      line=$(echo "$out" | tail -1)
      echo "round $round, STARLING_BLOCK=$width: $line"
      rate[$round,$width]=$(echo "$line" | grep -o 'training [0-9.]*' | head -1 | cut -d' ' -f2)
    done
  done
  ratios=$(for round in $(seq "$rounds"); do awk -v a="${rate[$round,8]}" -v b="${rate[$round,16]}" 'BEGIN { printf "%.3f ", b / a }'; done)
  echo "$model training, 16 over 8 per round: $ratios"
  unset rate
done
