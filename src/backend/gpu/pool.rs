//! Max pooling and global average pooling on the GPU (`shaders/pool.wgsl`), as on the CPU
//! (`cpu/pool.rs`): one invocation per output value (forward) or input value (backward, which
//! gathers from the windows that cover it instead of scattering into them).

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};
use crate::backend::Pool2dGeom;

wgsl_params!(
    /// `pool.wgsl`'s parameter block: the window's planes (images × channels) and the geometry.
    Params {
        planes: u32, h: u32, w: u32, kh: u32,
        kw: u32, sh: u32, sw: u32, oh: u32,
        ow: u32, pad0: u32, pad1: u32, pad2: u32,
    }
);

fn params(g: &Pool2dGeom) -> Params {
    Params {
        planes: u(g.n * g.c),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        sh: u(g.stride_h),
        sw: u(g.stride_w),
        oh: u(g.out_h),
        ow: u(g.out_w),
        ..Params::default()
    }
}

/// (`y[N,C,Ho,Wo]`, the position in its plane of each maximum) of `x[N,C,H,W]`
pub(super) fn max_forward(gpu: &Gpu, x: &GpuTensor, g: &Pool2dGeom) -> (GpuTensor, GpuTensor) {
    let y = gpu.alloc(g.output_shape());
    let idx = gpu.alloc(g.output_shape());
    gpu.per_window(g.n, &[x], &[&y, &idx], |win, i, o| {
        let g = g.with_batch(win.count);
        let bind = [(1, i[0]), (2, o[1]), (3, o[0])];
        let len = g.n * g.c * g.out_h * g.out_w;
        gpu.ctx
            .launch("pool::forward", &params(&g), &bind, grid_1d(len));
    });
    (y, idx)
}

/// `dx[N,C,H,W]`: each dy to where its maximum was.
pub(super) fn max_backward(
    gpu: &Gpu,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    g: &Pool2dGeom,
) -> GpuTensor {
    let dx = gpu.alloc(g.input_shape());
    gpu.per_window(g.n, &[dy, argmax], &[&dx], |win, i, o| {
        let g = g.with_batch(win.count);
        let bind = [(1, i[0]), (2, i[1]), (3, o[0])];
        let len = g.n * g.c * g.h * g.w;
        gpu.ctx
            .launch("pool::backward", &params(&g), &bind, grid_1d(len));
    });
    dx
}

/// The window of a global average over a whole `h × w` plane.
fn whole_plane(images: usize, c: usize, h: usize, w: usize) -> Params {
    params(&Pool2dGeom::new(images, c, h, w, (h, w), (h, w)).expect("the whole plane"))
}

/// `y[N,C]` = mean over H and W of `x[N,C,H,W]`
pub(super) fn global_avg_forward(gpu: &Gpu, x: &GpuTensor) -> GpuTensor {
    let (n, c, h, w) = x.shape.nchw();
    let y = gpu.alloc([n, c]);
    gpu.per_window(n, &[x], &[&y], |win, i, o| {
        let p = whole_plane(win.count, c, h, w);
        let bind = [(1, i[0]), (3, o[0])];
        gpu.ctx.launch(
            "pool::global_avg_forward",
            &p,
            &bind,
            grid_1d(win.count * c),
        );
    });
    y
}

/// `dx[N,C,H,W]` = `dy[N,C]` / (H·W) at every position of the plane
pub(super) fn global_avg_backward(gpu: &Gpu, dy: &GpuTensor, (h, w): (usize, usize)) -> GpuTensor {
    let (n, c) = (dy.shape.dims()[0], dy.shape.dims()[1]);
    let dx = gpu.alloc([n, c, h, w]);
    gpu.per_window(n, &[dy], &[&dx], |win, i, o| {
        let p = whole_plane(win.count, c, h, w);
        let bind = [(1, i[0]), (3, o[0])];
        let len = win.count * c * h * w;
        gpu.ctx
            .launch("pool::global_avg_backward", &p, &bind, grid_1d(len));
    });
    dx
}
