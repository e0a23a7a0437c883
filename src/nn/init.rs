//! Weight initialisation.

use crate::tensor::Tensor;
use rand::{rngs::StdRng, Rng};

/// U(-1/√fan_in, 1/√fan_in), PyTorch's default for convolution and dense layers (Kaiming uniform
/// with a = √5). Each output starts as a sum of `fan_in` terms with variance 1/(3·fan_in) times
/// the input's, so activations neither explode nor vanish at the start, and the first logits are
/// small, which keeps the first Adam steps of the dense head gentle. (Batch norm after each
/// convolution re-normalises anyway.)
pub fn uniform_fan_in(dims: &[usize], fan_in: usize, rng: &mut StdRng) -> Tensor {
    let bound = 1.0 / (fan_in as f32).sqrt();
    let n = dims.iter().product();
    Tensor::new(dims, (0..n).map(|_| rng.gen_range(-bound..bound)).collect())
}
