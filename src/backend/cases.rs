//! The op cases: one list of every primitive op with its shapes, inputs and passes, which drives
//! every check and timing of the ops (as llm.c's `dev/cuda` harness does for its kernels):
//! - each backend's forward and backward passes against the [`Reference`](super::reference)
//!   backend (`tests/ops.rs`);
//! - each backward pass against finite differences of its forward pass (`gradcheck`);
//! - the GPU against the CPU, on every GPU kernel variant (`tests/gpu_parity.rs`);
//! - `bench`'s per-op timings, at a model's own shapes (`bench::layer_case`: the backend knows no
//!   layer).
//!
//! A new op, or a new shape that a kernel treats differently, is one entry here.
//!
//! Why one file of over 700 lines: it is one list, and the point of it is that every op's case is
//! in it; its per-op entries are short and independent.

use super::{
    AdamStep, Backend, BatchNormStats, Conv2dGeom, Epilogue, Padding, Pool2dGeom, SgdStep,
};
use crate::tensor::{Shape, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

/// Epsilon of the batch-norm cases (the layers' default).
const BN_EPS: f32 = 1e-5;
/// Seed of the dropout masks.
const DROPOUT_SEED: u64 = 1234;
/// The Adam update of the cases: a third step, with weight decay, so that every term counts.
const ADAM: AdamStep = AdamStep {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 1e-2,
    t: 3,
};
const SGD: SgdStep = SgdStep {
    lr: 1e-2,
    momentum: 0.9,
    weight_decay: 1e-2,
};

/// One primitive op of the [`Backend`] trait at one set of shapes.
#[derive(Clone, Debug)]
pub enum Op {
    Conv2d(Conv2dGeom),
    /// The convolution with its ReLU fused (forward only: a layer's backward pass is the
    /// convolution's after ReLU's).
    ConvRelu(Conv2dGeom),
    /// The convolution (with its ReLU when `relu`), then max pooling of its output, fused
    /// (inference: forward only).
    ConvMaxPool {
        conv: Conv2dGeom,
        pool: Pool2dGeom,
        relu: bool,
    },
    /// `g.c_out == g.c_in`.
    Depthwise(Conv2dGeom),
    /// The depthwise convolution with its ReLU fused (forward only, as `ConvRelu`).
    DepthwiseRelu(Conv2dGeom),
    /// Training mode over `[N,C,H,W]` or `[N,F]`, then the epilogue's ReLU and max pooling.
    BatchNorm(Vec<usize>, Epilogue),
    /// Inference mode (running statistics) over `[N,C,H,W]`.
    BatchNormInfer(Vec<usize>),
    MaxPool(Pool2dGeom),
    /// Max pooling's forward pass without the positions (inference).
    MaxPoolInfer(Pool2dGeom),
    GlobalAvgPool([usize; 4]),
    /// Nearest-neighbour upsampling of `x[N,C,H,W]` by a factor.
    Upsample([usize; 4], usize),
    /// `x[n,i]` → `y[n,o]`.
    Dense {
        n: usize,
        i: usize,
        o: usize,
    },
    Add(Vec<usize>),
    Relu(Vec<usize>),
    Dropout {
        shape: Vec<usize>,
        p: f32,
    },
    /// The fused sigmoid-BCE over `n` logits, some of them saturated.
    Bce {
        n: usize,
        pos_weight: f32,
    },
    /// One update of `len` parameters.
    Adam(usize),
    Sgd(usize),
}

/// One named input of an op case. Differentiable inputs have a gradient `d<name>` among the
/// outputs of the op's backward passes.
pub struct Input {
    pub name: &'static str,
    pub value: Tensor,
    pub differentiable: bool,
}

/// An op's inputs on a backend, with what its backward passes need from its forward pass.
pub struct State<B: Backend> {
    pub inputs: Vec<B::Tensor>,
    /// The gradient fed to the backward passes, of the forward output's shape.
    pub dy: B::Tensor,
    saved: Saved<B>,
}

/// What a backward pass keeps from the forward pass.
enum Saved<B: Backend> {
    Nothing,
    Argmax(B::Indices),
    /// Batch norm's statistics, and its pooling's positions when it pools.
    Stats(BatchNormStats<B::Tensor>, Option<B::Indices>),
}

/// Values of magnitude 0.1, 0.13, 0.16, ... (128 levels, so at most 3.9) in random order and with
/// random signs: never near 0 and, within any small window, no two closer than 3 steps of 1e-2,
/// so that no finite-difference step crosses a ReLU kink, changes which element of a pooling
/// window wins, or is large next to the spread of a batch-norm channel. (Larger tensors repeat
/// the levels: the rare window holding a repeat is caught by the layer's kink fingerprint and
/// skipped. Unbounded levels would make f32 rounding of large inputs swamp the differences.)
pub fn away_from_kinks(shape: impl Into<Shape>, seed: u64) -> Tensor {
    const LEVELS: usize = 128;
    const GAP: f32 = 3e-2;
    let shape = shape.into();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut levels: Vec<usize> = (0..shape.numel()).collect();
    levels.shuffle(&mut rng);
    let data = levels
        .iter()
        .map(|&l| {
            let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
            sign * (0.1 + (l % LEVELS) as f32 * GAP)
        })
        .collect();
    Tensor::new(shape, data)
}

fn uniform(shape: impl Into<Shape>, seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, -1.0, 1.0, seed)
}

fn input(name: &'static str, value: Tensor) -> Input {
    Input {
        name,
        value,
        differentiable: true,
    }
}

fn fixed(name: &'static str, value: Tensor) -> Input {
    Input {
        name,
        value,
        differentiable: false,
    }
}

/// Batch norm is very curved at the scale of a channel's spread: a channel of a few values is
/// spread out (|x| up to ~40) so that its variance is far above a finite-difference step. (Larger
/// channels are left alone: there, larger values would only add rounding to the loss.)
fn batchnorm_input(shape: &[usize], seed: u64) -> Tensor {
    let x = away_from_kinks(shape, seed);
    let per_channel = x.numel() / shape[1];
    let spread = if per_channel <= 8 { 10.0 } else { 1.0 };
    Tensor::new(x.shape, x.data.iter().map(|v| spread * v).collect())
}

impl Op {
    /// A short description with the shapes, e.g. "conv2d 3x3 s2x2 pad1/1 [9, 2, 7, 6] -> 3".
    pub fn name(&self) -> String {
        let conv = |what: &str, g: &Conv2dGeom| {
            format!(
                "{what} {}x{} s{}x{} pad{}/{} {:?} -> {}",
                g.kh,
                g.kw,
                g.stride_h,
                g.stride_w,
                g.pad_top,
                g.pad_left,
                g.input_shape(),
                g.c_out
            )
        };
        match self {
            Op::Conv2d(g) => conv("conv2d", g),
            Op::ConvRelu(g) => conv("conv2d+relu", g),
            Op::ConvMaxPool {
                conv: g,
                pool,
                relu,
            } => format!(
                "{} then maxpool {}x{} s{}x{}",
                conv(if *relu { "conv2d+relu" } else { "conv2d" }, g),
                pool.kh,
                pool.kw,
                pool.stride_h,
                pool.stride_w
            ),
            Op::Depthwise(g) => conv("depthwise", g),
            Op::DepthwiseRelu(g) => conv("depthwise+relu", g),
            Op::BatchNorm(s, then) => {
                let relu = if then.relu { " then relu" } else { "" };
                let pool = then.pool.map_or(String::new(), |g| {
                    format!(
                        " then maxpool {}x{} s{}x{}",
                        g.kh, g.kw, g.stride_h, g.stride_w
                    )
                });
                format!("batchnorm {s:?}{relu}{pool}")
            }
            Op::BatchNormInfer(s) => format!("batchnorm (inference) {s:?}"),
            Op::MaxPool(g) | Op::MaxPoolInfer(g) => format!(
                "maxpool{} {}x{} s{}x{} {:?}",
                if matches!(self, Op::MaxPoolInfer(_)) {
                    " (inference)"
                } else {
                    ""
                },
                g.kh,
                g.kw,
                g.stride_h,
                g.stride_w,
                g.input_shape()
            ),
            Op::GlobalAvgPool(s) => format!("global avgpool {s:?}"),
            Op::Upsample(s, f) => format!("upsample x{f} {s:?}"),
            Op::Dense { n, i, o } => format!("dense [{n}, {i}] -> {o}"),
            Op::Add(s) => format!("add {s:?}"),
            Op::Relu(s) => format!("relu {s:?}"),
            Op::Dropout { shape, p } => format!("dropout p={p} {shape:?}"),
            Op::Bce { n, pos_weight } => format!("bce pos_weight={pos_weight} n={n}"),
            Op::Adam(len) => format!("adam step of {len}"),
            Op::Sgd(len) => format!("sgd step of {len}"),
        }
    }

    /// The inputs, drawn from `seed`: uniform in [-1, 1], except where an op has kinks (ReLU,
    /// max pooling) or is curved at small scales (batch norm), and non-negative where an op
    /// needs it (Adam's second moment, running variances).
    pub fn inputs(&self, seed: u64) -> Vec<Input> {
        let s = seed;
        match self {
            Op::Conv2d(g) => vec![
                input("x", uniform(g.input_shape(), s)),
                input("w", uniform(g.weight_shape(), s + 1)),
                input("b", uniform([g.c_out], s + 2)),
            ],
            // forward only: its gradients are the convolution's after ReLU's, checked as a layer
            Op::ConvRelu(g) | Op::ConvMaxPool { conv: g, .. } => vec![
                fixed("x", uniform(g.input_shape(), s)),
                fixed("w", uniform(g.weight_shape(), s + 1)),
                fixed("b", uniform([g.c_out], s + 2)),
            ],
            Op::Depthwise(g) => vec![
                input("x", uniform(g.input_shape(), s)),
                input("w", uniform(g.depthwise_weight_shape(), s + 1)),
                input("b", uniform([g.c_in], s + 2)),
            ],
            Op::DepthwiseRelu(g) => vec![
                fixed("x", uniform(g.input_shape(), s)),
                fixed("w", uniform(g.depthwise_weight_shape(), s + 1)),
                fixed("b", uniform([g.c_in], s + 2)),
            ],
            Op::BatchNorm(shape, _) => vec![
                input("x", batchnorm_input(shape, s)),
                input("gamma", Tensor::rand_uniform([shape[1]], 0.5, 1.5, s + 1)),
                input("beta", uniform([shape[1]], s + 2)),
            ],
            Op::BatchNormInfer(shape) => vec![
                fixed("x", uniform(shape.as_slice(), s)),
                fixed("gamma", Tensor::rand_uniform([shape[1]], 0.5, 1.5, s + 1)),
                fixed("beta", uniform([shape[1]], s + 2)),
                fixed("running_mean", uniform([shape[1]], s + 3)),
                fixed(
                    "running_var",
                    Tensor::rand_uniform([shape[1]], 0.1, 2.0, s + 4),
                ),
            ],
            Op::MaxPool(g) => vec![input("x", away_from_kinks(g.input_shape(), s))],
            Op::MaxPoolInfer(g) => vec![fixed("x", uniform(g.input_shape(), s))],
            Op::GlobalAvgPool(shape) | Op::Upsample(shape, _) => {
                vec![input("x", uniform(*shape, s))]
            }
            Op::Dense { n, i, o } => vec![
                input("x", uniform([*n, *i], s)),
                input("w", uniform([*o, *i], s + 1)),
                input("b", uniform([*o], s + 2)),
            ],
            Op::Add(shape) => vec![
                input("a", uniform(shape.as_slice(), s)),
                input("b", uniform(shape.as_slice(), s + 1)),
            ],
            Op::Relu(shape) => vec![input("x", away_from_kinks(shape.as_slice(), s))],
            Op::Dropout { shape, .. } => vec![input("x", uniform(shape.as_slice(), s))],
            Op::Bce { n, .. } => {
                // the middle and both saturated ends of the sigmoid
                let z = (0..*n).map(|k| [-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0][k % 7]);
                let y = (0..*n).map(|k| ((k * 5 / 3) % 2) as f32);
                vec![
                    input("logits", Tensor::new([*n, 1], z.collect())),
                    fixed("targets", Tensor::new([*n], y.collect())),
                ]
            }
            Op::Adam(len) => vec![
                fixed("p", uniform([*len], s)),
                fixed("g", uniform([*len], s + 1)),
                fixed("m", Tensor::rand_uniform([*len], -0.1, 0.1, s + 2)),
                fixed("v", Tensor::rand_uniform([*len], 0.0, 0.1, s + 3)),
            ],
            Op::Sgd(len) => vec![
                fixed("p", uniform([*len], s)),
                fixed("g", uniform([*len], s + 1)),
                fixed("velocity", uniform([*len], s + 2)),
            ],
        }
    }

    /// The shape of the forward pass's output `y`, and so of the `dy` its backward passes take.
    pub fn output_shape(&self) -> Shape {
        match self {
            Op::Conv2d(g) | Op::ConvRelu(g) | Op::Depthwise(g) | Op::DepthwiseRelu(g) => {
                g.output_shape().into()
            }
            Op::MaxPool(g) | Op::MaxPoolInfer(g) => g.output_shape().into(),
            Op::ConvMaxPool { pool, .. }
            | Op::BatchNorm(
                _,
                Epilogue {
                    pool: Some(pool), ..
                },
            ) => pool.output_shape().into(),
            Op::GlobalAvgPool([n, c, _, _]) => [*n, *c].into(),
            Op::Upsample([n, c, h, w], f) => [*n, *c, h * f, w * f].into(),
            Op::Dense { n, o, .. } => [*n, *o].into(),
            Op::BatchNorm(s, _)
            | Op::BatchNormInfer(s)
            | Op::Add(s)
            | Op::Relu(s)
            | Op::Dropout { shape: s, .. } => s.as_slice().into(),
            Op::Bce { .. } => [1].into(),
            Op::Adam(len) | Op::Sgd(len) => [*len].into(),
        }
    }

    /// The passes of the op, each run and timed on its own: "forward" first, then the backward
    /// passes, whose outputs are the gradients `d<input>` of the differentiable inputs.
    pub fn passes(&self) -> &'static [&'static str] {
        match self {
            Op::Conv2d(_) | Op::Depthwise(_) | Op::Dense { .. } => {
                &["forward", "backward input", "backward weight"]
            }
            Op::BatchNorm(..)
            | Op::MaxPool(_)
            | Op::GlobalAvgPool(_)
            | Op::Upsample(..)
            | Op::Add(_)
            | Op::Relu(_)
            | Op::Dropout { .. } => &["forward", "backward"],
            // the fused loss returns its gradient from the forward pass; the rest have none
            Op::ConvRelu(_)
            | Op::DepthwiseRelu(_)
            | Op::ConvMaxPool { .. }
            | Op::MaxPoolInfer(_)
            | Op::Bce { .. }
            | Op::BatchNormInfer(_)
            | Op::Adam(_)
            | Op::Sgd(_) => &["forward"],
        }
    }

    /// Multiply-adds times two of a pass, for the ops whose time is their arithmetic.
    pub fn flops(&self, pass: usize) -> Option<u64> {
        match self {
            Op::Conv2d(g) | Op::ConvRelu(g) | Op::ConvMaxPool { conv: g, .. } => {
                Some(g.forward_flops())
            }
            Op::Depthwise(g) | Op::DepthwiseRelu(g) => Some(g.depthwise_flops()),
            Op::Dense { n, i, o } => Some(2 * (n * i * o) as u64),
            _ => None,
        }
        .filter(|_| pass < self.passes().len())
    }

    /// Values in the largest piece a backend with bounded buffers must hold whole: one sample's
    /// slice of a batch tensor or of a convolution's im2col workspace, or a parameter tensor
    /// (see [`super::TensorLimits`]). The GPU tests run each case in windows of this size.
    pub fn largest_piece(&self) -> usize {
        let per_sample = |shape: &[usize]| shape[1..].iter().product::<usize>();
        match self {
            Op::Conv2d(g) | Op::ConvRelu(g) | Op::ConvMaxPool { conv: g, .. } => {
                let col = g.patch_len() * g.out_h * g.out_w;
                let out = g.c_out * g.out_h * g.out_w;
                [g.c_in * g.h * g.w, out, col, g.c_out * g.patch_len()]
                    .into_iter()
                    .max()
                    .unwrap_or(0)
            }
            Op::Depthwise(g) | Op::DepthwiseRelu(g) => {
                (g.c_in * g.h * g.w).max(g.c_in * g.kh * g.kw)
            }
            Op::MaxPool(g) | Op::MaxPoolInfer(g) => g.c * g.h * g.w,
            Op::GlobalAvgPool(shape) => per_sample(shape),
            Op::Upsample(shape, f) => per_sample(shape) * f * f,
            Op::Dense { i, o, .. } => i * o,
            // and the GPU's per-channel table [γ | β | mean | scale] in one binding
            Op::BatchNorm(s, _) | Op::BatchNormInfer(s) => per_sample(s).max(4 * s[1]),
            Op::Add(s) | Op::Relu(s) => per_sample(s),
            Op::Dropout { shape, .. } => per_sample(shape),
            Op::Bce { n, .. } => *n,
            Op::Adam(len) | Op::Sgd(len) => *len,
        }
    }

    /// Uploads the inputs and `dy` and runs what the backward passes need from the forward one.
    pub fn prepare<B: Backend>(&self, be: &B, inputs: &[Input], dy: &Tensor) -> State<B> {
        let inputs: Vec<B::Tensor> = inputs.iter().map(|i| be.upload(&i.value)).collect();
        let saved = match self {
            Op::MaxPool(g) => Saved::Argmax(be.maxpool_forward(&inputs[0], g).1),
            Op::BatchNorm(_, then) => {
                let gamma_beta = (&inputs[1], &inputs[2]);
                let (_, stats, argmax) =
                    be.batchnorm_forward_train(&inputs[0], gamma_beta, BN_EPS, then);
                Saved::Stats(stats, argmax)
            }
            _ => Saved::Nothing,
        };
        State {
            inputs,
            dy: be.upload(dy),
            saved,
        }
    }

    /// Runs pass `pass` (an index into [`Op::passes`]) and returns its named outputs. The
    /// optimisers update their inputs in place and return nothing: see [`Op::outputs`].
    pub fn run<B: Backend>(
        &self,
        be: &B,
        pass: usize,
        st: &mut State<B>,
    ) -> Vec<(&'static str, B::Tensor)> {
        let (x, dy) = (&st.inputs, &st.dy);
        match (self, pass) {
            (Op::Conv2d(g), 0) => vec![("y", be.conv2d_forward(&x[0], &x[1], &x[2], g))],
            (Op::ConvRelu(g), _) => vec![("y", be.conv2d_relu_forward(&x[0], &x[1], &x[2], g))],
            (Op::ConvMaxPool { conv, pool, relu }, _) => vec![(
                "y",
                be.conv2d_maxpool_forward(&x[0], (&x[1], &x[2]), conv, *relu, pool),
            )],
            (Op::Conv2d(g), 1) => vec![("dx", be.conv2d_backward_input(dy, &x[1], g))],
            (Op::Conv2d(g), _) => {
                let (dw, db) = be.conv2d_backward_weight(&x[0], dy, g);
                vec![("dw", dw), ("db", db)]
            }
            (Op::DepthwiseRelu(g), _) => vec![(
                "y",
                be.depthwise_conv2d_relu_forward(&x[0], &x[1], &x[2], g),
            )],
            (Op::Depthwise(g), 0) => {
                vec![("y", be.depthwise_conv2d_forward(&x[0], &x[1], &x[2], g))]
            }
            (Op::Depthwise(g), 1) => vec![("dx", be.depthwise_conv2d_backward_input(dy, &x[1], g))],
            (Op::Depthwise(g), _) => {
                let (dw, db) = be.depthwise_conv2d_backward_weight(&x[0], dy, g);
                vec![("dw", dw), ("db", db)]
            }
            (Op::BatchNorm(_, then), 0) => {
                let (y, s, argmax) =
                    be.batchnorm_forward_train(&x[0], (&x[1], &x[2]), BN_EPS, then);
                if let Saved::Stats(_, saved) = &mut st.saved {
                    *saved = argmax; // this pass's positions, as max pooling's forward keeps
                }
                vec![
                    ("y", y),
                    ("mean", s.mean),
                    ("var", s.var),
                    ("inv_std", s.inv_std),
                ]
            }
            (Op::BatchNorm(_, then), _) => {
                let Saved::Stats(stats, argmax) = &st.saved else {
                    unreachable!("prepare saves batch norm's statistics")
                };
                let (dx, dgamma, dbeta) = be.batchnorm_backward(
                    &x[0],
                    (dy, argmax.as_ref()),
                    (&x[1], &x[2]),
                    stats,
                    then,
                );
                vec![("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)]
            }
            (Op::BatchNormInfer(_), _) => vec![(
                "y",
                be.batchnorm_forward_infer(&x[0], &x[1], &x[2], &x[3], &x[4], BN_EPS),
            )],
            (Op::MaxPool(g), 0) => {
                let (y, argmax) = be.maxpool_forward(&x[0], g);
                st.saved = Saved::Argmax(argmax);
                vec![("y", y)]
            }
            (Op::MaxPoolInfer(g), _) => vec![("y", be.maxpool_forward_infer(&x[0], g))],
            (Op::MaxPool(g), _) => {
                let Saved::Argmax(argmax) = &st.saved else {
                    unreachable!("prepare saves max pooling's positions")
                };
                vec![("dx", be.maxpool_backward(dy, argmax, g))]
            }
            (Op::GlobalAvgPool(_), 0) => vec![("y", be.global_avgpool_forward(&x[0]))],
            (Op::GlobalAvgPool([_, _, h, w]), _) => {
                vec![("dx", be.global_avgpool_backward(dy, (*h, *w)))]
            }
            (Op::Upsample(_, f), 0) => vec![("y", be.upsample_forward(&x[0], *f))],
            (Op::Upsample(_, f), _) => vec![("dx", be.upsample_backward(dy, *f))],
            (Op::Dense { .. }, 0) => vec![("y", be.dense_forward(&x[0], &x[1], &x[2]))],
            (Op::Dense { .. }, 1) => vec![("dx", be.dense_backward_input(dy, &x[1]))],
            (Op::Dense { .. }, _) => {
                let (dw, db) = be.dense_backward_weight(&x[0], dy);
                vec![("dw", dw), ("db", db)]
            }
            (Op::Add(_), 0) => vec![("y", be.add(&x[0], &x[1]))],
            // y = a + b passes dy to both (a residual block's merge does exactly this)
            (Op::Add(_), _) => vec![("da", be.copy(dy)), ("db", be.copy(dy))],
            (Op::Relu(_), 0) => vec![("y", be.relu_forward(&x[0]))],
            (Op::Relu(_), _) => vec![("dx", be.relu_backward(&x[0], dy))],
            (Op::Dropout { p, .. }, 0) => vec![("y", be.dropout_forward(&x[0], *p, DROPOUT_SEED))],
            (Op::Dropout { p, .. }, _) => vec![("dx", be.dropout_backward(dy, *p, DROPOUT_SEED))],
            (Op::Bce { pos_weight, .. }, _) => {
                let (loss, dlogits) = be.bce_with_logits(&x[0], &x[1], *pos_weight);
                vec![("y", loss), ("dlogits", dlogits)]
            }
            (Op::Adam(_), _) => {
                let [p, g, m, v] = &mut st.inputs[..] else {
                    unreachable!("adam has four inputs")
                };
                be.adam_step(p, g, m, v, &ADAM);
                vec![]
            }
            (Op::Sgd(_), _) => {
                let [p, g, velocity] = &mut st.inputs[..] else {
                    unreachable!("sgd has three inputs")
                };
                be.sgd_step(p, g, velocity, &SGD);
                vec![]
            }
        }
    }

    /// The positions of max pooling's maxima from the last forward pass, where each output
    /// came from (an output of the forward pass in all but type).
    pub fn argmax<B: Backend>(&self, be: &B, st: &State<B>) -> Option<Tensor> {
        let (g, argmax) = match (self, &st.saved) {
            (Op::MaxPool(g), Saved::Argmax(argmax)) => (g, argmax),
            (Op::BatchNorm(_, then), Saved::Stats(_, Some(argmax))) => {
                (then.pool.as_ref()?, argmax)
            }
            _ => return None,
        };
        let positions = be
            .download_indices(argmax)
            .iter()
            .map(|&i| i as f32)
            .collect();
        Some(Tensor::new(g.output_shape(), positions))
    }

    /// Every output of every pass, downloaded and named `"<pass>: <output>"` (with max pooling's
    /// positions); for the optimisers, the updated parameters and moments.
    pub fn outputs<B: Backend>(&self, be: &B, seed: u64) -> Vec<(String, Tensor)> {
        let inputs = self.inputs(seed);
        let dy = uniform(self.output_shape(), seed + 99);
        let mut st = self.prepare(be, &inputs, &dy);
        let mut out = Vec::new();
        for (k, pass) in self.passes().iter().enumerate() {
            for (name, t) in self.run(be, k, &mut st) {
                out.push((format!("{pass}: {name}"), be.download(&t)));
            }
            if k == 0 {
                out.extend(self.argmax(be, &st).map(|a| ("forward: argmax".into(), a)));
            }
        }
        if matches!(self, Op::Adam(_) | Op::Sgd(_)) {
            for (i, t) in inputs.iter().zip(&st.inputs) {
                out.push((format!("updated {}", i.name), be.download(t)));
            }
        }
        out
    }
}

/// The cases every backend is checked on. Batches of 9, 17 and 33 cross the grouping constants
/// of the kernels (the CPU convolution's weight gradient sums groups of 8 images; GPU workgroups
/// cover 8, 16, 32 or 64 values); odd sizes, batch 1 and channel counts that are not multiples
/// of a tile are there for the same reason.
pub fn suite() -> Vec<Op> {
    let conv =
        |n, ci, h, w, co, k, s, p| Op::Conv2d(Conv2dGeom::new(n, ci, h, w, co, k, s, p).unwrap());
    let conv_relu =
        |n, ci, h, w, co, k, s, p| Op::ConvRelu(Conv2dGeom::new(n, ci, h, w, co, k, s, p).unwrap());
    let conv_pool = |n, ci, h, w, co, k, s, relu, pk, ps| {
        let conv = Conv2dGeom::new(n, ci, h, w, co, k, s, Padding::Same).unwrap();
        let [_, c, ho, wo] = conv.output_shape();
        let pool = Pool2dGeom::new(n, c, ho, wo, pk, ps).unwrap();
        Op::ConvMaxPool { conv, pool, relu }
    };
    let dw =
        |n, c, h, w, k, s, p| Op::Depthwise(Conv2dGeom::depthwise(n, c, h, w, k, s, p).unwrap());
    let pool = |n, c, h, w, k, s| Op::MaxPool(Pool2dGeom::new(n, c, h, w, k, s).unwrap());
    let bn = |shape: &[usize], relu, pool: Option<((usize, usize), (usize, usize))>| {
        let pool = pool.map(|(k, s)| {
            let [n, c, h, w] = shape[..] else {
                unreachable!("pooled cases are images")
            };
            Pool2dGeom::new(n, c, h, w, k, s).unwrap()
        });
        Op::BatchNorm(shape.to_vec(), Epilogue { relu, pool })
    };
    let (same, valid) = (Padding::Same, Padding::Valid);
    vec![
        conv(1, 1, 7, 5, 3, (3, 3), (1, 1), same),
        conv(2, 3, 6, 5, 4, (3, 3), (1, 1), same),
        conv(9, 2, 7, 6, 3, (3, 3), (2, 2), same),
        conv(17, 2, 5, 5, 2, (3, 3), (2, 2), valid),
        conv(33, 1, 4, 4, 2, (3, 3), (1, 1), same),
        conv(2, 2, 5, 6, 3, (2, 3), (1, 1), valid),
        conv(2, 2, 5, 6, 2, (2, 4), (1, 2), same),
        conv(3, 5, 3, 4, 67, (1, 1), (1, 1), same),
        // pointwise on a 32x32 plane (the CPU's weight gradient as dot products): channels off
        // its 8-row and 3-tap blocks, more images than one partial sum holds
        conv(9, 5, 32, 32, 7, (1, 1), (1, 1), same),
        // a one-channel map head on a small plane (dot products too, for its one channel)
        conv(3, 6, 4, 8, 1, (1, 1), (1, 1), same),
        conv(9, 2, 13, 13, 3, (5, 5), (3, 3), valid),
        conv(2, 3, 10, 9, 67, (3, 3), (2, 2), same),
        // wide enough for Winograd F(2x2, 3x3) (CPU): odd sides, both paddings, a thin image
        conv(2, 16, 9, 7, 17, (3, 3), (1, 1), same),
        conv(3, 17, 6, 5, 16, (3, 3), (1, 1), valid),
        conv(1, 16, 1, 12, 16, (3, 3), (1, 1), same),
        conv_relu(2, 16, 8, 9, 16, (3, 3), (1, 1), same),
        // wide enough for the weight gradient through Winograd's transforms too (CPU), odd sides
        conv(3, 64, 5, 7, 65, (3, 3), (1, 1), same),
        // pooled in the convolution (inference): the GEMM path with a 3x3/2 window, Winograd
        // with 2x2/2 on odd sides, a strided convolution without ReLU
        conv_pool(3, 1, 9, 8, 5, (3, 3), (1, 1), true, (3, 3), (2, 2)),
        conv_pool(2, 16, 9, 7, 16, (3, 3), (1, 1), true, (2, 2), (2, 2)),
        conv_pool(2, 3, 10, 9, 4, (3, 3), (2, 2), false, (2, 2), (2, 2)),
        // the GPU's pooled product: rows not a multiple of its 4×4 blocks, batch 9; and a
        // pointwise convolution, which it pools apart
        conv_pool(9, 2, 8, 6, 67, (3, 3), (1, 1), true, (2, 2), (2, 2)),
        conv_pool(3, 5, 6, 6, 7, (1, 1), (1, 1), true, (2, 2), (2, 2)),
        conv_relu(9, 2, 7, 6, 3, (3, 3), (2, 2), same),
        conv_relu(3, 5, 3, 4, 67, (1, 1), (1, 1), same),
        dw(1, 3, 6, 5, (3, 3), (1, 1), same),
        dw(9, 2, 7, 6, (3, 3), (2, 2), same),
        dw(17, 3, 7, 7, (3, 3), (2, 2), valid),
        dw(2, 2, 5, 6, (2, 4), (1, 2), same),
        dw(1, 2, 3, 3, (5, 5), (1, 1), same),
        // stride 1 (the CPU's flat path): valid padding, several blocks of outputs and a tail
        dw(3, 4, 13, 11, (3, 3), (1, 1), valid),
        Op::DepthwiseRelu(Conv2dGeom::depthwise(2, 3, 9, 10, (3, 3), (1, 1), same).unwrap()),
        // the flat path's phases at a stride of 3 and a 5x5 filter, odd sides
        dw(2, 2, 11, 10, (5, 5), (3, 3), same),
        // the ends of MobileNet at 32x32: planes of 2x2 and 1x1, at stride 1 and 2
        dw(2, 3, 1, 1, (3, 3), (1, 1), same),
        dw(2, 3, 2, 2, (3, 3), (2, 2), same),
        dw(2, 3, 1, 1, (3, 3), (2, 2), same),
        dw(3, 2, 4, 4, (3, 3), (2, 2), same),
        Op::DepthwiseRelu(Conv2dGeom::depthwise(9, 3, 7, 6, (3, 3), (2, 2), same).unwrap()),
        Op::DepthwiseRelu(Conv2dGeom::depthwise(2, 2, 5, 6, (2, 4), (1, 2), valid).unwrap()),
        // more weights than one row of GPU workgroups holds (65,535): the weight gradient's 2-D grid
        dw(2, 7300, 2, 3, (3, 3), (1, 1), same),
        // in GPU windows of one image, the weight gradient's partial sums grow past 256 pixels
        dw(30, 2, 4, 4, (3, 3), (1, 1), same),
        bn(&[1, 3, 4, 5], false, None),
        bn(&[9, 3, 3, 3], false, None),
        // 3 values per feature: with 2, x̂ = ±1 whatever x is, so dx is 0 up to rounding
        bn(&[3, 5], false, None),
        bn(&[33, 6], false, None),
        bn(&[3, 2, 40, 33], false, None),
        // with the epilogue of training (the layers that follow, in the pass): a ReLU alone,
        // with the common 2x2/2 pooling on odd sides, a 3x3/2 pooling without ReLU, a dense ReLU
        bn(&[3, 4, 6, 5], true, None),
        bn(&[2, 3, 5, 7], true, Some(((2, 2), (2, 2)))),
        bn(&[9, 2, 7, 6], false, Some(((3, 3), (2, 2)))),
        bn(&[33, 2, 4, 4], true, Some(((2, 2), (2, 2)))),
        // windows with gaps between them: some pixels lie in none
        bn(&[2, 2, 7, 8], true, Some(((2, 2), (3, 3)))),
        bn(&[17, 6], true, None),
        Op::BatchNormInfer(vec![3, 4, 3, 5]),
        pool(2, 2, 5, 7, (2, 2), (2, 2)),
        pool(9, 2, 7, 6, (3, 3), (2, 2)),
        pool(1, 1, 5, 5, (3, 2), (1, 1)),
        pool(2, 2, 7, 8, (2, 2), (3, 3)),
        Op::MaxPoolInfer(Pool2dGeom::new(2, 2, 5, 7, (2, 2), (2, 2)).unwrap()),
        Op::MaxPoolInfer(Pool2dGeom::new(9, 3, 8, 6, (2, 2), (2, 2)).unwrap()),
        Op::MaxPoolInfer(Pool2dGeom::new(9, 2, 7, 6, (3, 3), (2, 2)).unwrap()),
        Op::GlobalAvgPool([2, 3, 4, 5]),
        Op::GlobalAvgPool([17, 2, 1, 1]),
        Op::GlobalAvgPool([2, 300, 2, 2]),
        // odd planes, a factor of 3, and planes of one value (below a rayon task's grain)
        Op::Upsample([9, 3, 5, 7], 2),
        Op::Upsample([2, 2, 3, 2], 3),
        Op::Upsample([17, 40, 1, 1], 2),
        Op::Dense { n: 3, i: 7, o: 5 },
        Op::Dense { n: 1, i: 17, o: 1 },
        Op::Dense { n: 33, i: 9, o: 3 },
        Op::Dense {
            n: 33,
            i: 130,
            o: 65,
        },
        Op::Add(vec![9, 3, 4, 4]),
        Op::Relu(vec![2, 3, 4, 4]),
        Op::Relu(vec![17, 3]),
        Op::Relu(vec![3, 1001]),
        Op::Dropout {
            shape: vec![4, 50],
            p: 0.5,
        },
        Op::Dropout {
            shape: vec![3, 1001],
            p: 0.3,
        },
        Op::Bce {
            n: 8,
            pos_weight: 1.0,
        },
        Op::Bce {
            n: 33,
            pos_weight: 4.5,
        },
        Op::Bce {
            n: 600,
            pos_weight: 4.7,
        },
        Op::Adam(1000),
        Op::Sgd(1000),
    ]
}
