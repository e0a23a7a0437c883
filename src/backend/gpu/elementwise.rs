//! Element-wise kernels on the GPU (`shaders/elementwise.wgsl`), as on the CPU
//! (`cpu/elementwise.rs`): one invocation per value, over windows of images where the tensor is
//! a batch.

use super::context::{grid_1d, Binding};
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};
use crate::backend::hash;

wgsl_params!(
    /// `elementwise.wgsl`'s parameter block; each kernel reads the fields it needs.
    Params {
        n: u32,
        c: u32,
        hw: u32,
        key: u32,
        f0: f32,
        f1: f32,
        offset: u32,
        relu: u32,
    }
);

fn launch(gpu: &Gpu, entry: &str, p: Params, bind: &[Binding]) {
    let groups = grid_1d(p.n as usize);
    gpu.ctx
        .launch(&format!("elementwise::{entry}"), &p, bind, groups);
}

/// `entry` over every value of a batch tensor, window by window: `ins` bound at 1 and 2, the
/// output, of the first input's shape, at 3.
fn map(gpu: &Gpu, entry: &str, ins: &[&GpuTensor], p: Params) -> GpuTensor {
    let x = ins[0];
    let y = gpu.alloc(x.shape.clone());
    let images = x.shape.dims()[0];
    let per_image = x.len() / images.max(1);
    gpu.per_window(images, ins, &[&y], |win, i, o| {
        let bind: Vec<Binding> = (1..).zip(i.iter().copied()).chain([(3, o[0])]).collect();
        let n = u(win.count * per_image);
        // the window's first value in the whole tensor (the dropout mask is indexed by it)
        let offset = u(win.first * per_image);
        launch(gpu, entry, Params { n, offset, ..p }, &bind);
    });
    y
}

/// y = a + b
pub(super) fn add(gpu: &Gpu, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
    assert_eq!(a.shape, b.shape, "add of two shapes");
    map(gpu, "add", &[a, b], Params::default())
}

pub(super) fn copy(gpu: &Gpu, x: &GpuTensor) -> GpuTensor {
    map(gpu, "copy", &[x], Params::default())
}

/// y = max(x, 0)
pub(super) fn relu_forward(gpu: &Gpu, x: &GpuTensor) -> GpuTensor {
    map(gpu, "relu_forward", &[x], Params::default())
}

/// dx = dy where x > 0, else 0
pub(super) fn relu_backward(gpu: &Gpu, x: &GpuTensor, dy: &GpuTensor) -> GpuTensor {
    map(gpu, "relu_backward", &[x, dy], Params::default())
}

/// y = x · keep / (1 − p), keep = `hash::uniform(key(seed), index) >= p` for the value's index
/// in the whole tensor, whatever the window.
pub(super) fn dropout(gpu: &Gpu, x: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
    let params = Params {
        key: hash::key(seed),
        f0: p,
        ..Params::default()
    };
    map(gpu, "dropout", &[x], params)
}

/// `y[n, c, q]` += `b[c]` over the first `n` values of a `[·, channels, plane]` tensor, then
/// `y` = max(0, `y`) when `relu` (a ReLU fused into the bias's pass).
pub(super) fn add_channel_bias(
    gpu: &Gpu,
    n: usize,
    (channels, plane): (usize, usize),
    b: &wgpu::Buffer,
    y: &wgpu::Buffer,
    relu: bool,
) {
    let p = Params {
        n: u(n),
        c: u(channels),
        hw: u(plane),
        relu: u32::from(relu),
        ..Params::default()
    };
    launch(gpu, "add_channel_bias", p, &[(1, b), (3, y)]);
}

/// running = (1 − momentum)·running + momentum·scale·batch
pub(super) fn ema(gpu: &Gpu, running: &GpuTensor, batch: &GpuTensor, momentum: f32, scale: f32) {
    let p = Params {
        n: u(running.len()),
        f0: momentum,
        f1: scale,
        ..Params::default()
    };
    let bind = [(1, gpu.whole(batch)), (3, gpu.whole(running))];
    launch(gpu, "ema", p, &bind);
}

/// t *= s, in place
pub(super) fn scale(gpu: &Gpu, t: &GpuTensor, s: f32) {
    let p = Params {
        n: u(t.len()),
        f0: s,
        ..Params::default()
    };
    launch(gpu, "scale", p, &[(3, gpu.whole(t))]);
}
