//! The dense layer's products on the GPU, on the GEMM (`gemm.rs`, `shaders/gemm.wgsl`), as on
//! the CPU (`cpu/dense.rs`), over windows of samples.

use super::gemm::{gemm, Gemm};
use super::{elementwise, reduce, Gpu, GpuTensor};

/// `y[N,O]` = `x[N,I]` `w[O,I]`^T + `b[O]`
pub(super) fn forward(gpu: &Gpu, x: &GpuTensor, w: &GpuTensor, b: &GpuTensor) -> GpuTensor {
    let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], w.shape.dims()[0]);
    let y = gpu.alloc([n, o]);
    let (w, b) = (gpu.whole(w), gpu.whole(b));
    gpu.per_window(n, &[x], &[&y], |win, xs, ys| {
        // y [N × O] = x [N × I] · wᵀ [I × O]
        let gm = Gemm::matmul(win.count, o, i, (i, 1), (1, i));
        gemm(gpu, gm, xs[0], w, ys[0]);
        elementwise::add_channel_bias(gpu, win.count * o, (o, 1), b, ys[0], false);
    });
    y
}

/// `dx[N,I]` = `dy[N,O]` `w[O,I]`
pub(super) fn backward_input(gpu: &Gpu, dy: &GpuTensor, w: &GpuTensor) -> GpuTensor {
    let (n, o, i) = (dy.shape.dims()[0], w.shape.dims()[0], w.shape.dims()[1]);
    let dx = gpu.alloc([n, i]);
    let w = gpu.whole(w);
    gpu.per_window(n, &[dy], &[&dx], |win, dys, dxs| {
        // dx [N × I] = dy [N × O] · w [O × I]
        let gm = Gemm::matmul(win.count, i, o, (o, 1), (i, 1));
        gemm(gpu, gm, dys[0], w, dxs[0]);
    });
    dx
}

/// (`dw[O,I]` = dy^T x, `db[O]` = the sum over N of dy), adding up across windows
pub(super) fn backward_weight(gpu: &Gpu, x: &GpuTensor, dy: &GpuTensor) -> (GpuTensor, GpuTensor) {
    let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], dy.shape.dims()[1]);
    let (dw, db) = (gpu.alloc([o, i]), gpu.alloc([o]));
    gpu.per_window(n, &[x, dy], &[], |win, t, _| {
        // dw [O × I] (+)= dyᵀ [O × N] · x [N × I]
        let gm = Gemm {
            accumulate: !win.is_first(),
            ..Gemm::matmul(o, i, win.count, (1, o), (i, 1))
        };
        gemm(gpu, gm, t[1], t[0], dw.buf());
        reduce::channel_sum(gpu, t[1], db.buf(), (win.count, o, 1), !win.is_first());
    });
    (dw, db)
}
