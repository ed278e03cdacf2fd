#!/usr/bin/env bash
# Starling's kernel builds against each other on this CPU (issue 18): the element-wise kernels at every build
# (`bench --only kernels`, interleaved inside one process), then whole models with STARLING_KERNELS=avx2 and =avx512
# alternated, ROUNDS times each (AB AB ...), printing each run's figures beside its build and the per-round ratios of
# the training rate. On a CPU without AVX-512 (which refuses STARLING_KERNELS=avx512) the models compare baseline
# and avx2 instead, and the script says so.
#   Launch/bench-kernels.sh                      ssd7 and yolov3-tiny, 3 rounds, 1 thread
#   ROUNDS=5 MODELS="ssd7" THREADS=2 Launch/bench-kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
models=${MODELS:-ssd7 yolov3-tiny}
"$bin" bench --only kernels
low=avx2 high=avx512
if ! STARLING_KERNELS=avx512 "$bin" --help >/dev/null 2>&1; then
  echo "this CPU has no AVX-512 build (STARLING_KERNELS=avx512 is refused): comparing baseline and avx2"
  low=baseline high=avx2
fi
for model in $models; do
  steps=300; [ "$model" = ssd7 ] || steps=100
  declare -A rate=()
  for round in $(seq "$rounds"); do
    for level in $low $high; do
      line=$(STARLING_KERNELS=$level "$bin" bench --only "$model" --steps "$steps" --threads "$threads" | tail -2 | tr '\n' ' ')
      echo "round $round, STARLING_KERNELS=$level: $line"
      rate[$round,$level]=$(echo "$line" | grep -o 'training [0-9.]*' | head -1 | cut -d' ' -f2)
    done
  done
  ratios=$(for round in $(seq "$rounds"); do awk -v a="${rate[$round,$low]}" -v b="${rate[$round,$high]}" 'BEGIN { printf "%.3f ", b / a }'; done)
  echo "$model training, $high over $low per round: $ratios"
  unset rate
done
