#![allow(dead_code)]
pub mod cli;
pub mod cv_checks;
pub mod dicom;
pub mod gpu;
pub mod gradchecks;
pub mod http;
pub mod images;
pub mod models;
