//! Running the `fracture-cnn` binary as a user does.

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_fracture-cnn");

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// `train` on `data` at 16×16, batch 4, on the CPU, quiet, with `more` arguments.
pub fn train_args<'a>(data: &'a Path, out: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--backend",
        "cpu",
        "--quiet",
    ];
    args.extend_from_slice(more);
    args
}
