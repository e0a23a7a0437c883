//! Add: the merge of a residual block, y = a + P(b).
//!
//! Forward:  y = a + P(b), where P is the identity when b has a's shape, and otherwise a learned
//!           1×1 convolution (weights `[C, C_b, 1, 1]`, bias `[C]`, stride H_b / H) that brings b
//!           to a's shape (a "projection shortcut").
//! Backward: ∂L/∂a = dy and ∂L/∂b = Pᵀ dy (dy itself for the identity). The identity path hands
//!           dy back unchanged, which is why the first layers of a deep residual network still
//!           get a gradient of the loss's own size.
//!
//! Its op family, elementwise (`add`), by the same names in each: the `elementwise` section of
//! `backend/reference.rs` (the definition), `backend/cpu/elementwise.rs`,
//! `backend/gpu/elementwise.rs` and `shaders/elementwise.wgsl`.

use super::{conv::Conv2d, Layer, Mode, Param};
use crate::backend::{Backend, Conv2dGeom};
use rand::rngs::StdRng;

pub struct Add<B: Backend> {
    projection: Option<Conv2d<B>>,
}

impl<B: Backend> Add<B> {
    /// An add whose second input goes through a 1×1 convolution of geometry `projection`, if any.
    pub fn new(be: &B, projection: Option<Conv2dGeom>, rng: &mut StdRng) -> Self {
        Add {
            projection: projection.map(|g| Conv2d::new(be, g, rng)),
        }
    }
}

impl<B: Backend> Layer<B> for Add<B> {
    fn kind(&self) -> &'static str {
        "add"
    }
    fn arity(&self) -> usize {
        2
    }
    fn forward(&mut self, _be: &B, _x: B::Tensor, _mode: Mode) -> B::Tensor {
        panic!("add merges two inputs: models run it through forward_inputs")
    }
    fn backward(&mut self, _be: &B, _dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        panic!("add merges two inputs: models run it through backward_inputs")
    }
    /// `y[N,C,H,W]` = `a[N,C,H,W]` + P(`b[N,C_b,H_b,W_b]`)
    fn forward_inputs(&mut self, be: &B, xs: Vec<B::Tensor>, mode: Mode) -> B::Tensor {
        let [a, b]: [B::Tensor; 2] = xs
            .try_into()
            .unwrap_or_else(|_| panic!("add of two inputs"));
        match &mut self.projection {
            Some(p) => be.add(&a, &p.forward(be, b, mode)),
            None => be.add(&a, &b),
        }
    }
    /// (da = dy, db = Pᵀ dy)
    fn backward_inputs(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Vec<Option<B::Tensor>> {
        let db = match &mut self.projection {
            Some(p) => p.backward(be, be.copy(&dy), want_dx),
            None => want_dx.then(|| be.copy(&dy)),
        };
        vec![want_dx.then_some(dy), db]
    }
    fn params(&self) -> Vec<&Param<B>> {
        self.projection.as_ref().map_or(Vec::new(), |p| p.params())
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.projection
            .as_mut()
            .map_or(Vec::new(), |p| p.params_mut())
    }
}
