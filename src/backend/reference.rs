//! The reference backend: the definition of every op, as the plainest loops.
//!
//! No SIMD, no threads, no GEMM, no im2col, no fusion: each op is its formula written out over
//! the indices of its shapes, with sums in f64. It is slow on purpose and exists to be read and
//! to be compared with: every other backend's forward and backward passes are tested against it
//! on the cases of [`super::cases`] (`tests/ops.rs`), and its own backward passes against finite
//! differences of its forward passes.
//!
//! Shapes are written next to the arguments; `[N,C,H,W]` tensors are indexed by `at4`.
//!
//! Why one file of 600 lines: it is the definition of every op, read side by side with the
//! others; split, a reader would hunt for the formula a kernel is checked against.

use super::{hash, AdamStep, Backend, BatchNormStats, Conv2dGeom, Epilogue, Pool2dGeom, SgdStep};
use crate::tensor::{Shape, Tensor};
use std::marker::PhantomData;

/// The reference backend. Its tensors are host tensors of precision `P`: `Reference` (f32) stores
/// what every backend stores, so its rounding is theirs at each op's output; `Reference<f64>`
/// keeps every value in f64, so that a finite difference of a whole model's loss resolves
/// slopes that f32 rounding would bury (`gradcheck::model_wide`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference<P = f32>(PhantomData<P>);

impl Reference<f32> {
    /// Tensors in f32, as every backend's: what the others are compared with op by op.
    pub const fn f32() -> Self {
        Reference(PhantomData)
    }
}

impl Reference<f64> {
    /// Tensors in f64: what finite differences of whole models are taken on.
    pub const fn f64() -> Self {
        Reference(PhantomData)
    }
}

/// The precision of the reference backend's tensors. Every op reads its inputs as f64 (`wide`),
/// computes in f64 and stores its outputs in `P` (`narrow`).
pub trait Precision: Copy + Default + PartialOrd + std::fmt::Debug + Send + Sync + 'static {
    fn wide(self) -> f64;
    fn narrow(v: f64) -> Self;
}

impl Precision for f32 {
    fn wide(self) -> f64 {
        self as f64
    }
    fn narrow(v: f64) -> Self {
        v as f32
    }
}

impl Precision for f64 {
    fn wide(self) -> f64 {
        self
    }
    fn narrow(v: f64) -> Self {
        v
    }
}

/// Offset of `[n, c, y, x]` in a dense NCHW tensor of `c_len` channels of `h × w`.
#[inline]
fn at4(n: usize, c: usize, y: usize, x: usize, (c_len, h, w): (usize, usize, usize)) -> usize {
    ((n * c_len + c) * h + y) * w + x
}

/// The input row or column that output position `o`, kernel tap `k` reads, if inside the image:
/// `o·stride + k − pad` (padding reads zeros).
#[inline]
fn tap(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < len)
}

fn tensor<P: Precision>(shape: impl Into<Shape>, data: Vec<f64>) -> Tensor<P> {
    let shape = shape.into();
    assert_eq!(shape.numel(), data.len(), "{shape} holds another count");
    let data = data.into_iter().map(P::narrow).collect();
    Tensor { shape, data }
}

fn zeros<P: Precision>(shape: impl Into<Shape>) -> Tensor<P> {
    let shape = shape.into();
    tensor(shape.clone(), vec![0.0; shape.numel()])
}

/// `(N, C, H·W)` of a batch-norm input `[N,C,H,W]` or `[N,F]`.
fn channels<P: Precision>(x: &Tensor<P>) -> (usize, usize, usize) {
    let (n, c, h, w) = x.shape.nchw();
    (n, c, h * w)
}

/// `y[N,Co,Ho,Wo]`, with `groups_of_one` = true for a depthwise convolution (`w[C,1,KH,KW]`,
/// output channel c reads input channel c only) and false for a full one (`w[Co,Ci,KH,KW]`).
///   y[n,o,i,j] = b[o] + Σ_{c,ky,kx} x[n,c,i·sh+ky−pt, j·sw+kx−pl] · w[o,c,ky,kx]
fn convolve<P: Precision>(
    x: &Tensor<P>,
    w: &Tensor<P>,
    b: &Tensor<P>,
    g: &Conv2dGeom,
    depthwise: bool,
) -> Tensor<P> {
    let ci_per_out = if depthwise { 1 } else { g.c_in };
    let x_dims = (g.c_in, g.h, g.w);
    let mut y = vec![0f64; g.n * g.c_out * g.out_h * g.out_w];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let mut sum = b.data[o].wide();
                    for c in 0..ci_per_out {
                        let xc = if depthwise { o } else { c };
                        for ky in 0..g.kh {
                            let Some(yy) = tap(i, ky, g.stride_h, g.pad_top, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(xx) = tap(j, kx, g.stride_w, g.pad_left, g.w) else {
                                    continue;
                                };
                                let wv = w.data[at4(o, c, ky, kx, (ci_per_out, g.kh, g.kw))];
                                sum += x.data[at4(n, xc, yy, xx, x_dims)].wide() * wv.wide();
                            }
                        }
                    }
                    y[at4(n, o, i, j, (g.c_out, g.out_h, g.out_w))] = sum;
                }
            }
        }
    }
    tensor(g.output_shape(), y)
}

/// The gradients of [`convolve`]: each product x·w of the forward sum sends dy·w to x and dy·x
/// to w; db[o] = Σ dy[·,o,·,·]. Returns (`dx[N,Ci,H,W]`, `dw`, `db[Co]`).
#[allow(clippy::needless_range_loop)] // index loops are the point: they spell out the formula
fn convolve_backward<P: Precision>(
    x: &Tensor<P>,
    w: &Tensor<P>,
    dy: &Tensor<P>,
    g: &Conv2dGeom,
    depthwise: bool,
) -> (Tensor<P>, Tensor<P>, Tensor<P>) {
    let ci_per_out = if depthwise { 1 } else { g.c_in };
    let x_dims = (g.c_in, g.h, g.w);
    let w_dims = (ci_per_out, g.kh, g.kw);
    let mut dx = vec![0f64; x.numel()];
    let mut dw = vec![0f64; w.numel()];
    let mut db = vec![0f64; g.c_out];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let d = dy.data[at4(n, o, i, j, (g.c_out, g.out_h, g.out_w))].wide();
                    db[o] += d;
                    for c in 0..ci_per_out {
                        let xc = if depthwise { o } else { c };
                        for ky in 0..g.kh {
                            let Some(yy) = tap(i, ky, g.stride_h, g.pad_top, g.h) else {
                                continue;
                            };
                            for kx in 0..g.kw {
                                let Some(xx) = tap(j, kx, g.stride_w, g.pad_left, g.w) else {
                                    continue;
                                };
                                let (xi, wi) =
                                    (at4(n, xc, yy, xx, x_dims), at4(o, c, ky, kx, w_dims));
                                dx[xi] += d * w.data[wi].wide();
                                dw[wi] += d * x.data[xi].wide();
                            }
                        }
                    }
                }
            }
        }
    }
    (
        tensor(x.shape.clone(), dx),
        tensor(w.shape.clone(), dw),
        tensor([g.c_out], db),
    )
}

/// Per channel of `x[N,C,H,W]` (or `[N,F]`): (mean, biased variance) over N, H and W.
fn channel_moments<P: Precision>(x: &Tensor<P>) -> Vec<(f64, f64)> {
    let (n, c, hw) = channels(x);
    let count = (n * hw) as f64;
    (0..c)
        .map(|ch| {
            let values = || (0..n).flat_map(move |i| (0..hw).map(move |p| (i * c + ch) * hw + p));
            let mean = values().map(|k| x.data[k].wide()).sum::<f64>() / count;
            let var = values()
                .map(|k| (x.data[k].wide() - mean).powi(2))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect()
}

/// Batch norm's running statistics after a training batch `x[N,C,H,W]` or `[N,F]`, as PyTorch
/// defines them: with M = N·H·W values a channel,
///   `mean[c] ← (1 − momentum) · mean[c] + momentum · μ[c]`
///   `var[c]  ← (1 − momentum) · var[c]  + momentum · σ²[c] · M / (M − 1)`
/// (the unbiased variance: the batch's own σ² normalises the batch, the unbiased one estimates the
/// population's; M / (M − 1) is 1 when M = 1). `nn/batchnorm.rs` does this with the backend's
/// `ema_update`; `tests/ops.rs` holds it to this definition.
pub fn batchnorm_running_stats<P: Precision>(
    x: &Tensor<P>,
    (mean, var): (&Tensor<P>, &Tensor<P>),
    momentum: f32,
) -> (Tensor<P>, Tensor<P>) {
    let (n, _, hw) = channels(x);
    let m = (n * hw) as f64;
    let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    let k = momentum as f64;
    let moments = channel_moments(x);
    let step = |old: &Tensor<P>, batch: &dyn Fn(&(f64, f64)) -> f64| {
        let c = moments.len();
        let new = (0..c).map(|ch| (1.0 - k) * old.data[ch].wide() + k * batch(&moments[ch]));
        tensor([c], new.collect())
    };
    (step(mean, &|m| m.0), step(var, &|m| m.1 * unbiased))
}

/// y = gamma[c] (x − mean[c]) / sqrt(var[c] + eps) + beta[c] for every element of channel c.
fn normalise<P: Precision>(
    x: &Tensor<P>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    moments: &[(f64, f64)],
    eps: f32,
) -> Tensor<P> {
    let (_, c, hw) = channels(x);
    let y = (0..x.numel())
        .map(|k| {
            let ch = (k / hw) % c;
            let (mean, var) = moments[ch];
            gamma.data[ch].wide() * (x.data[k].wide() - mean) / (var + eps as f64).sqrt()
                + beta.data[ch].wide()
        })
        .collect();
    tensor(x.shape.clone(), y)
}

impl<P: Precision> Backend for Reference<P> {
    type Tensor = Tensor<P>;
    type Indices = Vec<u32>;

    fn name(&self) -> String {
        format!(
            "reference ({} tensors, plain loops, one thread)",
            std::any::type_name::<P>()
        )
    }
    fn upload(&self, t: &Tensor) -> Tensor<P> {
        tensor(t.shape.clone(), t.data.iter().map(|&v| v as f64).collect())
    }
    fn download(&self, t: &Tensor<P>) -> Tensor {
        let data = t.data.iter().map(|v| v.wide() as f32).collect();
        Tensor::new(t.shape.clone(), data)
    }
    fn shape<'a>(&self, t: &'a Tensor<P>) -> &'a Shape {
        &t.shape
    }
    fn download_indices(&self, idx: &Vec<u32>) -> Vec<u32> {
        idx.clone()
    }
    fn zeros(&self, shape: &Shape) -> Tensor<P> {
        zeros(shape.clone())
    }
    fn reshape(&self, t: Tensor<P>, shape: Shape) -> Tensor<P> {
        t.reshape(shape)
    }

    // ---- conv: nn/conv.rs, cpu/conv.rs, gpu/conv.rs, shaders/conv.wgsl ----
    /// `x[N,Ci,H,W]`, `w[Co,Ci,KH,KW]`, `b[Co]` → `y[N,Co,Ho,Wo]`
    fn conv2d_forward(
        &self,
        x: &Tensor<P>,
        w: &Tensor<P>,
        b: &Tensor<P>,
        g: &Conv2dGeom,
    ) -> Tensor<P> {
        convolve(x, w, b, g, false)
    }
    /// `dy[N,Co,Ho,Wo]`, `w[Co,Ci,KH,KW]` → `dx[N,Ci,H,W]`
    fn conv2d_backward_input(&self, dy: &Tensor<P>, w: &Tensor<P>, g: &Conv2dGeom) -> Tensor<P> {
        let x = zeros(g.input_shape());
        convolve_backward(&x, w, dy, g, false).0
    }
    /// `x[N,Ci,H,W]`, `dy[N,Co,Ho,Wo]` → (`dw[Co,Ci,KH,KW]`, `db[Co]`)
    fn conv2d_backward_weight(
        &self,
        x: &Tensor<P>,
        dy: &Tensor<P>,
        g: &Conv2dGeom,
    ) -> (Tensor<P>, Tensor<P>) {
        let w = zeros(g.weight_shape());
        let (_, dw, db) = convolve_backward(x, &w, dy, g, false);
        (dw, db)
    }

    // ---- depthwise: nn/depthwise.rs, cpu/depthwise.rs, gpu/depthwise.rs, shaders/depthwise.wgsl ----
    /// `x[N,C,H,W]`, `w[C,1,KH,KW]`, `b[C]` → `y[N,C,Ho,Wo]`
    fn depthwise_conv2d_forward(
        &self,
        x: &Tensor<P>,
        w: &Tensor<P>,
        b: &Tensor<P>,
        g: &Conv2dGeom,
    ) -> Tensor<P> {
        convolve(x, w, b, g, true)
    }
    /// `dy[N,C,Ho,Wo]`, `w[C,1,KH,KW]` → `dx[N,C,H,W]`
    fn depthwise_conv2d_backward_input(
        &self,
        dy: &Tensor<P>,
        w: &Tensor<P>,
        g: &Conv2dGeom,
    ) -> Tensor<P> {
        let x = zeros(g.input_shape());
        convolve_backward(&x, w, dy, g, true).0
    }
    /// `x[N,C,H,W]`, `dy[N,C,Ho,Wo]` → (`dw[C,1,KH,KW]`, `db[C]`)
    fn depthwise_conv2d_backward_weight(
        &self,
        x: &Tensor<P>,
        dy: &Tensor<P>,
        g: &Conv2dGeom,
    ) -> (Tensor<P>, Tensor<P>) {
        let w = zeros(g.depthwise_weight_shape());
        let (_, dw, db) = convolve_backward(x, &w, dy, g, true);
        (dw, db)
    }

    // ---- batchnorm: nn/batchnorm.rs, cpu/batchnorm.rs, gpu/batchnorm.rs, shaders/batchnorm.wgsl ----
    /// `x[N,C,H,W]` or `[N,F]`, `gamma[C]`, `beta[C]` → (y, batch statistics), y then passed
    /// through `then`'s ReLU and max pooling
    fn batchnorm_forward_train(
        &self,
        x: &Tensor<P>,
        (gamma, beta): (&Tensor<P>, &Tensor<P>),
        eps: f32,
        then: &Epilogue,
    ) -> (Tensor<P>, BatchNormStats<Tensor<P>>, Option<Vec<u32>>) {
        let moments = channel_moments(x);
        let c = moments.len();
        let stats = BatchNormStats {
            mean: tensor([c], moments.iter().map(|m| m.0).collect()),
            var: tensor([c], moments.iter().map(|m| m.1).collect()),
            inv_std: tensor(
                [c],
                moments
                    .iter()
                    .map(|m| 1.0 / (m.1 + eps as f64).sqrt())
                    .collect(),
            ),
        };
        let mut y = normalise(x, gamma, beta, &moments, eps);
        if then.relu {
            y = self.relu_forward(&y);
        }
        match &then.pool {
            Some(g) => {
                let (y, argmax) = self.maxpool_forward(&y, g);
                (y, stats, Some(argmax))
            }
            None => (y, stats, None),
        }
    }
    /// As training, with the running statistics `running_mean[C]`, `running_var[C]`.
    fn batchnorm_forward_infer(
        &self,
        x: &Tensor<P>,
        gamma: &Tensor<P>,
        beta: &Tensor<P>,
        running_mean: &Tensor<P>,
        running_var: &Tensor<P>,
        eps: f32,
    ) -> Tensor<P> {
        let moments: Vec<(f64, f64)> = running_mean
            .data
            .iter()
            .zip(&running_var.data)
            .map(|(&m, &v)| (m.wide(), v.wide()))
            .collect();
        normalise(x, gamma, beta, &moments, eps)
    }
    /// With x̂ = (x − mean)·inv_std over the M = N·H·W values of a channel:
    ///   dbeta = Σ dy,  dgamma = Σ dy·x̂,  dx = gamma·inv_std/M · (M·dy − dbeta − x̂·dgamma).
    /// `then`'s steps go back first: the pooling's positions get dy, and the ReLU passes it where
    /// y (recomputed from x) is positive.
    fn batchnorm_backward(
        &self,
        x: &Tensor<P>,
        (dy, argmax): (&Tensor<P>, Option<&Vec<u32>>),
        (gamma, beta): (&Tensor<P>, &Tensor<P>),
        stats: &BatchNormStats<Tensor<P>>,
        then: &Epilogue,
    ) -> (Tensor<P>, Tensor<P>, Tensor<P>) {
        let mut dy = match (&then.pool, argmax) {
            (Some(g), Some(argmax)) => self.maxpool_backward(dy, argmax, g),
            (None, None) => dy.clone(),
            _ => panic!("max pooling's positions come with its geometry"),
        };
        if then.relu {
            // y = γ (x − mean)·inv_std + β, as the forward pass computed it
            let (_, c, hw) = channels(x);
            let y = (0..x.numel()).map(|k| {
                let ch = (k / hw) % c;
                let x_hat =
                    (x.data[k].wide() - stats.mean.data[ch].wide()) * stats.inv_std.data[ch].wide();
                gamma.data[ch].wide() * x_hat + beta.data[ch].wide()
            });
            dy = self.relu_backward(&tensor(x.shape.clone(), y.collect()), &dy);
        }
        let dy = &dy;
        let (n, c, hw) = channels(x);
        let m = (n * hw) as f64;
        let x_hat = |k: usize| {
            let ch = (k / hw) % c;
            (x.data[k].wide() - stats.mean.data[ch].wide()) * stats.inv_std.data[ch].wide()
        };
        let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
        for k in 0..x.numel() {
            let ch = (k / hw) % c;
            dbeta[ch] += dy.data[k].wide();
            dgamma[ch] += dy.data[k].wide() * x_hat(k);
        }
        let dx = (0..x.numel())
            .map(|k| {
                let ch = (k / hw) % c;
                let scale = gamma.data[ch].wide() * stats.inv_std.data[ch].wide() / m;
                scale * (m * dy.data[k].wide() - dbeta[ch] - x_hat(k) * dgamma[ch])
            })
            .collect();
        (
            tensor(x.shape.clone(), dx),
            tensor([c], dgamma),
            tensor([c], dbeta),
        )
    }
    /// running = (1 − momentum)·running + momentum·scale·batch
    fn ema_update(&self, running: &mut Tensor<P>, batch: &Tensor<P>, momentum: f32, scale: f32) {
        let (keep, take) = (1.0 - momentum as f64, momentum as f64 * scale as f64);
        for (r, b) in running.data.iter_mut().zip(&batch.data) {
            *r = P::narrow(keep * r.wide() + take * b.wide());
        }
    }

    // ---- pool: nn/maxpool.rs and nn/avgpool.rs, cpu/pool.rs, gpu/pool.rs, shaders/pool.wgsl ----
    /// `x[N,C,H,W]` → (`y[N,C,Ho,Wo]`, the index `iy·W + ix` in its plane of each maximum, the
    /// first in row order on ties)
    fn maxpool_forward(&self, x: &Tensor<P>, g: &Pool2dGeom) -> (Tensor<P>, Vec<u32>) {
        let planes = g.n * g.c;
        let (mut y, mut argmax) = (Vec::new(), Vec::new());
        for p in 0..planes {
            let plane = &x.data[p * g.h * g.w..(p + 1) * g.h * g.w];
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let window = (0..g.kh).flat_map(|ky| {
                        (0..g.kw).map(move |kx| (i * g.stride_h + ky) * g.w + j * g.stride_w + kx)
                    });
                    let best = window
                        .reduce(|best, k| if plane[k] > plane[best] { k } else { best })
                        .expect("a window holds at least one value");
                    y.push(plane[best].wide());
                    argmax.push(best as u32);
                }
            }
        }
        (tensor(g.output_shape(), y), argmax)
    }
    /// `dy[N,C,Ho,Wo]` → `dx[N,C,H,W]`: each dy goes to where its maximum was.
    fn maxpool_backward(&self, dy: &Tensor<P>, argmax: &Vec<u32>, g: &Pool2dGeom) -> Tensor<P> {
        let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
        let mut dx = vec![0f64; g.n * g.c * in_plane];
        for (k, (&d, &at)) in dy.data.iter().zip(argmax).enumerate() {
            dx[(k / out_plane) * in_plane + at as usize] += d.wide();
        }
        tensor(g.input_shape(), dx)
    }

    /// `x[N,C,H,W]` → `y[N,C,s·H,s·W]`: `y[n,c,i,j] = x[n,c,⌊i/s⌋,⌊j/s⌋]`
    fn upsample_forward(&self, x: &Tensor<P>, s: usize) -> Tensor<P> {
        let (n, c, h, w) = x.shape.nchw();
        let mut y = Vec::with_capacity(x.numel() * s * s);
        for plane in 0..n * c {
            for i in 0..h * s {
                for j in 0..w * s {
                    y.push(x.data[plane * h * w + (i / s) * w + j / s].wide());
                }
            }
        }
        tensor([n, c, h * s, w * s], y)
    }
    /// `dy[N,C,s·H,s·W]` → `dx[N,C,H,W]`: `dx[n,c,i,j] = Σ_{a,b < s} dy[n,c,s·i+a,s·j+b]`
    fn upsample_backward(&self, dy: &Tensor<P>, s: usize) -> Tensor<P> {
        let (n, c, oh, ow) = dy.shape.nchw();
        let (h, w) = (oh / s, ow / s);
        let mut dx = vec![0f64; n * c * h * w];
        for plane in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    dx[plane * h * w + (i / s) * w + j / s] +=
                        dy.data[plane * oh * ow + i * ow + j].wide();
                }
            }
        }
        tensor([n, c, h, w], dx)
    }

    /// `x[N,C,H,W]` → `y[N,C]`, the mean of each plane
    fn global_avgpool_forward(&self, x: &Tensor<P>) -> Tensor<P> {
        let (n, c, h, w) = x.shape.nchw();
        let y = x
            .data
            .chunks(h * w)
            .map(|plane| plane.iter().map(|v| v.wide()).sum::<f64>() / (h * w) as f64)
            .collect();
        tensor([n, c], y)
    }
    /// `dy[N,C]` → `dx[N,C,H,W]` = dy / (H·W) everywhere in the plane
    fn global_avgpool_backward(&self, dy: &Tensor<P>, (h, w): (usize, usize)) -> Tensor<P> {
        let (n, c) = (dy.dims()[0], dy.dims()[1]);
        let dx = dy
            .data
            .iter()
            .flat_map(|&d| std::iter::repeat_n(d.wide() / (h * w) as f64, h * w))
            .collect();
        tensor([n, c, h, w], dx)
    }

    // ---- dense: nn/dense.rs, cpu/dense.rs, gpu/dense.rs (on the GEMM: shaders/gemm.wgsl) ----
    /// `x[N,I]`, `w[O,I]`, `b[O]` → `y[N,O]`: `y[n,o] = b[o] + Σ_i x[n,i]·w[o,i]`
    fn dense_forward(&self, x: &Tensor<P>, w: &Tensor<P>, b: &Tensor<P>) -> Tensor<P> {
        let (n, i, o) = (x.dims()[0], x.dims()[1], w.dims()[0]);
        let y = (0..n * o)
            .map(|k| {
                let (r, j) = (k / o, k % o);
                let dot: f64 = (0..i)
                    .map(|p| x.data[r * i + p].wide() * w.data[j * i + p].wide())
                    .sum();
                b.data[j].wide() + dot
            })
            .collect();
        tensor([n, o], y)
    }
    /// `dy[N,O]`, `w[O,I]` → `dx[N,I]`: `dx[n,i] = Σ_o dy[n,o]·w[o,i]`
    fn dense_backward_input(&self, dy: &Tensor<P>, w: &Tensor<P>) -> Tensor<P> {
        let (n, o, i) = (dy.dims()[0], w.dims()[0], w.dims()[1]);
        let dx = (0..n * i)
            .map(|k| {
                let (r, p) = (k / i, k % i);
                (0..o)
                    .map(|j| dy.data[r * o + j].wide() * w.data[j * i + p].wide())
                    .sum()
            })
            .collect();
        tensor([n, i], dx)
    }
    /// `x[N,I]`, `dy[N,O]` → (`dw[O,I]`: `dw[o,i] = Σ_n dy[n,o]·x[n,i]`, `db[O]`: `db[o] = Σ_n dy[n,o]`)
    fn dense_backward_weight(&self, x: &Tensor<P>, dy: &Tensor<P>) -> (Tensor<P>, Tensor<P>) {
        let (n, i, o) = (x.dims()[0], x.dims()[1], dy.dims()[1]);
        let dw = (0..o * i)
            .map(|k| {
                let (j, p) = (k / i, k % i);
                (0..n)
                    .map(|r| dy.data[r * o + j].wide() * x.data[r * i + p].wide())
                    .sum()
            })
            .collect();
        let db = (0..o)
            .map(|j| (0..n).map(|r| dy.data[r * o + j].wide()).sum())
            .collect();
        (tensor([o, i], dw), tensor([o], db))
    }

    // ---- elementwise: nn/add.rs, nn/relu.rs, nn/dropout.rs, cpu/elementwise.rs, gpu/elementwise.rs, shaders/elementwise.wgsl ----
    fn add(&self, a: &Tensor<P>, b: &Tensor<P>) -> Tensor<P> {
        assert_eq!(a.shape, b.shape, "add of two shapes");
        let y = a.data.iter().zip(&b.data).map(|(u, v)| u.wide() + v.wide());
        tensor(a.shape.clone(), y.collect())
    }
    fn copy(&self, t: &Tensor<P>) -> Tensor<P> {
        t.clone()
    }
    fn relu_forward(&self, x: &Tensor<P>) -> Tensor<P> {
        let y = x.data.iter().map(|v| v.wide().max(0.0)).collect();
        tensor(x.shape.clone(), y)
    }
    fn relu_backward(&self, x: &Tensor<P>, dy: &Tensor<P>) -> Tensor<P> {
        let dx = x
            .data
            .iter()
            .zip(&dy.data)
            .map(|(v, d)| if v.wide() > 0.0 { d.wide() } else { 0.0 })
            .collect();
        tensor(x.shape.clone(), dx)
    }
    /// `y[k] = x[k] / (1 − p)` where `hash::uniform(key(seed), k) ≥ p`, else 0
    fn dropout_forward(&self, x: &Tensor<P>, p: f32, seed: u64) -> Tensor<P> {
        let key = hash::key(seed);
        let y = x
            .data
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let kept = hash::uniform(key, k as u32) >= p;
                if kept {
                    v.wide() / (1.0 - p as f64)
                } else {
                    0.0
                }
            })
            .collect();
        tensor(x.shape.clone(), y)
    }
    fn dropout_backward(&self, dy: &Tensor<P>, p: f32, seed: u64) -> Tensor<P> {
        self.dropout_forward(dy, p, seed)
    }

    // ---- loss: nn/loss.rs, cpu/loss.rs, gpu/loss.rs, shaders/loss.wgsl ----
    /// With σ the sigmoid and w = pos_weight, over the N samples:
    ///   loss = mean(−w·y·ln σ(z) − (1−y)·ln(1 − σ(z))),  dz = (w·y·(σ(z) − 1) + (1−y)·σ(z)) / N
    /// (ln σ(z) = −ln(1 + e^−z), written so that no |z| overflows).
    fn bce_with_logits(
        &self,
        logits: &Tensor<P>,
        targets: &Tensor<P>,
        pos_weight: f32,
    ) -> (Tensor<P>, Tensor<P>) {
        let n = logits.numel() as f64;
        let w = pos_weight as f64;
        let log1p_exp = |u: f64| u.max(0.0) + (-u.abs()).exp().ln_1p();
        let sigmoid = |z: f64| (-log1p_exp(-z)).exp();
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(logits.numel());
        for (&z, &y) in logits.data.iter().zip(&targets.data) {
            let (z, y) = (z.wide(), y.wide());
            loss += w * y * log1p_exp(-z) + (1.0 - y) * log1p_exp(z);
            grad.push((w * y * (sigmoid(z) - 1.0) + (1.0 - y) * sigmoid(z)) / n);
        }
        (
            tensor([1], vec![loss / n]),
            tensor(logits.shape.clone(), grad),
        )
    }

    // ---- optim: src/optim.rs, cpu/optim.rs, gpu/optim.rs, shaders/optim.wgsl ----
    /// m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;
    /// p −= lr·((m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε) + wd·p)
    fn adam_step(
        &self,
        p: &mut Tensor<P>,
        g: &Tensor<P>,
        m: &mut Tensor<P>,
        v: &mut Tensor<P>,
        h: &AdamStep,
    ) {
        let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
        let bc1 = 1.0 - b1.powi(h.t as i32);
        let bc2 = 1.0 - b2.powi(h.t as i32);
        for k in 0..p.numel() {
            let gk = g.data[k].wide();
            let mk = b1 * m.data[k].wide() + (1.0 - b1) * gk;
            let vk = b2 * v.data[k].wide() + (1.0 - b2) * gk * gk;
            let step = (mk / bc1) / ((vk / bc2).sqrt() + h.eps as f64);
            let pk = p.data[k].wide();
            p.data[k] = P::narrow(pk - h.lr as f64 * (step + h.weight_decay as f64 * pk));
            (m.data[k], v.data[k]) = (P::narrow(mk), P::narrow(vk));
        }
    }
    /// v = μv + g + wd·p;  p −= lr·v
    fn sgd_step(&self, p: &mut Tensor<P>, g: &Tensor<P>, velocity: &mut Tensor<P>, h: &SgdStep) {
        let (mu, wd, lr) = (h.momentum as f64, h.weight_decay as f64, h.lr as f64);
        for k in 0..p.numel() {
            let v = mu * velocity.data[k].wide() + g.data[k].wide() + wd * p.data[k].wide();
            velocity.data[k] = P::narrow(v);
            p.data[k] = P::narrow(p.data[k].wide() - lr * v);
        }
    }

    // ---- gradient health: cpu/mod.rs, gpu/reduce.rs, shaders/reduce.wgsl ----
    fn squared_norms(&self, ts: &[&Tensor<P>]) -> Vec<f32> {
        ts.iter()
            .map(|t| t.data.iter().map(|&v| v.wide().powi(2)).sum::<f64>() as f32)
            .collect()
    }
    fn scale(&self, t: &mut Tensor<P>, s: f32) {
        t.data
            .iter_mut()
            .for_each(|v| *v = P::narrow(v.wide() * s as f64));
    }
}
