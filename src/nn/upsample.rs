//! Nearest-neighbour upsampling: `[N, C, H, W]` → `[N, C, s·H, s·W]`, each value repeated over an
//! `s × s` block. A feature pyramid's top-down path: a coarse map of what is there, brought to a
//! finer stage's size and added to it, so that a fine map also knows what the coarse one saw.
//!
//! Forward:  `y[n,c,i,j]` = `x[n,c,⌊i/s⌋,⌊j/s⌋]`
//! Backward: each input value fed the `s²` outputs of its block, so
//!           `dx[n,c,i,j]` = Σ_{a,b < s} `dy[n,c,s·i+a,s·j+b]`.
//!
//! Its op family, upsample (`upsample_*`), by the same names in each: the `upsample` section of
//! `backend/reference.rs` (the definition), `backend/cpu/upsample.rs`,
//! `backend/gpu/upsample.rs` and `shaders/upsample.wgsl`.

use super::{Layer, Mode};
use crate::backend::Backend;

pub struct Upsample {
    pub factor: usize,
}

impl<B: Backend> Layer<B> for Upsample {
    fn kind(&self) -> &'static str {
        "upsample"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, _mode: Mode) -> B::Tensor {
        be.upsample_forward(&x, self.factor)
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        Some(be.upsample_backward(&dy, self.factor))
    }
}
