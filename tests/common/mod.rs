#![allow(dead_code)]
pub mod gradchecks;
pub mod images;
