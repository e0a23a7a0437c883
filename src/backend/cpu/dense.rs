//! The dense layer's products on the CPU, on the GEMM (`gemm.rs`), as on the GPU (`gpu/dense.rs`).

use super::gemm::{gemm, Kernel, MatRef};
use crate::tensor::Tensor;

/// Adds `b[j]` to every row of a row-major `rows × b.len()` matrix.
fn add_bias_rows(y: &mut [f32], b: &[f32]) {
    y.chunks_exact_mut(b.len())
        .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
}

/// `y[N,O]` = `x[N,I]` `w[O,I]`^T + `b[O]`
pub fn forward(kernel: Kernel, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let (n, i, o) = (x.dims()[0], x.dims()[1], w.dims()[0]);
    let mut y = vec![0f32; n * o];
    gemm(
        kernel,
        MatRef::rows(&x.data, n, i),
        MatRef::rows(&w.data, o, i).t(),
        &mut y,
        o,
        false,
    );
    add_bias_rows(&mut y, &b.data);
    Tensor::new([n, o], y)
}

/// `dx[N,I]` = `dy[N,O]` `w[O,I]`
pub fn backward_input(kernel: Kernel, dy: &Tensor, w: &Tensor) -> Tensor {
    let (n, o, i) = (dy.dims()[0], w.dims()[0], w.dims()[1]);
    let mut dx = vec![0f32; n * i];
    gemm(
        kernel,
        MatRef::rows(&dy.data, n, o),
        MatRef::rows(&w.data, o, i),
        &mut dx,
        i,
        false,
    );
    Tensor::new([n, i], dx)
}

/// (`dw[O,I]` = dy^T x, `db[O]` = the sum over N of dy)
pub fn backward_weight(kernel: Kernel, x: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let (n, i, o) = (x.dims()[0], x.dims()[1], dy.dims()[1]);
    let mut dw = vec![0f32; o * i];
    gemm(
        kernel,
        MatRef::rows(&dy.data, n, o).t(),
        MatRef::rows(&x.data, n, i),
        &mut dw,
        i,
        false,
    );
    let db = (0..o)
        .map(|j| (0..n).map(|r| dy.data[r * o + j]).sum())
        .collect();
    (Tensor::new([o, i], dw), Tensor::new([o], db))
}
