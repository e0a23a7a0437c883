//! Batch normalisation on the CPU.
//!
//! Channel c of an NCHW tensor is the `N` runs `x[n, c, :, :]` of `H·W` values each (for dense
//! features `[N, F]`, `H·W = 1`). Statistics are accumulated in f64 so that this reference stays
//! accurate for large `N·H·W`.

use rayon::prelude::*;

/// Shape of a batch-norm input seen as `(N, C, H·W)`.
#[derive(Clone, Copy)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Dims {
    /// Run `n` of channel `c`: the `H·W` values `x[n, c, :, :]`.
    fn run<'a>(&self, x: &'a [f32], n: usize, c: usize) -> &'a [f32] {
        let start = (n * self.c + c) * self.hw;
        &x[start..start + self.hw]
    }
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// `out = a·x + b·other + k`, with `(a, b, k)` the coefficients of each element's channel; in
/// parallel over runs. Every pass of batch norm over the values has this form.
fn per_channel(d: Dims, x: &[f32], other: &[f32], coef: &[[f32; 3]]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d.hw)
        .zip(x.par_chunks(d.hw).zip(other.par_chunks(d.hw)))
        .enumerate()
        .with_min_len(super::planes_per_task(d.hw))
        .for_each(|(run, (o, (xs, os)))| {
            let [a, b, k] = coef[run % d.c];
            for ((o, &xv), &ov) in o.iter_mut().zip(xs).zip(os) {
                *o = a * xv + b * ov + k;
            }
        });
    out
}

/// `Σ f(a, b)` over two slices of equal length in 8 interleaved f64 accumulators, so that the
/// loop vectorises and no single chain of additions sets its pace; the order is fixed.
fn sum_lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (xs, ys) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(xs[l], ys[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// For each channel c, the sum of `f(c, x, other)` over its elements, in f64.
fn channel_sums(
    d: Dims,
    x: &[f32],
    other: &[f32],
    f: impl Fn(usize, f32, f32) -> f64 + Sync,
) -> Vec<f64> {
    (0..d.c)
        .into_par_iter()
        .map(|c| {
            (0..d.n)
                .map(|n| sum_lanes(d.run(x, n, c), d.run(other, n, c), |a, b| f(c, a, b)))
                .sum()
        })
        .collect()
}

/// (y, `mean[C]`, biased `var[C]`, `inv_std[C]`) with the batch's own statistics.
pub fn forward_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mean: Vec<f64> = channel_sums(d, x, x, |_, v, _| v as f64)
        .into_iter()
        .map(|s| s / d.count())
        .collect();
    // Two passes (mean, then squared deviations) rather than E[x²] - E[x]², which cancels badly.
    let var: Vec<f64> = channel_sums(d, x, x, |c, v, _| (v as f64 - mean[c]).powi(2))
        .into_iter()
        .map(|s| s / d.count())
        .collect();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|v| (1.0 / (v + eps as f64).sqrt()) as f32)
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    // y = γ (x - mean) inv_std + β = s x + (β - s mean)
    let coef: Vec<[f32; 3]> = (0..d.c)
        .map(|c| {
            let s = gamma[c] * inv_std[c];
            [s, 0.0, beta[c] - s * mean[c]]
        })
        .collect();
    let y = per_channel(d, x, x, &coef);
    let var = var.iter().map(|&v| v as f32).collect();
    (y, mean, var, inv_std)
}

/// y with fixed statistics (inference).
pub fn forward_infer(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    d: Dims,
) -> Vec<f32> {
    let coef: Vec<[f32; 3]> = (0..d.c)
        .map(|c| {
            let s = gamma[c] / (var[c] + eps).sqrt();
            [s, 0.0, beta[c] - s * mean[c]]
        })
        .collect();
    per_channel(d, x, x, &coef)
}

/// With x̂ = (x - mean) · inv_std and y = γ x̂ + β, over the M = N·H·W values of a channel:
///   dβ = Σ dy,   dγ = Σ dy · x̂,
///   dx = γ · inv_std / M · (M · dy - dβ - x̂ · dγ)
/// (the last two terms are the paths through the batch mean and the batch variance).
pub fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let xhat = |c: usize, v: f32| (v - mean[c]) * inv_std[c];
    let dbeta = channel_sums(d, dy, dy, |_, g, _| g as f64);
    let dgamma = channel_sums(d, x, dy, |c, v, g| g as f64 * xhat(c, v) as f64);
    let m = d.count();
    // dx = k (M dy - dβ - (x - mean) inv_std dγ) with k = γ inv_std / M, as a·x + b·dy + c
    let coef: Vec<[f32; 3]> = (0..d.c)
        .map(|c| {
            let k = gamma[c] as f64 * inv_std[c] as f64 / m;
            let slope = -k * dgamma[c] * inv_std[c] as f64;
            let a = slope;
            let b = k * m;
            let offset = -k * dbeta[c] - slope * mean[c] as f64;
            [a as f32, b as f32, offset as f32]
        })
        .collect();
    let dx = per_channel(d, x, dy, &coef);
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}
