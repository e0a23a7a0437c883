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
    /// The values of channel c, run by run.
    fn channel<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a f32> + 'a {
        let (hw, stride) = (self.hw, self.c * self.hw);
        (0..self.n).flat_map(move |n| &x[n * stride + c * hw..n * stride + (c + 1) * hw])
    }
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// `out[i] = f(c, x[i], other[i])` where c is the channel of element i, in parallel over runs.
fn per_channel(
    d: Dims,
    x: &[f32],
    other: &[f32],
    f: impl Fn(usize, f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d.hw)
        .zip(x.par_chunks(d.hw).zip(other.par_chunks(d.hw)))
        .enumerate()
        .for_each(|(run, (o, (xs, os)))| {
            let c = run % d.c;
            for ((o, &xv), &ov) in o.iter_mut().zip(xs).zip(os) {
                *o = f(c, xv, ov);
            }
        });
    out
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
            d.channel(x, c)
                .zip(d.channel(other, c))
                .map(|(&a, &b)| f(c, a, b))
                .sum()
        })
        .collect()
}

/// (y, mean[C], biased var[C], inv_std[C]) with the batch's own statistics.
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
    let y = per_channel(d, x, x, |c, v, _| {
        gamma[c] * (v - mean[c]) * inv_std[c] + beta[c]
    });
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
    let scale: Vec<f32> = (0..d.c).map(|c| gamma[c] / (var[c] + eps).sqrt()).collect();
    per_channel(d, x, x, |c, v, _| (v - mean[c]) * scale[c] + beta[c])
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
    let dx = per_channel(d, x, dy, |c, v, g| {
        let k = gamma[c] as f64 * inv_std[c] as f64 / m;
        (k * (m * g as f64 - dbeta[c] - xhat(c, v) as f64 * dgamma[c])) as f32
    });
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}
