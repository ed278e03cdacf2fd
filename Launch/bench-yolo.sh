#!/usr/bin/env bash
# The YOLOs beside SSD7 and yolov3-tiny beside PyTorch's yolov3-tiny, in one run (issue 20: training at 416x416, batch 8,
# on the whole machine; inference at batch 1 and 8).
#   1. Starling, synthetic frames at each paper's input (`bench --only FAMILY`: 416x416, yolov1 448x448) on 1 thread
#      and on all threads; SSD7 the same way at 300x480.
#   2. Starling training through `train` on the KITTI sample at 192x640 (real reads, augmentation, targets on the
#      prefetch thread), 1 rank and 2 ranks x 1 thread, global batch 8; the last of 3 epochs is timed. Every YOLO at
#      its full width (YOLOS="yolov3-tiny" to time only that one).
#   3. PyTorch (CPU wheel from PyPI in .build/torch-venv, benchmark-only) in its best configuration: jemalloc preloaded,
#      all threads, NCHW and channels-last; then the ratio of the training figures.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
threads=$(nproc)
echo "cpu: $(lscpu | sed -n "s/^Model name: *//p"), family $(lscpu | sed -n "s/^CPU family: *//p") model $(lscpu | sed -n "s/^Model: *//p"), $threads cores"
"$bin" bench --only map --threads 1 | head -1    # the machine line: OpenBLAS core, oneDNN's instruction set, kernels
yolos=${YOLOS:-yolov3-tiny yolov3 yolov2 yolov1}
for t in 1 "$threads"; do
  echo "$t thread(s):"
  line=$("$bin" bench --only yolov3-tiny --steps 100 --threads "$t" | tail -1)
  echo "  $line"
  [ "$t" = "$threads" ] && starling_line=$line
  for family in $yolos; do
    [ "$family" = yolov3-tiny ] || echo "  $("$bin" bench --only "$family" --steps 50 --threads "$t" | tail -1)"
  done
  echo "  $("$bin" bench --only ssd7 --steps 100 --threads "$t" | tail -1)"
done

data=Checkpoints/bench/kitti-192x640.h5
kitti=${KITTI_DIR:-../shared/data/kitti/kitti_tiny/training}
mkdir -p Checkpoints/bench
[ -f "$data" ] || "$bin" data detection --format kitti --images "$kitti/image_2" --labels "$kitti/label_2" --out "$data" --height 192 --width 640 >&2
extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for family in $yolos ssd7; do
  for ranks in 1 2; do
    run="$out/$family-r$ranks"
    if ! mpirun -np "$ranks" "${extra[@]}" "$bin" train --model "$family" --data "$data" --batch-size 8 --epochs 3 \
      --steps-per-epoch 6 --val-split none --blas-threads 1 --out "$run" > "$run.log" 2>&1; then
      echo "$family on $ranks rank(s) failed: $(grep -m1 -i error "$run.log" || tail -1 "$run.log")"
      continue
    fi
    secs=$(grep -o 'epoch 3/3 done in [0-9.]*s' "$run.log" | grep -o '[0-9.]*s$' | tr -d s)
    awk -v f="$family" -v r="$ranks" -v s="$secs" 'BEGIN { printf "%s training on KITTI 192x640, %d rank(s) x 1 thread, global batch 8: %.1f images/s\n", f, r, 8 * 6 / s }'
  done
done

venv=.build/torch-venv
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0+cpu" numpy \
    --extra-index-url https://download.pytorch.org/whl/cpu >&2
fi
jemalloc=$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -1 || true)
if [ -z "$jemalloc" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 || true
  jemalloc=$(ls /usr/lib/*/libjemalloc.so.2 2>/dev/null | head -1 || true)
fi
best=0
for layout in "" "--channels-last"; do
  line=$(LD_PRELOAD="$jemalloc" "$venv/bin/python" Launch/peer_yolov3_tiny.py --threads "$threads" $layout)
  echo "$line${jemalloc:+ (jemalloc)}"
  rate=$(echo "$line" | grep -o 'training [0-9.]*' | grep -o '[0-9.]*')
  best=$(awk -v a="$best" -v b="$rate" 'BEGIN { print (b > a) ? b : a }')
done
ours=$(echo "$starling_line" | grep -o 'training [0-9.]*' | grep -o '[0-9.]*')
awk -v s="$ours" -v p="$best" 'BEGIN { printf "yolov3-tiny training, 416x416, batch 8, all threads: Starling %.1f images/s, PyTorch best %.1f: %.2fx (target 1.5x)\n", s, p, s / p }'
