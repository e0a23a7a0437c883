//! Weight initialisation.

use crate::tensor::Tensor;
use rand::{rngs::StdRng, Rng};

/// He (Kaiming) uniform initialisation, U(-√(6/fan_in), √(6/fan_in)): it keeps the variance of
/// activations constant from layer to layer through ReLUs, which zero half of their inputs.
pub fn he_uniform(dims: &[usize], fan_in: usize, rng: &mut StdRng) -> Tensor {
    let bound = (6.0 / fan_in as f32).sqrt();
    let n = dims.iter().product();
    Tensor::new(dims, (0..n).map(|_| rng.gen_range(-bound..bound)).collect())
}
