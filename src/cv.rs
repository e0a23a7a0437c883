//! `fracture-cnn cv`: stratified k-fold cross-validation of a training recipe.
//!
//! The training and validation images are pooled and dealt into k folds (stratified by class,
//! near-duplicates kept in one fold: [`crate::data::folds`]). Fold i's run trains on the other
//! folds with the recipe and is judged on fold i by its **final** weights (averaged, with
//! `--ema`): no epoch is picked on the images that judge it. Each image is judged as `predict`
//! judges it, over its test-time views unless `--tta false`. Thresholded figures use a
//! threshold chosen on the other folds' out-of-fold predictions, never on the fold's own. The
//! folds' figures are given one by one, as mean ± standard deviation, and pooled over all
//! out-of-fold predictions with bootstrap intervals.
//!
//! ```text
//! runs/cv-<model>-NNN/
//!   cv.json          the recipe (a training configuration) and the number of folds
//!   folds.csv        every pooled image's fold and near-duplicate group
//!   fold-1/ ...      one training run per fold (`train --resume` continues it)
//!   summary.csv      one row per fold, then the mean and the standard deviation
//!   summary.json     all of it, with the pooled figures and their intervals
//!   predictions.csv  every image's out-of-fold probability
//!   roc.png          the folds' ROC curves; reliability.png of the pooled predictions
//! ```
//!
//! Why one file of about 700 lines: the folds, their training, the pooling of out-of-fold
//! predictions and the files it writes are one procedure, read top to bottom; the properties that
//! make it honest (a fold's threshold from the other folds only) are easier to check in one place.

pub mod compare;

use crate::backend::Backend;
use crate::checkpoint;
use crate::data::annotations::{Annotations, Groups};
use crate::data::folds::Assignment;
use crate::data::DataDir;
use crate::files::write_atomic;
use crate::metrics::localization::LocalizationReport;
use crate::metrics::report::{average_precision, brier, mean_and_sd};
use crate::metrics::{best_threshold, roc_curve, Bootstrap, Metrics, Report};
use crate::nn::ModelSpec;
use crate::train::{self, FoldPlan, Progress, TrainConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `cv.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CvConfig {
    pub folds: usize,
    /// The recipe every fold trains with (its `fold` is set per fold).
    pub config: TrainConfig,
}

/// One fold's figures, from its final weights on its own images.
#[derive(Clone, Debug, Serialize)]
pub struct FoldFigures {
    pub fold: usize,
    pub images: usize,
    pub fractured: usize,
    /// Chosen on the other folds' out-of-fold predictions.
    pub threshold: f32,
    pub roc_auc: f64,
    pub average_precision: f64,
    pub balanced_accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub brier: f64,
    pub epochs: usize,
    /// The median wall-clock seconds of the fold's training epochs (from its `metrics.csv`;
    /// None for a judgement, which trains nothing).
    pub seconds_per_epoch: Option<f64>,
}

/// A figure over the folds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MeanSd {
    pub mean: f64,
    pub sd: f64,
}

/// What a finished cross-validation reports (`summary.json`).
#[derive(Debug, Serialize)]
pub struct CvSummary {
    pub cv_dir: PathBuf,
    pub model: String,
    pub folds: Vec<FoldFigures>,
    pub roc_auc: MeanSd,
    pub average_precision: MeanSd,
    pub balanced_accuracy: MeanSd,
    pub sensitivity: MeanSd,
    pub specificity: MeanSd,
    pub brier: MeanSd,
    /// All out-of-fold predictions together, at the threshold chosen on all of them.
    pub pooled: Report,
    /// The threshold for a model of this recipe trained on all the data: the one that maximises
    /// balanced accuracy over all out-of-fold predictions.
    pub threshold: f32,
    pub seconds: f64,
    /// Where the folds' models looked, pooled out of fold, when outlines were found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localization: Option<LocalizationReport>,
}

/// How a cross-validation call ended.
pub enum CvOutcome {
    Done(Box<CvSummary>),
    /// Stopped by a signal inside a fold; the folder can be resumed.
    Interrupted(PathBuf),
}

/// Starts a cross-validation of `recipe` in a new `cv-<model>-NNN` folder under `recipe.out`.
/// With `tta`, the folds are judged on each image's test-time views ([`crate::eval::tta_views`]).
pub fn start<B: Backend>(
    be: &B,
    recipe: &TrainConfig,
    folds: usize,
    tta: bool,
) -> Result<CvOutcome> {
    if recipe.callbacks.early_stopping.is_some() || recipe.callbacks.plateau.is_some() {
        bail!(
            "cv judges each fold by its final weights: --early-stopping and \
             --reduce-lr-on-plateau would choose by the fold that judges the model; leave them out"
        );
    }
    let mut recipe = recipe.clone();
    recipe.data = recipe
        .data
        .canonicalize()
        .with_context(|| format!("data folder {} does not exist", recipe.data.display()))?;
    let dir = DataDir::open(&recipe.data)?;
    let mut spec = ModelSpec::load(&recipe.model)?;
    if let Some(s) = recipe.image_size {
        spec = spec.with_image_size(s)?;
    }
    let assignment = Assignment::make(&dir, folds, recipe.seed, recipe.quiet)?;
    let cv_dir = train::new_run_dir(&recipe.out, &format!("cv-{}", spec.name))?;
    let cv_dir = cv_dir.canonicalize().unwrap_or(cv_dir);
    assignment.write(&cv_dir.join("folds.csv"))?;
    let cv = CvConfig {
        folds,
        config: recipe,
    };
    write_atomic(
        &cv_dir.join("cv.json"),
        serde_json::to_string_pretty(&cv)?.as_bytes(),
    )?;
    println!(
        "cross-validation of {} in {}: {} images pooled from train/ and val/ in {folds} folds \
         (stratified, near-duplicates in one fold)",
        spec.name,
        cv_dir.display(),
        assignment.rows.len()
    );
    run_folds(be, &cv_dir, &cv, tta)
}

/// What a finished cross-validation (or judgement) chose: the threshold that maximises balanced
/// accuracy over all its out-of-fold predictions, and the name of the models it judged.
pub fn chosen_threshold(cv_dir: &Path) -> Result<(f32, String)> {
    let path = cv_dir.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: --from-cv takes a finished cross-validation (or cv --judge) folder",
            path.display()
        )
    })?;
    let summary: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a cross-validation summary", path.display()))?;
    match (summary["threshold"].as_f64(), summary["model"].as_str()) {
        (Some(t), Some(model)) => Ok((t as f32, model.to_string())),
        _ => bail!(
            "{} has no threshold and model: not a cross-validation summary",
            path.display()
        ),
    }
}

/// A cross-validation folder's `cv.json`.
fn read_config(cv_dir: &Path) -> Result<CvConfig> {
    let path = cv_dir.join("cv.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: a cross-validation folder is one that `cv` made",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a cross-validation's configuration",
            path.display()
        )
    })
}

/// Continues the cross-validation in `cv_dir`: unfinished folds resume, missing ones start.
pub fn resume<B: Backend>(
    be: &B,
    cv_dir: &Path,
    epochs: Option<usize>,
    tta: bool,
) -> Result<CvOutcome> {
    let mut cv = read_config(cv_dir)?;
    if let Some(e) = epochs {
        cv.config.epochs = e;
    }
    println!("resuming the cross-validation in {}", cv_dir.display());
    run_folds(be, cv_dir, &cv, tta)
}

/// Where a fold's run stands.
enum FoldState {
    NotStarted,
    Unfinished,
    Done,
}

fn fold_state(fold_dir: &Path, epochs: usize) -> Result<FoldState> {
    let last = fold_dir.join("last.safetensors");
    if !last.exists() {
        return Ok(FoldState::NotStarted);
    }
    let (info, _) = checkpoint::read(&last)?;
    let progress: Progress = info
        .progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .with_context(|| format!("{} holds no training state", last.display()))?;
    Ok(if progress.epochs_done >= epochs {
        FoldState::Done
    } else {
        FoldState::Unfinished
    })
}

fn fold_config(cv_dir: &Path, cv: &CvConfig, fold: usize) -> TrainConfig {
    TrainConfig {
        fold: Some(FoldPlan {
            fold,
            folds: cv.folds,
            assignment: cv_dir.join("folds.csv"),
        }),
        ..cv.config.clone()
    }
}

fn run_folds<B: Backend>(be: &B, cv_dir: &Path, cv: &CvConfig, tta: bool) -> Result<CvOutcome> {
    let start = Instant::now();
    for fold in 1..=cv.folds {
        let fold_dir = cv_dir.join(format!("fold-{fold}"));
        let cfg = fold_config(cv_dir, cv, fold);
        let summary = match fold_state(&fold_dir, cv.config.epochs)? {
            FoldState::Done => continue,
            FoldState::NotStarted => {
                println!("\n== fold {fold} of {} ==", cv.folds);
                let fold_start = Instant::now();
                let summary = train::train_in(be, &cfg, &fold_dir)?;
                if fold < cv.folds && !summary.interrupted {
                    let left = (cv.folds - fold) as f64 * fold_start.elapsed().as_secs_f64();
                    println!(
                        "the cross-validation's training should end in about {} at this fold's pace",
                        train::duration_in_words(left)
                    );
                }
                summary
            }
            FoldState::Unfinished => {
                println!("\n== fold {fold} of {} (resumed) ==", cv.folds);
                train::resume(be, &fold_dir, Some(cv.config.epochs))?
            }
        };
        if summary.interrupted {
            println!(
                "the cross-validation stopped in fold {fold}; continue it with: \
                 fracture-cnn cv --resume {}",
                cv_dir.display()
            );
            return Ok(CvOutcome::Interrupted(cv_dir.to_path_buf()));
        }
    }
    let preds = (1..=cv.folds)
        .map(|fold| predict_fold(be, cv_dir, cv, fold, (tta, true)))
        .collect::<Result<Vec<_>>>()?;
    let seconds = start.elapsed().as_secs_f64();
    let name = judged_name(&[&cv.config.model], tta);
    let summary = summarise(&preds, cv_dir, &name, seconds)?;
    Ok(CvOutcome::Done(Box::new(summary)))
}

/// What `judge.json` holds: the cross-validations whose fold models a judgement averages.
#[derive(Debug, Serialize, Deserialize)]
pub struct JudgeConfig {
    pub members: Vec<PathBuf>,
    /// Each image's probability averaged over its test-time views ([`crate::eval::tta_views`]).
    pub tta: bool,
}

/// Judges finished cross-validations again without training, in a new `cv-judge-NNN` folder
/// under `out`: each image's out-of-fold probability is averaged over the members' models of
/// its fold (an ensemble, when there are several) and, with `tta`, over its test-time views.
/// The members must deal the same folds (the same data, seed and number of folds), so that no
/// model judges an image it trained on.
pub fn judge<B: Backend>(be: &B, members: &[PathBuf], tta: bool, out: &Path) -> Result<CvSummary> {
    let start = Instant::now();
    let Some(first) = members.first() else {
        bail!("--judge needs at least one cross-validation folder");
    };
    let configs = members
        .iter()
        .map(|m| finished_config(m))
        .collect::<Result<Vec<_>>>()?;
    let folds_csv = read_folds(first)?;
    for m in &members[1..] {
        if read_folds(m)? != folds_csv {
            bail!(
                "{} and {} deal different folds: the members of a judgement must share their \
                 folds.csv (the same data, --seed and --folds)",
                first.display(),
                m.display()
            );
        }
    }
    let dir = train::new_run_dir(out, "cv-judge")?;
    write_atomic(&dir.join("folds.csv"), &folds_csv)?;
    let judge = JudgeConfig {
        members: members.to_vec(),
        tta,
    };
    write_atomic(
        &dir.join("judge.json"),
        serde_json::to_string_pretty(&judge)?.as_bytes(),
    )?;
    let preds = (1..=configs[0].folds)
        .map(|fold| {
            let each = members
                .iter()
                .zip(&configs)
                .map(|(m, cv)| predict_fold(be, m, cv, fold, (tta, members.len() == 1)))
                .collect::<Result<Vec<_>>>()?;
            average(each)
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = configs.iter().map(|c| c.config.model.as_str()).collect();
    let name = judged_name(&names, tta);
    summarise(&preds, &dir, &name, start.elapsed().as_secs_f64())
}

/// What a summary calls the models it judged: "resnet", "resnet + fracturenet, test-time
/// augmented".
fn judged_name(models: &[&str], tta: bool) -> String {
    format!(
        "{}{}",
        models.join(" + "),
        if tta { ", test-time augmented" } else { "" }
    )
}

/// The configuration of the cross-validation in `cv_dir`, which must have finished every fold.
fn finished_config(cv_dir: &Path) -> Result<CvConfig> {
    let cv = read_config(cv_dir)?;
    for fold in 1..=cv.folds {
        let fold_dir = cv_dir.join(format!("fold-{fold}"));
        if !matches!(fold_state(&fold_dir, cv.config.epochs)?, FoldState::Done) {
            bail!(
                "fold {fold} of {} has not finished: continue it with fracture-cnn cv --resume {}",
                cv_dir.display(),
                cv_dir.display()
            );
        }
    }
    Ok(cv)
}

fn read_folds(cv_dir: &Path) -> Result<Vec<u8>> {
    let path = cv_dir.join("folds.csv");
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// The members' predictions of one fold, averaged image by image.
fn average(each: Vec<FoldPredictions>) -> Result<FoldPredictions> {
    let n = each.len() as f32;
    let mut it = each.into_iter();
    let mut sum = it.next().context("no member")?;
    for p in it {
        if p.paths != sum.paths {
            bail!("the members' folds hold different images (was the data folder changed?)");
        }
        for (s, q) in sum.probs.iter_mut().zip(&p.probs) {
            *s += q;
        }
        sum.epochs = sum.epochs.max(p.epochs);
        sum.seconds_per_epoch = None;
        sum.located = None; // an ensemble's locations are not one model's
    }
    for s in &mut sum.probs {
        *s /= n;
    }
    Ok(sum)
}

/// One fold's out-of-fold predictions from its final weights.
struct FoldPredictions {
    paths: Vec<PathBuf>,
    labels: Vec<f32>,
    probs: Vec<f32>,
    /// Epochs trained (the longest member's, for a judgement of several).
    epochs: usize,
    /// The median seconds of its training epochs (None for an average of several members).
    seconds_per_epoch: Option<f64>,
    /// Where the fold's model said each fracture is, judged against the outlines (and the file
    /// they came from), when there are outlines beside the data (a cross-validation of one
    /// recipe, or a judgement of one).
    located: Option<(PathBuf, Vec<crate::eval::Located>)>,
}

fn predict_fold<B: Backend>(
    be: &B,
    cv_dir: &Path,
    cv: &CvConfig,
    fold: usize,
    (tta, locate): (bool, bool),
) -> Result<FoldPredictions> {
    let fold_dir = cv_dir.join(format!("fold-{fold}"));
    let (mut model, info) = train::load_final(be, &fold_dir)?;
    let cfg = TrainConfig {
        quiet: true,
        ..fold_config(cv_dir, cv, fold)
    };
    let (_, val, _) = train::load_data(&cfg, &info.spec)?;
    let probs = crate::eval::model_probabilities(be, &mut model, &val, cfg.batch_size, tta);
    let mut fold = FoldPredictions {
        paths: val.paths,
        labels: val.labels,
        probs,
        epochs: info.epoch,
        seconds_per_epoch: median_epoch_seconds(&fold_dir),
        located: None,
    };
    let annotations = match locate {
        true => Annotations::find(&cfg.data, cfg.annotations.as_deref())?,
        false => None,
    };
    if let Some(annotations) = annotations {
        let maps = crate::eval::fracture_maps_of(be, model, &fold.paths, true)?;
        let scored = crate::eval::Scored {
            paths: fold.paths.clone(),
            labels: fold.labels.clone(),
            probs: fold.probs.clone(),
            threshold: info.threshold,
            failed: Vec::new(),
        };
        let located = crate::eval::judge_maps(maps, &scored, &annotations);
        fold.located = Some((annotations.file.clone(), located));
    }
    Ok(fold)
}

/// The median of the `seconds` column of a fold's `metrics.csv`: its time per epoch, which
/// the epochs spent validating or saving a checkpoint do not sway. None without one.
fn median_epoch_seconds(fold_dir: &Path) -> Option<f64> {
    let csv = std::fs::read_to_string(fold_dir.join("metrics.csv")).ok()?;
    let mut seconds = crate::plots::column(&csv, "seconds");
    seconds.sort_by(f64::total_cmp);
    seconds.get(seconds.len() / 2).copied()
}

/// Where the folds' models said the fractures are, pooled over the folds and judged against the
/// outlines (with the groups of a `dataset.csv` beside them, if there is one); None when any fold
/// has no outlines.
fn pooled_localization(preds: &[FoldPredictions]) -> Result<Option<LocalizationReport>> {
    let Some(located) = preds
        .iter()
        .map(|p| p.located.clone())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let annotations = Annotations::read(&located[0].0)?;
    let located: Vec<Vec<crate::eval::Located>> = located.into_iter().map(|l| l.1).collect();
    let table = annotations.file.with_file_name("dataset.csv");
    let groups = match table.exists() {
        true => Some(Groups::read(&table)?),
        false => None,
    };
    let pooled: Vec<_> = located.into_iter().flatten().collect();
    Ok(Some(crate::eval::report_located(
        &annotations,
        &pooled,
        groups.as_ref(),
        Bootstrap::default(),
    )))
}

/// The figures of out-of-fold predictions, written (summary, predictions, plots) into `cv_dir`.
fn summarise(
    preds: &[FoldPredictions],
    cv_dir: &Path,
    model: &str,
    seconds: f64,
) -> Result<CvSummary> {
    let all = |f: &dyn Fn(&FoldPredictions) -> &Vec<f32>, skip: Option<usize>| -> Vec<f32> {
        preds
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .flat_map(|(_, p)| f(p).iter().copied())
            .collect()
    };
    let folds: Vec<FoldFigures> = preds
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let others = (all(&|p| &p.probs, Some(i)), all(&|p| &p.labels, Some(i)));
            let threshold = best_threshold(&others.0, &others.1);
            let m = Metrics::new(&p.probs, &p.labels, threshold, 0.0);
            FoldFigures {
                fold: i + 1,
                images: p.labels.len(),
                fractured: m.confusion.tp + m.confusion.fn_,
                threshold,
                roc_auc: m.roc_auc,
                average_precision: average_precision(&p.probs, &p.labels),
                balanced_accuracy: m.balanced_accuracy,
                sensitivity: m.recall,
                specificity: m.specificity,
                brier: brier(&p.probs, &p.labels),
                epochs: p.epochs,
                seconds_per_epoch: p.seconds_per_epoch,
            }
        })
        .collect();
    let over = |f: fn(&FoldFigures) -> f64| {
        let (mean, sd) = mean_and_sd(&folds.iter().map(f).collect::<Vec<_>>());
        MeanSd { mean, sd }
    };
    let (probs, labels) = (all(&|p| &p.probs, None), all(&|p| &p.labels, None));
    let threshold = best_threshold(&probs, &labels);
    let localization = pooled_localization(preds)?;
    write_predictions(cv_dir, preds)?;
    write_plots(cv_dir, preds, &folds)?;
    let summary = CvSummary {
        cv_dir: cv_dir.to_path_buf(),
        model: model.to_string(),
        roc_auc: over(|f| f.roc_auc),
        average_precision: over(|f| f.average_precision),
        balanced_accuracy: over(|f| f.balanced_accuracy),
        sensitivity: over(|f| f.sensitivity),
        specificity: over(|f| f.specificity),
        brier: over(|f| f.brier),
        pooled: Report::new(&probs, &labels, threshold, 0.0, Bootstrap::default()),
        threshold,
        folds,
        seconds,
        localization,
    };
    write_summary(&summary, cv_dir)?;
    Ok(summary)
}

fn write_predictions(cv_dir: &Path, preds: &[FoldPredictions]) -> Result<()> {
    let mut text = String::from("file,label,fold,probability\n");
    for (i, p) in preds.iter().enumerate() {
        for ((path, label), prob) in p.paths.iter().zip(&p.labels).zip(&p.probs) {
            // every digit an f32 needs, so that the pooled figures can be recomputed from it
            text.push_str(&format!("{},{label},{},{prob}\n", path.display(), i + 1));
        }
    }
    write_atomic(&cv_dir.join("predictions.csv"), text.as_bytes())
}

fn write_plots(cv_dir: &Path, preds: &[FoldPredictions], folds: &[FoldFigures]) -> Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = preds
        .iter()
        .zip(folds)
        .map(|(p, f)| {
            (
                format!("fold {}: AUC {:.3}", f.fold, f.roc_auc),
                roc_curve(&p.probs, &p.labels),
            )
        })
        .collect();
    let (mean, sd) = mean_and_sd(&folds.iter().map(|f| f.roc_auc).collect::<Vec<_>>());
    crate::plots::roc_curves(
        &cv_dir.join("roc.png"),
        &format!("ROC of {} folds, AUC {mean:.3} ± {sd:.3}", folds.len()),
        &curves,
    )?;
    let probs: Vec<f32> = preds.iter().flat_map(|p| p.probs.iter().copied()).collect();
    let labels: Vec<f32> = preds
        .iter()
        .flat_map(|p| p.labels.iter().copied())
        .collect();
    let bins = crate::metrics::report::calibration_bins(
        &probs,
        &labels,
        crate::metrics::report::CALIBRATION_BINS,
    );
    crate::plots::reliability(
        &cv_dir.join("reliability.png"),
        &bins,
        crate::metrics::report::expected_calibration_error(&bins),
    )
}

impl FoldFigures {
    /// ROC-AUC, average precision, balanced accuracy, sensitivity, specificity, Brier.
    fn figures(&self) -> [f64; 6] {
        [
            self.roc_auc,
            self.average_precision,
            self.balanced_accuracy,
            self.sensitivity,
            self.specificity,
            self.brier,
        ]
    }
}

impl CvSummary {
    /// The mean and standard deviation of each of [`FoldFigures::figures`].
    fn over_folds(&self) -> [MeanSd; 6] {
        [
            self.roc_auc,
            self.average_precision,
            self.balanced_accuracy,
            self.sensitivity,
            self.specificity,
            self.brier,
        ]
    }
}

/// Rows "mean" and "sd": (name, the six figures).
fn mean_and_sd_rows(s: &CvSummary) -> [(&'static str, [f64; 6]); 2] {
    let over = s.over_folds();
    [("mean", over.map(|m| m.mean)), ("sd", over.map(|m| m.sd))]
}

fn write_summary(s: &CvSummary, cv_dir: &Path) -> Result<()> {
    let join = |v: [f64; 6]| v.map(|x| format!("{x:.6}")).join(",");
    let mut csv = String::from(
        "fold,images,fractured,threshold,roc_auc,average_precision,balanced_accuracy,\
         sensitivity,specificity,brier,epochs,seconds_per_epoch\n",
    );
    for f in &s.folds {
        let seconds = f
            .seconds_per_epoch
            .map_or(String::new(), |t| format!("{t:.2}"));
        csv.push_str(&format!(
            "{},{},{},{:.4},{},{},{seconds}\n",
            f.fold,
            f.images,
            f.fractured,
            f.threshold,
            join(f.figures()),
            f.epochs
        ));
    }
    for (name, v) in mean_and_sd_rows(s) {
        csv.push_str(&format!("{name},,,,{},,\n", join(v)));
    }
    write_atomic(&cv_dir.join("summary.csv"), csv.as_bytes())?;
    write_atomic(
        &cv_dir.join("summary.json"),
        serde_json::to_string_pretty(s)?.as_bytes(),
    )
}

/// The six figures as columns of the printed table.
fn columns(v: [f64; 6]) -> String {
    v.map(|x| format!("{x:>10.4}")).concat()
}

/// The summary as the text `cv` prints.
pub fn render(s: &CvSummary) -> String {
    let heads =
        ["ROC-AUC", "avg prec", "bal-acc", "sens", "spec", "Brier"].map(|h| format!("{h:>10}"));
    let mut out = format!(
        "\ncross-validation of {} ({} folds, final weights of each fold, thresholds chosen on \
         the other folds)\n{:<6}{:>7}{:>10}{}{:>8}{:>9}\n",
        s.model,
        s.folds.len(),
        "fold",
        "images",
        "fractured",
        heads.concat(),
        "thresh",
        "s/epoch"
    );
    for f in &s.folds {
        let seconds = f
            .seconds_per_epoch
            .map_or("-".into(), |t| format!("{t:.1}"));
        out.push_str(&format!(
            "{:<6}{:>7}{:>10}{}{:>8.3}{seconds:>9}\n",
            f.fold,
            f.images,
            f.fractured,
            columns(f.figures()),
            f.threshold
        ));
    }
    for (name, v) in mean_and_sd_rows(s) {
        out.push_str(&format!("{name:<23}{}\n", columns(v)));
    }
    let p = &s.pooled;
    out.push_str(&format!(
        "\npooled out-of-fold predictions of {} images, 95 % bootstrap intervals:\n  ROC-AUC \
         {}\n  average precision {}\n  balanced accuracy {} at threshold {:.3}\n  \
         sensitivity at specificity 0.8: {:.3}, at 0.9: {:.3}; Brier {:.4}, calibration error {:.4}\n",
        p.metrics.confusion.tp + p.metrics.confusion.fp + p.metrics.confusion.tn + p.metrics.confusion.fn_,
        p.intervals.roc_auc,
        p.intervals.average_precision,
        p.intervals.balanced_accuracy,
        s.threshold,
        p.sensitivity_at_specificity_0_8,
        p.sensitivity_at_specificity_0_9,
        p.brier,
        p.expected_calibration_error
    ));
    if let Some(l) = &s.localization {
        out.push_str("pooled out of fold, ");
        out.push_str(&l.render());
    }
    out.push_str(&format!(
        "took {:.1} min; summary.csv, summary.json, predictions.csv, roc.png and reliability.png in {}\n",
        s.seconds / 60.0,
        s.cv_dir.display()
    ));
    out
}
