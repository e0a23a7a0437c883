//! The optimisers' in-place updates on the GPU (`shaders/optim.wgsl`), as on the CPU
//! (`cpu/optim.rs`): one invocation per parameter.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};
use crate::backend::{AdamStep, SgdStep};

wgsl_params!(
    /// `optim.wgsl`'s parameter block (SGD reads its momentum from `beta1`).
    Params {
        n: u32,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        bias_correction1: f32,
        bias_correction2: f32,
    }
);

/// m = β₁m + (1−β₁)g;  v = β₂v + (1−β₂)g²;  p −= lr·((m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε) + wd·p)
pub(super) fn adam(
    gpu: &Gpu,
    p: &GpuTensor,
    g: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    h: &AdamStep,
) {
    let params = Params {
        n: u(p.len()),
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        bias_correction1: 1.0 - h.beta1.powi(h.t as i32),
        bias_correction2: 1.0 - h.beta2.powi(h.t as i32),
    };
    let bind = [
        (1, gpu.whole(g)),
        (2, gpu.whole(p)),
        (3, gpu.whole(m)),
        (4, gpu.whole(v)),
    ];
    gpu.ctx
        .launch("optim::adam", &params, &bind, grid_1d(p.len()));
}

/// v = μv + g + wd·p;  p −= lr·v
pub(super) fn sgd(gpu: &Gpu, p: &GpuTensor, g: &GpuTensor, velocity: &GpuTensor, h: &SgdStep) {
    let params = Params {
        n: u(p.len()),
        lr: h.lr,
        beta1: h.momentum,
        weight_decay: h.weight_decay,
        ..Params::default()
    };
    let bind = [
        (1, gpu.whole(g)),
        (2, gpu.whole(p)),
        (3, gpu.whole(velocity)),
    ];
    gpu.ctx
        .launch("optim::sgd", &params, &bind, grid_1d(p.len()));
}
