//! Looking inside a model: `model summary`, `model spec`, `inspect` and `gradcheck`.

use super::*;

#[derive(Args)]
pub(super) struct GradcheckArgs {
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
pub(super) struct InspectArgs {
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

pub(super) fn gradcheck(a: GradcheckArgs) -> Result<bool> {
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
pub(super) fn gradcheck_on<B: Backend>(
    be: &B,
    spec: &ModelSpec,
    a: &GradcheckArgs,
) -> Result<bool> {
    use fracture_cnn::gradcheck::{self, Probe, F32_TOL, LAYER_TOL, WIDE_TOL};
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
        println!(
            "\nthe whole model in f64 (the reference backend): the loss against the input and \
             every layer's parameters, by finite differences"
        );
        let mut wide = gradcheck::WideModel::new(spec, 3);
        let mut whole = report_rows(&wide.check_all(a.samples), WIDE_TOL);
        println!(
            "\nthe same gradients on {}, entry by entry against the f64 ones",
            be.name()
        );
        whole += report_rows(&gradcheck::against_wide(be, spec, 3), F32_TOL);
        failed += whole.failed;
        total += whole.total;
    }
    println!("\n{} of {total} gradient checks passed", total - failed);
    Ok(failed == 0)
}

/// How many of some gradient checks failed, of how many.
struct Tally {
    failed: usize,
    total: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.failed += other.failed;
        self.total += other.total;
    }
}

/// Prints each report with its verdict at `tol`.
fn report_rows(reports: &[fracture_cnn::gradcheck::Report], tol: f64) -> Tally {
    let mut failed = 0;
    for r in reports {
        let pass = r.passed(tol) && r.checked > 0;
        failed += usize::from(!pass);
        println!("{r}  {}", if pass { "pass" } else { "FAIL" });
    }
    Tally {
        failed,
        total: reports.len(),
    }
}

pub(super) fn inspect(a: InspectArgs) -> Result<()> {
    on_backend!(pick_backend_quietly(a.backend, true)?, |be| inspect_on(
        be, &a
    ))
}

pub(super) fn inspect_on<B: Backend>(be: &B, a: &InspectArgs) -> Result<()> {
    use fracture_cnn::{checkpoint, data::image, inspect};
    let model = eval::models_or_shipped(a.model.as_slice())?.remove(0);
    let (mut net, _) = checkpoint::load(be, &eval::checkpoint_path(&model))?;
    let img = image::open(&a.image)?;
    for path in inspect::inspect(be, &mut net, &img, &a.out)? {
        println!("{}", path.display());
    }
    Ok(())
}

pub(super) fn model_spec(model: &str) -> Result<()> {
    let spec = ModelSpec::load(model)?;
    println!(
        "# {}, written by `fracture-cnn model spec`: edit, then `train --model THIS-FILE`.\n\
         # Layer types and their options: src/nn/spec.rs (or the README's Models section).\n",
        spec.name
    );
    print!("{}", spec.to_toml()?);
    Ok(())
}

pub(super) fn model_summary(model: &str, image_size: Option<usize>) -> Result<()> {
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
