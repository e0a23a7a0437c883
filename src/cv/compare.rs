//! `fracture-cnn cv --compare A B`: is recipe B better than recipe A?
//!
//! Two cross-validations of the same folds (or `cv --judge` folders of them) have each image's
//! out-of-fold probability under both recipes. They are compared twice: fold by fold (the
//! difference of each fold's ROC-AUC, its mean and spread, and on how many folds B is ahead),
//! and pooled, with a paired bootstrap over the images (the same images drawn for both in each
//! resample), which gives the difference an interval. A gain whose interval holds 0 is not a
//! gain the data can tell from chance.

use crate::metrics::report::{average_precision, mean_and_sd, PairedDifference};
use crate::metrics::{roc_auc, Bootstrap};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One cross-validation's out-of-fold predictions (`predictions.csv`), by image.
struct Predictions {
    dir: PathBuf,
    /// image → (label, fold, probability)
    by_image: HashMap<String, (f32, usize, f32)>,
}

impl Predictions {
    fn read(dir: &Path) -> Result<Predictions> {
        let path = dir.join("predictions.csv");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: --compare takes finished cross-validations (or cv --judge \
                 folders), which hold it",
                path.display()
            )
        })?;
        let mut by_image = HashMap::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let row = parse_row(line).with_context(|| {
                format!(
                    "{}:{}: expected file,label,fold,probability, got '{line}'",
                    path.display(),
                    i + 1
                )
            })?;
            if by_image.insert(row.0, (row.1, row.2, row.3)).is_some() {
                bail!("{}:{}: an image listed twice", path.display(), i + 1);
            }
        }
        if by_image.is_empty() {
            bail!("{} lists no image", path.display());
        }
        Ok(Predictions {
            dir: dir.to_path_buf(),
            by_image,
        })
    }
}

/// `file,label,fold,probability`, split from the right (a file name may hold a comma).
fn parse_row(line: &str) -> Option<(String, f32, usize, f32)> {
    let mut parts = line.rsplitn(4, ',');
    let prob: f32 = parts.next()?.trim().parse().ok()?;
    let fold: usize = parts.next()?.trim().parse().ok()?;
    let label: f32 = parts.next()?.trim().parse().ok()?;
    let file = parts.next()?.to_string();
    let valid = (label == 0.0 || label == 1.0) && (0.0..=1.0).contains(&prob) && fold >= 1;
    valid.then_some((file, label, fold, prob))
}

/// One fold's ROC-AUC under A and B.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FoldComparison {
    pub fold: usize,
    pub images: usize,
    pub a: f64,
    pub b: f64,
}

/// What `cv --compare` reports.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub folds: Vec<FoldComparison>,
    /// Mean and standard deviation over the folds of B's ROC-AUC minus A's.
    pub fold_difference_mean: f64,
    pub fold_difference_sd: f64,
    /// Folds on which B's ROC-AUC is above A's.
    pub folds_b_ahead: usize,
    /// Over all images pooled, paired bootstrap.
    pub pooled_roc_auc: PairedDifference,
    pub pooled_average_precision: PairedDifference,
    pub bootstrap: Bootstrap,
}

/// Compares the out-of-fold predictions in the folders `a` and `b`, which must hold the same
/// images in the same folds.
pub fn compare(a: &Path, b: &Path, bootstrap: Bootstrap) -> Result<Comparison> {
    let (pa, pb) = (Predictions::read(a)?, Predictions::read(b)?);
    let mut images: Vec<&String> = pa.by_image.keys().collect();
    images.sort();
    let mut rows = Vec::with_capacity(images.len());
    for image in images {
        let Some(&(label_b, fold_b, prob_b)) = pb.by_image.get(image) else {
            bail!(
                "{} judges {image}, {} does not: compare cross-validations of the same data",
                pa.dir.display(),
                pb.dir.display()
            );
        };
        let (label, fold, prob_a) = pa.by_image[image];
        if (label, fold) != (label_b, fold_b) {
            bail!(
                "{image} is in fold {fold} of {} but fold {fold_b} of {} (or its label differs): \
                 compare cross-validations that deal the same folds (the same data, --seed and \
                 --folds)",
                pa.dir.display(),
                pb.dir.display()
            );
        }
        rows.push((fold, label, prob_a, prob_b));
    }
    if pb.by_image.len() != rows.len() {
        bail!(
            "{} judges images that {} does not: compare cross-validations of the same data",
            pb.dir.display(),
            pa.dir.display()
        );
    }
    let column = |f: fn(&(usize, f32, f32, f32)) -> f32, fold: Option<usize>| -> Vec<f32> {
        rows.iter()
            .filter(|r| fold.is_none_or(|k| r.0 == k))
            .map(f)
            .collect()
    };
    let fold_count = rows.iter().map(|r| r.0).max().unwrap_or(0);
    let folds: Vec<FoldComparison> = (1..=fold_count)
        .map(|k| {
            let labels = column(|r| r.1, Some(k));
            FoldComparison {
                fold: k,
                images: labels.len(),
                a: roc_auc(&column(|r| r.2, Some(k)), &labels),
                b: roc_auc(&column(|r| r.3, Some(k)), &labels),
            }
        })
        .filter(|f| f.images > 0)
        .collect();
    let diffs: Vec<f64> = folds.iter().map(|f| f.b - f.a).collect();
    let (mean, sd) = mean_and_sd(&diffs);
    let (labels, probs_a, probs_b) = (
        column(|r| r.1, None),
        column(|r| r.2, None),
        column(|r| r.3, None),
    );
    let pooled = |figure| bootstrap.paired_difference((&probs_a, &probs_b), &labels, figure);
    Ok(Comparison {
        a: pa.dir,
        b: pb.dir,
        fold_difference_mean: mean,
        fold_difference_sd: sd,
        folds_b_ahead: diffs.iter().filter(|&&d| d > 0.0).count(),
        pooled_roc_auc: pooled(roc_auc),
        pooled_average_precision: pooled(average_precision),
        folds,
        bootstrap,
    })
}

/// The comparison as the text `cv --compare` prints.
pub fn render(c: &Comparison) -> String {
    let mut out = format!(
        "A: {}\nB: {}\n\n{:<6}{:>7}{:>12}{:>12}{:>10}\n",
        c.a.display(),
        c.b.display(),
        "fold",
        "images",
        "ROC-AUC A",
        "ROC-AUC B",
        "B − A"
    );
    for f in &c.folds {
        out.push_str(&format!(
            "{:<6}{:>7}{:>12.4}{:>12.4}{:>+10.4}\n",
            f.fold,
            f.images,
            f.a,
            f.b,
            f.b - f.a
        ));
    }
    out.push_str(&format!(
        "B − A over the folds: {:+.4} ± {:.4} (mean ± sd); B ahead on {} of {} folds\n",
        c.fold_difference_mean,
        c.fold_difference_sd,
        c.folds_b_ahead,
        c.folds.len()
    ));
    out.push_str(&format!(
        "\npooled out-of-fold predictions, paired bootstrap ({} resamples, the same images for \
         both):\n",
        c.bootstrap.resamples
    ));
    for (name, d) in [
        ("ROC-AUC", &c.pooled_roc_auc),
        ("average precision", &c.pooled_average_precision),
    ] {
        out.push_str(&format!(
            "  {name}: A {:.4}, B {:.4}, B − A {:+.4} [{:+.4}, {:+.4}]; B not ahead in {:.1} % of \
             resamples\n",
            d.a,
            d.b,
            d.difference.value,
            d.difference.lo,
            d.difference.hi,
            100.0 * d.share_b_not_better
        ));
    }
    let verdict = if c.pooled_roc_auc.difference.lo > 0.0 {
        "B's ROC-AUC is higher, and the interval of the difference excludes 0"
    } else if c.pooled_roc_auc.difference.hi < 0.0 {
        "B's ROC-AUC is lower, and the interval of the difference excludes 0"
    } else {
        "the interval of the ROC-AUC difference holds 0: these images cannot tell A and B apart"
    };
    out.push_str(&format!("{verdict}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_from_the_right_and_reject_what_is_not_a_prediction() {
        assert_eq!(
            parse_row("a,b/x.jpg,1,3,0.25"),
            Some(("a,b/x.jpg".to_string(), 1.0, 3, 0.25))
        );
        for bad in [
            "x.jpg,1,3",
            "x.jpg,2,3,0.5",
            "x.jpg,1,0,0.5",
            "x.jpg,1,2,1.5",
            "x,1,2,p",
        ] {
            assert_eq!(parse_row(bad), None, "{bad}");
        }
    }
}
