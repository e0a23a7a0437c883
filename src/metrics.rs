//! Metrics of a binary classifier, positive class = fractured.
//!
//! The data is imbalanced (about 1 in 5 X-rays is fractured), so accuracy alone flatters a model
//! that always says "not fractured". Balanced accuracy (the mean of sensitivity and specificity)
//! and ROC-AUC (threshold-free) are the figures to watch.

use serde::Serialize;

pub mod localization;
pub mod report;
pub use report::{Bootstrap, Report};

/// Counts of a confusion matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
}

/// Everything reported per epoch and by `eval`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub precision: f64,
    /// Sensitivity: the share of fractures found.
    pub recall: f64,
    pub specificity: f64,
    pub f1: f64,
    pub roc_auc: f64,
    pub confusion: Confusion,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Confusion {
    /// Predicted positive when probability >= threshold.
    pub fn new(probs: &[f32], labels: &[f32], threshold: f32) -> Self {
        let mut c = Confusion::default();
        for (&p, &y) in probs.iter().zip(labels) {
            match (p >= threshold, y == 1.0) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }
}

impl Metrics {
    /// All metrics of predicted probabilities against labels in {0, 1}; `loss` is passed through.
    pub fn new(probs: &[f32], labels: &[f32], threshold: f32, loss: f64) -> Self {
        let c = Confusion::new(probs, labels, threshold);
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let specificity = ratio(c.tn, c.tn + c.fp);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Metrics {
            loss,
            accuracy: ratio(c.tp + c.tn, probs.len()),
            balanced_accuracy: (recall + specificity) / 2.0,
            precision,
            recall,
            specificity,
            f1,
            roc_auc: roc_auc(probs, labels),
            confusion: c,
        }
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative (ties count one half), computed from ranks (the Mann-Whitney U statistic) in
/// O(n log n). 0.5 when one class is absent.
pub fn roc_auc(probs: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let (mut rank_sum, mut i) = (0.0f64, 0);
    while i < order.len() {
        // a run of tied scores shares the mean of its ranks
        let mut j = i;
        while j + 1 < order.len() && probs[order[j + 1]] == probs[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| labels[order[k]] == 1.0).count() as f64 * mean_rank;
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l == 1.0).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The ROC curve's corners, from the highest score down: for each distinct score s, (s, FPR, TPR)
/// of the rule "fractured when the probability is at least s".
pub(crate) fn sweep(probs: &[f32], labels: &[f32]) -> Vec<(f32, f64, f64)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let pos = labels.iter().filter(|&&l| l == 1.0).count().max(1) as f64;
    let neg = (labels.len() as f64 - pos).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1.0 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        // a threshold cannot fall between tied scores: a point at the last of a run
        if order.get(k + 1).is_none_or(|&n| probs[n] != probs[i]) {
            points.push((probs[i], fp / neg, tp / pos));
        }
    }
    points
}

/// The decision threshold that maximises Youden's J = sensitivity + specificity − 1 (the same as
/// maximising balanced accuracy) on these scores: an image is called fractured when its
/// probability is at or above it. 0.5 when one class is absent.
pub fn best_threshold(probs: &[f32], labels: &[f32]) -> f32 {
    let pos = labels.iter().filter(|&&l| l == 1.0).count();
    if pos == 0 || pos == labels.len() {
        return 0.5;
    }
    let mut best = (f64::NEG_INFINITY, 0.5);
    for (score, fpr, tpr) in sweep(probs, labels) {
        if tpr - fpr > best.0 {
            best = (tpr - fpr, score);
        }
    }
    best.1
}

/// The points (false-positive rate, true-positive rate) of the ROC curve, one per distinct score.
pub fn roc_curve(probs: &[f32], labels: &[f32]) -> Vec<(f64, f64)> {
    let corners = sweep(probs, labels).into_iter().map(|(_, f, t)| (f, t));
    std::iter::once((0.0, 0.0)).chain(corners).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_threshold_maximises_balanced_accuracy() {
        let probs = [0.9, 0.8, 0.35, 0.3, 0.2, 0.1, 0.05];
        let labels = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let t = best_threshold(&probs, &labels);
        assert_eq!(t, 0.35);
        let at = |t| Metrics::new(&probs, &labels, t, 0.0).balanced_accuracy;
        for other in probs {
            assert!(at(t) >= at(other), "{t} vs {other}");
        }
        assert_eq!(best_threshold(&[0.2, 0.7], &[1.0, 1.0]), 0.5);
    }

    #[test]
    fn auc_matches_pairwise_definition() {
        let probs = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
        let labels = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..7 {
            for j in 0..7 {
                if labels[i] == 1.0 && labels[j] == 0.0 {
                    pairs += 1.0;
                    wins += if probs[i] > probs[j] {
                        1.0
                    } else if probs[i] == probs[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((roc_auc(&probs, &labels) - wins / pairs).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0.0, 1.0]), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.1], &[0.0, 1.0]), 0.0);
        let curve = roc_curve(&probs, &labels);
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn confusion_and_derived_rates() {
        let probs = [0.9, 0.8, 0.3, 0.6, 0.1, 0.2];
        let labels = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        let m = Metrics::new(&probs, &labels, 0.5, 0.0);
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 2,
                fn_: 1
            }
        );
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.specificity - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.balanced_accuracy - 2.0 / 3.0).abs() < 1e-12);
    }
}
