//! Nearest-neighbour upsampling on the CPU, over (image, channel) planes (a few per rayon task
//! when they are small): the top-down path of a feature pyramid.

use rayon::prelude::*;

/// `y[N,C,s·H,s·W]`: each value of `x[N,C,H,W]` repeated over an `s × s` block.
pub fn forward(x: &[f32], (h, w): (usize, usize), s: usize) -> Vec<f32> {
    let (in_plane, out_plane) = (h * w, h * w * s * s);
    // SAFETY: every plane of y is filled (in cache, in parallel, where `vec!` zeroed the whole
    // output on one thread) before it is written.
    unsafe {
        super::written_by(x.len() * s * s, |y| {
            y.par_chunks_mut(out_plane)
                .zip(x.par_chunks(in_plane))
                .with_min_len(super::planes_per_task(out_plane))
                .for_each(|(yp, xp)| upsample_plane(xp, w, s, super::filled(yp, 0.0)))
        })
    }
}

/// One plane `xp[H,W]` of [`forward`] into `yp[s·H,s·W]`.
fn upsample_plane(xp: &[f32], w: usize, s: usize, yp: &mut [f32]) {
    for (row, out_rows) in xp.chunks_exact(w).zip(yp.chunks_exact_mut(w * s * s)) {
        let (first, rest) = out_rows.split_at_mut(w * s);
        for (v, block) in row.iter().zip(first.chunks_exact_mut(s)) {
            block.fill(*v);
        }
        // the other s - 1 rows of the block are copies of the first
        for copy in rest.chunks_exact_mut(w * s) {
            copy.copy_from_slice(first);
        }
    }
}

/// `dx[N,C,H,W]`: each value fed the `s × s` block it was repeated over, so its gradient is the
/// block's sum of `dy[N,C,s·H,s·W]`.
pub fn backward(dy: &[f32], (h, w): (usize, usize), s: usize) -> Vec<f32> {
    let (in_plane, out_plane) = (h * w, h * w * s * s);
    // SAFETY: every plane of dx is filled before it is summed into.
    unsafe {
        super::written_by(dy.len() / (s * s), |dx| {
            dx.par_chunks_mut(in_plane)
                .zip(dy.par_chunks(out_plane))
                .with_min_len(super::planes_per_task(out_plane))
                .for_each(|(dxp, dyp)| {
                    let dxp = super::filled(dxp, 0.0);
                    for (row, out_rows) in dxp.chunks_exact_mut(w).zip(dyp.chunks_exact(w * s * s))
                    {
                        for out_row in out_rows.chunks_exact(w * s) {
                            for (d, block) in row.iter_mut().zip(out_row.chunks_exact(s)) {
                                *d += block.iter().sum::<f32>();
                            }
                        }
                    }
                })
        })
    }
}
