//! Batch normalisation on the GPU (`shaders/batchnorm.wgsl`), as on the CPU
//! (`cpu/batchnorm.rs`): per-channel statistics in two passes over the batch (sum, then squared
//! deviations), one workgroup per channel, adding up across windows of images.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{pool, Gpu, GpuTensor, Window};
use crate::backend::{BatchNormStats, Epilogue};

wgsl_params!(
    /// `batchnorm.wgsl`'s parameter block.
    Params {
        n: u32,
        c: u32,
        hw: u32,
        flags: u32,
        eps: f32,
        count: u32,
        pad0: u32,
        pad1: u32,
    }
);

/// The window adds to what earlier windows summed (else it starts the sums).
const ACCUMULATE: u32 = 1;
/// The window is the batch's last: the sums are final (means are divided out).
const FINISH: u32 = 2;
/// A ReLU follows: `normalize` applies it, the backward pass applies its mask to dy.
const RELU: u32 = 4;
/// The scale binding holds 1/sqrt(var + eps) (training), not the variance.
const INV_STD: u32 = 8;

/// The parameters of a window; `flags` adds RELU or INV_STD.
fn params(x: &GpuTensor, window: Window, eps: f32, flags: u32) -> Params {
    let (n, c, h, w) = x.shape.nchw();
    let accumulate = if window.is_first() { 0 } else { ACCUMULATE };
    let finish = if window.last { FINISH } else { 0 };
    Params {
        n: u(window.count),
        c: u(c),
        hw: u(h * w),
        flags: accumulate | finish | flags,
        eps,
        count: u(n * h * w),
        ..Params::default()
    }
}

/// The flags of `then`'s ReLU.
fn relu_flag(then: &Epilogue) -> u32 {
    if then.relu {
        RELU
    } else {
        0
    }
}

/// (y through `then`, batch statistics, the pooling's positions) with the batch's own mean and
/// variance; a pooling runs on the (ReLU's) output, which is dropped after.
pub(super) fn forward_train(
    gpu: &Gpu,
    x: &GpuTensor,
    (gamma, beta): (&GpuTensor, &GpuTensor),
    eps: f32,
    then: &Epilogue,
) -> (GpuTensor, BatchNormStats<GpuTensor>, Option<GpuTensor>) {
    let (n, c, _, _) = x.shape.nchw();
    // packed = [mean | var | inv_std], built in two passes over the batch
    let packed = gpu.alloc([3 * c]);
    for pass in ["batchnorm::stats_sum", "batchnorm::stats_var"] {
        gpu.per_window(n, &[x], &[], |win, i, _| {
            let bind = [(1, i[0]), (8, packed.buf())];
            gpu.ctx
                .launch(pass, &params(x, win, eps, 0), &bind, (u(c), 1, 1));
        });
    }
    let part = |i: u64| {
        let t = gpu.alloc([c]);
        gpu.ctx
            .copy(packed.buf(), i * 4 * c as u64, t.buf(), 0, 4 * c as u64);
        t
    };
    let stats = BatchNormStats {
        mean: part(0),
        var: part(1),
        inv_std: part(2),
    };
    let flags = INV_STD | relu_flag(then);
    let y = normalize(
        gpu,
        x,
        (gamma, beta),
        (&stats.mean, &stats.inv_std),
        (eps, flags),
    );
    match &then.pool {
        Some(g) => {
            let (pooled, argmax) = pool::max_forward(gpu, &y, g);
            (pooled, stats, Some(argmax))
        }
        None => (y, stats, None),
    }
}

/// y = gamma (x - mean) / sqrt(var + eps) + beta with the running statistics.
pub(super) fn forward_infer(
    gpu: &Gpu,
    x: &GpuTensor,
    (gamma, beta): (&GpuTensor, &GpuTensor),
    (mean, var): (&GpuTensor, &GpuTensor),
    eps: f32,
) -> GpuTensor {
    normalize(gpu, x, (gamma, beta), (mean, var), (eps, 0))
}

/// `batchnorm::normalize` over the batch: `scale` is the variance, or 1/sqrt(var + eps) with
/// INV_STD in `flags`.
fn normalize(
    gpu: &Gpu,
    x: &GpuTensor,
    (gamma, beta): (&GpuTensor, &GpuTensor),
    (mean, scale): (&GpuTensor, &GpuTensor),
    (eps, flags): (f32, u32),
) -> GpuTensor {
    let (n, c, h, w) = x.shape.nchw();
    let y = gpu.alloc(x.shape.clone());
    let [gamma, beta, mean, var] = [gamma, beta, mean, scale].map(|t| gpu.whole(t));
    gpu.per_window(n, &[x], &[&y], |win, i, o| {
        let bind = [
            (1, i[0]),
            (3, gamma),
            (4, beta),
            (5, mean),
            (6, var),
            (7, o[0]),
        ];
        let len = win.count * c * h * w;
        let p = params(x, win, eps, flags);
        gpu.ctx
            .launch("batchnorm::normalize", &p, &bind, grid_1d(len));
    });
    y
}

/// (dx, dgamma, dbeta): first Σ dy and Σ dy·x̂ per channel over the batch, then dx; `dy` is
/// the gradient at `then`'s output, taken back through the pooling first (the ReLU's mask is
/// applied inside the two passes).
pub(super) fn backward(
    gpu: &Gpu,
    x: &GpuTensor,
    (dy, argmax): (&GpuTensor, Option<&GpuTensor>),
    (gamma, beta): (&GpuTensor, &GpuTensor),
    stats: &BatchNormStats<GpuTensor>,
    then: &Epilogue,
) -> (GpuTensor, GpuTensor, GpuTensor) {
    let unpooled = match (&then.pool, argmax) {
        (Some(g), Some(argmax)) => Some(pool::max_backward(gpu, dy, argmax, g)),
        (None, None) => None,
        _ => panic!("max pooling's positions come with its geometry"),
    };
    let dy = unpooled.as_ref().unwrap_or(dy);
    let flags = INV_STD | relu_flag(then);
    let (n, c, h, w) = x.shape.nchw();
    let sums = gpu.alloc([2 * c]);
    let (mean, inv_std, gamma, beta) = (
        gpu.whole(&stats.mean),
        gpu.whole(&stats.inv_std),
        gpu.whole(gamma),
        gpu.whole(beta),
    );
    gpu.per_window(n, &[x, dy], &[], |win, i, _| {
        let bind = [
            (1, i[0]),
            (2, i[1]),
            (3, gamma),
            (4, beta),
            (5, mean),
            (6, inv_std),
            (8, sums.buf()),
        ];
        let p = params(x, win, 0.0, flags);
        gpu.ctx
            .launch("batchnorm::backward_reduce", &p, &bind, (u(c), 1, 1));
    });
    let dx = gpu.alloc(x.shape.clone());
    gpu.per_window(n, &[x, dy], &[&dx], |win, i, o| {
        let bind = [
            (1, i[0]),
            (2, i[1]),
            (3, gamma),
            (4, beta),
            (5, mean),
            (6, inv_std),
            (7, o[0]),
            (8, sums.buf()),
        ];
        let len = win.count * c * h * w;
        let p = params(x, win, 0.0, flags);
        gpu.ctx
            .launch("batchnorm::backward_dx", &p, &bind, grid_1d(len));
    });
    let (dgamma, dbeta) = (gpu.alloc([c]), gpu.alloc([c]));
    gpu.ctx.copy(sums.buf(), 0, dbeta.buf(), 0, 4 * c as u64);
    gpu.ctx
        .copy(sums.buf(), 4 * c as u64, dgamma.buf(), 0, 4 * c as u64);
    (dx, dgamma, dbeta)
}
