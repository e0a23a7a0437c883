//! The command line: its commands and options (clap), and the one place each command goes from
//! `--backend` to a backend.

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
                let cpu = crate::cli::cpu()?;
                let $be = &cpu;
                $body
            }
        }
    };
}
mod benchmark;
mod deploy;
mod evaluate;
mod inspect;
mod training;

use self::benchmark::*;
use self::deploy::*;
use self::evaluate::*;
use self::inspect::*;
use self::training::*;

#[derive(Parser)]
#[command(
    name = "fracture-cnn",
    version,
    about = "Train and run a convolutional network that classifies bone X-rays as fractured or not, \
             on an engine written from scratch"
)]
pub(crate) struct Cli {
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
    Export(ExportArgs),
    Serve(ServeArgs),
    /// Set the decision threshold saved in a checkpoint: from a cross-validation of its recipe
    /// (`--from-cv`), or a value.
    Threshold(ThresholdArgs),
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
        /// Fracture outlines in COCO format, to report which fractured images have none
        /// [default: the one JSON file in DIR/annotations/, if any].
        #[arg(long, value_name = "COCO.json")]
        annotations: Option<PathBuf>,
    },
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

/// How a trained model is run.
#[derive(Args)]
struct RunModelArgs {
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Where to run: cpu, gpu, or auto (a hardware GPU if there is one, else the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
}

/// Whether each image is judged over its test-time views (`eval`, `predict`, `serve`, `cv`).
#[derive(Args)]
struct TestTimeViews {
    /// Test-time augmentation: average each image's probability over the image, its mirror
    /// image and two shifts of 1/32 of its side (cross-validated: +0.003 to +0.006 ROC-AUC on
    /// every recipe tried, every fold up on the shipped one); `--tta false` judges the image
    /// alone, four times faster.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    tta: bool,
}

/// How a training command ended, for the exit code.
pub(crate) enum Outcome {
    Done,
    Interrupted,
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

/// The GPU backend to use, or `None` for the CPU.
/// The CPU backend as the environment configures it: `FRACTURE_CPU_KERNEL`,
/// `FRACTURE_CONV_ALGORITHM` and `FRACTURE_CONV_UNFOLDING` ([`Cpu::from_env`]), for benchmarks.
pub(crate) fn cpu() -> Result<Cpu> {
    Cpu::from_env().map_err(anyhow::Error::msg)
}

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

/// Runs the command `cli` names.
pub(crate) fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
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
            command:
                DataCommand::Check {
                    dir,
                    quiet,
                    annotations,
                },
        } => data_check(&dir, annotations.as_deref(), quiet).map(|_| Outcome::Done),
        Command::Predict(a) => predict(a).map(|_| Outcome::Done),
        Command::Bench(a) => bench(a).map(|_| Outcome::Done),
        Command::Inspect(a) => inspect(a).map(|_| Outcome::Done),
        Command::Export(a) => export(a).map(|_| Outcome::Done),
        Command::Serve(a) => serve(a).map(|_| Outcome::Done),
        Command::Threshold(a) => threshold(a).map(|_| Outcome::Done),
    }
}
