//! The properties that make a cross-validation honest, each a check of a finished `cv` folder that
//! says what broke. `tests/cli.rs` runs them on a real cross-validation and, as negative
//! controls, on the same folder's files tampered with the leak each one guards against.

use fracture_cnn::metrics::{best_threshold, roc_auc};
use std::collections::BTreeMap;
use std::path::Path;

/// A row of `folds.csv`: an image, its fold and its near-duplicate group.
#[derive(Clone, Debug)]
pub struct FoldRow {
    pub file: String,
    pub fold: usize,
    pub group: usize,
}

/// A row of `predictions.csv`: an image's out-of-fold probability.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub file: String,
    pub label: f32,
    pub fold: usize,
    pub probability: f32,
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub fn read_folds(cv_dir: &Path) -> Vec<FoldRow> {
    rows(&cv_dir.join("folds.csv"))
        .into_iter()
        .map(|c| FoldRow {
            file: c[0].clone(),
            fold: c[2].parse().unwrap(),
            group: c[3].parse().unwrap(),
        })
        .collect()
}

pub fn read_predictions(cv_dir: &Path) -> Vec<Prediction> {
    rows(&cv_dir.join("predictions.csv"))
        .into_iter()
        .map(|c| Prediction {
            file: c[0].clone(),
            label: c[1].parse().unwrap(),
            fold: c[2].parse().unwrap(),
            probability: c[3].parse().unwrap(),
        })
        .collect()
}

pub fn read_summary(cv_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(cv_dir.join("summary.json")).unwrap()).unwrap()
}

fn probs_and_labels<'a>(preds: impl Iterator<Item = &'a Prediction>) -> (Vec<f32>, Vec<f32>) {
    preds.map(|p| (p.probability, p.label)).unzip()
}

/// Every fold's threshold is [`best_threshold`] over the **other** folds' out-of-fold
/// predictions, never over its own.
pub fn thresholds_come_from_other_folds(
    summary: &serde_json::Value,
    preds: &[Prediction],
) -> Result<(), String> {
    for f in summary["folds"].as_array().unwrap() {
        let fold = f["fold"].as_u64().unwrap() as usize;
        let stated = f["threshold"].as_f64().unwrap() as f32;
        let (probs, labels) = probs_and_labels(preds.iter().filter(|p| p.fold != fold));
        let honest = best_threshold(&probs, &labels);
        if stated != honest {
            return Err(format!(
                "fold {fold}'s threshold is {stated}, the other folds' best is {honest}"
            ));
        }
    }
    Ok(())
}

/// The pooled figures are those of `predictions.csv`: its ROC-AUC and its best threshold.
pub fn pooled_figures_are_the_predictions(
    summary: &serde_json::Value,
    preds: &[Prediction],
) -> Result<(), String> {
    let (probs, labels) = probs_and_labels(preds.iter());
    let auc = roc_auc(&probs, &labels);
    let stated = summary["pooled"]["metrics"]["roc_auc"].as_f64().unwrap();
    if (stated - auc).abs() > 1e-12 {
        return Err(format!("pooled ROC-AUC {stated}, predictions.csv's {auc}"));
    }
    let threshold = best_threshold(&probs, &labels);
    let stated = summary["threshold"].as_f64().unwrap() as f32;
    if stated != threshold {
        return Err(format!(
            "pooled threshold {stated}, predictions.csv's {threshold}"
        ));
    }
    Ok(())
}

/// Every image is predicted once, in the fold `folds.csv` gives it.
pub fn predictions_are_out_of_fold(preds: &[Prediction], folds: &[FoldRow]) -> Result<(), String> {
    let fold_of: BTreeMap<&str, usize> = folds.iter().map(|r| (r.file.as_str(), r.fold)).collect();
    if preds.len() != folds.len() {
        return Err(format!(
            "{} predictions of {} images",
            preds.len(),
            folds.len()
        ));
    }
    for p in preds {
        match fold_of.get(p.file.as_str()) {
            Some(&f) if f == p.fold => {}
            other => {
                return Err(format!(
                    "{} predicted in fold {}, folds.csv says {other:?}",
                    p.file, p.fold
                ))
            }
        }
    }
    Ok(())
}

/// Every near-duplicate group lies in one fold.
pub fn near_duplicates_share_a_fold(folds: &[FoldRow]) -> Result<(), String> {
    let mut fold_of_group = BTreeMap::new();
    for r in folds {
        let fold = *fold_of_group.entry(r.group).or_insert(r.fold);
        if fold != r.fold {
            return Err(format!(
                "group {} is in folds {fold} and {} ({})",
                r.group, r.fold, r.file
            ));
        }
    }
    Ok(())
}

/// A fold's training images hold none of its own images nor a near-duplicate of one, and its
/// validation images are exactly its own.
pub fn training_leaves_the_fold_out(
    fold: usize,
    training: &[String],
    validation: &[String],
    folds: &[FoldRow],
) -> Result<(), String> {
    let row: BTreeMap<&str, &FoldRow> = folds.iter().map(|r| (r.file.as_str(), r)).collect();
    let own_groups: Vec<usize> = folds
        .iter()
        .filter(|r| r.fold == fold)
        .map(|r| r.group)
        .collect();
    for file in training {
        let r = row
            .get(file.as_str())
            .ok_or(format!("{file} is not in folds.csv"))?;
        if r.fold == fold || own_groups.contains(&r.group) {
            return Err(format!(
                "fold {fold} trained on {file} (fold {}, group {})",
                r.fold, r.group
            ));
        }
    }
    let mut own: Vec<&str> = folds
        .iter()
        .filter(|r| r.fold == fold)
        .map(|r| r.file.as_str())
        .collect();
    let mut judged: Vec<&str> = validation.iter().map(String::as_str).collect();
    own.sort();
    judged.sort();
    if own != judged {
        return Err(format!(
            "fold {fold} is judged on {} images, {} are its own",
            judged.len(),
            own.len()
        ));
    }
    Ok(())
}

/// Each image's out-of-fold probability is what its own fold's model says: `fresh` holds, per
/// file, the probability of the model of the fold each prediction names.
pub fn predictions_are_the_fold_models(
    preds: &[Prediction],
    fresh: &BTreeMap<String, f32>,
) -> Result<(), String> {
    for p in preds {
        let again = fresh[&p.file];
        let gap = (p.probability - again).abs();
        if gap.is_nan() || gap > 1e-5 {
            return Err(format!(
                "{}: predictions.csv says {}, fold {}'s model says {again}",
                p.file, p.probability, p.fold
            ));
        }
    }
    Ok(())
}
