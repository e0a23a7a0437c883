//! Batch normalisation on the CPU.
//!
//! Channel c of an NCHW tensor is the `N` runs `x[n, c, :, :]` of `H·W` values each (for dense
//! features `[N, F]`, `H·W = 1`). Statistics are accumulated in f64 so that this reference stays
//! accurate for large `N·H·W`.

use super::pool;
use crate::backend::Epilogue;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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

/// Each channel's mean and biased variance, in f64, the channels in parallel. The variance is a
/// second pass over the channel's squared deviations (E[x²] − E[x]² cancels badly); it follows
/// the mean's pass at once, channel by channel, so that it finds the channel in cache (a channel
/// of MobileNet's largest activation at batch 32 is 512 KiB). Same sums in the same order as two
/// passes over the whole batch; the step time did not measurably change (the f64 sums, not
/// memory, set the pace of batch norm's passes).
fn channel_moments(d: Dims, x: &[f32]) -> Vec<(f64, f64)> {
    (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mean = channel_sum(d, x, c, |v| v as f64) / d.count();
            let var = channel_sum(d, x, c, |v| (v as f64 - mean).powi(2)) / d.count();
            (mean, var)
        })
        .collect()
}

/// Σ f(v) over channel c's values, run by run in order.
fn channel_sum(d: Dims, x: &[f32], c: usize, f: impl Fn(f32) -> f64) -> f64 {
    (0..d.n)
        .map(|n| {
            let run = d.run(x, n, c);
            sum_lanes(run, run, |v, _| f(v))
        })
        .sum()
}

/// What the training forward pass returns: its output (after the epilogue), the max pooling's
/// positions when it pools, and the batch's `mean[C]`, biased `var[C]` and `inv_std[C]`.
pub struct Trained {
    pub y: Vec<f32>,
    pub argmax: Option<Vec<u32>>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Per channel, `(s, k)` of the training forward pass's y = s·x + k (s = γ·inv_std,
/// k = β − s·mean). The backward pass finds the ReLU's mask with the same numbers, so it is the
/// forward pass's bit for bit.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], inv_std: &[f32]) -> Vec<(f32, f32)> {
    (0..gamma.len())
        .map(|c| {
            let s = gamma[c] * inv_std[c];
            (s, beta[c] - s * mean[c])
        })
        .collect()
}

/// y = s·x + k of one run, then max(0, y) when `relu`.
fn normalised_run(xs: &[f32], (s, k): (f32, f32), relu: bool) -> impl Iterator<Item = f32> + '_ {
    xs.iter().map(move |&v| {
        let y = s * v + k;
        if relu {
            y.max(0.0)
        } else {
            y
        }
    })
}

/// y = s·x + k of each channel's `(s, k)`, through the epilogue `then`, in parallel over runs.
/// With a pooling, each run of y lives only in a thread's buffer, pooled while in cache: the
/// full-size y (and the ReLU's output) are never written. Returns the output and the pooling's
/// positions.
fn normalise(
    d: Dims,
    x: &[f32],
    coef: &[(f32, f32)],
    then: &Epilogue,
) -> (Vec<f32>, Option<Vec<u32>>) {
    let normalised = |run: usize, xs| normalised_run(xs, coef[run % d.c], then.relu);
    let Some(g) = &then.pool else {
        // SAFETY: the runs cover y, and every value of a run is written.
        let y = unsafe {
            super::written_by(x.len(), |y| {
                y.par_chunks_mut(d.hw)
                    .zip(x.par_chunks(d.hw))
                    .enumerate()
                    .with_min_len(super::planes_per_task(d.hw))
                    .for_each(|(run, (out, xs))| {
                        out.iter_mut()
                            .zip(normalised(run, xs))
                            .for_each(|(o, v)| _ = o.write(v))
                    })
            })
        };
        return (y, None);
    };
    assert_eq!((g.n * g.c, g.h * g.w), (d.n * d.c, d.hw), "pooling {g:?}");
    let out_plane = g.out_h * g.out_w;
    // SAFETY: every plane of y and of argmax is filled before it is pooled into.
    let (y, argmax) = unsafe {
        super::both_written_by(d.n * d.c * out_plane, |y, argmax| {
            y.par_chunks_mut(out_plane)
                .zip(argmax.par_chunks_mut(out_plane))
                .zip(x.par_chunks(d.hw))
                .enumerate()
                .with_min_len(super::planes_per_task(d.hw))
                .for_each_init(
                    || vec![0f32; d.hw],
                    |plane, (run, ((yp, ip), xs))| {
                        plane
                            .iter_mut()
                            .zip(normalised(run, xs))
                            .for_each(|(o, v)| *o = v);
                        let (yp, ip) = (super::filled(yp, 0.0), super::filled(ip, 0));
                        pool::forward_plane(plane, g, yp, ip);
                    },
                )
        })
    };
    (y, Some(argmax))
}

/// The batch's statistics, then y = γ (x − mean) inv_std + β through the epilogue `then`
/// (`normalise`).
pub fn forward_train(
    x: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    eps: f32,
    d: Dims,
    then: &Epilogue,
) -> Trained {
    let (mean, var): (Vec<f64>, Vec<f64>) = channel_moments(d, x).into_iter().unzip();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|v| (1.0 / (v + eps as f64).sqrt()) as f32)
        .collect();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let coef = affine(gamma, beta, &mean, &inv_std);
    let (y, argmax) = normalise(d, x, &coef, then);
    let var = var.iter().map(|&v| v as f32).collect();
    Trained {
        y,
        argmax,
        mean,
        var,
        inv_std,
    }
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
    let coef: Vec<(f32, f32)> = (0..d.c)
        .map(|c| {
            let s = gamma[c] / (var[c] + eps).sqrt();
            (s, beta[c] - s * mean[c])
        })
        .collect();
    normalise(d, x, &coef, &Epilogue::NONE).0
}

/// The gradient at y of one run from the gradient at the epilogue's output: the pooling's
/// positions get their dy (the rest 0), and the ReLU passes it where y = s·x + k > 0. Written
/// into `buf`, unless there is no epilogue: then it is the run of `dy` itself.
fn grad_at_y<'a>(
    (run, xs): (usize, &[f32]),
    (dy, argmax): (&'a [f32], Option<&[u32]>),
    (s, k): (f32, f32),
    then: &Epilogue,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let relu_passes = |v: f32| s * v + k > 0.0;
    match (&then.pool, argmax) {
        (None, _) if !then.relu => return &dy[run * xs.len()..][..xs.len()],
        (None, _) => {
            // one pass: copying dy and then masking it read and wrote the run twice
            let dy = &dy[run * xs.len()..][..xs.len()];
            for ((g, &d), &v) in buf.iter_mut().zip(dy).zip(xs) {
                *g = if relu_passes(v) { d } else { 0.0 };
            }
            return buf;
        }
        (Some(g), Some(argmax)) => {
            let out_plane = g.out_h * g.out_w;
            let (dyp, ip) = (&dy[run * out_plane..], &argmax[run * out_plane..]);
            buf.fill(0.0);
            for (&d, &i) in dyp[..out_plane].iter().zip(&ip[..out_plane]) {
                buf[i as usize] += d;
            }
        }
        (Some(_), None) => panic!("max pooling's positions come with its geometry"),
    }
    if then.relu {
        for (g, &v) in buf.iter_mut().zip(xs) {
            *g = if relu_passes(v) { *g } else { 0.0 };
        }
    }
    buf
}

/// The gradient at y of run `run` as (position, value) pairs, when the epilogue max-pools in
/// windows that do not overlap (each input then the argmax of at most one output, as in 2×2/2):
/// the pooled positions, each with its dy (0 where the ReLU stops it); every other position's
/// gradient is 0. `None` otherwise, for [`grad_at_y`]. The passes then need not rebuild the
/// whole run, and visit a quarter of it for 2×2 pooling; dx is the same, bit for bit. Timed in
/// one process, alternated, best of 15 (batch 32, 2×2/2 after ReLU): resnet's stem (16 channels
/// at 96×96) 12.1 → 9.7 ms, fracturenet's first block (32 at 128×128) 46.4 → 29.0, 64 channels
/// at 64×64 16.9 → 13.9.
fn pooled_gradient<'a>(
    (run, xs): (usize, &'a [f32]),
    (dy, argmax): (&'a [f32], Option<&'a [u32]>),
    (s, k): (f32, f32),
    then: &Epilogue,
) -> Option<impl Iterator<Item = (usize, f32)> + 'a> {
    let (g, argmax) = (then.pool.as_ref()?, argmax?);
    if g.kh > g.stride_h || g.kw > g.stride_w {
        return None;
    }
    let out_plane = g.out_h * g.out_w;
    let dyp = &dy[run * out_plane..][..out_plane];
    let ip = &argmax[run * out_plane..][..out_plane];
    let relu = then.relu;
    Some(dyp.iter().zip(ip).map(move |(&d, &i)| {
        let i = i as usize;
        let passes = !relu || s * xs[i] + k > 0.0;
        (i, if passes { d } else { 0.0 })
    }))
}

/// With x̂ = (x - mean) · inv_std and y = γ x̂ + β, over the M = N·H·W values of a channel:
///   dβ = Σ dy,   dγ = Σ dy · x̂,
///   dx = γ · inv_std / M · (M · dy - dβ - x̂ · dγ)
/// (the last two terms are the paths through the batch mean and the batch variance).
/// `dy` is the gradient at the epilogue's output; each run's gradient at y is rebuilt in a
/// thread's buffer, once for the sums and once for dx, never written whole; after a max pooling
/// whose windows do not overlap, only its pooled positions are visited (`pooled_gradient`).
pub fn backward(
    x: &[f32],
    (dy, argmax): (&[f32], Option<&[u32]>),
    (gamma, beta): (&[f32], &[f32]),
    (mean, inv_std): (&[f32], &[f32]),
    d: Dims,
    then: &Epilogue,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let coef = affine(gamma, beta, mean, inv_std);
    let per_task = super::planes_per_task(d.hw);
    // Σ dy and Σ dy·x̂ of each run, in parallel; then per channel, over the images in order
    let run_sums: Vec<(f64, f64)> = x
        .par_chunks(d.hw)
        .enumerate()
        .with_min_len(per_task)
        .map_init(
            || vec![0f32; d.hw],
            |buf, (run, xs)| {
                let c = run % d.c;
                let xhat = |v: f32| (v - mean[c]) * inv_std[c];
                if let Some(pooled) = pooled_gradient((run, xs), (dy, argmax), coef[c], then) {
                    let (mut dbeta, mut dgamma) = (0f64, 0f64);
                    for (i, g) in pooled {
                        dbeta += g as f64;
                        dgamma += g as f64 * xhat(xs[i]) as f64;
                    }
                    return (dbeta, dgamma);
                }
                let g = grad_at_y((run, xs), (dy, argmax), coef[c], then, buf);
                let dbeta = sum_lanes(g, g, |g, _| g as f64);
                (dbeta, sum_lanes(xs, g, |v, g| g as f64 * xhat(v) as f64))
            },
        )
        .collect();
    let per_channel_sum = |part: fn(&(f64, f64)) -> f64| -> Vec<f64> {
        let runs_of = |c| (0..d.n).map(move |n| n * d.c + c);
        (0..d.c)
            .map(|c| runs_of(c).map(|run| part(&run_sums[run])).sum())
            .collect()
    };
    let (dbeta, dgamma) = (per_channel_sum(|s| s.0), per_channel_sum(|s| s.1));
    let m = d.count();
    // dx = k (M dy - dβ - (x - mean) inv_std dγ) with k = γ inv_std / M, as a·x + b·dy + c
    let lin: Vec<[f32; 3]> = (0..d.c)
        .map(|c| {
            let k = gamma[c] as f64 * inv_std[c] as f64 / m;
            let slope = -k * dgamma[c] * inv_std[c] as f64;
            let offset = -k * dbeta[c] - slope * mean[c] as f64;
            [slope as f32, (k * m) as f32, offset as f32]
        })
        .collect();
    let fill_dx = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(d.hw)
            .zip(x.par_chunks(d.hw))
            .enumerate()
            .with_min_len(per_task)
            .for_each_init(
                || vec![0f32; d.hw],
                |buf, (run, (out, xs))| {
                    let c = run % d.c;
                    let [a, b, k] = lin[c];
                    if let Some(pooled) = pooled_gradient((run, xs), (dy, argmax), coef[c], then) {
                        // the gradient at y is zero but at the pooled positions
                        for (o, &v) in out.iter_mut().zip(xs) {
                            o.write(a * v + k);
                        }
                        for (i, gv) in pooled {
                            out[i].write(a * xs[i] + b * gv + k);
                        }
                        return;
                    }
                    let g = grad_at_y((run, xs), (dy, argmax), coef[c], then, buf);
                    for ((o, &v), &gv) in out.iter_mut().zip(xs).zip(g) {
                        o.write(a * v + b * gv + k);
                    }
                },
            )
    };
    // SAFETY: the runs cover dx, and every value of a run is written.
    let dx = unsafe { super::written_by(x.len(), fill_dx) };
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and biased variance of each channel by the textbook two passes, in f64.
    fn two_passes(d: Dims, x: &[f32]) -> Vec<(f64, f64)> {
        (0..d.c)
            .map(|c| {
                let values = || {
                    (0..d.n)
                        .flat_map(move |n| d.run(x, n, c))
                        .map(|&v| v as f64)
                };
                let mean = values().sum::<f64>() / d.count();
                let var = values().map(|v| (v - mean).powi(2)).sum::<f64>() / d.count();
                (mean, var)
            })
            .collect()
    }

    #[test]
    fn channel_moments_are_exact_far_from_zero_and_with_an_outlier_first() {
        // channel 0 at 10⁶ ± 0.5 (a one-pass E[x²] − E[x]² loses every digit there), channel 1
        // around 0 with a far outlier first (the worst shift for a one-pass sum shifted by the
        // first value), channel 2 constant; 3 images of 37 values
        let d = Dims { n: 3, c: 3, hw: 37 };
        let x: Vec<f32> = (0..d.n * d.c * d.hw)
            .map(|i| {
                let (c, j) = ((i / d.hw) % d.c, i % d.hw + i / (d.c * d.hw));
                match c {
                    0 => 1e6 + [-0.5, 0.0, 0.5, 0.25][j % 4],
                    1 if i == d.hw => 1e3,
                    1 => (j as f32 * 0.37).sin(),
                    _ => 7.0,
                }
            })
            .collect();
        for (c, (got, want)) in channel_moments(d, &x)
            .iter()
            .zip(two_passes(d, &x))
            .enumerate()
        {
            assert!(
                (got.0 - want.0).abs() <= 1e-12 * want.0.abs(),
                "channel {c} mean: {got:?} against {want:?}"
            );
            assert!(
                (got.1 - want.1).abs() <= 1e-9 * want.1,
                "channel {c} variance: {got:?} against {want:?}"
            );
        }
    }
}
