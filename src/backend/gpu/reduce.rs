//! Sums on the GPU (`shaders/reduce.wgsl`): bias gradients (per channel), the partial weight
//! gradients of convolutions, and the squared norms of gradient health.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};

wgsl_params!(
    /// `reduce.wgsl`'s parameter block; each kernel reads the fields it needs.
    Params {
        n: u32,
        c: u32,
        hw: u32,
        accumulate: u32,
    }
);

/// `dst[c]` (+)= Σ over n, q of `src[n, c, q]` for an `[N, C, Q]` view.
pub(super) fn channel_sum(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    (n, c, q): (usize, usize, usize),
    accumulate: bool,
) {
    let p = Params {
        n: u(n),
        c: u(c),
        hw: u(q),
        accumulate: u32::from(accumulate),
    };
    gpu.ctx.launch(
        "reduce::channel_sum",
        &p,
        &[(1, src), (2, dst)],
        (u(c), 1, 1),
    );
}

/// `dst[j]` (+)= Σ over g of `src[g, j]` for a `[G, J]` view.
pub(super) fn sum_leading(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    (g, j): (usize, usize),
    accumulate: bool,
) {
    let p = Params {
        n: u(g),
        c: u(j),
        hw: 0,
        accumulate: u32::from(accumulate),
    };
    gpu.ctx
        .launch("reduce::sum_leading", &p, &[(1, src), (2, dst)], grid_1d(j));
}

/// Σ t² of each tensor, read back together (NaN or ∞ if a value is).
pub(super) fn squared_norms(gpu: &Gpu, ts: &[&GpuTensor]) -> Vec<f32> {
    let sums = gpu.alloc([ts.len().max(1)]);
    for (i, t) in ts.iter().enumerate() {
        // one workgroup per tensor, writing its sum to sums[c]
        let p = Params {
            n: u(t.len()),
            c: u(i),
            ..Params::default()
        };
        let bind = [(1, gpu.whole(t)), (2, sums.buf())];
        gpu.ctx.launch("reduce::sum_squares", &p, &bind, (1, 1, 1));
    }
    let mut out = crate::backend::Backend::download(gpu, &sums).data;
    out.truncate(ts.len());
    out
}
