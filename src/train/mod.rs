//! The training loop: mini-batches through forward, loss, backward and the optimiser, then the
//! validation metrics, a line of figures and checkpoints after every epoch.

mod config;
mod data;
mod run_dir;

pub use config::*;
pub use data::*;
pub use run_dir::*;

use crate::backend::{hash, Backend};
use crate::checkpoint::{self, CheckpointInfo};
use crate::columns::{self, EpochReport};
use crate::data::{augment, Dataset};
use crate::metrics::{self, Metrics};
use crate::nn::{loss, Mode, Model, ModelSpec};
use crate::optim::{Optimizer, WeightAverage};
use crate::plots;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set by Ctrl-C or SIGTERM: the training loop stops after its current step, saving its state.
static STOP: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (SIGINT) and SIGTERM stop training cleanly after the current step; a second
/// Ctrl-C quits at once.
pub fn stop_on_signals() -> Result<()> {
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving the run (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")
}

/// What a finished (or interrupted) run leaves behind.
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// The epochs run by this call (not those before a resume).
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    /// Stopped by a signal; `last.safetensors` holds the state to resume from.
    pub interrupted: bool,
}

/// Mean loss and the predicted probabilities of `ds`, in eval mode (no dropout, running stats).
pub fn predict<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    ds: &Dataset,
    batch: usize,
) -> (f64, Vec<f32>) {
    let (mut probs, mut loss_sum) = (Vec::with_capacity(ds.len()), 0.0);
    for idx in ds.batches(batch, None) {
        let (x, y) = ds.batch(&idx);
        let logits = model.forward(be, be.upload(&x), Mode::Eval);
        let (l, _) = loss::bce_with_logits(be, &logits, &be.upload(&y), 1.0);
        loss_sum += l as f64 * idx.len() as f64;
        probs.extend(be.download(&logits).data.iter().map(|&z| loss::sigmoid(z)));
    }
    (loss_sum / ds.len().max(1) as f64, probs)
}

fn epoch_bar(images: usize, epoch: usize, epochs: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(images as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {msg} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{epoch}/{epochs}"));
    bar
}

/// The seed of step `step`'s dropout masks: a hash of the run's seed and the step in the low half
/// (so that every run and step draws other masks), the step itself in the high half (so that no
/// two steps of a run can share one).
fn step_seed(run_seed: u64, step: u64) -> u64 {
    hash::key(run_seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as u64 | step << 32
}

/// A model, its optimiser and where the run stands.
struct RunState<B: Backend> {
    model: Model<B>,
    opt: Optimizer<B>,
    /// The averaged weights, with `--ema`.
    ema: Option<WeightAverage<B>>,
    progress: Progress,
    /// metrics.csv as written so far.
    csv: String,
}

/// Trains `cfg.model` on `cfg.data` with backend `be` in a new run folder, printing one line per
/// epoch.
pub fn train<B: Backend>(be: &B, cfg: &TrainConfig) -> Result<RunSummary> {
    train_telling(be, cfg, &|_| {})
}

/// [`train`], telling `folder` the new run folder as soon as it is made, before the first step:
/// a caller that must carry the run on elsewhere when the backend fails mid-way (a GPU lost)
/// knows where it is, with nothing kept in a global.
pub fn train_telling<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    folder: &dyn Fn(&Path),
) -> Result<RunSummary> {
    validate(cfg)?;
    let spec = run_spec(be, cfg)?;
    let data = load_data(cfg, &spec)?;
    let run_dir = new_run_dir(&cfg.out, &spec.name)?;
    folder(&run_dir);
    start(be, cfg, &spec, data, &run_dir)
}

/// Like [`train`], in the run folder `run_dir` (made if it does not exist).
pub fn train_in<B: Backend>(be: &B, cfg: &TrainConfig, run_dir: &Path) -> Result<RunSummary> {
    validate(cfg)?;
    let spec = run_spec(be, cfg)?;
    let data = load_data(cfg, &spec)?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create the run folder {}", run_dir.display()))?;
    start(be, cfg, &spec, data, run_dir)
}

/// A new run from freshly initialised weights.
fn start<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    (train_ds, val_ds, pos_weight): (Dataset, Dataset, f32),
    run_dir: &Path,
) -> Result<RunSummary> {
    write_config(run_dir, be, cfg, spec, pos_weight)?;
    let model = Model::new(be, spec, cfg.seed)?;
    let state = RunState {
        ema: cfg
            .regularise
            .ema
            .map(|d| WeightAverage::new(be, &model, d)),
        model,
        opt: Optimizer::new(cfg.optimizer, cfg.weight_decay),
        progress: Progress::default(),
        csv: format!("{}\n", columns::csv_header()),
    };
    run(
        be,
        cfg,
        spec,
        (&train_ds, &val_ds, pos_weight),
        run_dir,
        state,
    )
}

/// The epochs of a run from where `state` stands.
fn run<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    (train_ds, val_ds, pos_weight): (&Dataset, &Dataset, f32),
    run_dir: &Path,
    mut state: RunState<B>,
) -> Result<RunSummary> {
    let (trainable, fixed) = spec.param_counts()?;
    let size = spec.input[1];
    println!(
        "model: {} on {size}x{size} ({trainable} trainable + {fixed} fixed parameters), backend: {}",
        spec.name,
        be.name()
    );
    println!(
        "training {} epochs, batch {}, lr {}, positive weight {pos_weight:.3}; run folder {}",
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        run_dir.display()
    );
    let mut reports: Vec<EpochReport> = Vec::new();
    let summary = |reports, best: Option<(f64, usize)>, interrupted| RunSummary {
        run_dir: run_dir.to_path_buf(),
        epochs: reports,
        best_epoch: best.map_or(0, |(_, e)| e),
        interrupted,
    };
    let cb = cfg.callbacks;
    let mut paced = false;
    while state.progress.epochs_done < cfg.epochs && !state.progress.standing.stopped_early {
        let epoch = state.progress.epochs_done + 1;
        let lr = cb.lr(cfg.lr, epoch, cfg.epochs, &state.progress.standing);
        let start = Instant::now();
        let seen_before = state.progress.epoch_seen;
        let data = (train_ds, pos_weight, lr);
        if let Stopped::Yes = train_epoch(be, cfg, spec, &mut state, data, epoch, run_dir)? {
            return Ok(summary(reports, state.progress.standing.best, true));
        }
        let images_per_s =
            (state.progress.epoch_seen - seen_before) as f64 / start.elapsed().as_secs_f64();
        // with --ema, the averaged weights are the model: validated, and saved as the best
        if let Some(ema) = &mut state.ema {
            ema.swap(&mut state.model);
        }
        let (mut report, probs) = validate_epoch(
            be,
            cfg,
            (&mut state.model, &state.progress),
            val_ds,
            (epoch, lr),
        );
        report.seconds = start.elapsed().as_secs_f64();
        report.train_images_per_s = images_per_s;
        let p = &mut state.progress;
        let threshold = report.threshold;
        println!("{}", columns::log_line(&report, cfg.epochs));
        // the first whole epoch this process ran sets the pace (a resumed one may be a part)
        if !paced && seen_before == 0 {
            paced = true;
            let early = cb.early_stopping.is_some();
            if let Some(line) = time_left(report.seconds, cfg.epochs - epoch, early) {
                println!("{line}");
            }
        }
        *p = Progress {
            epochs_done: epoch,
            steps: p.steps,
            standing: p.standing.clone(),
            threshold: Some(threshold),
            ..Progress::default()
        };
        let value = cb.monitor.value(&report.val);
        let decision = cb.after_epoch(&mut p.standing, epoch, value, cfg.lr);
        if decision.improved {
            save_best(
                be,
                spec,
                &state.model,
                &report,
                (&probs, &val_ds.labels),
                run_dir,
            )?;
        }
        if let Some(ema) = &mut state.ema {
            ema.swap(&mut state.model);
        }
        for line in cb.explain(&decision, &p.standing) {
            println!("{line}");
        }
        state.csv.push_str(&columns::csv_row(&report));
        state.csv.push('\n');
        crate::files::write_atomic(&run_dir.join("metrics.csv"), state.csv.as_bytes())?;
        warn_on_error(plots::training_curves(run_dir, &state.csv));
        save_last(be, spec, &state, run_dir)?;
        reports.push(report);
    }
    save_final(be, spec, &mut state, run_dir)?;
    let best = state.progress.standing.best;
    println!(
        "best validation {} {:.4} at epoch {}; saved {}",
        cb.monitor.name(),
        best.map_or(0.0, |(a, _)| a),
        best.map_or(0, |(_, e)| e),
        run_dir.join("best.safetensors").display()
    );
    Ok(summary(reports, best, false))
}

/// A duration as a person says it: "40 seconds", "25 minutes", "3.1 hours".
pub fn duration_in_words(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} seconds"),
        s if s < 90.0 * 60.0 => format!("{:.0} minutes", s / 60.0),
        s => format!("{:.1} hours", s / 3600.0),
    }
}

/// When the run should end at the pace of an epoch of `epoch_seconds`, with `epochs_left`: "the
/// run should end in about 25 minutes at this pace"; nothing when no epoch is left.
fn time_left(epoch_seconds: f64, epochs_left: usize, may_stop_early: bool) -> Option<String> {
    if epochs_left == 0 {
        return None;
    }
    let about = duration_in_words(epoch_seconds * epochs_left as f64);
    let early = if may_stop_early {
        " (sooner if early stopping ends it)"
    } else {
        ""
    };
    Some(format!(
        "the run should end in about {about} at this pace{early}"
    ))
}

/// Whether training stopped inside an epoch (Ctrl-C, SIGTERM), the run saved.
enum Stopped {
    Yes,
    No,
}

/// Trains epoch `epoch` from the batch `state.progress` stands at, one step per batch of
/// `train_ds` at the learning rate `lr`; on a stop request, saves the run and says how to resume.
fn train_epoch<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    state: &mut RunState<B>,
    (train_ds, pos_weight, lr): (&Dataset, f32, f32),
    epoch: usize,
    run_dir: &Path,
) -> Result<Stopped> {
    let bar = epoch_bar(train_ds.len(), epoch, cfg.epochs, cfg.quiet);
    bar.inc(state.progress.epoch_seen as u64);
    let epoch_seed = cfg.seed.wrapping_add(epoch as u64);
    let batches = match cfg.sampling {
        Sampling::Shuffle => train_ds.batches(cfg.batch_size, Some(epoch_seed)),
        Sampling::Balanced => train_ds.balanced_batches(cfg.batch_size, epoch_seed),
    };
    for (i, idx) in batches.iter().enumerate().skip(state.progress.batches_done) {
        if STOP.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            save_last(be, spec, state, run_dir)?;
            println!(
                "stopped during epoch {epoch} after {i} of {} batches; the run is saved in {}.\n\
                 continue it with: fracture-cnn train --resume {}",
                batches.len(),
                run_dir.join("last.safetensors").display(),
                run_dir.display()
            );
            return Ok(Stopped::Yes);
        }
        // Batch norm needs two samples to have a variance; a last batch of one is dropped.
        if idx.len() >= 2 {
            train_step(be, cfg, state, train_ds, idx, (pos_weight, lr), epoch)?;
            if crate::faults::stop_after_step(state.progress.steps) {
                STOP.store(true, Ordering::SeqCst);
            }
        }
        state.progress.batches_done = i + 1;
        bar.inc(idx.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Stopped::No)
}

/// The report of epoch `epoch` (trained at `lr`): its training figures, and the model's on
/// `val_ds` at 0.5 and at the threshold that maximises balanced accuracy there; with the
/// validation probabilities. (The timings are the caller's.)
fn validate_epoch<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    (model, p): (&mut Model<B>, &Progress),
    val_ds: &Dataset,
    (epoch, lr): (usize, f32),
) -> (EpochReport, Vec<f32>) {
    let (val_loss, probs) = predict(be, model, val_ds, cfg.batch_size);
    let threshold = metrics::best_threshold(&probs, &val_ds.labels);
    let report = EpochReport {
        epoch,
        train_loss: p.epoch_loss_sum / p.epoch_seen.max(1) as f64,
        train_accuracy: p.epoch_correct as f64 / p.epoch_seen.max(1) as f64,
        val: Metrics::new(&probs, &val_ds.labels, 0.5, val_loss),
        threshold,
        at_threshold: Metrics::new(&probs, &val_ds.labels, threshold, val_loss),
        lr,
        seconds: 0.0,
        train_images_per_s: 0.0,
    };
    (report, probs)
}

/// The epoch's weights as the run's best (`best.safetensors`), with the ROC curve and the
/// confusion matrix of its validation `(probabilities, labels)`.
fn save_best<B: Backend>(
    be: &B,
    spec: &ModelSpec,
    model: &Model<B>,
    report: &EpochReport,
    (probs, labels): (&[f32], &[f32]),
    run_dir: &Path,
) -> Result<()> {
    let info = CheckpointInfo {
        spec: spec.clone(),
        threshold: report.threshold,
        epoch: report.epoch,
        progress: None,
    };
    checkpoint::save(
        be,
        model,
        &info,
        Vec::new(),
        &run_dir.join("best.safetensors"),
    )?;
    let at = &report.at_threshold;
    let point = (1.0 - at.specificity, at.recall);
    warn_on_error(plots::roc(run_dir, probs, labels, at.roc_auc, point));
    warn_on_error(plots::confusion(run_dir, &at.confusion, report.threshold));
    Ok(())
}

/// A figure that cannot be drawn is not worth stopping a run for.
fn warn_on_error(r: Result<()>) {
    if let Err(e) = r {
        eprintln!("warning: {e:#}");
    }
}

/// Checks that every gradient is finite, naming the first that is not (and its layer), and when
/// `clip` is given scales all of them down so that their global L2 norm is at most `clip`.
/// Returns the global norm before clipping.
pub fn check_and_clip_gradients<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    clip: Option<f32>,
) -> Result<f32> {
    let names: Vec<String> = model.named_params().into_iter().map(|p| p.name).collect();
    let mut params: Vec<_> = model
        .params_mut()
        .into_iter()
        .zip(names)
        .filter(|(p, _)| p.grad.is_some())
        .collect();
    let grads: Vec<&B::Tensor> = params.iter().filter_map(|(p, _)| p.grad.as_ref()).collect();
    let squares = be.squared_norms(&grads);
    if let Some((v, (_, name))) = squares.iter().zip(&params).find(|(v, _)| !v.is_finite()) {
        // names are "<layer index>.<kind>.<parameter>"
        let mut parts = name.splitn(3, '.');
        let (layer, kind, what) = (parts.next(), parts.next(), parts.next());
        bail!(
            "the gradient of the {} of layer {} ({}) became {}",
            what.unwrap_or(name),
            layer.and_then(|l| l.parse::<usize>().ok()).unwrap_or(0),
            kind.unwrap_or("?"),
            if v.is_nan() { "NaN" } else { "infinite" }
        );
    }
    let norm = squares.iter().map(|&v| v as f64).sum::<f64>().sqrt() as f32;
    if let Some(max) = clip.filter(|&max| norm > max) {
        for (p, _) in &mut params {
            if let Some(g) = p.grad.as_mut() {
                be.scale(g, max / norm);
            }
        }
    }
    Ok(norm)
}

/// One optimiser step on the batch `idx`, adding its loss and hits to the epoch's sums.
fn train_step<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    state: &mut RunState<B>,
    ds: &Dataset,
    idx: &[usize],
    (pos_weight, lr): (f32, f32),
    epoch: usize,
) -> Result<()> {
    let key = |i| Some(augment::key(cfg.seed, epoch, i));
    let (x, y) = ds.augmented_batch(idx, &cfg.augment, key);
    let map_targets = state
        .model
        .map_shape()
        .map(|shape| ds.map_targets(idx, &cfg.augment, key, shape[1]));
    let step = state.progress.steps + 1;
    let r = &cfg.regularise;
    let (x, y) = match r.mixup {
        0.0 => (x, y),
        alpha => augment::mixup(&x, &y, alpha, step_seed(!cfg.seed, step)),
    };
    let targets = augment::smooth_labels(&y, r.label_smoothing);
    let last_good = match state.progress.epochs_done {
        0 => "no checkpoint had been written yet".to_string(),
        n => format!("the run's last.safetensors, after epoch {n}, is the last good checkpoint"),
    };
    let seed = step_seed(cfg.seed, step);
    let (logits, map) = state
        .model
        .forward_with_map(be, be.upload(&x), Mode::Train { seed });
    let (l, dlogits) = loss::bce_with_logits(be, &logits, &be.upload(&targets), pos_weight);
    // the map's loss, weighed beside the image's: L = L_image + λ L_map
    let (map_loss, dmap) = match (map, map_targets) {
        (Some(map), Some((t, weights))) => {
            let m = &cfg.map_loss;
            let map = be.download(&map);
            let (mut lm, mut dm) = loss::map_bce(&map, &t, &weights, m.pos_weight);
            if m.pointing > 0.0 {
                let (lp, dp) = loss::map_pointing(&map, &t, &weights);
                lm += m.pointing * lp;
                dm.data
                    .iter_mut()
                    .zip(&dp.data)
                    .for_each(|(g, p)| *g += m.pointing * p);
            }
            dm.data.iter_mut().for_each(|g| *g *= m.weight);
            (m.weight * lm, Some(be.upload(&dm)))
        }
        _ => (0.0, None),
    };
    let l = l + map_loss;
    if !l.is_finite() {
        bail!(
            "the training loss became {l} at epoch {epoch}, step {step}: lower --lr ({last_good})"
        );
    }
    let z = be.download(&logits).data;
    let p = &mut state.progress;
    p.epoch_correct += z
        .iter()
        .zip(&y.data)
        .filter(|(z, y)| (**z >= 0.0) == (**y >= 0.5))
        .count();
    state.model.backward_with_map(be, (dlogits, dmap), false);
    check_and_clip_gradients(be, &mut state.model, cfg.clip_grad_norm).with_context(|| {
        format!(
            "training stopped at epoch {epoch}, step {step}: lower --lr or pass --clip-grad-norm \
             ({last_good})"
        )
    })?;
    // warm-up: the learning rate rises linearly over the first `warmup` epochs' steps
    let warmup_steps = (r.warmup * ds.len().div_ceil(cfg.batch_size)) as f32;
    let warm = (step as f32 / warmup_steps).min(1.0);
    state.opt.step(be, &mut state.model, lr * warm);
    if let Some(ema) = &mut state.ema {
        ema.update(be, &state.model, state.opt.t);
    }
    p.steps = state.opt.t;
    p.epoch_loss_sum += l as f64 * idx.len() as f64;
    p.epoch_seen += idx.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::time_left;

    #[test]
    fn the_time_left_is_the_epochs_left_at_the_first_epochs_pace_in_words() {
        assert_eq!(
            time_left(17.1, 89, false).unwrap(),
            "the run should end in about 25 minutes at this pace"
        );
        assert_eq!(
            time_left(2.5, 1, true).unwrap(),
            "the run should end in about 2 seconds at this pace (sooner if early stopping ends it)"
        );
        assert_eq!(
            time_left(25.0, 449, false).unwrap(),
            "the run should end in about 3.1 hours at this pace"
        );
        assert_eq!(time_left(17.1, 0, false), None);
    }
}
