//! The optimisers' in-place updates on the CPU (their GPU twins: `gpu/optim.rs`,
//! `shaders/optim.wgsl`), in parallel chunks.

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
