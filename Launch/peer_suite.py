"""PyTorch peer of `starling bench --suite`: the same networks, batch sizes, input sizes and losses, timed the same way,
one entry per process (so that ru_maxrss is that entry's peak), printed as the JSON row `starling bench --suite-table`
reads beside Starling's.

    python Launch/peer_suite.py --list                 entry names, and whether channels-last applies
    python Launch/peer_suite.py ENTRY --threads T [--channels-last] [--compile] [--seconds S]

Each network is written layer for layer after Starling's (Sources/StarlingAutoencoders, SSD7.swift, UNet.swift; yolov3-tiny
from Launch/peer_yolov3_tiny.py), with the same widths; the row carries the parameter count, and the table flags a count
that differs from Starling's. Timing: two warm-up steps, then as many steps as fit in --seconds (at least 2), forward,
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


# ------------------------------------------------------------------------------------------------------------- entries
def entry(name, gen):
    """(model, batch, inputs, loss closure taking the model and the images), or None when there is no peer."""
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
    unets = {"unet-128-w0.25": (8, 128, 128, 0.25, 2), "unet-128-w0.125": (8, 128, 128, 0.125, 2), "unet-128": (8, 128, 128, 1.0, 2),
             "unet-membrane": (4, 512, 512, 0.25, 2), "unet-camvid": (4, 180, 240, 0.25, 11)}
    if name in unets:
        batch, height, width, multiplier, classes = unets[name]
        model = UNet(multiplier, classes, levels=4 if name == "unet-camvid" else 5)
        x = torch.randint(0, 256, (batch, 3, height, width), generator=gen).float()
        labels = disc_labels(batch, height, width, classes, gen)
        return model, x, lambda m, images: m.loss(images, labels)
    return None


SPATIAL = ["conv-ae", "denoising-ae", "conv-vae", "ssd7", "yolov3-tiny", "unet-128-w0.25", "unet-128-w0.125", "unet-128", "unet-membrane", "unet-camvid"]
ENTRIES = ["fc-ae", "sparse-ae", "deep-ae", "seq2seq-ae", "vae"] + SPATIAL


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("entry", nargs="?")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (forward, or the autoencoders' loss)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name in ENTRIES:
            print(name, "spatial" if name in SPATIAL else "flat")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(5)
    made = entry(args.entry, gen)
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
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train = steps * x.shape[0] / (time.perf_counter() - start)
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
    if args.entry in DIFFERENCES:
        kernels += f"; differs: {DIFFERENCES[args.entry]}"
    layout = ("channels-last" if args.channels_last else "NCHW") + (", compiled" if args.compile else "")
    row = {"side": "pytorch", "entry": args.entry, "batch": x.shape[0], "ranks": 1, "threads": args.threads,
           "layout": layout, "trainImagesPerSecond": train,
           "inferenceImagesPerSecond": repeats * x.shape[0] / best,
           "peakMB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "parameters": sum(p.numel() for p in model.parameters()), "kernels": kernels}
    print("suite-row " + json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main()
