//! Checkpoints in the safetensors format: every parameter and running statistic of a model by
//! name, and in the metadata the model spec (as JSON) and what inference needs to repeat the
//! training's preprocessing. Writes go to a temporary file that is renamed over the target, so a
//! crash or a full disk never leaves a half-written checkpoint behind.

use crate::backend::Backend;
use crate::files::write_atomic;
use crate::nn::{Model, ModelSpec};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// What a checkpoint says about itself beyond its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    pub spec: ModelSpec,
    /// Probability at or above which an image is called fractured.
    pub threshold: f32,
    pub epoch: usize,
    /// The training loop's position and counters (JSON, see `train::Progress`) in a checkpoint
    /// a run can be resumed from.
    pub progress: Option<String>,
}

/// Prefix of the optimiser's state tensors, which a resumable checkpoint holds beside the model's.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

const FORMAT: &str = "fracture-cnn/1";

/// Writes `model` to `path` atomically, with `extra` tensors (the optimiser's state, named with
/// [`OPTIMIZER_PREFIX`]) when the checkpoint is to resume training from.
pub fn save<B: Backend>(
    be: &B,
    model: &Model<B>,
    info: &CheckpointInfo,
    extra: Vec<(String, Tensor)>,
    path: &Path,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .map(|p| (p.name, be.download(&p.param.value)))
        .collect();
    tensors.extend(extra);
    write_tensors(info, tensors, path)
}

/// Writes named tensors and `info` as a checkpoint to `path`, atomically.
fn write_tensors(info: &CheckpointInfo, tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, bytemuck::cast_slice(&t.data).to_vec(), t.shape.0))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), data).expect("sizes match");
            (name.clone(), view)
        })
        .collect();
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("spec".to_string(), serde_json::to_string(&info.spec)?),
        ("threshold".to_string(), info.threshold.to_string()),
        ("epoch".to_string(), info.epoch.to_string()),
        (
            "preprocessing".to_string(),
            format!(
                "gray [0,1], framed in the input square by {}",
                info.spec.square().describe()
            ),
        ),
    ]);
    if let Some(p) = &info.progress {
        metadata.insert("progress".into(), p.clone());
    }
    let data = safetensors::serialize(views, &Some(metadata))
        .context("cannot serialise the checkpoint")?;
    write_atomic(path, &data)
}

/// Sets the decision threshold saved in the checkpoint at `path` (rewritten atomically, every
/// tensor and the rest of the metadata kept) and returns the one it replaced.
pub fn set_threshold(path: &Path, threshold: f32) -> Result<f32> {
    if !(threshold > 0.0 && threshold < 1.0) {
        bail!("a decision threshold is a probability strictly between 0 and 1, got {threshold}");
    }
    let (info, tensors) = read(path)?;
    let old = info.threshold;
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let info = CheckpointInfo { threshold, ..info };
    write_tensors(&info, tensors, path)?;
    Ok(old)
}

/// Reads a checkpoint's metadata and tensors by name.
pub fn read(path: &Path) -> Result<(CheckpointInfo, HashMap<String, Tensor>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad =
        |why: String| anyhow::anyhow!("{} is not a fracture-cnn checkpoint: {why}", path.display());
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad("its metadata has no 'format = fracture-cnn/1'".into()));
    }
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("its metadata has no '{k}'")))
    };
    let spec: ModelSpec =
        serde_json::from_str(get("spec")?).map_err(|e| bad(format!("bad model spec: {e}")))?;
    spec.layers()
        .map_err(|e| bad(format!("bad model spec: {e}")))?;
    let info = CheckpointInfo {
        spec,
        threshold: get("threshold")?
            .parse()
            .map_err(|_| bad("bad threshold".into()))?,
        epoch: get("epoch")?.parse().map_err(|_| bad("bad epoch".into()))?,
        progress: meta.get("progress").cloned(),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor {name} is {:?}, not F32", view.dtype())));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, Tensor::new(view.shape(), data));
    }
    Ok((info, tensors))
}

/// Builds the model a checkpoint describes and loads its weights (ignoring any optimiser state).
pub fn load<B: Backend>(be: &B, path: &Path) -> Result<(Model<B>, CheckpointInfo)> {
    let (model, info, _) = load_with_extra(be, path)?;
    Ok((model, info))
}

/// Like [`load`], also returning the tensors beyond the model's (the optimiser's state).
pub fn load_with_extra<B: Backend>(
    be: &B,
    path: &Path,
) -> Result<(Model<B>, CheckpointInfo, HashMap<String, Tensor>)> {
    let (info, mut tensors) = read(path)?;
    let mut model = Model::new(be, &info.spec, 0)?;
    let names: Vec<(String, Vec<usize>)> = model
        .named_params()
        .iter()
        .map(|p| (p.name.clone(), be.shape(&p.param.value).0.clone()))
        .collect();
    for ((name, shape), p) in names.iter().zip(model.params_mut()) {
        let t = tensors.remove(name).with_context(|| {
            format!(
                "{} has no tensor {name}: it was saved from another model",
                path.display()
            )
        })?;
        if t.dims() != shape.as_slice() {
            bail!(
                "{}: tensor {name} has shape {} but the model needs {shape:?}",
                path.display(),
                t.shape
            );
        }
        p.value = be.upload(&t);
    }
    if let Some(extra) = tensors.keys().find(|k| !k.starts_with(OPTIMIZER_PREFIX)) {
        bail!(
            "{} has a tensor {extra} that the model does not have",
            path.display()
        );
    }
    Ok((model, info, tensors))
}
