//! Global average pooling: `[N, C, H, W]` → `[N, C]`, each feature map replaced by its mean
//! (MobileNet's and ResNet's head: one value per channel, whatever the image size, and no
//! weights, where flattening would feed `C·H·W` values to a dense layer).
//!
//! Forward:  `y[n,c]` = (1 / H·W) Σ_{i,j} `x[n,c,i,j]`
//! Backward: every pixel contributes 1/(H·W) of the mean, so `dx[n,c,i,j]` = `dy[n,c]` / (H·W).
//!
//! Its op family, pool (`global_avgpool_*`), by the same names in each: the `pool` section of
//! `backend/reference.rs` (the definition), `backend/cpu/pool.rs`, `backend/gpu/pool.rs` and
//! `shaders/pool.wgsl`.

use super::{saved, Layer, Mode};
use crate::backend::Backend;

#[derive(Default)]
pub struct GlobalAvgPool {
    /// (H, W) of the last input, for the backward pass.
    hw: Option<(usize, usize)>,
}

impl<B: Backend> Layer<B> for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "global_avgpool"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        let (_, _, h, w) = be.shape(&x).nchw();
        if mode.keeps_for_backward() {
            self.hw = Some((h, w));
        }
        be.global_avgpool_forward(&x)
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        let hw = saved(&mut self.hw, "global_avgpool");
        Some(be.global_avgpool_backward(&dy, hw))
    }
}
