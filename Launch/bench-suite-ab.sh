#!/usr/bin/env bash
# Suite entries on two builds (or the same build twice), interleaved round by round (A B A B ...) in each layout, so that
# a busy machine disturbs both alike and a single run's luck shows as spread: `starling bench --suite --quick` for each
# entry on 1 rank x 1 thread, 1 process x 2 threads and 2 ranks x 1 thread, as Launch/bench-suite.sh runs them (mpirun,
# --bind-to none). Prints every run (training and inference images/s, the step's breakdown in ms), then for each entry
# and layout the medians of A and B, the ratio B / A of the medians and the range of the per-round ratios.
#   A=/path/to/main/starling B=.build/release/starling ROUNDS=5 Launch/bench-suite-ab.sh fc-ae sparse-ae deep-ae
#   A=.build/release/starling B=.build/release/starling Launch/bench-suite-ab.sh sparse-ae    # one build: its spread
#   A=BIN B=BIN A_ENV="STARLING_GEMM=openblas" B_ENV="STARLING_GEMM=dnnl" Launch/bench-suite-ab.sh fc-ae   # one build, two settings
#   A=BIN B=BIN B_MPI="--map-by slot:PE=2 --bind-to core" LAYOUTS=1x2 Launch/bench-suite-ab.sh conv-ae   # two placements
#   A=BIN B=BIN LAYOUTS="1p2" Launch/bench-suite-ab.sh deep-ae     # one process of 2 replicas on threads (--replicas 2)
# LAYOUTS (default "1x1 1x2 2x1") chooses the layouts, as RANKSxTHREADS, or 1pN for one process of N replicas; A_ENV and B_ENV (VAR=value ...) each side's
# environment (local ranks inherit mpirun's); A_MPI and B_MPI each side's mpirun placement options (default
# "--bind-to none", as bench-suite.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
a=${A:?A=path of the first starling binary}
b=${B:?B=path of the second starling binary}
rounds=${ROUNDS:-3}
layouts=${LAYOUTS:-"1x1 1x2 2x1"}
entries=("$@")
[ ${#entries[@]} -gt 0 ] || entries=(fc-ae sparse-ae deep-ae)
mpi_root=()
[ "$(id -u)" -eq 0 ] && mpi_root+=(--allow-run-as-root)
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
field() { sed -nE "s/.*\"$1\":([0-9.e+-]+).*/\1/p"; }
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores); A=${A_ENV:-} $a ${A_MPI:---bind-to none}; B=${B_ENV:-} $b ${B_MPI:---bind-to none}"
said=
for round in $(seq 1 "$rounds"); do
  for entry in "${entries[@]}"; do
    for layout in $layouts; do
      for side in A B; do
        bin=$a; settings=${A_ENV:-}; placement=${A_MPI:---bind-to none}
        [ "$side" = B ] && { bin=$b; settings=${B_ENV:-}; placement=${B_MPI:---bind-to none}; }
        case $layout in
          *p*) np=${layout%p*}; shape=(--replicas "${layout#*p}") ;;
          *) np=${layout%x*}; shape=(--threads "${layout#*x}") ;;
        esac
        row=$(env $settings timeout -k 10 600 mpirun -np "$np" "${mpi_root[@]}" $placement "$bin" bench --suite --quick \
          --entries "$entry" "${shape[@]}" 2>&1 | grep '^suite-row ' || true)
        if [ -z "$row" ]; then echo "round $round $entry $layout $side: failed"; continue; fi
        case " $said " in *" $side "*) ;; *) said="$said $side"; echo "kernels $side: $(echo "$row" | sed -nE 's/.*"kernels":"([^"]*)".*/\1/p')" ;; esac
        train=$(echo "$row" | field trainImagesPerSecond); infer=$(echo "$row" | field inferenceImagesPerSecond)
        ms=$(for k in forward backward allreduce optimizer data; do echo "$row" | field "$k"; done | awk '{ printf "%.2f ", $1 * 1000 }')
        cpu=$(echo "$row" | field cpu | awk '{ printf "%.3f", $1 * 1000 }')
        peak=$(echo "$row" | field peakMB | awk '{ printf "%.1f", $1 }')
        printf 'round %s %-10s %s %s: training %8.4g images/s, inference %8.4g; ms fwd/bwd/allreduce/optim/data %s; CPU ms a step %s; peak MB %s\n' \
          "$round" "$entry" "$layout" "$side" "$train" "$infer" "$ms" "${cpu:-?}" "${peak:-?}"
        echo "$entry $layout $side $round $train $infer ${cpu:-0} ${peak:-0}" >> "$runs"
      done
    done
  done
done
for column in 5 6 7 8; do
  what="training images/s"; [ "$column" = 6 ] && what="inference images/s"; [ "$column" = 7 ] && what="CPU ms a training step, a rank (lower is better)"
  [ "$column" = 8 ] && what="peak MB, summed over the ranks as the suite's row (lower is better)"
  echo "medians ($what), B / A of the medians, and the range of the per-round ratios:"
  for entry in "${entries[@]}"; do
    for layout in $layouts; do
      awk -v e="$entry" -v l="$layout" -v c="$column" '
        $1 == e && $2 == l { v[$3, $4] = $c; if ($4 > n) n = $4 }
        function median(side,   i, k, x, t) { k = 0; for (i = 1; i <= n; i++) if ((side, i) in v) x[++k] = v[side, i]
          for (i = 1; i <= k; i++) for (t = i + 1; t <= k; t++) if (x[t] < x[i]) { s = x[i]; x[i] = x[t]; x[t] = s }
          return k == 0 ? 0 : (k % 2 ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2) }
        END { lo = 1e9; hi = 0
          for (i = 1; i <= n; i++) if ((("A", i) in v) && (("B", i) in v) && v["A", i] > 0) { r = v["B", i] / v["A", i]; if (r < lo) lo = r; if (r > hi) hi = r }
          ma = median("A"); mb = median("B")
          printf "  %-10s %s: A %.4g, B %.4g, B/A %.2fx (rounds %.2f-%.2fx)\n", e, l, ma, mb, (ma > 0 ? mb / ma : 0), lo, hi }' "$runs"
    done
  done
done
