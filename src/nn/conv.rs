//! 2-D convolution layer.
//!
//! Forward:  `y[n,o,i,j]` = `b[o]` + Σ_{c,u,v} `w[o,c,u,v]` · `x[n, c, i·s + u - pad, j·s + v - pad]`
//! Backward: each weight meets every input pixel it slid over, so
//!   `dw[o,c,u,v]` = Σ_{n,i,j} `dy[n,o,i,j]` · `x[n, c, i·s + u - pad, j·s + v - pad]`,   `db[o]` = Σ_{n,i,j} `dy[n,o,i,j]`
//!   `dx[n,c,p,q]` = Σ over every (o,u,v,i,j) with i·s + u - pad = p and j·s + v - pad = q of `w[o,c,u,v]` · `dy[n,o,i,j]`
//! (the last is a convolution of dy with the flipped kernel, a "transposed convolution").
//!
//! Its op family, conv, by the same names in each: the `conv` section of `backend/reference.rs`
//! (the definition), `backend/cpu/conv.rs`, `backend/gpu/conv.rs` and `shaders/conv.wgsl`.

use super::{init, saved, Layer, Mode, Param};
use crate::backend::{Backend, Conv2dGeom, Epilogue};
use rand::rngs::StdRng;

pub struct Conv2d<B: Backend> {
    /// Geometry for a batch of one; the batch size is filled in at each call.
    geom: Conv2dGeom,
    /// Whether a ReLU follows inside the layer (`activation = "relu"`).
    relu: bool,
    /// The output, kept for the ReLU's backward pass.
    output: Option<B::Tensor>,
    weight: Param<B>, // [Co, Ci, KH, KW]
    bias: Param<B>,   // [Co]
    input: Option<B::Tensor>,
}

impl<B: Backend> Conv2d<B> {
    pub fn new(be: &B, geom: Conv2dGeom, rng: &mut StdRng) -> Self {
        let w = init::uniform_fan_in(&geom.weight_shape(), geom.patch_len(), rng);
        Conv2d {
            geom,
            relu: false,
            output: None,
            weight: Param::trainable("weight", be.upload(&w)),
            bias: Param::trainable("bias", be.zeros(&[geom.c_out].into())),
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
    /// y in a pass that keeps nothing, with `then`'s ReLU and pooling inside the pass.
    fn infer(&self, be: &B, x: &B::Tensor, then: Option<&Epilogue>) -> B::Tensor {
        let g = self.geom_for(be, x);
        let (w, b) = (&self.weight.value, &self.bias.value);
        let relu = self.relu || then.is_some_and(|t| t.relu);
        match then.and_then(|t| t.pool.as_ref()) {
            Some(pool) => be.conv2d_maxpool_forward(x, (w, b), &g, relu, &pool.with_batch(g.n)),
            None if relu => be.conv2d_relu_forward(x, w, b, &g),
            None => be.conv2d_forward(x, w, b, &g),
        }
    }
}

impl<B: Backend> Layer<B> for Conv2d<B> {
    fn kind(&self) -> &'static str {
        "conv2d"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let g = self.geom_for(be, &x);
        let (w, b) = (&self.weight.value, &self.bias.value);
        let y = if self.relu {
            be.conv2d_relu_forward(&x, w, b, &g)
        } else {
            be.conv2d_forward(&x, w, b, &g)
        };
        if mode.keeps_for_backward() {
            self.input = Some(x);
            self.output = self.relu.then(|| be.copy(&y));
        }
        y
    }
    /// In a pass that will not go backward: with a pooling, only the pooled output is written
    /// (`conv2d_maxpool_forward`); a ReLU alone is the fused ReLU.
    fn forward_then(
        &mut self,
        be: &B,
        x: B::Tensor,
        mode: Mode,
        then: &Epilogue,
    ) -> Result<B::Tensor, B::Tensor> {
        if mode.keeps_for_backward() {
            return Err(x);
        }
        Ok(self.infer(be, &x, Some(then)))
    }
    /// A block's first convolution reads the block's input, which the block's `add` reads after
    /// it: read in place, not copied (about 4 % of resnet-192's inference went to those copies).
    fn forward_borrowed(
        &mut self,
        be: &B,
        x: &B::Tensor,
        then: Option<&Epilogue>,
    ) -> Option<B::Tensor> {
        Some(self.infer(be, x, then))
    }
    /// With the ReLU, dy first passes where the output is positive (y > 0 exactly where the
    /// convolution's value was).
    fn backward(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Option<B::Tensor> {
        let dy = match self.output.take() {
            Some(y) => be.relu_backward(&y, &dy),
            None => dy,
        };
        let x = saved(&mut self.input, "conv2d");
        let g = self.geom_for(be, &x);
        let (dw, db) = be.conv2d_backward_weight(&x, &dy, &g);
        self.weight.grad = Some(dw);
        self.bias.grad = Some(db);
        want_dx.then(|| be.conv2d_backward_input(&dy, &self.weight.value, &g))
    }
    /// With the ReLU, which outputs are positive (the kink that gradient checks step around).
    fn kinks(&self, be: &B) -> u64 {
        self.output.as_ref().map_or(0, |y| {
            super::fingerprint(be.download(y).data.iter().map(|&v| (v > 0.0) as u32))
        })
    }
    fn params(&self) -> Vec<&Param<B>> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        vec![&mut self.weight, &mut self.bias]
    }
}
