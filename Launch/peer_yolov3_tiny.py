"""PyTorch peer of `starling bench --only yolov3-tiny`: the same network, loss and synthetic frames, timed the same way.

yolov3-tiny as darknet's yolov3-tiny.cfg lays it out (and Sources/StarlingDetection/YOLOv3Tiny.swift builds it):
batch norm + leaky ReLU 0.1 after every convolution but the two output ones, max-pooling 2/2 (and 2/1 padded right and
below before layer 12), a route and a 2x upsampling to the stride-16 head. The loss is YOLOv3's as YOLOHead computes
it: squared errors on sigmoid offsets and log sizes weighted by 2 - wh, binary cross-entropy for objectness and each
class, no objectness loss where a prediction overlaps a box by IoU > 0.7, summed and divided by the batch's images.
Targets are assigned once (as Starling's benchmark assigns them once), so the figure is the network's training step.

Benchmark-only: PyTorch is never needed to build or test Starling. Run it in its best CPU configuration
(Launch/bench-yolo.sh: jemalloc preloaded, channels-last and NCHW both measured, threads set).
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]


class ConvBNLeaky(nn.Sequential):
    def __init__(self, cin, cout, k):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
                         nn.LeakyReLU(0.1))


class YOLOv3Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        widths = [16, 32, 64, 128, 256, 512, 1024]
        self.backbone = nn.ModuleList()
        cin = 3
        for w in widths:
            self.backbone.append(ConvBNLeaky(cin, w, 3))
            cin = w
        depth = 3 * (5 + classes)
        self.lateral = ConvBNLeaky(1024, 256, 1)        # 13
        self.coarse = ConvBNLeaky(256, 512, 3)          # 14
        self.coarse_out = nn.Conv2d(512, depth, 1)      # 15
        self.reduce = ConvBNLeaky(256, 128, 1)          # 18
        self.fine = ConvBNLeaky(128 + 256, 256, 3)      # 21
        self.fine_out = nn.Conv2d(256, depth, 1)        # 22

    def forward(self, x):
        h = x / 255
        for k in range(4):
            h = F.max_pool2d(self.backbone[k](h), 2)
        fine = self.backbone[4](h)
        h = self.backbone[5](F.max_pool2d(fine, 2))
        h = self.backbone[6](F.max_pool2d(F.pad(h, (0, 1, 0, 1), value=float("-inf")), 2, stride=1))
        lateral = self.lateral(h)
        coarse = self.coarse_out(self.coarse(lateral))
        up = F.interpolate(self.reduce(lateral), scale_factor=2, mode="nearest")
        return [coarse, self.fine_out(self.fine(torch.cat([up, fine], 1)))]


def assign(boxes, classes, height, width, scales, anchor_sizes=ANCHORS):
    """Per scale: (image, anchor, row, column, tx, ty, tw, th, weight, class) of each box's best anchor over all scales;
    `anchor_sizes` in pixels of the input (yolov3-tiny's by default; yolov3 and yolov2 pass theirs)."""
    out = [[] for _ in scales]
    for n, image in enumerate(boxes):
        for (x0, y0, x1, y1), c in zip(image, classes[n]):
            w, h = x1 - x0, y1 - y0
            ious = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchor_sizes]
            best = max(range(len(anchor_sizes)), key=lambda k: ious[k])
            for s, (gh, gw, anchors) in enumerate(scales):
                if best in anchors:
                    cx, cy = (x0 + x1) / 2 / width * gw, (y0 + y1) / 2 / height * gh
                    col, row = min(int(cx), gw - 1), min(int(cy), gh - 1)
                    out[s].append((n, anchors.index(best), row, col, cx - col, cy - row, math.log(w / anchor_sizes[best][0]),
                                   math.log(h / anchor_sizes[best][1]), 2 - w * h / (width * height), c))
    return out


def yolo_loss(outputs, targets, truths, height, width, scales, classes, ignore=0.7, anchor_sizes=ANCHORS, region=False):
    """YOLOv3's loss (YOLOHead); `region` makes it darknet's region layer as YOLOHead.regionLayer() does for YOLOv2:
    softmax cross-entropy over the classes, objectness 5/2 (sigmoid - IoU)^2 for the responsible predictions (the IoU
    of the decoded prediction with its box, a constant) and 1/2 sigmoid^2 for the others, ignore threshold 0.6."""
    if region:
        ignore = 0.6
    total = outputs[0].new_zeros(())
    n = outputs[0].shape[0]
    for out, assigned, (gh, gw, anchors) in zip(outputs, targets, scales):
        p = out.view(n, len(anchors), 5 + classes, gh, gw)
        # Decoded boxes, for the ignore rule.
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        aw = torch.tensor([anchor_sizes[k][0] for k in anchors], dtype=torch.float32).view(1, -1, 1, 1)
        ah = torch.tensor([anchor_sizes[k][1] for k in anchors], dtype=torch.float32).view(1, -1, 1, 1)
        with torch.no_grad():
            cx = (xs + torch.sigmoid(p[:, :, 0])) / gw * width
            cy = (ys + torch.sigmoid(p[:, :, 1])) / gh * height
            bw, bh = torch.exp(p[:, :, 2]) * aw, torch.exp(p[:, :, 3]) * ah
            pred = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).view(n, -1, 4)
            iw = (torch.minimum(pred[:, :, None, 2], truths[:, None, :, 2]) - torch.maximum(pred[:, :, None, 0], truths[:, None, :, 0])).clamp(min=0)
            ih = (torch.minimum(pred[:, :, None, 3], truths[:, None, :, 3]) - torch.maximum(pred[:, :, None, 1], truths[:, None, :, 1])).clamp(min=0)
            inter = iw * ih
            area_p = ((pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1]))[:, :, None]
            area_t = ((truths[..., 2] - truths[..., 0]) * (truths[..., 3] - truths[..., 1]))[:, None, :]
            negative = (inter / (area_p + area_t - inter)).amax(-1).view(n, len(anchors), gh, gw) <= ignore
        objectness = p[:, :, 4]
        if assigned:
            i, a, r, c = (torch.tensor([t[k] for t in assigned]) for k in range(4))
            negative[i, a, r, c] = False
            tx, ty, tw, th, weight = (torch.tensor([t[k] for t in assigned], dtype=torch.float32) for k in range(4, 9))
            cls = torch.tensor([t[9] for t in assigned])
            chosen = p[i, a, :, r, c]
            total = total + (0.5 * weight * ((torch.sigmoid(chosen[:, 0]) - tx) ** 2 + (torch.sigmoid(chosen[:, 1]) - ty) ** 2
                                             + (chosen[:, 2] - tw) ** 2 + (chosen[:, 3] - th) ** 2)).sum()
            if region:
                with torch.no_grad():   # the objectness target: IoU of the decoded prediction with the assigned box
                    sw, sh = aw.view(-1)[a], ah.view(-1)[a]
                    px, py = (c + torch.sigmoid(chosen[:, 0])) / gw * width, (r + torch.sigmoid(chosen[:, 1])) / gh * height
                    pw, ph = torch.exp(chosen[:, 2]) * sw, torch.exp(chosen[:, 3]) * sh
                    gx, gy = (c + tx) / gw * width, (r + ty) / gh * height
                    gwid, ghei = torch.exp(tw) * sw, torch.exp(th) * sh
                    iw = (torch.minimum(px + pw / 2, gx + gwid / 2) - torch.maximum(px - pw / 2, gx - gwid / 2)).clamp(min=0)
                    ih = (torch.minimum(py + ph / 2, gy + ghei / 2) - torch.maximum(py - ph / 2, gy - ghei / 2)).clamp(min=0)
                    iou = iw * ih / (pw * ph + gwid * ghei - iw * ih)
                total = total + (2.5 * (torch.sigmoid(chosen[:, 4]) - iou) ** 2).sum()
                total = total + F.cross_entropy(chosen[:, 5:], cls - 1, reduction="sum")
            else:
                total = total + F.softplus(-chosen[:, 4]).sum()
                total = total + F.binary_cross_entropy_with_logits(chosen[:, 5:], F.one_hot(cls - 1, classes).float(), reduction="sum")
        if region:
            total = total + (0.5 * torch.sigmoid(objectness[negative]) ** 2).sum()
        else:
            total = total + F.softplus(objectness[negative]).sum()
    return total / n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    classes, size = 5, args.size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = YOLOv3Tiny(classes).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (args.batch, 3, size, size), generator=gen).float().contiguous(memory_format=fmt)
    boxes, labels = [], []
    for _ in range(args.batch):
        image = []
        for _ in range(3):
            x, y = float(torch.rand(1, generator=gen)) * (size - 80), float(torch.rand(1, generator=gen)) * (size - 80)
            image.append((x, y, x + 10 + 70 * float(torch.rand(1, generator=gen)), y + 10 + 70 * float(torch.rand(1, generator=gen))))
        boxes.append(image)
        labels.append([1, 2, 3])
    scales = [(size // 32, size // 32, [3, 4, 5]), (size // 16, size // 16, [0, 1, 2])]
    targets = assign(boxes, labels, size, size, scales)
    truths = torch.tensor(boxes, dtype=torch.float32)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = yolo_loss(model(images), targets, truths, size, size, scales, classes)
        loss.backward()
        optimizer.step()

    model.train()
    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    train = args.steps * args.batch / (time.perf_counter() - start)
    model.eval()
    fps = {}
    with torch.inference_mode():
        for n in (1, 8):
            x = images[:1].expand(n, -1, -1, -1).contiguous(memory_format=fmt)
            model(x)
            repeats, best = max(2, 16 // n), float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(repeats):
                    model(x)
                best = min(best, time.perf_counter() - t)
            fps[n] = repeats * n / best
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"pytorch {torch.__version__} yolov3-tiny {size}x{size} {layout}, {args.threads} threads: training {train:.1f} images/s at batch {args.batch}; "
          f"forward pass alone {fps[1]:.1f} FPS at batch 1, {fps[8]:.1f} at batch 8")


if __name__ == "__main__":
    main()
