//! `train` and `cv`: their options, the run configuration they build, and the fall-back of a
//! run whose GPU fails to the CPU.

use super::*;
use std::cell::RefCell;
use std::path::Path;

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum SamplingName {
    Shuffle,
    Balanced,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum OptimizerName {
    Adam,
    Sgd,
}

#[derive(Args)]
pub(super) struct TrainArgs {
    /// Data folder: train/ and val/ (or valid/), each holding fractured/ and not_fractured/
    /// [default: data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// A built-in model (fracturenet, xray-bone-classifier, mobilenet = MobileNet v1 at width 0.5,
    /// mobilenet-WIDTH for another width, resnet, resnet-WIDTH, resnet-WIDTH-DEPTH) or a spec
    /// file (.toml or .json) [default: fracturenet].
    #[arg(long)]
    model: Option<String>,
    /// Epochs to train [default: 10]; with --resume, the run's new total.
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f32,
    /// Side of the square input image (default: the model's own, 128 for fracturenet).
    #[arg(long)]
    image_size: Option<usize>,
    /// How an X-ray becomes square: squash (resize, aspect not kept), pad-edge or pad-reflect
    /// (aspect kept, the rest filled with the edge repeated or the image mirrored)
    /// [default: the model's own, squash].
    #[arg(long, value_enum)]
    framing: Option<fracture_cnn::data::Framing>,
    /// Random crops: the X-ray is framed in a square of side SIZE / FRACTION, and training sees a
    /// random SIZE × SIZE window of it at full resolution; judging (validation, eval, predict,
    /// serve) sees the centre window. In [0.5, 1] (e.g. 0.875: 192 out of 219) [default: the
    /// model's own, 1 = the whole square].
    #[arg(long, value_name = "FRACTION")]
    crop: Option<f32>,
    /// Seed of the weight initialisation, shuffling and dropout: the same seed gives the same run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folder in which a new run folder (<model>-NNN) is made.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    /// Worker threads of the CPU backend (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// How training batches are drawn: shuffle (every image once per epoch) or balanced (each
    /// draw from either class with equal chance).
    #[arg(long, value_enum, default_value = "shuffle")]
    sampling: SamplingName,
    /// Weight of fractured samples in the loss: a number, or 'auto' for #not fractured / #fractured
    /// (1 with --sampling balanced).
    #[arg(long, default_value = "auto")]
    pos_weight: String,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerName,
    /// Momentum of SGD (with --optimizer sgd).
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Decoupled weight decay (AdamW style for Adam, L2 for SGD).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Where to run: cpu, gpu, or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    #[command(flatten)]
    augment: AugmentArgs,
    #[command(flatten)]
    callbacks: CallbackArgs,
    /// Scale the gradients down whenever their global L2 norm exceeds this.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    /// Validate, save and judge an exponential moving average of the weights with this decay
    /// (e.g. 0.999).
    #[arg(long, value_name = "DECAY")]
    ema: Option<f32>,
    /// Train towards 1 - EPS/2 and EPS/2 instead of 1 and 0 (e.g. 0.1).
    #[arg(long, value_name = "EPS", default_value_t = 0.0)]
    label_smoothing: f32,
    /// Mixup: blend each training image and its label with another of the batch, by a weight
    /// drawn from Beta(ALPHA, ALPHA) (e.g. 0.2; 0 = off).
    #[arg(long, value_name = "ALPHA", default_value_t = 0.0)]
    mixup: f32,
    /// Raise the learning rate linearly from 0 over this many epochs' steps first.
    #[arg(long, value_name = "EPOCHS", default_value_t = 0)]
    warmup: usize,
    /// The fractures' outlines in COCO format, which a model with a fracture map (resnet-loc)
    /// learns from [default: the one JSON file in DATA/annotations/].
    #[arg(long, value_name = "COCO.json")]
    annotations: Option<PathBuf>,
    /// Weight of the fracture map's loss beside the image's (a model with a map).
    #[arg(long, value_name = "WEIGHT", default_value_t = 1.0)]
    map_weight: f32,
    /// Weight of a fracture's cells in the map's loss against cells without one (fractures
    /// cover about 1 % of an X-ray).
    #[arg(long, value_name = "WEIGHT", default_value_t = 10.0)]
    map_pos_weight: f32,
    /// Weight of the map's pointing loss beside its per-cell loss: a softmax over each fractured
    /// X-ray's cells against its outlines, which trains the hottest place to be the fracture's
    /// (0: left out; cross-validated on FracAtlas, 1 raised the pointing game from 0.46 to 0.61
    /// without moving ROC-AUC).
    #[arg(long, value_name = "WEIGHT", default_value_t = 1.0)]
    map_pointing: f32,
    /// Continue the run in this folder (runs/<model>-NNN) from its last.safetensors, with the
    /// run's own options (only --epochs, --backend, --threads and --quiet apply).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Time every GPU kernel with timestamp queries and print where the GPU time went (GPU
    /// backend; `fracture-cnn bench` times the CPU's ops).
    #[arg(long)]
    profile: bool,
}

/// `cv`: the folds, and the recipe as `train` takes it.
#[derive(Args)]
pub(super) struct CvArgs {
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Judge finished cross-validations again instead of training: each image's out-of-fold
    /// probability averaged over the fold models of every CV_DIR given (an ensemble, when there
    /// are several: they must share their folds), into a new cv-judge-NNN folder under --out.
    #[arg(long, value_name = "CV_DIR", num_args = 1.., conflicts_with = "resume")]
    judge: Vec<PathBuf>,
    #[command(flatten)]
    views: TestTimeViews,
    /// Compare two finished cross-validations of the same folds (or cv --judge folders), A then
    /// B: each fold's ROC-AUC under both, and B − A over all images pooled with a paired
    /// bootstrap interval. Trains nothing.
    #[arg(long, num_args = 2, value_names = ["CV_DIR_A", "CV_DIR_B"], conflicts_with_all = ["judge", "resume"])]
    compare: Vec<PathBuf>,
    /// Every option of `train`; with --resume, a cross-validation folder (runs/cv-<model>-NNN)
    /// to continue.
    #[command(flatten)]
    train: TrainArgs,
}

/// Between epochs: the best checkpoint, the learning-rate schedule, early stopping.
#[derive(Args)]
pub(super) struct CallbackArgs {
    /// Validation figure that picks the best checkpoint and drives early stopping and
    /// reduce-on-plateau: roc_auc, balanced_accuracy, accuracy, f1 or loss.
    #[arg(long, default_value = "roc_auc")]
    monitor: Monitor,
    /// Learning-rate schedule: constant, cosine, or step:EVERY:FACTOR (e.g. step:10:0.5).
    #[arg(long, default_value = "cosine")]
    lr_schedule: Schedule,
    /// Stop when the monitored figure has not improved for this many epochs.
    #[arg(long, value_name = "PATIENCE")]
    early_stopping: Option<usize>,
    /// Multiply the learning rate by --plateau-factor when the monitored figure has not improved
    /// for this many epochs.
    #[arg(long, value_name = "PATIENCE")]
    reduce_lr_on_plateau: Option<usize>,
    #[arg(long, default_value_t = 0.5)]
    plateau_factor: f32,
    /// The lowest learning rate reduce-on-plateau goes to.
    #[arg(long, default_value_t = 1e-6)]
    min_lr: f32,
}

impl CallbackArgs {
    fn callbacks(&self) -> Result<Callbacks> {
        anyhow::ensure!(
            self.plateau_factor > 0.0 && self.plateau_factor < 1.0,
            "--plateau-factor must be between 0 and 1, got {}",
            self.plateau_factor
        );
        anyhow::ensure!(
            self.early_stopping != Some(0) && self.reduce_lr_on_plateau != Some(0),
            "a patience must be at least 1 epoch"
        );
        Ok(Callbacks {
            monitor: self.monitor,
            schedule: self.lr_schedule,
            early_stopping: self.early_stopping,
            plateau: self.reduce_lr_on_plateau.map(|patience| Plateau {
                patience,
                factor: self.plateau_factor,
                min_lr: self.min_lr,
            }),
        })
    }
}

/// Augmentation of training images (validation images are never changed).
#[derive(Args)]
pub(super) struct AugmentArgs {
    /// Train on the images as they are: every transform below off.
    #[arg(long)]
    no_augment: bool,
    /// Mirror images left-right at random.
    #[arg(long, default_value_t = Augment::XRAY.hflip, action = clap::ArgAction::Set)]
    hflip: bool,
    /// Mirror images top-bottom at random.
    #[arg(long, default_value_t = Augment::XRAY.vflip, action = clap::ArgAction::Set)]
    vflip: bool,
    /// Largest random rotation, in degrees.
    #[arg(long, default_value_t = Augment::XRAY.rotation)]
    rotation: f32,
    /// Largest random shear, in degrees.
    #[arg(long, default_value_t = Augment::XRAY.shear)]
    shear: f32,
    /// Largest random zoom in or out, as a fraction.
    #[arg(long, default_value_t = Augment::XRAY.zoom)]
    zoom: f32,
    /// Largest random shift, as a fraction of the side (width and height alike).
    #[arg(long, default_value_t = Augment::XRAY.shift)]
    shift: f32,
    /// Largest random change of brightness (pixels are in [0, 1]).
    #[arg(long, default_value_t = Augment::XRAY.brightness)]
    brightness: f32,
    /// Largest random change of contrast, as a fraction.
    #[arg(long, default_value_t = Augment::XRAY.contrast)]
    contrast: f32,
}

impl AugmentArgs {
    fn augment(&self) -> Result<Augment> {
        if self.no_augment {
            return Ok(Augment::OFF);
        }
        for (flag, v, max) in [
            ("--rotation", self.rotation, 180.0),
            ("--shear", self.shear, 45.0),
            ("--zoom", self.zoom, 0.9),
            ("--shift", self.shift, 0.5),
            ("--brightness", self.brightness, 1.0),
            ("--contrast", self.contrast, 1.0),
        ] {
            anyhow::ensure!(
                (0.0..=max).contains(&v),
                "{flag} must be between 0 and {max}, got {v}"
            );
        }
        Ok(Augment {
            hflip: self.hflip,
            vflip: self.vflip,
            rotation: self.rotation,
            shear: self.shear,
            zoom: self.zoom,
            shift: self.shift,
            brightness: self.brightness,
            contrast: self.contrast,
        })
    }
}

pub(super) fn run_train(a: TrainArgs) -> Result<Outcome> {
    set_threads(a.threads)?;
    train::stop_on_signals()?;
    if let Some(dir) = &a.resume {
        refuse_resume_conflicts(&a, &dir.join("config.json"))?;
        let (dir, epochs) = (dir.clone(), a.epochs);
        let run = RefCell::new(Some(dir.clone()));
        let summary = match pick_backend(a.backend)? {
            Some(gpu) => on_gpu(
                a.backend,
                &run,
                || train::resume(&gpu, &dir, epochs),
                &|| train::resume(&cpu()?, &dir, epochs),
            ),
            None => train::resume(&cpu()?, &dir, epochs),
        }?;
        return Ok(outcome(&summary));
    }
    let cfg = train_config(&a)?;
    let summary = match pick_backend(a.backend)? {
        Some(gpu) => profiled(&gpu, a.profile, || {
            let run = RefCell::new(None);
            let told = |dir: &Path| *run.borrow_mut() = Some(dir.to_path_buf());
            on_gpu(
                a.backend,
                &run,
                || train::train_telling(&gpu, &cfg, &told),
                &|| train::train(&cpu()?, &cfg),
            )
        }),
        None => {
            if a.profile {
                eprintln!("warning: --profile times GPU kernels and this run is on the CPU; `fracture-cnn bench --backend cpu` times the CPU's ops");
            }
            train::train(&cpu()?, &cfg)
        }
    }?;
    Ok(outcome(&summary))
}

/// With `--resume`, a run goes on as it was started: `--model`, `--image-size` or `--data` that
/// differ from the run's (in `config`, its config.json or cv.json) are refused, naming the flag.
pub(super) fn refuse_resume_conflicts(a: &TrainArgs, config: &std::path::Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(config) else {
        return Ok(()); // resuming says what is missing
    };
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let run = &saved["config"];
    let same_path = |given: &PathBuf, saved: &serde_json::Value| {
        let saved = PathBuf::from(saved.as_str().unwrap_or_default());
        given.canonicalize().ok() == saved.canonicalize().ok()
    };
    let conflict = if a.model.as_deref().is_some_and(|m| run["model"] != m) {
        Some(("--model", run["model"].to_string()))
    } else if a.image_size.is_some_and(|s| run["image_size"] != s) {
        Some(("--image-size", run["image_size"].to_string()))
    } else if a.data.as_ref().is_some_and(|d| !same_path(d, &run["data"])) {
        Some(("--data", run["data"].to_string()))
    } else {
        None
    };
    match conflict {
        Some((flag, was)) => anyhow::bail!(
            "{flag} differs from the run's ({was}): --resume continues a run as it was started \
             (only --epochs, --backend, --threads and --quiet apply); start a new run instead"
        ),
        None => Ok(()),
    }
}

/// The training configuration that `train`'s options describe.
pub(super) fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    let pos_weight = match a.pos_weight.as_str() {
        "auto" => None,
        w => Some(
            w.parse::<f32>()
                .map_err(|_| anyhow::anyhow!("--pos-weight takes a number or 'auto', got '{w}'"))?,
        ),
    };
    let optimizer = match a.optimizer {
        OptimizerName::Adam => OptimizerKind::adam(),
        OptimizerName::Sgd => OptimizerKind::Sgd {
            momentum: a.momentum,
        },
    };
    // stored absolute, so that a run resumed from another folder finds its data
    let data = a.data.clone().unwrap_or_else(|| "data".into());
    let data = std::path::absolute(&data)
        .with_context(|| format!("data folder {} has no absolute path", data.display()))?;
    Ok(TrainConfig {
        data,
        model: a.model.clone().unwrap_or_else(|| "fracturenet".into()),
        image_size: a.image_size,
        framing: a.framing,
        crop: a.crop,
        epochs: a.epochs.unwrap_or(10),
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        out: a.out.clone(),
        pos_weight,
        optimizer,
        weight_decay: a.weight_decay,
        quiet: a.quiet,
        clip_grad_norm: a.clip_grad_norm,
        augment: a.augment.augment()?,
        sampling: match a.sampling {
            SamplingName::Shuffle => Sampling::Shuffle,
            SamplingName::Balanced => Sampling::Balanced,
        },
        callbacks: a.callbacks.callbacks()?,
        fold: None,
        regularise: train::Regularise {
            ema: a.ema,
            label_smoothing: a.label_smoothing,
            mixup: a.mixup,
            warmup: a.warmup,
        },
        annotations: a
            .annotations
            .as_deref()
            .map(std::path::absolute)
            .transpose()
            .context("the annotations have no absolute path")?,
        map_loss: train::MapLoss {
            weight: a.map_weight,
            pos_weight: a.map_pos_weight,
            pointing: a.map_pointing,
        },
    })
}

/// `cv`: a new cross-validation, or one continued.
pub(super) fn run_cv(a: CvArgs) -> Result<Outcome> {
    set_threads(a.train.threads)?;
    if let [first, second] = a.compare.as_slice() {
        let comparison =
            cv::compare::compare(first, second, fracture_cnn::metrics::Bootstrap::default())?;
        print!("{}", cv::compare::render(&comparison));
        return Ok(Outcome::Done);
    }
    train::stop_on_signals()?;
    if !a.judge.is_empty() {
        let summary = on_backend!(pick_backend(a.train.backend)?, |be| {
            cv::judge(be, &a.judge, a.views.tta, &a.train.out)
        })?;
        print!("{}", cv::render(&summary));
        return Ok(Outcome::Done);
    }
    let outcome = on_backend!(pick_backend(a.train.backend)?, |be| cv_on(be, &a))?;
    Ok(match outcome {
        cv::CvOutcome::Done(summary) => {
            print!("{}", cv::render(&summary));
            Outcome::Done
        }
        cv::CvOutcome::Interrupted(_) => Outcome::Interrupted,
    })
}

pub(super) fn cv_on<B: Backend>(be: &B, a: &CvArgs) -> Result<cv::CvOutcome> {
    match &a.train.resume {
        Some(dir) => {
            refuse_resume_conflicts(&a.train, &dir.join("cv.json"))?;
            cv::resume(be, dir, a.train.epochs, a.views.tta)
        }
        None => cv::start(be, &train_config(&a.train)?, a.folds, a.views.tta),
    }
}

/// Runs `work` with every GPU kernel timed when `profile`, then prints the kernels' times.
pub(super) fn profiled<R>(gpu: &Gpu, profile: bool, work: impl FnOnce() -> Result<R>) -> Result<R> {
    if profile {
        gpu.start_profiling().context("--profile")?;
    }
    let result = work()?;
    if let Some(kernels) = gpu.take_kernel_times() {
        println!("\nGPU time by kernel over the run (timestamp queries):");
        print!("{}", bench::report::render_kernel_times(&kernels));
    }
    Ok(result)
}

/// Runs `work` on the GPU. If the GPU fails on the way (device lost, out of memory), the run is
/// carried on on the CPU from its last checkpoint under `--backend auto` (from the start, by
/// `restart`, if it had none yet); under `--backend gpu` the error says how to resume. `run` holds
/// the run's folder once `work` has made it.
pub(super) fn on_gpu(
    choice: BackendChoice,
    run: &RefCell<Option<PathBuf>>,
    work: impl FnOnce() -> Result<train::RunSummary>,
    restart: &dyn Fn() -> Result<train::RunSummary>,
) -> Result<train::RunSummary> {
    let fault = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => return result,
        Err(payload) => match payload.downcast::<GpuFault>() {
            Ok(fault) => fault.0,
            Err(other) => std::panic::resume_unwind(other),
        },
    };
    let run = run.borrow().clone();
    let checkpoint = run
        .as_ref()
        .map(|dir| dir.join("last.safetensors"))
        .filter(|p| p.exists());
    match (choice, run, checkpoint) {
        (BackendChoice::Auto, Some(dir), Some(last)) => {
            eprintln!(
                "warning: {fault}; continuing on the CPU from {}",
                last.display()
            );
            train::resume(&cpu()?, &dir, None)
        }
        (BackendChoice::Auto, _, None) => {
            eprintln!("warning: {fault} before the first checkpoint; starting again on the CPU");
            restart()
        }
        (_, Some(dir), Some(_)) => anyhow::bail!(
            "{fault}. The run is saved up to its last checkpoint; continue it on the CPU with: \
             fracture-cnn train --resume {} --backend cpu",
            dir.display()
        ),
        _ => anyhow::bail!("{fault}; try --backend cpu"),
    }
}

pub(super) fn outcome(summary: &train::RunSummary) -> Outcome {
    if summary.interrupted {
        Outcome::Interrupted
    } else {
        Outcome::Done
    }
}
