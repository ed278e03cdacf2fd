#!/usr/bin/env bash
# One process on 1 thread against the same process on 2 threads (issue 18: `starling train` without mpirun should run
# at least 1.8x its one-thread rate on 2 cores), family by family, the two runs interleaved ROUNDS times (1 2 1 2 ...)
# so that a busy machine disturbs both alike. Autoencoders: `train` on the full MNIST (the last img/s of the epoch,
# data pipeline included); the others: `bench --only FAMILY` (its training figure, synthetic frames). Prints each
# round's rates, the ratio of the medians and the spread of the per-round ratios, with the kernels. The autoencoders also
# run a third way in each round, `train` without --blas-threads ("auto": the trainer times 2 threads against 1 over its
# first steps and keeps the faster, ThreadCalibration), whose ratio to one thread must not fall below 1; their STEPS
# should leave room for the calibration (up to ~390 steps for ~1 ms steps; the rate is the epoch's, calibration included).
# Since replicas (`train --replicas 2`, README "Replicas on threads of one process") auto first times 2 replicas of one
# thread against one replica on 2 threads (ReplicaCalibration), and a fourth way runs `--replicas 2` fixed.
#   Launch/bench-threads.sh [FAMILY...]       ROUNDS=3 STEPS=40 by default; SKIP_TWO=1 leaves out the fixed 2-thread
#                                             runs (on a loaded machine they take minutes; auto's log line still times 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
rounds=${ROUNDS:-3}
steps=${STEPS:-40}
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(fc-ae deep-ae conv-ae denoising-ae seq2seq-ae vae conv-vae ssd7 yolov3-tiny unet)
declare -A batch=([fc-ae]=256 [sparse-ae]=256 [deep-ae]=256 [conv-ae]=128 [denoising-ae]=128 [seq2seq-ae]=128 [vae]=32 [conv-vae]=128)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rate() {   # family threads (or auto) -> images/s
  local f=$1 t=$2
  if [ -n "${batch[$f]:-}" ]; then
    local fixed=(--blas-threads "$t")
    [ "$t" = auto ] && fixed=()
    [ "$t" = replicas ] && fixed=(--replicas 2)
    "$bin" train --model "$f" --data "$data" --epochs 1 --steps-per-epoch "$steps" --batch-size "${batch[$f]}" \
      "${fixed[@]}" --val-split none --out "$out/$f-$t" > "$out/log" 2>&1
    [ "$t" = auto ] && grep -E -m2 '^(threads|replicas): ' "$out/log" | sed 's/^/    auto: /' >&2
    grep -o '[0-9]* img/s' "$out/log" | tail -1 | cut -d' ' -f1
  elif [ "$f" = unet ]; then
    "$bin" bench --only unet --threads "$t" --steps "$steps" > "$out/log"
    grep 'width 0.25' "$out/log" | sed -E 's/.*training ([0-9.]+) images.*/\1/'
  else
    "$bin" bench --only "$f" --threads "$t" --steps "$steps" > "$out/log"
    grep -E 'training [0-9.]+ images' "$out/log" | sed -E 's/.*training ([0-9.]+) images.*/\1/'
  fi
  # The kernels, once: the train header's or bench's first line.
  [ -f "$out/said" ] || { grep -m1 -E 'GEMM' "$out/log" | sed -E 's/.*(BLAS [^;]*; GEMM)/\1/' >&2; touch "$out/said"; }
}
for f in "${families[@]}"; do
  ones=() twos=() autos=() replicas=()
  for _ in $(seq "$rounds"); do
    ones+=("$(rate "$f" 1)")
    [ -n "${SKIP_TWO:-}" ] || twos+=("$(rate "$f" 2)")
    [ -n "${batch[$f]:-}" ] && autos+=("$(rate "$f" auto)")
    [ -n "${batch[$f]:-}" ] && replicas+=("$(rate "$f" replicas)")
  done
  python3 - "$f" "${ones[*]}" "${twos[*]:-}" "${autos[*]:-}" "${replicas[*]:-}" <<'PY'
import statistics, sys
f, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
def ratio(name, c):
    r = [y / x for x, y in zip(a, c)]
    return f"{name} {c}  ratio of medians {statistics.median(c) / statistics.median(a):.2f}x (rounds {min(r):.2f}-{max(r):.2f}x)"
line = f"{f:13s} 1 thread {a}" + ("  " + ratio("2 threads", b) if b else "")
if sys.argv[4].strip():
    line += "  " + ratio("auto", [float(x) for x in sys.argv[4].split()])
if sys.argv[5].strip():
    line += "  " + ratio("2 replicas", [float(x) for x in sys.argv[5].split()])
print(line)
PY
done
