//! The copy and implicit unfoldings: `col` written out whole by [`im2col`] (and folded back by
//! [`col2im`]), or gathered from the image straight into the GEMM's packed blocks ([`Unfolded`]).

use super::super::filled;
use super::super::gemm::{PackB, NR};
use crate::backend::Conv2dGeom;
use std::mem::MaybeUninit;

/// Input row (or column) read by output row `o` at kernel offset `k`, if inside the image.
#[inline]
pub(super) fn source_index(
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Unfolds one image `x[Ci,H,W]` into `col[Ci·KH·KW, Ho·Wo]`.
pub fn im2col(x: &[f32], g: &Conv2dGeom, col: &mut [f32]) {
    im2col_rows(x, g, col, g.out_h * g.out_w);
}

/// [`im2col`] into rows `stride` apart: row r of `col` is `col[r·stride..][..Ho·Wo]` (the rest
/// of each row is left alone), so that several images' `col`s sit side by side.
pub fn im2col_rows(x: &[f32], g: &Conv2dGeom, col: &mut [f32], stride: usize) {
    let (ho, wo) = (g.out_h, g.out_w);
    let rows = col.chunks_mut(stride).map(|row| &mut row[..ho * wo]);
    for (r, row) in rows.enumerate().take(g.patch_len()) {
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
pub fn col2im(col: &[f32], g: &Conv2dGeom, dx: &mut [MaybeUninit<f32>]) {
    let dx = filled(dx, 0.0);
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

/// The `col[Ci·KH·KW, m·Ho·Wo]` of `m` images side by side (or, `transposed`, its transpose) as a
/// GEMM operand that is never stored: packing a block reads the images.
#[derive(Clone, Copy)]
pub struct Unfolded<'a> {
    /// The images, `[m,Ci,H,W]`; col's columns are their output pixels, image by image.
    pub x: &'a [f32],
    pub g: &'a Conv2dGeom,
    pub transposed: bool,
}

impl Unfolded<'_> {
    /// Output pixels of all the images: col's columns.
    pub(super) fn pixels(&self) -> usize {
        let g = self.g;
        self.x.len() / (g.c_in * g.h * g.w) * g.out_h * g.out_w
    }

    /// Writes row r of col, from pixel j0 for nc pixels, into `out` in runs that stay inside one
    /// output row of one image and one packed strip: the run of pixel j0 + j starts at `at(j)`.
    /// Positions advance by counting, not dividing (this runs for every row of every block).
    #[inline]
    pub(super) fn pack_row(
        &self,
        r: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
        at: impl Fn(usize) -> usize,
    ) {
        let g = self.g;
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let image_len = g.c_in * g.h * g.w;
        let (n, pixel) = (j0 / (g.out_h * g.out_w), j0 % (g.out_h * g.out_w));
        // the input plane `ci` of image n starts at `plane`
        let mut plane = n * image_len + ci * g.h * g.w;
        let (mut oy, mut ox) = (pixel / g.out_w, pixel % g.out_w);
        let mut j = 0;
        while j < nc {
            let len = (g.out_w - ox).min(NR - j % NR).min(nc - j);
            let seg = &mut out[at(j)..][..len];
            match source_index(oy, ky, g.stride_h, g.pad_top, g.h) {
                None => seg.fill(0.0),
                Some(iy) => {
                    let row = &self.x[plane + iy * g.w..][..g.w];
                    gather_columns(row, ox, kx, g, seg)
                }
            }
            j += len;
            ox += len;
            if ox == g.out_w {
                (oy, ox) = (oy + 1, 0);
                if oy == g.out_h {
                    (plane, oy) = (plane + image_len, 0);
                }
            }
        }
    }
}

/// `seg[i]` = the input value under output column `ox0 + i` at kernel column kx, 0 in the padding.
pub(super) fn gather_columns(src: &[f32], ox0: usize, kx: usize, g: &Conv2dGeom, seg: &mut [f32]) {
    if g.stride_w != 1 {
        for (i, o) in seg.iter_mut().enumerate() {
            *o = source_index(ox0 + i, kx, g.stride_w, g.pad_left, g.w).map_or(0.0, |ix| src[ix]);
        }
        return;
    }
    // At stride 1, output column ox reads input column ox + kx - pad_left: one contiguous run
    // between zeros on the left (ox < pad_left - kx) and on the right (ox ≥ w + pad_left - kx).
    let first = g.pad_left.saturating_sub(kx).clamp(ox0, ox0 + seg.len()) - ox0;
    let end = (g.w + g.pad_left)
        .saturating_sub(kx)
        .clamp(ox0 + first, ox0 + seg.len())
        - ox0;
    seg[..first].fill(0.0);
    let ix0 = ox0 + first + kx - g.pad_left;
    copy_run(&mut seg[first..end], &src[ix0..ix0 + end - first]);
    seg[end..].fill(0.0);
}

/// `dst.copy_from_slice(src)` as inline vector moves: packing calls it for runs of at most one
/// strip (32 floats), where a call to memmove costs as much as the copy (a quarter of a 3×3
/// convolution's time went there).
#[inline(always)]
pub(super) fn copy_run(dst: &mut [f32], src: &[f32]) {
    let (mut d8, s8) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d8).zip(s8.clone()) {
        let s: &[f32; 8] = s.try_into().expect("a chunk of 8");
        d.copy_from_slice(s);
    }
    let (d_tail, s_tail) = (d8.into_remainder(), s8.remainder());
    for (d, s) in d_tail.iter_mut().zip(s_tail) {
        *d = *s;
    }
}

impl PackB for Unfolded<'_> {
    fn rows(&self) -> usize {
        let (k, p) = (self.g.patch_len(), self.pixels());
        if self.transposed {
            p
        } else {
            k
        }
    }
    fn cols(&self) -> usize {
        let (k, p) = (self.g.patch_len(), self.pixels());
        if self.transposed {
            k
        } else {
            p
        }
    }
    #[inline(always)]
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        let strips = nc.div_ceil(NR);
        if !self.transposed {
            for p in 0..kc {
                self.pack_row(p0 + p, j0, nc, out, |j| ((j / NR) * kc + p) * NR + j % NR);
            }
            return;
        }
        // B = colᵀ: packed column j is patch row j0 + j over output pixels p0..p0+kc.
        let mut run = vec![0f32; kc];
        for s in 0..strips {
            let strip = &mut out[s * NR * kc..(s + 1) * NR * kc];
            for j in 0..NR.min(nc - s * NR) {
                self.pack_row(j0 + s * NR + j, p0, kc, &mut run, |i| i);
                for (dst, v) in strip.iter_mut().skip(j).step_by(NR).zip(&run) {
                    *dst = *v;
                }
            }
        }
    }
}
