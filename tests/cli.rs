//! The `fracture-cnn` command as a user runs it: output, files, exit codes and error messages.

mod common;

use common::cli::{run, train_args};
use std::process::Output;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn model_summary_reports_the_keras_parameter_count() {
    let o = run(&["model", "summary", "--model", "xray-bone-classifier"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(out.contains("Total params: 11,180,673"), "{out}");
    assert!(
        out.contains("[512, 3, 3]") && out.contains("[4608]"),
        "{out}"
    );
}

#[test]
fn train_prints_a_line_per_epoch_and_writes_a_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 20);
    let out_dir = dir.path().join("runs");
    let o = run(&train_args(&data, &out_dir, &["--epochs", "2"]));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("train 12 images (6 fractured, 6 not)"),
        "{out}"
    );
    let epochs: Vec<&str> = out.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(epochs.len(), 2, "{out}");
    for field in ["train loss", "acc", "val loss", "prec", "rec", "auc"] {
        assert!(epochs[1].contains(field), "{field} missing: {}", epochs[1]);
    }
    let run_dir = out_dir.join("fracturenet-001");
    assert!(run_dir.join("best.safetensors").is_file() && run_dir.join("metrics.csv").is_file());
}

#[test]
fn runtime_errors_exit_1_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let o = run(&[
        "train",
        "--data",
        missing.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.starts_with("error: data folder") && err.contains("missing"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let o = run(&["train", "--batch-size", "0", "--backend", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--batch-size must be at least 1"));

    let o = run(&["train", "--lr", "-1", "--backend", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--lr must be a positive number"));

    let o = run(&["model", "summary", "--model", "resnet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o)
        .1
        .contains("no built-in model and no file named 'resnet'"));
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["train", "--epochs", "many"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--epochs"));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}
