//! Depthwise convolution on the CPU: every channel convolved with its own `KH×KW` filter.
//!
//! A depthwise layer does `KH·KW` multiply-adds per output value where a full convolution does
//! `Ci·KH·KW`, so there is no matrix product worth lowering it onto: each pass is direct loops
//! over (image, channel) planes, a few per rayon task when they are small. Two ways:
//! - **flat** (`Flat`, a stride the same both ways; `flat.rs`): the plane is copied once into a
//!   buffer with its zero padding around it, where every tap is a fixed offset from its output:
//!   the whole plane one loop, each block of outputs summed over all taps in registers and
//!   written once. The weight gradient is `KH·KW` dot products over the same buffer; at stride 1
//!   the input gradient is the same correlation of dy with the turned filter. At a larger stride
//!   the input gradient is split into phases (`InputPhase`), each such a correlation with some
//!   of the taps.
//! - **per tap** (`for_each_tap`, strides unequal in the two directions): for each kernel tap
//!   (ky, kx) the loops run only over the outputs whose input pixel lies inside the image, so
//!   the innermost loop has no bounds test.

use super::flat::{correlate, dot_offsets, flat_buffers, Flat, LANES};
use super::gemm::Kernel;
use super::{filled, written_by};
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// `xs` added into `lanes`, value i into lane i mod `LANES`.
fn add_lanes(lanes: &mut [f32; LANES], xs: &[f32]) {
    let blocks = xs.chunks_exact(LANES);
    for (l, &v) in blocks.remainder().iter().enumerate() {
        lanes[l] += v;
    }
    for block in blocks {
        lanes.iter_mut().zip(block).for_each(|(s, &v)| *s += v);
    }
}

/// Every plane of `input` correlated at `f`'s geometry, in parallel: plane p with the filter of
/// its channel c = p mod `channels` (`filters[channels, taps]`), plus `bias[c]` when given, then
/// ReLU when `relu`.
fn correlate_planes(
    kernel: Kernel,
    f: &Flat,
    input: &[f32],
    (filters, bias, relu): (&[f32], Option<&[f32]>, bool),
    channels: usize,
) -> Vec<f32> {
    let (in_plane, out_plane) = (f.in_h * f.in_w, f.out_h * f.out_w);
    let taps = f.kh * f.kw;
    let offsets = f.offsets();
    let planes = input.len() / in_plane;
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(out_plane)
            .zip(input.par_chunks(in_plane))
            .enumerate()
            .with_min_len(super::planes_per_task(out_plane.max(in_plane)))
            .for_each_init(
                || flat_buffers(f),
                |(padded, flat), (plane, (op, ip))| {
                    let c = plane % channels;
                    f.pad(ip, padded);
                    let filter = &filters[c * taps..(c + 1) * taps];
                    let b = bias.map_or(0.0, |b| b[c]);
                    correlate(kernel, padded, &offsets, filter, b, flat);
                    f.unflatten(flat, op, relu);
                },
            )
    };
    // SAFETY: the planes cover the output, and `unflatten` writes all `out_h` rows of
    // `out_w` values of each.
    unsafe { written_by(planes * out_plane, fill) }
}

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
/// (`kernel` the SIMD level of the flat path's correlations)
pub fn forward(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    g: &Conv2dGeom,
    relu: bool,
) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    if let Some(f) = Flat::forward(g) {
        return correlate_planes(kernel, &f, x, (w, Some(b), relu), g.c_in);
    }
    let add_taps = |plane: usize, yp: &mut [f32], xp: &[f32]| {
        let filter = &w[plane % g.c_in * taps..][..taps];
        for_each_tap(g, |k, out, input| {
            gather_axpy(&mut yp[out], &xp[input..], g.stride_w, filter[k]);
        });
        if relu {
            // while the plane is in L1
            yp.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    };
    sum_into_planes(
        x,
        (in_plane, out_plane),
        |plane| b[plane % g.c_in],
        add_taps,
    )
}

/// A new output of one `out_plane` plane per `in_plane` plane of `input`, in parallel (a few
/// planes per task when they are small): each first filled with `start(plane)`, in cache just
/// before `add(plane, out, input_plane)` adds into it.
fn sum_into_planes(
    input: &[f32],
    (in_plane, out_plane): (usize, usize),
    start: impl Fn(usize) -> f32 + Sync,
    add: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) -> Vec<f32> {
    let planes = input.len() / in_plane;
    let each = |(plane, (out, ip)): (usize, (&mut [MaybeUninit<f32>], &[f32]))| {
        add(plane, filled(out, start(plane)), ip)
    };
    // SAFETY: `filled` writes each plane whole first.
    unsafe {
        written_by(planes * out_plane, |y| {
            y.par_chunks_mut(out_plane)
                .zip(input.par_chunks(in_plane))
                .enumerate()
                .with_min_len(super::planes_per_task(out_plane.max(in_plane)))
                .for_each(each)
        })
    }
}

/// `dx[N,C,H,W]`: each output's gradient goes back to the pixels it read, times their weights:
/// `dx[n,c,iy,ix]` = Σ over taps and outputs that read (iy, ix) of `w[c,ky,kx]` · `dy[n,c,oy,ox]`.
/// At stride 1, the correlation of dy with each filter turned by 180°; at a larger stride the
/// same, phase by phase (`InputPhase`).
pub fn backward_input(kernel: Kernel, dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let taps = g.kh * g.kw;
    if let Some(f) = Flat::backward_input(g) {
        let turned: Vec<f32> = w
            .chunks_exact(taps)
            .flat_map(|filter| filter.iter().rev().copied())
            .collect();
        return correlate_planes(kernel, &f, dy, (&turned, None, false), g.c_in);
    }
    match InputPhase::all(g) {
        Some(phases) => backward_input_by_phases(kernel, dy, w, g, &phases),
        None => backward_input_per_tap(dy, w, g),
    }
}

/// The input gradient by the per-tap loops (`for_each_tap`): each tap's products scattered
/// into dx, `stride` apart.
fn backward_input_per_tap(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let add_taps = |plane: usize, dxp: &mut [f32], dyp: &[f32]| {
        let filter = &w[plane % g.c_in * taps..][..taps];
        for_each_tap(g, |k, out, input| {
            scatter_axpy(&mut dxp[input..], &dyp[out], g.stride_w, filter[k]);
        });
    };
    sum_into_planes(dy, (out_plane, in_plane), |_| 0.0, add_taps)
}

/// One phase of a strided input gradient: the pixels `(s·A + ry − pt, s·B + rx − pl)` of dx.
/// Only the taps `(ry + s·j, rx + s·i)` reach them, from outputs `(A − j, B − i)`, so the phase
/// is the stride-1 correlation of dy with those taps turned by 180°: at stride 2 a 3×3 filter
/// splits into 2×2, 2×1, 1×2 and 1×1 taps over four phases, nine multiply-adds per output in
/// all, each phase summed in registers like the stride-1 passes (`Flat`).
struct InputPhase {
    /// The correlation of dy giving the phase's `rows × cols` pixels (none when no tap
    /// reaches them: a kernel smaller than the stride).
    flat: Option<Flat>,
    /// The taps `ky·kw + kx` of the filter, in the order of `flat`'s (turned).
    taps: Vec<usize>,
    /// dx's first row and column of the phase; its pixels are `stride` apart.
    first: (usize, usize),
    rows: usize,
    cols: usize,
}

impl InputPhase {
    /// The `s²` phases of `g`'s input gradient, at a stride the same both ways; `None` when a
    /// phase would need dy cut rather than padded (then the per-tap loops run).
    fn all(g: &Conv2dGeom) -> Option<Vec<InputPhase>> {
        let s = g.stride_h;
        if s != g.stride_w || s < 2 {
            return None;
        }
        let mut phases = Vec::with_capacity(s * s);
        for ry in 0..s {
            for rx in 0..s {
                let (ys, a0, rows, j) = InputPhase::axis(ry, s, g.kh, g.pad_top, g.h)?;
                let (xs, b0, cols, i) = InputPhase::axis(rx, s, g.kw, g.pad_left, g.w)?;
                let fits = g.out_h <= a0 + rows && g.out_w <= b0 + cols;
                // (a phase no tap reaches has no correlation: its pixels are 0)
                let flat = if j > 0 && i > 0 {
                    Some(Flat {
                        in_h: g.out_h,
                        in_w: g.out_w,
                        pad_top: (j - 1).checked_sub(a0)?,
                        pad_left: (i - 1).checked_sub(b0)?,
                        kh: j,
                        kw: i,
                        stride: 1,
                        out_h: rows,
                        out_w: cols,
                    })
                } else {
                    None
                };
                if flat.is_some() && !fits {
                    return None;
                }
                let taps = (0..j * i)
                    .map(|t| (ry + s * (j - 1 - t / i)) * g.kw + rx + s * (i - 1 - t % i))
                    .collect();
                phases.push(InputPhase {
                    flat,
                    taps,
                    first: (ys, xs),
                    rows,
                    cols,
                });
            }
        }
        Some(phases)
    }

    /// Along one axis, for phase `r` of stride `s`, kernel size `k`, padding `pad` and input
    /// size `size`: (the first pixel, the first output index A, how many pixels, how many taps).
    fn axis(
        r: usize,
        s: usize,
        k: usize,
        pad: usize,
        size: usize,
    ) -> Option<(usize, usize, usize, usize)> {
        let a0 = pad.saturating_sub(r).div_ceil(s);
        let a1 = (size + pad).checked_sub(r)?.div_ceil(s);
        let first = (s * a0 + r).checked_sub(pad)?;
        let taps = k.saturating_sub(r).div_ceil(s);
        Some((first, a0, a1.saturating_sub(a0), taps))
    }
}

/// The strided input gradient as the sum of its phases (`InputPhase`): each plane of dy
/// correlated once per phase in a thread's buffers, and each phase's pixels written once into
/// dx, `stride` apart.
fn backward_input_by_phases(
    kernel: Kernel,
    dy: &[f32],
    w: &[f32],
    g: &Conv2dGeom,
    phases: &[InputPhase],
) -> Vec<f32> {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let s = g.stride_h;
    let offsets: Vec<Vec<usize>> = phases
        .iter()
        .map(|p| p.flat.map_or(Vec::new(), |f| f.offsets()))
        .collect();
    // per thread: each phase's padded dy and flat outputs, and room for a phase's taps
    let buffers = || {
        let flats: Vec<(Vec<f32>, Vec<f32>)> = phases
            .iter()
            .map(|p| {
                p.flat
                    .map_or((Vec::new(), Vec::new()), |f| flat_buffers(&f))
            })
            .collect();
        (flats, Vec::with_capacity(taps))
    };
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(in_plane)
            .zip(dy.par_chunks(out_plane))
            .enumerate()
            .with_min_len(super::planes_per_task(in_plane))
            .for_each_init(buffers, |(bufs, turned), (plane, (dxp, dyp))| {
                let filter = &w[plane % g.c_in * taps..][..taps];
                for ((phase, offsets), (padded, flat)) in phases.iter().zip(&offsets).zip(bufs) {
                    if phase.rows == 0 || phase.cols == 0 {
                        continue;
                    }
                    let (y0, x0) = phase.first;
                    let rows = dxp[y0 * g.w..].chunks_mut(s * g.w).take(phase.rows);
                    let Some(f) = &phase.flat else {
                        for row in rows {
                            scatter_every(s, None, &mut row[x0..], phase.cols);
                        }
                        continue;
                    };
                    f.pad(dyp, padded);
                    turned.clear();
                    turned.extend(phase.taps.iter().map(|&t| filter[t]));
                    correlate(kernel, padded, offsets, turned, 0.0, flat);
                    for (row, src) in rows.zip(flat.chunks(f.wq())) {
                        scatter_every(s, Some(&src[..phase.cols]), &mut row[x0..], phase.cols);
                    }
                }
            })
    };
    // SAFETY: every pixel of dx is in exactly one phase (its row and column mod the stride,
    // offset by the padding), and each phase writes all its `rows × cols` pixels.
    unsafe { written_by(dy.len() / out_plane * in_plane, fill) }
}

/// `dst[j·s]` = `src[j]` (or 0 without `src`) for `j < n`: one phase's row of pixels into dx.
fn scatter_every(s: usize, src: Option<&[f32]>, dst: &mut [MaybeUninit<f32>], n: usize) {
    let value = |j: usize| src.map_or(0.0, |src| src[j]);
    for (j, d) in dst.iter_mut().step_by(s).take(n).enumerate() {
        d.write(value(j));
    }
}

/// (`dw[C,1,KH,KW]` = Σ_{n,oy,ox} `dy[n,c,oy,ox]` · `x[n, c, oy·sh + ky − pt, ox·sw + kx − pl]`,
///  `db[C]` = Σ_{n,oy,ox} `dy[n,c,oy,ox]`), one channel per rayon task (so the sums run in
/// the same order on every machine). On the flat path each sum is kept in `LANES` lanes over
/// all the images and reduced once: reduced image by image, the ten chains of 32 additions
/// cost more than the products on MobileNet's 8×8 and 4×4 planes.
pub fn backward_weight(
    kernel: Kernel,
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeom,
) -> (Vec<f32>, Vec<f32>) {
    let (in_plane, out_plane, taps) = (g.h * g.w, g.out_h * g.out_w, g.kh * g.kw);
    let per_channel: Vec<(Vec<f32>, f32)> = (0..g.c_in)
        .into_par_iter()
        .map(|c| {
            let mut dw = vec![0f32; taps];
            let (mut dw_lanes, mut db_lanes) = (vec![[0f32; LANES]; taps], [0f32; LANES]);
            let flat = Flat::forward(g);
            let offsets = flat.map(|f| f.offsets());
            let (mut padded, mut dy_flat) =
                flat.map_or((Vec::new(), Vec::new()), |f| flat_buffers(&f));
            for n in 0..g.n {
                let plane = n * g.c_in + c;
                let xp = &x[plane * in_plane..(plane + 1) * in_plane];
                let dyp = &dy[plane * out_plane..(plane + 1) * out_plane];
                add_lanes(&mut db_lanes, dyp);
                if let (Some(f), Some(offsets)) = (&flat, &offsets) {
                    // dw[k] = Σ_i dy[i] · phases[i + offset_k], dy in rows of wq (0 past the edge)
                    f.pad(xp, &mut padded);
                    // each row's last (kw − 1)/s values stay 0 from `flat_buffers`
                    for (row, d) in dy_flat.chunks_mut(f.wq()).zip(dyp.chunks_exact(g.out_w)) {
                        row[..g.out_w].copy_from_slice(d);
                    }
                    dot_offsets(kernel, &dy_flat, &padded, offsets, &mut dw_lanes);
                    continue;
                }
                for_each_tap(g, |k, out, input| {
                    dw[k] += strided_dot(&dyp[out], &xp[input..], g.stride_w);
                });
            }
            for (dw, lanes) in dw.iter_mut().zip(&dw_lanes) {
                *dw += lanes.iter().sum::<f32>();
            }
            (dw, db_lanes.iter().sum())
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
    fn the_strided_input_gradient_by_phases_is_the_per_tap_one() {
        let (same, valid) = (Padding::Same, Padding::Valid);
        // (h, w, kernel, stride, padding, whether the phases apply): MobileNet's even planes,
        // odd sides, a kernel smaller than the stride (phases no tap reaches), stride 3
        let cases = [
            (8, 8, (3, 3), 2, same, true),
            (7, 6, (3, 3), 2, same, true),
            (7, 7, (3, 3), 2, valid, true),
            (2, 2, (3, 3), 2, same, true),
            (1, 1, (3, 3), 2, same, true),
            (9, 8, (1, 1), 2, valid, true),
            (11, 10, (5, 5), 3, same, true),
            (6, 7, (2, 4), 2, same, true),
        ];
        for (i, &(h, w, k, s, padding, phased)) in cases.iter().enumerate() {
            let g = Conv2dGeom::depthwise(2, 3, h, w, k, (s, s), padding).unwrap();
            let phases = InputPhase::all(&g);
            assert_eq!(phases.is_some(), phased, "case {i}");
            let dy = crate::tensor::Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, 5).data;
            let filters = crate::tensor::Tensor::rand_uniform([3 * k.0 * k.1], -1.0, 1.0, 6).data;
            let want = backward_input_per_tap(&dy, &filters, &g);
            for kernel in Kernel::available() {
                let got = backward_input(kernel, &dy, &filters, &g);
                assert_eq!(got.len(), want.len());
                for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "case {i} on {kernel:?}, dx[{j}]: {a} against {b}"
                    );
                }
            }
        }
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
            let want = naive_forward(&x, &wt, &b, &g);
            for kernel in Kernel::available() {
                let got = forward(kernel, &x, &wt, &b, &g, false);
                assert_eq!(got.len(), want.len());
                for (a, e) in got.iter().zip(&want) {
                    assert!((a - e).abs() < 1e-5, "{g:?} on {kernel:?}: {a} vs {e}");
                }
            }
        }
    }
}
