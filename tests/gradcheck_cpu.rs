//! Finite-difference gradient checks of every op, layer and preset on the CPU backend.
//! The checks themselves live in `fracture_cnn::gradcheck`;
//! `tests/common/gradchecks.rs` lists the cases, shared with the GPU test suite.

mod common;

use fracture_cnn::backend::cpu::Cpu;

crate::gradcheck_suite!(Some(&Cpu::new()), 60);

// The two other presets whole, against the wide reference (tests/gradcheck_models.rs holds
// their f64 gradients to finite differences, in tier 2 too): xray-bone-classifier at 94, the
// smallest input that survives its four valid convolutions and six poolings; mobilenet-0.25 at
// 32, where the last blocks are 1×1 and batch norm normalises 3 values per channel.
#[test]
#[ignore = "tier 2 (minutes): cargo test --release -- --ignored, which CI runs"]
fn whole_xray_bone_classifier_and_mobilenet_against_the_wide_reference() {
    for (name, size, batch) in [("xray-bone-classifier", 94, 4), ("mobilenet-0.25", 32, 3)] {
        let spec = ModelSpec::load(name)
            .unwrap()
            .with_image_size(size)
            .unwrap();
        assert_all(&gc::against_wide(&Cpu::new(), &spec, batch), F32_TOL);
    }
}
