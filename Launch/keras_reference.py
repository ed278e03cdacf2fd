# The reference Keras models for Starling's Keras conversion, in tf.keras 2.15 (Keras 2, the course's framework):
# the Keras tutorial's fc-ae and ssd_keras's SSD7 (keras_ssd7.py up to its predictions; the anchor layers hold no
# weights), with their layer names. Used by Tests/StarlingModelsTests/KerasRuntimeTests.swift and Launch/check-keras.sh.
#   python keras_reference.py load|save fc-ae|ssd7 WEIGHTS.h5 INPUT.bin SHAPE OUT_DIR
# load: load_weights(WEIGHTS, by_name=True). save: random batch-norm statistics, then save_weights(WEIGHTS).
# Then runs the model on INPUT (raw float32 of SHAPE, a JSON list; NCHW pixels for SSD7) and writes each output as
# raw float32: reconstruction.bin and code.bin, or class_probabilities.bin and box_offsets.bin.
import json, sys
import numpy as np
from tensorflow import keras
L = keras.layers
mode, family, weights, input_path, shape, out_dir = sys.argv[1:7]
shape = json.loads(shape)
if family == 'fc-ae':
    inp = keras.Input(shape=(shape[1],))
    code = L.Dense(32, activation='relu', name='encoder')(inp)
    model = keras.Model(inp, [L.Dense(shape[1], activation='sigmoid', name='decoder')(code), code])
    names = ['reconstruction', 'code']
else:
    n_classes, boxes = 6, 4
    inp = keras.Input(shape=(shape[2], shape[3], 3))
    h = L.Lambda(lambda z: (z - 127.5) / 127.5)(inp)
    feats = []
    for k, f in enumerate([32, 48, 64, 64, 48, 48, 32], start=1):
        h = L.Conv2D(f, (5, 5) if k == 1 else (3, 3), padding='same', name=f'conv{k}')(h)
        h = L.ELU(name=f'elu{k}')(L.BatchNormalization(axis=3, momentum=0.99, name=f'bn{k}')(h))
        if k >= 4: feats.append(h)
        if k <= 6: h = L.MaxPooling2D(pool_size=(2, 2), name=f'pool{k}')(h)
    classes = [L.Reshape((-1, n_classes))(L.Conv2D(boxes * n_classes, (3, 3), padding='same', name=f'classes{k}')(t)) for k, t in zip(range(4, 8), feats)]
    offsets = [L.Reshape((-1, 4))(L.Conv2D(boxes * 4, (3, 3), padding='same', name=f'boxes{k}')(t)) for k, t in zip(range(4, 8), feats)]
    model = keras.Model(inp, [L.Activation('softmax')(L.Concatenate(axis=1)(classes)), L.Concatenate(axis=1)(offsets)])
    names = ['class_probabilities', 'box_offsets']
if mode == 'load':
    model.load_weights(weights, by_name=True)
else:
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape), rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2, v.shape)])
    model.save_weights(weights)
x = np.fromfile(input_path, dtype=np.float32).reshape(shape)
if family != 'fc-ae': x = x.transpose(0, 2, 3, 1)
for name, value in zip(names, model.predict(x, verbose=0)):
    np.ascontiguousarray(value, dtype=np.float32).tofile(f'{out_dir}/{name}.bin')
