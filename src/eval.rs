//! Using a trained model: every metric on a labelled folder (`fracture-cnn eval`), and the
//! probability of a fracture for any images (`fracture-cnn predict`). Both repeat the training's
//! preprocessing (gray, resized to the checkpoint's input) and use the decision threshold saved
//! with the model.

use crate::backend::Backend;
use crate::checkpoint::{self, CheckpointInfo};
use crate::data::folder::{find_split, read_split, IMAGE_EXTENSIONS};
use crate::data::{Dataset, Sample, Split};
use crate::metrics::{Bootstrap, Report};
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
    #[serde(flatten)]
    pub report: Report,
    #[serde(skip)]
    pub skipped: Skipped,
}

/// What `eval` is asked for beyond the model and the data.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub batch: usize,
    /// Also write one line per image (file, label, probability, prediction) here.
    pub csv: Option<PathBuf>,
    /// Write `reliability.png` and `roc.png` into this folder.
    pub figures: Option<PathBuf>,
    pub bootstrap: Bootstrap,
    pub quiet: bool,
}

/// All the metrics of the model in `model` on the labelled images under `data`, with bootstrap
/// intervals, calibration and the figures of [`EvalOptions`].
pub fn evaluate<B: Backend>(
    be: &B,
    model: &Path,
    data: &Path,
    o: &EvalOptions,
) -> Result<Evaluation> {
    let (batch, quiet, csv) = (o.batch, o.quiet, o.csv.as_deref());
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
    let report = Report::new(&probs, &ds.labels, info.threshold, loss, o.bootstrap);
    if let Some(dir) = &o.figures {
        write_figures(dir, &report, &probs, &ds.labels)?;
    }
    Ok(Evaluation {
        folder,
        images: ds.len(),
        threshold: info.threshold,
        report,
        skipped,
    })
}

/// `reliability.png` and `roc.png` of an evaluation, in `dir`.
fn write_figures(dir: &Path, r: &Report, probs: &[f32], labels: &[f32]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let m = &r.metrics;
    crate::plots::reliability(
        &dir.join("reliability.png"),
        &r.calibration,
        r.expected_calibration_error,
    )?;
    crate::plots::roc(
        dir,
        probs,
        labels,
        m.roc_auc,
        (1.0 - m.specificity, m.recall),
    )
}

/// An evaluation as the text `eval` prints.
pub fn render(e: &Evaluation) -> String {
    let r = &e.report;
    let (m, iv, c) = (&r.metrics, &r.intervals, &r.metrics.confusion);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "{} images in {} ({} fractured, {:.1} %)",
        e.images,
        e.folder.display(),
        c.tp + c.fn_,
        100.0 * r.prevalence
    ));
    line(format!(
        "decision threshold {:.3} (saved with the model)",
        e.threshold
    ));
    line(format!(
        "figure                    value   95 % interval ({} stratified bootstrap resamples, seed {})",
        r.bootstrap.resamples, r.bootstrap.seed
    ));
    for (name, i) in [
        ("ROC-AUC", iv.roc_auc),
        ("average precision", iv.average_precision),
        ("balanced accuracy", iv.balanced_accuracy),
        ("sensitivity (recall)", iv.sensitivity),
        ("specificity", iv.specificity),
    ] {
        line(format!("  {name:<22}{i}"));
    }
    for (name, v) in [
        ("precision", m.precision),
        ("F1", m.f1),
        ("loss", m.loss),
        ("sens. at spec. 0.8", r.sensitivity_at_specificity_0_8),
        ("sens. at spec. 0.9", r.sensitivity_at_specificity_0_9),
        ("Brier score", r.brier),
        ("calibration error", r.expected_calibration_error),
    ] {
        line(format!("  {name:<22}{v:.4}"));
    }
    line(format!(
        "  {:<22}{:.4}  (always answering not_fractured: {:.4})",
        "accuracy", m.accuracy, r.baseline_accuracy
    ));
    line("confusion matrix (rows: truth, columns: prediction)".into());
    line(format!(
        "  {:<16}{:>11}{:>15}",
        "", "fractured", "not_fractured"
    ));
    line(format!("  {:<16}{:>11}{:>15}", "fractured", c.tp, c.fn_));
    line(format!("  {:<16}{:>11}{:>15}", "not_fractured", c.fp, c.tn));
    out
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
