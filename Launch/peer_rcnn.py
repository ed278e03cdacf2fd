"""PyTorch peers of the suite's R-CNN family (Launch/peer_suite.py's faster-rcnn, fast-rcnn and rcnn entries): the same
networks as Starling's suite entries, with the same data, samplers, targets and losses per step.

- fast-rcnn (FastRCNN.swift, TwoStage/): VGG16's convolutions at width 0.25 (16 ... 128 channels) with batch norm
  (Keras's epsilon 1e-3, momentum 0.99) and ReLU, 2x2 max pooling after blocks 1-4 (stride 16), input minus the channel
  means (123, 117, 104); each image's 2,000 stored proposals plus its boxes, 64 RoIs an image at 25 % foreground
  (IoU >= 0.5 with a box), background IoU in [0.1, 0.5), the rest ignored; RoI max pooling 7 x 7 at 1/16; fc6 and fc7 of
  1,024 with ReLU; cls_score (21 VOC classes) and class-specific bbox_pred; cross-entropy plus the smooth L1 (beta 1) of
  the foreground RoIs' (10, 10, 5, 5)-coded deltas, divided by the RoIs.
- faster-rcnn (FasterRCNN.swift): the same backbone and RoI head (128 RoIs an image) on the proposals of an RPN in
  torchvision's manner: 3x3 convolution + ReLU, 1x1 objectness (one logit an anchor) and deltas; anchors 128, 256, 512
  x ratios 0.5, 1, 2 at stride 16 (torchvision's AnchorGenerator: rounded base anchors, cell corners); 256 anchors an
  image at half positive (IoU >= 0.7 or a box's best, negative under 0.3); loss BCE plus smooth L1 (beta 1/9) over the
  sampled anchors; proposals: top 2,000 logits, decoded (1, 1, 1, 1), clipped, sides under 1e-3 dropped, NMS at 0.7,
  best 2,000 in training (1,000 / 300 in inference).
- rcnn (RCNN.swift): each proposal dilated for 16 x 64 / 227 pixels of context, warped to 64 x 64 by RoIAlign (one
  sample a pixel, aligned) from the image scaled to [-1, 1]; four 3x3 convolutions (16, 32, 64, 64: width 0.5) with
  ReLU and 2x2 max pooling, fc6 and fc7 of 256, a 2-class softmax; 64 windows an image at 25 % foreground (IoU >= 0.5),
  the rest background; codes (1, 1, 1, 1).

The RPN, samplers, matchers and losses are written here in torch after torchvision's (torchvision/models/detection:
rpn.py, roi_heads.py, _utils.py), not taken from it: torchvision's GeneralizedRCNN resizes and normalises the images
itself, its RoI heads sample background IoU in [0, 0.5) (Starling's Fast R-CNN in [0.1, 0.5)) and score every proposal
in eval mode where Starling's suite runs the loss, so composing its classes would not do Starling's work per step.
The RoI ops (roi_pool, roi_align, nms, box_iou) are torchvision's C++ ops when torchvision is installed; without it
the peer stops with one line, unless --torch-roi-ops asks for the plain-torch versions below (weaker: a Python loop over
the RoIs for the max pooling, a numpy loop for NMS; the row says so).

    python Launch/peer_rcnn.py [THREADS]     the RoI ops' milliseconds on the suite's shapes (op_times) and their part
                                             of each peer's step in CPU time (step_shares; mask-rcnn's too)
    python Launch/peer_rcnn.py --memory ENTRY [--channels-last]
                                             where the peer's training step holds memory (memory_breakdown)
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RCNN_ENTRIES = ("faster-rcnn", "fast-rcnn", "rcnn")
HEIGHT, WIDTH = 375, 500
VOC_CLASSES = 21


# --------------------------------------------------------------------------------------------------------- the RoI ops
class RoIOps:
    """roi_pool, roi_align, nms and box_iou with torchvision.ops' signatures, and a note for the row."""

    def __init__(self, roi_pool, roi_align, nms, box_iou, note):
        self.roi_pool, self.roi_align, self.nms, self.box_iou, self.note = roi_pool, roi_align, nms, box_iou, note


class MissingRoIOps(Exception):
    pass


def torchvision_ops():
    """torchvision.ops with its C++ kernels loaded, or MissingRoIOps with one line saying why."""
    try:
        import torchvision
        from torchvision import ops
        ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)   # the compiled extension answers
    except Exception as error:                          # ImportError, or the ops missing from a CUDA-only build
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise MissingRoIOps(f"torchvision's RoI ops do not load in torch {torch.__version__} ({type(error).__name__}: {reason})")
    return RoIOps(ops.roi_pool, ops.roi_align, ops.nms, ops.box_iou, f"RoI ops torchvision {torchvision.__version__} (C++)")


def box_iou(a, b):
    """IoU [len(a), len(b)] of corner boxes (torchvision.ops.box_iou)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes, scores, iou_threshold):
    """Greedy NMS (torchvision.ops.nms): indices kept, highest score first (ties in index order). py-faster-rcnn's
    numpy loop: each kept box's IoU (float32, torchvision's formula) with the boxes still standing, those over the
    threshold dropped, so the work shrinks with what is suppressed."""
    order = torch.sort(scores, descending=True, stable=True).indices.numpy()
    x1, y1, x2, y2 = boxes.detach().to(torch.float32).numpy().T
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return torch.as_tensor(np.array(keep, dtype=np.int64))


def roi_pool(features, rois, output_size, spatial_scale):
    """Fast R-CNN's RoI max pooling as torchvision's CPU kernel: corners rounded to the feature grid, bins floor/ceil
    over the rounded RoI (at least 1 x 1), clipped to the map, empty bins 0. One adaptive max pooling a RoI over the
    map padded with -inf below and right (a rounded corner may reach one cell past it), which has the same bins."""
    oh, ow = output_size
    n, c, height, width = features.shape
    scaled = rois[:, 1:] * spatial_scale
    corners = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).to(torch.long).tolist()   # std::round: halves away from 0
    images = rois[:, 0].to(torch.long).tolist()
    extents = [(x1, y1, max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)) for x1, y1, x2, y2 in corners]
    left = max([-x for x, _, _, _ in extents] + [0])
    top = max([-y for _, y, _, _ in extents] + [0])
    right = max([x + w - width for x, _, w, _ in extents] + [0])
    bottom = max([y + h - height for _, y, _, h in extents] + [0])
    # Cells outside the map are -inf: a bin's max is over its cells inside the map, a bin with none is 0 below.
    padded = F.pad(features, (left, right, top, bottom), value=-math.inf) if left + right + top + bottom else features
    pooled = []
    for k, (x, y, w, h) in zip(images, extents):
        pooled.append(F.adaptive_max_pool2d(padded[k, :, top + y:top + y + h, left + x:left + x + w], (oh, ow)))
    out = torch.stack(pooled) if pooled else features.new_zeros(0, c, oh, ow)
    return out.masked_fill(torch.isinf(out), 0)


def roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's RoIAlign: each bin the mean of its bilinear samples, samples more than one cell outside the map 0,
    the rest clamped to it (the C++ kernel's rule), through grid_sample per image. The samples a bin: `sampling_ratio`
    on each axis, or (0 or less, adaptive) ceil(RoI side / bins) per RoI and axis as the kernel computes it (a RoI of
    side 0 has none and pools 0); RoIs of the same pair of ratios go through one grid_sample an image."""
    oh, ow = output_size
    offset = 0.5 if aligned else 0.0
    box = rois[:, 1:] * spatial_scale - offset
    size = box[:, 2:] - box[:, :2]
    if not aligned:
        size = size.clamp(min=1.0)
    if sampling_ratio > 0:
        return _roi_align_grid(features, rois[:, 0], box, size, oh, ow, sampling_ratio, sampling_ratio)
    ratios = torch.stack([torch.ceil(size[:, 1] / oh), torch.ceil(size[:, 0] / ow)], dim=1).to(torch.long)
    out = features.new_zeros(rois.shape[0], features.shape[1], oh, ow)
    for sy, sx in torch.unique(ratios, dim=0).tolist():
        rows = ((ratios[:, 0] == sy) & (ratios[:, 1] == sx)).nonzero().flatten()
        if sy > 0 and sx > 0:
            out[rows] = _roi_align_grid(features, rois[rows, 0], box[rows], size[rows], oh, ow, sy, sx)
    return out


def _roi_align_grid(features, images, box, size, oh, ow, sy, sx):
    """RoIAlign of RoIs `box` (corners in map cells, offset applied) of `size`, sy x sx samples a bin."""
    n, c, height, width = features.shape
    steps_y = (torch.arange(oh * sy, dtype=features.dtype) + 0.5) / sy   # bin units
    steps_x = (torch.arange(ow * sx, dtype=features.dtype) + 0.5) / sx
    ys = box[:, 1:2] + steps_y[None, :] * (size[:, 1:2] / oh)         # [R, oh sy]
    xs = box[:, 0:1] + steps_x[None, :] * (size[:, 0:1] / ow)         # [R, ow sx]
    inside = (((ys >= -1) & (ys <= height))[:, :, None] & ((xs >= -1) & (xs <= width))[:, None, :]).to(features.dtype)
    gy = (2 * ys.clamp(0, height - 1) + 1) / height - 1
    gx = (2 * xs.clamp(0, width - 1) + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)   # [R, oh sy, ow sx, (x, y)]
    out = features.new_empty(box.shape[0], c, oh * sy, ow * sx)
    images = images.to(torch.long)
    for k in images.unique().tolist():
        rows = (images == k).nonzero().flatten()
        g = grid[rows].reshape(1, -1, ow * sx, 2)
        sampled = F.grid_sample(features[k:k + 1], g, mode="bilinear", padding_mode="border", align_corners=False)
        out[rows] = sampled[0].reshape(c, len(rows), oh * sy, ow * sx).transpose(0, 1)
    out = out * inside[:, None]
    return F.avg_pool2d(out, (sy, sx)) if sy * sx > 1 else out


TORCH_OPS = RoIOps(roi_pool, roi_align, nms, box_iou,
                   "RoI ops in plain torch (weaker than torchvision's C++ ops: a Python loop over the RoIs, NMS's loop in numpy)")


# -------------------------------------------------------------------------------------------------- boxes and sampling
def encode(boxes, reference, weights):
    """BoxCoder.encode: (dx, dy, dw, dh) taking `reference` to `boxes`, scaled by weights."""
    wx, wy, ww, wh = weights
    pw, ph = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
    px, py = reference[:, 0] + 0.5 * pw, reference[:, 1] + 0.5 * ph
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = boxes[:, 0] + 0.5 * gw, boxes[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)


def decode(deltas, reference, weights):
    """BoxCoder.decode, the size deltas clamped at ln(1000 / 16)."""
    wx, wy, ww, wh = weights
    pw, ph = reference[:, 2] - reference[:, 0], reference[:, 3] - reference[:, 1]
    px, py = reference[:, 0] + 0.5 * pw, reference[:, 1] + 0.5 * ph
    clamp = math.log(1000.0 / 16)
    x, y = px + deltas[:, 0] / wx * pw, py + deltas[:, 1] / wy * ph
    w, h = torch.exp((deltas[:, 2] / ww).clamp(max=clamp)) * pw, torch.exp((deltas[:, 3] / wh).clamp(max=clamp)) * ph
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=1)


def match(iou, high, low, low_quality=False):
    """Matcher: per prediction its best box (>= high), -1 below `low`, -2 between; with low_quality each box's best
    predictions (ties included) matched to their own best box. iou [G, P]."""
    best, boxes = iou.max(0)
    matches = boxes.clone()
    matches[best < high] = -2
    matches[best < low] = -1
    if low_quality:
        top = iou.max(1, keepdim=True).values
        chosen = (iou == top).any(0)
        matches[chosen] = boxes[chosen]
    return matches


def balanced_sample(positive, negative, size, fraction):
    """BalancedSampler: at most size x fraction positives, negatives to fill `size`, drawn at random; sorted indices."""
    pos, neg = positive.nonzero().flatten(), negative.nonzero().flatten()
    p = min(int(size * fraction), len(pos))
    n = min(size - p, len(neg))
    return pos[torch.randperm(len(pos))[:p]].sort().values, neg[torch.randperm(len(neg))[:n]].sort().values


def roi_minibatch(ops, proposals, truths, classes, rois_per_image, foreground_iou, background_iou, weights):
    """FastRCNNTargets: one image's RoIs (its proposals plus its boxes), labels and regression targets."""
    candidates = torch.cat([proposals, truths])
    matches = match(ops.box_iou(truths, candidates), foreground_iou, background_iou)
    fg, bg = balanced_sample(matches >= 0, matches == -2, rois_per_image, 0.25)
    rois = torch.cat([candidates[fg], candidates[bg]])
    labels = torch.cat([classes[matches[fg]], torch.zeros(len(bg), dtype=torch.long)])
    targets = torch.cat([encode(truths[matches[fg]], candidates[fg], weights), torch.zeros(len(bg), 4)])
    return rois, labels, targets


def fast_rcnn_loss(logits, deltas, labels, targets):
    """Fast R-CNN's multi-task loss: mean cross-entropy plus the foreground RoIs' smooth L1 (beta 1) of their class's
    deltas, summed and divided by the RoIs."""
    fg = (labels > 0).nonzero().flatten()
    chosen = deltas.view(len(labels), -1, 4)[fg, labels[fg]]
    box = F.smooth_l1_loss(chosen, targets[fg], beta=1.0, reduction="sum") / max(len(labels), 1)
    return F.cross_entropy(logits, labels) + box


# ---------------------------------------------------------------------------------------------------------- networks
class VGGBackbone(nn.Module):
    """VGGBackbone.swift: VGG16's 13 convolutions x width, batch norm (Keras's defaults) and ReLU, 2x2 pooling after
    blocks 1-4 (stride 16), input minus the channel means."""

    blocks = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]

    def __init__(self, width):
        super().__init__()
        layers, cin = [], 3
        for b, block in enumerate(self.blocks):
            for c in block:
                c = max(4, int(c * width + 0.5))
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]
                cin = c
            if b < len(self.blocks) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.channels = cin
        self.register_buffer("means", torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        return self.features(images - self.means)


class RoIHead(nn.Module):
    """FastRCNNPredictor.swift: RoI max pooling 7 x 7, fc6 and fc7 with ReLU, cls_score and bbox_pred."""

    def __init__(self, channels, hidden, classes):
        super().__init__()
        self.fc6, self.fc7 = nn.Linear(channels * 49, hidden), nn.Linear(hidden, hidden)
        self.cls_score, self.bbox_pred = nn.Linear(hidden, classes), nn.Linear(hidden, 4 * classes)

    def forward(self, ops, features, rois):
        h = ops.roi_pool(features, rois, (7, 7), 1.0 / 16).flatten(1)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        return self.cls_score(h), self.bbox_pred(h)


def roi_tensor(per_image):
    """[R, 5] (image, x1, y1, x2, y2), image by image."""
    return torch.cat([torch.cat([torch.full((len(b), 1), float(k)), b], 1) for k, b in enumerate(per_image)])


class TwoStage(nn.Module):
    """Fast R-CNN (stored proposals) or Faster R-CNN (an RPN's) on the shared backbone; `loss` is the suite's step,
    in training and inference alike (Starling's suite times the loss without gradients as inference)."""

    def __init__(self, ops, rpn, classes=VOC_CLASSES, width=0.25, hidden=1024):
        super().__init__()
        self.ops = ops
        self.backbone = VGGBackbone(width)
        c = self.backbone.channels
        self.rpn = rpn
        if rpn:
            self.sizes, self.ratios = [128.0, 256.0, 512.0], [0.5, 1.0, 2.0]
            a = len(self.sizes) * len(self.ratios)
            self.rpn_conv, self.rpn_cls_logits, self.rpn_bbox_pred = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, a, 1), nn.Conv2d(c, 4 * a, 1)
            for conv in (self.rpn_conv, self.rpn_cls_logits, self.rpn_bbox_pred):
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
            self.anchors = self.make_anchors(HEIGHT // 16, WIDTH // 16)
        self.head = RoIHead(c, hidden, classes)
        self.rois_per_image = 128 if rpn else 64

    def make_anchors(self, height, width):
        """torchvision's AnchorGenerator over one map: base anchors ratio-major, rounded; cell corners; location-major."""
        scales, ratios = torch.tensor(self.sizes), torch.tensor(self.ratios)
        h_ratios = torch.sqrt(ratios)
        ws = ((1 / h_ratios)[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        base = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        sy, sx = torch.meshgrid(torch.arange(height) * 16.0, torch.arange(width) * 16.0, indexing="ij")
        shifts = torch.stack([sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)], dim=1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def forward(self, images):
        """The backbone's map and the RPN's outputs (the dense part, counted by peer_suite.py --check)."""
        features = self.backbone(images)
        if not self.rpn:
            return features
        t = F.relu(self.rpn_conv(features))
        return features, self.rpn_cls_logits(t), self.rpn_bbox_pred(t)

    def proposals(self, logits, deltas):
        """The proposal layer per image: top n logits, decoded, clipped, tiny boxes dropped, NMS 0.7, best m kept."""
        pre, post = (2000, 2000) if self.training else (1000, 300)
        out = []
        for k in range(logits.shape[0]):
            top = logits[k].topk(min(pre, logits.shape[1])).indices
            boxes = decode(deltas[k, top], self.anchors[top], (1.0, 1.0, 1.0, 1.0))
            boxes = torch.stack([boxes[:, 0].clamp(0, WIDTH), boxes[:, 1].clamp(0, HEIGHT),
                                 boxes[:, 2].clamp(0, WIDTH), boxes[:, 3].clamp(0, HEIGHT)], dim=1)
            scores = torch.sigmoid(logits[k, top])
            keep = ((boxes[:, 2] - boxes[:, 0] >= 1e-3) & (boxes[:, 3] - boxes[:, 1] >= 1e-3)).nonzero().flatten()
            boxes, scores = boxes[keep], scores[keep]
            kept = self.ops.nms(boxes, scores, 0.7)[:post]
            out.append(boxes[kept])
        return out

    def rpn_loss(self, logits, deltas, truths):
        """RPNTargets and the RPN's loss: 256 anchors an image, BCE plus smooth L1 (1/9) over the sampled anchors."""
        sampled_logits, sampled_labels, predicted, goals = [], [], [], []
        for k, boxes in enumerate(truths):
            matches = match(self.ops.box_iou(boxes, self.anchors), 0.7, 0.3, low_quality=True)
            pos, neg = balanced_sample(matches >= 0, matches == -1, 256, 0.5)
            sampled_logits += [logits[k, pos], logits[k, neg]]
            sampled_labels += [torch.ones(len(pos)), torch.zeros(len(neg))]
            predicted.append(deltas[k, pos])
            goals.append(encode(boxes[matches[pos]], self.anchors[pos], (1.0, 1.0, 1.0, 1.0)))
        count = sum(len(t) for t in sampled_labels)
        bce = F.binary_cross_entropy_with_logits(torch.cat(sampled_logits), torch.cat(sampled_labels), reduction="sum")
        box = F.smooth_l1_loss(torch.cat(predicted), torch.cat(goals), beta=1.0 / 9, reduction="sum")
        return (bce + box) / max(count, 1)

    def loss(self, images, truths, classes, stored_proposals=None):
        if self.rpn:
            features, objectness, rpn_deltas = self(images)
            n, a = objectness.shape[:2]
            # [N, A, H, W] -> [N, H W A]; [N, 4A, H, W] -> [N, H W A, 4] (location-major, as the anchors)
            logits = objectness.permute(0, 2, 3, 1).reshape(n, -1)
            deltas = rpn_deltas.view(n, a, 4, *rpn_deltas.shape[2:]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
            with torch.no_grad():
                proposals = self.proposals(logits.detach(), deltas.detach())
            total = self.rpn_loss(logits, deltas, truths)
        else:
            features, proposals, total = self(images), stored_proposals, 0
        with torch.no_grad():
            samples = [roi_minibatch(self.ops, p, t, c, self.rois_per_image, 0.5, 0.1, (10.0, 10.0, 5.0, 5.0))
                       for p, t, c in zip(proposals, truths, classes)]
        logits, box_deltas = self.head(self.ops, features, roi_tensor([s[0] for s in samples]))
        return total + fast_rcnn_loss(logits, box_deltas, torch.cat([s[1] for s in samples]), torch.cat([s[2] for s in samples]))


class RCNN(nn.Module):
    """RCNN.swift's stage 1 (fine-tuning on warped windows): 64 windows an image, each dilated for context and warped to
    64 x 64 from the image scaled to [-1, 1], through four convolutions with pooling, fc6, fc7 and a K + 1 softmax."""

    filters = [32, 64, 128, 128]

    def __init__(self, ops, classes=2, width=0.5, hidden=256, warp=64):
        super().__init__()
        self.ops, self.warp = ops, warp
        self.context = 16 * warp / 227
        layers, cin = [], 3
        for f in self.filters:
            c = max(1, int(f * width + 0.5))
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = c
        self.convs = nn.Sequential(*layers)
        pool5 = cin * (warp // 16) ** 2
        self.fc6, self.fc7, self.cls_score = nn.Linear(pool5, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, classes)
        self.check_input = torch.zeros(1, 3, warp, warp)   # peer_suite.py --check counts one window's forward pass

    def forward(self, crops):
        """Class logits of warped windows [R, 3, warp, warp]."""
        h = self.convs(crops).flatten(1)
        return self.cls_score(F.relu(self.fc7(F.relu(self.fc6(h)))))

    def windows(self, per_image):
        """Each window dilated about its centre so that the warp carries `context` pixels on every side."""
        grow = self.warp / (self.warp - 2 * self.context)
        rows = []
        for k, b in enumerate(per_image):
            c = (b[:, :2] + b[:, 2:]) / 2
            half = (b[:, 2:] - b[:, :2]) / 2 * grow
            rows.append(torch.cat([torch.full((len(b), 1), float(k)), c - half, c + half], 1))
        return torch.cat(rows)

    def loss(self, images, truths, classes, stored_proposals):
        with torch.no_grad():
            samples = [roi_minibatch(self.ops, p, t, c, 64, 0.5, 0.0, (1.0, 1.0, 1.0, 1.0))
                       for p, t, c in zip(stored_proposals, truths, classes)]
            crops = self.ops.roi_align(images / 127.5 - 1, self.windows([s[0] for s in samples]), (self.warp, self.warp),
                                       1.0, 1, True)
        if images.is_contiguous(memory_format=torch.channels_last):
            crops = crops.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(self(crops), torch.cat([s[1] for s in samples]))


def random_regions(gen, count, largest):
    """The suite's synthetic regions: sides uniform in [8, min(largest, side)], positions uniform inside the image."""
    w = 8 + torch.rand(count, generator=gen) * (min(largest, WIDTH) - 8)
    h = 8 + torch.rand(count, generator=gen) * (min(largest, HEIGHT) - 8)
    x, y = torch.rand(count, generator=gen) * (WIDTH - w), torch.rand(count, generator=gen) * (HEIGHT - h)
    return torch.stack([x, y, x + w, y + h], dim=1)


def entry(name, gen, ops):
    """(model, images, loss closure) for an R-CNN entry: 2 images 375 x 500 of pixels 0...255 with three boxes each
    (classes 1 + k % (K - 1)) and, for fast-rcnn and rcnn, 2,000 random proposals each, as the Starling suite draws."""
    classes = 2 if name == "rcnn" else VOC_CLASSES
    images = torch.randint(0, 256, (2, 3, HEIGHT, WIDTH), generator=gen).float()
    truths = [random_regions(gen, 3, 120) for _ in range(2)]
    labels = [torch.tensor([1 + k % (classes - 1) for k in range(3)]) for _ in range(2)]
    proposals = [random_regions(gen, 2000, max(HEIGHT, WIDTH)) for _ in range(2)] if name != "faster-rcnn" else None
    model = RCNN(ops) if name == "rcnn" else TwoStage(ops, rpn=name == "faster-rcnn")
    return model, images, lambda m, x: m.loss(x, truths, labels, proposals)


def op_times(threads=1, repeats=5):
    """Milliseconds a step spends in the RoI ops on the suite's shapes (median of `repeats`), with the plain-torch ops
    and, where it loads, torchvision's: RoI max pooling forward and backward (faster-rcnn's 256 RoIs and fast-rcnn's 128
    on the 128-channel 23 x 31 map), NMS of each image's 2,000 top anchors (faster-rcnn, training), RoIAlign of rcnn's
    128 windows to 64 x 64 from 2 images."""
    import statistics
    import time
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(2, 128, HEIGHT // 16, WIDTH // 16, generator=gen)
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=gen) * 2 - 1
    sides = []
    try:
        sides.append(torchvision_ops())
    except MissingRoIOps as missing:
        print(f"torchvision: {missing}")
    sides.append(TORCH_OPS)
    for ops in sides:
        def pool(count):
            x = features.clone().requires_grad_(True)
            rois = roi_tensor([random_regions(gen, count // 2, 500) for _ in range(2)])
            ops.roi_pool(x, rois, (7, 7), 1 / 16).sum().backward()

        def suppress():
            for _ in range(2):
                boxes = random_regions(gen, 2000, 250)
                ops.nms(boxes, torch.rand(2000, generator=gen), 0.7)

        def warp():
            windows = roi_tensor([random_regions(gen, 64, 500) for _ in range(2)])
            ops.roi_align(images, windows, (64, 64), 1.0, 1, True)
        cells = []
        for name, work in (("roi_pool 256 RoIs fwd+bwd", lambda: pool(256)), ("roi_pool 128 RoIs fwd+bwd", lambda: pool(128)),
                           ("nms 2 x 2,000", suppress), ("roi_align 128 windows", warp)):
            work()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                work()
                times.append(1000 * (time.perf_counter() - t))
            cells.append(f"{name} {statistics.median(times):.1f} ms (spread {min(times):.1f}-{max(times):.1f})")
        print(f"{ops.note}, {threads} thread(s): " + "; ".join(cells))


def adam_step(model, x, loss_of):
    """The peers' optimizer (Adam as the other suite peers) and one training step on the entry's batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, x).backward()
        optimizer.step()
    return optimizer, step


def step_shares(threads=1, steps=3):
    """Each peer's training step in CPU milliseconds (process time: less sensitive to a loaded machine than wall time)
    and the part spent in the forward calls of its plain-torch RoI ops."""
    import time
    torch.set_num_threads(threads)
    spent = {}

    def timed(name, f):
        def call(*args):
            t = time.process_time()
            out = f(*args)
            spent[name] = spent.get(name, 0.0) + time.process_time() - t
            return out
        return call
    import peer_maskrcnn
    ops = RoIOps(timed("RoI pooling", roi_pool), timed("RoIAlign", roi_align), timed("NMS", nms), timed("IoU", box_iou), TORCH_OPS.note)
    for name in RCNN_ENTRIES + ("mask-rcnn",):
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(5)
        model, x, loss_of = peer_maskrcnn.entry(gen, ops) if name == "mask-rcnn" else entry(name, gen, ops)
        optimizer, step = adam_step(model, x, loss_of)
        model.train()
        step()
        spent.clear()
        t = time.process_time()
        for _ in range(steps):
            step()
        total = (time.process_time() - t) / steps
        parts = ", ".join(f"{k} {1000 * v / steps:.0f}" for k, v in spent.items())
        print(f"{name}: step {1000 * total:.0f} ms CPU on {threads} thread(s); plain-torch RoI ops' forward calls {parts} ms "
              f"({100 * sum(spent.values()) / steps / total:.0f} % of the step)")


def saved_tensors(loss):
    """The storages autograd keeps for backward at the end of forward, walked from `loss`: {storage address: (bytes,
    the first node that saved it, dtype, shape)}. A storage saved by several nodes (a convolution's input that the
    ReLU before it saved as its result) counts once."""
    seen, stack, visited = {}, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except RuntimeError:   # a saved tensor already freed
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if isinstance(t, torch.Tensor) and t.numel():
                    storage = t.untyped_storage()
                    seen.setdefault(storage.data_ptr(), (storage.nbytes(), type(node).__name__, t.dtype, tuple(t.shape)))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen


def memory_breakdown(name, threads=1, channels_last=False):
    """Where the peer's training step holds memory: resident memory at each stage, the tensors autograd saved for
    backward at the end of forward by the node that saved them (parameters apart), and what the plain-torch RoI max
    pooling keeps beyond torchvision's C++ op, which saves only its int32 argmax [R, C, 7, 7] (and the RoIs) for
    backward and returns one [R, C, 7, 7] output."""
    import resource

    def resident():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    print(f"{name} peer memory, {threads} thread(s){', channels-last' if channels_last else ''}: after import {resident():.1f} MB")
    model, x, loss_of = entry(name, torch.Generator().manual_seed(5), TORCH_OPS)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    optimizer, step = adam_step(model, x, loss_of)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    print(f"  model and data built: resident {resident():.1f} MB (weights {weights:.1f} MB; gradients and Adam's two moments "
          f"{3 * weights:.1f} MB more once they exist)")

    model.train()
    step()
    print(f"  after a warm step: resident {resident():.1f} MB, peak {peak():.1f} MB")
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(model, x)
    saved = {k: v for k, v in saved_tensors(loss).items() if k not in parameters}
    total = sum(v[0] for v in saved.values()) / 2 ** 20
    print(f"  end of forward: resident {resident():.1f} MB; autograd holds {total:.1f} MB in {len(saved)} storages "
          f"(parameters apart) for backward:")
    groups = {}
    for nbytes, node, dtype, shape in saved.values():
        key = (node, str(dtype).replace("torch.", ""))
        count, size = groups.get(key, (0, 0))
        groups[key] = (count + 1, size + nbytes)
    for (node, dtype), (count, size) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"    {node} {dtype}: {count} storage(s), {size / 2 ** 20:.1f} MB")
    pooling = [v for v in saved.values() if v[1] in ("AdaptiveMaxPool2DBackward0", "MaskedFillBackward0")]
    kept = sum(v[0] for v in pooling) / 2 ** 20
    rois = 256 if name == "faster-rcnn" else 128
    channels = model.backbone.channels
    argmax = rois * channels * 49 * 4 / 2 ** 20
    print(f"  the plain-torch RoI max pooling keeps {kept:.1f} MB ({len(pooling)} storages: the padded map its windows view, "
          f"int64 indices a RoI, the empty bins' mask); torchvision's roi_pool keeps its int32 argmax, {argmax:.1f} MB for "
          f"{rois} RoIs x {channels} channels x 7 x 7: {kept - argmax:.1f} MB of the fallback's own")
    loss.backward()
    optimizer.step()
    print(f"  after backward and the optimizer: resident {resident():.1f} MB, peak {peak():.1f} MB")


if __name__ == "__main__":
    import sys
    if len(sys.argv) > 2 and sys.argv[1] == "--memory":
        memory_breakdown(sys.argv[2], channels_last="--channels-last" in sys.argv)
        sys.exit(0)
    op_times(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    step_shares(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
