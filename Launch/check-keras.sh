#!/usr/bin/env bash
# Checks Starling's Keras conversion both ways on real checkpoints in the course's own framework, tf.keras 2.15
# (Keras 2), with the reference models of Launch/keras_reference.py. Out: tf.keras loads `starling convert --to keras`
# files with load_weights(by_name=True); its outputs are compared with onnxruntime running `--to onnx` of the same
# checkpoint (which the test suite holds to Starling's own outputs). In: weights that tf.keras saved itself (random
# batch-norm statistics) are imported with `--from keras`, exported to ONNX and compared with tf.keras's outputs.
# KerasRuntimeTests does the same on random weights in CI; this script installs TensorFlow (~600 MB) into the venv
# Launch/test.sh makes, if it is not there yet.
#   Launch/check-keras.sh FC_AE_CHECKPOINT SSD7_CHECKPOINT      (an SSD7 at 300x480 with 5 object classes)
set -euo pipefail
cd "$(dirname "$0")/.."
fc=$(cd "$(dirname "${1:?fc-ae checkpoint}")" && pwd)/$(basename "$1")
ssd=$(cd "$(dirname "${2:?ssd7 checkpoint}")" && pwd)/$(basename "$2")
venv=${KERAS_VENV:-.build/keras-venv}   # the venv Launch/test.sh makes
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
reference=$PWD/Launch/keras_reference.py
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import tensorflow, onnxruntime" 2>/dev/null || "$venv/bin/pip" install --quiet "tensorflow-cpu==2.15.*" onnxruntime
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export TF_CPP_MIN_LOG_LEVEL=3
"$bin" convert --to keras "$fc" fc-keras.h5 > /dev/null
"$bin" convert --to onnx "$fc" fc.onnx > /dev/null
"$bin" convert --to keras "$ssd" ssd7-keras.h5 > /dev/null
"$bin" convert --to onnx "$ssd" ssd7.onnx > /dev/null

# compare FAMILY ONNX_FILE: the reference's outputs (in keras/) against onnxruntime's on the same input.
compare() {
  "$venv/bin/python" - "$1" "$2" <<'EOF'
import json, sys
import numpy as np, onnxruntime as ort
family, model = sys.argv[1:3]
shape = json.load(open('shape.json'))
x = np.fromfile('input.bin', dtype=np.float32).reshape(shape)
names = ['reconstruction', 'code'] if family == 'fc-ae' else ['class_probabilities', 'box_offsets']
reference = ort.InferenceSession(model).run(names, {'images': x})
for name, r in zip(names, reference):
    k = np.fromfile(f'keras/{name}.bin', dtype=np.float32).reshape(r.shape)
    print(f'  {name}: max |diff| {np.abs(k - r).max():.2e} (largest value {np.abs(r).max():.2f})')
if family != 'fc-ae':
    k = np.fromfile('keras/class_probabilities.bin', dtype=np.float32).reshape(reference[0].shape)
    print(f'  same top class on {(k.argmax(-1) == reference[0].argmax(-1)).mean() * 100:.1f} % of anchors')
EOF
}
# input FAMILY SHAPE SCALE: random images in [0, SCALE).
input() {
  echo "$2" > shape.json
  "$venv/bin/python" -c "import json, numpy as np; np.random.default_rng(0).uniform(0, $3, json.loads('$2')).astype(np.float32).tofile('input.bin')"
  mkdir -p keras
}

input fc-ae "[4, 784]" 1
"$venv/bin/python" "$reference" load fc-ae fc-keras.h5 input.bin "[4, 784]" keras
echo "fc-ae, Starling's weights loaded by tf.keras, against onnxruntime:"; compare fc-ae fc.onnx
input ssd7 "[2, 3, 300, 480]" 255
"$venv/bin/python" "$reference" load ssd7 ssd7-keras.h5 input.bin "[2, 3, 300, 480]" keras
echo "ssd7, Starling's weights loaded by tf.keras, against onnxruntime:"; compare ssd7 ssd7.onnx
"$venv/bin/python" "$reference" save ssd7 tf-saved.h5 input.bin "[2, 3, 300, 480]" keras
"$bin" convert --from keras tf-saved.h5 imported.h5 --model ssd7 --config-from "$ssd" > /dev/null
"$bin" convert --to onnx imported.h5 imported.onnx > /dev/null
echo "ssd7, weights saved by tf.keras imported by Starling, against tf.keras:"; compare ssd7 imported.onnx
