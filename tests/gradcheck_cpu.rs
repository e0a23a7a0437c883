//! Finite-difference gradient checks of every op, layer and preset on the CPU backend.
//! The checks themselves live in `fracture_cnn::gradcheck`;
//! `tests/common/gradchecks.rs` lists the cases, shared with the GPU test suite.

mod common;

use fracture_cnn::backend::cpu::Cpu;

crate::gradcheck_suite!(Some(&Cpu), 60);

// On the GPU, this one is replaced by a comparison of every gradient with the CPU's
// (tests/gpu_parity.rs): its finite differences take too long on a software GPU.
#[test]
fn whole_xray_bone_classifier_at_94x94() {
    // 94 is the smallest input that survives its four valid convolutions and six poolings.
    let spec = ModelSpec::load("xray-bone-classifier")
        .unwrap()
        .with_image_size(94)
        .unwrap();
    let reports = gc::model(&Cpu, &spec, 4, gc::Probe::model(15));
    common::gradchecks::assert_model(&reports, MODEL_TOL);
}
