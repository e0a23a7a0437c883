//! Using a trained model: every metric on a labelled folder (`fracture-cnn eval`), and the
//! probability of a fracture for any images (`fracture-cnn predict`). Both repeat the training's
//! preprocessing (gray, resized to the checkpoint's input) and use the decision threshold saved
//! with the model.

use crate::backend::Backend;
use crate::checkpoint::{self, CheckpointInfo};
use crate::data::folder::{find_split, read_split, IMAGE_EXTENSIONS};
use crate::data::{Dataset, Sample, Split};
use crate::metrics::Metrics;
use crate::nn::Model;
use crate::train;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A checkpoint file, or a run folder (whose `best.safetensors` is taken).
pub fn checkpoint_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("best.safetensors")
    } else {
        model.to_path_buf()
    }
}

fn load<B: Backend>(be: &B, model: &Path) -> Result<(Model<B>, CheckpointInfo)> {
    let path = checkpoint_path(model);
    if !path.exists() {
        bail!(
            "{} does not exist: --model takes a checkpoint (.safetensors) or a run folder",
            path.display()
        );
    }
    checkpoint::load(be, &path)
}

/// The labelled images under `dir`: `dir` itself if it holds class folders, else its test/
/// split, else its val/ (or valid/) split.
pub fn labelled_split(dir: &Path) -> Result<(PathBuf, Split)> {
    if !dir.is_dir() {
        bail!("data folder {} does not exist", dir.display());
    }
    for names in [
        &["test", "testing"][..],
        &["val", "valid", "validation"][..],
    ] {
        if let Some(split) = find_split(dir, names)? {
            return Ok((split.clone(), read_split(&split)?));
        }
    }
    Ok((dir.to_path_buf(), read_split(dir)?))
}

/// Files that could not be read, with the reason.
pub type Skipped = Vec<(PathBuf, String)>;

/// What `eval` measured.
#[derive(Debug, Serialize)]
pub struct Evaluation {
    pub folder: PathBuf,
    pub images: usize,
    pub threshold: f32,
    pub metrics: Metrics,
    #[serde(skip)]
    pub skipped: Skipped,
}

/// All the metrics of the model in `model` on the labelled images under `data`; with `csv`, also
/// writes one line per image (file, label, probability, prediction).
pub fn evaluate<B: Backend>(
    be: &B,
    model: &Path,
    data: &Path,
    batch: usize,
    csv: Option<&Path>,
    quiet: bool,
) -> Result<Evaluation> {
    let (mut net, info) = load(be, model)?;
    let (folder, split) = labelled_split(data)?;
    let ds = Dataset::decode(&split.samples, info.spec.input[1], "eval", quiet);
    let mut skipped: Skipped = split
        .skipped
        .iter()
        .map(|p| (p.clone(), "not an image file".to_string()))
        .collect();
    skipped.extend(ds.failed.iter().cloned());
    if ds.is_empty() {
        bail!("no readable images in {}", folder.display());
    }
    let (loss, probs) = train::predict(be, &mut net, &ds, batch.max(1));
    if let Some(csv) = csv {
        let mut text = String::from("file,label,probability,prediction\n");
        for ((path, &label), &p) in ds.paths.iter().zip(&ds.labels).zip(&probs) {
            text.push_str(&format!(
                "{},{},{p:.6},{}\n",
                csv_field(&path.display().to_string()),
                class_name(label >= 0.5),
                class_name(p >= info.threshold)
            ));
        }
        checkpoint::write_atomic(csv, text.as_bytes())?;
    }
    Ok(Evaluation {
        folder,
        images: ds.len(),
        threshold: info.threshold,
        metrics: Metrics::new(&probs, &ds.labels, info.threshold, loss),
        skipped,
    })
}

/// The name of the class a prediction or label stands for.
pub fn class_name(fractured: bool) -> &'static str {
    if fractured {
        "fractured"
    } else {
        "not_fractured"
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One image's answer.
#[derive(Debug, Serialize, PartialEq)]
pub struct Prediction {
    pub file: String,
    pub probability: f32,
    pub label: &'static str,
}

/// The image files named by `paths`: files as given, folders searched recursively (sorted).
pub fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| {
                IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())
            }) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files)?;
        } else if p.exists() {
            files.push(p.clone());
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    Ok(files)
}

/// The probability of a fracture for each image under `paths`, and the images that could not be
/// read (with the reason).
pub fn predict<B: Backend>(
    be: &B,
    model: &Path,
    paths: &[PathBuf],
    batch: usize,
) -> Result<(Vec<Prediction>, Skipped)> {
    let (mut net, info) = load(be, model)?;
    let files = image_files(paths)?;
    if files.is_empty() {
        bail!("no image files among the paths given");
    }
    let samples: Vec<Sample> = files
        .into_iter()
        .map(|path| Sample { path, label: 0.0 })
        .collect();
    let ds = Dataset::decode(&samples, info.spec.input[1], "predict", true);
    let (_, probs) = train::predict(be, &mut net, &ds, batch.max(1));
    let predictions = ds
        .paths
        .iter()
        .zip(probs)
        .map(|(path, probability)| Prediction {
            file: path.display().to_string(),
            probability,
            label: class_name(probability >= info.threshold),
        })
        .collect();
    Ok((predictions, ds.failed))
}
