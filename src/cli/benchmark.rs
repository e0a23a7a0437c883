//! `bench`: each backend timed in a process of its own, the results side by side.

use super::*;

/// What `bench` measures. Each backend runs in a process of its own (the command starts itself
/// again with --only), so that each reports its own peak memory.
#[derive(Args)]
pub(super) struct BenchArgs {
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
    /// Instead of the backends: every way each convolution of the model can run on the CPU
    /// (algorithm, unfolding, weight-gradient method), each checked against the way the backend
    /// chooses, timed side by side in this process: --repeats rounds, each way once a round.
    #[arg(long)]
    plans: bool,
    /// Run one backend in this process and print its result for the parent process.
    #[arg(long, value_enum, hide = true)]
    only: Option<BenchBackend>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub(super) enum BenchBackend {
    All,
    Cpu,
    Gpu,
}

pub(super) fn bench_config(a: &BenchArgs) -> Result<bench::BenchConfig> {
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
pub(super) fn bench(a: BenchArgs) -> Result<()> {
    let cfg = bench_config(&a)?;
    if a.plans {
        return bench_plans(&a, &cfg);
    }
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

/// `--plans`: the ways of each convolution on the CPU, side by side ([`bench::plans`]).
fn bench_plans(a: &BenchArgs, cfg: &bench::BenchConfig) -> Result<()> {
    set_threads(a.threads)?;
    let cpu = cpu()?;
    let kernel = cpu.kernel();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_prefix("bench --plans");
    bar.set_style(
        ProgressStyle::with_template("{prefix} {spinner} {msg}").expect("a valid template"),
    );
    let mut tick = |layer: &str| bar.set_message(layer.to_string());
    let times = bench::plans::conv_plans(&cfg.spec, cfg.batch, &cpu, cfg.repeats, &mut tick)?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&times)?);
        return Ok(());
    }
    println!(
        "Convolutions of {} at {} pixels on the CPU ({}, {} threads, {}), batch {}: the best of {} \
         rounds, each way once a round",
        cfg.spec.name,
        cfg.spec.input[1],
        kernel.name(),
        rayon::current_num_threads(),
        cpu_model_name(),
        cfg.batch,
        cfg.repeats
    );
    print!("{}", bench::plans::render(&times));
    Ok(())
}

/// One backend's measurements, printed as one line of JSON for the parent process.
pub(super) fn bench_child(
    a: &BenchArgs,
    which: BenchBackend,
    cfg: &bench::BenchConfig,
) -> Result<()> {
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
        let cpu = cpu()?;
        let mut r = bench::run(&cpu, &bench::WallClock(&cpu), cfg, &mut tick)?;
        bench::measure_cpu_peak(cpu.kernel(), &mut r);
        bench::ChildResult::Report(Box::new(r))
    };
    bar.finish_and_clear();
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// The GPU's measurements: whole steps by the wall clock, ops by timestamp queries where the
/// adapter has them.
pub(super) fn bench_gpu(
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

pub(super) fn bench_bar(which: BenchBackend, cfg: &bench::BenchConfig, quiet: bool) -> ProgressBar {
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
pub(super) fn cpu_model_name() -> String {
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
