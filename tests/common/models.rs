//! Models for tests.

use fracture_cnn::nn::{LayerSpec, ModelSpec};

/// `spec` with every batch norm's momentum 1: one training-mode forward pass sets the running
/// statistics to that batch's, so that a test's model holds statistics of real activations (not
/// the initial zeros and ones, which would put folding and exporting to no test).
pub fn taking_one_batch_statistics(spec: &ModelSpec) -> ModelSpec {
    let mut one_batch = spec.clone();
    for node in &mut one_batch.layers {
        if let LayerSpec::BatchNorm { momentum, .. } = &mut node.layer {
            *momentum = 1.0;
        }
    }
    one_batch
}
