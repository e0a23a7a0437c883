//! The training loop: mini-batches through forward, loss, backward and the optimiser, then the
//! validation metrics, a line of figures and checkpoints after every epoch.

use crate::backend::{hash, Backend};
use crate::callbacks::{Callbacks, Standing};
use crate::checkpoint::{self, CheckpointInfo};
use crate::columns::{self, EpochReport};
use crate::data::{augment, Augment, DataDir, Dataset, Framing, Split, Square};
use crate::metrics::{self, Metrics};
use crate::nn::{loss, Mode, Model, ModelSpec};
use crate::optim::{Optimizer, OptimizerKind, WeightAverage};
use crate::plots;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything that defines a training run (saved as `config.json` in the run folder).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: PathBuf,
    /// A built-in model name or a spec file.
    pub model: String,
    /// Side of the square input; `None` keeps the spec's.
    pub image_size: Option<usize>,
    /// How X-rays are made square; `None` keeps the spec's.
    #[serde(default)]
    pub framing: Option<Framing>,
    /// The input's side as a fraction of the framed X-ray's (random windows in training, the
    /// centre one when judging); `None` keeps the spec's.
    #[serde(default)]
    pub crop: Option<f32>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
    /// Folder under which the run folder is made.
    pub out: PathBuf,
    /// Weight of fractured samples in the loss; `None` = #not fractured / #fractured in train.
    pub pos_weight: Option<f32>,
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    /// No progress bars (the per-epoch lines are still printed).
    pub quiet: bool,
    /// Largest global L2 norm of the gradients; larger ones are scaled down to it.
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
    /// Random changes to each training image (validation images are never changed).
    #[serde(default = "no_augmentation")]
    pub augment: Augment,
    /// How training batches are drawn.
    #[serde(default)]
    pub sampling: Sampling,
    /// The monitored figure, learning-rate schedule, early stopping and reduce-on-plateau.
    #[serde(default)]
    pub callbacks: Callbacks,
    /// A fold of a cross-validation: train and val pooled, this fold validates, the rest trains.
    #[serde(default)]
    pub fold: Option<FoldPlan>,
    /// Ingredients of a recipe that generalises; each off by default.
    #[serde(default)]
    pub regularise: Regularise,
    /// The fractures' outlines (COCO) that a model with a fracture map learns from; `None`
    /// takes the one JSON file in `annotations/` beside the data.
    #[serde(default)]
    pub annotations: Option<PathBuf>,
    /// How the fracture map's loss is weighed.
    #[serde(default)]
    pub map_loss: MapLoss,
}

/// The fracture map's part of the loss (a model with a map only; see
/// [`crate::nn::loss::map_bce`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapLoss {
    /// Weight of the map's loss beside the image's.
    pub weight: f32,
    /// Weight of a fracture cell against a cell without one.
    pub pos_weight: f32,
    /// Weight of the pointing loss ([`crate::nn::loss::map_pointing`]: a softmax over each
    /// fractured image's cells against its outlines) beside the per-cell loss; 0 leaves it out.
    #[serde(default)]
    pub pointing: f32,
}

impl Default for MapLoss {
    fn default() -> Self {
        MapLoss {
            weight: 1.0,
            pos_weight: 10.0,
            pointing: 0.0,
        }
    }
}

/// Training ingredients meant to make a model hold on images it has not seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Regularise {
    /// Validate, save and judge an exponential moving average of the weights with this decay
    /// (e.g. 0.999), see [`WeightAverage`].
    pub ema: Option<f32>,
    /// Train towards y(1 − ε) + ε/2 instead of y ∈ {0, 1}: the model is not pushed to infinite
    /// logits on images whose label a radiologist might dispute.
    pub label_smoothing: f32,
    /// Mixup with Beta(α, α): each training image is blended with another of the batch, and so
    /// is its label (0 = off).
    pub mixup: f32,
    /// Epochs over which the learning rate rises linearly from 0 (per step) before its schedule.
    pub warmup: usize,
}

/// Which images a cross-validation fold's run trains and validates on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldPlan {
    /// 1-based.
    pub fold: usize,
    pub folds: usize,
    /// The `folds.csv` that assigns every pooled image a fold (see [`crate::data::folds`]).
    pub assignment: PathBuf,
}

/// How an epoch's training batches are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every image once, in a shuffled order (the imbalance is then met by the loss weight).
    #[default]
    Shuffle,
    /// Each draw from either class with equal chance (the loss weight is then 1 by default).
    Balanced,
}

fn no_augmentation() -> Augment {
    Augment::OFF
}

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

/// Set by Ctrl-C or SIGTERM: the training loop stops after its current step, saving its state.
static STOP: AtomicBool = AtomicBool::new(false);

/// The run folder of the run in progress (or last run) in this process, for a command that must
/// carry a run on elsewhere after a fault.
static CURRENT_RUN: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// The folder of the run this process started or resumed last.
pub fn current_run() -> Option<PathBuf> {
    CURRENT_RUN.lock().ok()?.clone()
}

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

/// Checks the numeric options before any work starts.
fn validate(cfg: &TrainConfig) -> Result<()> {
    if cfg.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if cfg.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", cfg.lr);
    }
    if let Some(w) = cfg.pos_weight {
        if !(w.is_finite() && w > 0.0) {
            bail!("--pos-weight must be a positive number or 'auto', got {w}");
        }
    }
    let r = &cfg.regularise;
    if let Some(d) = r.ema {
        if !(d > 0.0 && d < 1.0) {
            bail!("--ema takes a decay between 0 and 1 (e.g. 0.999), got {d}");
        }
    }
    if !(0.0..0.5).contains(&r.label_smoothing) {
        bail!(
            "--label-smoothing must be at least 0 and below 0.5, got {}",
            r.label_smoothing
        );
    }
    if !(r.mixup >= 0.0 && r.mixup.is_finite()) {
        bail!("--mixup takes an alpha of 0 (off) or more, got {}", r.mixup);
    }
    if r.warmup >= cfg.epochs {
        bail!(
            "--warmup ({} epochs) must be shorter than the run ({} epochs)",
            r.warmup,
            cfg.epochs
        );
    }
    if let Some(c) = cfg.crop {
        if !(crate::nn::spec::MIN_CROP..=1.0).contains(&c) {
            bail!(
                "--crop takes the input's side as a fraction of the framed X-ray's, from {} to 1 \
                 (e.g. 0.875), got {c}",
                crate::nn::spec::MIN_CROP
            );
        }
    }
    if let Some(c) = cfg.clip_grad_norm {
        if !(c.is_finite() && c > 0.0) {
            bail!("--clip-grad-norm must be a positive number, got {c}");
        }
    }
    let m = &cfg.map_loss;
    if !(m.weight.is_finite() && m.weight >= 0.0 && m.pos_weight.is_finite() && m.pos_weight > 0.0)
    {
        bail!(
            "--map-weight must be 0 or more and --map-pos-weight above 0, got {} and {}",
            m.weight,
            m.pos_weight
        );
    }
    if !(m.pointing.is_finite() && m.pointing >= 0.0) {
        bail!("--map-pointing must be 0 or more, got {}", m.pointing);
    }
    Ok(())
}

/// Refuses, before any work, a model and batch size that a backend cannot hold: one image's slice
/// of an activation or a weight tensor larger than one binding, or a whole activation larger than
/// one buffer. The message names the layer and what to change.
pub fn check_fits<B: Backend>(be: &B, spec: &ModelSpec, batch: usize) -> Result<()> {
    let Some(limits) = be.tensor_limits() else {
        return Ok(());
    };
    let mib = |values: usize| (values * 4) >> 20;
    for info in spec.layers()? {
        let layer = format!("layer {} ({})", info.index, info.spec.describe());
        let per_sample = info
            .input
            .iter()
            .product::<usize>()
            .max(info.output.iter().product());
        if per_sample.max(info.workspace) > limits.window {
            bail!(
                "{layer} needs {} MiB for one image, more than the {} MiB that {} can bind: \
                 lower --image-size",
                mib(per_sample.max(info.workspace)),
                mib(limits.window),
                be.name()
            );
        }
        if info.largest_param > limits.window {
            bail!(
                "{layer} has a weight tensor of {} MiB, more than the {} MiB that {} can bind: \
                 use a model with smaller layers (or a smaller --image-size if a dense layer \
                 follows the convolutions)",
                mib(info.largest_param),
                mib(limits.window),
                be.name()
            );
        }
        if batch * per_sample > limits.batch_tensor {
            bail!(
                "at batch size {batch}, {layer} holds {} MiB in one tensor, more than the {} MiB \
                 buffer limit of {}: lower --batch-size to {} or less, or --image-size",
                mib(batch * per_sample),
                mib(limits.batch_tensor),
                be.name(),
                (limits.batch_tensor / per_sample).max(1)
            );
        }
    }
    Ok(())
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

fn load_split(
    split: &Split,
    size: Square,
    what: &str,
    quiet: bool,
    cache_file: Option<PathBuf>,
) -> Result<Dataset> {
    for p in &split.skipped {
        eprintln!("warning: skipping {} (not an image file)", p.display());
    }
    let ds = Dataset::load(&split.samples, size, what, quiet, cache_file.as_deref());
    for (p, why) in &ds.failed {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    if !ds.failed.is_empty() {
        eprintln!(
            "warning: {} of the {what} images could not be read",
            ds.failed.len()
        );
    }
    if ds.positives() == 0 || ds.positives() == ds.len() {
        bail!("no usable images of one class are left in the {what} split");
    }
    Ok(ds)
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

/// The model spec of a run, with its image size applied and checked against the backend.
fn run_spec<B: Backend>(be: &B, cfg: &TrainConfig) -> Result<ModelSpec> {
    let mut spec = ModelSpec::load(&cfg.model)?;
    if let Some(size) = cfg.image_size {
        spec = spec.with_image_size(size)?;
    }
    if let Some(framing) = cfg.framing {
        spec.framing = framing;
    }
    if let Some(crop) = cfg.crop {
        spec.crop = crop;
    }
    if spec.input[0] != 1 || spec.input[1] != spec.input[2] {
        bail!(
            "model {} takes {:?} inputs; X-rays are loaded as 1 channel, square",
            spec.name,
            spec.input
        );
    }
    check_fits(be, &spec, cfg.batch_size)?;
    Ok(spec)
}

/// The decoded training and validation images (with their fracture-map targets when `spec` has
/// a map), and the positive-class weight of the loss.
pub fn load_data(cfg: &TrainConfig, spec: &ModelSpec) -> Result<(Dataset, Dataset, f32)> {
    let (mut train_ds, mut val_ds, pos_weight) = load_images(cfg, spec.square())?;
    if spec.map.is_some() {
        attach_outlines(cfg, spec, &mut train_ds, &mut val_ds)?;
    }
    Ok((train_ds, val_ds, pos_weight))
}

/// Attaches each image's fracture-map target from the outlines of `cfg`, saying how many of the
/// fractured images have one; an error when there are no outlines to learn from.
fn attach_outlines(
    cfg: &TrainConfig,
    spec: &ModelSpec,
    train_ds: &mut Dataset,
    val_ds: &mut Dataset,
) -> Result<()> {
    if cfg.regularise.mixup > 0.0 {
        bail!(
            "--mixup blends images, and a fracture map has no blended target: leave it off for {}",
            spec.name
        );
    }
    let Some(annotations) =
        crate::data::annotations::Annotations::find(&cfg.data, cfg.annotations.as_deref())?
    else {
        bail!(
            "{} learns where fractures are from their outlines, and none were found: put a COCO \
             file in {}, or pass --annotations FILE",
            spec.name,
            cfg.data.join("annotations").display()
        );
    };
    let infos = spec.layers()?;
    let map = spec.map_layer()?.map(|m| infos[m].output.clone());
    if let Some([_, mh, mw]) = map.as_deref() {
        let side = spec.input[1];
        if mh != mw || !side.is_multiple_of(*mh) {
            bail!(
                "{}'s fracture map is {mh}x{mw} on a {side}x{side} input: training it needs a \
                 square map whose cells each cover a whole number of pixels",
                spec.name
            );
        }
    }
    let unknown = train_ds.attach_outlines(&annotations, spec.framing);
    val_ds.attach_outlines(&annotations, spec.framing);
    let fractured = train_ds.positives();
    println!(
        "outlines: {} — {} of {fractured} fractured training images outlined{}",
        annotations.file.display(),
        fractured - unknown,
        if unknown > 0 {
            " (the others train the image's label only)"
        } else {
            ""
        }
    );
    if unknown == fractured {
        bail!(
            "none of the {fractured} fractured training images has an outline in {}: its \
             file names must match the images'",
            annotations.file.display()
        );
    }
    Ok(())
}

/// The decoded training and validation images, and the positive-class weight of the loss.
fn load_images(cfg: &TrainConfig, size: Square) -> Result<(Dataset, Dataset, f32)> {
    let dir = DataDir::open(&cfg.data)?;
    let cache_dir = cfg.out.join(".cache");
    let framed = (size.framed_side(), size.framing);
    let cache =
        |split_dir: &Path| Some(crate::data::cache::file_for(&cache_dir, split_dir, framed));
    let (train_ds, val_ds) = match &cfg.fold {
        None => {
            println!(
                "data: {} — train {} images ({} fractured, {} not), val {} images ({} fractured, {} not)",
                cfg.data.display(),
                dir.train.samples.len(),
                dir.train.count(1.0),
                dir.train.count(0.0),
                dir.val.samples.len(),
                dir.val.count(1.0),
                dir.val.count(0.0)
            );
            (
                load_split(&dir.train, size, "train", cfg.quiet, cache(&dir.train_dir))?,
                load_split(&dir.val, size, "val", cfg.quiet, cache(&dir.val_dir))?,
            )
        }
        Some(plan) => {
            let pooled =
                load_split(&dir.train, size, "train", cfg.quiet, cache(&dir.train_dir))?.concat(
                    load_split(&dir.val, size, "val", cfg.quiet, cache(&dir.val_dir))?,
                );
            let (train_ds, val_ds) = fold_split(&pooled, plan)?;
            println!(
                "data: {} pooled, fold {} of {} — train {} images ({} fractured), val {} images ({} fractured)",
                cfg.data.display(),
                plan.fold,
                plan.folds,
                train_ds.len(),
                train_ds.positives(),
                val_ds.len(),
                val_ds.positives()
            );
            (train_ds, val_ds)
        }
    };
    let pos_weight = cfg.pos_weight.unwrap_or_else(|| match cfg.sampling {
        Sampling::Balanced => 1.0,
        Sampling::Shuffle => {
            (train_ds.len() - train_ds.positives()) as f32 / train_ds.positives() as f32
        }
    });
    Ok((train_ds, val_ds, pos_weight))
}

/// The pooled images of a fold's run cut into (the other folds, this fold).
fn fold_split(pooled: &Dataset, plan: &FoldPlan) -> Result<(Dataset, Dataset)> {
    let assignment = crate::data::folds::Assignment::read(&plan.assignment)?;
    let fold_of = assignment.fold_of();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, path) in pooled.paths.iter().enumerate() {
        match fold_of.get(path.as_path()) {
            Some(&f) if f == plan.fold => val.push(i),
            Some(_) => train.push(i),
            None => bail!(
                "{} is not in {}: the data folder changed after the cross-validation began",
                path.display(),
                plan.assignment.display()
            ),
        }
    }
    let (train, val) = (pooled.subset(&train), pooled.subset(&val));
    for (ds, what) in [(&train, "training"), (&val, "validation")] {
        if ds.positives() == 0 || ds.positives() == ds.len() {
            bail!("fold {}'s {what} images hold one class only", plan.fold);
        }
    }
    Ok((train, val))
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
    validate(cfg)?;
    let spec = run_spec(be, cfg)?;
    let data = load_data(cfg, &spec)?;
    let run_dir = new_run_dir(&cfg.out, &spec.name)?;
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

fn write_config<B: Backend>(
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
fn run_info(spec: &ModelSpec, progress: &Progress) -> CheckpointInfo {
    CheckpointInfo {
        spec: spec.clone(),
        threshold: progress.threshold.unwrap_or(0.5),
        epoch: progress.epochs_done,
        progress: None,
    }
}

/// Saves the model with the optimiser's state and `progress` as `last.safetensors`.
fn save_last<B: Backend>(
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
fn save_final<B: Backend>(
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

/// The epochs of a run from where `state` stands.
fn run<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    (train_ds, val_ds, pos_weight): (&Dataset, &Dataset, f32),
    run_dir: &Path,
    mut state: RunState<B>,
) -> Result<RunSummary> {
    if let Ok(mut current) = CURRENT_RUN.lock() {
        *current = Some(run_dir.to_path_buf());
    }
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
