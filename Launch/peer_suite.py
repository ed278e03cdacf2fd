"""PyTorch peer of `starling bench --suite`: the same networks, batch sizes, input sizes and losses, timed the same way,
one entry per process (so that ru_maxrss is that entry's peak), printed as the JSON row `starling bench --suite-table`
reads beside Starling's.

    python Launch/peer_suite.py --list                 entry names, and whether channels-last applies
    python Launch/peer_suite.py ENTRY --threads T [--channels-last] [--compile] [--seconds S]
    python Launch/peer_suite.py ENTRY --check           parameters, output shapes, forward multiply-adds, one step's loss
    python Launch/peer_suite.py ENTRY --export DIR      weights under Starling's names and a float64 forward pass
                                                        (Launch/check-peers.sh: SSD300 and the YOLOs against Starling)

Each network is written layer for layer after Starling's (Sources/StarlingAutoencoders, SSD7.swift, SSD300.swift,
YOLOv1.swift, YOLOv2.swift, YOLOv3.swift, UNet.swift; yolov3-tiny and the YOLO losses in Launch/peer_yolov3_tiny.py;
faster-rcnn, fast-rcnn and rcnn in Launch/peer_rcnn.py, mask-rcnn in Launch/peer_maskrcnn.py, on torchvision's RoI ops
or, with --torch-roi-ops, plain torch's),
with the same widths; the row carries the parameter count, and the table flags a count that differs from Starling's. Timing: two warm-up steps, then as many steps as fit in --seconds (at least 2), forward,
loss, backward and Adam (Keras's epsilon 1e-7); inference is the forward pass and loss without gradients at the training
batch, the best of three rounds. --compile runs the network through torch.compile (Inductor's C++ kernels, which fuse
the element-wise passes between convolutions: batch norm, ELU, pooling) after warm-up steps that include the
compilation. Data is one synthetic batch made before the timing (Starling copies its batches out of
a pool of one batch on its prefetch thread). Differences from Starling's step are in DIFFERENCES below and in the table.

Benchmark-only: PyTorch is never needed to build or test Starling. Run it in its best CPU configuration through
Launch/bench-suite.sh (jemalloc preloaded, NCHW and channels-last both measured, threads set).
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# What differs from Starling's training step, per entry (printed in the row's "kernels" note and in BENCHMARKS.md).
DIFFERENCES = {
    "ssd7": "SSD loss on fixed random matches (24 positive anchors an image, hard negatives 3:1) instead of matching the boxes each step",
    "seq2seq-ae": "PyTorch's LSTM has a second bias vector (512 more parameters)",
    "conv-vae": "Keras's odd same padding below and right, PyTorch's symmetric (same shapes and FLOPs)",
    "yolov3-tiny": "targets assigned once (as Starling's encoder does it on the data thread)",
    "ssd300": "SSD loss on fixed random matches (24 positive anchors an image, hard negatives 3:1) instead of matching the boxes each step",
    "yolov2": "targets assigned once (as Starling's encoder does it on the data thread)",
    "yolov3": "targets assigned once (as Starling's encoder does it on the data thread)",
    "yolov1": "cells assigned once (as Starling's encoder does it on the data thread); the responsible predictor chosen in the step",
    "faster-rcnn": "RPN and RoI heads written in torch after torchvision's (Launch/peer_rcnn.py); random draws from torch's generator",
    "fast-rcnn": "RoI heads written in torch after torchvision's (Launch/peer_rcnn.py); random draws from torch's generator",
    "rcnn": "windows sampled and warped in torch after RCNN.swift (Launch/peer_rcnn.py); random draws from torch's generator",
    "mask-rcnn": "RPN, RoI and mask heads written in torch after MaskRCNN.swift (Launch/peer_maskrcnn.py); Keras's same padding "
                 "through F.pad on the stride-2 layers; random draws from torch's generator",
}


class Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


# ---------------------------------------------------------------------------------------------------------- autoencoders
class FCAutoencoder(nn.Module):
    """fc-ae and sparse-ae: 784-32 ReLU-784, sigmoid cross-entropy; sparse-ae adds 1e-4 x sum |code| / batch."""

    def __init__(self, l1=0.0):
        super().__init__()
        self.encoder, self.decoder, self.l1 = nn.Linear(784, 32), nn.Linear(32, 784), l1

    def loss(self, x):
        x = x.flatten(1)
        h = F.relu(self.encoder(x))
        loss = F.binary_cross_entropy_with_logits(self.decoder(h), x)
        return loss + h.sum() * (self.l1 / x.shape[0]) if self.l1 else loss


class DeepAutoencoder(nn.Module):
    """deep-ae: 784-128-64-32 and back, ReLU between, sigmoid cross-entropy."""

    def __init__(self):
        super().__init__()
        sizes = [784, 128, 64, 32]
        self.encoder = nn.ModuleList(nn.Linear(sizes[k], sizes[k + 1]) for k in range(3))
        self.decoder = nn.ModuleList(nn.Linear(sizes[3 - k], sizes[2 - k]) for k in range(3))

    def loss(self, x):
        h = x.flatten(1)
        for layer in self.encoder:
            h = F.relu(layer(h))
        for layer in self.decoder[:-1]:
            h = F.relu(layer(h))
        return F.binary_cross_entropy_with_logits(self.decoder[-1](h), x.flatten(1))


class ConvAutoencoder(nn.Module):
    """conv-ae (filters 16, 8, 8; 8, 8, 16) and denoising-ae (32 throughout, noise 0.5): Keras's same padding (pooling
    7 -> 4 is ceil_mode), nearest 2x upsampling, conv-ae's last decoder convolution valid (16 -> 14)."""

    def __init__(self, encoder, decoder, valid_last=False, noise=0.0):
        super().__init__()
        cin, self.noise = 1, noise
        self.encoder = nn.ModuleList()
        for f in encoder:
            self.encoder.append(nn.Conv2d(cin, f, 3, padding=1))
            cin = f
        self.decoder = nn.ModuleList()
        for k, f in enumerate(decoder):
            valid = valid_last and k == len(decoder) - 1
            self.decoder.append(nn.Conv2d(cin, f, 3, padding=0 if valid else 1))
            cin = f
        self.output = nn.Conv2d(cin, 1, 3, padding=1)

    def loss(self, x):
        h = (x + self.noise * torch.randn_like(x)).clamp(0, 1) if self.noise else x
        for conv in self.encoder:
            h = F.max_pool2d(F.relu(conv(h)), 2, ceil_mode=True)
        for conv in self.decoder:
            h = F.interpolate(F.relu(conv(h)), scale_factor=2, mode="nearest")
        return F.binary_cross_entropy_with_logits(self.output(h), x)


class VAE(nn.Module):
    """vae: 784-64 ReLU to a 2-d mean and log-variance, 2-64 ReLU-784; loss: per-image summed sigmoid cross-entropy
    plus the KL divergence to N(0, 1), averaged over the batch."""

    def __init__(self):
        super().__init__()
        self.hidden, self.mean, self.log_var = nn.Linear(784, 64), nn.Linear(64, 2), nn.Linear(64, 2)
        self.decoder_hidden, self.decoder_output = nn.Linear(2, 64), nn.Linear(64, 784)

    def loss(self, x):
        x = x.flatten(1)
        h = F.relu(self.hidden(x))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        logits = self.decoder_output(F.relu(self.decoder_hidden(z)))
        reconstruction = F.binary_cross_entropy_with_logits(logits, x) * 784
        kl = (-0.5 * (1 + log_var - mean ** 2 - log_var.exp()).sum(1)).mean()
        return reconstruction + kl


class Seq2SeqAutoencoder(nn.Module):
    """seq2seq-ae: an LSTM of 64 units over the 28 rows of 28 pixels, its last state repeated 28 times into an LSTM of
    64 units, a 64-28 dense layer on every step, sigmoid cross-entropy. PyTorch's LSTM has two bias vectors where Keras's
    has one: 512 more parameters, the same FLOPs to within the bias additions."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(28, 64, batch_first=True)
        self.decoder = nn.LSTM(64, 64, batch_first=True)
        self.output = nn.Linear(64, 28)

    def loss(self, x):
        rows = x.view(-1, 28, 28)
        _, (code, _) = self.encoder(rows)
        states, _ = self.decoder(code[-1].unsqueeze(1).expand(-1, 28, -1))
        return F.binary_cross_entropy_with_logits(self.output(states), rows)


class ConvVAE(nn.Module):
    """conv-vae: 3x3 stride-2 convolutions 1-32-64 with ReLU (28 -> 14 -> 7), 3136-16 ReLU to a 2-d mean and
    log-variance, 2-3136 ReLU, 3x3 transposed convolutions 64-64 and 64-32 at stride 2 with ReLU (7 -> 14 -> 28) and
    32-1 at stride 1; the VAE's loss. Same shapes and weights as Keras's same padding, whose odd padding sits below and
    right where PyTorch's is symmetric (the FLOPs are equal)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.Conv2d(32, 64, 3, stride=2, padding=1)])
        self.hidden, self.mean, self.log_var = nn.Linear(3136, 16), nn.Linear(16, 2), nn.Linear(16, 2)
        self.decoder_hidden = nn.Linear(2, 3136)
        self.transposed = nn.ModuleList([nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1),
                                         nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),
                                         nn.ConvTranspose2d(32, 1, 3, padding=1)])

    def loss(self, x):
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        h = F.relu(self.hidden(h.flatten(1)))
        mean, log_var = self.mean(h), self.log_var(h)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        h = F.relu(self.decoder_hidden(z)).view(-1, 64, 7, 7)
        for layer in self.transposed[:-1]:
            h = F.relu(layer(h))
        logits = self.transposed[-1](h)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x) * 784
        kl = (-0.5 * (1 + log_var - mean ** 2 - log_var.exp()).sum(1)).mean()
        return reconstruction + kl


# ------------------------------------------------------------------------------------------------------------------ SSD7
class SSD7(nn.Module):
    """SSD7 as ssd_keras builds it and SSD7.swift: convolutions 5x5 then 3x3 (32, 48, 64, 64, 48, 48, 32), batch norm
    (eps 1e-3) and ELU after each, 2x2 pooling after all but the last, class and box heads (3x3) on conv4 ... conv7 with
    4 boxes a cell; L2 5e-4 on every kernel added to the loss as Keras does."""

    filters = [32, 48, 64, 64, 48, 48, 32]

    def __init__(self, classes=6, boxes=4):
        super().__init__()
        cin = 3
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for k, f in enumerate(self.filters):
            size = 5 if k == 0 else 3
            self.convs.append(nn.Conv2d(cin, f, size, padding=size // 2))
            self.norms.append(nn.BatchNorm2d(f, eps=1e-3, momentum=0.01))
            cin = f
        self.class_heads = nn.ModuleList(nn.Conv2d(self.filters[k], boxes * classes, 3, padding=1) for k in range(3, 7))
        self.box_heads = nn.ModuleList(nn.Conv2d(self.filters[k], boxes * 4, 3, padding=1) for k in range(3, 7))
        self.classes = classes

    def forward(self, x):
        # Max-pooling before the ELU, as Starling does: the ELU is increasing, so max(elu(x)) = elu(max(x)) and its
        # gradient reaches the same element, with the ELU on a quarter of the pixels; in place where nothing saved
        # needs its input. Measured on one thread: 1.20x the images per CPU-second of ELU-then-pool, 1.6 GB peak
        # instead of 2.0 (BENCHMARKS.md, "SSD7's peer").
        h = (x - 127.5) / 127.5
        features = []
        for k in range(7):
            h = self.norms[k](self.convs[k](h))
            if k == 6:
                features.append(F.elu(h, inplace=True))
                continue
            if k >= 3:
                features.append(F.elu(h))
            h = F.elu(F.max_pool2d(h, 2), inplace=True)
        n = x.shape[0]
        classes = torch.cat([head(f).permute(0, 2, 3, 1).reshape(n, -1, self.classes) for head, f in zip(self.class_heads, features)], 1)
        boxes = torch.cat([head(f).permute(0, 2, 3, 1).reshape(n, -1, 4) for head, f in zip(self.box_heads, features)], 1)
        return classes, boxes

    def make_targets(self, x, gen):
        with torch.no_grad():
            classes, _ = self(x[:1])
        anchors = classes.shape[1]
        labels = torch.zeros(x.shape[0], anchors, dtype=torch.long)
        offsets = torch.randn(x.shape[0], anchors, 4, generator=gen) * 0.1
        for n in range(x.shape[0]):
            positives = torch.randperm(anchors, generator=gen)[:24]
            labels[n, positives] = 1 + torch.randint(0, self.classes - 1, (24,), generator=gen)
        return labels, offsets

    def loss(self, x, targets):
        labels, offsets = targets
        classes, boxes = self(x)
        positive = labels > 0
        count = positive.sum().clamp(min=1)
        ce = F.cross_entropy(classes.reshape(-1, self.classes), labels.reshape(-1), reduction="none").view(labels.shape)
        negatives = ce.masked_fill(positive, 0)
        k = min(int(3 * count), negatives.numel())
        hard = negatives.flatten().topk(k).values.sum()
        localization = F.smooth_l1_loss(boxes[positive], offsets[positive], reduction="sum")
        l2 = sum((conv.weight ** 2).sum() for conv in list(self.convs) + list(self.class_heads) + list(self.box_heads))
        return (ce[positive].sum() + hard + localization) / count + 5e-4 * l2


# ----------------------------------------------------------------------------------------------------------------- U-Net
class UNet(nn.Module):
    """U-Net as UNet.swift builds it with same padding: five levels of two 3x3 convolutions + ReLU (64 x width channels,
    doubling), 2x2 max-pooling, 2x2 stride-2 transposed convolutions, the skip first in the concatenation (zero padding
    below and right where an odd side was pooled), a 1x1 classifier; pixel-wise softmax cross-entropy, class weights 1."""

    def __init__(self, width, classes, levels=5):
        super().__init__()
        base = max(2, round(64 * width))
        ch = [base << k for k in range(levels)]
        cin = 3
        self.down = nn.ModuleList()
        for c in ch:
            self.down.append(nn.ModuleList([nn.Conv2d(cin, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)]))
            cin = c
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[k + 1], ch[k], 2, stride=2) for k in range(levels - 1))
        self.expand = nn.ModuleList(nn.ModuleList([nn.Conv2d(2 * ch[k], ch[k], 3, padding=1), nn.Conv2d(ch[k], ch[k], 3, padding=1)])
                                    for k in range(levels - 1))
        self.classifier = nn.Conv2d(ch[0], classes, 1)
        self.levels = levels

    def forward(self, x):
        h, skips = x / 255, []
        for k, (a, b) in enumerate(self.down):
            h = F.relu(b(F.relu(a(h))))
            if k < self.levels - 1:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        for k in reversed(range(self.levels - 1)):
            h = self.up[k](h)
            skip = skips[k]
            if h.shape[2:] != skip.shape[2:]:
                h = F.pad(h, (0, skip.shape[3] - h.shape[3], 0, skip.shape[2] - h.shape[2]))
            a, b = self.expand[k]
            h = F.relu(b(F.relu(a(torch.cat([skip, h], 1)))))
        return self.classifier(h)

    def loss(self, x, labels):
        return F.cross_entropy(self(x), labels)


def disc_labels(n, height, width, classes, gen):
    """Six discs of random classes an image, as the Starling suite's synthetic maps."""
    labels = torch.zeros(n, height, width, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for i in range(n):
        for _ in range(6):
            cx, cy = float(torch.rand(1, generator=gen)) * width, float(torch.rand(1, generator=gen)) * height
            r = 4 + float(torch.rand(1, generator=gen)) * (min(height, width) / 4 - 4)
            labels[i][(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = 1 + int(torch.randint(0, classes - 1, (1,), generator=gen))
    return labels


# ---------------------------------------------------------------------------------------- SSD300 and the full-size YOLOs
def random_matches(anchors, classes, n, gen, positives=24):
    """Fixed anchor matches for the SSD peers (Starling matches on its data thread, outside the step): `positives`
    random anchors an image with random object classes, random box offsets."""
    labels = torch.zeros(n, anchors, dtype=torch.long)
    offsets = torch.randn(n, anchors, 4, generator=gen) * 0.1
    for i in range(n):
        chosen = torch.randperm(anchors, generator=gen)[:positives]
        labels[i, chosen] = 1 + torch.randint(0, classes - 1, (positives,), generator=gen)
    return labels, offsets


def ssd_loss(classes, boxes, labels, offsets, kernels, l2=5e-4):
    """SSDLoss: softmax cross-entropy over the positives and the 3 x positives hardest negatives of the batch, smooth-L1
    on the positives' offsets, over the positives; plus Keras's L2 penalty on `kernels`."""
    positive = labels > 0
    count = positive.sum().clamp(min=1)
    ce = F.cross_entropy(classes.reshape(-1, classes.shape[-1]), labels.reshape(-1), reduction="none").view(labels.shape)
    negatives = ce.masked_fill(positive, 0)
    k = min(int(3 * count), negatives.numel())
    hard = negatives.flatten().topk(k).values.sum()
    localization = F.smooth_l1_loss(boxes[positive], offsets[positive], reduction="sum")
    penalty = sum((w ** 2).sum() for w in kernels)
    return (ce[positive].sum() + hard + localization) / count + l2 * penalty


def random_boxes(n, height, width, gen, count=3, largest=120):
    """Three boxes an image, sides 8 ... 120 pixels, as the Starling suite's synthetic detection samples."""
    boxes = []
    for _ in range(n):
        image = []
        for _ in range(count):
            w = 8 + float(torch.rand(1, generator=gen)) * (min(largest, width) - 8)
            h = 8 + float(torch.rand(1, generator=gen)) * (min(largest, height) - 8)
            x, y = float(torch.rand(1, generator=gen)) * (width - w), float(torch.rand(1, generator=gen)) * (height - h)
            image.append((x, y, x + w, y + h))
        boxes.append(image)
    return boxes


class SSD300(nn.Module):
    """SSD300 as SSD300.swift (ssd_keras's keras_ssd300.py): VGG-16 conv1_1 ... conv5_3 with ReLU and 2x2 same (ceil)
    max-pooling, pool5 3x3 stride 1, fc6 3x3 dilated by 6, fc7 1x1, conv6_1/6_2 and conv7_1/7_2 (stride 2, padding
    1), conv8_1/8_2 and conv9_1/9_2 (valid); no batch norm. Predictors (3x3) on conv4_3 (L2-normalised per pixel,
    scale 20 per channel), fc7, conv6_2 ... conv9_2 with 4, 6, 6, 6, 4, 4 boxes a cell (8,732 anchors at 300 x 300).
    Input minus the channel means (123, 117, 104); L2 5e-4 on every kernel. `width` multiplies every channel count."""

    base = [64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512, "pool5"]
    extras = [(256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1), (128, 1, 1, 0), (256, 3, 1, 0), (128, 1, 1, 0), (256, 3, 1, 0)]
    boxes_per_cell = [4, 6, 6, 6, 4, 4]

    def __init__(self, classes=21, width=1.0):
        super().__init__()
        ch = lambda c: max(4, round(c * width))
        cin, predictor = 3, []
        self.convs = nn.ModuleList()
        for item in self.base:
            if isinstance(item, int):
                self.convs.append(nn.Conv2d(cin, ch(item), 3, padding=1))
                cin = ch(item)
        predictor.append(ch(512))                                          # conv4_3
        self.fc6 = nn.Conv2d(cin, ch(1024), 3, padding=6, dilation=6)
        self.fc7 = nn.Conv2d(ch(1024), ch(1024), 1)
        cin = ch(1024)
        predictor.append(cin)
        self.extra = nn.ModuleList()
        for k, (c, size, stride, pad) in enumerate(self.extras):
            self.extra.append(nn.Conv2d(cin, ch(c), size, stride=stride, padding=pad))
            cin = ch(c)
            if k % 2:
                predictor.append(cin)
        self.conv4_3_scale = nn.Parameter(torch.full((predictor[0],), 20.0))
        self.class_heads = nn.ModuleList(nn.Conv2d(c, b * classes, 3, padding=1) for c, b in zip(predictor, self.boxes_per_cell))
        self.box_heads = nn.ModuleList(nn.Conv2d(c, b * 4, 3, padding=1) for c, b in zip(predictor, self.boxes_per_cell))
        self.register_buffer("means", torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1), persistent=False)
        self.classes = classes

    def forward(self, x):
        h, features, k = x - self.means, [], 0
        for item in self.base:
            if item == "pool":
                h = F.max_pool2d(h, 2, ceil_mode=True)
            elif item == "pool5":
                h = F.max_pool2d(h, 3, stride=1, padding=1)
            else:
                h = F.relu(self.convs[k](h), inplace=True)
                k += 1
                if k == 10:                                                # conv4_3_norm
                    features.append(h * torch.rsqrt((h * h).sum(1, keepdim=True) + 1e-10) * self.conv4_3_scale.view(1, -1, 1, 1))
        h = F.relu(self.fc7(F.relu(self.fc6(h), inplace=True)), inplace=True)
        features.append(h)
        for k, conv in enumerate(self.extra):
            h = F.relu(conv(h), inplace=True)
            if k % 2:
                features.append(h)
        n = x.shape[0]
        classes = torch.cat([head(f).permute(0, 2, 3, 1).reshape(n, -1, self.classes) for head, f in zip(self.class_heads, features)], 1)
        boxes = torch.cat([head(f).permute(0, 2, 3, 1).reshape(n, -1, 4) for head, f in zip(self.box_heads, features)], 1)
        return classes, boxes

    def kernels(self):
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]


class DarknetConv(nn.Sequential):
    """DarknetConvolution: a convolution with a bias (padding k // 2), batch norm with Keras's defaults, leaky ReLU 0.1."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
                         nn.LeakyReLU(0.1, inplace=True))


class YOLOv2(nn.Module):
    """YOLOv2 as YOLOv2.swift (darknet's yolov2-voc.cfg): Darknet-19 to layer 22 (max-pool 2/2 after layers 0, 2, 6, 10
    and 16), layers 23 and 24 (conv 1024), the passthrough (layer 26: conv 64 1x1 on layer 16, pjreddie's reorg),
    concatenated before layer 24's output, layer 29 (conv 1024) and the linear 1x1 output, 5 anchors x (5 + C)."""

    darknet19 = [(32, 3, True), (64, 3, True), (128, 3, False), (64, 1, False), (128, 3, True), (256, 3, False), (128, 1, False),
                 (256, 3, True), (512, 3, False), (256, 1, False), (512, 3, False), (256, 1, False), (512, 3, True),
                 (1024, 3, False), (512, 1, False), (1024, 3, False), (512, 1, False), (1024, 3, False)]

    def __init__(self, classes=5, width=1.0):
        super().__init__()
        ch = lambda c: max(4, round(c * width))
        cin = 3
        self.backbone = nn.ModuleList()
        for f, k, _ in self.darknet19:
            self.backbone.append(DarknetConv(cin, ch(f), k))
            cin = ch(f)
        self.detection = nn.Sequential(DarknetConv(ch(1024), ch(1024), 3), DarknetConv(ch(1024), ch(1024), 3))
        reorg = 4 * max(1, round(16 * width))
        self.passthrough = DarknetConv(ch(512), reorg, 1)
        self.merge = DarknetConv(ch(1024) + 4 * reorg, ch(1024), 3)
        self.output = nn.Conv2d(ch(1024), 5 * (5 + classes), 1)

    @staticmethod
    def reorg(x):
        """pjreddie's reorg_cpu (YOLOv2.darknetReorg): [N, C, H, W] read as [N, C/4, 2H, 2W], ONNX's space-to-depth of
        that, the result's memory read as [N, 4C, H/2, W/2]."""
        n, c, h, w = x.shape
        y = x.reshape(n, c // 4, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4)      # [N, by, bx, C/4, H, W]
        return y.reshape(n, 4 * c, h // 2, w // 2)

    def forward(self, x):
        h = x / 255
        fine = None
        for k, (layer, (_, _, pool)) in enumerate(zip(self.backbone, self.darknet19)):
            h = layer(h)
            if k == 12:                                                    # cfg layer 16
                fine = h
            if pool:
                h = F.max_pool2d(h, 2)
        h = self.detection(h)
        h = torch.cat([self.reorg(self.passthrough(fine)), h], 1)
        return [self.output(self.merge(h))]


class YOLOv1(nn.Module):
    """YOLOv1 as YOLOv1.swift (the paper's figure 3 with batch norm, darknet's later cfgs): 24 convolutions with batch
    norm and leaky ReLU 0.1, max-pool 2/2 after the 1st, 2nd, 6th and 16th, a 4096-unit leaky layer and the linear
    S x S x (5B + C) output read as [N, S, S, 5B + C]; no dropout (Starling has none)."""

    def __init__(self, classes=5, boxes=2, grid=7, width=1.0):
        super().__init__()
        ch = lambda c: max(4, round(c * width))
        plan = [(64, 7, 2, True), (192, 3, 1, True), (128, 1, 1, False), (256, 3, 1, False), (256, 1, 1, False), (512, 3, 1, True)]
        plan += [(256, 1, 1, False), (512, 3, 1, False)] * 4 + [(512, 1, 1, False), (1024, 3, 1, True)]
        plan += [(512, 1, 1, False), (1024, 3, 1, False)] * 2
        plan += [(1024, 3, 1, False), (1024, 3, 2, False), (1024, 3, 1, False), (1024, 3, 1, False)]
        self.pools = [pool for *_, pool in plan]
        cin = 3
        self.convs = nn.ModuleList()
        for f, k, stride, _ in plan:
            self.convs.append(DarknetConv(cin, ch(f), k, stride))
            cin = ch(f)
        self.hidden = nn.Linear(ch(1024) * grid * grid, ch(4096))
        self.output = nn.Linear(ch(4096), grid * grid * (5 * boxes + classes))
        self.grid, self.depth = grid, 5 * boxes + classes

    def forward(self, x):
        h = x / 255
        for conv, pool in zip(self.convs, self.pools):
            h = conv(h)
            if pool:
                h = F.max_pool2d(h, 2)
        h = self.output(F.leaky_relu(self.hidden(h.flatten(1)), 0.1))
        return h.view(-1, self.grid, self.grid, self.depth)


def yolov1_targets(boxes, classes, size, grid):
    """YOLOv1Head.assign: each box to the cell holding its centre (the later box keeps a cell): tensors of the image,
    row, column, (x, y, sqrt w, sqrt h), class and the box in pixels."""
    cells = {}
    for n, image in enumerate(boxes):
        for (x0, y0, x1, y1), c in zip(image, classes[n]):
            cx, cy = (x0 + x1) / 2 / size * grid, (y0 + y1) / 2 / size * grid
            col, row = min(int(cx), grid - 1), min(int(cy), grid - 1)
            cells[(n, row, col)] = (cx - col, cy - row, ((x1 - x0) / size) ** 0.5, ((y1 - y0) / size) ** 0.5, c, (x0, y0, x1, y1))
    keys = list(cells)
    index = [torch.tensor([k[j] for k in keys]) for j in range(3)]
    values = torch.tensor([cells[k][:4] for k in keys], dtype=torch.float32)
    cls = torch.tensor([cells[k][4] for k in keys])
    truth = torch.tensor([cells[k][5] for k in keys], dtype=torch.float32)
    return index, values, cls, truth


def yolov1_loss(out, targets, size, boxes=2, coord=5.0, noobj=0.5):
    """YOLOv1Head's loss (equation 3 with darknet's rescore): the responsible predictor of each held cell chosen from the
    current predictions (highest IoU with the box, else the smallest RMSE of x, y, w, h), squared errors, / images."""
    (n, r, c), values, cls, truth = targets
    grid = out.shape[1]
    held = out[n, r, c]                                                    # [T, 5B + C]
    pred = held[:, :5 * boxes].view(-1, boxes, 5)
    with torch.no_grad():
        cx = (c[:, None] + pred[..., 0]) / grid * size
        cy = (r[:, None] + pred[..., 1]) / grid * size
        w, h = pred[..., 2] ** 2 * size, pred[..., 3] ** 2 * size
        iw = (torch.minimum(cx + w / 2, truth[:, None, 2]) - torch.maximum(cx - w / 2, truth[:, None, 0])).clamp(min=0)
        ih = (torch.minimum(cy + h / 2, truth[:, None, 3]) - torch.maximum(cy - h / 2, truth[:, None, 1])).clamp(min=0)
        area = (truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])
        iou = iw * ih / (w * h + area[:, None] - iw * ih)
        centre = torch.stack([(truth[:, 0] + truth[:, 2]) / 2 / size, (truth[:, 1] + truth[:, 3]) / 2 / size,
                              (truth[:, 2] - truth[:, 0]) / size, (truth[:, 3] - truth[:, 1]) / size], 1)
        rmse = ((cx / size - centre[:, None, 0]) ** 2 + (cy / size - centre[:, None, 1]) ** 2
                + (w / size - centre[:, None, 2]) ** 2 + (h / size - centre[:, None, 3]) ** 2).sqrt()
        best = torch.where(iou.amax(1) > 0, iou.argmax(1), rmse.argmin(1))
        target_confidence = iou.gather(1, best[:, None]).squeeze(1)
        responsible = torch.zeros(out.shape[0], grid, grid, boxes, dtype=torch.bool)
        responsible[n, r, c, best] = True
    chosen = pred[torch.arange(pred.shape[0]), best]                       # [T, 5]
    total = coord * ((chosen[:, :4] - values) ** 2).sum() + ((chosen[:, 4] - target_confidence) ** 2).sum()
    confidence = out[..., 4:5 * boxes:5]
    total = total + noobj * (confidence[~responsible] ** 2).sum()
    total = total + ((held[:, 5 * boxes:] - F.one_hot(cls - 1, held.shape[1] - 5 * boxes).float()) ** 2).sum()
    return total / out.shape[0]


class YOLOv3(nn.Module):
    """YOLOv3 as YOLOv3.swift (darknet's yolov3.cfg): Darknet-53 (conv 32, five stages of a 3x3 stride-2 convolution
    and 1, 2, 8, 8, 4 residual blocks of 1x1 to half and 3x3 back), three branches (coarsest first) of a 1x1 lateral
    and 2x upsampling concatenated before the stage's output (not on the coarsest), five alternating 1x1 and 3x3
    convolutions, a 3x3 and the linear 1x1 output, 3 anchors x (5 + C)."""

    def __init__(self, classes=5, width=1.0, depth=1.0, blocks=(1, 2, 8, 8, 4)):
        super().__init__()
        ch = lambda c: max(4, round(c * width))
        self.stem = DarknetConv(3, ch(32), 3)
        self.stages = nn.ModuleList()
        for s, count in enumerate(blocks):
            down = DarknetConv(ch(32 << s), ch(64 << s), 3, stride=2)
            residuals = nn.ModuleList(nn.Sequential(DarknetConv(ch(64 << s), ch(32 << s), 1), DarknetConv(ch(32 << s), ch(64 << s), 3))
                                      for _ in range(max(1, round(count * depth))))
            self.stages.append(nn.ModuleList([down, residuals]))
        self.laterals, self.necks, self.predicts, self.outputs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for k in range(3):
            c = 512 >> k
            cin = ch(1024)
            if k > 0:
                self.laterals.append(DarknetConv(ch(2 * c), ch(c), 1))
                cin = ch(c) + ch(2 * c)
            self.necks.append(nn.Sequential(DarknetConv(cin, ch(c), 1), DarknetConv(ch(c), ch(2 * c), 3), DarknetConv(ch(2 * c), ch(c), 1),
                                            DarknetConv(ch(c), ch(2 * c), 3), DarknetConv(ch(2 * c), ch(c), 1)))
            self.predicts.append(DarknetConv(ch(c), ch(2 * c), 3))
            self.outputs.append(nn.Conv2d(ch(2 * c), 3 * (5 + classes), 1))

    def forward(self, x):
        h = self.stem(x / 255)
        features = []
        for down, residuals in self.stages:
            h = down(h)
            for block in residuals:
                h = h + block(h)
            features.append(h)
        outputs, route = [], features[4]
        for k in range(3):
            if k > 0:
                route = torch.cat([F.interpolate(self.laterals[k - 1](route), scale_factor=2, mode="nearest"), features[4 - k]], 1)
            route = self.necks[k](route)
            outputs.append(self.outputs[k](self.predicts[k](route)))
        return outputs


YOLOV3_ANCHORS = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
YOLOV2_ANCHORS = [(w * 32, h * 32) for w, h in [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)]]


# ------------------------------------------------------------------------ weights under Starling's names (check-peers.sh)
def darknet_state(conv, layer):
    c, bn = conv[0], conv[1]
    return [(f"conv_{layer}.weight", c.weight), (f"conv_{layer}.bias", c.bias), (f"bn_{layer}.weight", bn.weight),
            (f"bn_{layer}.bias", bn.bias), (f"bn_{layer}.running_mean", bn.running_mean), (f"bn_{layer}.running_var", bn.running_var)]


def conv_state(conv, name):
    return [(f"{name}.weight", conv.weight), (f"{name}.bias", conv.bias)]


def starling_state(name, model):
    """The peer's weights under the names `starling convert --to safetensors` gives Starling's (PyTorchWeights), so that
    `starling convert --from safetensors` loads them into Starling's network of the entry, checking every shape."""
    out = []
    if name == "ssd300":
        names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2", "conv4_3",
                 "conv5_1", "conv5_2", "conv5_3"]
        for n, conv in zip(names, model.convs):
            out += conv_state(conv, n)
        out += conv_state(model.fc6, "fc6") + conv_state(model.fc7, "fc7")
        for n, conv in zip([f"conv{k}_{j}" for k in range(6, 10) for j in (1, 2)], model.extra):
            out += conv_state(conv, n)
        out.append(("conv4_3_norm.gamma", model.conv4_3_scale))
        predictors = ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]
        for n, head in zip(predictors, model.class_heads):
            out += conv_state(head, f"{n}_mbox_conf")
        for n, head in zip(predictors, model.box_heads):
            out += conv_state(head, f"{n}_mbox_loc")
    elif name == "yolov2":
        for layer, conv in zip([0, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22], model.backbone):
            out += darknet_state(conv, layer)
        out += darknet_state(model.detection[0], 23) + darknet_state(model.detection[1], 24)
        out += darknet_state(model.passthrough, 26) + darknet_state(model.merge, 29) + conv_state(model.output, "conv_30")
    elif name == "yolov1":
        for layer, conv in enumerate(model.convs):
            out += darknet_state(conv, layer)
        out += conv_state(model.hidden, "fc_0") + conv_state(model.output, "fc_1")
    elif name == "yolov3":
        layer = 0

        def take(conv):
            nonlocal layer
            out.extend(darknet_state(conv, layer))
            layer += 1
        take(model.stem)
        for down, residuals in model.stages:
            take(down)
            for block in residuals:
                take(block[0])
                take(block[1])
                layer += 1                                                 # the [shortcut]
        for k in range(3):
            if k > 0:
                layer += 1                                                 # route
                take(model.laterals[k - 1])
                layer += 2                                                 # upsample, route
            for conv in model.necks[k]:
                take(conv)
            take(model.predicts[k])
            out += conv_state(model.outputs[k], f"conv_{layer}")
            layer += 2                                                     # the output convolution, yolo
    elif name in ("fast-rcnn", "faster-rcnn"):
        names = [f"conv{b + 1}_{k + 1}" for b, block in enumerate(model.backbone.blocks) for k in range(len(block))]
        convs = [m for m in model.backbone.features if isinstance(m, nn.Conv2d)]
        norms = [m for m in model.backbone.features if isinstance(m, nn.BatchNorm2d)]
        for n, conv, bn in zip(names, convs, norms):
            out += conv_state(conv, n) + [(f"{n}_bn.weight", bn.weight), (f"{n}_bn.bias", bn.bias),
                                          (f"{n}_bn.running_mean", bn.running_mean), (f"{n}_bn.running_var", bn.running_var)]
        if model.rpn:
            out += conv_state(model.rpn_conv, "rpn_conv") + conv_state(model.rpn_cls_logits, "rpn_cls_logits")
            out += conv_state(model.rpn_bbox_pred, "rpn_bbox_pred")
        for n in ("fc6", "fc7", "cls_score", "bbox_pred"):
            out += conv_state(getattr(model.head, n), n)
    elif name == "mask-rcnn":
        out = model.starling_state()
    else:
        raise SystemExit(f"peer_suite.py: no Starling names for {name}")
    return out


def export_check(name, model, x, directory):
    """Writes DIR/weights.safetensors (Starling's names, random batch-norm statistics so that inference uses them),
    DIR/input.f32 (one image) and DIR/outputs.f64 with DIR/outputs.json: the peer's forward pass in float64 in
    inference mode, in the rows Starling's ONNX export names (Launch/check-peers.sh compares them)."""
    os.makedirs(directory, exist_ok=True)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    state = starling_state(name, model)
    if sum(t.numel() for _, t in state) != sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))):
        raise SystemExit("peer_suite.py: the Starling names do not cover every weight")
    header, blobs, offset = {}, [], 0
    for key, tensor in state:
        data = tensor.detach().float().contiguous().numpy().tobytes()
        header[key] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    if name == "mask-rcnn":
        # The suite's input size (the family's default is Penn-Fudan's 320 x 416), which Starling's graph is built for.
        header["__metadata__"]["starling_model_config"] = json.dumps(
            {"family": "mask-rcnn", "inputShape": list(x.shape[1:]), "options": {}, "classNames": ["background", "pedestrian"]})
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(directory, "weights.safetensors"), "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    image = x[:1].contiguous()
    image.numpy().astype("<f4").tofile(os.path.join(directory, "input.f32"))
    model = model.double().eval()
    with torch.no_grad():
        out = model(image.double())
    n = image.shape[0]
    intermediates = {}
    if name == "mask-rcnn":
        # Its graph's detections come out of NMS over an untrained RPN's near-tied logits, as faster-rcnn's; compared
        # instead: the dense part, read inside Starling's graph at the convolutions of these weights (the k-th use in
        # graph order: levels P2 ... P6): the FPN's P2 ... P5 and the RPN's objectness and deltas on every level.
        pyramid, rpn = out
        rows = {f"P{l + 2}": p for l, p in enumerate(pyramid[:4])}
        intermediates = {f"P{l + 2}": [f"fpn_layer{l + 2}/kernel", 0] for l in range(4)}
        for l, (objectness, deltas) in enumerate(rpn):
            rows[f"objectness_P{l + 2}"], rows[f"deltas_P{l + 2}"] = objectness, deltas
            intermediates[f"objectness_P{l + 2}"] = ["rpn_cls_logits/kernel", l]
            intermediates[f"deltas_P{l + 2}"] = ["rpn_bbox_pred/kernel", l]
    elif name == "faster-rcnn":
        # Weights only (Launch/check-peers.sh checks their shapes): the exported graph's proposals come out of NMS over
        # near-tied logits of an untrained RPN, which two implementations need not order alike.
        rows = {}
    elif name == "fast-rcnn":
        # The ONNX graph's second input: RoIs (image, x1, y1, x2, y2), some crossing the border, one tiny.
        rois = torch.tensor([[0, 0, 0, 499, 374], [0, 37.5, 20.25, 160, 300], [0, 300, 200, 520, 390], [0, 8, 8, 9, 9],
                             [0, 250.5, 100.7, 380.2, 180.9]], dtype=torch.float32)
        rois.numpy().astype("<f4").tofile(os.path.join(directory, "rois.f32"))
        with torch.no_grad():
            logits, deltas = model.head(model.ops, out, rois.double())
        rows = {"class_logits": logits, "box_deltas": deltas}
    elif name == "ssd300":
        rows = {"class_probabilities": out[0].softmax(-1), "box_offsets": out[1]}
    elif name == "yolov1":
        rows = {"predictions": out}
    else:
        # [N, A (5 + C), H, W] to rows [N, A H W, 5 + C], scale by scale, anchor by anchor, cell by cell (YOLOHead.onnxRows)
        rows = {"predictions": torch.cat([o.reshape(n, len(a), -1, o.shape[2] * o.shape[3]).transpose(2, 3).reshape(n, -1, o.shape[1] // len(a))
                                          for o, a in zip(out, YOLO_SCALES[name])], 1)}
    meta = {}
    with open(os.path.join(directory, "outputs.f64"), "wb") as f:
        for key, value in rows.items():
            meta[key] = list(value.shape)
            f.write(value.contiguous().numpy().astype("<f8").tobytes())
    with open(os.path.join(directory, "outputs.json"), "w") as f:
        json.dump({"outputs": meta, "input": list(image.shape), "intermediates": intermediates}, f)


YOLO_SCALES = {"yolov3": [[6, 7, 8], [3, 4, 5], [0, 1, 2]], "yolov2": [[0, 1, 2, 3, 4]]}


# ------------------------------------------------------------------------------------------------------------- entries
def entry(name, gen, torch_roi_ops=False):
    """(model, batch, inputs, loss closure taking the model and the images), or None when there is no peer."""
    if name in ("faster-rcnn", "fast-rcnn", "rcnn", "mask-rcnn"):
        import peer_rcnn
        try:
            ops = peer_rcnn.torchvision_ops()
        except peer_rcnn.MissingRoIOps as missing:
            if not torch_roi_ops:
                print(f"peer_suite.py: {name} needs torchvision: {missing} (Launch/bench-suite.sh installs or builds it; "
                      "--torch-roi-ops runs plain-torch RoI ops instead, weaker)", file=sys.stderr)
                sys.exit(2)
            ops = peer_rcnn.TORCH_OPS
        if name == "mask-rcnn":
            import peer_maskrcnn
            return peer_maskrcnn.entry(gen, ops)
        return peer_rcnn.entry(name, gen, ops)
    if name in ("fc-ae", "sparse-ae", "deep-ae", "vae", "conv-ae", "denoising-ae", "conv-vae", "seq2seq-ae"):
        batch = {"fc-ae": 256, "sparse-ae": 256, "deep-ae": 256, "vae": 32}.get(name, 128)
        model = {"fc-ae": lambda: FCAutoencoder(), "sparse-ae": lambda: FCAutoencoder(l1=1e-4), "deep-ae": DeepAutoencoder, "vae": VAE,
                 "conv-ae": lambda: ConvAutoencoder([16, 8, 8], [8, 8, 16], valid_last=True),
                 "denoising-ae": lambda: ConvAutoencoder([32, 32], [32, 32], noise=0.5), "conv-vae": ConvVAE,
                 "seq2seq-ae": Seq2SeqAutoencoder}[name]()
        x = torch.rand(batch, 1, 28, 28, generator=gen)
        return model, x, lambda m, images: m.loss(images)
    if name == "ssd7":
        model = SSD7()
        x = torch.randint(0, 256, (16, 3, 300, 480), generator=gen).float()
        targets = model.make_targets(x, gen)
        return model, x, lambda m, images: m.loss(images, targets)
    if name == "yolov3-tiny":
        import peer_yolov3_tiny as tiny
        size, classes = 416, 5
        model = tiny.YOLOv3Tiny(classes)
        x = torch.randint(0, 256, (8, 3, size, size), generator=gen).float()
        boxes = []
        for _ in range(8):
            image = []
            for _ in range(3):
                bx, by = float(torch.rand(1, generator=gen)) * (size - 80), float(torch.rand(1, generator=gen)) * (size - 80)
                image.append((bx, by, bx + 10 + 70 * float(torch.rand(1, generator=gen)), by + 10 + 70 * float(torch.rand(1, generator=gen))))
            boxes.append(image)
        scales = [(size // 32, size // 32, [3, 4, 5]), (size // 16, size // 16, [0, 1, 2])]
        targets = tiny.assign(boxes, [[1, 2, 3]] * 8, size, size, scales)
        truths = torch.tensor(boxes, dtype=torch.float32)
        return model, x, lambda m, images: tiny.yolo_loss(m(images), targets, truths, size, size, scales, classes)
    if name == "ssd300":
        model = SSD300()
        x = torch.randint(0, 256, (8, 3, 300, 300), generator=gen).float()
        labels, offsets = random_matches(8732, model.classes, 8, gen)
        return model, x, lambda m, images: ssd_loss(*m(images), labels, offsets, m.kernels())
    yolos = {"yolov3": (416, 32, [(13, 13, [6, 7, 8]), (26, 26, [3, 4, 5]), (52, 52, [0, 1, 2])], YOLOV3_ANCHORS, False),
             "yolov2": (416, 32, [(13, 13, [0, 1, 2, 3, 4])], YOLOV2_ANCHORS, True)}
    if name in yolos:
        import peer_yolov3_tiny as tiny
        size, _, scales, anchor_sizes, region = yolos[name]
        classes = 5
        model = YOLOv3(classes) if name == "yolov3" else YOLOv2(classes)
        x = torch.randint(0, 256, (8, 3, size, size), generator=gen).float()
        boxes = random_boxes(8, size, size, gen)
        targets = tiny.assign(boxes, [[1, 2, 3]] * 8, size, size, scales, anchor_sizes)
        truths = torch.tensor(boxes, dtype=torch.float32)
        return model, x, lambda m, images: tiny.yolo_loss(m(images), targets, truths, size, size, scales, classes,
                                                          anchor_sizes=anchor_sizes, region=region)
    if name == "yolov1":
        size, grid = 448, 7
        model = YOLOv1(5)
        x = torch.randint(0, 256, (8, 3, size, size), generator=gen).float()
        targets = yolov1_targets(random_boxes(8, size, size, gen), [[1, 2, 3]] * 8, size, grid)
        return model, x, lambda m, images: yolov1_loss(m(images), targets, size)
    unets = {"unet-128-w0.25": (8, 128, 128, 0.25, 2), "unet-128-w0.125": (8, 128, 128, 0.125, 2), "unet-128": (8, 128, 128, 1.0, 2),
             "unet-membrane": (4, 512, 512, 0.25, 2), "unet-camvid": (4, 180, 240, 0.25, 11)}
    if name in unets:
        batch, height, width, multiplier, classes = unets[name]
        model = UNet(multiplier, classes, levels=4 if name == "unet-camvid" else 5)
        x = torch.randint(0, 256, (batch, 3, height, width), generator=gen).float()
        labels = disc_labels(batch, height, width, classes, gen)
        return model, x, lambda m, images: m.loss(images, labels)
    return None


SPATIAL = ["conv-ae", "denoising-ae", "conv-vae", "ssd7", "yolov3-tiny", "unet-128-w0.25", "unet-128-w0.125", "unet-128", "unet-membrane",
           "unet-camvid", "ssd300", "yolov2", "yolov1", "yolov3", "faster-rcnn", "fast-rcnn", "rcnn", "mask-rcnn"]
ENTRIES = ["fc-ae", "sparse-ae", "deep-ae", "seq2seq-ae", "vae"] + SPATIAL


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("entry", nargs="?")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (forward, or the autoencoders' loss)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--check", action="store_true", help="print the parameter count, the output shapes and the forward pass's "
                        "multiply-adds per image (compare with Starling's row: parameters, trainFLOPsPerImage / 6), then one "
                        "training step's loss and the peak resident memory after it")
    parser.add_argument("--export", metavar="DIR", help="write the weights under Starling's names, one image and the float64 forward "
                        "pass for Launch/check-peers.sh (ssd300, yolov1, yolov2, yolov3)")
    parser.add_argument("--torch-roi-ops", action="store_true", help="faster-rcnn, fast-rcnn, rcnn, mask-rcnn without torchvision: RoI "
                        "pooling, RoIAlign, NMS and IoU in plain torch (weaker than torchvision's C++ ops; the row says so)")
    args = parser.parse_args()
    if args.list:
        for name in ENTRIES:
            print(name, "spatial" if name in SPATIAL else "flat")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(5)
    made = entry(args.entry, gen, args.torch_roi_ops)
    if made is None:
        print(f"peer_suite.py: no PyTorch peer for {args.entry}", file=sys.stderr)
        sys.exit(2)
    model, x, loss_of = made
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    if args.compile:
        # The detectors' and U-Net's losses index by data (positive anchors, hard negatives): only the network is
        # compiled there; the autoencoders' whole loss is one graph.
        name = "forward" if type(model).forward is not nn.Module.forward else "loss"
        setattr(model, name, torch.compile(getattr(model, name)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    if args.export:
        export_check(args.entry, model, x, args.export)
        return
    if args.check:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = model(getattr(model, "check_input", x[:1])) if type(model).forward is not nn.Module.forward else None
        def leaves(o):
            return [t for x in o for t in leaves(x)] if isinstance(o, (list, tuple)) else [o]
        shapes = [tuple(o.shape) for o in leaves(out)] if out is not None else []
        model.train()
        loss = loss_of(model, x)
        loss.backward()
        optimizer.step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{args.entry}: {sum(p.numel() for p in model.parameters())} parameters, outputs {shapes}, "
              f"{counter.get_total_flops() / 2:.6g} forward multiply-adds an image, loss {loss.item():.6g}, "
              f"peak {peak:.0f} MB after one training step")
        return

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, x).backward()
        optimizer.step()

    model.train()
    for _ in range(3 if args.compile else 1):   # compiling happens in the first steps (and again for eval below)
        step()
    t = time.perf_counter()
    step()
    steps = max(2, min(500, int(args.seconds / (time.perf_counter() - t))))
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    train = steps * x.shape[0] / (time.perf_counter() - start)
    # The process's CPU seconds a step (every thread), as Starling's breakdown.cpu: on a loaded machine, what the step
    # itself costs where its wall time measures the load (read beside the table; the table does not show it).
    cpu_per_step = (time.process_time() - cpu_start) / steps
    model.eval()
    with torch.no_grad():
        loss_of(model, x)
        t = time.perf_counter()
        loss_of(model, x)
        repeats = max(1, int(args.seconds / 9 / (time.perf_counter() - t)))
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(repeats):
                loss_of(model, x)
            best = min(best, time.perf_counter() - t)
    config = torch.__config__.show()
    isa = next((line.split(":", 1)[1].strip() for line in config.splitlines() if "CPU capability usage" in line), "?")
    preload = os.environ.get("LD_PRELOAD", "")
    kernels = (f"PyTorch {torch.__version__}, CPU capability {isa}, MKL {torch.backends.mkl.is_available()}, "
               f"oneDNN {torch.backends.mkldnn.is_available()}, allocator {'jemalloc' if 'jemalloc' in preload else 'glibc'}")
    if hasattr(model, "ops"):
        kernels += f"; {model.ops.note}"
    if args.entry in DIFFERENCES:
        kernels += f"; differs: {DIFFERENCES[args.entry]}"
    layout = ("channels-last" if args.channels_last else "NCHW") + (", compiled" if args.compile else "")
    row = {"side": "pytorch", "entry": args.entry, "batch": x.shape[0], "ranks": 1, "threads": args.threads,
           "layout": layout, "trainImagesPerSecond": train,
           "inferenceImagesPerSecond": repeats * x.shape[0] / best,
           "peakMB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "parameters": sum(p.numel() for p in model.parameters()), "kernels": kernels, "cpuSecondsPerStep": cpu_per_step}
    print("suite-row " + json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main()
