#!/usr/bin/env python3
"""fracture-cnn's models in PyTorch and Keras/TensorFlow, timed with the protocol of
`fracture-cnn bench`: a training step (forward, BCE with logits, backward, Adam) on a batch of 32
and an inference batch of 64, random gray inputs, warm-up runs, then the median of timed runs.

One framework configuration per run, printed as one JSON line:
  torch        PyTorch eager, NCHW (its default)
  torch-cl     PyTorch eager, channels_last (NHWC inside oneDNN)
  keras        Keras 3 on TensorFlow, NHWC, compiled tf.function without XLA (oneDNN kernels)
  keras-xla    the same with jit_compile=True (XLA)

Models, layer for layer those of `fracture-cnn model spec --model M`:
  fracturenet  4 × [conv 3×3 same (bias) → batch norm → ReLU → max pool 2×2], channels 32, 64,
               128, 128, then dense 128 → ReLU → dropout 0.5 → dense 64 → ReLU → dropout 0.5 → 1
  mobilenet    MobileNet v1 at width 0.5 on one gray channel: a bias on every convolution, batch
               norm and ReLU after each, global average pooling, dropout 0.2, one logit
  resnet       the shipped model's network: ResNet of basic blocks, width 16, two blocks a stage
               (`torch_resnet`)
  resnet-loc   the same with the fracture map's feature pyramid; its training step adds a
               per-pixel BCE on the map, as ours does
Parameter counts (batch-norm running statistics included) are checked against ours.

Usage: peers.py --framework torch|torch-cl|keras|keras-xla
                --model fracturenet|mobilenet|resnet|resnet-loc
                [--image-size 128] [--threads 2] [--warmup 3] [--repeats 10]
benches/peers/run.sh runs every configuration beside `fracture-cnn bench` and prints the table.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--framework", required=True, choices=["torch", "torch-cl", "keras", "keras-xla"])
ap.add_argument("--model", required=True, choices=["fracturenet", "mobilenet", "resnet", "resnet-loc"])
ap.add_argument("--image-size", type=int, default=128)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--infer-batch-size", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--repeats", type=int, default=10)
args = ap.parse_args()
# Thread counts must be set before the frameworks start their pools.
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FRACTURENET_CHANNELS = [32, 64, 128, 128]
# (stride of the depthwise convolution, channels of the pointwise one) at width 1, as in
# src/nn/mobilenet.rs
MOBILENET_BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [
    (2, 1024),
    (1, 1024),
]
MOBILENET_WIDTH = 0.5
# What `fracture-cnn model summary` counts (trainable + batch-norm running statistics) at 128;
# the resnets' count does not depend on the size.
EXPECTED_PARAMS = {"fracturenet": 1_298_689, "mobilenet": 835_233, "resnet": 703_361,
                   "resnet-loc": 718_978}
# src/nn/resnet.rs: the preset `resnet` is width 16, two basic blocks a stage, four stages.
RESNET_WIDTH, RESNET_DEPTH = 16, 2


def width(c):
    return max(1, round(c * MOBILENET_WIDTH))


def median_time(run, warmup, repeats):
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_model(torch, nn, name, hw):
    def bn_relu(c):
        return [nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]

    if name == "fracturenet":
        layers, c = [], 1
        for out in FRACTURENET_CHANNELS:
            layers += [nn.Conv2d(c, out, 3, padding=1)] + bn_relu(out) + [nn.MaxPool2d(2, 2)]
            c = out
        side = hw // 16
        layers += [nn.Flatten(), nn.Linear(c * side * side, 128), nn.ReLU(), nn.Dropout(0.5)]
        layers += [nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 1)]
        return nn.Sequential(*layers)

    def conv3x3(cin, cout, stride, groups=1):
        # "same" padding: 1 each side at stride 1; at stride 2 on an even size TensorFlow's (and
        # fracture-cnn's) 0 before and 1 after
        if stride == 1:
            return [nn.Conv2d(cin, cout, 3, padding=1, groups=groups)]
        return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, 3, stride=2, groups=groups)]

    c = width(32)
    layers = conv3x3(1, c, 2) + bn_relu(c)
    for stride, out in MOBILENET_BLOCKS:
        layers += conv3x3(c, c, stride, groups=c) + bn_relu(c)
        layers += [nn.Conv2d(c, width(out), 1)] + bn_relu(width(out))
        c = width(out)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, 1)]
    return nn.Sequential(*layers)


def torch_resnet(torch, nn, with_map):
    """src/nn/resnet.rs in PyTorch: a 7×7/2 stem and a 2×2 max pool, four stages of basic blocks
    (a 1×1 convolution with a bias as the shortcut where the shape changes), global average
    pooling and one logit; with the map, the feature pyramid over stages 2–4 (1×1 to 2·width,
    nearest ×2 upsampling, added to the stage, projected by a 1×1 where its channels differ),
    a 3×3 convolution, batch norm, ReLU and a 1×1 of one filter."""
    def conv_same(cin, cout, k, stride):
        # TensorFlow's "same" (and ours): at stride 2 on an even size, the extra row and column of
        # padding go after
        total = max(k - stride, 0)
        pad = (total // 2, total - total // 2, total // 2, total - total // 2)
        return nn.Sequential(nn.ZeroPad2d(pad), nn.Conv2d(cin, cout, k, stride=stride))

    def bn_relu(c):
        return [nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]

    class Add(nn.Module):
        """body + shortcut, the shortcut through a 1×1 convolution where the shapes differ."""
        def __init__(self, cin, cout, stride):
            super().__init__()
            same = cin == cout and stride == 1
            self.projection = None if same else nn.Conv2d(cin, cout, 1, stride=stride)

        def forward(self, body, shortcut):
            return body + (shortcut if self.projection is None else self.projection(shortcut))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv_same(cin, cout, 3, stride), *bn_relu(cout),
                                      conv_same(cout, cout, 3, 1),
                                      nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))
            self.add = Add(cin, cout, stride)

        def forward(self, x):
            return torch.relu(self.add(self.body(x), x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = RESNET_WIDTH
            self.stem = nn.Sequential(conv_same(1, w, 7, 2), *bn_relu(w), nn.MaxPool2d(2, 2))
            stages, c = [], w
            for stage in range(4):
                blocks = []
                for block in range(RESNET_DEPTH):
                    out = w << stage
                    blocks.append(Block(c, out, 2 if stage > 0 and block == 0 else 1))
                    c = out
                stages.append(nn.Sequential(*blocks))
            self.stages = nn.ModuleList(stages)
            self.head = nn.Linear(c, 1)
            if with_map:
                self.fpn32 = nn.Conv2d(8 * w, 2 * w, 1)
                self.add16, self.add8 = Add(4 * w, 2 * w, 1), Add(2 * w, 2 * w, 1)
                self.map = nn.Sequential(conv_same(2 * w, 2 * w, 3, 1), *bn_relu(2 * w),
                                         nn.Conv2d(2 * w, 1, 1))

        def forward(self, x):
            x = self.stem(x)
            outs = []
            for stage in self.stages:
                x = stage(x)
                outs.append(x)
            logit = self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
            if not with_map:
                return logit
            up = lambda t: nn.functional.interpolate(t, scale_factor=2, mode="nearest")
            level = self.add16(up(self.fpn32(outs[3])), outs[2])
            level = self.add8(up(level), outs[1])
            return logit, self.map(level)

    return ResNet()


def run_torch():
    import torch
    import torch.nn as nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hw = args.image_size
    with_map = args.model == "resnet-loc"
    if args.model.startswith("resnet"):
        model = torch_resnet(torch, nn, with_map)
    else:
        model = torch_model(torch, nn, args.model, hw)
    params = sum(p.numel() for p in model.parameters())
    params += sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    fmt = torch.channels_last if args.framework == "torch-cl" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(args.batch_size, 1, hw, hw).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (args.batch_size, 1)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    # the map's per-pixel loss against a target map, as our training adds it
    m = torch.randint(0, 2, (args.batch_size, 1, hw // 8, hw // 8)).float() if with_map else None

    def loss_of(out):
        if not with_map:
            return loss_fn(out, y)
        logit, fracture_map = out
        return loss_fn(logit, y) + loss_fn(fracture_map, m)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_of(model(x)).backward()
        opt.step()

    model.train()
    train_s = median_time(train_step, args.warmup, args.repeats)
    model.eval()
    xi = torch.rand(args.infer_batch_size, 1, hw, hw).contiguous(memory_format=fmt)
    with torch.no_grad():
        infer_s = median_time(lambda: model(xi), args.warmup, args.repeats)
    return params, train_s, infer_s, f"torch {torch.__version__}"


def keras_model(keras, name, hw):
    from keras import layers

    def bn_relu(t):
        t = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(t)
        return layers.ReLU()(t)

    inp = keras.Input((hw, hw, 1))
    if name == "fracturenet":
        t = inp
        for out in FRACTURENET_CHANNELS:
            t = bn_relu(layers.Conv2D(out, 3, padding="same")(t))
            t = layers.MaxPooling2D(2, 2)(t)
        t = layers.Flatten()(t)
        t = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(t))
        t = layers.Dropout(0.5)(layers.Dense(64, activation="relu")(t))
        return keras.Model(inp, layers.Dense(1)(t))
    # Keras' "same" at stride 2 pads 0 before and 1 after on an even size, as ours does.
    t = bn_relu(layers.Conv2D(width(32), 3, strides=2, padding="same")(inp))
    for stride, out in MOBILENET_BLOCKS:
        t = bn_relu(layers.DepthwiseConv2D(3, strides=stride, padding="same")(t))
        t = bn_relu(layers.Conv2D(width(out), 1)(t))
    t = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(t))
    return keras.Model(inp, layers.Dense(1)(t))


def keras_resnet(keras, hw, with_map):
    """src/nn/resnet.rs in Keras, as `torch_resnet` is in PyTorch."""
    from keras import layers

    def bn(t):
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(t)

    def add(body, shortcut):
        if body.shape[1:] != shortcut.shape[1:]:
            stride = shortcut.shape[1] // body.shape[1]
            shortcut = layers.Conv2D(body.shape[-1], 1, strides=stride)(shortcut)
        return layers.Add()([body, shortcut])

    w = RESNET_WIDTH
    inp = keras.Input((hw, hw, 1))
    t = layers.ReLU()(bn(layers.Conv2D(w, 7, strides=2, padding="same")(inp)))
    t = layers.MaxPooling2D(2, 2)(t)
    outs = []
    for stage in range(4):
        for block in range(RESNET_DEPTH):
            stride = 2 if stage > 0 and block == 0 else 1
            body = layers.ReLU()(bn(layers.Conv2D(w << stage, 3, strides=stride, padding="same")(t)))
            body = bn(layers.Conv2D(w << stage, 3, padding="same")(body))
            t = layers.ReLU()(add(body, t))
        outs.append(t)
    logit = layers.Dense(1)(layers.GlobalAveragePooling2D()(t))
    if not with_map:
        return keras.Model(inp, logit)
    up = lambda t: layers.UpSampling2D(2, interpolation="nearest")(t)
    level = add(up(layers.Conv2D(2 * w, 1)(outs[3])), outs[2])
    level = add(up(level), outs[1])
    level = layers.ReLU()(bn(layers.Conv2D(2 * w, 3, padding="same")(level)))
    return keras.Model(inp, [logit, layers.Conv2D(1, 1)(level)])


def run_keras():
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    keras.utils.set_random_seed(0)
    jit = args.framework == "keras-xla"
    hw = args.image_size
    with_map = args.model == "resnet-loc"
    if args.model.startswith("resnet"):
        model = keras_resnet(keras, hw, with_map)
    else:
        model = keras_model(keras, args.model, hw)
    params = model.count_params()
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3),
        loss=[bce, bce] if with_map else bce,
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.batch_size, hw, hw, 1), dtype=np.float32)
    y = rng.integers(0, 2, (args.batch_size, 1)).astype(np.float32)
    if with_map:
        m = rng.integers(0, 2, (args.batch_size, hw // 8, hw // 8, 1)).astype(np.float32)
        y = [y, m]
    train_s = median_time(lambda: model.train_on_batch(x, y), args.warmup, args.repeats)
    xi = tf.constant(rng.random((args.infer_batch_size, hw, hw, 1), dtype=np.float32))
    infer = tf.function(lambda t: model(t, training=False), jit_compile=jit)
    # every output read back (the map too, for resnet-loc)
    infer_s = median_time(lambda: [o.numpy() for o in tf.nest.flatten(infer(xi))], args.warmup,
                          args.repeats)
    return params, train_s, infer_s, f"tensorflow {tf.__version__}, keras {keras.__version__}"


params, train_s, infer_s, versions = run_torch() if args.framework.startswith("torch") else run_keras()
size_free = args.model.startswith("resnet")
if (size_free or args.image_size == 128) and params != EXPECTED_PARAMS[args.model]:
    raise SystemExit(f"{args.framework} {args.model} has {params:,} parameters, ours "
                     f"{EXPECTED_PARAMS[args.model]:,}: not the same model")
print(json.dumps({
    "framework": args.framework,
    "versions": versions,
    "model": args.model,
    "image_size": args.image_size,
    "threads": args.threads,
    "parameters": params,
    "train_batch": args.batch_size,
    "train_images_per_s": args.batch_size / train_s,
    "infer_batch": args.infer_batch_size,
    "infer_images_per_s": args.infer_batch_size / infer_s,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "python": platform.python_version(),
}))
