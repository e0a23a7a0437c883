//! Batch normalisation on the GPU (`shaders/batchnorm.wgsl`), as on the CPU
//! (`cpu/batchnorm.rs`): per-channel statistics in two passes over the batch (sum, then squared
//! deviations), one workgroup per channel, adding up across windows of images.

use super::context::grid_1d;
use super::params::{u, wgsl_params};
use super::{Gpu, GpuTensor, Window};
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
        h: u32,
        w: u32,
        kh: u32,
        kw: u32,
        sh: u32,
        sw: u32,
        oh: u32,
        ow: u32,
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
/// A max pooling follows: `normalize_pool` pools, and dy and idx are the pooling's.
const POOL: u32 = 16;

/// The parameters of a window; `flags` adds RELU or INV_STD, and `then`'s pooling adds POOL.
fn params(x: &GpuTensor, window: Window, eps: f32, flags: u32, then: &Epilogue) -> Params {
    let (n, c, h, w) = x.shape.nchw();
    let accumulate = if window.is_first() { 0 } else { ACCUMULATE };
    let finish = if window.last { FINISH } else { 0 };
    let relu = if then.relu { RELU } else { 0 };
    let plain = Params {
        n: u(window.count),
        c: u(c),
        hw: u(h * w),
        flags: accumulate | finish | relu | flags,
        eps,
        count: u(n * h * w),
        h: u(h),
        w: u(w),
        ..Params::default()
    };
    match &then.pool {
        None => plain,
        Some(g) => Params {
            flags: plain.flags | POOL,
            kh: u(g.kh),
            kw: u(g.kw),
            sh: u(g.stride_h),
            sw: u(g.stride_w),
            oh: u(g.out_h),
            ow: u(g.out_w),
            ..plain
        },
    }
}

/// The shader's per-channel table `[gamma | beta | mean | scale]` (each `[C]`), in one binding.
fn channel_table(gpu: &Gpu, parts: [&GpuTensor; 4]) -> GpuTensor {
    let c = parts[0].len();
    let table = gpu.alloc([4 * c]);
    let bytes = 4 * c as u64;
    for (k, part) in parts.iter().enumerate() {
        gpu.ctx
            .copy(part.buf(), 0, table.buf(), k as u64 * bytes, bytes);
    }
    table
}

/// (y through `then`, batch statistics, the pooling's positions) with the batch's own mean and
/// variance. With a pooling, only its output is written (`normalize_pool`), not y.
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
            let bind = [(1, i[0]), (6, packed.buf())];
            let p = params(x, win, eps, 0, &Epilogue::NONE);
            gpu.ctx.launch(pass, &p, &bind, (u(c), 1, 1));
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
    let table = channel_table(gpu, [gamma, beta, &stats.mean, &stats.inv_std]);
    let (y, argmax) = normalize(gpu, x, &table, (eps, INV_STD), then);
    (y, stats, argmax)
}

/// y = gamma (x - mean) / sqrt(var + eps) + beta with the running statistics.
pub(super) fn forward_infer(
    gpu: &Gpu,
    x: &GpuTensor,
    (gamma, beta): (&GpuTensor, &GpuTensor),
    (mean, var): (&GpuTensor, &GpuTensor),
    eps: f32,
) -> GpuTensor {
    let table = channel_table(gpu, [gamma, beta, mean, var]);
    normalize(gpu, x, &table, (eps, 0), &Epilogue::NONE).0
}

/// `batchnorm::normalize` over the batch through `then`'s ReLU, or `normalize_pool` through its
/// pooling too: (the output, the pooling's positions). `table`'s scale is the variance, or
/// 1/sqrt(var + eps) with INV_STD in `flags`.
fn normalize(
    gpu: &Gpu,
    x: &GpuTensor,
    table: &GpuTensor,
    (eps, flags): (f32, u32),
    then: &Epilogue,
) -> (GpuTensor, Option<GpuTensor>) {
    let (n, c, h, w) = x.shape.nchw();
    let table = gpu.whole(table);
    let Some(g) = &then.pool else {
        let y = gpu.alloc(x.shape.clone());
        gpu.per_window(n, &[x], &[&y], |win, i, o| {
            let bind = [(1, i[0]), (3, table), (5, o[0])];
            let len = win.count * c * h * w;
            let p = params(x, win, eps, flags, then);
            gpu.ctx
                .launch("batchnorm::normalize", &p, &bind, grid_1d(len));
        });
        return (y, None);
    };
    let (pooled, argmax) = (gpu.alloc(g.output_shape()), gpu.alloc(g.output_shape()));
    gpu.per_window(n, &[x], &[&pooled, &argmax], |win, i, o| {
        let bind = [(1, i[0]), (3, table), (4, o[1]), (5, o[0])];
        let len = win.count * c * g.out_h * g.out_w;
        let p = params(x, win, eps, flags, then);
        gpu.ctx
            .launch("batchnorm::normalize_pool", &p, &bind, grid_1d(len));
    });
    (pooled, Some(argmax))
}

/// (dx, dgamma, dbeta): first Σ dy and Σ dy·x̂ per channel over the batch, then dx; `dy` is
/// the gradient at `then`'s output (the pooled one, with `argmax` its positions). Neither pass
/// writes the gradient at y: each takes it back through the pooling and the ReLU as it reads.
pub(super) fn backward(
    gpu: &Gpu,
    x: &GpuTensor,
    (dy, argmax): (&GpuTensor, Option<&GpuTensor>),
    (gamma, beta): (&GpuTensor, &GpuTensor),
    stats: &BatchNormStats<GpuTensor>,
    then: &Epilogue,
) -> (GpuTensor, GpuTensor, GpuTensor) {
    let ins: Vec<&GpuTensor> = match (&then.pool, argmax) {
        (Some(_), Some(argmax)) => vec![x, dy, argmax],
        (None, None) => vec![x, dy],
        _ => panic!("max pooling's positions come with its geometry"),
    };
    // the positions' binding: without a pooling the shader never reads it, but it is bound
    let unpooled = gpu.alloc([1]);
    let (n, c, h, w) = x.shape.nchw();
    let table = channel_table(gpu, [gamma, beta, &stats.mean, &stats.inv_std]);
    let table = gpu.whole(&table);
    let sums = gpu.alloc([2 * c]);
    gpu.per_window(n, &ins, &[], |win, i, _| {
        let bind = [
            (1, i[0]),
            (2, i[1]),
            (3, table),
            (4, i.get(2).copied().unwrap_or(unpooled.buf())),
            (6, sums.buf()),
        ];
        let p = params(x, win, 0.0, INV_STD, then);
        gpu.ctx
            .launch("batchnorm::backward_reduce", &p, &bind, (u(c), 1, 1));
    });
    let dx = gpu.alloc(x.shape.clone());
    gpu.per_window(n, &ins, &[&dx], |win, i, o| {
        let bind = [
            (1, i[0]),
            (2, i[1]),
            (3, table),
            (4, i.get(2).copied().unwrap_or(unpooled.buf())),
            (5, o[0]),
            (6, sums.buf()),
        ];
        let len = win.count * c * h * w;
        let p = params(x, win, 0.0, INV_STD, then);
        gpu.ctx
            .launch("batchnorm::backward_dx", &p, &bind, grid_1d(len));
    });
    let (dgamma, dbeta) = (gpu.alloc([c]), gpu.alloc([c]));
    gpu.ctx.copy(sums.buf(), 0, dbeta.buf(), 0, 4 * c as u64);
    gpu.ctx
        .copy(sums.buf(), 4 * c as u64, dgamma.buf(), 0, 4 * c as u64);
    (dx, dgamma, dbeta)
}
