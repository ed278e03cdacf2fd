"""Compares Starling's ONNX export of a suite entry with the PyTorch peer's float64 forward pass (Launch/check-peers.sh):
onnxruntime runs DIR/m.onnx on DIR/input.f32 and each output named in DIR/outputs.json is compared with DIR/outputs.f64
(values inside the graph, its "intermediates", made outputs first: mask-rcnn's pyramid and RPN outputs).
Exit status 1 when the largest difference exceeds 1e-4 of the output's largest magnitude (float32 accumulation)."""
import json, sys, os
import numpy as np, onnxruntime as ort
d = sys.argv[1]
meta = json.load(open(os.path.join(d, "outputs.json")))
image = np.fromfile(os.path.join(d, "input.f32"), dtype="<f4").reshape(meta["input"])
model_path = os.path.join(d, "m.onnx")
names = list(meta["outputs"])
if meta.get("intermediates"):
    # Values inside the graph (mask-rcnn's pyramid and RPN outputs): the output of the k-th Conv node reading the named
    # weight, made a graph output under the row's name through an Identity node.
    import onnx
    model = onnx.load(model_path)
    for row, (weight, k) in meta["intermediates"].items():
        convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] == weight]
        if len(convs) <= k:
            sys.exit(f"{row}: the graph has {len(convs)} convolution(s) of {weight}, not {k + 1}")
        model.graph.node.append(onnx.helper.make_node("Identity", [convs[k].output[0]], [row]))
        model.graph.output.append(onnx.helper.make_tensor_value_info(row, onnx.TensorProto.FLOAT, None))
    model_path = os.path.join(d, "m-intermediates.onnx")
    onnx.save(model, model_path)
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
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
