#![allow(dead_code)]
pub mod gradchecks;
