//! Depthwise convolution on the GPU (`shaders/depthwise.wgsl`), as on the CPU
//! (`cpu/depthwise.rs`): direct loops, one invocation per output (forward), per input (input
//! gradient), and per (weight, run of output pixels) for the weight gradient's partial sums.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{reduce, Gpu, GpuTensor};
use crate::backend::Conv2dGeom;

wgsl_params!(
    /// `depthwise.wgsl`'s parameter block: the geometry, the window's images, and the output
    /// pixels per partial sum of the weight gradient.
    Params {
        c: u32, h: u32, w: u32, kh: u32,
        kw: u32, sh: u32, sw: u32, pt: u32,
        pl: u32, oh: u32, ow: u32, images: u32,
        run: u32, pad0: u32, pad1: u32, pad2: u32,
    }
);

/// Output pixels summed by one invocation of the weight gradient, at least.
const RUN: usize = 256;

fn params(g: &Conv2dGeom, images: usize, run: usize) -> Params {
    Params {
        c: u(g.c_in),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        sh: u(g.stride_h),
        sw: u(g.stride_w),
        pt: u(g.pad_top),
        pl: u(g.pad_left),
        oh: u(g.out_h),
        ow: u(g.out_w),
        images: u(images),
        run: u(run),
        ..Params::default()
    }
}

/// `y[N,C,Ho,Wo]` = each channel of `x[N,C,H,W]` convolved with its filter of `w[C,1,KH,KW]`, + `b[C]`
pub(super) fn forward(
    gpu: &Gpu,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeom,
) -> GpuTensor {
    let y = gpu.alloc(g.output_shape());
    let (w, b) = (gpu.whole(w), gpu.whole(b));
    gpu.per_window(g.n, &[x], &[&y], |win, i, o| {
        let len = win.count * g.c_in * g.out_h * g.out_w;
        let bind = [(1, i[0]), (2, w), (3, b), (4, o[0])];
        let p = params(g, win.count, 0);
        gpu.ctx
            .launch("depthwise::forward", &p, &bind, grid_1d(len));
    });
    y
}

/// `dx[N,C,H,W]` from `dy[N,C,Ho,Wo]` and `w[C,1,KH,KW]`
pub(super) fn backward_input(
    gpu: &Gpu,
    dy: &GpuTensor,
    w: &GpuTensor,
    g: &Conv2dGeom,
) -> GpuTensor {
    let dx = gpu.alloc(g.input_shape());
    let w = gpu.whole(w);
    gpu.per_window(g.n, &[dy], &[&dx], |win, i, o| {
        let len = win.count * g.c_in * g.h * g.w;
        let bind = [(1, i[0]), (2, w), (4, o[0])];
        let p = params(g, win.count, 0);
        gpu.ctx
            .launch("depthwise::backward_input", &p, &bind, grid_1d(len));
    });
    dx
}

/// (`dw[C,1,KH,KW]`, `db[C]`) from `x[N,C,H,W]` and `dy[N,C,Ho,Wo]`: partial sums of dy·x per
/// weight over runs of output pixels, then added up.
pub(super) fn backward_weight(
    gpu: &Gpu,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeom,
) -> (GpuTensor, GpuTensor) {
    let dw = gpu.alloc(g.depthwise_weight_shape());
    let db = gpu.alloc([g.c_in]);
    let (q, weights) = (g.out_h * g.out_w, g.c_in * g.kh * g.kw);
    // output pixels per partial sum: RUN, or more where the partial sums of all weights would
    // not fit one binding
    let run = RUN.max((g.n * q).div_ceil((gpu.window / weights).max(1)));
    let runs = |images: usize| (images * q).div_ceil(run);
    let partials = gpu.alloc([runs(g.n) * weights]);
    let partials = gpu.whole(&partials);
    gpu.per_window(g.n, &[x, dy], &[], |win, i, _| {
        let runs = runs(win.count);
        let bind = [(1, i[0]), (4, partials), (5, i[1])];
        let p = params(g, win.count, run);
        gpu.ctx.launch(
            "depthwise::backward_weight",
            &p,
            &bind,
            grid_1d(runs * weights),
        );
        reduce::sum_leading(gpu, partials, dw.buf(), (runs, weights), !win.is_first());
        reduce::channel_sum(gpu, i[1], db.buf(), (win.count, g.c_in, q), !win.is_first());
    });
    (dw, db)
}
