//! Inverted dropout.
//!
//! Forward (training): y = x · keep / (1 - p), with keep = 1 with probability 1 - p. Dividing by
//!   1 - p keeps `E[y]` = x, so inference uses the layer as the identity.
//! Backward: dx = dy · keep / (1 - p), with the same mask. The mask is not stored: it is a hash
//!   of (seed, element index) (see `backend::hash`), recomputed from the same seed.
//!
//! Its op family, elementwise (`dropout`), by the same names in each: the `elementwise` section of
//! `backend/reference.rs` (the definition), `backend/cpu/elementwise.rs`,
//! `backend/gpu/elementwise.rs` and `shaders/elementwise.wgsl`.

use super::{saved, Layer, Mode};
use crate::backend::{hash, Backend};

pub struct Dropout {
    rate: f32,
    /// Distinguishes this layer's masks from other dropout layers' in the same step.
    salt: u64,
    /// Set by a forward pass that keeps for backward: the mask's seed, or `None` when nothing was
    /// dropped (Mode::Explain).
    seed: Option<Option<u64>>,
}

impl Dropout {
    pub fn new(rate: f32, layer_index: usize) -> Self {
        Dropout {
            rate,
            salt: hash::lowbias32(layer_index as u32 ^ 0x5bd1_e995) as u64,
            seed: None,
        }
    }
}

impl<B: Backend> Layer<B> for Dropout {
    fn kind(&self) -> &'static str {
        "dropout"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        match mode {
            Mode::Eval => x,
            Mode::Explain => {
                self.seed = Some(None);
                x
            }
            Mode::Train { seed } => {
                let seed = seed ^ (self.salt << 32);
                self.seed = Some(Some(seed));
                be.dropout_forward(&x, self.rate, seed)
            }
        }
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        match saved(&mut self.seed, "dropout") {
            Some(seed) => Some(be.dropout_backward(&dy, self.rate, seed)),
            None => Some(dy), // Mode::Explain: no units were dropped
        }
    }
}
