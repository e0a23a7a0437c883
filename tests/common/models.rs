//! Models for tests.

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::nn::{LayerSpec, Model, ModelSpec};

/// The first weight tensor of `model` (its first convolution's) made 0.1 % too large, as a batch
/// norm folded or exported with its variance off by 0.2 % would leave it: the negative control of
/// the fold's and the export's tolerances.
pub fn first_weight_off_by_a_tenth_of_a_percent(model: &mut Model<Cpu>) {
    let first = model
        .named_params()
        .iter()
        .position(|p| p.name.ends_with("weight"))
        .expect("a model with weights");
    let w = &mut model.params_mut()[first].value;
    w.data.iter_mut().for_each(|v| *v *= 1.001);
}

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
