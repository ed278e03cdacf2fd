#!/usr/bin/env bash
# What 16-bit gradients cost in accuracy: the same 2-rank runs (same seed, same data order) with --gradient-precision
# fp32, bf16 and fp16, and each run's last validation loss and the ratio to fp32's.
#   Launch/bench-gradient-precision.sh           EPOCHS=10 (fc-ae on the full MNIST, batch 256, test-split loss)
#   SSD7_EPOCHS=6 SSD7_STEPS=4                    (ssd7 on the 75 KITTI frames at 300x480, batch 16, loss on 16 of them)
# Speed is not the point here (see Launch/bench-netns.sh); the loss is the same on a loaded or a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
epochs=${EPOCHS:-10}
kitti=${KITTI_DIR:-../shared/data/kitti/kitti_tiny/training}
ssd7_data=Checkpoints/bench/kitti-300x480.h5
[ -f "$ssd7_data" ] || "$bin" data detection --format kitti --images "$kitti/image_2" --labels "$kitti/label_2" --out "$ssd7_data" >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
last_val() { tail -1 "$1" | cut -d, -f4; }
compare() { # name log-name arguments...
    local name=$1 log=$2; shift 2
    local reference=
    for precision in fp32 bf16 fp16; do
        mpirun -np 2 "${mpi_root[@]}" -x OPENBLAS_NUM_THREADS=1 "$bin" train "$@" --gradient-precision "$precision" \
            --out "$out/$name-$precision" > "$out/$name-$precision.out" 2>&1 || { echo "$name $precision failed:"; tail -3 "$out/$name-$precision.out"; continue; }
        v=$(last_val "$out/$name-$precision/$log")
        [ "$precision" = fp32 ] && reference=$v
        awk -v n="$name" -v p="$precision" -v v="$v" -v r="$reference" 'BEGIN { printf "%s %s: validation loss %.6f (%+.2f%% against fp32)\n", n, p, v, (v / r - 1) * 100 }'
    done
}
compare fc-ae fc-ae-log.csv --model fc-ae --data "$data" --epochs "$epochs" --batch-size 256 --seed 1
compare ssd7 ssd7-log.csv --model ssd7 --data "$ssd7_data" --epochs "${SSD7_EPOCHS:-6}" --steps-per-epoch "${SSD7_STEPS:-4}" \
    --batch-size 16 --val-split train --val-limit 16 --seed 1
