"""Compares Starling's ONNX export of a suite entry with the PyTorch peer's float64 forward pass (Launch/check-peers.sh):
onnxruntime runs DIR/m.onnx on DIR/input.f32 and each output named in DIR/outputs.json is compared with DIR/outputs.f64.
Exit status 1 when the largest difference exceeds 1e-4 of the output's largest magnitude (float32 accumulation)."""
import json, sys, os
import numpy as np, onnxruntime as ort
d = sys.argv[1]
meta = json.load(open(os.path.join(d, "outputs.json")))
image = np.fromfile(os.path.join(d, "input.f32"), dtype="<f4").reshape(meta["input"])
session = ort.InferenceSession(os.path.join(d, "m.onnx"), providers=["CPUExecutionProvider"])
names = list(meta["outputs"])
feeds = {"images": image}
if os.path.exists(os.path.join(d, "rois.f32")):   # fast-rcnn's graph scores given RoIs [R, 5]
    feeds["rois"] = np.fromfile(os.path.join(d, "rois.f32"), dtype="<f4").reshape(-1, 5)
got = dict(zip(names, session.run(names, feeds)))
raw = np.fromfile(os.path.join(d, "outputs.f64"), dtype="<f8")
offset, worst = 0, 0.0
for name, shape in meta["outputs"].items():
    count = int(np.prod(shape))
    want = raw[offset:offset + count].reshape(shape)
    offset += count
    error = np.abs(got[name].astype(np.float64) - want).max() / max(1e-12, np.abs(want).max())
    print(f"{name} {shape}: max |ONNX - peer| / max |peer| = {error:.2e}")
    worst = max(worst, error)
sys.exit(0 if worst < 1e-4 else 1)
