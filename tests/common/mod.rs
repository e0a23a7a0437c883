#![allow(dead_code)]
pub mod gpu;
pub mod gradchecks;
pub mod images;
