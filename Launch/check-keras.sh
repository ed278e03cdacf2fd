#!/usr/bin/env bash
# Checks Starling's Keras conversion both ways in the course's own framework, tf.keras 2.15 (Keras 2). Out: tf.keras
# builds the Keras tutorial's fc-ae and ssd_keras's SSD7 with their layer names, loads `starling convert --to keras`
# files with load_weights(by_name=True), and its outputs are compared with onnxruntime running `--to onnx` of the same
# checkpoint (which the test suite holds to Starling's own outputs). In: weights that tf.keras itself saved
# (save_weights, random batch-norm statistics) are imported with `--from keras`, exported to ONNX and compared with
# tf.keras's predictions. Not part of CI: it installs TensorFlow (~600 MB) into a venv.
#   Launch/check-keras.sh FC_AE_CHECKPOINT SSD7_CHECKPOINT      (an SSD7 at 300x480 with 5 object classes)
set -euo pipefail
cd "$(dirname "$0")/.."
fc=${1:?fc-ae checkpoint}
ssd=$(cd "$(dirname "${2:?ssd7 checkpoint}")" && pwd)/$(basename "$2")
venv=${KERAS_VENV:-.build/keras-venv}   # the venv Launch/test.sh makes
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import tensorflow, onnxruntime" 2>/dev/null || "$venv/bin/pip" install --quiet "tensorflow-cpu==2.15.*" onnxruntime
swift build -c release --product starling >&2
bin=$(swift build -c release --show-bin-path)/starling
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" convert --to keras "$fc" "$work/fc-keras.h5" > /dev/null
"$bin" convert --to onnx "$fc" "$work/fc.onnx" > /dev/null
"$bin" convert --to keras "$ssd" "$work/ssd7-keras.h5" > /dev/null
"$bin" convert --to onnx "$ssd" "$work/ssd7.onnx" > /dev/null
cd "$work"
TF_CPP_MIN_LOG_LEVEL=3 "$venv/bin/python" - <<'EOF'
import numpy as np, onnxruntime as ort
from tensorflow import keras
L = keras.layers
rng = np.random.default_rng(0)

# fc-ae as the Keras tutorial builds it.
inp = keras.Input(shape=(784,))
code = L.Dense(32, activation='relu', name='encoder')(inp)
fc = keras.Model(inp, [L.Dense(784, activation='sigmoid', name='decoder')(code), code])
fc.load_weights('fc-keras.h5', by_name=True)
x = rng.uniform(0, 1, size=(4, 784)).astype(np.float32)
r, c = fc.predict(x, verbose=0)
rr, rc = ort.InferenceSession('fc.onnx').run(['reconstruction', 'code'], {'images': x})
print(f'fc-ae: reconstruction max |diff| {np.abs(r - rr).max():.2e}, code {np.abs(c - rc).max():.2e}')

# SSD7 as ssd_keras's keras_ssd7.py builds it, up to the predictions (the anchor layers hold no weights).
n_classes, boxes = 6, 4
inp = keras.Input(shape=(300, 480, 3))
h = L.Lambda(lambda z: (z - 127.5) / 127.5)(inp)
feats = []
for k, f in enumerate([32, 48, 64, 64, 48, 48, 32], start=1):
    h = L.Conv2D(f, (5, 5) if k == 1 else (3, 3), padding='same', name=f'conv{k}')(h)
    h = L.ELU(name=f'elu{k}')(L.BatchNormalization(axis=3, momentum=0.99, name=f'bn{k}')(h))
    if k >= 4: feats.append(h)
    if k <= 6: h = L.MaxPooling2D(pool_size=(2, 2), name=f'pool{k}')(h)
classes = [L.Reshape((-1, n_classes))(L.Conv2D(boxes * n_classes, (3, 3), padding='same', name=f'classes{k}')(t)) for k, t in zip(range(4, 8), feats)]
offsets = [L.Reshape((-1, 4))(L.Conv2D(boxes * 4, (3, 3), padding='same', name=f'boxes{k}')(t)) for k, t in zip(range(4, 8), feats)]
ssd7 = keras.Model(inp, [L.Activation('softmax')(L.Concatenate(axis=1)(classes)), L.Concatenate(axis=1)(offsets)])
ssd7.load_weights('ssd7-keras.h5', by_name=True)
x = rng.uniform(0, 255, size=(2, 3, 300, 480)).astype(np.float32)
p, o = ssd7.predict(x.transpose(0, 2, 3, 1), verbose=0)
rp, ro = ort.InferenceSession('ssd7.onnx').run(['class_probabilities', 'box_offsets'], {'images': x})
print(f'ssd7: class probabilities max |diff| {np.abs(p - rp).max():.2e}, box offsets {np.abs(o - ro).max():.2e} '
      f'(largest offset {np.abs(ro).max():.1f}), same top class on {(p.argmax(-1) == rp.argmax(-1)).mean() * 100:.1f} % of anchors')

# The other way: fresh tf.keras weights, saved by tf.keras itself, for Starling to import.
for layer in ssd7.layers:
    if isinstance(layer, L.BatchNormalization):
        g, b, m, v = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape), rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2, v.shape)])
ssd7.save_weights('tf-saved.h5')
p, o = ssd7.predict(x.transpose(0, 2, 3, 1), verbose=0)
np.save('tf-probs.npy', p); np.save('tf-offsets.npy', o); np.save('x.npy', x)
EOF
"$bin" convert --from keras tf-saved.h5 imported.h5 --model ssd7 --config-from "$ssd" > /dev/null
"$bin" convert --to onnx imported.h5 imported.onnx > /dev/null
"$venv/bin/python" - <<'EOF'
import numpy as np, onnxruntime as ort
p, o, x = np.load('tf-probs.npy'), np.load('tf-offsets.npy'), np.load('x.npy')
rp, ro = ort.InferenceSession('imported.onnx').run(['class_probabilities', 'box_offsets'], {'images': x})
print(f'ssd7 saved by tf.keras, imported: class probabilities max |diff| {np.abs(p - rp).max():.2e}, '
      f'box offsets {np.abs(o - ro).max():.2e} (largest offset {np.abs(o).max():.1f})')
EOF
