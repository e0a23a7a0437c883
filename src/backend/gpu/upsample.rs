//! Nearest-neighbour upsampling on the GPU (`shaders/upsample.wgsl`), as on the CPU
//! (`cpu/upsample.rs`): one invocation per output value forward, per input value backward.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};

wgsl_params!(
    /// `upsample.wgsl`'s parameter block: the window's planes (images × channels), the input's
    /// size and the factor.
    Params {
        planes: u32, h: u32, w: u32, s: u32,
    }
);

/// `y[N,C,s·H,s·W]`: each value of `x[N,C,H,W]` repeated over an `s × s` block.
pub(super) fn forward(gpu: &Gpu, x: &GpuTensor, s: usize) -> GpuTensor {
    let (n, c, h, w) = x.shape.nchw();
    let y = gpu.alloc([n, c, h * s, w * s]);
    gpu.per_window(n, &[x], &[&y], |win, i, o| {
        let p = params(win.count * c, (h, w), s);
        let len = win.count * c * h * w * s * s;
        gpu.ctx.launch(
            "upsample::forward",
            &p,
            &[(1, i[0]), (2, o[0])],
            grid_1d(len),
        );
    });
    y
}

/// `dx[N,C,H,W]`: the sum of `dy[N,C,s·H,s·W]` over each value's block.
pub(super) fn backward(gpu: &Gpu, dy: &GpuTensor, s: usize) -> GpuTensor {
    let (n, c, oh, ow) = dy.shape.nchw();
    let (h, w) = (oh / s, ow / s);
    let dx = gpu.alloc([n, c, h, w]);
    gpu.per_window(n, &[dy], &[&dx], |win, i, o| {
        let p = params(win.count * c, (h, w), s);
        let len = win.count * c * h * w;
        gpu.ctx.launch(
            "upsample::backward",
            &p,
            &[(1, i[0]), (2, o[0])],
            grid_1d(len),
        );
    });
    dx
}

fn params(planes: usize, (h, w): (usize, usize), s: usize) -> Params {
    Params {
        planes: u(planes),
        h: u(h),
        w: u(w),
        s: u(s),
    }
}
