//! fracture-cnn: a convolutional-network engine written from scratch, with a CPU backend (rayon)
//! and a GPU backend (WGSL compute shaders on wgpu), that trains a classifier of bone X-rays.
//!
//! Read it bottom-up. The modules stand in layers, and each uses only modules of the layers below
//! its own (`tests/architecture.rs` reads this list and checks every `crate::` path in `src/`,
//! intra-doc links included):
//! 1. [`tensor`] (host tensors), [`faults`] (fault injection for the tests)
//! 2. [`backend`]: the primitive ops, forward and backward, on the CPU and the GPU; [`files`]:
//!    files written whole or not at all
//! 3. [`data`]: X-rays, their folds, augmentation and outlines
//! 4. [`nn`]: layers and models built from the ops; [`localize`]: where a map says a fracture is
//! 5. [`checkpoint`], [`optim`], [`metrics`], [`explain`] (Grad-CAM), [`gradcheck`]
//! 6. [`columns`], [`callbacks`], [`plots`], [`bench`](mod@bench), [`export`]
//! 7. [`train`], [`eval`], [`inspect`]
//! 8. [`cv`], [`serve`]
//!
//! The binary's `cli` sits on top of them all.

pub mod backend;
pub mod bench;
pub mod callbacks;
pub mod checkpoint;
pub mod columns;
pub mod cv;
pub mod data;
pub mod eval;
pub mod explain;
pub mod export;
pub mod faults;
pub mod files;
pub mod gradcheck;
pub mod inspect;
pub mod localize;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod plots;
pub mod serve;
pub mod tensor;
pub mod train;
