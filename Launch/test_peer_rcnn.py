"""Checks of the R-CNN peers (Launch/peer_rcnn.py), run by Launch/test.sh where a torch venv exists:

- the plain-torch RoIAlign against torchvision's own values and gradients (Tests/StarlingCoreTests/Fixtures/
  RoIAlignFixtures.swift, made from torchvision 0.28.0), float64;
- the plain-torch RoI max pooling against a loop-by-loop transcription of torchvision's CPU kernel (forward and the
  argmax gradient), with RoIs crossing every border, tiny RoIs and RoIs wholly outside the map;
- NMS and IoU against brute-force loops;
- where torchvision's ops load, the plain-torch ops against them on the suite's shapes;
- peer_suite.py's refusal without torchvision: exit 2 and one line on stderr, no traceback;
- the mask-rcnn peer (Launch/peer_maskrcnn.py): its synthetic masks against their boxes, one step's loss and gradients on
  the plain-torch ops, and, where a starling binary is at hand (STARLING_BIN, or .build/debug or .build/release, which
  Launch/test.sh builds first), its weights loaded into Starling's Mask R-CNN under Starling's names (`starling convert
  --from safetensors` checks every tensor's shape, none missing or extra: the parameter counts are equal).

    TORCH_VENV/bin/python Launch/test_peer_rcnn.py
"""
import math
import os
import re
import subprocess
import sys
import tempfile

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import peer_rcnn  # noqa: E402

failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def swift_array(text, name):
    return [float(v) for v in re.search(name + r": \[([^\]]*)\]", text).group(1).split(",")]


def roi_align_fixtures():
    text = open(os.path.join(here, "..", "Tests", "StarlingCoreTests", "Fixtures", "RoIAlignFixtures.swift")).read()
    shape = [int(v) for v in re.search(r"featureShape = \[([^\]]*)\]", text).group(1).split(",")]
    values = re.search(r"static let features: \[Float\] = \[([^\]]*)\]", text).group(1).split(",")
    features = torch.tensor([float(v) for v in values], dtype=torch.float64).reshape(shape)
    for block in re.findall(r"Case\((.*?)\),\n", text, re.S):
        fields = dict(re.findall(r"(\w+): (\"[^\"]*\"|\[[^\]]*\]|[\w.\-]+)", block))
        yield (fields["name"].strip('"'), features, torch.tensor(swift_array(block, "rois"), dtype=torch.float64).reshape(-1, 5),
               float(fields["spatialScale"]), int(fields["outputHeight"]), int(fields["outputWidth"]), int(fields["samplingRatio"]),
               fields["aligned"] == "true", torch.tensor(swift_array(block, "output"), dtype=torch.float64),
               torch.tensor(swift_array(block, "featureGradient"), dtype=torch.float64))


def test_roi_align():
    tested = 0
    for name, features, rois, scale, oh, ow, ratio, aligned, output, gradient in roi_align_fixtures():
        x = features.clone().requires_grad_(True)
        out = peer_rcnn.roi_align(x, rois, (oh, ow), scale, ratio, aligned)
        weights = torch.tensor([0.5 + (i % 7) / 7 for i in range(out.numel())], dtype=torch.float64).reshape(out.shape)
        (out * weights).sum().backward()
        check(torch.allclose(out.detach().flatten(), output, atol=1e-12), f"roi_align {name}: values as torchvision's")
        check(torch.allclose(x.grad.flatten(), gradient, atol=1e-12), f"roi_align {name}: feature gradients as torchvision's")
        tested += 1
    check(tested == 4, f"roi_align: {tested} fixtures compared, fixed and adaptive sampling (4 expected)")


def roi_pool_reference(features, rois, oh, ow, scale):
    """torchvision/csrc/ops/cpu/roi_pool_kernel.cpp, loop by loop: output and argmax (flat index in the map, -1)."""
    n, c, height, width = features.shape
    out = torch.zeros(len(rois), c, oh, ow, dtype=features.dtype)
    argmax = torch.full((len(rois), c, oh, ow), -1, dtype=torch.long)
    for r, roi in enumerate(rois.tolist()):
        b = int(roi[0])
        # std::round: halves away from zero
        x1, y1, x2, y2 = (int(math.copysign(math.floor(abs(v * scale) + 0.5), v * scale)) for v in roi[1:])
        rw, rh = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bh, bw = rh / oh, rw / ow
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(int(math.floor(ph * bh)) + y1, 0), height)
                he = min(max(int(math.ceil((ph + 1) * bh)) + y1, 0), height)
                ws = min(max(int(math.floor(pw * bw)) + x1, 0), width)
                we = min(max(int(math.ceil((pw + 1) * bw)) + x1, 0), width)
                empty = he <= hs or we <= ws
                for ch in range(c):
                    best, at = (0.0 if empty else -math.inf), -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if features[b, ch, h, w] > best:
                                best, at = float(features[b, ch, h, w]), h * width + w
                    out[r, ch, ph, pw], argmax[r, ch, ph, pw] = best, at
    return out, argmax


def test_roi_pool():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 160, 128], [1, -40, -20, 50, 60], [0, 100, 70, 200, 180], [1, 30, 30, 34, 33],
                         [0, 170, 140, 230, 200], [1, 8, 8, 8, 8], [0, -5, 40, 175, 143.9], [1, 24, 24, 56, 120]],
                        dtype=torch.float64)
    scale = 1.0 / 16
    x = features.clone().requires_grad_(True)
    out = peer_rcnn.roi_pool(x, rois, (3, 4), scale)
    expected, argmax = roi_pool_reference(features, rois, 3, 4, scale)
    check(torch.equal(out.detach(), expected), "roi_pool: values as torchvision's CPU kernel (borders, tiny and outside RoIs)")
    weights = torch.rand(out.shape, generator=gen, dtype=torch.float64)
    (out * weights).sum().backward()
    grad = torch.zeros_like(features)
    for r in range(len(rois)):
        b = int(rois[r, 0])
        for idx in zip(*[t.tolist() for t in torch.nonzero(argmax[r] >= 0, as_tuple=True)]):
            ch, ph, pw = idx
            a = int(argmax[r, ch, ph, pw])
            grad[b, ch, a // features.shape[3], a % features.shape[3]] += weights[r, ch, ph, pw]
    check(torch.allclose(x.grad, grad, atol=1e-12), "roi_pool: gradients to each bin's argmax, as torchvision's")


def test_nms_and_iou():
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(300, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=gen) * 60], 1)
    scores = torch.rand(300, generator=gen)
    scores[10] = scores[11]   # a tie: the earlier index first, as torchvision's stable sort
    iou = peer_rcnn.box_iou(boxes, boxes[:40])

    def pair(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    brute = torch.tensor([[pair(a, b) for b in boxes[:40].tolist()] for a in boxes.tolist()])
    check(torch.allclose(iou, brute, atol=1e-6), "box_iou: as pair by pair")
    kept = peer_rcnn.nms(boxes, scores, 0.5).tolist()
    order = sorted(range(300), key=lambda i: (-float(scores[i]), i))
    greedy = []
    for i in order:
        if all(pair(boxes[i].tolist(), boxes[j].tolist()) <= 0.5 for j in greedy):
            greedy.append(i)
    check(kept == greedy, f"nms: the greedy pass's {len(greedy)} boxes in order")


def test_against_torchvision():
    try:
        ops = peer_rcnn.torchvision_ops()
    except peer_rcnn.MissingRoIOps as missing:
        print(f"skip the comparison with torchvision's C++ ops: {missing}")
        return
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(2, 16, 23, 31, generator=gen)
    rois = peer_rcnn.roi_tensor([peer_rcnn.random_regions(gen, 64, 120), peer_rcnn.random_regions(gen, 64, 500)])
    check(torch.equal(peer_rcnn.roi_pool(features, rois, (7, 7), 1 / 16), ops.roi_pool(features, rois, (7, 7), 1 / 16)),
          "roi_pool: equal to torchvision's on the suite's shapes")
    images = torch.rand(2, 3, 375, 500, generator=gen) * 2 - 1
    windows = peer_rcnn.roi_tensor([peer_rcnn.random_regions(gen, 64, 500) * 1.3 - 20, peer_rcnn.random_regions(gen, 64, 500)])
    check(torch.allclose(peer_rcnn.roi_align(images, windows, (64, 64), 1.0, 1, True), ops.roi_align(images, windows, (64, 64), 1.0, 1, True),
                         atol=1e-5), "roi_align: as torchvision's on rcnn's windows")
    boxes = peer_rcnn.random_regions(gen, 2000, 200)
    scores = torch.rand(2000, generator=gen)
    check(torch.equal(peer_rcnn.nms(boxes, scores, 0.7), ops.nms(boxes, scores, 0.7)), "nms: equal to torchvision's")


def test_refusal_without_torchvision():
    with tempfile.TemporaryDirectory() as shadow:
        os.makedirs(os.path.join(shadow, "torchvision"))
        with open(os.path.join(shadow, "torchvision", "__init__.py"), "w") as f:
            f.write("raise ImportError('torchvision hidden by test_peer_rcnn.py')\n")
        env = dict(os.environ, PYTHONPATH=shadow)
        run = subprocess.run([sys.executable, os.path.join(here, "peer_suite.py"), "fast-rcnn", "--check"], env=env,
                             capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    check(run.returncode == 2 and len(lines) == 1 and "needs torchvision" in lines[0] and "Traceback" not in run.stderr,
          f"peer_suite.py without torchvision: exit {run.returncode}, {len(lines)} line(s) on stderr: {lines[:1]}")


def test_steps():
    """One training step of each peer on the plain-torch ops: a finite loss, gradients on every parameter."""
    for name in peer_rcnn.RCNN_ENTRIES:
        torch.manual_seed(1)
        model, x, loss_of = peer_rcnn.entry(name, torch.Generator().manual_seed(5), peer_rcnn.TORCH_OPS)
        model.train()
        loss = loss_of(model, x)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        check(math.isfinite(loss.item()) and not missing, f"{name}: one step's loss {loss.item():.4g}, gradients missing on {missing}")


def test_mask_rcnn():
    """The mask-rcnn peer: frames, one step on the plain-torch ops, its weights in Starling's network."""
    import peer_maskrcnn
    images, truths, labels, masks = peer_maskrcnn.synthetic_frames(torch.Generator().manual_seed(5))
    check(images.shape == (2, 3, 192, 256) and all(len(t) == 3 for t in truths), f"mask-rcnn frames: images {tuple(images.shape)}")
    ys, xs = torch.meshgrid(torch.arange(192) + 0.5, torch.arange(256) + 0.5, indexing="ij")
    for k in range(2):
        for box, mask in zip(truths[k].tolist(), masks[k]):
            x1, y1, x2, y2 = box
            inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
            ellipse = math.pi / 4 * (x2 - x1) * (y2 - y1)
            count = float(mask.sum())
            check(not bool((mask.bool() & ~inside).any()) and abs(count - ellipse) <= (x2 - x1) + (y2 - y1),
                  f"mask-rcnn frame {k}: mask of {count:.0f} pixels inside its box {[round(v, 1) for v in box]} (ellipse {ellipse:.0f})")
    torch.manual_seed(1)
    model, x, loss_of = peer_maskrcnn.entry(torch.Generator().manual_seed(5), peer_rcnn.TORCH_OPS)
    model.train()
    loss = loss_of(model, x)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    check(math.isfinite(loss.item()) and not missing, f"mask-rcnn: one step's loss {loss.item():.4g}, gradients missing on {missing}")
    binary = os.environ.get("STARLING_BIN") or next((b for b in (os.path.join(here, "..", ".build", c, "starling") for c in ("debug", "release"))
                                                     if os.path.exists(b)), None)
    if binary is None:
        print("skip mask-rcnn's weights in Starling: no starling binary (STARLING_BIN, .build/debug, .build/release)")
        return
    with tempfile.TemporaryDirectory() as work:
        export = subprocess.run([sys.executable, os.path.join(here, "peer_suite.py"), "mask-rcnn", "--torch-roi-ops", "--export", work],
                                capture_output=True, text=True)
        convert = subprocess.run([binary, "convert", "--from", "safetensors", os.path.join(work, "weights.safetensors"),
                                  os.path.join(work, "ck.h5"), "--model", "mask-rcnn"], capture_output=True, text=True)
    count = sum(p.numel() for p in model.parameters())
    check(export.returncode == 0 and convert.returncode == 0,
          f"mask-rcnn: the peer's {count:,} parameters and batch-norm statistics load into Starling's Mask R-CNN, every shape "
          f"checked ({binary}: exit {convert.returncode} {convert.stderr.strip()[-300:]}{export.stderr.strip()[-300:]})")


for test in (test_roi_align, test_roi_pool, test_nms_and_iou, test_against_torchvision, test_refusal_without_torchvision, test_steps,
             test_mask_rcnn):
    test()
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
