#!/usr/bin/env bash
# Winograd for the 3x3 convolutions against oneDNN's direct kernels (issue 18 item 5, issue 19 item 9): the suite's
# training steps with STARLING_WINOGRAD=0 (every pass direct) and unset (the rule; A=1 for every pass oneDNN has) alternated,
# ROUNDS times (AB AB ...), on 1 process x THREADS threads and on RANKS ranks x 1 thread (mpirun), printing each run's
# rows and, per entry, the training rate's ratio (Winograd over direct) in every round. The suite's header names the
# CPU, OpenBLAS's core, oneDNN's ISA, Starling's kernels and the Winograd setting of each run.
#   Launch/bench-winograd.sh                       the five entries below, 2 rounds, 2 threads and 2 ranks
#   ROUNDS=3 ENTRIES="unet-128 ssd7" Launch/bench-winograd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=path runs that binary instead of building this tree.
if [ -z "${BIN:-}" ]; then swift build -c release --product starling >&2; fi
bin=${BIN:-$(swift build -c release --show-bin-path)/starling}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}
ranks=${RANKS:-2}
on=${A:-}
entries=${ENTRIES:-unet-128 unet-128-w0.25 yolov3-tiny ssd7 denoising-ae}
args=(bench --suite --quick)
for e in $entries; do args+=(--entries "$e"); done
mpi=(mpirun -np "$ranks" --bind-to none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
for layout in threads ranks; do
  declare -A rate=()
  for round in $(seq "$rounds"); do
    for setting in 0 "$on"; do
      if [ "$layout" = threads ]; then
        out=$(STARLING_WINOGRAD=$setting "$bin" "${args[@]}" --threads "$threads")
      else
        out=$(STARLING_WINOGRAD=$setting "${mpi[@]}" -x STARLING_WINOGRAD "$bin" "${args[@]}" --threads 1)
      fi
      echo "$out" | grep -E '^suite:|^sgemm' | sed "s/^/round $round, STARLING_WINOGRAD=${setting:-unset}: /"
      while read -r name value; do rate[$round,${setting:-unset},$name]=$value; done < <(echo "$out" | grep '^suite-row ' |
        sed 's/^suite-row //' | python3 -c 'import json, sys
for line in sys.stdin:
    row = json.loads(line); print(row["entry"], row["trainImagesPerSecond"])')
      echo "$out" | grep -v '^suite-row ' | grep -E 'training [0-9]' | sed "s/^/round $round, STARLING_WINOGRAD=${setting:-unset}: /"
    done
  done
  for e in $entries; do
    ratios=$(for round in $(seq "$rounds"); do awk -v a="${rate[$round,0,$e]:-0}" -v b="${rate[$round,${on:-unset},$e]:-0}" 'BEGIN { if (a > 0) printf "%.3f ", b / a; else printf "? " }'; done)
    echo "$e, $( [ "$layout" = threads ] && echo "1 process x $threads threads" || echo "$ranks ranks x 1 thread"), Winograd (STARLING_WINOGRAD=${on:-unset}) over direct per round: $ratios"
  done
  unset rate
done
