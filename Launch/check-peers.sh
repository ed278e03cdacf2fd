#!/usr/bin/env bash
# Checks that the suite's PyTorch peers of SSD300, the YOLOs and Fast R-CNN are Starling's networks (issue 18 item 4): the peer's
# weights (random batch-norm statistics included) go into Starling under its names (`starling convert --from
# safetensors`, which checks every tensor's shape and that none is missing or extra), Starling exports its inference
# graph (`convert --to onnx`), and onnxruntime's outputs on one synthetic image are compared with the peer's forward
# pass in float64 (Launch/peer_compare_onnx.py; fast-rcnn's on five fixed RoIs; mask-rcnn's on the pyramid P2-P5 and the
# RPN's outputs on P2-P6 read inside the graph, whose detections come out of NMS over an untrained RPN's near-tied
# logits). faster-rcnn: the weights' shapes only (the same NMS; its backbone and head are fast-rcnn's). Needs a starling binary (STARLING_BIN, or swift build's release),
# PyTorch (TORCH_VENV, default .build/torch-venv) and python3 with onnxruntime and numpy (Launch/test.sh installs them).
#   Launch/check-peers.sh                      ssd300 yolov2 yolov1 yolov3 fast-rcnn faster-rcnn mask-rcnn
#   Launch/check-peers.sh yolov2               these entries only
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${STARLING_BIN:-}" ]; then
  bin=$STARLING_BIN
else
  swift build -c release --product starling >&2
  bin=$(swift build -c release --show-bin-path)/starling
fi
venv=${TORCH_VENV:-.build/torch-venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for entry in "${@:-ssd300 yolov2 yolov1 yolov3 fast-rcnn faster-rcnn mask-rcnn}"; do
  for name in $entry; do
    dir="$work/$name"
    # --torch-roi-ops: torchvision's RoI ops where they load, plain torch's otherwise (the R-CNN peers)
    "$venv/bin/python" Launch/peer_suite.py "$name" --threads "$(nproc)" --torch-roi-ops --export "$dir"
    "$bin" convert --from safetensors "$dir/weights.safetensors" "$dir/ck.h5" --model "$name" > /dev/null
    "$bin" convert "$dir/ck.h5" "$dir/m.onnx" --to onnx > /dev/null
    echo "$name: every weight's shape as Starling's"
    if [ "$name" = faster-rcnn ]; then rm -rf "$dir"; continue; fi
    python3 Launch/peer_compare_onnx.py "$dir" | sed "s/^/$name: /" || { echo "$name: the peer's forward pass differs from Starling's"; status=1; }
    rm -rf "$dir"
  done
done
exit $status
