//! The optimisers' in-place updates on the CPU (their GPU twins: `gpu/optim.rs`,
//! `shaders/optim.wgsl`), the moving averages and the gradients' squared norms, in parallel
//! chunks: run on one thread, the last two left the other cores idle at every step.

use super::elementwise::CHUNK;
use crate::backend::{AdamStep, SgdStep};
use rayon::prelude::*;

/// m = β₁m + (1-β₁)g;  v = β₂v + (1-β₂)g²;  p -= lr · (m/(1-β₁ᵗ)) / (√(v/(1-β₂ᵗ)) + ε) + lr·wd·p
pub fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    let bc1 = 1.0 - h.beta1.powi(h.t as i32);
    let bc2 = 1.0 - h.beta2.powi(h.t as i32);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
                v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
                let step = (m[i] / bc1) / ((v[i] / bc2).sqrt() + h.eps);
                p[i] -= h.lr * (step + h.weight_decay * p[i]);
            }
        });
}

/// v = μv + g + wd·p;  p -= lr · v
pub fn sgd(p: &mut [f32], g: &[f32], vel: &mut [f32], h: &SgdStep) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(vel.par_chunks_mut(CHUNK)))
        .for_each(|(p, (g, v))| {
            for i in 0..p.len() {
                v[i] = h.momentum * v[i] + g[i] + h.weight_decay * p[i];
                p[i] -= h.lr * v[i];
            }
        });
}

/// running = (1 − μ)·running + μ·scale·batch: a moving average (of the weights, of batch norm's
/// statistics).
pub fn ema(running: &mut [f32], batch: &[f32], momentum: f32, scale: f32) {
    running
        .par_chunks_mut(CHUNK)
        .zip(batch.par_chunks(CHUNK))
        .for_each(|(r, b)| {
            for (r, b) in r.iter_mut().zip(b) {
                *r = (1.0 - momentum) * *r + momentum * scale * b;
            }
        });
}

/// Σ x², in f64: each chunk in four interleaved accumulators (one chain of additions paced the
/// sum), the chunks' sums added in order, so the same bits for any thread count.
pub fn squared_norm(x: &[f32]) -> f32 {
    let chunk_sum = |c: &[f32]| {
        let mut acc = [0f64; 4];
        let quads = c.chunks_exact(4);
        let tail: f64 = quads.remainder().iter().map(|&v| v as f64 * v as f64).sum();
        for q in quads {
            for l in 0..4 {
                acc[l] += q[l] as f64 * q[l] as f64;
            }
        }
        acc.iter().sum::<f64>() + tail
    };
    let sums: Vec<f64> = x.par_chunks(CHUNK).map(chunk_sum).collect();
    sums.iter().sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// Over several chunks and a tail: Σ x² within an f32 rounding of the f64 sum, and the same
    /// bits on one thread as on several.
    #[test]
    fn the_squared_norm_is_the_f64_sum_whatever_the_threads() {
        let x = Tensor::rand_uniform([3 * CHUNK + 7], -3.0, 3.0, 1).data;
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = squared_norm(&x);
        assert!(
            (got as f64 - want).abs() <= want * 1e-7,
            "{got} against {want}"
        );
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(
            one_thread.install(|| squared_norm(&x)).to_bits(),
            got.to_bits()
        );
        assert_eq!(squared_norm(&[]), 0.0);
    }

    /// Every element of a moving average over several chunks is the formula's, bit for bit.
    #[test]
    fn the_moving_average_is_the_formula_everywhere() {
        let batch = Tensor::rand_uniform([2 * CHUNK + 5], -1.0, 1.0, 2).data;
        let before = Tensor::rand_uniform([2 * CHUNK + 5], -1.0, 1.0, 3).data;
        let mut running = before.clone();
        ema(&mut running, &batch, 0.1, 1.5);
        for (i, ((r, b), old)) in running.iter().zip(&batch).zip(&before).enumerate() {
            assert_eq!(*r, 0.9 * old + 0.1 * 1.5 * b, "element {i}");
        }
    }
}
