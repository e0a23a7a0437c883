//! Finite-difference gradient checks of every op, layer and preset on the CPU backend.
//! The checks themselves live in `fracture_cnn::gradcheck` (the `gradcheck` command runs them too);
//! `tests/common/gradchecks.rs` lists the cases, shared with the GPU test suite.

mod common;

use fracture_cnn::backend::cpu::Cpu;

crate::gradcheck_suite!(Some(&Cpu), 60);
