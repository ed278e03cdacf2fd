#!/usr/bin/env bash
# Training throughput against network bandwidth, two "hosts" on this machine (needs root): two network namespaces
# joined through a bridge by veth pairs (Launch/netns.sh), each link limited by tc (token bucket + netem delay), one
# rank and one OpenBLAS thread per host, launched through Launch/multihost.sh; against one rank without a network.
#   Launch/bench-netns.sh                      RATES="none 10gbit 5gbit 2500mbit 1gbit" DELAY= STEPS=4 EPOCHS=2
#   DELAY=0.1ms adds a latency on each end of each link (tc netem: needs sch_netem, which this VM's kernel lacks)
#   MODELS="ssd7 ssd300" VARIANTS="fp32 fp32-1mb bf16 fp16"                      (the defaults; the last epoch is timed)
#   OVERLAP_RATE=1gbit                         the link for the overlap figures at the end ("" skips them)
# ssd7: 300x480 KITTI frames, global batch 16. ssd300: width multiplier 0.25 (1/16 of the paper's weights), 300x300
# Penn-Fudan frames, global batch 8. Variants: fp32 with the default 25 MB buckets, fp32 with 1 MB buckets (more
# of the allreduce started during backward), bf16 and fp16 gradients on the wire.
# Each line: model, variant, link, images/s, the ratio to one rank, the gradient bytes host 1 received per step
# (counted on its veth). Then how much of the allreduce backward hides (`bench --distributed`: the wait left after
# backward with overlap against without) for conv-ae with its one 92 KB bucket and with 16 KB buckets, on OVERLAP_RATE.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/bench-setup.sh
rates=${RATES:-none 10gbit 5gbit 2500mbit 1gbit}
delay=${DELAY:-}
steps=${STEPS:-4}
epochs=${EPOCHS:-2}
models=${MODELS:-ssd7 ssd300}
variants=${VARIANTS:-fp32 fp32-1mb bf16 fp16}
kitti=${KITTI_DIR:-../shared/data/kitti/kitti_tiny/training}
ssd7_data=Checkpoints/bench/kitti-300x480.h5
[ -f "$ssd7_data" ] || "$bin" data detection --format kitti --images "$kitti/image_2" --labels "$kitti/label_2" --out "$ssd7_data" >&2
ssd300_data=Checkpoints/bench/pennfudan-300.h5
[ -f "$ssd300_data" ] || "$bin" data detection --format voc --images ../shared/data/pennfudan/PennFudanPed/PNGImages \
  --labels ../shared/data/pennfudan/PennFudanPed/Annotation --out "$ssd300_data" --height 300 --width 300 >&2

name=stbench$$ prefix=10.231.9
out=$(mktemp -d)
trap 'Launch/netns.sh down "$name" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
trap 'exit 130' INT TERM
Launch/netns.sh up "$name" 2 "$prefix"
Launch/netns.sh hostfile "$name" 2 "$out"
export STARLING_BIN=$bin

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p')"
"$bin" bench --only conv --threads 1 | head -1
echo "links: tc tbf at RATE${delay:+ + netem delay $delay} on both ends of each host's veth${delay:+ (a round trip crosses 4 delays)}; $steps steps an epoch, epoch $epochs of $epochs timed"

arguments() { # model -> train arguments
    case $1 in
    ssd7) echo "--model ssd7 --data $ssd7_data --batch-size 16" ;;
    ssd300) echo "--model ssd300 --width-multiplier 0.25 --data $ssd300_data --batch-size 8" ;;
    esac
}
variant_flags() {
    case $1 in
    fp32) echo "" ;;
    fp32-1mb) echo "--bucket-mb 1" ;;
    bf16) echo "--gradient-precision bf16" ;;
    fp16) echo "--gradient-precision fp16" ;;
    esac
}
# Images/s of the timed (last) epoch, from the run's CSV log (the global rate, written by rank 0).
rate() { # log-csv
    tail -1 "$1" | cut -d, -f7 | xargs printf "%.2f"
}
rx() { ip netns exec "$name-h1" cat /sys/class/net/eth0/statistics/rx_bytes; }

for model in $models; do
    args=$(arguments "$model")
    common="--epochs $epochs --steps-per-epoch $steps --val-split none --no-augment --seed 1"
    # shellcheck disable=SC2086
    "$bin" train $args $common --blas-threads 1 --out "$out/one" > "$out/one.log" 2>&1
    one=$(rate "$out/one/$model-log.csv")
    echo "$model 1-rank no-network $one images/s"
    for link in $rates; do
        Launch/netns.sh shape "$name" "$link" "$delay"
        for variant in $variants; do
            before=$(rx)
            # shellcheck disable=SC2086
            ip netns exec "$name-h0" Launch/multihost.sh --agent "$PWD/Launch/netns.sh agent" --rankfile "$out/rankfile" --tcp-only \
                "$out/hostfile" "$prefix.0/24" train $args $common $(variant_flags "$variant") --out "$out/two" > "$out/two.log" 2>&1 \
                || { echo "$model $variant $link: the run failed:"; tail -5 "$out/two.log"; continue; }
            bytes=$(( $(rx) - before ))
            two=$(rate "$out/two/$model-log.csv")
            awk -v m="$model" -v v="$variant" -v l="$link" -v t="$two" -v o="$one" -v b="$bytes" -v n="$((steps * epochs))" \
                'BEGIN { printf "%s %s %s %s images/s, %.2fx one rank, %.2f MB received by host 1 a step\n", m, v, l, t, t / o, b / n / 1048576 }'
            rm -rf "$out/two"
        done
    done
done

if [ -n "${OVERLAP_RATE-1gbit}" ]; then
    Launch/netns.sh shape "$name" "${OVERLAP_RATE-1gbit}" "$delay"
    for bucket in 25 0.016; do
        ip netns exec "$name-h0" Launch/multihost.sh --agent "$PWD/Launch/netns.sh agent" --rankfile "$out/rankfile" --tcp-only \
            "$out/hostfile" "$prefix.0/24" bench --distributed --data "$data" --steps "${OVERLAP_STEPS:-20}" --models conv-ae \
            --batch-sizes 128 --bucket-mb "$bucket" 2>&1 | grep '^conv-ae' | sed "s/^/${OVERLAP_RATE-1gbit} link: /"
    done
fi
