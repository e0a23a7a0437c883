//! A warmed-up training step on the CPU takes no fresh memory from the operating system: every
//! tensor it allocates reuses memory that an earlier step freed. (A test binary of its own, so
//! that no other test's allocations are counted.)

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use fracture_cnn::backend::cpu::{self, Cpu};
use fracture_cnn::backend::Backend;
use fracture_cnn::nn::{loss, Mode, Model, ModelSpec};
use fracture_cnn::optim::{Optimizer, OptimizerKind};
use fracture_cnn::tensor::Tensor;

/// Page faults so far: each is the kernel handing the process a fresh page.
fn minor_page_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt
    }
}

/// Without `keep_freed_memory`, each step of this model at 64×64, batch 8 faults in about 4,500
/// fresh pages (its large activations come from and go back to the kernel every step); with it,
/// a warmed-up step needs none but the odd page of the allocator's bookkeeping, and once a
/// one-off growth of about 150 pages, at whichever step rayon first runs a convolution's image
/// task inside another's on one thread (which then takes a scratch buffer of its own).
#[test]
fn a_warmed_up_training_step_takes_no_fresh_memory() {
    cpu::keep_freed_memory();
    let be = Cpu::new();
    let spec = ModelSpec::load("fracturenet")
        .unwrap()
        .with_image_size(64)
        .unwrap();
    let x = Tensor::rand_uniform([8, 1, 64, 64], 0.0, 1.0, 800);
    let y = be.upload(&Tensor::new([8], (0..8).map(|i| (i % 2) as f32).collect()));
    let mut model = Model::new(&be, &spec, 7).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.0);
    let mut step = |seed| {
        let logits = model.forward(&be, be.upload(&x), Mode::Train { seed });
        let (_, dlogits) = loss::bce_with_logits(&be, &logits, &y, 1.5);
        model.backward(&be, dlogits, false);
        opt.step(&be, &mut model, 1e-3);
    };
    let start = minor_page_faults();
    step(0);
    step(1);
    let warm_up = minor_page_faults() - start;
    let before = minor_page_faults();
    for seed in 2..5 {
        step(seed);
    }
    let faults = minor_page_faults() - before;
    assert!(
        warm_up > 2_000,
        "the first steps faulted in only {warm_up} pages: the measure is not working"
    );
    assert!(
        faults < 500,
        "steps 3 to 5 faulted in {faults} fresh pages (the first two: {warm_up})"
    );
}
