//! Nearest-neighbour upsampling on the CPU, over (image, channel) planes (a few per rayon task
//! when they are small): the top-down path of a feature pyramid.

use rayon::prelude::*;

/// `y[N,C,s·H,s·W]`: each value of `x[N,C,H,W]` repeated over an `s × s` block.
pub fn forward(x: &[f32], (h, w): (usize, usize), s: usize) -> Vec<f32> {
    let (in_plane, out_plane) = (h * w, h * w * s * s);
    let mut y = vec![0f32; x.len() * s * s];
    y.par_chunks_mut(out_plane)
        .zip(x.par_chunks(in_plane))
        .with_min_len(super::planes_per_task(out_plane))
        .for_each(|(yp, xp)| {
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
        });
    y
}

/// `dx[N,C,H,W]`: each value fed the `s × s` block it was repeated over, so its gradient is the
/// block's sum of `dy[N,C,s·H,s·W]`.
pub fn backward(dy: &[f32], (h, w): (usize, usize), s: usize) -> Vec<f32> {
    let (in_plane, out_plane) = (h * w, h * w * s * s);
    let mut dx = vec![0f32; dy.len() / (s * s)];
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane))
        .with_min_len(super::planes_per_task(out_plane))
        .for_each(|(dxp, dyp)| {
            for (row, out_rows) in dxp.chunks_exact_mut(w).zip(dyp.chunks_exact(w * s * s)) {
                row.fill(0.0);
                for out_row in out_rows.chunks_exact(w * s) {
                    for (d, block) in row.iter_mut().zip(out_row.chunks_exact(s)) {
                        *d += block.iter().sum::<f32>();
                    }
                }
            }
        });
    dx
}
