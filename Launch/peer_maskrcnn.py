"""PyTorch peer of the suite's mask-rcnn entry (Launch/peer_suite.py mask-rcnn): Starling's Mask R-CNN (MaskRCNN.swift,
TwoStage/FeaturePyramid.swift, RegionProposalNetwork.swift, MaskHead.swift) with the suite's data and the same
samplers, targets and losses per step.

- Data: 2 images of 192 x 256 (Launch/configs/mask-rcnn-pennfudan.yaml's import size and batch), pixels 0...255, three
  boxes each (sides uniform in [8, 120], class 1 of background and pedestrian), each box's inscribed ellipse its
  instance mask (pixel centres inside), as the Starling suite draws them.
- Backbone (ResNetFPN): ResNet-50's bottleneck stages (v1.5: stride on the 3x3) at width 0.125 (stem 8, stages 8, 16, 32,
  64 inner channels, 4x outer) and depth 0.34 (1, 1, 2, 1 blocks), every convolution with a bias, batch norm (Keras's
  epsilon 1e-3, momentum 0.99) and ReLU; the input scaled to [-1, 1]; Keras's same padding (the odd pixel below and right:
  the stride-2 convolutions and the 3x3/2 max pooling pad asymmetrically through F.pad, as Starling does); the FPN's 1x1
  laterals to 32 channels, nearest 2x top-down, 3x3 smoothing: P2-P5, P6 = P5 subsampled by 2.
- RPN: one head over every level (3x3 + ReLU, 1x1 objectness and deltas, Gaussian 0.01 weights); anchors of one size a
  level (32 on P2, doubling to 512 on P6) x ratios 0.5, 1, 2 (torchvision's AnchorGenerator: rounded base anchors, cell
  corners); 256 anchors an image at half positive (IoU >= 0.7 or a box's best, negative under 0.3), BCE plus smooth L1
  (beta 1/9) over the sampled anchors; proposals per level: top 2,000 logits, decoded (1, 1, 1, 1), clipped, sides under
  1e-3 dropped, NMS 0.7, then the best 2,000 over the levels (1,000 / 1,000 in inference).
- RoI heads: 128 RoIs an image (proposals plus the boxes) at 25 % foreground (IoU >= 0.5), background in [0.1, 0.5);
  FPN's level per RoI (floor(4 + log2(sqrt(w h) / 224)), P2-P5), RoIAlign 7 x 7 (sampling ratio 2, aligned) into fc6 and
  fc7 of 256, cls_score and class-specific bbox_pred ((10, 10, 5, 5)-coded, Fast R-CNN's loss); the mask head on the
  positive RoIs: RoIAlign 14 x 14, four 3x3 convolutions of 64 with ReLU, a 2x2 stride-2 transposed convolution with ReLU,
  a 1x1 convolution to a 28 x 28 logit map a class; targets the matched instance's mask cut by the RoI through RoIAlign
  (adaptive sampling, aligned) binarised at 0.5; loss the mean sigmoid cross-entropy of the RoI's own class's map.

RoIAlign and NMS are torchvision's C++ ops where they load, the plain-torch ones of Launch/peer_rcnn.py otherwise
(--torch-roi-ops; weaker: a grid_sample a RoI group, NMS's loop in numpy). Random draws come from torch's generator.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import peer_rcnn
from peer_rcnn import balanced_sample, decode, encode, fast_rcnn_loss, match

HEIGHT, WIDTH = 192, 256
CLASSES = 2
BATCH = 2
STRIDES = [4, 8, 16, 32, 64]


def scaled(channels, width):
    """ResNetFPN's channel count: round half away from zero (Swift's rounded()), at least 1."""
    return max(1, int(math.floor(channels * width + 0.5)))


def same_padding(kernel, stride, size):
    """Keras's same padding along one axis: (before, after), the odd pixel after."""
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with Starling's (Keras's) same padding: symmetric through the convolution where it is, one F.pad
    below and right first where it is not (the stride-2 layers on even sides)."""

    def __init__(self, cin, cout, kernel, stride=1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")   # He normal, as ResNetFPN
        nn.init.zeros_(self.bias)

    def forward(self, x):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = same_padding(kh, sh, x.shape[2])
        left, right = same_padding(kw, sw, x.shape[3])
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class Bottleneck(nn.Module):
    def __init__(self, cin, inner, stride, project):
        super().__init__()
        outer = 4 * inner
        self.conv1, self.bn1 = SameConv2d(cin, inner, 1), batch_norm(inner)
        self.conv2, self.bn2 = SameConv2d(inner, inner, 3, stride), batch_norm(inner)
        self.conv3, self.bn3 = SameConv2d(inner, outer, 1), batch_norm(outer)
        self.downsample = nn.Sequential(SameConv2d(cin, outer, 1, stride), batch_norm(outer)) if project else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNetFPN(nn.Module):
    """FeaturePyramid.swift's ResNetFPN: P2 ... P6 of images already scaled."""

    def __init__(self, width=0.125, depth=0.34):
        super().__init__()
        stem = scaled(64, width)
        self.conv1, self.bn1 = SameConv2d(3, stem, 7, 2), batch_norm(stem)
        cin, stages = stem, []
        for s, (blocks, inner) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
            inner = scaled(inner, width)
            count = max(1, int(math.floor(blocks * depth + 0.5)))
            stage = []
            for b in range(count):
                stage.append(Bottleneck(cin, inner, 2 if b == 0 and s > 0 else 1, b == 0))
                cin = 4 * inner
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)
        self.channels = d = scaled(256, width)
        self.laterals = nn.ModuleList(SameConv2d(4 * scaled(c, width), d, 1) for c in [64, 128, 256, 512])
        self.smoothing = nn.ModuleList(SameConv2d(d, d, 3) for _ in range(4))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=-math.inf), 3, 2)   # 3x3/2 same: the pad below and right
        c = []
        for stage in self.stages:
            for block in stage:
                h = block(h)
            c.append(h)
        merged = [self.laterals[3](c[3])]
        for s in (2, 1, 0):
            merged.insert(0, self.laterals[s](c[s]) + F.interpolate(merged[0], scale_factor=2, mode="nearest"))
        p = [conv(m) for conv, m in zip(self.smoothing, merged)]
        return p + [F.max_pool2d(p[3], 1, 2)]


def level_anchors(size, stride, height, width):
    """AnchorGenerator's one level: base anchors of `size` x ratios 0.5, 1, 2 (ratio-major, rounded half to even as
    torch.round), at every cell's corner, location-major."""
    ratios = torch.tensor([0.5, 1.0, 2.0])
    h_ratios = torch.sqrt(ratios)
    ws, hs = (1 / h_ratios) * size, h_ratios * size
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    base = base.round()
    sy, sx = torch.meshgrid(torch.arange(height) * float(stride), torch.arange(width) * float(stride), indexing="ij")
    shifts = torch.stack([sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)], dim=1)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


def fpn_levels(boxes):
    """MultiScaleRoIAlign.level: floor(4 + log2(sqrt(w h) / 224 + 1e-6)) clamped to 2 ... 5."""
    side = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).double()
    return torch.floor(4 + torch.log2(side / 224 + 1e-6)).clamp(2, 5).long()


class MaskRCNN(nn.Module):
    """MaskRCNN.swift at the suite's settings; `loss` is the suite's step in training and inference alike."""

    def __init__(self, ops, classes=CLASSES, width=0.125, depth=0.34, hidden=256, mask_width=64, height=HEIGHT, image_width=WIDTH):
        super().__init__()
        self.ops, self.classes, self.height, self.width = ops, classes, height, image_width
        self.backbone = ResNetFPN(width, depth)
        d = self.backbone.channels
        self.rpn_conv, self.rpn_cls_logits, self.rpn_bbox_pred = nn.Conv2d(d, d, 3, padding=1), nn.Conv2d(d, 3, 1), nn.Conv2d(d, 12, 1)
        for conv in (self.rpn_conv, self.rpn_cls_logits, self.rpn_bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        sizes = [(height // s, image_width // s) for s in STRIDES[:4]] + [((height // 32 + 1) // 2, (image_width // 32 + 1) // 2)]
        self.anchors = [level_anchors(32.0 * (1 << l), STRIDES[l], h, w) for l, (h, w) in enumerate(sizes)]
        self.fc6, self.fc7 = nn.Linear(d * 49, hidden), nn.Linear(hidden, hidden)
        self.cls_score, self.bbox_pred = nn.Linear(hidden, classes), nn.Linear(hidden, 4 * classes)
        for dense in (self.fc6, self.fc7, self.cls_score, self.bbox_pred):   # Keras's Glorot-uniform, zero bias
            nn.init.xavier_uniform_(dense.weight)
            nn.init.zeros_(dense.bias)
        convs, cin = [], d
        for _ in range(4):
            convs.append(nn.Conv2d(cin, mask_width, 3, padding=1))
            cin = mask_width
        self.mask_fcn = nn.ModuleList(convs)
        self.conv5_mask = nn.ConvTranspose2d(mask_width, mask_width, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(mask_width, classes, 1)

    def forward(self, images):
        """The pyramid and the RPN's objectness and deltas on each level (the dense part, counted by --check)."""
        pyramid = self.backbone(images / 127.5 - 1)
        rpn = []
        for p in pyramid:
            t = F.relu(self.rpn_conv(p))
            rpn.append((self.rpn_cls_logits(t), self.rpn_bbox_pred(t)))
        return pyramid, rpn

    def proposals(self, logits, deltas):
        """ProposalLayer per image: per level the top n logits decoded, clipped, tiny boxes dropped, NMS 0.7; then the
        best m over the levels."""
        pre, post = (2000, 2000) if self.training else (1000, 1000)
        out = []
        for k in range(logits[0].shape[0]):
            boxes, scores = [], []
            for level_logits, level_deltas, anchors in zip(logits, deltas, self.anchors):
                top = level_logits[k].topk(min(pre, level_logits.shape[1])).indices
                b = decode(level_deltas[k, top], anchors[top], (1.0, 1.0, 1.0, 1.0))
                b = torch.stack([b[:, 0].clamp(0, self.width), b[:, 1].clamp(0, self.height),
                                 b[:, 2].clamp(0, self.width), b[:, 3].clamp(0, self.height)], dim=1)
                s = torch.sigmoid(level_logits[k, top])
                keep = ((b[:, 2] - b[:, 0] >= 1e-3) & (b[:, 3] - b[:, 1] >= 1e-3)).nonzero().flatten()
                b, s = b[keep], s[keep]
                kept = self.ops.nms(b, s, 0.7)
                boxes.append(b[kept])
                scores.append(s[kept])
            boxes, scores = torch.cat(boxes), torch.cat(scores)
            best = torch.sort(scores, descending=True, stable=True).indices[:post]
            out.append(boxes[best])
        return out

    def rpn_loss(self, logits, deltas, truths):
        """RPNTargets and rpnLoss over the levels' anchors concatenated: BCE plus smooth L1 (1/9) over 256 anchors an image."""
        anchors = torch.cat(self.anchors)
        sampled_logits, sampled_labels, predicted, goals = [], [], [], []
        for k, boxes in enumerate(truths):
            matches = match(self.ops.box_iou(boxes, anchors), 0.7, 0.3, low_quality=True)
            pos, neg = balanced_sample(matches >= 0, matches == -1, 256, 0.5)
            sampled_logits += [logits[k, pos], logits[k, neg]]
            sampled_labels += [torch.ones(len(pos)), torch.zeros(len(neg))]
            predicted.append(deltas[k, pos])
            goals.append(encode(boxes[matches[pos]], anchors[pos], (1.0, 1.0, 1.0, 1.0)))
        count = sum(len(t) for t in sampled_labels)
        bce = F.binary_cross_entropy_with_logits(torch.cat(sampled_logits), torch.cat(sampled_labels), reduction="sum")
        box = F.smooth_l1_loss(torch.cat(predicted), torch.cat(goals), beta=1.0 / 9, reduction="sum")
        return (bce + box) / max(count, 1)

    def pool(self, pyramid, rois, size):
        """MultiScaleRoIAlign: rois [R, 5] already in level order (`levels` sorted), each level's from its map."""
        levels = fpn_levels(rois[:, 1:])
        pooled = []
        for k in levels.unique().tolist():
            rows = rois[levels == k]
            pooled.append(self.ops.roi_align(pyramid[k - 2], rows, (size, size), 1.0 / (1 << k), 2, True))
        return torch.cat(pooled) if pooled else pyramid[0].new_zeros(0, pyramid[0].shape[1], size, size)

    def mask_logits(self, pooled):
        h = pooled
        for conv in self.mask_fcn:
            h = F.relu(conv(h))
        return self.mask_fcn_logits(F.relu(self.conv5_mask(h)))

    def loss(self, images, truths, classes, masks):
        pyramid, rpn = self(images)
        n = images.shape[0]
        # [N, A, H, W] -> [N, H W A]; [N, 4A, H, W] -> [N, H W A, 4] (location-major, as the anchors), level by level
        logits = [o.permute(0, 2, 3, 1).reshape(n, -1) for o, _ in rpn]
        deltas = [d.view(n, 3, 4, *d.shape[2:]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4) for _, d in rpn]
        with torch.no_grad():
            proposals = self.proposals([l.detach() for l in logits], [d.detach() for d in deltas])
        total = self.rpn_loss(torch.cat(logits, 1), torch.cat(deltas, 1), truths)

        # Each image's RoI minibatch (FastRCNNTargets: proposals plus boxes, 128 at 25 % foreground) and each
        # foreground RoI's instance.
        rois, labels, targets, instances = [], [], [], []
        with torch.no_grad():
            for k, (p, t, c) in enumerate(zip(proposals, truths, classes)):
                candidates = torch.cat([p, t])
                matches = match(self.ops.box_iou(t, candidates), 0.5, 0.1)
                fg, bg = balanced_sample(matches >= 0, matches == -2, 128, 0.25)
                chosen = torch.cat([candidates[fg], candidates[bg]])
                rois.append(torch.cat([torch.full((len(chosen), 1), float(k)), chosen], 1))
                labels.append(torch.cat([c[matches[fg]], torch.zeros(len(bg), dtype=torch.long)]))
                targets.append(torch.cat([encode(t[matches[fg]], candidates[fg], (10.0, 10.0, 5.0, 5.0)), torch.zeros(len(bg), 4)]))
                instances.append(torch.cat([matches[fg], torch.full((len(bg),), -1, dtype=torch.long)]))
            rois, labels, targets, instances = torch.cat(rois), torch.cat(labels), torch.cat(targets), torch.cat(instances)
            order = torch.sort(fpn_levels(rois[:, 1:]), stable=True).indices   # level by level, as Starling pools
            rois, labels, targets, instances = rois[order], labels[order], targets[order], instances[order]
        if len(rois) == 0:
            return total + pyramid[0].sum() * 0
        h = self.pool(pyramid, rois, 7).flatten(1)
        h = F.relu(self.fc7(F.relu(self.fc6(h))))
        total = total + fast_rcnn_loss(self.cls_score(h), self.bbox_pred(h), labels, targets)

        # The mask branch on the positives (still in level order), targets cut from their instances' masks.
        positive = ((labels > 0) & (instances >= 0)).nonzero().flatten()
        if len(positive) == 0:
            return total
        with torch.no_grad():
            mask_rois = rois[positive]
            images_of = mask_rois[:, 0].long()
            stacked = torch.cat([masks[k] for k in range(n)]).unsqueeze(1)          # [sum of M, 1, H, W]
            first = torch.tensor([0] + [len(masks[k]) for k in range(n)]).cumsum(0)
            rows = torch.cat([(first[images_of] + instances[positive]).to(mask_rois.dtype)[:, None], mask_rois[:, 1:]], 1)
            mask_targets = (self.ops.roi_align(stacked, rows, (28, 28), 1.0, 0, True) >= 0.5).to(images.dtype).squeeze(1)
        mask_logits = self.mask_logits(self.pool(pyramid, mask_rois, 14))
        chosen = mask_logits[torch.arange(len(positive)), labels[positive]]
        return total + F.binary_cross_entropy_with_logits(chosen, mask_targets)

    def starling_state(self):
        """The weights under the names `starling convert --to safetensors` gives Starling's Mask R-CNN."""
        def conv(module, name):
            return [(f"{name}.weight", module.weight), (f"{name}.bias", module.bias)]

        def norm(module, name):
            return [(f"{name}.weight", module.weight), (f"{name}.bias", module.bias), (f"{name}.running_mean", module.running_mean),
                    (f"{name}.running_var", module.running_var)]
        b = self.backbone
        out = conv(b.conv1, "conv1") + norm(b.bn1, "bn1")
        for s, stage in enumerate(b.stages):
            for k, block in enumerate(stage):
                name = f"layer{s + 1}.{k}"
                for j in (1, 2, 3):
                    out += conv(getattr(block, f"conv{j}"), f"{name}.conv{j}") + norm(getattr(block, f"bn{j}"), f"{name}.bn{j}")
                if block.downsample is not None:
                    out += conv(block.downsample[0], f"{name}.downsample") + norm(block.downsample[1], f"{name}.downsample_bn")
        for s in range(4):
            out += conv(b.laterals[s], f"fpn_inner{s + 2}") + conv(b.smoothing[s], f"fpn_layer{s + 2}")
        for name in ("rpn_conv", "rpn_cls_logits", "rpn_bbox_pred", "fc6", "fc7", "cls_score", "bbox_pred", "conv5_mask", "mask_fcn_logits"):
            out += conv(getattr(self, name), name)
        for k, module in enumerate(self.mask_fcn):
            out += conv(module, f"mask_fcn{k + 1}")
        return out


def synthetic_frames(gen, count=BATCH, height=HEIGHT, width=WIDTH, classes=CLASSES):
    """The suite's instance frames: pixels 0...255, three boxes an image (sides uniform in [8, min(120, side)], inside the
    image, classes 1 + k % (K - 1)), each box's inscribed ellipse (pixel centres inside it) its mask [3, H, W]."""
    images = torch.randint(0, 256, (count, 3, height, width), generator=gen).float()
    truths, labels, masks = [], [], []
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    for _ in range(count):
        w = 8 + torch.rand(3, generator=gen) * (min(120, width) - 8)
        h = 8 + torch.rand(3, generator=gen) * (min(120, height) - 8)
        x, y = torch.rand(3, generator=gen) * (width - w), torch.rand(3, generator=gen) * (height - h)
        boxes = torch.stack([x, y, x + w, y + h], dim=1)
        cx, cy = (x + w / 2)[:, None, None], (y + h / 2)[:, None, None]
        inside = ((xs - cx) / (w / 2)[:, None, None]) ** 2 + ((ys - cy) / (h / 2)[:, None, None]) ** 2 <= 1
        truths.append(boxes)
        labels.append(torch.tensor([1 + k % (classes - 1) for k in range(3)]))
        masks.append(inside.float())
    return images, truths, labels, masks


def entry(gen, ops):
    """(model, images, loss closure) for the suite's mask-rcnn entry."""
    images, truths, labels, masks = synthetic_frames(gen)
    model = MaskRCNN(ops)
    return model, images, lambda m, x: m.loss(x, truths, labels, masks)
