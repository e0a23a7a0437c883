//! Element-wise kernels on the CPU: the sum of a residual merge, ReLU, dropout, and copies.

use crate::backend::hash;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task: large enough that scheduling costs nothing next to the work.
pub(super) const CHUNK: usize = 1 << 14;

/// `out[i]` = f(i, `a[i]`, `b[i]`), in parallel.
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(usize, f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len());
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
            let base = ci * CHUNK;
            for (j, o) in o.iter_mut().enumerate() {
                let i = base + j;
                o.write(f(i, a[i], b[i]));
            }
        })
    };
    // SAFETY: the chunks cover the output, and every element of a chunk is written.
    unsafe { super::written_by(a.len(), fill) }
}

/// A copy of `x`, in parallel: one thread's memcpy leaves the other cores waiting (uploading
/// bench's inference batch, 9.4 MB at 192 pixels, was 2.7 % of its perf samples).
pub fn copy(x: &[f32]) -> Vec<f32> {
    let fill = |out: &mut [MaybeUninit<f32>]| {
        let chunks = out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK));
        chunks.for_each(|(o, s)| {
            for (o, &v) in o.iter_mut().zip(s) {
                o.write(v);
            }
        })
    };
    // SAFETY: the chunks of `out` pair with those of `x`, of the same lengths: every element
    // is written.
    unsafe { super::written_by(x.len(), fill) }
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

#[cfg(test)]
mod tests {
    /// Every element copied, on lengths around the task size (one task, several, a partial last).
    #[test]
    fn copy_gives_every_element() {
        for len in [0, 1, super::CHUNK - 1, super::CHUNK, 3 * super::CHUNK + 5] {
            let x: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 7.0).collect();
            assert_eq!(super::copy(&x), x, "length {len}");
        }
    }
}
