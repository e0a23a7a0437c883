//! Finite-difference gradient checks of every op, layer and preset on the CPU backend.
//! The checks themselves live in `fracture_cnn::gradcheck`;
//! `tests/common/gradchecks.rs` lists the cases, shared with the GPU test suite.

mod common;

use fracture_cnn::backend::cpu::conv::Algorithm;
use fracture_cnn::backend::cpu::Cpu;

crate::gradcheck_suite!(Some(&Cpu::new()), 60);

// Tier 2, the slow proofs: every layer type and op these two use is checked entry by entry in
// tier 1 above, and fracturenet and resnet-4-1 whole; these two take minutes on 2 cores (every
// entry of their early layers crosses a kink at each step tried, which costs six more forward
// passes). On the GPU they are replaced by a comparison of every gradient with the CPU's
// (tests/gpu_parity.rs).
#[test]
#[ignore = "tier 2 (minutes): cargo test --release -- --ignored, which CI runs"]
fn whole_xray_bone_classifier_at_94x94() {
    // Finite differences need the loss's rounding far below what a step changes. Winograd's
    // transforms round more than the direct sum, and through this model's batch norms over 4
    // images the input gradient's check fell to 6.9e-2 against 5e-2 with them: this whole-model
    // check of the layers' backward chain runs the GEMM convolution, while Winograd's own
    // gradients are checked op by op in tier 1 (finite differences) and against the reference.
    // 94 is the smallest input that survives its four valid convolutions and six poolings.
    let spec = ModelSpec::load("xray-bone-classifier")
        .unwrap()
        .with_image_size(94)
        .unwrap();
    // 6 entries per tensor: most of its early layers' entries cross a kink at every step tried,
    // and each costs 6 forward passes at 94×94 (every layer type is checked entry by entry on
    // its own in the suite above)
    let gemm = Cpu::new().with_conv_algorithm(Algorithm::Gemm);
    let reports = gc::model(&gemm, &spec, 4, gc::Probe::model(6));
    common::gradchecks::assert_model(&reports, MODEL_TOL);
}

#[test]
#[ignore = "tier 2 (minutes): cargo test --release -- --ignored, which CI runs"]
fn whole_mobilenet_quarter_width_at_32x32() {
    // 84 layers, 110 parameter tensors; at 32×32 the last blocks are 1×1, so batch norm there
    // normalises 3 values per channel, the hardest case for rounding.
    let spec = ModelSpec::load("mobilenet-0.25")
        .unwrap()
        .with_image_size(32)
        .unwrap();
    let reports = gc::model(&Cpu::new(), &spec, 3, gc::Probe::model(8));
    common::gradchecks::assert_model(&reports, MODEL_TOL);
}
