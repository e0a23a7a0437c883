//! A warmed-up training step on the GPU creates no buffer and no bind group. (A test binary of its
//! own, so that no other test shares the device and its counters.)

mod common;

use fracture_cnn::backend::Backend;
use fracture_cnn::nn::{loss, Mode, Model, ModelSpec};
use fracture_cnn::optim::{Optimizer, OptimizerKind};
use fracture_cnn::tensor::Tensor;

/// After a warm-up step, a training step takes every buffer from the pool and every bind group
/// from the cache: it creates no GPU object.
#[test]
fn a_warmed_up_training_step_creates_no_gpu_objects() {
    let Some(gpu) = common::gpu::backend() else {
        return;
    };
    let spec = ModelSpec::load("fracturenet")
        .unwrap()
        .with_image_size(32)
        .unwrap();
    let x = Tensor::rand_uniform([4, 1, 32, 32], 0.0, 1.0, 800);
    let y = Tensor::new([4], vec![0.0, 1.0, 1.0, 0.0]);
    let mut model = Model::new(gpu, &spec, 7).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.0);
    let mut step = |seed| {
        let logits = model.forward(gpu, gpu.upload(&x), Mode::Train { seed });
        let (l, dlogits) = loss::bce_with_logits(gpu, &logits, &gpu.upload(&y), 1.5);
        model.backward(gpu, dlogits, false);
        opt.step(gpu, &mut model, 1e-3);
        l
    };
    step(0);
    step(1);
    let before = gpu.created();
    for seed in 2..5 {
        step(seed);
    }
    assert_eq!(gpu.created(), before, "steps 3 to 5 created GPU objects");
    assert!(before.bind_groups > 0 && before.buffers > 0);
}
