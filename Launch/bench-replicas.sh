#!/usr/bin/env bash
# One process's layouts on all cores against each other (issue 18 item 3): `starling bench --suite --quick` per entry on
# 1 rank x 1 thread, 1 process x N threads, 1 process x N replicas (`--replicas N`, one thread each) and N ranks x 1
# thread (mpirun), interleaved round by round so that a drift in the machine's load falls on every layout alike. Prints
# each round's training images/s, the median per layout, the ratios of the medians over 1 x 1 with the per-round spread,
# and replicas against threads and against ranks; the kernels come from the suite's own header line.
#
#   ROUNDS=5 Launch/bench-replicas.sh fc-ae sparse-ae deep-ae vae
#   BIN=.build/release/starling ROUNDS=3 Launch/bench-replicas.sh conv-ae
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-}
if [ -z "$bin" ]; then
  swift build -c release --product starling >&2
  bin=$(swift build -c release --show-bin-path)/starling
fi
rounds=${ROUNDS:-3}
cores=$(nproc)
entries=("$@")
[ ${#entries[@]} -gt 0 ] || entries=(fc-ae sparse-ae deep-ae vae)
mpi_root=()
[ "$(id -u)" -eq 0 ] && mpi_root+=(--allow-run-as-root)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

layouts=("1x1" "1x${cores}threads" "${cores}replicas" "${cores}ranks")
run() {   # layout entry -> images/s (the suite row's training figure)
  local args
  case "$1" in
    1x1) args=(mpirun -np 1 "${mpi_root[@]}" --bind-to none "$bin" bench --suite --quick --entries "$2" --threads 1) ;;
    *threads) args=(mpirun -np 1 "${mpi_root[@]}" --bind-to none "$bin" bench --suite --quick --entries "$2" --threads "$cores") ;;
    *replicas) args=(mpirun -np 1 "${mpi_root[@]}" --bind-to none "$bin" bench --suite --quick --entries "$2" --replicas "$cores") ;;
    *ranks) args=(mpirun -np "$cores" "${mpi_root[@]}" --bind-to none "$bin" bench --suite --quick --entries "$2" --threads 1) ;;
  esac
  timeout -k 10 900 "${args[@]}" > "$tmp/log" 2>&1 || { echo "failed: ${args[*]}: $(tail -1 "$tmp/log")" >&2; echo nan; return; }
  [ -s "$tmp/header" ] || grep -m1 '^suite: ' "$tmp/log" | sed 's/^suite: [^;]*; //' > "$tmp/header"
  sed -n 's/^suite-row .*"trainImagesPerSecond":\([0-9.e+]*\).*/\1/p' "$tmp/log" | head -1
}

for entry in "${entries[@]}"; do
  declare -A rates=()
  for ((round = 0; round < rounds; round++)); do
    # The order turns round by round, so no layout always runs first.
    for ((k = 0; k < ${#layouts[@]}; k++)); do
      layout=${layouts[$(( (k + round) % ${#layouts[@]} ))]}
      rates[$layout]="${rates[$layout]:-} $(run "$layout" "$entry")"
    done
  done
  echo "== $entry ($(cat "$tmp/header"))"
  python3 - "$entry" "${layouts[@]}" <<EOF
import sys, statistics
layouts = sys.argv[2:]
rates = {$(for l in "${layouts[@]}"; do printf '"%s": [%s], ' "$l" "$(echo ${rates[$l]} | tr ' ' ',')"; done)}
med = {l: statistics.median(v) for l, v in rates.items()}
for l in layouts:
    print(f"  {l:>12}: " + " / ".join(f"{x:,.0f}" for x in rates[l]) + f"  median {med[l]:,.0f}")
def ratio(a, b):
    per = [x / y for x, y in zip(rates[a], rates[b])]
    return f"{med[a] / med[b]:.2f}x (rounds {min(per):.2f}-{max(per):.2f}x)"
base = layouts[0]
for l in layouts[1:]:
    print(f"  {l} / {base}: {ratio(l, base)}")
print(f"  {layouts[2]} / {layouts[1]}: {ratio(layouts[2], layouts[1])}")
print(f"  {layouts[2]} / {layouts[3]}: {ratio(layouts[2], layouts[3])}")
EOF
  unset rates
done
