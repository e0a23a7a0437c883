//! Rectified linear unit.
//!
//! Forward:  y = max(x, 0)
//! Backward: dx = dy where x > 0, else 0 (the slope is 1 on the right of zero and 0 on the left).
//!
//! Its op family, elementwise (`relu_*`), by the same names in each: the `elementwise` section of
//! `backend/reference.rs` (the definition), `backend/cpu/elementwise.rs`,
//! `backend/gpu/elementwise.rs` and `shaders/elementwise.wgsl`.

use super::{saved, Layer, Mode};
use crate::backend::Backend;

pub struct Relu<B: Backend> {
    input: Option<B::Tensor>,
}

impl<B: Backend> Default for Relu<B> {
    fn default() -> Self {
        Relu { input: None }
    }
}

impl<B: Backend> Layer<B> for Relu<B> {
    fn kind(&self) -> &'static str {
        "relu"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let y = be.relu_forward(&x);
        if mode.keeps_for_backward() {
            self.input = Some(x);
        }
        y
    }
    fn kinks(&self, be: &B) -> u64 {
        self.input.as_ref().map_or(0, |x| {
            super::fingerprint(be.download(x).data.iter().map(|&v| (v > 0.0) as u32))
        })
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        let x = saved(&mut self.input, "relu");
        Some(be.relu_backward(&x, &dy))
    }
}
