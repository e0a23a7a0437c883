//! The figures `eval` and `cv` report beyond one confusion matrix: threshold-free ranking
//! (ROC-AUC, average precision), calibration (Brier score, expected calibration error and the
//! reliability diagram's bins), sensitivity at fixed specificities, the trivial baseline, and 95 %
//! bootstrap intervals for the figures a reader compares models by.

use super::{sweep, Metrics};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

/// Average precision (the area under the precision-recall curve as a step function):
/// AP = Σₙ (Rₙ − Rₙ₋₁) · Pₙ over the distinct scores from the highest down, as scikit-learn's
/// `average_precision_score`. Its chance level is the share of positives (0.18 here), not 0.5.
pub fn average_precision(probs: &[f32], labels: &[f32]) -> f64 {
    let pos = labels.iter().filter(|&&l| l == 1.0).count() as f64;
    if pos == 0.0 {
        return 0.0;
    }
    let neg = labels.len() as f64 - pos;
    let (mut ap, mut last_recall) = (0.0, 0.0);
    for (_, fpr, tpr) in sweep(probs, labels) {
        let (tp, fp) = (tpr * pos, fpr * neg);
        ap += (tpr - last_recall) * tp / (tp + fp);
        last_recall = tpr;
    }
    ap
}

/// Brier score: the mean of (p − y)², 0 for a perfect and sure model; always answering the base
/// rate π scores π(1 − π).
pub fn brier(probs: &[f32], labels: &[f32]) -> f64 {
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p as f64 - y as f64).powi(2))
        .sum();
    sum / probs.len().max(1) as f64
}

/// One bin of a reliability diagram: the images whose probability fell in `[lo, hi)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean predicted probability of the bin's images.
    pub mean_probability: f64,
    /// Share of them that are fractured.
    pub fraction_fractured: f64,
}

/// The reliability diagram's `bins` equal-width bins over [0, 1] (the last includes 1).
pub fn calibration_bins(probs: &[f32], labels: &[f32], bins: usize) -> Vec<CalibrationBin> {
    let mut sums = vec![(0usize, 0.0f64, 0.0f64); bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p as f64 * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p as f64;
        sums[b].2 += y as f64;
    }
    let mean = |sum: f64, count: usize| if count > 0 { sum / count as f64 } else { 0.0 };
    sums.iter()
        .enumerate()
        .map(|(b, &(count, p, y))| CalibrationBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count,
            mean_probability: mean(p, count),
            fraction_fractured: mean(y, count),
        })
        .collect()
}

/// Expected calibration error: Σ_bins (count / N) · |mean probability − fraction fractured|,
/// the average gap between what the model says and what happens, weighted by where it says it.
pub fn expected_calibration_error(bins: &[CalibrationBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .map(|b| {
            b.count as f64 / n.max(1) as f64 * (b.mean_probability - b.fraction_fractured).abs()
        })
        .sum()
}

/// The highest sensitivity any threshold reaches while keeping specificity at least `spec`.
pub fn sensitivity_at_specificity(probs: &[f32], labels: &[f32], spec: f64) -> f64 {
    sweep(probs, labels)
        .into_iter()
        .filter(|&(_, fpr, _)| 1.0 - fpr >= spec - 1e-12)
        .map(|(_, _, tpr)| tpr)
        .fold(0.0, f64::max)
}

/// A figure with its 95 % bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:.4}  [{:.4}, {:.4}]", self.value, self.lo, self.hi)
    }
}

/// The figures that get intervals, each a function of (probabilities, labels) at a fixed
/// threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Intervals {
    pub roc_auc: Interval,
    pub average_precision: Interval,
    pub balanced_accuracy: Interval,
    pub sensitivity: Interval,
    pub specificity: Interval,
}

/// How intervals are drawn: `resamples` stratified resamples from a generator seeded by `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bootstrap {
    pub resamples: usize,
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 2000,
            seed: 0,
        }
    }
}

/// The 2.5th and 97.5th percentiles of `values` (sorted in place), interpolated linearly.
fn percentile_interval(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let x = q * (values.len() - 1) as f64;
        let (i, frac) = (x.floor() as usize, x.fract());
        let next = values[(i + 1).min(values.len() - 1)];
        values[i] + frac * (next - values[i])
    };
    (at(0.025), at(0.975))
}

/// The five figures that get intervals, in the order of [`Intervals`]' fields.
fn interval_figures(probs: &[f32], labels: &[f32], threshold: f32) -> [f64; 5] {
    let m = Metrics::new(probs, labels, threshold, 0.0);
    [
        m.roc_auc,
        average_precision(probs, labels),
        m.balanced_accuracy,
        m.recall,
        m.specificity,
    ]
}

impl Bootstrap {
    /// Stratified percentile bootstrap: each resample draws, with replacement, as many fractured
    /// images from the fractured ones and as many others from the others as the set holds, so
    /// that every resample keeps the set's prevalence (and has both classes).
    pub fn intervals(&self, probs: &[f32], labels: &[f32], threshold: f32) -> Intervals {
        let full = interval_figures(probs, labels, threshold);
        let mut draws = vec![Vec::with_capacity(self.resamples); full.len()];
        let (mut p, mut y) = (Vec::new(), Vec::new());
        self.each_resample(labels, |picks| {
            p.clear();
            y.clear();
            p.extend(picks.iter().map(|&i| probs[i]));
            y.extend(picks.iter().map(|&i| labels[i]));
            for (d, v) in draws.iter_mut().zip(interval_figures(&p, &y, threshold)) {
                d.push(v);
            }
        });
        let [auc, ap, bal, sens, spec] = std::array::from_fn(|k| {
            let (lo, hi) = if draws[k].is_empty() {
                (full[k], full[k])
            } else {
                percentile_interval(&mut draws[k])
            };
            Interval {
                value: full[k],
                lo,
                hi,
            }
        });
        Intervals {
            roc_auc: auc,
            average_precision: ap,
            balanced_accuracy: bal,
            sensitivity: sens,
            specificity: spec,
        }
    }
}

impl Bootstrap {
    /// A figure of a set of images (given their indices into `labels`) with its stratified
    /// percentile interval, for figures that are not functions of probabilities alone (where a
    /// model pointed, its boxes).
    pub fn interval(&self, labels: &[f32], figure: impl Fn(&[usize]) -> f64) -> Interval {
        let all: Vec<usize> = (0..labels.len()).collect();
        let value = figure(&all);
        let mut draws = Vec::with_capacity(self.resamples);
        self.each_resample(labels, |picks| draws.push(figure(picks)));
        draws.retain(|v| v.is_finite());
        let (lo, hi) = if draws.is_empty() {
            (value, value)
        } else {
            percentile_interval(&mut draws)
        };
        Interval { value, lo, hi }
    }

    /// Calls `visit` with the images of each stratified resample (indices into `labels`): as
    /// many fractured images drawn with replacement from the fractured ones as there are, and
    /// as many others from the others.
    fn each_resample(&self, labels: &[f32], mut visit: impl FnMut(&[usize])) {
        let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1.0).collect();
        let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != 1.0).collect();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut picks = Vec::with_capacity(labels.len());
        for _ in 0..self.resamples {
            picks.clear();
            for class in [&pos, &neg].into_iter().filter(|c| !c.is_empty()) {
                picks.extend((0..class.len()).map(|_| class[rng.gen_range(0..class.len())]));
            }
            visit(&picks);
        }
    }

    /// A figure of model B's probabilities minus the same figure of model A's, on the same
    /// labelled images, with a paired bootstrap: each resample draws the same images for both
    /// models, so that how hard the drawn images are cancels out and only the models'
    /// difference varies.
    pub fn paired_difference(
        &self,
        (a, b): (&[f32], &[f32]),
        labels: &[f32],
        figure: fn(&[f32], &[f32]) -> f64,
    ) -> PairedDifference {
        assert!(a.len() == labels.len() && b.len() == labels.len());
        let (fa, fb) = (figure(a, labels), figure(b, labels));
        let mut diffs = Vec::with_capacity(self.resamples);
        let (mut pa, mut pb, mut y) = (Vec::new(), Vec::new(), Vec::new());
        self.each_resample(labels, |picks| {
            pa.clear();
            pb.clear();
            y.clear();
            pa.extend(picks.iter().map(|&i| a[i]));
            pb.extend(picks.iter().map(|&i| b[i]));
            y.extend(picks.iter().map(|&i| labels[i]));
            diffs.push(figure(&pb, &y) - figure(&pa, &y));
        });
        let not_better = diffs.iter().filter(|&&d| d <= 0.0).count() as f64;
        let share_b_not_better = not_better / diffs.len().max(1) as f64;
        let (lo, hi) = if diffs.is_empty() {
            (fb - fa, fb - fa)
        } else {
            percentile_interval(&mut diffs)
        };
        PairedDifference {
            a: fa,
            b: fb,
            difference: Interval {
                value: fb - fa,
                lo,
                hi,
            },
            share_b_not_better,
        }
    }
}

/// Model B's figure against model A's on the same images ([`Bootstrap::paired_difference`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PairedDifference {
    pub a: f64,
    pub b: f64,
    /// B − A, with its 95 % paired bootstrap interval.
    pub difference: Interval,
    /// The share of resamples in which B's figure is not above A's (a one-sided bootstrap
    /// p-value for "B is better").
    pub share_b_not_better: f64,
}

/// Everything `eval` reports on one labelled set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// At the model's decision threshold.
    pub metrics: Metrics,
    pub intervals: Intervals,
    pub bootstrap: Bootstrap,
    pub brier: f64,
    pub expected_calibration_error: f64,
    pub calibration: Vec<CalibrationBin>,
    pub sensitivity_at_specificity_0_8: f64,
    pub sensitivity_at_specificity_0_9: f64,
    /// Accuracy of always answering "not fractured", to read `metrics.accuracy` against.
    pub baseline_accuracy: f64,
    /// Share of fractured images: average precision's chance level.
    pub prevalence: f64,
}

/// Bins of the reliability diagram (and of the expected calibration error).
pub const CALIBRATION_BINS: usize = 10;

impl Report {
    pub fn new(probs: &[f32], labels: &[f32], threshold: f32, loss: f64, b: Bootstrap) -> Self {
        let calibration = calibration_bins(probs, labels, CALIBRATION_BINS);
        let positives = labels.iter().filter(|&&l| l == 1.0).count() as f64;
        let n = labels.len().max(1) as f64;
        Report {
            metrics: Metrics::new(probs, labels, threshold, loss),
            intervals: b.intervals(probs, labels, threshold),
            bootstrap: b,
            brier: brier(probs, labels),
            expected_calibration_error: expected_calibration_error(&calibration),
            calibration,
            sensitivity_at_specificity_0_8: sensitivity_at_specificity(probs, labels, 0.8),
            sensitivity_at_specificity_0_9: sensitivity_at_specificity(probs, labels, 0.9),
            baseline_accuracy: (n - positives) / n,
            prevalence: positives / n,
        }
    }
}

/// The mean and the sample standard deviation (n − 1) of `values`.
pub fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    const PROBS: [f32; 8] = [0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.1];
    const LABELS: [f32; 8] = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0];

    #[test]
    fn average_precision_matches_the_definition_by_hand() {
        // ranked: + - + + - - + -; precision at each hit: 1/1, 2/3, 3/4, 4/7; recall steps 1/4
        let ap = (1.0 + 2.0 / 3.0 + 3.0 / 4.0 + 4.0 / 7.0) / 4.0;
        assert!((average_precision(&PROBS, &LABELS) - ap).abs() < 1e-12);
        assert_eq!(average_precision(&[0.9, 0.1], &[1.0, 0.0]), 1.0);
    }

    #[test]
    fn brier_and_calibration_by_hand() {
        let probs = [0.05, 0.15, 0.95, 0.85];
        let labels = [0.0, 1.0, 1.0, 1.0];
        let b = (0.05f64.powi(2) + 0.85f64.powi(2) + 0.05f64.powi(2) + 0.15f64.powi(2)) / 4.0;
        assert!((brier(&probs, &labels) - b).abs() < 1e-6);
        let bins = calibration_bins(&probs, &labels, 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4);
        assert_eq!(
            (bins[0].count, bins[1].count, bins[8].count, bins[9].count),
            (1, 1, 1, 1)
        );
        assert_eq!(bins[1].fraction_fractured, 1.0);
        // |0.05-0| + |0.15-1| + |0.85-1| + |0.95-1|, each weighted 1/4
        let ece = (0.05 + 0.85 + 0.15 + 0.05) / 4.0;
        assert!((expected_calibration_error(&bins) - ece).abs() < 1e-6);
        // a probability of exactly 1 lands in the last bin
        assert_eq!(calibration_bins(&[1.0], &[1.0], 10)[9].count, 1);
    }

    #[test]
    fn sensitivity_at_a_specificity_takes_the_best_admissible_threshold() {
        // 4 negatives: specificity 0.75 allows one false positive (the 0.8), which admits the
        // thresholds down to 0.6: 3 of 4 fractures
        assert_eq!(sensitivity_at_specificity(&PROBS, &LABELS, 0.75), 0.75);
        assert_eq!(sensitivity_at_specificity(&PROBS, &LABELS, 1.0), 0.25);
        assert_eq!(sensitivity_at_specificity(&PROBS, &LABELS, 0.0), 1.0);
    }

    #[test]
    fn bootstrap_intervals_contain_the_figure_repeat_and_narrow_with_more_data() {
        let b = Bootstrap {
            resamples: 1000,
            seed: 7,
        };
        let iv = b.intervals(&PROBS, &LABELS, 0.5);
        for i in [iv.roc_auc, iv.average_precision, iv.balanced_accuracy] {
            assert!(i.lo <= i.value && i.value <= i.hi, "{i}");
            assert!(i.hi - i.lo > 0.05, "8 images give a wide interval: {i}");
        }
        assert_eq!(iv, b.intervals(&PROBS, &LABELS, 0.5), "seeded");
        let probs: Vec<f32> = PROBS.iter().cycle().take(800).copied().collect();
        let labels: Vec<f32> = LABELS.iter().cycle().take(800).copied().collect();
        let wide = iv.roc_auc.hi - iv.roc_auc.lo;
        let big = b.intervals(&probs, &labels, 0.5).roc_auc;
        assert!(big.hi - big.lo < wide / 5.0, "{big} against {}", iv.roc_auc);
    }

    #[test]
    fn a_paired_difference_is_nothing_for_one_model_and_sure_for_a_better_one() {
        // 40 images, 10 fractured; A scrambles them, B ranks every fracture first
        let labels: Vec<f32> = (0..40).map(|i| f32::from(u8::from(i % 4 == 0))).collect();
        let a: Vec<f32> = (0..40).map(|i| ((i * 17) % 40) as f32 / 40.0).collect();
        let b: Vec<f32> = (0..40)
            .map(|i| 0.3 * i as f32 / 40.0 + 0.6 * labels[i])
            .collect();
        let boot = Bootstrap {
            resamples: 500,
            seed: 3,
        };
        let same = boot.paired_difference((&a, &a), &labels, super::super::roc_auc);
        let zero = Interval {
            value: 0.0,
            lo: 0.0,
            hi: 0.0,
        };
        assert_eq!((same.difference, same.share_b_not_better), (zero, 1.0));
        let better = boot.paired_difference((&a, &b), &labels, super::super::roc_auc);
        assert_eq!(better.b, 1.0);
        assert!(better.a < 0.8, "{better:?}");
        assert!(better.difference.lo > 0.0, "{better:?}");
        assert!(better.difference.lo <= better.difference.value);
        assert!(better.difference.value <= better.difference.hi);
        assert_eq!(better.share_b_not_better, 0.0);
        // swapped, the same resamples: the difference and its interval negated
        let worse = boot.paired_difference((&b, &a), &labels, super::super::roc_auc);
        assert_relative_eq!(worse.difference.value, -better.difference.value);
        assert_relative_eq!(worse.difference.lo, -better.difference.hi, epsilon = 1e-12);
        assert_eq!(worse.share_b_not_better, 1.0);
    }

    #[test]
    fn a_report_holds_the_baseline_and_prevalence() {
        let r = Report::new(&PROBS, &LABELS, 0.5, 0.0, Bootstrap::default());
        assert_eq!(r.baseline_accuracy, 0.5);
        assert_eq!(r.prevalence, 0.5);
        assert_eq!(r.metrics, Metrics::new(&PROBS, &LABELS, 0.5, 0.0));
        let (m, sd) = mean_and_sd(&[1.0, 2.0, 3.0]);
        assert_eq!((m, sd), (2.0, 1.0));
    }
}
