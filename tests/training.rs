//! Training end to end on small generated image folders: it learns, it repeats itself exactly
//! with the same seed, and its checkpoints reload to the same predictions.

mod common;

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::callbacks::{Callbacks, Plateau, Schedule};
use fracture_cnn::checkpoint;
use fracture_cnn::data::{Augment, DataDir, Dataset, Framing, Square};
use fracture_cnn::metrics::roc_auc;
use fracture_cnn::optim::OptimizerKind;
use fracture_cnn::train::{self, TrainConfig};
use std::path::Path;

fn config(data: &Path, out: &Path, seed: u64, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        model: "fracturenet".into(),
        image_size: Some(16),
        framing: None,
        crop: None,
        epochs,
        batch_size: 8,
        lr: 2e-3,
        seed,
        out: out.to_path_buf(),
        pos_weight: None,
        optimizer: OptimizerKind::adam(),
        weight_decay: 0.0,
        quiet: true,
        clip_grad_norm: None,
        augment: Augment::XRAY,
        sampling: train::Sampling::Shuffle,
        callbacks: Callbacks {
            schedule: Schedule::Cosine,
            ..Callbacks::default()
        },
        fold: None,
        regularise: Default::default(),
        annotations: None,
        map_loss: Default::default(),
    }
}

#[test]
fn learns_a_separable_task_and_reloads_to_the_same_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 12, 20);
    let run = train::train(&Cpu::new(), &config(&data, &dir.path().join("runs"), 1, 6)).unwrap();
    let first = &run.epochs[0];
    let last = run.epochs.last().unwrap();
    assert!(
        last.train_loss < first.train_loss,
        "{} -> {}",
        first.train_loss,
        last.train_loss
    );
    assert!(last.val.roc_auc > 0.95, "val ROC-AUC {}", last.val.roc_auc);
    assert!(last.val.balanced_accuracy > 0.8, "{:?}", last.val);

    for file in [
        "config.json",
        "metrics.csv",
        "last.safetensors",
        "best.safetensors",
        "loss.png",
        "accuracy.png",
        "roc.png",
        "confusion.png",
    ] {
        assert!(run.run_dir.join(file).is_file(), "{file} missing");
    }
    let csv = std::fs::read_to_string(run.run_dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6);

    // The last checkpoint, reloaded, predicts what the run measured after its last epoch.
    let (mut model, info) =
        checkpoint::load(&Cpu::new(), &run.run_dir.join("last.safetensors")).unwrap();
    assert_eq!(info.epoch, 6);
    let val = DataDir::open(&data).unwrap().val;
    let ds = Dataset::decode(
        &val.samples,
        Square::whole(16, Framing::Squash),
        "val",
        true,
    );
    let (loss, probs) = train::predict(&Cpu::new(), &mut model, &ds, 8);
    assert_eq!(roc_auc(&probs, &ds.labels), last.val.roc_auc);
    assert!((loss - last.val.loss).abs() < 1e-9);
}

#[test]
fn same_seed_same_numbers_other_seed_other_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 16);
    let out = dir.path().join("runs");
    let losses = |seed| -> Vec<(f64, f64)> {
        let run = train::train(&Cpu::new(), &config(&data, &out, seed, 2)).unwrap();
        run.epochs
            .iter()
            .map(|e| (e.train_loss, e.val.loss))
            .collect()
    };
    let a = losses(5);
    assert_eq!(a, losses(5));
    assert_ne!(a, losses(6));
    // three runs, three run folders (beside the image cache)
    let runs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".cache")
        .count();
    assert_eq!(runs, 3);
}

#[test]
fn a_resumed_run_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 16);
    let figures = |r: &train::RunSummary| -> Vec<(f64, f64, f64)> {
        r.epochs
            .iter()
            .map(|e| (e.train_loss, e.val.loss, e.val.roc_auc))
            .collect()
    };
    let whole = train::train(&Cpu::new(), &config(&data, &dir.path().join("a"), 3, 3)).unwrap();
    let part = train::train(&Cpu::new(), &config(&data, &dir.path().join("b"), 3, 1)).unwrap();
    let rest = train::resume(&Cpu::new(), &part.run_dir, Some(3)).unwrap();
    let mut joined = figures(&part);
    joined.extend(figures(&rest));
    assert_eq!(joined, figures(&whole));
    let csv = |r: &train::RunSummary| {
        let text = std::fs::read_to_string(r.run_dir.join("metrics.csv")).unwrap();
        // every column but the timings
        text.lines()
            .map(|l| l.split(',').take(13).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(csv(&rest), csv(&whole));
    let e = train::resume(&Cpu::new(), &rest.run_dir, None)
        .err()
        .expect("a finished run is not resumed")
        .to_string();
    assert!(
        e.contains("finished its 3 epochs") && e.contains("--epochs"),
        "{e}"
    );
}

#[test]
fn the_generalisation_ingredients_learn_resume_exactly_and_leave_a_final_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 12, 20);
    let recipe = |out: &str, epochs| TrainConfig {
        regularise: train::Regularise {
            ema: Some(0.9),
            label_smoothing: 0.1,
            mixup: 0.4,
            warmup: 1,
        },
        // a schedule that does not depend on the run's length, so that a 2-epoch run is the
        // start of a 5-epoch one
        callbacks: Callbacks {
            schedule: Schedule::Constant,
            ..Callbacks::default()
        },
        ..config(&data, &dir.path().join(out), 4, epochs)
    };
    let whole = train::train(&Cpu::new(), &recipe("a", 5)).unwrap();
    let last = whole.epochs.last().unwrap();
    assert!(last.val.roc_auc > 0.9, "val ROC-AUC {}", last.val.roc_auc);
    // the averaged weights, the mixup draws and the warm-up all carry over a resume
    let part = train::train(&Cpu::new(), &recipe("b", 2)).unwrap();
    let rest = train::resume(&Cpu::new(), &part.run_dir, Some(5)).unwrap();
    let losses = |epochs: &[fracture_cnn::columns::EpochReport]| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.train_loss, e.val.loss)).collect()
    };
    let mut joined = losses(&part.epochs);
    joined.extend(losses(&rest.epochs));
    assert_eq!(joined, losses(&whole.epochs));
    // validation ran on the averaged weights, which final.safetensors holds and load_final
    // rebuilds from last.safetensors; the raw last weights differ from them
    let val = DataDir::open(&data).unwrap().val;
    let ds = Dataset::decode(
        &val.samples,
        Square::whole(16, Framing::Squash),
        "val",
        true,
    );
    let (mut fin, _) =
        checkpoint::load(&Cpu::new(), &whole.run_dir.join("final.safetensors")).unwrap();
    let (loss, _) = train::predict(&Cpu::new(), &mut fin, &ds, 8);
    assert!(
        (loss - last.val.loss).abs() < 1e-9,
        "{loss} vs {}",
        last.val.loss
    );
    let (mut rebuilt, _) = train::load_final(&Cpu::new(), &whole.run_dir).unwrap();
    assert_eq!(train::predict(&Cpu::new(), &mut rebuilt, &ds, 8).0, loss);
    let (mut raw, _) =
        checkpoint::load(&Cpu::new(), &whole.run_dir.join("last.safetensors")).unwrap();
    assert_ne!(train::predict(&Cpu::new(), &mut raw, &ds, 8).0, loss);
}

#[test]
fn bad_options_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 2, 8);
    let out = dir.path().join("runs");
    // The error of a run whose config `change` spoils.
    let refusal = |change: &dyn Fn(&mut TrainConfig)| {
        let mut c = config(&data, &out, 1, 1);
        change(&mut c);
        format!(
            "{:#}",
            train::train(&Cpu::new(), &c).err().expect("refused")
        )
    };
    assert!(refusal(&|c| c.batch_size = 0).contains("--batch-size"));
    assert!(refusal(&|c| c.lr = f32::NAN).contains("--lr"));
    assert!(refusal(&|c| c.lr = -0.1).contains("--lr"));
    let e = refusal(&|c| c.image_size = Some(8));
    assert!(e.contains("image size 8") && e.contains("maxpool"), "{e}");
    assert!(refusal(&|c| c.regularise.ema = Some(1.0)).contains("--ema takes a decay"));
    assert!(refusal(&|c| c.regularise.label_smoothing = 0.5).contains("--label-smoothing"));
    assert!(refusal(&|c| c.regularise.mixup = -1.0).contains("--mixup"));
    assert!(refusal(&|c| c.regularise.warmup = 1).contains("--warmup (1 epochs) must be shorter"));
    assert!(!out.exists(), "a refused run must not leave a run folder");
}

#[test]
fn balanced_sampling_draws_both_classes_alike_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 4 fractured against 16 not fractured in train
    common::images::write_separable_dataset(&data, 16, 16);
    let frac = data.join("train/fractured");
    for i in 4..16 {
        std::fs::remove_file(frac.join(format!("img{i:03}.png"))).unwrap();
    }
    let split = DataDir::open(&data).unwrap().train;
    let ds = Dataset::decode(
        &split.samples,
        Square::whole(16, Framing::Squash),
        "train",
        true,
    );
    let drawn: Vec<usize> = ds.balanced_batches(8, 3).into_iter().flatten().collect();
    assert_eq!(drawn.len(), 20);
    let positives = drawn.iter().filter(|&&i| ds.labels[i] == 1.0).count();
    assert!(
        (6..=14).contains(&positives),
        "{positives} of 20 draws fractured"
    );
    assert_eq!(drawn, ds.balanced_batches(8, 3).concat(), "seeded");
    let mut cfg = config(&data, &dir.path().join("runs"), 1, 6);
    cfg.sampling = train::Sampling::Balanced;
    let run = train::train(&Cpu::new(), &cfg).unwrap();
    assert!(run.epochs.last().unwrap().val.roc_auc > 0.9);
}

#[test]
fn early_stopping_and_reduce_on_plateau_act_on_the_monitored_figure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 16);
    // a learning rate so small that validation ROC-AUC (rank-based) never changes after epoch 1
    let mut cfg = config(&data, &dir.path().join("runs"), 4, 6);
    cfg.lr = 1e-9;
    cfg.callbacks = Callbacks {
        early_stopping: Some(2),
        plateau: Some(Plateau {
            patience: 1,
            factor: 0.5,
            min_lr: 1e-12,
        }),
        ..Callbacks::default()
    };
    let run = train::train(&Cpu::new(), &cfg).unwrap();
    let lrs: Vec<f32> = run.epochs.iter().map(|e| e.lr).collect();
    assert_eq!(
        lrs,
        [1e-9, 1e-9, 5e-10],
        "epoch 3 ran at half the rate, then the run stopped"
    );
    assert_eq!(run.best_epoch, 1);
    let e = train::resume(&Cpu::new(), &run.run_dir, Some(10))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("stopped early at epoch 3"), "{e}");
}

#[test]
fn the_framing_travels_with_the_model_to_predict() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // images of 20..22 x 20: not square
    common::images::write_separable_dataset(&data, 6, 20);
    let cfg = TrainConfig {
        framing: Some(Framing::PadReflect),
        ..config(&data, &dir.path().join("runs"), 2, 1)
    };
    let run = train::train(&Cpu::new(), &cfg).unwrap();
    let best = run.run_dir.join("best.safetensors");
    let (mut model, info) = checkpoint::load(&Cpu::new(), &best).unwrap();
    assert_eq!(info.spec.framing, Framing::PadReflect);
    let val = DataDir::open(&data).unwrap().val;
    let mut framed = |framing| {
        let ds = Dataset::decode(&val.samples, Square::whole(16, framing), "val", true);
        train::predict(&Cpu::new(), &mut model, &ds, 8).1
    };
    let (reflected, squashed) = (framed(Framing::PadReflect), framed(Framing::Squash));
    assert_ne!(
        reflected, squashed,
        "the framing changes what the model sees"
    );
    let paths: Vec<_> = val.samples.iter().map(|s| s.path.clone()).collect();
    let (answers, _) = fracture_cnn::eval::predict(&Cpu::new(), &[best], &paths, 8, false).unwrap();
    let predicted: Vec<f32> = answers.iter().map(|a| a.probability).collect();
    assert_eq!(
        predicted, reflected,
        "predict frames as the model was trained"
    );
}

#[test]
fn the_crop_travels_with_the_model_to_predict_which_judges_the_centre_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 20);
    let cfg = TrainConfig {
        crop: Some(0.8),
        ..config(&data, &dir.path().join("runs"), 2, 2)
    };
    let run = train::train(&Cpu::new(), &cfg).unwrap();
    let best = run.run_dir.join("best.safetensors");
    let (mut model, info) = checkpoint::load(&Cpu::new(), &best).unwrap();
    assert_eq!(info.spec.crop, 0.8);
    assert_eq!(info.spec.square().framed_side(), 20, "16 of 20");
    let val = DataDir::open(&data).unwrap().val;
    let mut judged = |crop| {
        let square = Square {
            side: 16,
            framing: Framing::Squash,
            crop,
        };
        let ds = Dataset::decode(&val.samples, square, "val", true);
        train::predict(&Cpu::new(), &mut model, &ds, 8).1
    };
    let (centre, whole) = (judged(0.8), judged(1.0));
    // infinite where either side is NaN or infinite (a fold with f32::max would drop a NaN)
    let largest_gap = |a: &[f32], b: &[f32]| {
        let t = |v: &[f32]| fracture_cnn::tensor::Tensor::new([v.len()], v.to_vec());
        t(a).max_abs_diff(&t(b))
    };
    let paths: Vec<_> = val.samples.iter().map(|s| s.path.clone()).collect();
    let (answers, _) = fracture_cnn::eval::predict(&Cpu::new(), &[best], &paths, 8, false).unwrap();
    let predicted: Vec<f32> = answers.iter().map(|a| a.probability).collect();
    // predict runs the inference model (batch norm folded): equal to rounding, which is far
    // below what the crop changes
    let (rounding, cropping) = (
        largest_gap(&predicted, &centre),
        largest_gap(&centre, &whole),
    );
    assert!(
        rounding < 1e-6 && cropping > 100.0 * rounding.max(1e-7),
        "predict crops as the model was trained: {predicted:?}, centre {centre:?}, whole {whole:?}"
    );
}

#[test]
fn a_crop_outside_its_range_is_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::images::write_separable_dataset(&data, 6, 20);
    for crop in [0.3, 1.2, f32::NAN] {
        let cfg = TrainConfig {
            crop: Some(crop),
            ..config(&data, &dir.path().join("runs"), 2, 1)
        };
        let Err(e) = train::train(&Cpu::new(), &cfg) else {
            panic!("crop {crop} was taken");
        };
        let e = e.to_string();
        assert!(e.contains("--crop takes") && e.contains("got"), "{e}");
    }
}
