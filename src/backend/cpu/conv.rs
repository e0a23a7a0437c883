//! 2-D convolution on the CPU, lowered onto the GEMM by unfolding ("im2col").
//!
//! For one image, unfold `x[Ci,H,W]` into a matrix `col[Ci·KH·KW, Ho·Wo]` whose column p holds the
//! input patch under output pixel p. Then the three passes are three matrix products:
//! - forward:          `y[Co, Ho·Wo]`       = `w[Co, Ci·KH·KW]` · col
//! - weight gradient:  `dw[Co, Ci·KH·KW]`  += `dy[Co, Ho·Wo]` · colᵀ      (summed over the batch)
//! - input gradient:   dcol               = wᵀ · dy,  then folded back ("col2im") into dx,
//!   each patch element adding into the input pixel it was copied from.
//!
//! Each image is unfolded into its thread's reused buffer (`with_col`), so memory stays near
//! `threads × Ci·KH·KW × Ho·Wo` floats whatever the batch size (a thread that starts another
//! image while it waits inside the parallel GEMM takes a second buffer). The weight gradient
//! sums its products over groups of `IMAGES_PER_PARTIAL` images, one partial `dw` per group.

use super::gemm::{gemm, MatRef};
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's unfolding buffer, sized to one image's `col`.
///
/// The buffer is taken out of the thread-local slot while `f` runs: `f` calls the parallel GEMM,
/// and while a rayon thread waits it may start another image's task on the same thread, which
/// then finds the slot empty and uses a buffer of its own instead of aliasing this one.
fn with_col<R>(g: &Conv2dGeom, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut col = COL.with(|c| std::mem::take(&mut *c.borrow_mut()));
    col.resize(g.patch_len() * g.out_h * g.out_w, 0.0);
    let result = f(&mut col);
    COL.with(|c| *c.borrow_mut() = col);
    result
}

/// Input row (or column) read by output row `o` at kernel offset `k`, if inside the image.
#[inline]
fn source_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Unfolds one image `x[Ci,H,W]` into `col[Ci·KH·KW, Ho·Wo]`.
pub fn im2col(x: &[f32], g: &Conv2dGeom, col: &mut [f32]) {
    let (ho, wo) = (g.out_h, g.out_w);
    let rows = col.chunks_exact_mut(ho * wo);
    for (r, row) in rows.enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (oy, out) in row.chunks_exact_mut(wo).enumerate() {
            match source_index(oy, ky, g.stride_h, g.pad_top, g.h) {
                None => out.fill(0.0),
                Some(iy) => {
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o = source_index(ox, kx, g.stride_w, g.pad_left, g.w)
                            .map_or(0.0, |ix| src[ix]);
                    }
                }
            }
        }
    }
}

/// Folds `col[Ci·KH·KW, Ho·Wo]` back into `dx[Ci,H,W]` (which it overwrites), summing overlaps.
pub fn col2im(col: &[f32], g: &Conv2dGeom, dx: &mut [f32]) {
    dx.fill(0.0);
    let (ho, wo) = (g.out_h, g.out_w);
    for (r, row) in col.chunks_exact(ho * wo).enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (oy, src) in row.chunks_exact(wo).enumerate() {
            let Some(iy) = source_index(oy, ky, g.stride_h, g.pad_top, g.h) else {
                continue;
            };
            let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
            for (ox, s) in src.iter().enumerate() {
                if let Some(ix) = source_index(ox, kx, g.stride_w, g.pad_left, g.w) {
                    dst[ix] += s;
                }
            }
        }
    }
}

/// `y[N,Co,Ho,Wo]` = conv(x, w) + b, then max(0, ·) when `relu` (in the same pass as the bias)
pub fn forward(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dGeom, relu: bool) -> Vec<f32> {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let mut y = vec![0f32; g.n * g.c_out * p];
    let wm = MatRef::rows(w, g.c_out, k);
    y.par_chunks_mut(g.c_out * p)
        .zip(x.par_chunks(g.c_in * g.h * g.w))
        .for_each(|(yn, xn)| {
            if g.is_pointwise() {
                gemm(wm, MatRef::rows(xn, k, p), yn, p, false);
            } else {
                with_col(g, |col| {
                    im2col(xn, g, col);
                    gemm(wm, MatRef::rows(col, k, p), yn, p, false);
                });
            }
            for (plane, bias) in yn.chunks_exact_mut(p).zip(b) {
                if relu {
                    plane.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
                } else {
                    plane.iter_mut().for_each(|v| *v += bias);
                }
            }
        });
    y
}

/// `dx[N,Ci,H,W]` = col2im(wᵀ · dy) per image.
pub fn backward_input(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let mut dx = vec![0f32; g.n * g.c_in * g.h * g.w];
    let wt = MatRef::rows(w, g.c_out, k).t();
    dx.par_chunks_mut(g.c_in * g.h * g.w)
        .zip(dy.par_chunks(g.c_out * p))
        .for_each(|(dxn, dyn_)| {
            let dym = MatRef::rows(dyn_, g.c_out, p);
            if g.is_pointwise() {
                gemm(wt, dym, dxn, p, false);
            } else {
                with_col(g, |col| {
                    gemm(wt, dym, col, p, false);
                    col2im(col, g, dxn);
                });
            }
        });
    dx
}

/// Σ xs, in 8 interleaved accumulators (vectorised, and not paced by one chain of additions).
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Images per partial weight gradient. Fixed (not derived from the thread count) so that the
/// summation order, and so the result, is the same on every machine.
const IMAGES_PER_PARTIAL: usize = 8;

/// (`dw[Co,Ci,KH,KW]` = Σₙ dyₙ · colₙᵀ, `db[Co]` = Σ over n, y, x of dy)
pub fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> (Vec<f32>, Vec<f32>) {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let (x_img, dy_img) = (g.c_in * g.h * g.w, g.c_out * p);
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(IMAGES_PER_PARTIAL))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0f32; g.c_out * k];
            let images = chunk * IMAGES_PER_PARTIAL..g.n.min((chunk + 1) * IMAGES_PER_PARTIAL);
            for n in images {
                let xn = &x[n * x_img..(n + 1) * x_img];
                let dym = MatRef::rows(&dy[n * dy_img..(n + 1) * dy_img], g.c_out, p);
                if g.is_pointwise() {
                    gemm(dym, MatRef::rows(xn, k, p).t(), &mut dw, k, true);
                } else {
                    with_col(g, |col| {
                        im2col(xn, g, col);
                        gemm(dym, MatRef::rows(col, k, p).t(), &mut dw, k, true);
                    });
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; g.c_out * k];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(d, s)| *d += s);
    }
    let db = (0..g.c_out)
        .into_par_iter()
        .map(|co| {
            (0..g.n)
                .map(|n| sum(&dy[n * dy_img + co * p..n * dy_img + (co + 1) * p]))
                .sum()
        })
        .collect();
    (dw, db)
}
