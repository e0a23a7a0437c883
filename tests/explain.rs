//! Grad-CAM: the gradient of the logit with respect to the last feature maps, taken with batch
//! norm's running statistics (Mode::Explain), agrees with finite differences of the inference
//! forward pass, on the CPU and the GPU alike; and the heatmap has the map's shape and range.

mod common;

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::explain::{grad_cam, target_layer};
use fracture_cnn::gradcheck::{compare, Probe, LAYER_TOL};
use fracture_cnn::nn::{Mode, Model, ModelSpec};
use fracture_cnn::tensor::Tensor;

/// fracturenet at 32×32 whose batch norms have running statistics away from (0, 1) (those of
/// random batches), so that the inference form of their backward pass is exercised, and one
/// image.
fn model_and_image<B: Backend>(be: &B) -> (Model<B>, Tensor) {
    let spec = ModelSpec::load("fracturenet")
        .unwrap()
        .with_image_size(32)
        .unwrap();
    let mut model = Model::new(be, &spec, 5).unwrap();
    // enough steps for the running statistics (momentum 0.1) to settle near the batches'
    for seed in 0..30 {
        let batch = Tensor::rand_uniform([4, 1, 32, 32], 0.0, 1.0, 40 + seed);
        model.forward(be, be.upload(&batch), Mode::Train { seed });
    }
    (model, Tensor::rand_uniform([1, 1, 32, 32], 0.0, 1.0, 7))
}

/// The gradient at the output of layer `at`: at Grad-CAM's layer, and at the first convolution,
/// whose gradient comes back through every batch norm in its inference form.
fn explained_gradient_matches_finite_differences<B: Backend>(
    be: &B,
    at: usize,
) -> (Tensor, Tensor) {
    let (mut model, x) = model_and_image(be);
    let (logits, a, da) = model.activation_and_gradient(be, be.upload(&x), at);
    // the logit as a function of the activation: the layers after `at`, inference statistics
    let mut tail = |a: &Tensor| {
        let mut h = be.upload(a);
        for layer in model.layers[at + 1..].iter_mut() {
            h = layer.forward(be, h, Mode::Explain);
        }
        let kinks = model.layers[at + 1..]
            .iter()
            .fold(0u64, |k, l| k.rotate_left(7) ^ l.kinks(be));
        (be.download(&h).data[0] as f64, kinks)
    };
    let (logit, base_kinks) = tail(&a);
    assert!(
        (logit - logits.data[0] as f64).abs() < 1e-4,
        "{logit} vs {}",
        logits.data[0]
    );
    let report = compare(
        "logit of fracturenet 32x32 (Mode::Explain)",
        &format!("output of layer {at}"),
        &a,
        &da,
        |p| {
            let (l, kinks) = tail(p);
            (kinks == base_kinks).then_some(l)
        },
        Probe::op(300),
        3,
    );
    let nonzero = da.data.iter().filter(|v| **v != 0.0).count();
    assert!(
        nonzero * 10 > da.numel(),
        "only {nonzero} nonzero gradients"
    );
    // about one entry in eight has a gradient (pooling winners with a positive ReLU input): 300
    // random entries include some 40 of them
    assert!(report.checked >= 200, "{report}");
    assert!(report.passed(LAYER_TOL), "{report}");
    (a, da)
}

#[test]
fn the_explanation_gradient_is_proven_on_the_cpu() {
    explained_gradient_matches_finite_differences(&Cpu::new(), 0);
    let at = target_layer(&ModelSpec::load("fracturenet").unwrap()).unwrap();
    let (a, da) = explained_gradient_matches_finite_differences(&Cpu::new(), at);
    // the map of the fracture score, and of its opposite (where the features lowering it are)
    let minus = Tensor::new(da.shape.clone(), da.data.iter().map(|v| -v).collect());
    let (cam, other) = (grad_cam(&a, &da), grad_cam(&a, &minus));
    let (_, _, h, w) = a.shape.nchw();
    for map in [&cam, &other] {
        assert_eq!(map.len(), h * w);
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // unless the weighted sum is zero everywhere, one of the two is positive somewhere, and
    // is scaled to reach 1 there
    assert!(cam.contains(&1.0) || other.contains(&1.0));
}

#[test]
fn the_gpu_explains_like_the_cpu() {
    let Some(gpu) = common::gpu::backend() else {
        return;
    };
    explained_gradient_matches_finite_differences(gpu, 0);
    let (mut model, x) = model_and_image(&Cpu::new());
    let at = target_layer(&model.spec).unwrap();
    let (a_gpu, da_gpu) = explained_gradient_matches_finite_differences(gpu, at);
    let (_, a, da) = model.activation_and_gradient(&Cpu::new(), Cpu::new().upload(&x), at);
    let close = |p: &Tensor, q: &Tensor| {
        let top = q.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        p.data
            .iter()
            .zip(&q.data)
            .all(|(u, v)| (u - v).abs() <= 1e-3 * top.max(1e-6))
    };
    assert!(close(&a_gpu, &a) && close(&da_gpu, &da));
    let (cam_gpu, cam) = (grad_cam(&a_gpu, &da_gpu), grad_cam(&a, &da));
    assert!(cam_gpu.iter().zip(&cam).all(|(u, v)| (u - v).abs() < 1e-2));
}
