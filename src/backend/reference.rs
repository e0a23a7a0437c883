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

/// The reference backend. Its tensors are host tensors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

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

fn tensor(shape: impl Into<Shape>, data: Vec<f64>) -> Tensor {
    Tensor::new(shape, data.into_iter().map(|v| v as f32).collect())
}

/// `(N, C, H·W)` of a batch-norm input `[N,C,H,W]` or `[N,F]`.
fn channels(x: &Tensor) -> (usize, usize, usize) {
    let (n, c, h, w) = x.shape.nchw();
    (n, c, h * w)
}

/// `y[N,Co,Ho,Wo]`, with `groups_of_one` = true for a depthwise convolution (`w[C,1,KH,KW]`,
/// output channel c reads input channel c only) and false for a full one (`w[Co,Ci,KH,KW]`).
///   y[n,o,i,j] = b[o] + Σ_{c,ky,kx} x[n,c,i·sh+ky−pt, j·sw+kx−pl] · w[o,c,ky,kx]
fn convolve(x: &Tensor, w: &Tensor, b: &Tensor, g: &Conv2dGeom, depthwise: bool) -> Tensor {
    let ci_per_out = if depthwise { 1 } else { g.c_in };
    let x_dims = (g.c_in, g.h, g.w);
    let mut y = vec![0f64; g.n * g.c_out * g.out_h * g.out_w];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..g.out_h {
                for j in 0..g.out_w {
                    let mut sum = b.data[o] as f64;
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
                                sum += x.data[at4(n, xc, yy, xx, x_dims)] as f64 * wv as f64;
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
fn convolve_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Conv2dGeom,
    depthwise: bool,
) -> (Tensor, Tensor, Tensor) {
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
                    let d = dy.data[at4(n, o, i, j, (g.c_out, g.out_h, g.out_w))] as f64;
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
                                dx[xi] += d * w.data[wi] as f64;
                                dw[wi] += d * x.data[xi] as f64;
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
fn channel_moments(x: &Tensor) -> Vec<(f64, f64)> {
    let (n, c, hw) = channels(x);
    let count = (n * hw) as f64;
    (0..c)
        .map(|ch| {
            let values = || (0..n).flat_map(move |i| (0..hw).map(move |p| (i * c + ch) * hw + p));
            let mean = values().map(|k| x.data[k] as f64).sum::<f64>() / count;
            let var = values()
                .map(|k| (x.data[k] as f64 - mean).powi(2))
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
pub fn batchnorm_running_stats(
    x: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    momentum: f32,
) -> (Tensor, Tensor) {
    let (n, _, hw) = channels(x);
    let m = (n * hw) as f64;
    let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    let k = momentum as f64;
    let moments = channel_moments(x);
    let step = |old: &Tensor, batch: &dyn Fn(&(f64, f64)) -> f64| {
        let c = moments.len();
        let new = (0..c).map(|ch| (1.0 - k) * old.data[ch] as f64 + k * batch(&moments[ch]));
        tensor([c], new.collect())
    };
    (step(mean, &|m| m.0), step(var, &|m| m.1 * unbiased))
}

/// y = gamma[c] (x − mean[c]) / sqrt(var[c] + eps) + beta[c] for every element of channel c.
fn normalise(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    moments: &[(f64, f64)],
    eps: f32,
) -> Tensor {
    let (_, c, hw) = channels(x);
    let y = (0..x.numel())
        .map(|k| {
            let ch = (k / hw) % c;
            let (mean, var) = moments[ch];
            gamma.data[ch] as f64 * (x.data[k] as f64 - mean) / (var + eps as f64).sqrt()
                + beta.data[ch] as f64
        })
        .collect();
    tensor(x.shape.clone(), y)
}

impl Backend for Reference {
    type Tensor = Tensor;
    type Indices = Vec<u32>;

    fn name(&self) -> String {
        "reference (plain loops, one thread)".into()
    }
    fn upload(&self, t: &Tensor) -> Tensor {
        t.clone()
    }
    fn download(&self, t: &Tensor) -> Tensor {
        t.clone()
    }
    fn shape<'a>(&self, t: &'a Tensor) -> &'a Shape {
        &t.shape
    }
    fn download_indices(&self, idx: &Vec<u32>) -> Vec<u32> {
        idx.clone()
    }
    fn zeros(&self, shape: &Shape) -> Tensor {
        Tensor::zeros(shape.clone())
    }
    fn reshape(&self, t: Tensor, shape: Shape) -> Tensor {
        t.reshape(shape)
    }

    // ---- conv: nn/conv.rs, cpu/conv.rs, gpu/conv.rs, shaders/conv.wgsl ----
    /// `x[N,Ci,H,W]`, `w[Co,Ci,KH,KW]`, `b[Co]` → `y[N,Co,Ho,Wo]`
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, g: &Conv2dGeom) -> Tensor {
        convolve(x, w, b, g, false)
    }
    /// `dy[N,Co,Ho,Wo]`, `w[Co,Ci,KH,KW]` → `dx[N,Ci,H,W]`
    fn conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &Conv2dGeom) -> Tensor {
        let x = Tensor::zeros(g.input_shape());
        convolve_backward(&x, w, dy, g, false).0
    }
    /// `x[N,Ci,H,W]`, `dy[N,Co,Ho,Wo]` → (`dw[Co,Ci,KH,KW]`, `db[Co]`)
    fn conv2d_backward_weight(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> (Tensor, Tensor) {
        let w = Tensor::zeros(g.weight_shape());
        let (_, dw, db) = convolve_backward(x, &w, dy, g, false);
        (dw, db)
    }

    // ---- depthwise: nn/depthwise.rs, cpu/depthwise.rs, gpu/depthwise.rs, shaders/depthwise.wgsl ----
    /// `x[N,C,H,W]`, `w[C,1,KH,KW]`, `b[C]` → `y[N,C,Ho,Wo]`
    fn depthwise_conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        g: &Conv2dGeom,
    ) -> Tensor {
        convolve(x, w, b, g, true)
    }
    /// `dy[N,C,Ho,Wo]`, `w[C,1,KH,KW]` → `dx[N,C,H,W]`
    fn depthwise_conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &Conv2dGeom) -> Tensor {
        let x = Tensor::zeros(g.input_shape());
        convolve_backward(&x, w, dy, g, true).0
    }
    /// `x[N,C,H,W]`, `dy[N,C,Ho,Wo]` → (`dw[C,1,KH,KW]`, `db[C]`)
    fn depthwise_conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &Conv2dGeom,
    ) -> (Tensor, Tensor) {
        let w = Tensor::zeros(g.depthwise_weight_shape());
        let (_, dw, db) = convolve_backward(x, &w, dy, g, true);
        (dw, db)
    }

    // ---- batchnorm: nn/batchnorm.rs, cpu/batchnorm.rs, gpu/batchnorm.rs, shaders/batchnorm.wgsl ----
    /// `x[N,C,H,W]` or `[N,F]`, `gamma[C]`, `beta[C]` → (y, batch statistics), y then passed
    /// through `then`'s ReLU and max pooling
    fn batchnorm_forward_train(
        &self,
        x: &Tensor,
        (gamma, beta): (&Tensor, &Tensor),
        eps: f32,
        then: &Epilogue,
    ) -> (Tensor, BatchNormStats<Tensor>, Option<Vec<u32>>) {
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
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Tensor {
        let moments: Vec<(f64, f64)> = running_mean
            .data
            .iter()
            .zip(&running_var.data)
            .map(|(&m, &v)| (m as f64, v as f64))
            .collect();
        normalise(x, gamma, beta, &moments, eps)
    }
    /// With x̂ = (x − mean)·inv_std over the M = N·H·W values of a channel:
    ///   dbeta = Σ dy,  dgamma = Σ dy·x̂,  dx = gamma·inv_std/M · (M·dy − dbeta − x̂·dgamma).
    /// `then`'s steps go back first: the pooling's positions get dy, and the ReLU passes it where
    /// y (recomputed from x) is positive.
    fn batchnorm_backward(
        &self,
        x: &Tensor,
        (dy, argmax): (&Tensor, Option<&Vec<u32>>),
        (gamma, beta): (&Tensor, &Tensor),
        stats: &BatchNormStats<Tensor>,
        then: &Epilogue,
    ) -> (Tensor, Tensor, Tensor) {
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
                    (x.data[k] as f64 - stats.mean.data[ch] as f64) * stats.inv_std.data[ch] as f64;
                gamma.data[ch] as f64 * x_hat + beta.data[ch] as f64
            });
            dy = self.relu_backward(&tensor(x.shape.clone(), y.collect()), &dy);
        }
        let dy = &dy;
        let (n, c, hw) = channels(x);
        let m = (n * hw) as f64;
        let x_hat = |k: usize| {
            let ch = (k / hw) % c;
            (x.data[k] as f64 - stats.mean.data[ch] as f64) * stats.inv_std.data[ch] as f64
        };
        let (mut dgamma, mut dbeta) = (vec![0f64; c], vec![0f64; c]);
        for k in 0..x.numel() {
            let ch = (k / hw) % c;
            dbeta[ch] += dy.data[k] as f64;
            dgamma[ch] += dy.data[k] as f64 * x_hat(k);
        }
        let dx = (0..x.numel())
            .map(|k| {
                let ch = (k / hw) % c;
                let scale = gamma.data[ch] as f64 * stats.inv_std.data[ch] as f64 / m;
                scale * (m * dy.data[k] as f64 - dbeta[ch] - x_hat(k) * dgamma[ch])
            })
            .collect();
        (
            tensor(x.shape.clone(), dx),
            tensor([c], dgamma),
            tensor([c], dbeta),
        )
    }
    /// running = (1 − momentum)·running + momentum·scale·batch
    fn ema_update(&self, running: &mut Tensor, batch: &Tensor, momentum: f32, scale: f32) {
        for (r, &b) in running.data.iter_mut().zip(&batch.data) {
            *r = (1.0 - momentum) * *r + momentum * scale * b;
        }
    }

    // ---- pool: nn/maxpool.rs and nn/avgpool.rs, cpu/pool.rs, gpu/pool.rs, shaders/pool.wgsl ----
    /// `x[N,C,H,W]` → (`y[N,C,Ho,Wo]`, the index `iy·W + ix` in its plane of each maximum, the
    /// first in row order on ties)
    fn maxpool_forward(&self, x: &Tensor, g: &Pool2dGeom) -> (Tensor, Vec<u32>) {
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
                    y.push(plane[best] as f64);
                    argmax.push(best as u32);
                }
            }
        }
        (tensor(g.output_shape(), y), argmax)
    }
    /// `dy[N,C,Ho,Wo]` → `dx[N,C,H,W]`: each dy goes to where its maximum was.
    fn maxpool_backward(&self, dy: &Tensor, argmax: &Vec<u32>, g: &Pool2dGeom) -> Tensor {
        let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
        let mut dx = vec![0f64; g.n * g.c * in_plane];
        for (k, (&d, &at)) in dy.data.iter().zip(argmax).enumerate() {
            dx[(k / out_plane) * in_plane + at as usize] += d as f64;
        }
        tensor(g.input_shape(), dx)
    }

    /// `x[N,C,H,W]` → `y[N,C,s·H,s·W]`: `y[n,c,i,j] = x[n,c,⌊i/s⌋,⌊j/s⌋]`
    fn upsample_forward(&self, x: &Tensor, s: usize) -> Tensor {
        let (n, c, h, w) = x.shape.nchw();
        let mut y = Vec::with_capacity(x.numel() * s * s);
        for plane in 0..n * c {
            for i in 0..h * s {
                for j in 0..w * s {
                    y.push(x.data[plane * h * w + (i / s) * w + j / s] as f64);
                }
            }
        }
        tensor([n, c, h * s, w * s], y)
    }
    /// `dy[N,C,s·H,s·W]` → `dx[N,C,H,W]`: `dx[n,c,i,j] = Σ_{a,b < s} dy[n,c,s·i+a,s·j+b]`
    fn upsample_backward(&self, dy: &Tensor, s: usize) -> Tensor {
        let (n, c, oh, ow) = dy.shape.nchw();
        let (h, w) = (oh / s, ow / s);
        let mut dx = vec![0f64; n * c * h * w];
        for plane in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    dx[plane * h * w + (i / s) * w + j / s] +=
                        dy.data[plane * oh * ow + i * ow + j] as f64;
                }
            }
        }
        tensor([n, c, h, w], dx)
    }

    /// `x[N,C,H,W]` → `y[N,C]`, the mean of each plane
    fn global_avgpool_forward(&self, x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.shape.nchw();
        let y = x
            .data
            .chunks(h * w)
            .map(|plane| plane.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64)
            .collect();
        tensor([n, c], y)
    }
    /// `dy[N,C]` → `dx[N,C,H,W]` = dy / (H·W) everywhere in the plane
    fn global_avgpool_backward(&self, dy: &Tensor, (h, w): (usize, usize)) -> Tensor {
        let (n, c) = (dy.dims()[0], dy.dims()[1]);
        let dx = dy
            .data
            .iter()
            .flat_map(|&d| std::iter::repeat_n(d as f64 / (h * w) as f64, h * w))
            .collect();
        tensor([n, c, h, w], dx)
    }

    // ---- dense: nn/dense.rs, cpu/dense.rs, gpu/dense.rs (on the GEMM: shaders/gemm.wgsl) ----
    /// `x[N,I]`, `w[O,I]`, `b[O]` → `y[N,O]`: `y[n,o] = b[o] + Σ_i x[n,i]·w[o,i]`
    fn dense_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let (n, i, o) = (x.dims()[0], x.dims()[1], w.dims()[0]);
        let y = (0..n * o)
            .map(|k| {
                let (r, j) = (k / o, k % o);
                let dot: f64 = (0..i)
                    .map(|p| x.data[r * i + p] as f64 * w.data[j * i + p] as f64)
                    .sum();
                b.data[j] as f64 + dot
            })
            .collect();
        tensor([n, o], y)
    }
    /// `dy[N,O]`, `w[O,I]` → `dx[N,I]`: `dx[n,i] = Σ_o dy[n,o]·w[o,i]`
    fn dense_backward_input(&self, dy: &Tensor, w: &Tensor) -> Tensor {
        let (n, o, i) = (dy.dims()[0], w.dims()[0], w.dims()[1]);
        let dx = (0..n * i)
            .map(|k| {
                let (r, p) = (k / i, k % i);
                (0..o)
                    .map(|j| dy.data[r * o + j] as f64 * w.data[j * i + p] as f64)
                    .sum()
            })
            .collect();
        tensor([n, i], dx)
    }
    /// `x[N,I]`, `dy[N,O]` → (`dw[O,I]`: `dw[o,i] = Σ_n dy[n,o]·x[n,i]`, `db[O]`: `db[o] = Σ_n dy[n,o]`)
    fn dense_backward_weight(&self, x: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        let (n, i, o) = (x.dims()[0], x.dims()[1], dy.dims()[1]);
        let dw = (0..o * i)
            .map(|k| {
                let (j, p) = (k / i, k % i);
                (0..n)
                    .map(|r| dy.data[r * o + j] as f64 * x.data[r * i + p] as f64)
                    .sum()
            })
            .collect();
        let db = (0..o)
            .map(|j| (0..n).map(|r| dy.data[r * o + j] as f64).sum())
            .collect();
        (tensor([o, i], dw), tensor([o], db))
    }

    // ---- elementwise: nn/add.rs, nn/relu.rs, nn/dropout.rs, cpu/elementwise.rs, gpu/elementwise.rs, shaders/elementwise.wgsl ----
    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.shape, b.shape, "add of two shapes");
        let y = a.data.iter().zip(&b.data).map(|(&u, &v)| u + v).collect();
        Tensor::new(a.shape.clone(), y)
    }
    fn copy(&self, t: &Tensor) -> Tensor {
        t.clone()
    }
    fn relu_forward(&self, x: &Tensor) -> Tensor {
        let y = x
            .data
            .iter()
            .map(|&v| if v > 0.0 { v } else { 0.0 })
            .collect();
        Tensor::new(x.shape.clone(), y)
    }
    fn relu_backward(&self, x: &Tensor, dy: &Tensor) -> Tensor {
        let dx = x
            .data
            .iter()
            .zip(&dy.data)
            .map(|(&v, &d)| if v > 0.0 { d } else { 0.0 })
            .collect();
        Tensor::new(x.shape.clone(), dx)
    }
    /// `y[k] = x[k] / (1 − p)` where `hash::uniform(key(seed), k) ≥ p`, else 0
    fn dropout_forward(&self, x: &Tensor, p: f32, seed: u64) -> Tensor {
        let key = hash::key(seed);
        let y = x
            .data
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                let kept = hash::uniform(key, k as u32) >= p;
                if kept {
                    v as f64 / (1.0 - p as f64)
                } else {
                    0.0
                }
            })
            .collect();
        tensor(x.shape.clone(), y)
    }
    fn dropout_backward(&self, dy: &Tensor, p: f32, seed: u64) -> Tensor {
        self.dropout_forward(dy, p, seed)
    }

    // ---- loss: nn/loss.rs, cpu/loss.rs, gpu/loss.rs, shaders/loss.wgsl ----
    /// With σ the sigmoid and w = pos_weight, over the N samples:
    ///   loss = mean(−w·y·ln σ(z) − (1−y)·ln(1 − σ(z))),  dz = (w·y·(σ(z) − 1) + (1−y)·σ(z)) / N
    /// (ln σ(z) = −ln(1 + e^−z), written so that no |z| overflows).
    fn bce_with_logits(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        pos_weight: f32,
    ) -> (Tensor, Tensor) {
        let n = logits.numel() as f64;
        let w = pos_weight as f64;
        let log1p_exp = |u: f64| u.max(0.0) + (-u.abs()).exp().ln_1p();
        let sigmoid = |z: f64| (-log1p_exp(-z)).exp();
        let mut loss = 0.0;
        let mut grad = Vec::with_capacity(logits.numel());
        for (&z, &y) in logits.data.iter().zip(&targets.data) {
            let (z, y) = (z as f64, y as f64);
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
    fn adam_step(&self, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, h: &AdamStep) {
        let (b1, b2) = (h.beta1 as f64, h.beta2 as f64);
        let bc1 = 1.0 - b1.powi(h.t as i32);
        let bc2 = 1.0 - b2.powi(h.t as i32);
        for k in 0..p.numel() {
            let gk = g.data[k] as f64;
            let mk = b1 * m.data[k] as f64 + (1.0 - b1) * gk;
            let vk = b2 * v.data[k] as f64 + (1.0 - b2) * gk * gk;
            let step = (mk / bc1) / ((vk / bc2).sqrt() + h.eps as f64);
            let pk = p.data[k] as f64;
            p.data[k] = (pk - h.lr as f64 * (step + h.weight_decay as f64 * pk)) as f32;
            (m.data[k], v.data[k]) = (mk as f32, vk as f32);
        }
    }
    /// v = μv + g + wd·p;  p −= lr·v
    fn sgd_step(&self, p: &mut Tensor, g: &Tensor, velocity: &mut Tensor, h: &SgdStep) {
        for k in 0..p.numel() {
            let v = h.momentum * velocity.data[k] + g.data[k] + h.weight_decay * p.data[k];
            velocity.data[k] = v;
            p.data[k] -= h.lr * v;
        }
    }

    // ---- gradient health: cpu/mod.rs, gpu/reduce.rs, shaders/reduce.wgsl ----
    fn squared_norms(&self, ts: &[&Tensor]) -> Vec<f32> {
        ts.iter()
            .map(|t| t.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() as f32)
            .collect()
    }
    fn scale(&self, t: &mut Tensor, s: f32) {
        t.data.iter_mut().for_each(|v| *v *= s);
    }
}
