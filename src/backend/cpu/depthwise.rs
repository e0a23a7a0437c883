//! Depthwise convolution on the CPU: every channel convolved with its own `KH×KW` filter.
//!
//! A depthwise layer does `KH·KW` multiply-adds per output value where a full convolution does
//! `Ci·KH·KW`, so there is no matrix product worth lowering it onto: each pass is direct loops
//! over (image, channel) planes, a few per rayon task when they are small. For each kernel tap (ky, kx) the loops run
//! only over the outputs whose input pixel lies inside the image, so the innermost loop has no
//! bounds test (and, at stride 1, is a contiguous multiply-add the compiler vectorises).

use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::ops::Range;

/// The outputs `o` whose input `o·stride + k − pad` lies in `0..size` (and below `out`).
fn inside(k: usize, stride: usize, pad: usize, size: usize, out: usize) -> Range<usize> {
    let lo = pad.saturating_sub(k).div_ceil(stride);
    let hi = (size + pad).saturating_sub(k).div_ceil(stride).min(out);
    lo.min(hi)..hi
}

/// Calls `tap(k, out, input)` for every kernel tap `k = ky·KW + kx` and every output row that
/// reads inside the image at that tap: outputs `out` of the plane (a run of one row) read the
/// inputs `input, input + sw, input + 2·sw, ...` of the input plane.
fn for_each_tap(g: &Conv2dGeom, mut tap: impl FnMut(usize, Range<usize>, usize)) {
    for ky in 0..g.kh {
        let rows = inside(ky, g.stride_h, g.pad_top, g.h, g.out_h);
        for kx in 0..g.kw {
            let cols = inside(kx, g.stride_w, g.pad_left, g.w, g.out_w);
            if cols.is_empty() {
                continue;
            }
            for oy in rows.clone() {
                let iy = oy * g.stride_h + ky - g.pad_top;
                let ix = cols.start * g.stride_w + kx - g.pad_left;
                let out = oy * g.out_w + cols.start..oy * g.out_w + cols.end;
                tap(ky * g.kw + kx, out, iy * g.w + ix);
            }
        }
    }
}

/// `dst[j]` += a · `src[j·stride]`
#[inline]
fn gather_axpy(dst: &mut [f32], src: &[f32], stride: usize, a: f32) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += a * s);
    } else {
        dst.iter_mut()
            .zip(src.iter().step_by(stride))
            .for_each(|(d, s)| *d += a * s);
    }
}

/// `dst[j·stride]` += a · `src[j]`
#[inline]
fn scatter_axpy(dst: &mut [f32], src: &[f32], stride: usize, a: f32) {
    if stride == 1 {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d += a * s);
    } else {
        dst.iter_mut()
            .step_by(stride)
            .zip(src)
            .for_each(|(d, s)| *d += a * s);
    }
}

/// Σ_j `a[j]` · `b[j·stride]`; at stride 1 in 8 interleaved sums, which the compiler vectorises
/// (it may not reorder one chain of float additions).
#[inline]
fn strided_dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride == 1 {
        let mut acc = [0f32; 8];
        let (a8, b8) = (a.chunks_exact(8), b[..a.len()].chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in a8.zip(b8) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        acc.iter().sum::<f32>() + tail
    } else {
        a.iter()
            .zip(b.iter().step_by(stride))
            .map(|(a, b)| a * b)
            .sum()
    }
}

/// `y[N,C,Ho,Wo]` = `b[c]` + Σ_{ky,kx} `w[c,ky,kx]` · `x[n, c, oy·sh + ky − pt, ox·sw + kx − pl]`, then
/// max(0, ·) when `relu`
pub fn forward(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dGeom, relu: bool) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let mut y = vec![0f32; g.n * g.c_in * out_plane];
    y.par_chunks_mut(out_plane)
        .zip(x.par_chunks(in_plane))
        .enumerate()
        .with_min_len(super::planes_per_task(out_plane))
        .for_each(|(plane, (yp, xp))| {
            let c = plane % g.c_in;
            let filter = &w[c * taps..(c + 1) * taps];
            yp.fill(b[c]);
            for_each_tap(g, |k, out, input| {
                gather_axpy(&mut yp[out], &xp[input..], g.stride_w, filter[k]);
            });
            if relu {
                // while the plane is in L1
                yp.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
    y
}

/// `dx[N,C,H,W]`: each output's gradient goes back to the pixels it read, times their weights:
/// `dx[n,c,iy,ix]` = Σ over taps and outputs that read (iy, ix) of `w[c,ky,kx]` · `dy[n,c,oy,ox]`.
pub fn backward_input(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let mut dx = vec![0f32; g.n * g.c_in * in_plane];
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane))
        .enumerate()
        .with_min_len(super::planes_per_task(in_plane))
        .for_each(|(plane, (dxp, dyp))| {
            let c = plane % g.c_in;
            let filter = &w[c * taps..(c + 1) * taps];
            for_each_tap(g, |k, out, input| {
                scatter_axpy(&mut dxp[input..], &dyp[out], g.stride_w, filter[k]);
            });
        });
    dx
}

/// (`dw[C,1,KH,KW]` = Σ_{n,oy,ox} `dy[n,c,oy,ox]` · `x[n, c, oy·sh + ky − pt, ox·sw + kx − pl]`,
///  `db[C]` = Σ_{n,oy,ox} `dy[n,c,oy,ox]`), one channel per rayon task (so the sums run in
/// the same order on every machine).
pub fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> (Vec<f32>, Vec<f32>) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let per_channel: Vec<(Vec<f32>, f32)> = (0..g.c_in)
        .into_par_iter()
        .map(|c| {
            let mut dw = vec![0f32; taps];
            let mut db = 0f32;
            for n in 0..g.n {
                let plane = n * g.c_in + c;
                let xp = &x[plane * in_plane..(plane + 1) * in_plane];
                let dyp = &dy[plane * out_plane..(plane + 1) * out_plane];
                db += dyp.iter().sum::<f32>();
                for_each_tap(g, |k, out, input| {
                    dw[k] += strided_dot(&dyp[out], &xp[input..], g.stride_w);
                });
            }
            (dw, db)
        })
        .collect();
    let db = per_channel.iter().map(|(_, db)| *db).collect();
    let dw = per_channel.into_iter().flat_map(|(dw, _)| dw).collect();
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Padding;

    /// The definition, one output at a time, with the bounds test in the innermost loop.
    fn naive_forward(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        let mut y = Vec::new();
        for n in 0..g.n {
            for c in 0..g.c_in {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut s = b[c];
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride_h + ky) as isize - g.pad_top as isize;
                                let ix = (ox * g.stride_w + kx) as isize - g.pad_left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w
                                {
                                    let xi =
                                        ((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize;
                                    s += w[(c * g.kh + ky) * g.kw + kx] * x[xi];
                                }
                            }
                        }
                        y.push(s);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition_for_strides_paddings_and_kernels() {
        let cases = [
            ((3, 3), (1, 1), Padding::Same, (7, 6)),
            ((3, 3), (2, 2), Padding::Same, (8, 7)),
            ((3, 3), (2, 2), Padding::Valid, (7, 7)),
            ((2, 5), (1, 3), Padding::Same, (5, 9)),
            ((5, 5), (1, 1), Padding::Same, (3, 3)), // kernel larger than the image
        ];
        for (k, s, pad, (h, w)) in cases {
            let g = Conv2dGeom::depthwise(2, 3, h, w, k, s, pad).unwrap();
            let x: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let wt: Vec<f32> = (0..3 * k.0 * k.1)
                .map(|i| (i as f32 * 0.91).cos())
                .collect();
            let b = [0.1, -0.2, 0.3];
            let (got, want) = (
                forward(&x, &wt, &b, &g, false),
                naive_forward(&x, &wt, &b, &g),
            );
            assert_eq!(got.len(), want.len());
            for (a, e) in got.iter().zip(&want) {
                assert!((a - e).abs() < 1e-5, "{g:?}: {a} vs {e}");
            }
        }
    }
}
