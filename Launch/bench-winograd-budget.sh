#!/usr/bin/env bash
# Winograd's call budget (STARLING_WINOGRAD_CALL_MB; BENCHMARKS.md "Winograd's scratch capped"): each entry of the
# suite on 1 process x THREADS threads, one process per run (the peak is the process's), with every pass direct
# (STARLING_WINOGRAD=0) and at each budget in BUDGETS (1048576 MB: uncapped, as before the cap), interleaved within a
# round (direct, budget 1, budget 2, ..., then the next round). Prints each run's row, then per entry and setting the
# median over the rounds of the training rate, the CPU time of a step and the peak RSS, and the rate against direct.
# The suite's header names the CPU, OpenBLAS's core, oneDNN's ISA, Starling's kernels and the Winograd setting.
#   Launch/bench-winograd-budget.sh
#   ROUNDS=3 ENTRIES="yolov3-tiny unet-128" BUDGETS="1048576 128 64" Launch/bench-winograd-budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN=path runs that binary instead of building this tree.
if [ -z "${BIN:-}" ]; then swift build -c release --product starling >&2; fi
bin=${BIN:-$(swift build -c release --show-bin-path)/starling}
rounds=${ROUNDS:-2}
threads=${THREADS:-2}
entries=${ENTRIES:-yolov3-tiny unet-128-w0.25 unet-128 ssd300}
budgets=${BUDGETS:-1048576 128 64 32}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for round in $(seq "$rounds"); do
  for e in $entries; do
    for setting in direct $budgets; do
      if [ "$setting" = direct ]; then w=0; mb=; else w=; mb=$setting; fi
      out=$(STARLING_WINOGRAD=$w STARLING_WINOGRAD_CALL_MB=$mb "$bin" bench --suite --quick --entries "$e" --threads "$threads")
      if [ "$round" = 1 ] && [ "$setting" = direct ]; then echo "$out" | grep -E '^suite:|^sgemm' | head -3 || true; fi
      echo "$out" | grep -E "^$e batch" | sed "s/^/round $round, $setting: /" || true
      echo "$out" | grep '^suite-row ' | sed "s/^suite-row /$setting /" >> "$rows" || true
    done
  done
done
python3 - "$rows" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    setting, row = line.split(" ", 1)
    row = json.loads(row)
    runs.setdefault((row["entry"], setting), []).append(row)
entries = list(dict.fromkeys(e for e, _ in runs))
for e in entries:
    direct = statistics.median(r["trainImagesPerSecond"] for r in runs.get((e, "direct"), [{"trainImagesPerSecond": 0}]))
    for (entry, setting), rs in runs.items():
        if entry != e: continue
        rate = [r["trainImagesPerSecond"] for r in rs]
        cpu = [r["breakdown"]["cpu"] * 1000 for r in rs]
        peak = [r["peakMB"] for r in rs]
        label = "every pass direct" if setting == "direct" else ("uncapped" if setting == "1048576" else f"{setting} MB a call")
        print(f"{e}, {label}: training {statistics.median(rate):.2f} images/s ({', '.join(f'{v:.2f}' for v in rate)}),"
              f" {direct and statistics.median(rate) / direct:.2f}x direct; CPU {statistics.median(cpu):.0f} ms a step"
              f" ({', '.join(f'{v:.0f}' for v in cpu)}); peak {statistics.median(peak):.0f} MB ({', '.join(f'{v:.0f}' for v in peak)})")
EOF
