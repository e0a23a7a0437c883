//! A run's folder: made fresh, written as the run goes (configuration, checkpoints), read back
//! to resume a run exactly where it stopped, and to load the weights it ended with.

use super::*;
use crate::backend::Backend;
use crate::callbacks::Standing;
use crate::checkpoint::{self, CheckpointInfo};
use crate::columns::{self};
use crate::nn::{Model, ModelSpec};
use crate::optim::{Optimizer, WeightAverage};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a run stands: saved in `last.safetensors` after every epoch and on interruption, so that
/// `--resume` continues exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Batches of the next epoch already trained (when the run stopped inside an epoch).
    pub batches_done: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Sums over the trained batches of the unfinished epoch: loss × images, correct, images.
    pub epoch_loss_sum: f64,
    pub epoch_correct: usize,
    pub epoch_seen: usize,
    /// Where the between-epochs rules (best epoch, reduce-on-plateau, early stopping) stand.
    #[serde(flatten)]
    pub standing: Standing,
    /// The decision threshold chosen on validation after the last epoch.
    #[serde(default)]
    pub threshold: Option<f32>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            epochs_done: 0,
            batches_done: 0,
            steps: 0,
            epoch_loss_sum: 0.0,
            epoch_correct: 0,
            epoch_seen: 0,
            standing: Standing::default(),
            threshold: None,
        }
    }
}

/// The first free `runs/<model>-NNN` folder.
pub fn new_run_dir(out: &Path, model: &str) -> Result<PathBuf> {
    for n in 1..10_000 {
        let dir = out.join(format!("{model}-{n:03}"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
            return Ok(dir);
        }
    }
    bail!(
        "{} holds 9999 runs of {model} already: pass another --out",
        out.display()
    )
}

/// Continues the run in `run_dir` from its `last.safetensors`, with the run's own configuration
/// (and `epochs` in all, if given), exactly as if it had not stopped.
pub fn resume<B: Backend>(be: &B, run_dir: &Path, epochs: Option<usize>) -> Result<RunSummary> {
    let config_path = run_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read {}: --resume takes a run folder that `train` made",
            config_path.display()
        )
    })?;
    let saved: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let mut cfg: TrainConfig = serde_json::from_value(saved["config"].clone())
        .with_context(|| format!("{} holds no training configuration", config_path.display()))?;
    if let Some(e) = epochs {
        cfg.epochs = e;
    }
    validate(&cfg)?;
    let spec = run_spec(be, &cfg)?;
    let last = run_dir.join("last.safetensors");
    if !last.exists() {
        bail!(
            "{} does not exist: the run stopped before its first checkpoint; start it again",
            last.display()
        );
    }
    let (model, info, mut extra) = checkpoint::load_with_extra(be, &last)?;
    if info.spec != spec {
        bail!(
            "{} holds a model other than the run's {} ({}x{}): the run folder was changed",
            last.display(),
            spec.name,
            spec.input[1],
            spec.input[2]
        );
    }
    let progress: Progress = info
        .progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .with_context(|| format!("{} holds no training state to resume from", last.display()))?;
    if progress.standing.stopped_early {
        bail!(
            "the run in {} stopped early at epoch {} (its validation {} stopped improving)",
            run_dir.display(),
            progress.epochs_done,
            cfg.callbacks.monitor.name()
        );
    }
    if progress.epochs_done >= cfg.epochs {
        bail!(
            "the run in {} has finished its {} epochs: pass --epochs with a larger total to train on",
            run_dir.display(),
            progress.epochs_done
        );
    }
    let mut opt = Optimizer::new(cfg.optimizer, cfg.weight_decay);
    opt.restore(be, &model, progress.steps, &mut extra)
        .with_context(|| format!("cannot resume from {}", last.display()))?;
    let ema = cfg
        .regularise
        .ema
        .map(|d| WeightAverage::restore(be, &model, d, &mut extra))
        .transpose()
        .with_context(|| format!("cannot resume from {}", last.display()))?;
    let csv_path = run_dir.join("metrics.csv");
    let csv = std::fs::read_to_string(&csv_path)
        .unwrap_or_else(|_| format!("{}\n", columns::csv_header()));
    // Rows of epochs after the checkpoint's (none, unless a write was cut short) are dropped.
    let csv: String = csv
        .lines()
        .take(progress.epochs_done + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let (train_ds, val_ds, pos_weight) = load_data(&cfg, &spec)?;
    write_config(run_dir, be, &cfg, &spec, pos_weight)?;
    println!(
        "resuming {} after epoch {}{}",
        run_dir.display(),
        progress.epochs_done,
        if progress.batches_done > 0 {
            format!(" and {} batches of the next", progress.batches_done)
        } else {
            String::new()
        }
    );
    let state = RunState {
        model,
        opt,
        ema,
        progress,
        csv,
    };
    run(
        be,
        &cfg,
        &spec,
        (&train_ds, &val_ds, pos_weight),
        run_dir,
        state,
    )
}

pub(super) fn write_config<B: Backend>(
    run_dir: &Path,
    be: &B,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    pos_weight: f32,
) -> Result<()> {
    let config_json = serde_json::to_string_pretty(&serde_json::json!({
        "config": cfg, "spec": spec, "pos_weight": pos_weight, "backend": be.name(),
    }))?;
    crate::files::write_atomic(&run_dir.join("config.json"), config_json.as_bytes())
}

/// What a checkpoint of the run says about itself where it stands (no training state).
pub(super) fn run_info(spec: &ModelSpec, progress: &Progress) -> CheckpointInfo {
    CheckpointInfo {
        spec: spec.clone(),
        threshold: progress.threshold.unwrap_or(0.5),
        epoch: progress.epochs_done,
        progress: None,
    }
}

/// Saves the model with the optimiser's state and `progress` as `last.safetensors`.
pub(super) fn save_last<B: Backend>(
    be: &B,
    spec: &ModelSpec,
    state: &RunState<B>,
    run_dir: &Path,
) -> Result<()> {
    let info = CheckpointInfo {
        progress: Some(serde_json::to_string(&state.progress)?),
        ..run_info(spec, &state.progress)
    };
    let mut extra = state.opt.named_state(be, &state.model);
    if let Some(ema) = &state.ema {
        extra.extend(ema.named_state(be, &state.model));
    }
    checkpoint::save(
        be,
        &state.model,
        &info,
        extra,
        &run_dir.join("last.safetensors"),
    )
}

/// Saves the model as training left it (its averaged weights with `--ema`) as
/// `final.safetensors`: the model that cross-validation judges, chosen by no validation figure.
pub(super) fn save_final<B: Backend>(
    be: &B,
    spec: &ModelSpec,
    state: &mut RunState<B>,
    run_dir: &Path,
) -> Result<()> {
    let info = run_info(spec, &state.progress);
    let path = run_dir.join("final.safetensors");
    if let Some(ema) = &mut state.ema {
        ema.swap(&mut state.model);
    }
    let saved = checkpoint::save(be, &state.model, &info, Vec::new(), &path);
    if let Some(ema) = &mut state.ema {
        ema.swap(&mut state.model);
    }
    saved
}

/// The final model of the run in `run_dir` from its `last.safetensors`: its averaged weights
/// where the run kept an average (`--ema`), else its last weights.
pub fn load_final<B: Backend>(be: &B, run_dir: &Path) -> Result<(Model<B>, CheckpointInfo)> {
    let (mut model, info, extra) =
        checkpoint::load_with_extra(be, &run_dir.join("last.safetensors"))?;
    let names: Vec<String> = model.named_params().into_iter().map(|p| p.name).collect();
    for (name, p) in names.iter().zip(model.params_mut()) {
        if let Some(t) = WeightAverage::<B>::saved(&extra, name) {
            p.value = be.upload(&t);
        }
    }
    Ok((model, info))
}
