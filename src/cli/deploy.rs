//! `export` (ONNX).

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
