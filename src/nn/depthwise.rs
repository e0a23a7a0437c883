//! Depthwise 2-D convolution layer (MobileNet's spatial filtering): each channel is convolved with
//! a `KH×KW` filter of its own, and channels are not mixed (a 1×1 `conv2d` after it, the
//! "pointwise" convolution, mixes them). Together the two cost about `1/Co + 1/(KH·KW)` of a full
//! convolution with the same input and output.
//!
//! Forward:  `y[n,c,i,j]` = `b[c]` + Σ_{u,v} `w[c,u,v]` · `x[n, c, i·s + u - pad, j·s + v - pad]`
//! Backward: as for a full convolution, but each weight only ever meets its own channel:
//!   `dw[c,u,v]` = Σ_{n,i,j} `dy[n,c,i,j]` · `x[n, c, i·s + u - pad, j·s + v - pad]`,   `db[c]` = Σ_{n,i,j} `dy[n,c,i,j]`
//!   `dx[n,c,p,q]` = Σ over every (u,v,i,j) with i·s + u - pad = p and j·s + v - pad = q of `w[c,u,v]` · `dy[n,c,i,j]`
//!
//! Its op family, depthwise, by the same names in each: the `depthwise` section of
//! `backend/reference.rs` (the definition), `backend/cpu/depthwise.rs`, `backend/gpu/depthwise.rs`
//! and `shaders/depthwise.wgsl`.

use super::{init, saved, Layer, Mode, Param};
use crate::backend::{Backend, Conv2dGeom};
use rand::rngs::StdRng;

pub struct DepthwiseConv2d<B: Backend> {
    /// Geometry for a batch of one (`c_out == c_in`); the batch size is filled in at each call.
    geom: Conv2dGeom,
    /// Whether a ReLU follows inside the layer (`activation = "relu"`).
    relu: bool,
    /// The output, kept for the ReLU's backward pass.
    output: Option<B::Tensor>,
    weight: Param<B>, // [C, 1, KH, KW]
    bias: Param<B>,   // [C]
    input: Option<B::Tensor>,
}

impl<B: Backend> DepthwiseConv2d<B> {
    pub fn new(be: &B, geom: Conv2dGeom, rng: &mut StdRng) -> Self {
        // each output sums KH·KW inputs: that is its fan-in
        let w = init::uniform_fan_in(&geom.depthwise_weight_shape(), geom.kh * geom.kw, rng);
        DepthwiseConv2d {
            geom,
            relu: false,
            output: None,
            weight: Param::trainable("weight", be.upload(&w)),
            bias: Param::trainable("bias", be.zeros(&[geom.c_in].into())),
            input: None,
        }
    }
    /// The same layer with a ReLU on its output, computed where the bias is added.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }
    fn geom_for(&self, be: &B, x: &B::Tensor) -> Conv2dGeom {
        self.geom.with_batch(be.shape(x).dims()[0])
    }
}

impl<B: Backend> Layer<B> for DepthwiseConv2d<B> {
    fn kind(&self) -> &'static str {
        "depthwise_conv2d"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let g = self.geom_for(be, &x);
        let (w, b) = (&self.weight.value, &self.bias.value);
        let y = if self.relu {
            be.depthwise_conv2d_relu_forward(&x, w, b, &g)
        } else {
            be.depthwise_conv2d_forward(&x, w, b, &g)
        };
        if mode.keeps_for_backward() {
            self.input = Some(x);
            self.output = self.relu.then(|| be.copy(&y));
        }
        y
    }
    /// With the ReLU, dy first passes where the output is positive.
    fn backward(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Option<B::Tensor> {
        let dy = match self.output.take() {
            Some(y) => be.relu_backward(&y, &dy),
            None => dy,
        };
        let x = saved(&mut self.input, "depthwise_conv2d");
        let g = self.geom_for(be, &x);
        let (dw, db) = be.depthwise_conv2d_backward_weight(&x, &dy, &g);
        self.weight.grad = Some(dw);
        self.bias.grad = Some(db);
        want_dx.then(|| be.depthwise_conv2d_backward_input(&dy, &self.weight.value, &g))
    }
    fn params(&self) -> Vec<&Param<B>> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        vec![&mut self.weight, &mut self.bias]
    }
}
