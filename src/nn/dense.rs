//! Fully connected (dense) layer.
//!
//! Forward:  `y[n,o]` = Σ_i `x[n,i]` · `w[o,i]` + `b[o]`               (y = x wᵀ + b)
//! Backward: `dx[n,i]` = Σ_o `dy[n,o]` · `w[o,i]`                    (dx = dy w)
//!           `dw[o,i]` = Σ_n `dy[n,o]` · `x[n,i]`,  `db[o]` = Σ_n `dy[n,o]`   (dw = dyᵀ x)
//!
//! Its op family, dense (on the GEMM: `gemm`), by the same names in each: the `dense` section of
//! `backend/reference.rs` (the definition), `backend/cpu/dense.rs`, `backend/gpu/dense.rs` and
//! `shaders/gemm.wgsl`.

use super::{init, saved, Layer, Mode, Param};
use crate::backend::Backend;
use rand::rngs::StdRng;

pub struct Dense<B: Backend> {
    weight: Param<B>, // [out, in]
    bias: Param<B>,   // [out]
    input: Option<B::Tensor>,
}

impl<B: Backend> Dense<B> {
    pub fn new(be: &B, inputs: usize, units: usize, rng: &mut StdRng) -> Self {
        let w = init::uniform_fan_in(&[units, inputs], inputs, rng);
        Dense {
            weight: Param::trainable("weight", be.upload(&w)),
            bias: Param::trainable("bias", be.zeros(&[units].into())),
            input: None,
        }
    }
}

impl<B: Backend> Layer<B> for Dense<B> {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let y = be.dense_forward(&x, &self.weight.value, &self.bias.value);
        if mode.keeps_for_backward() {
            self.input = Some(x);
        }
        y
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Option<B::Tensor> {
        let x = saved(&mut self.input, "dense");
        let (dw, db) = be.dense_backward_weight(&x, &dy);
        self.weight.grad = Some(dw);
        self.bias.grad = Some(db);
        want_dx.then(|| be.dense_backward_input(&dy, &self.weight.value))
    }
    fn params(&self) -> Vec<&Param<B>> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        vec![&mut self.weight, &mut self.bias]
    }
}
