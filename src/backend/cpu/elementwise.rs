//! Element-wise kernels on the CPU: ReLU, dropout, the fused sigmoid-BCE loss and the optimisers.

use crate::backend::{hash, AdamStep, SgdStep};
use rayon::prelude::*;

/// Elements per rayon task: large enough that scheduling costs nothing next to the work.
const CHUNK: usize = 1 << 14;

/// `out[i]` = f(i, `a[i]`, `b[i]`), in parallel.
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(usize, f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len());
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
        let base = ci * CHUNK;
        for (j, o) in o.iter_mut().enumerate() {
            let i = base + j;
            *o = f(i, a[i], b[i]);
        }
    });
    out
}

/// y = a + b.
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    zip_map(a, b, |_, u, v| u + v)
}

pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    zip_map(x, x, |_, v, _| v.max(0.0))
}

/// dx = dy where x > 0 (the slope of max(x, 0) is 1 there and 0 elsewhere).
pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, |_, v, g| if v > 0.0 { g } else { 0.0 })
}

/// y = x · keep / (1 - p): the kept units are scaled up so that the expected activation is
/// unchanged and inference needs no rescaling. The same function with dy gives dx.
pub fn dropout(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let key = hash::key(seed);
    let scale = 1.0 / (1.0 - p);
    zip_map(x, x, |i, v, _| {
        if hash::uniform(key, i as u32) >= p {
            v * scale
        } else {
            0.0
        }
    })
}

/// log(1 + e^z) without overflow for large |z|.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Per sample, with w = pos_weight and σ the sigmoid:
///   loss = w·y·softplus(-z) + (1-y)·softplus(z)        (= -w·y·log σ(z) - (1-y)·log(1-σ(z)))
///   dloss/dz = w·y·(σ(z) - 1) + (1-y)·σ(z)
/// averaged over the N samples. Written with softplus, it stays finite at any |z|.
pub fn bce_with_logits(z: &[f32], y: &[f32], pos_weight: f32) -> (f32, Vec<f32>) {
    let n = z.len() as f64;
    let w = pos_weight as f64;
    let mut loss = 0f64;
    let grad = z
        .iter()
        .zip(y)
        .map(|(&z, &y)| {
            let (z, y) = (z as f64, y as f64);
            loss += w * y * softplus(-z) + (1.0 - y) * softplus(z);
            ((w * y * (sigmoid(z) - 1.0) + (1.0 - y) * sigmoid(z)) / n) as f32
        })
        .collect();
    ((loss / n) as f32, grad)
}

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
