//! The `fracture-cnn` command line.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::gpu::{Gpu, GpuFault};
use fracture_cnn::backend::Backend;
use fracture_cnn::bench;
use fracture_cnn::callbacks::{Callbacks, Monitor, Plateau, Schedule};
use fracture_cnn::cv;
use fracture_cnn::data::Augment;
use fracture_cnn::eval;
use fracture_cnn::nn::ModelSpec;
use fracture_cnn::optim::OptimizerKind;
use fracture_cnn::train::{self, Sampling, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs `$body` with `$be` bound to the backend that `$picked` (from [`pick_backend`]) chose:
/// the GPU it returned, or else the CPU. Backends are types, so a command's code is compiled once
/// for each; this is the one place a command goes from the choice to the backend. (Training
/// names both itself, for its fall-back from a failed GPU to the CPU: see `on_gpu`.)
macro_rules! on_backend {
    ($picked:expr, |$be:ident| $body:expr) => {
        match $picked.as_ref() {
            Some(gpu) => {
                let $be: &Gpu = gpu;
                $body
            }
            None => {
                let $be = &Cpu;
                $body
            }
        }
    };
}

#[derive(Parser)]
#[command(
    name = "fracture-cnn",
    version,
    about = "Train and run a convolutional network that classifies bone X-rays as fractured or not, \
             on an engine written from scratch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a folder of X-rays (train/ and val/, each with fractured/ and not_fractured/).
    Train(Box<TrainArgs>),
    /// Cross-validate a training recipe: train/ and val/ pooled and cut into stratified folds
    /// (near-duplicates kept together), one model trained per fold and judged on its own fold.
    Cv(Box<CvArgs>),
    /// Inspect model architectures.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// List the GPU adapters wgpu sees, with the limits that matter to fracture-cnn.
    Devices,
    Eval(EvalArgs),
    Predict(PredictArgs),
    /// Prove a model's backward pass: finite-difference checks of every layer's gradients.
    Gradcheck(GradcheckArgs),
    /// Time every op of a model, a training step and an inference batch on the CPU and the GPU.
    Bench(BenchArgs),
    /// Pictures of what a trained network computes for one X-ray: each convolution's feature
    /// maps, the first layer's filters, histograms of every layer's weights and gradients.
    Inspect(InspectArgs),
    /// Inspect a data folder before training on it.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts per split and class, unusable files, image formats per class (shortcuts a model
    /// could learn) and near-duplicate images shared between splits.
    Check {
        /// The data folder (train/, val/ or valid/, optional test/; or class folders).
        dir: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// All the metrics of a trained model on a labelled folder.
#[derive(Args)]
struct EvalArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used); several
    /// --model average their probabilities (an ensemble) [default: the shipped model,
    /// models/fracatlas.safetensors].
    #[arg(long)]
    model: Vec<PathBuf>,
    /// A folder with fractured/ and not_fractured/ inside, or a data folder (its test/ split, or
    /// else its val/ split, is used).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Also write each image's label, probability and prediction to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Test-time augmentation: average each image's probability over the image, its mirror
    /// image and two small shifts.
    #[arg(long)]
    tta: bool,
    /// Folder for reliability.png (the calibration diagram) and roc.png [default: RUN_DIR/eval
    /// when --model is a run folder, else none].
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Resamples of the stratified bootstrap behind the 95 % intervals (at least 1000).
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    /// Seed of the bootstrap's resampling: the same seed gives the same intervals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunModelArgs,
}

#[derive(Args)]
struct GradcheckArgs {
    /// A built-in model or a spec file.
    #[arg(long, default_value = "fracturenet")]
    model: String,
    /// Input side for the checks (default: the smallest the model takes of 16, 32, 64, 94, 128).
    #[arg(long)]
    image_size: Option<usize>,
    /// Entries compared per tensor.
    #[arg(long, default_value_t = 6)]
    samples: usize,
    /// Also check the whole model end to end (slow for large models).
    #[arg(long)]
    whole_model: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendChoice,
}

#[derive(Args)]
struct InspectArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used) [default: the
    /// shipped model, models/fracatlas.safetensors].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The X-ray.
    image: PathBuf,
    /// Folder for the PNG files.
    #[arg(long, default_value = "runs/inspect")]
    out: PathBuf,
    /// Where to run: cpu, gpu, or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

/// What `bench` measures. Each backend runs in a process of its own (the command starts itself
/// again with --only), so that each reports its own peak memory.
#[derive(Args)]
struct BenchArgs {
    /// A built-in model or a spec file.
    #[arg(long, default_value = "fracturenet")]
    model: String,
    /// Batch of the training step and of the per-op measurements.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Side of the square input image (default: the model's own).
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long, default_value_t = 64)]
    infer_batch_size: usize,
    /// Untimed runs of each measurement first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// all: the CPU, and the GPU when there is an adapter (a software one too); or one of them.
    #[arg(long, value_enum, default_value = "all")]
    backend: BenchBackend,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also time each GPU kernel of a training step (timestamp queries).
    #[arg(long)]
    profile: bool,
    /// Worker threads of the CPU backend (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run one backend in this process and print its result for the parent process.
    #[arg(long, value_enum, hide = true)]
    only: Option<BenchBackend>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum BenchBackend {
    All,
    Cpu,
    Gpu,
}

/// How a trained model is run.
#[derive(Args)]
struct RunModelArgs {
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Where to run: cpu, gpu, or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

/// The probability that each image shows a fracture.
#[derive(Args)]
struct PredictArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used); several
    /// --model average their probabilities (an ensemble) [default: the shipped model,
    /// models/fracatlas.safetensors].
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Image files, or folders searched for images.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// One JSON object per line: {"file": ..., "probability": ..., "label": ...}.
    #[arg(long)]
    json: bool,
    /// Test-time augmentation: average each image's probability over the image, its mirror
    /// image and two small shifts.
    #[arg(long)]
    tta: bool,
    /// Also draw where the model looked (Grad-CAM of its last convolutional block over the
    /// X-ray) into this PNG; with several images, this is a folder that gets one PNG per image,
    /// named FOLDER-NAME.heatmap.png after the image's folder and name.
    #[arg(long, value_name = "OUT.png")]
    heatmap: Option<PathBuf>,
    #[command(flatten)]
    run: RunModelArgs,
}

/// Where the model runs.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum BackendChoice {
    /// The rayon CPU backend.
    Cpu,
    /// The WGSL backend on the first GPU adapter (fails if there is none).
    Gpu,
    /// A hardware GPU when there is one, otherwise the CPU.
    Auto,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print each layer's output shape, parameter count and forward FLOPs (like Keras' summary()).
    Summary {
        /// A built-in model (fracturenet, xray-bone-classifier, mobilenet, mobilenet-WIDTH) or a
        /// spec file (.toml or .json).
        #[arg(long, default_value = "fracturenet")]
        model: String,
        /// Side of the square input image (default: the model's own).
        #[arg(long)]
        image_size: Option<usize>,
    },
    /// Print a model's spec as TOML: a start for a model of your own (`> my-model.toml`, edit,
    /// then `train --model my-model.toml`).
    Spec {
        /// A built-in model or a spec file.
        #[arg(long, default_value = "fracturenet")]
        model: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SamplingName {
    Shuffle,
    Balanced,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerName {
    Adam,
    Sgd,
}

#[derive(Args)]
struct TrainArgs {
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
struct CvArgs {
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Every option of `train`; with --resume, a cross-validation folder (runs/cv-<model>-NNN)
    /// to continue.
    #[command(flatten)]
    train: TrainArgs,
}

/// Between epochs: the best checkpoint, the learning-rate schedule, early stopping.
#[derive(Args)]
struct CallbackArgs {
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
struct AugmentArgs {
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

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    Ok(())
}

/// How a training command ended, for the exit code.
enum Outcome {
    Done,
    Interrupted,
}

fn run_train(a: TrainArgs) -> Result<Outcome> {
    set_threads(a.threads)?;
    train::stop_on_signals()?;
    if let Some(dir) = &a.resume {
        refuse_resume_conflicts(&a, &dir.join("config.json"))?;
        let (dir, epochs) = (dir.clone(), a.epochs);
        let summary = match pick_backend(a.backend)? {
            Some(gpu) => on_gpu(a.backend, || train::resume(&gpu, &dir, epochs), &|| {
                train::resume(&Cpu, &dir, epochs)
            }),
            None => train::resume(&Cpu, &dir, epochs),
        }?;
        return Ok(outcome(&summary));
    }
    let cfg = train_config(&a)?;
    let summary = match pick_backend(a.backend)? {
        Some(gpu) => profiled(&gpu, a.profile, || {
            on_gpu(a.backend, || train::train(&gpu, &cfg), &|| {
                train::train(&Cpu, &cfg)
            })
        }),
        None => {
            if a.profile {
                eprintln!("warning: --profile times GPU kernels and this run is on the CPU; `fracture-cnn bench --backend cpu` times the CPU's ops");
            }
            train::train(&Cpu, &cfg)
        }
    }?;
    Ok(outcome(&summary))
}

/// With `--resume`, a run goes on as it was started: `--model`, `--image-size` or `--data` that
/// differ from the run's (in `config`, its config.json or cv.json) are refused, naming the flag.
fn refuse_resume_conflicts(a: &TrainArgs, config: &std::path::Path) -> Result<()> {
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
fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
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
    })
}

/// `cv`: a new cross-validation, or one continued.
fn run_cv(a: CvArgs) -> Result<Outcome> {
    set_threads(a.train.threads)?;
    train::stop_on_signals()?;
    let outcome = on_backend!(pick_backend(a.train.backend)?, |be| cv_on(be, &a))?;
    Ok(match outcome {
        cv::CvOutcome::Done(summary) => {
            print!("{}", cv::render(&summary));
            Outcome::Done
        }
        cv::CvOutcome::Interrupted(_) => Outcome::Interrupted,
    })
}

fn cv_on<B: Backend>(be: &B, a: &CvArgs) -> Result<cv::CvOutcome> {
    match &a.train.resume {
        Some(dir) => {
            refuse_resume_conflicts(&a.train, &dir.join("cv.json"))?;
            cv::resume(be, dir, a.train.epochs)
        }
        None => cv::start(be, &train_config(&a.train)?, a.folds),
    }
}

/// Runs `work` with every GPU kernel timed when `profile`, then prints the kernels' times.
fn profiled<R>(gpu: &Gpu, profile: bool, work: impl FnOnce() -> Result<R>) -> Result<R> {
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
/// `restart`, if it had none yet); under `--backend gpu` the error says how to resume.
fn on_gpu(
    choice: BackendChoice,
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
    let run = train::current_run();
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
            train::resume(&Cpu, &dir, None)
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
fn outcome(summary: &train::RunSummary) -> Outcome {
    if summary.interrupted {
        Outcome::Interrupted
    } else {
        Outcome::Done
    }
}

/// The GPU backend to use, or `None` for the CPU.
fn pick_backend(choice: BackendChoice) -> Result<Option<Gpu>> {
    match choice {
        BackendChoice::Cpu => Ok(None),
        BackendChoice::Gpu => Gpu::new()
            .context("--backend gpu: the GPU backend cannot start (try --backend cpu)")
            .map(Some),
        BackendChoice::Auto => match Gpu::new() {
            Ok(gpu) if is_hardware(&gpu) || software_gpu_allowed() => {
                println!(
                    "using GPU adapter {} ({:?})",
                    gpu.adapter_info().name,
                    gpu.adapter_info().backend
                );
                Ok(Some(gpu))
            }
            Ok(gpu) => {
                println!(
                    "only a software GPU adapter ({}) is present; using the CPU backend, which is faster \
                     (pass --backend gpu to use the adapter anyway)",
                    gpu.adapter_info().name
                );
                Ok(None)
            }
            Err(e) => {
                println!("no GPU adapter ({e:#}); using the CPU backend");
                Ok(None)
            }
        },
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    anyhow::ensure!(
        a.bootstrap >= 1000,
        "--bootstrap must be at least 1000 resamples, got {}",
        a.bootstrap
    );
    let models = eval::models_or_shipped(&a.model)?;
    let opts = eval::EvalOptions {
        batch: a.run.batch_size,
        tta: a.tta,
        csv: a.csv.clone(),
        figures: a
            .figures
            .clone()
            .or_else(|| models[0].is_dir().then(|| models[0].join("eval"))),
        bootstrap: fracture_cnn::metrics::Bootstrap {
            resamples: a.bootstrap,
            seed: a.seed,
        },
        quiet: a.json,
    };
    let picked = pick_backend_quietly(a.run.backend, a.json)?;
    let e = on_backend!(picked, |be| eval::evaluate(be, &models, &a.data, &opts))?;
    for (p, why) in &e.skipped {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    print!("{}", eval::render(&e));
    if let Some(csv) = &a.csv {
        println!("per-image predictions written to {}", csv.display());
    }
    if let Some(dir) = &opts.figures {
        println!(
            "figures: {} and {}",
            dir.join("reliability.png").display(),
            dir.join("roc.png").display()
        );
    }
    Ok(())
}

fn gradcheck(a: GradcheckArgs) -> Result<bool> {
    anyhow::ensure!(a.samples > 0, "--samples must be at least 1");
    let spec = ModelSpec::load(&a.model)?;
    let spec = match a.image_size {
        Some(s) => spec.with_image_size(s)?,
        None => [16, 32, 64, 94, 128]
            .iter()
            .find_map(|&s| spec.clone().with_image_size(s).ok())
            .unwrap_or(spec),
    };
    on_backend!(pick_backend(a.backend)?, |be| gradcheck_on(be, &spec, &a))
}

/// Prints one row per gradient checked; true when all pass.
fn gradcheck_on<B: Backend>(be: &B, spec: &ModelSpec, a: &GradcheckArgs) -> Result<bool> {
    use fracture_cnn::gradcheck::{self, Probe, LAYER_TOL, MODEL_TOL};
    println!(
        "gradient checks of {} at {}x{} on {}:\neach gradient entry against the central \
         difference (L(x+h) - L(x-h)) / 2h, L = sum of r * layer(x) for a random r; \
         pass when the relative error is at most {LAYER_TOL:e}\n",
        spec.name,
        spec.input[1],
        spec.input[2],
        be.name()
    );
    println!(
        "{:<3} {:<40} {:<8} {:>7} {:>6} {:>13} {:>13} {:>9}  result",
        "#",
        "layer on its input (batch 2)",
        "gradient",
        "checked",
        "kinks",
        "analytic",
        "numeric",
        "rel err"
    );
    let reports = gradcheck::model_layers(be, spec, 2, Probe::op(a.samples))?;
    let mut failed = 0;
    for (index, r) in &reports {
        let pass = r.passed(LAYER_TOL) && r.checked > 0;
        failed += usize::from(!pass);
        let case = r.case.trim_start_matches("layer ").replace(" x2", "");
        println!(
            "{index:<3} {case:<40} {:<8} {:>7} {:>6} {:>13.5e} {:>13.5e} {:>9.2e}  {}",
            r.wrt,
            r.checked,
            r.skipped,
            r.worst.0,
            r.worst.1,
            r.max_rel_err,
            if pass { "pass" } else { "FAIL" }
        );
    }
    let mut total = reports.len();
    if a.whole_model {
        println!("\nthe whole model: the loss against the input and every layer's parameters");
        let whole = gradcheck::model(be, spec, 3, Probe::model(a.samples));
        for r in &whole {
            let pass = r.passed(MODEL_TOL.1);
            failed += usize::from(!pass);
            println!("{r}  {}", if pass { "pass" } else { "FAIL" });
        }
        println!(
            "(through a whole model f32 rounding adds up and kinks are near: the tolerance is {:e})",
            MODEL_TOL.1
        );
        total += whole.len();
    }
    println!("\n{} of {total} gradient checks passed", total - failed);
    Ok(failed == 0)
}

fn inspect(a: InspectArgs) -> Result<()> {
    on_backend!(pick_backend_quietly(a.backend, true)?, |be| inspect_on(
        be, &a
    ))
}

fn inspect_on<B: Backend>(be: &B, a: &InspectArgs) -> Result<()> {
    use fracture_cnn::{checkpoint, data::image, inspect};
    let model = eval::models_or_shipped(a.model.as_slice())?.remove(0);
    let (mut net, _) = checkpoint::load(be, &eval::checkpoint_path(&model))?;
    let img = image::open(&a.image)?;
    for path in inspect::inspect(be, &mut net, &img, &a.out)? {
        println!("{}", path.display());
    }
    Ok(())
}

fn bench_config(a: &BenchArgs) -> Result<bench::BenchConfig> {
    anyhow::ensure!(
        a.batch_size > 0 && a.infer_batch_size > 0,
        "batch sizes must be at least 1"
    );
    anyhow::ensure!(a.repeats > 0, "--repeats must be at least 1");
    let mut spec = ModelSpec::load(&a.model)?;
    if let Some(s) = a.image_size {
        spec = spec.with_image_size(s)?;
    }
    Ok(bench::BenchConfig {
        spec,
        batch: a.batch_size,
        infer_batch: a.infer_batch_size,
        warmup: a.warmup,
        repeats: a.repeats,
    })
}

/// Runs each backend in a child process and prints their results side by side.
fn bench(a: BenchArgs) -> Result<()> {
    let cfg = bench_config(&a)?;
    if let Some(only) = a.only {
        return bench_child(&a, only, &cfg);
    }
    let wanted = match a.backend {
        BenchBackend::All => vec![BenchBackend::Cpu, BenchBackend::Gpu],
        one => vec![one],
    };
    let mut report = bench::Report {
        model: cfg.spec.name.clone(),
        batch_size: cfg.batch,
        image_size: cfg.spec.input[1],
        infer_batch_size: cfg.infer_batch,
        warmup: cfg.warmup,
        repeats: cfg.repeats,
        cpu: cpu_model_name(),
        threads: a.threads.unwrap_or_else(rayon::current_num_threads),
        backends: bench::Backends::default(),
        notes: Vec::new(),
    };
    for which in wanted {
        let name = format!("{which:?}").to_lowercase();
        let exe = std::env::current_exe().context("cannot find the fracture-cnn executable")?;
        let output = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .args(["--only", &name])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot start the {name} benchmark"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let result: bench::ChildResult = serde_json::from_str(line)
            .map_err(|_| anyhow::anyhow!("the {name} benchmark failed ({})", output.status))?;
        match (which, result) {
            (BenchBackend::Gpu, bench::ChildResult::Unavailable(why))
                if a.backend == BenchBackend::All =>
            {
                report.notes.push(format!("no GPU: {why}; the CPU only"));
            }
            (_, bench::ChildResult::Unavailable(why)) => anyhow::bail!("{why}"),
            (BenchBackend::Gpu, bench::ChildResult::Report(r)) => report.backends.gpu = Some(*r),
            (_, bench::ChildResult::Report(r)) => report.backends.cpu = Some(*r),
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// One backend's measurements, printed as one line of JSON for the parent process.
fn bench_child(a: &BenchArgs, which: BenchBackend, cfg: &bench::BenchConfig) -> Result<()> {
    set_threads(a.threads)?;
    let bar = bench_bar(which, cfg, a.quiet);
    let mut tick = |name: &str| {
        bar.set_message(name.to_string());
        bar.inc(1);
    };
    let result = if which == BenchBackend::Gpu {
        match Gpu::new() {
            Err(e) => bench::ChildResult::Unavailable(format!("{e:#}")),
            Ok(gpu) => {
                bench::ChildResult::Report(Box::new(bench_gpu(&gpu, cfg, a.profile, &mut tick)?))
            }
        }
    } else {
        let mut r = bench::run(&Cpu, &bench::WallClock(&Cpu), cfg, &mut tick)?;
        let (gemm, peak) = bench::cpu_peak();
        (r.gemm_gflops, r.peak_gflops) = (Some(gemm), Some(peak));
        bench::ChildResult::Report(Box::new(r))
    };
    bar.finish_and_clear();
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// The GPU's measurements: whole steps by the wall clock, ops by timestamp queries where the
/// adapter has them.
fn bench_gpu(
    gpu: &Gpu,
    cfg: &bench::BenchConfig,
    profile: bool,
    tick: &mut dyn FnMut(&str),
) -> Result<bench::BackendReport> {
    let whole = bench::run_whole(gpu, cfg, tick)?;
    let timestamps = gpu.start_profiling();
    let (ops, timer) = match &timestamps {
        Ok(()) => (
            bench::run_ops(gpu, &bench::GpuClock(gpu), cfg, tick)?,
            "gpu timestamps",
        ),
        Err(_) => (
            bench::run_ops(gpu, &bench::WallClock(gpu), cfg, tick)?,
            "wall clock",
        ),
    };
    let mut report = bench::BackendReport::new(gpu.name(), timer, cfg, &whole, ops)?;
    if profile {
        timestamps.context("--profile")?;
        report.kernels = Some(bench::profile_training_step(gpu, cfg)?);
    }
    Ok(report)
}

fn bench_bar(which: BenchBackend, cfg: &bench::BenchConfig, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(bench::steps(cfg) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("bench {which:?}").to_lowercase());
    bar
}

/// The processor's name as the OS gives it (Linux), else the architecture.
fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn data_check(dir: &std::path::Path, quiet: bool) -> Result<()> {
    let report = fracture_cnn::data::check::check(dir, quiet)?;
    println!("data check: {}\n", dir.display());
    print!("{}", report.render());
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let batch = a.run.batch_size;
    let models = eval::models_or_shipped(&a.model)?;
    let picked = pick_backend_quietly(a.run.backend, true)?;
    let (predictions, failed) = on_backend!(picked, |be| eval::predict(
        be, &models, &a.paths, batch, a.tta
    ))?;
    for (p, why) in &failed {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    for p in &predictions {
        if a.json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            println!("{:.4}  {:<13}  {}", p.probability, p.label, p.file);
        }
    }
    if predictions.is_empty() {
        anyhow::bail!("none of the {} image files could be read", failed.len());
    }
    if let Some(out) = &a.heatmap {
        let files: Vec<PathBuf> = predictions.iter().map(|p| PathBuf::from(&p.file)).collect();
        on_backend!(picked, |be| heatmaps(be, &models[0], &files, out))?;
    }
    Ok(())
}

/// Writes a Grad-CAM heatmap of each image: to `out` for one image, else into the folder `out`.
fn heatmaps<B: Backend>(
    be: &B,
    model: &std::path::Path,
    files: &[PathBuf],
    out: &std::path::Path,
) -> Result<()> {
    use fracture_cnn::{checkpoint, data::image, explain, plots};
    let (mut net, info) = checkpoint::load(be, &eval::checkpoint_path(model))?;
    if files.len() > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let mut taken = std::collections::HashSet::new();
    for file in files {
        let path = if files.len() == 1 {
            out.to_path_buf()
        } else {
            // class folders often hold files of the same name: the folder's name goes first,
            // and a number after any name already written
            let stem = file.file_stem().unwrap_or_default().to_string_lossy();
            let folder = file
                .parent()
                .and_then(|p| p.file_name())
                .unwrap_or_default();
            let name = format!("{}-{stem}", folder.to_string_lossy());
            let unique = (1..)
                .map(|i| {
                    if i == 1 {
                        name.clone()
                    } else {
                        format!("{name}-{i}")
                    }
                })
                .find(|n| taken.insert(n.clone()))
                .expect("some name is free");
            out.join(format!("{unique}.heatmap.png"))
        };
        let img = image::open(file)?;
        let e = explain::explain(be, &mut net, &img)?;
        let label = eval::class_name(e.probability >= info.threshold);
        let text = format!("{label}  p = {:.3}", e.probability);
        plots::write_labelled_png(&path, explain::overlay(&img, &e, 768), &text)?;
        eprintln!("heatmap of {}: {}", file.display(), path.display());
    }
    Ok(())
}

/// `pick_backend`, with its notes on standard error when standard output is for a program.
fn pick_backend_quietly(choice: BackendChoice, quiet: bool) -> Result<Option<Gpu>> {
    if quiet && choice == BackendChoice::Auto {
        // the CPU unless there is a hardware GPU, without a line on standard output
        return Ok(Gpu::new()
            .ok()
            .filter(|g| is_hardware(g) || software_gpu_allowed()));
    }
    pick_backend(choice)
}

fn is_hardware(gpu: &Gpu) -> bool {
    gpu.adapter_info().device_type != wgpu::DeviceType::Cpu
}

/// `FRACTURE_SOFTWARE_GPU=1` lets `--backend auto` take a software adapter (lavapipe), which it
/// otherwise passes over for the faster CPU backend (useful for testing the GPU path).
fn software_gpu_allowed() -> bool {
    std::env::var("FRACTURE_SOFTWARE_GPU").is_ok_and(|v| v == "1")
}

fn devices() -> Result<()> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        println!("no GPU adapters found; the CPU backend will be used");
        println!("(on Linux without a GPU, Mesa's lavapipe provides a software one: apt-get install mesa-vulkan-drivers)");
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        let f = a.features();
        println!(
            "[{i}] {} — {:?}, {:?}",
            info.name, info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    largest storage binding {} MiB, largest buffer {} MiB, workgroups per dimension {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroups_per_dimension
        );
        println!(
            "    invocations per workgroup {}, workgroup memory {} KiB, storage buffers per stage {}",
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "    timestamp queries: {}, f16 shaders: {}",
            f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f.contains(wgpu::Features::SHADER_F16)
        );
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn model_spec(model: &str) -> Result<()> {
    let spec = ModelSpec::load(model)?;
    println!(
        "# {}, written by `fracture-cnn model spec`: edit, then `train --model THIS-FILE`.\n\
         # Layer types and their options: src/nn/spec.rs (or the README's Models section).\n",
        spec.name
    );
    print!("{}", spec.to_toml()?);
    Ok(())
}

fn model_summary(model: &str, image_size: Option<usize>) -> Result<()> {
    let mut spec = ModelSpec::load(model)?;
    if let Some(s) = image_size {
        spec = spec.with_image_size(s)?;
    }
    let layers = spec.layers()?;
    println!(
        "Model: {}   input {:?} (channels, height, width)",
        spec.name, spec.input
    );
    let rule = "─".repeat(88);
    println!("{rule}");
    println!(
        "{:<4}{:<30}{:<10}{:<20}{:>11}{:>13}",
        "#", "layer", "from", "output shape", "params", "FLOPs"
    );
    println!("{rule}");
    for l in &layers {
        let shape = format!("{:?}", l.output);
        // where the inputs come from, when not just the layer before: a residual graph's branches
        let from = if l.sources == [l.index.checked_sub(1)] {
            String::new()
        } else {
            let names: Vec<String> = l
                .sources
                .iter()
                .map(|s| s.map_or("input".into(), |j| j.to_string()))
                .collect();
            names.join(" + ")
        };
        let what = match &l.branch {
            Some(b) if b != &l.input => format!("{} (1x1 proj.)", l.spec.describe()),
            _ => l.spec.describe(),
        };
        println!(
            "{:<4}{:<30}{:<10}{:<20}{:>11}{:>13}",
            l.index,
            what,
            from,
            shape,
            thousands((l.trainable_params + l.fixed_params) as u64),
            thousands(l.flops)
        );
    }
    println!("{rule}");
    let (trainable, fixed) = spec.param_counts()?;
    let flops: u64 = layers.iter().map(|l| l.flops).sum();
    println!("Total params: {}", thousands((trainable + fixed) as u64));
    println!("Trainable params: {}", thousands(trainable as u64));
    println!(
        "Non-trainable params: {} (batch-norm running statistics)",
        thousands(fixed as u64)
    );
    println!(
        "Forward FLOPs per image: {} ({:.3} GFLOP)",
        thousands(flops),
        flops as f64 / 1e9
    );
    Ok(())
}

/// Restores the default action of SIGPIPE, so that `fracture-cnn ... | head` ends quietly when
/// `head` exits instead of failing on a write to the closed pipe.
fn quiet_broken_pipes() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default is async-signal-safe and done before
    // any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A bug, not a user error: one line naming it and where, without a backtrace.
fn report_panics_briefly() {
    std::panic::set_hook(Box::new(|info| {
        if info.payload().is::<GpuFault>() {
            return; // caught and reported by the command (see `on_gpu`)
        }
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {what} (please report this as a bug)");
    }));
}

fn main() -> ExitCode {
    fracture_cnn::backend::cpu::keep_freed_memory();
    quiet_broken_pipes();
    report_panics_briefly();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => run_train(*a),
        Command::Cv(a) => run_cv(*a),
        Command::Model {
            command: ModelCommand::Summary { model, image_size },
        } => model_summary(&model, image_size).map(|_| Outcome::Done),
        Command::Model {
            command: ModelCommand::Spec { model },
        } => model_spec(&model).map(|_| Outcome::Done),
        Command::Devices => devices().map(|_| Outcome::Done),
        Command::Eval(a) => eval(a).map(|_| Outcome::Done),
        Command::Gradcheck(a) => gradcheck(a).and_then(|ok| {
            anyhow::ensure!(ok, "some gradient checks failed");
            Ok(Outcome::Done)
        }),
        Command::Data {
            command: DataCommand::Check { dir, quiet },
        } => data_check(&dir, quiet).map(|_| Outcome::Done),
        Command::Predict(a) => predict(a).map(|_| Outcome::Done),
        Command::Bench(a) => bench(a).map(|_| Outcome::Done),
        Command::Inspect(a) => inspect(a).map(|_| Outcome::Done),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        // 128 + SIGINT, as shells report a program stopped by Ctrl-C
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
