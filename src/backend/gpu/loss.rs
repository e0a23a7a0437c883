//! The fused sigmoid-BCE loss on the GPU (`shaders/loss.wgsl`), as on the CPU
//! (`cpu/loss.rs`): one workgroup, a tree reduction of the per-sample losses.

use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor};

wgsl_params!(
    /// `loss.wgsl`'s parameter block.
    Params {
        n: u32,
        pos_weight: f32,
        pad0: u32,
        pad1: u32,
    }
);

/// (`loss[1]`, `dlogits[N,1]`) of the mean BCE of sigmoid(`logits[N,1]`) against `targets[N]`.
pub(super) fn bce_with_logits(
    gpu: &Gpu,
    logits: &GpuTensor,
    targets: &GpuTensor,
    pos_weight: f32,
) -> (GpuTensor, GpuTensor) {
    let grad = gpu.alloc(logits.shape.clone());
    let loss = gpu.alloc([1]);
    let p = Params {
        n: u(logits.len()),
        pos_weight,
        ..Params::default()
    };
    let bind = [
        (1, gpu.whole(logits)),
        (2, gpu.whole(targets)),
        (3, grad.buf()),
        (4, loss.buf()),
    ];
    gpu.ctx
        .launch("loss::bce_with_logits", &p, &bind, (1, 1, 1));
    (loss, grad)
}
