//! Max pooling.
//!
//! Forward:  `y[n,c,i,j]` = max over the window (u, v) of `x[n, c, i·s + u, j·s + v]`, remembering
//!           where each maximum was.
//! Backward: the max passes its input through unchanged and ignores the others, so its gradient
//!           is 1 for the winner and 0 elsewhere: dx gets dy at each argmax, zero everywhere else.
//!
//! Its op family, pool (`maxpool_*`), by the same names in each: the `pool` section of
//! `backend/reference.rs` (the definition), `backend/cpu/pool.rs`, `backend/gpu/pool.rs` and
//! `shaders/pool.wgsl`.

use super::{saved, Layer, Mode};
use crate::backend::{Backend, Pool2dGeom};

pub struct MaxPool<B: Backend> {
    /// Geometry for a batch of one; the batch size is filled in at each call.
    geom: Pool2dGeom,
    argmax: Option<(B::Indices, usize)>,
}

impl<B: Backend> MaxPool<B> {
    pub fn new(geom: Pool2dGeom) -> Self {
        MaxPool { geom, argmax: None }
    }
}

impl<B: Backend> Layer<B> for MaxPool<B> {
    fn kind(&self) -> &'static str {
        "maxpool"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let n = be.shape(&x).dims()[0];
        let g = self.geom.with_batch(n);
        if !mode.keeps_for_backward() {
            return be.maxpool_forward_infer(&x, &g);
        }
        let (y, argmax) = be.maxpool_forward(&x, &g);
        self.argmax = Some((argmax, n));
        y
    }
    fn kinks(&self, be: &B) -> u64 {
        self.argmax.as_ref().map_or(0, |(idx, _)| {
            super::fingerprint(be.download_indices(idx).into_iter())
        })
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        let (argmax, n) = saved(&mut self.argmax, "maxpool");
        Some(be.maxpool_backward(&dy, &argmax, &self.geom.with_batch(n)))
    }
}
