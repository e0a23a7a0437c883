//! Max pooling and global average pooling on the CPU, over (image, channel) planes (a few per
//! rayon task when they are small).

use crate::backend::Pool2dGeom;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// (`y[N,C,Ho,Wo]`, argmax) where argmax holds, for each output, the index `iy·W + ix` of its
/// maximum within the input plane (the first one on ties, scanning rows then columns).
pub fn forward(x: &[f32], g: &Pool2dGeom) -> (Vec<f32>, Vec<u32>) {
    let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
    // SAFETY: every plane of y and of idx is filled before it is pooled into.
    unsafe {
        super::both_written_by(g.n * g.c * out_plane, |y, idx| {
            y.par_chunks_mut(out_plane)
                .zip(idx.par_chunks_mut(out_plane))
                .zip(x.par_chunks(in_plane))
                .for_each(|((yp, ip), xp)| {
                    forward_plane(xp, g, super::filled(yp, 0.0), super::filled(ip, 0))
                })
        })
    }
}

/// [`forward`] of one plane `xp[H,W]` into `yp[Ho,Wo]` and its positions `ip[Ho,Wo]`.
pub(super) fn forward_plane(xp: &[f32], g: &Pool2dGeom, yp: &mut [f32], ip: &mut [u32]) {
    if (g.kh, g.kw, g.stride_h, g.stride_w) == (2, 2, 2, 2) {
        return halving_plane(xp, g, yp, ip);
    }
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let corner = oy * g.stride_h * g.w + ox * g.stride_w;
            let (mut best, mut at) = (xp[corner], corner);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let i = corner + ky * g.w + kx;
                    if xp[i] > best {
                        (best, at) = (xp[i], i);
                    }
                }
            }
            yp[oy * g.out_w + ox] = best;
            ip[oy * g.out_w + ox] = at as u32;
        }
    }
}

/// [`forward`] of one plane for the common 2×2 window at stride 2: the four candidates compared
/// in scan order with selects (the first maximum wins ties), a loop the compiler vectorises.
fn halving_plane(xp: &[f32], g: &Pool2dGeom, yp: &mut [f32], ip: &mut [u32]) {
    let rows = yp
        .chunks_exact_mut(g.out_w)
        .zip(ip.chunks_exact_mut(g.out_w));
    for (oy, (yrow, irow)) in rows.enumerate() {
        let top = 2 * oy * g.w;
        let (r0, r1) = (&xp[top..top + g.w], &xp[top + g.w..top + 2 * g.w]);
        let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (ox, ((y, i), (a, b))) in yrow.iter_mut().zip(irow.iter_mut()).zip(pairs).enumerate() {
            let corner = (top + 2 * ox) as u32;
            let (mut best, mut at) = (a[0], corner);
            for (v, offset) in [(a[1], 1), (b[0], g.w as u32), (b[1], g.w as u32 + 1)] {
                let wins = v > best;
                best = if wins { v } else { best };
                at = if wins { corner + offset } else { at };
            }
            *y = best;
            *i = at;
        }
    }
}

/// `y[N,C,Ho,Wo]` of [`forward`] without the argmax: one read of x and one write of y, and for
/// the common 2×2 window at stride 2 a loop the compiler vectorises.
pub fn forward_infer(x: &[f32], g: &Pool2dGeom) -> Vec<f32> {
    let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
    // SAFETY: `infer_plane` writes every output pixel of each plane.
    unsafe {
        super::written_by(g.n * g.c * out_plane, |y| {
            y.par_chunks_mut(out_plane)
                .zip(x.par_chunks(in_plane))
                .with_min_len(super::planes_per_task(in_plane))
                .for_each(|(yp, xp)| infer_plane(xp, g, yp))
        })
    }
}

/// [`forward_infer`] of one image `x[C,H,W]` into `y[C,Ho,Wo]`, on this thread.
pub fn forward_infer_image(x: &[f32], g: &Pool2dGeom, y: &mut [MaybeUninit<f32>]) {
    let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
    for (yp, xp) in y.chunks_exact_mut(out_plane).zip(x.chunks_exact(in_plane)) {
        infer_plane(xp, g, yp);
    }
}

/// One plane `xp[H,W]` pooled into `yp[Ho,Wo]`, every pixel of which it writes.
fn infer_plane(xp: &[f32], g: &Pool2dGeom, yp: &mut [MaybeUninit<f32>]) {
    let halving = (g.kh, g.kw, g.stride_h, g.stride_w) == (2, 2, 2, 2);
    for (oy, yrow) in yp.chunks_exact_mut(g.out_w).enumerate() {
        let top = oy * g.stride_h * g.w;
        if halving {
            let (r0, r1) = (&xp[top..top + g.w], &xp[top + g.w..top + 2 * g.w]);
            let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
            // floor(W / 2) pairs: one for each of the out_w = floor(W / 2) pixels
            for (o, (a, b)) in yrow.iter_mut().zip(pairs) {
                o.write(a[0].max(a[1]).max(b[0].max(b[1])));
            }
            continue;
        }
        for (ox, o) in yrow.iter_mut().enumerate() {
            let corner = top + ox * g.stride_w;
            o.write(
                (0..g.kh)
                    .flat_map(|ky| &xp[corner + ky * g.w..][..g.kw])
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            );
        }
    }
}

/// `dx[N,C,H,W]`: each dy adds into the input position its maximum came from
/// (windows that overlap, when stride < size, may send several into one position).
pub fn backward(dy: &[f32], argmax: &[u32], g: &Pool2dGeom) -> Vec<f32> {
    let (in_plane, out_plane) = (g.h * g.w, g.out_h * g.out_w);
    // SAFETY: every plane of dx is filled before it is added into.
    unsafe {
        super::written_by(g.n * g.c * in_plane, |dx| {
            dx.par_chunks_mut(in_plane)
                .zip(dy.par_chunks(out_plane).zip(argmax.par_chunks(out_plane)))
                .for_each(|(dxp, (dyp, ip))| {
                    let dxp = super::filled(dxp, 0.0);
                    for (&d, &i) in dyp.iter().zip(ip) {
                        dxp[i as usize] += d;
                    }
                })
        })
    }
}

/// `y[N,C]` = mean over its `plane` values of each plane of `x[N,C,H,W]`.
pub fn global_avg_forward(x: &[f32], plane: usize) -> Vec<f32> {
    x.par_chunks(plane)
        .with_min_len(super::planes_per_task(plane))
        .map(|p| super::conv::sum(p) / plane as f32)
        .collect()
}

/// `dx[N,C,H,W]`: every value of a plane took 1/(H·W) of the mean, so each gets `dy[n,c]`/(H·W).
pub fn global_avg_backward(dy: &[f32], plane: usize) -> Vec<f32> {
    // SAFETY: every plane of dx is filled.
    unsafe {
        super::written_by(dy.len() * plane, |dx| {
            dx.par_chunks_mut(plane)
                .zip(dy.par_iter())
                .with_min_len(super::planes_per_task(plane))
                .for_each(|(p, d)| _ = super::filled(p, d / plane as f32))
        })
    }
}
