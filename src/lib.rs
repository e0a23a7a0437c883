//! fracture-cnn: a convolutional-network engine written from scratch, with a CPU backend (rayon)
//! and a GPU backend (WGSL compute shaders on wgpu), that trains a classifier of bone X-rays.
//!
//! Read it bottom-up: [`tensor`] (host tensors) → [`backend`] (the primitive ops, forward and
//! backward) → [`nn`] (layers and models built from them) → [`optim`], [`data`], [`train`] → [`eval`].

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
