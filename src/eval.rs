//! Using a trained model: every metric on a labelled folder (`fracture-cnn eval`), and the
//! probability of a fracture for any images (`fracture-cnn predict`). Both repeat the training's
//! preprocessing (gray, resized to the checkpoint's input) and use the decision threshold saved
//! with the model.
//!
//! Why one file of about 700 lines: `eval` and `predict` share the preprocessing, the batching
//! and the heat maps, and keeping them together keeps the two from drifting apart.

use crate::backend::Backend;
use crate::checkpoint;
use crate::data::annotations::{Annotations, Groups};
use crate::data::dicom::DicomInfo;
use crate::data::folder::{find_split, is_image_file, read_split};
use crate::data::image::to_model_input;
use crate::data::{Dataset, Sample, Split};
use crate::localize::{FractureMap, Location, MapSource};
use crate::metrics::localization::{judge, Judged, LocalizationReport};
use crate::metrics::{Bootstrap, Report};
use crate::nn::fold::inference_model;
use crate::nn::{Mode, Model};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The model trained on FracAtlas that ships with the source (see the README).
pub fn shipped_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fracatlas.safetensors")
}

/// The models given with `--model`, or else the shipped model, saying so on standard error.
pub fn models_or_shipped(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let shipped = shipped_model();
    if !shipped.exists() {
        bail!(
            "no --model given, and the shipped model {} is missing: pass --model RUN_DIR or a \
             .safetensors file",
            shipped.display()
        );
    }
    eprintln!(
        "using the shipped model {} (trained on FracAtlas; --model to choose another)",
        shipped.display()
    );
    Ok(vec![shipped])
}

/// A checkpoint file, or a run folder (whose `best.safetensors` is taken).
pub fn checkpoint_path(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("best.safetensors")
    } else {
        model.to_path_buf()
    }
}

/// The checkpoint of each model, or an error naming the first that does not exist.
fn checkpoints(models: &[PathBuf]) -> Result<Vec<PathBuf>> {
    models
        .iter()
        .map(|model| {
            let path = checkpoint_path(model);
            if !path.exists() {
                bail!(
                    "{} does not exist: --model takes a checkpoint (.safetensors) or a run folder",
                    path.display()
                );
            }
            Ok(path)
        })
        .collect()
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
    /// The checkpoints whose probabilities were averaged (one for a single model).
    pub models: Vec<PathBuf>,
    pub tta: bool,
    pub threshold: f32,
    #[serde(flatten)]
    pub report: Report,
    /// Where the model looked, against the outlines, when annotations were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localization: Option<LocalizationReport>,
    #[serde(skip)]
    pub skipped: Skipped,
}

/// What `eval` is asked for beyond the model and the data.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub batch: usize,
    /// Average each image's probability over [`tta_views`].
    pub tta: bool,
    /// Also write one line per image (file, label, probability, prediction) here.
    pub csv: Option<PathBuf>,
    /// Write `reliability.png` and `roc.png` into this folder.
    pub figures: Option<PathBuf>,
    pub bootstrap: Bootstrap,
    pub quiet: bool,
    /// The COCO file of fracture outlines [default: the one in `annotations/` beside the data].
    pub annotations: Option<PathBuf>,
    /// A table of groups to judge where the model looked by (`annotations/dataset.csv`).
    pub groups: Option<PathBuf>,
}

/// All the metrics of the models in `models` (their probabilities averaged: an ensemble) on the
/// labelled images under `data`, with bootstrap intervals, calibration and the figures of
/// [`EvalOptions`].
pub fn evaluate<B: Backend>(
    be: &B,
    models: &[PathBuf],
    data: &Path,
    o: &EvalOptions,
) -> Result<Evaluation> {
    checkpoints(models)?;
    let (folder, split) = labelled_split(data)?;
    let mut skipped: Skipped = split
        .skipped
        .iter()
        .map(|p| (p.clone(), "not an image file".to_string()))
        .collect();
    let scored = ensemble(be, models, &split.samples, o.batch, o.tta, o.quiet)?;
    skipped.extend(scored.failed.iter().cloned());
    if scored.paths.is_empty() {
        bail!("no readable images in {}", folder.display());
    }
    let (probs, labels, threshold) = (&scored.probs, &scored.labels, scored.threshold);
    if let Some(csv) = &o.csv {
        let mut text = String::from("file,label,probability,prediction\n");
        for ((path, &label), &p) in scored.paths.iter().zip(labels).zip(probs) {
            text.push_str(&format!(
                "{},{},{p:.6},{}\n",
                csv_field(&path.display().to_string()),
                class_name(label >= 0.5),
                class_name(p >= threshold)
            ));
        }
        crate::files::write_atomic(csv, text.as_bytes())?;
    }
    let report = Report::new(probs, labels, threshold, bce(probs, labels), o.bootstrap);
    if let Some(dir) = &o.figures {
        write_figures(dir, &report, probs, labels)?;
    }
    let localization = match Annotations::find(data, o.annotations.as_deref())? {
        Some(annotations) => Some(localization(be, &models[0], &scored, &annotations, o)?),
        None => None,
    };
    Ok(Evaluation {
        folder,
        images: probs.len(),
        models: models.to_vec(),
        tta: o.tta,
        threshold,
        report,
        localization,
        skipped,
    })
}

/// Where `model` looked on each scored image, judged against `annotations`.
fn localization<B: Backend>(
    be: &B,
    model: &Path,
    scored: &Scored,
    annotations: &Annotations,
    o: &EvalOptions,
) -> Result<LocalizationReport> {
    let groups = o.groups.as_deref().map(Groups::read).transpose()?;
    let maps = fracture_maps(be, model, &scored.paths, o.quiet)?;
    let located = judge_maps(maps, scored, annotations);
    Ok(report_located(
        annotations,
        &located,
        groups.as_ref(),
        o.bootstrap,
    ))
}

/// An image judged against its outlines: its path, the figures' part, and the map's source.
pub type Located = (PathBuf, Judged, MapSource);

/// Each image's location from its map, judged against its outlines (an image whose map could
/// not be made is left out).
pub fn judge_maps(
    maps: Vec<Result<Mapped, String>>,
    scored: &Scored,
    annotations: &Annotations,
) -> Vec<Located> {
    let mut located = Vec::with_capacity(maps.len());
    for (i, mapped) in maps.into_iter().enumerate() {
        // every scored image was decoded once already: one that fails now is left out
        let Ok(Mapped { map, size, .. }) = mapped else {
            continue;
        };
        let location = map.locate(size, scored.probs[i]);
        let outlines = annotations
            .get(&scored.paths[i])
            .map(|o| o.scaled_to(size.0, size.1));
        let judged = judge(scored.labels[i], size, &location, &map, outlines.as_ref());
        located.push((scored.paths[i].clone(), judged, map.source));
    }
    located
}

/// The localization figures of `located` images.
pub fn report_located(
    annotations: &Annotations,
    located: &[Located],
    groups: Option<&Groups>,
    bootstrap: Bootstrap,
) -> LocalizationReport {
    let paths: Vec<PathBuf> = located.iter().map(|l| l.0.clone()).collect();
    let judged: Vec<Judged> = located.iter().map(|l| l.1.clone()).collect();
    let from = located.first().map_or(MapSource::GradCam, |l| l.2);
    LocalizationReport::new(
        annotations.file.clone(),
        from,
        &judged,
        &paths,
        groups,
        bootstrap,
    )
}

/// Mean binary cross-entropy of probabilities (clamped away from 0 and 1) against labels.
fn bce(probs: &[f32], labels: &[f32]) -> f64 {
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum();
    sum / probs.len().max(1) as f64
}

/// The views of a batch `x[N,1,S,S]` that test-time augmentation averages over: the images as
/// they are, mirrored left-right (training mirrors them too), and shifted by 1/32 of the side
/// up-left and down-right (edges repeated).
pub fn tta_views(x: &Tensor) -> Vec<Tensor> {
    let &[n, c, h, w] = x.dims() else {
        panic!("a batch of images, got {}", x.shape)
    };
    let view = |f: &dyn Fn(usize, usize) -> (usize, usize)| {
        let mut data = Vec::with_capacity(x.data.len());
        for plane in x.data.chunks(h * w).take(n * c) {
            for i in 0..h {
                for j in 0..w {
                    let (si, sj) = f(i, j);
                    data.push(plane[si * w + sj]);
                }
            }
        }
        Tensor::new(x.shape.clone(), data)
    };
    let d = (h.min(w) / 32).max(1);
    vec![
        view(&|i, j| (i, j)),
        view(&|i, j| (i, w - 1 - j)),
        view(&|i, j| ((i + d).min(h - 1), (j + d).min(w - 1))),
        view(&|i, j| (i.saturating_sub(d), j.saturating_sub(d))),
    ]
}

/// Probabilities of a fracture for `ds` by one model, averaged over [`tta_views`] with `tta`.
pub fn model_probabilities<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    ds: &Dataset,
    batch: usize,
    tta: bool,
) -> Vec<f32> {
    let mut probs = Vec::with_capacity(ds.len());
    for idx in ds.batches(batch.max(1), None) {
        let (x, _) = ds.batch(&idx);
        probs.extend(batch_probabilities(be, model, x, tta));
    }
    probs
}

/// Probabilities of a fracture for a batch `x[N,1,S,S]` by one model, averaged over
/// [`tta_views`] with `tta`.
pub fn batch_probabilities<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    x: Tensor,
    tta: bool,
) -> Vec<f32> {
    let n = x.dims()[0];
    let views = if tta { tta_views(&x) } else { vec![x] };
    let mut sum = vec![0.0f32; n];
    for v in &views {
        let logits = be.download(&model.forward(be, be.upload(v), Mode::Eval));
        for (s, &z) in sum.iter_mut().zip(&logits.data) {
            *s += crate::nn::loss::sigmoid(z);
        }
    }
    sum.iter().map(|s| s / views.len() as f32).collect()
}

/// What an ensemble answers for a list of images.
pub struct Scored {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<f32>,
    /// The mean of the models' probabilities.
    pub probs: Vec<f32>,
    /// The mean of the models' decision thresholds.
    pub threshold: f32,
    pub failed: Skipped,
}

/// Each model's probabilities for `samples` (each model at its own input size), averaged.
/// Images that cannot be read are left out (and listed in `failed`).
pub fn ensemble<B: Backend>(
    be: &B,
    models: &[PathBuf],
    samples: &[Sample],
    batch: usize,
    tta: bool,
    quiet: bool,
) -> Result<Scored> {
    if models.is_empty() {
        bail!("no model given");
    }
    let mut scored: Option<Scored> = None;
    for path in checkpoints(models)? {
        let (net, info) = checkpoint::load(be, &path)?;
        let mut net = inference_model(be, &net)?;
        let ds = Dataset::decode(samples, info.spec.square(), "images", quiet);
        let probs = model_probabilities(be, &mut net, &ds, batch, tta);
        match &mut scored {
            None => {
                scored = Some(Scored {
                    paths: ds.paths,
                    labels: ds.labels,
                    probs,
                    threshold: info.threshold,
                    failed: ds.failed,
                })
            }
            Some(s) => {
                // the same files decode at any size: the image lists agree
                for (a, b) in s.probs.iter_mut().zip(probs) {
                    *a += b;
                }
                s.threshold += info.threshold;
            }
        }
    }
    let mut s = scored.expect("at least one model");
    let k = models.len() as f32;
    s.probs.iter_mut().for_each(|p| *p /= k);
    s.threshold /= k;
    Ok(s)
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
        "decision threshold {:.3} (saved with the model); {}",
        e.threshold,
        if e.tta {
            "each image judged over its 4 test-time views (--tta false: alone)"
        } else {
            "each image judged alone"
        }
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
    if let Some(l) = &e.localization {
        out.push_str(&l.render());
    }
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
    /// Where the fracture most likely is, and boxes around it, in the file's pixels as a
    /// viewer shows it; None when the image could not be explained.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// For a DICOM file, what identifies it without personal data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dicom: Option<DicomInfo>,
}

/// The fracture map of `input` (an X-ray as the model takes it) by `net`: its own map where it
/// has one ([`head_map`]), else Grad-CAM.
pub fn map_of_input<B: Backend>(be: &B, net: &mut Model<B>, input: &[f32]) -> Result<FractureMap> {
    Ok(match net.has_map() {
        true => head_map(be, net, input)?,
        false => crate::explain::explain_input(be, net, input)?.map,
    })
}

/// The fracture map of `input` (an X-ray as the model takes it) by a model that has one: the
/// probability of a fracture at each cell, `σ(map logits)`; an error for a model without one.
pub fn head_map<B: Backend>(be: &B, net: &mut Model<B>, input: &[f32]) -> Result<FractureMap> {
    let square = net.spec.square();
    let x = Tensor::new([1, 1, square.side, square.side], input.to_vec());
    let (_, map) = net.forward_with_map(be, be.upload(&x), Mode::Eval);
    let Some(map) = map else {
        bail!("{} has no fracture map (spec 'map')", net.spec.name);
    };
    let map = be.download(&map);
    Ok(FractureMap {
        heat: map
            .data
            .iter()
            .map(|&z| crate::nn::loss::sigmoid(z))
            .collect(),
        side: map.dims()[3],
        square,
        source: MapSource::Head,
    })
}

/// An image's fracture map by a model, and the size of the image it lies over.
pub struct Mapped {
    pub map: FractureMap,
    pub size: (u32, u32),
    /// What a DICOM file says about itself.
    pub dicom: Option<DicomInfo>,
}

/// The fracture map of each of `files` by the model at `model`: its own map where it has one
/// (the sigmoid of the map's logits: the probability of a fracture at each place), else
/// Grad-CAM of its last convolutional block; with a progress bar unless `quiet`. An image that
/// cannot be read or explained gets the reason.
pub fn fracture_maps<B: Backend>(
    be: &B,
    model: &Path,
    files: &[PathBuf],
    quiet: bool,
) -> Result<Vec<Result<Mapped, String>>> {
    let (net, _) = checkpoint::load(be, &checkpoint_path(model))?;
    fracture_maps_of(be, net, files, quiet)
}

/// [`fracture_maps`] of a model in memory.
pub fn fracture_maps_of<B: Backend>(
    be: &B,
    net: Model<B>,
    files: &[PathBuf],
    quiet: bool,
) -> Result<Vec<Result<Mapped, String>>> {
    let mut net = match net.has_map() {
        true => inference_model(be, &net)?,
        false => net,
    };
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "where it looked [{bar:30}] {pos}/{len} images, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let maps = files
        .iter()
        .map(|file| {
            bar.inc(1);
            let decoded = crate::data::image::open_file(file).map_err(|e| format!("{e:#}"))?;
            let img = &decoded.image;
            let input = to_model_input(img, net.spec.square());
            let map = map_of_input(be, &mut net, &input).map_err(|e| format!("{e:#}"))?;
            Ok(Mapped {
                map,
                size: (img.width(), img.height()),
                dicom: decoded.dicom,
            })
        })
        .collect();
    bar.finish_and_clear();
    Ok(maps)
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
            } else if is_image_file(&p) {
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

/// The probability of a fracture for each image under `paths` by the models in `models`
/// (averaged, with test-time augmentation when `tta`), and the images that could not be read.
pub fn predict<B: Backend>(
    be: &B,
    models: &[PathBuf],
    paths: &[PathBuf],
    batch: usize,
    tta: bool,
) -> Result<(Vec<Prediction>, Skipped)> {
    checkpoints(models)?;
    let files = image_files(paths)?;
    if files.is_empty() {
        bail!("no image files among the paths given");
    }
    let samples: Vec<Sample> = files
        .into_iter()
        .map(|path| Sample { path, label: 0.0 })
        .collect();
    let s = ensemble(be, models, &samples, batch, tta, true)?;
    let maps = fracture_maps(be, &models[0], &s.paths, true)?;
    let predictions = s
        .paths
        .iter()
        .zip(&s.probs)
        .zip(maps)
        .map(|((path, &probability), mapped)| {
            let mapped = mapped.ok();
            Prediction {
                file: path.display().to_string(),
                probability,
                label: class_name(probability >= s.threshold),
                location: mapped.as_ref().map(|m| m.map.locate(m.size, probability)),
                dicom: mapped.and_then(|m| m.dicom),
            }
        })
        .collect();
    Ok((predictions, s.failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_time_views_mirror_and_shift_each_plane() {
        // two images of 1x32x32, values i*32+j (+1000 for the second)
        let data: Vec<f32> = (0..2)
            .flat_map(|n| (0..32 * 32).map(move |k| (k + 1000 * n) as f32))
            .collect();
        let x = Tensor::new([2, 1, 32, 32], data);
        let v = tta_views(&x);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], x);
        let at = |t: &Tensor, n: usize, i: usize, j: usize| t.data[n * 1024 + i * 32 + j];
        assert_eq!(at(&v[1], 1, 3, 0), at(&x, 1, 3, 31), "mirrored left-right");
        assert_eq!(
            at(&v[2], 0, 5, 5),
            at(&x, 0, 6, 6),
            "shifted by one pixel of 32"
        );
        assert_eq!(at(&v[2], 0, 31, 31), at(&x, 0, 31, 31), "edges repeated");
        assert_eq!(at(&v[3], 1, 5, 5), at(&x, 1, 4, 4));
        assert_eq!(at(&v[3], 1, 0, 0), at(&x, 1, 0, 0));
    }

    #[test]
    fn bce_of_probabilities() {
        let l = bce(&[0.9, 0.2], &[1.0, 0.0]);
        assert!((l - (-(0.9f64.ln()) - 0.8f64.ln()) / 2.0).abs() < 1e-6);
        assert!(bce(&[0.0], &[1.0]).is_finite(), "clamped");
    }
}
