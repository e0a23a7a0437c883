//! `serve` (the page and its API) and `export` (ONNX).

use super::*;

/// Write a trained model as an ONNX file (opset 13) that other runtimes run: input `image`
/// [N, 1, H, W] float32 (gray in [0, 1]), output `probability` [N, 1]; the preprocessing and the
/// decision threshold are in its metadata_props.
#[derive(Args)]
pub(super) struct ExportArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used) [default: the
    /// shipped model, models/fracatlas.safetensors].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The ONNX file to write.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
}

pub(super) fn export(a: ExportArgs) -> Result<()> {
    let models = eval::models_or_shipped(a.model.as_slice())?;
    let checkpoint = eval::checkpoint_path(&models[0]);
    anyhow::ensure!(
        checkpoint.exists(),
        "{} does not exist: --model takes a checkpoint (.safetensors) or a run folder",
        checkpoint.display()
    );
    let e = fracture_cnn::export::export(&checkpoint, &a.out)?;
    let [c, h, w] = e.info.spec.input;
    println!(
        "wrote {} ({} nodes, {:.1} MB, ONNX opset {}): input image [N, {c}, {h}, {w}], output \
         probability [N, 1], fractured at >= {}",
        a.out.display(),
        e.nodes,
        e.bytes as f64 / 1e6,
        fracture_cnn::export::OPSET,
        e.info.threshold
    );
    Ok(())
}

/// A local web page to try a model on X-rays (probability and Grad-CAM), see each layer's
/// feature maps and the arithmetic of a convolution, and follow training runs; with a JSON API
/// (POST /api/predict, GET /api/model, ...: see the README).
#[derive(Args)]
pub(super) struct ServeArgs {
    /// A checkpoint (.safetensors) or a run folder [default: the shipped model, or else the
    /// newest run under --runs].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The folder of training runs shown in the Runs view.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// The address to listen on: 127.0.0.1 serves this machine only; 0.0.0.0 every network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests handled at once; the others wait (each holds at most one upload in memory).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Largest upload, in MB.
    #[arg(long, default_value_t = 32.0)]
    max_upload_mb: f64,
    /// Largest decoded image, in megapixels.
    #[arg(long, default_value_t = 50.0)]
    max_megapixels: f64,
    /// Seconds a connection may stall (send or take nothing) before it is dropped.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    #[command(flatten)]
    views: TestTimeViews,
}

/// The model `serve` shows: the one given, the shipped one, or the newest run's.
fn serve_model(given: Option<&PathBuf>, runs: &std::path::Path) -> Result<PathBuf> {
    if let Some(m) = given {
        let path = eval::checkpoint_path(m);
        anyhow::ensure!(
            path.exists(),
            "{} does not exist: --model takes a checkpoint (.safetensors) or a run folder",
            path.display()
        );
        return Ok(path);
    }
    let shipped = eval::shipped_model();
    if shipped.exists() {
        eprintln!(
            "using the shipped model {} (--model to choose another)",
            shipped.display()
        );
        return Ok(shipped);
    }
    let newest = std::fs::read_dir(runs)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("best.safetensors")))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    let (_, path) = newest.with_context(|| {
        format!(
            "no --model given, no shipped model, and no run with a best.safetensors in {}",
            runs.display()
        )
    })?;
    eprintln!("using the newest run's model {}", path.display());
    Ok(path)
}

pub(super) fn serve(a: ServeArgs) -> Result<()> {
    anyhow::ensure!(a.max_upload_mb > 0.0, "--max-upload-mb must be positive");
    anyhow::ensure!(a.max_megapixels > 0.0, "--max-megapixels must be positive");
    anyhow::ensure!(a.timeout > 0.0, "--timeout must be positive");
    let cfg = fracture_cnn::serve::ServeConfig {
        model: serve_model(a.model.as_ref(), &a.runs)?,
        runs: a.runs.clone(),
        host: a.host.clone(),
        port: a.port,
        workers: a.workers,
        max_upload_bytes: (a.max_upload_mb * 1e6) as usize,
        max_pixels: (a.max_megapixels * 1e6) as u64,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        tta: a.views.tta,
    };
    fracture_cnn::serve::serve(&cfg, |address| {
        println!(
            "serving {} on http://{address}/ (Ctrl-C to stop)",
            cfg.model.display()
        );
    })
}
