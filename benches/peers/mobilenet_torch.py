#!/usr/bin/env python3
"""The `mobilenet` preset of fracture-cnn in PyTorch (eager, CPU), timed with the protocol of
`fracture-cnn bench`: a training step (forward, BCE-with-logits, backward, Adam) on a batch of 32
and an inference batch of 64, random 1x128x128 inputs, warm-up runs, then the median of timed runs.

The model is layer for layer the one `fracture-cnn model spec --model mobilenet` prints: MobileNet
v1 at width 0.5 on one gray channel, a bias on every convolution, batch norm (momentum 0.1,
eps 1e-5) and ReLU after each, global average pooling, dropout 0.2, one logit. It checks that
its parameter count is the same (835,233 with the batch-norm running statistics).

Usage: python benches/peers/mobilenet_torch.py [--threads 2] [--warmup 2] [--repeats 5] [--width 0.5]
Needs torch (any 2.x); not part of the test suite.
"""
import argparse
import os
import resource
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--width", type=float, default=0.5)
ap.add_argument("--image-size", type=int, default=128)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--infer-batch-size", type=int, default=64)
args = ap.parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

torch.set_num_threads(args.threads)

# (stride of the depthwise convolution, channels of the pointwise one) at width 1, as in
# src/nn/mobilenet.rs
BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [(2, 1024), (1, 1024)]


def bn_relu(c):
    return [nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]


def conv3x3(cin, cout, stride, groups=1):
    """A 3x3 convolution with "same" padding: 1 on each side at stride 1; at stride 2 on an even
    size, TensorFlow's (and fracture-cnn's) 0 before and 1 after."""
    if stride == 1:
        return [nn.Conv2d(cin, cout, 3, padding=1, groups=groups)]
    return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, 3, stride=2, groups=groups)]


def mobilenet(width):
    ch = lambda c: max(1, round(c * width))  # noqa: E731
    c = ch(32)
    layers = conv3x3(1, c, 2) + bn_relu(c)
    for stride, out in BLOCKS:
        layers += conv3x3(c, c, stride, groups=c) + bn_relu(c)
        layers += [nn.Conv2d(c, ch(out), 1)] + bn_relu(ch(out))
        c = ch(out)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, 1)]
    return nn.Sequential(*layers)


def median_time(run, warmup, repeats):
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


torch.manual_seed(0)
model = mobilenet(args.width)
params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers() if "running" in n)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; mobilenet width {args.width}: {params:,} parameters")
if args.width == 0.5:
    assert params == 835_233, "not the same model as fracture-cnn's mobilenet"

hw = args.image_size
x = torch.rand(args.batch_size, 1, hw, hw)
y = torch.randint(0, 2, (args.batch_size, 1)).float()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.BCEWithLogitsLoss()


def train_step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


model.train()
train_s = median_time(train_step, args.warmup, args.repeats)
model.eval()
xi = torch.rand(args.infer_batch_size, 1, hw, hw)
with torch.no_grad():
    infer_s = median_time(lambda: model(xi), args.warmup, args.repeats)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"training step, batch {args.batch_size}: {train_s * 1e3:.1f} ms, {args.batch_size / train_s:.1f} images/s")
print(f"inference, batch {args.infer_batch_size}: {infer_s * 1e3:.1f} ms, {args.infer_batch_size / infer_s:.1f} images/s")
print(f"peak resident memory: {rss:.0f} MiB")
