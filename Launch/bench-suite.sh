#!/usr/bin/env bash
# Every family beside PyTorch in one run (issue 18 items 4 and 5): `starling bench --suite` one entry a process (so that
# ru_maxrss is that entry's peak) on 1 rank x 1 thread, 1 process x all threads, 1 process x N replicas (one thread
# each, `--replicas N`) and N ranks x 1 thread (mpirun), then the
# PyTorch peer (Launch/peer_suite.py; the CPU wheels of torch and torchvision in a venv, benchmark-only) in its best configuration
# (jemalloc preloaded; NCHW and channels-last both measured for the convolutional entries) on 1 and all threads, then
# one Markdown table with the ratios, the step breakdown, GFLOP/s against sgemm measured in the same run, peak memory
# on both sides and the targets per entry. One measurement at a time, never two at once.
#   Launch/bench-suite.sh --quick          the quick entries, ~1.5 s of steps each (a few minutes on 2 cores)
#   Launch/bench-suite.sh                  every entry, ~6 s of steps each (~30-40 min on 2 cores)
#   ENTRIES="ssd7 unet-128" Launch/bench-suite.sh     these entries only
#   ISA=avx2 Launch/bench-suite.sh --quick  both sides capped to AVX2 on an AVX-512 machine: the nearest this machine
#                                          gets to an AVX2-only node (the header says so; the real one is still better)
# Environment: STARLING_BIN (a release build of starling; built with swift build -c release otherwise), TORCH_VENV (default .build/torch-venv, created from pip when torch is missing), JEMALLOC (path of
# libjemalloc.so.2; found under /usr/lib otherwise), OUT (the rows and the table; default Checkpoints/bench/suite-DATE).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=()
seconds=6
[ "${1:-}" = "--quick" ] && { quick=(--quick); seconds=1.5; }
if [ -n "${STARLING_BIN:-}" ]; then
  bin=$STARLING_BIN
else
  swift build -c release --product starling >&2
  bin=$(swift build -c release --show-bin-path)/starling
fi
cores=$(nproc)
out=${OUT:-Checkpoints/bench/suite-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
rows="$out/rows.jsonl"
: > "$rows"
mpi_root=()
[ "$(id -u)" -eq 0 ] && mpi_root+=(--allow-run-as-root)

venv=${TORCH_VENV:-.build/torch-venv}
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0+cpu" numpy \
    --extra-index-url https://download.pytorch.org/whl/cpu >&2
fi
jemalloc=${JEMALLOC:-$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -1 || true)}
[ -n "$jemalloc" ] || echo "warning: no libjemalloc.so.2 (apt-get install libjemalloc2): PyTorch runs on glibc's allocator, not its best configuration" >&2

if [ -n "${ENTRIES:-}" ]; then
  entries=($ENTRIES)
else
  mapfile -t entries < <("$bin" bench --suite-list | awk -v q="${#quick[@]}" '!/^#/ && (q == 0 || $4 == "quick") { print $1 }')
fi
# torchvision for the R-CNN family's peers (benchmark-only, like torch): its CPU wheel from PyTorch's index; where that
# index is out of reach (PyPI's torchvision wheels are CUDA builds, which do not load in the CPU torch), built from
# source, CPU only, at the commit of the 0.28.0 release (torch 2.13's; TORCHVISION_SRC: a checkout of it to use instead
# of downloading one), the wheel kept in .build/wheels; failing both, the R-CNN peers run on plain-torch RoI ops
# (weaker: Launch/peer_rcnn.py, said in their rows).
torchvision_commit=8fb87713a24951e639c494b0f2a8a81b5f8e33a6
roi_ops=()
torchvision_loads() { "$venv/bin/python" -c "import torch, torchvision.ops as o; o.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" 2>/dev/null; }
ensure_torchvision() {
  if ! torchvision_loads; then
    # --no-deps keeps the venv's torch; pillow is torchvision's one other dependency (nothing is installed if either is missing)
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "torchvision==0.28.0+cpu" pillow \
      --extra-index-url https://download.pytorch.org/whl/cpu >/dev/null 2>&1 || true
  fi
  if ! torchvision_loads; then
    "$venv/bin/pip" uninstall --quiet --yes torchvision >/dev/null 2>&1 || true
    local src=${TORCHVISION_SRC:-.build/torchvision-$torchvision_commit}
    if [ -n "${TORCHVISION_SRC:-}" ] && [ ! -f "$src/setup.py" ]; then
      echo "warning: TORCHVISION_SRC=$src has no setup.py: not torchvision's source" >&2
    elif [ ! -f "$src/setup.py" ]; then
      mkdir -p "$src" && { curl -fsSL --connect-timeout 30 "https://github.com/pytorch/vision/archive/$torchvision_commit.tar.gz" | tar -xz -C "$src" --strip-components 1 2>/dev/null; } \
        || { echo "warning: torchvision's source (commit $torchvision_commit) could not be downloaded" >&2; rm -rf "$src"; }
    fi
    if [ -f "$src/setup.py" ]; then
      echo "building torchvision 0.28.0 for the CPU from $src (~100 C++ files: minutes to tens of minutes)" >&2
      if grep -q pkg_resources "$src/setup.py" && ! "$venv/bin/python" -c "import pkg_resources" 2>/dev/null; then
        "$venv/bin/pip" install --quiet --disable-pip-version-check "setuptools<81" >&2
      fi
      mkdir -p .build/wheels
      BUILD_VERSION=0.28.0+cpu FORCE_CUDA=0 TORCHVISION_USE_PNG=0 TORCHVISION_USE_JPEG=0 TORCHVISION_USE_WEBP=0 TORCHVISION_USE_NVJPEG=0 \
        TORCHVISION_USE_VIDEO_CODEC=0 TORCHVISION_USE_FFMPEG=0 MAX_JOBS=$cores \
        "$venv/bin/pip" wheel --quiet --disable-pip-version-check --no-build-isolation --no-deps -w .build/wheels "$src" >&2 \
        && "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps .build/wheels/torchvision-0.28.0+cpu-*.whl pillow >&2 \
        || echo "warning: torchvision's CPU build failed" >&2
    fi
  fi
  if ! torchvision_loads; then
    echo "warning: no torchvision with its C++ ops: the R-CNN family's peers run on plain-torch RoI ops (--torch-roi-ops, weaker)" >&2
    roi_ops=(--torch-roi-ops)
  fi
}
case " ${entries[*]} " in *rcnn*) ensure_torchvision ;; esac

echo "cpu: $(lscpu | sed -n "s/^Model name: *//p"), family $(lscpu | sed -n "s/^CPU family: *//p") model $(lscpu | sed -n "s/^Model: *//p"), $cores cores" | tee "$out/header.txt"
"$bin" bench --suite-list | grep '^#' | tee -a "$out/header.txt" || true
peers=$("$venv/bin/python" Launch/peer_suite.py --list)

# ISA=avx2 caps every library on both sides by its own documented switch (a benchmark may set OPENBLAS_CORETYPE in its
# own command; the kernels each side ran are printed with its rows). STARLING_GEMM=openblas keeps the GEMM an AVX2-only
# node would run: there OpenBLAS's Haswell/Zen kernel matches the CPU and the rule keeps it.
case "${ISA:-}" in
  "") ;;
  avx2)
    export STARLING_KERNELS=avx2 STARLING_BLOCK=8 STARLING_GEMM=openblas OPENBLAS_CORETYPE=Haswell ONEDNN_MAX_CPU_ISA=AVX2
    export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
    echo "capped to AVX2 on this CPU (ISA=avx2): STARLING_KERNELS=avx2 STARLING_BLOCK=8 STARLING_GEMM=openblas OPENBLAS_CORETYPE=Haswell ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2" | tee -a "$out/header.txt" ;;
  *) echo "bench-suite.sh: ISA=${ISA} is not a cap this script knows (avx2)" >&2; exit 2 ;;
esac

starling() {   # ranks threads entry [replicas]: with replicas, one process of that many replicas on threads
  local log="$out/starling-$3-r$1-t$2${4:+-p$4}.log"
  local layout=(--threads "$2")
  [ -n "${4:-}" ] && layout=(--replicas "$4")
  if ! timeout -k 10 1800 mpirun -np "$1" "${mpi_root[@]}" --bind-to none "$bin" bench --suite "${quick[@]}" --entries "$3" "${layout[@]}" > "$log" 2>&1; then
    echo "  starling $3 on $1 rank(s) x $2 thread(s)${4:+ as $4 replicas} failed: $(grep -m1 -i error "$log" || tail -1 "$log")"
    return
  fi
  grep -v '^suite-row ' "$log" | tail -1 | sed 's/^/  /'
  grep '^suite-row ' "$log" >> "$rows"
}
pytorch() {    # threads layout-flag entry
  local log="$out/pytorch-$3-t$1${2:+-cl}.log"
  if ! LD_PRELOAD="$jemalloc" timeout -k 10 1800 "$venv/bin/python" Launch/peer_suite.py "$3" --threads "$1" $2 "${roi_ops[@]}" --seconds "$seconds" > "$log" 2>&1; then
    echo "  pytorch $3 on $1 thread(s) $2 failed: $(tail -1 "$log")"
    return
  fi
  grep '^suite-row ' "$log" | tee -a "$rows" | sed -E 's/.*"trainImagesPerSecond": ([0-9.]+).*/  pytorch training \1 images\/s/' | sed "s/^/  [$1 thread(s) ${2:-NCHW}] /"
}

for entry in "${entries[@]}"; do
  echo "== $entry"
  starling 1 1 "$entry"
  if [ "$cores" -gt 1 ]; then
    starling 1 "$cores" "$entry"
    starling 1 1 "$entry" "$cores"
    starling "$cores" 1 "$entry"
  fi
  kind=$(awk -v e="$entry" '$1 == e { print $2 }' <<<"$peers")
  if [ -z "$kind" ]; then
    echo "  no PyTorch peer for $entry"
    continue
  fi
  for t in $(printf '%s\n' 1 "$cores" | sort -un); do
    pytorch "$t" "" "$entry"
    if [ "$kind" = spatial ]; then pytorch "$t" --channels-last "$entry"; fi
  done
done

"$bin" bench --suite-table "$rows" > "$out/table.md"
echo
cat "$out/header.txt"
grep -o '"kernels": *"[^"]*"' "$rows" | sort -u | sed 's/"kernels": *//' || true
echo
cat "$out/table.md"
echo "rows: $rows; table: $out/table.md"
