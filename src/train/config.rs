//! What a training run is asked to do: its configuration (saved as `config.json`), checked
//! before anything is loaded, and the model spec it trains.

use crate::backend::Backend;
use crate::callbacks::Callbacks;
use crate::data::{Augment, Framing};
use crate::nn::ModelSpec;
use crate::optim::OptimizerKind;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// 1 by default (cross-validated at 30 epochs: the pointing game 0.46 → 0.61, ROC-AUC
    /// +0.005 [−0.003, +0.013]); a run
    /// saved before it existed had none, and resumes without it.
    #[serde(default)]
    pub pointing: f32,
}

impl Default for MapLoss {
    fn default() -> Self {
        MapLoss {
            weight: 1.0,
            pos_weight: 10.0,
            pointing: 1.0,
        }
    }
}

/// Training ingredients meant to make a model hold on images it has not seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Regularise {
    /// Validate, save and judge an exponential moving average of the weights with this decay
    /// (e.g. 0.999), see [`WeightAverage`](crate::optim::WeightAverage).
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

pub(super) fn no_augmentation() -> Augment {
    Augment::OFF
}

/// Checks the numeric options before any work starts.
pub(super) fn validate(cfg: &TrainConfig) -> Result<()> {
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

/// The model spec of a run, with its image size applied and checked against the backend.
pub(super) fn run_spec<B: Backend>(be: &B, cfg: &TrainConfig) -> Result<ModelSpec> {
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
