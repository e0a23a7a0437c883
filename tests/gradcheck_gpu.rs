//! The finite-difference gradient checks of `gradcheck_cpu.rs`, run on the GPU backend
//! (with fewer sampled entries: lavapipe runs shaders at about single-thread CPU speed).

mod common;

crate::gradcheck_suite!(crate::common::gpu::backend(), 12);
