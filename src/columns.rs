//! The figures of a training epoch, as one table: each column's name in `metrics.csv` (which the
//! plots read by name), how it is written, and where it shows in the epoch's log line. A new
//! figure is one row here, and the CSV, the log and the plots agree on it.

use crate::metrics::Metrics;
use serde::Serialize;

/// The figures of one epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Validation metrics at the threshold 0.5.
    pub val: Metrics,
    /// The threshold that maximises balanced accuracy on validation (saved with the model), and
    /// the validation metrics there.
    pub threshold: f32,
    pub at_threshold: Metrics,
    /// The learning rate of the epoch.
    pub lr: f32,
    pub seconds: f64,
    pub train_images_per_s: f64,
}

/// How a column's value is written.
#[derive(Clone, Copy, PartialEq)]
enum Digits {
    /// A count or an epoch number.
    Whole,
    /// Fixed-point with this many decimals.
    Fixed(usize),
    /// Scientific with this many decimals.
    Sci(usize),
}

/// Where a column shows in the log line.
#[derive(Clone, Copy, PartialEq)]
enum Log {
    /// Not in the log line (the CSV has it).
    No,
    /// In `group`, as "label value", the value written as `Digits` says.
    Named(Group, &'static str, Digits),
    /// In the timing group, as "value unit".
    Unit(&'static str, usize),
}

/// The groups of the log line, in order, separated by " | ".
#[derive(Clone, Copy, PartialEq)]
enum Group {
    Train,
    Val,
    AtThreshold,
    Rate,
}

struct Column {
    name: &'static str,
    value: fn(&EpochReport) -> f64,
    digits: Digits,
    log: Log,
}

const fn col(
    name: &'static str,
    value: fn(&EpochReport) -> f64,
    digits: Digits,
    log: Log,
) -> Column {
    Column {
        name,
        value,
        digits,
        log,
    }
}

use Digits::{Fixed, Sci, Whole};
use Group::{AtThreshold, Rate, Train, Val};

/// Every column, in the CSV's order.
#[rustfmt::skip]
const COLUMNS: &[Column] = &[
    col("epoch",            |r| r.epoch as f64,      Whole,    Log::No),
    col("train_loss",       |r| r.train_loss,        Fixed(6), Log::Named(Train, "loss", Fixed(4))),
    col("train_accuracy",   |r| r.train_accuracy,    Fixed(6), Log::Named(Train, "acc", Fixed(3))),
    col("val_loss",         |r| r.val.loss,          Fixed(6), Log::Named(Val, "loss", Fixed(4))),
    col("val_accuracy",     |r| r.val.accuracy,      Fixed(6), Log::Named(Val, "acc", Fixed(3))),
    col("val_balanced_accuracy", |r| r.val.balanced_accuracy, Fixed(6), Log::Named(Val, "bal-acc", Fixed(3))),
    col("val_precision",    |r| r.val.precision,     Fixed(6), Log::Named(Val, "prec", Fixed(3))),
    col("val_recall",       |r| r.val.recall,        Fixed(6), Log::Named(Val, "rec", Fixed(3))),
    col("val_specificity",  |r| r.val.specificity,   Fixed(6), Log::No),
    col("val_f1",           |r| r.val.f1,            Fixed(6), Log::No),
    col("val_roc_auc",      |r| r.val.roc_auc,       Fixed(6), Log::Named(Val, "auc", Fixed(3))),
    col("threshold",        |r| r.threshold as f64,  Fixed(6), Log::No),
    col("val_balanced_accuracy_at_threshold", |r| r.at_threshold.balanced_accuracy, Fixed(6),
        Log::Named(AtThreshold, "bal-acc", Fixed(3))),
    col("val_recall_at_threshold", |r| r.at_threshold.recall, Fixed(6),
        Log::Named(AtThreshold, "sens", Fixed(3))),
    col("val_specificity_at_threshold", |r| r.at_threshold.specificity, Fixed(6),
        Log::Named(AtThreshold, "spec", Fixed(3))),
    col("val_tp",           |r| r.at_threshold.confusion.tp as f64,  Whole, Log::No),
    col("val_fp",           |r| r.at_threshold.confusion.fp as f64,  Whole, Log::No),
    col("val_tn",           |r| r.at_threshold.confusion.tn as f64,  Whole, Log::No),
    col("val_fn",           |r| r.at_threshold.confusion.fn_ as f64, Whole, Log::No),
    col("lr",               |r| r.lr as f64,         Sci(6),   Log::Named(Rate, "lr", Sci(2))),
    col("seconds",          |r| r.seconds,           Fixed(2), Log::Unit("s", 1)),
    col("train_images_per_s", |r| r.train_images_per_s, Fixed(2), Log::Unit("img/s", 1)),
];

/// The header line of `metrics.csv`.
pub fn csv_header() -> String {
    COLUMNS.iter().map(|c| c.name).collect::<Vec<_>>().join(",")
}

/// The epoch's line of `metrics.csv`.
pub fn csv_row(r: &EpochReport) -> String {
    let cell = |c: &Column| written((c.value)(r), c.digits);
    COLUMNS.iter().map(cell).collect::<Vec<_>>().join(",")
}

fn written(v: f64, digits: Digits) -> String {
    match digits {
        Whole => format!("{v:.0}"),
        Fixed(d) => format!("{v:.d$}"),
        Sci(d) => format!("{v:.d$e}"),
    }
}

/// The epoch's log line: "epoch   3/10  train loss 0.9 acc 0.7 | val ... | at threshold 0.48:
/// ... | lr 1.00e-3 | 5.4 s, 61.2 img/s".
pub fn log_line(r: &EpochReport, epochs: usize) -> String {
    let named = |group: Group| {
        COLUMNS
            .iter()
            .filter_map(|c| match c.log {
                Log::Named(g, label, digits) if g == group => {
                    Some(format!("{label} {}", written((c.value)(r), digits)))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let timing = COLUMNS
        .iter()
        .filter_map(|c| match c.log {
            Log::Unit(unit, d) => Some(format!("{:.d$} {unit}", (c.value)(r))),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "epoch {:>3}/{epochs}  train {} | val {} | at threshold {:.3}: {} | {} | {timing}",
        r.epoch,
        named(Train),
        named(Val),
        r.threshold,
        named(AtThreshold),
        named(Rate),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn report() -> EpochReport {
        let val = Metrics::new(&[0.9, 0.2, 0.6, 0.1], &[1.0, 0.0, 0.0, 0.0], 0.5, 0.4);
        EpochReport {
            epoch: 3,
            train_loss: 0.5,
            train_accuracy: 0.75,
            at_threshold: Metrics::new(&[0.9, 0.2, 0.6, 0.1], &[1.0, 0.0, 0.0, 0.0], 0.7, 0.4),
            val,
            threshold: 0.7,
            lr: 1e-3,
            seconds: 5.44,
            train_images_per_s: 61.25,
        }
    }

    #[test]
    fn the_csv_the_log_and_the_plots_read_one_table() {
        let header = csv_header();
        let row = csv_row(&report());
        assert_eq!(header.split(',').count(), row.split(',').count());
        // the plots read these columns by name
        for name in [
            "train_loss",
            "val_loss",
            "train_accuracy",
            "val_accuracy",
            "val_roc_auc",
            "val_balanced_accuracy_at_threshold",
        ] {
            assert!(header.split(',').any(|h| h == name), "{name}");
        }
        assert!(
            row.starts_with("3,0.500000,0.750000,0.400000,0.750000,"),
            "{row}"
        );
        assert!(row.ends_with(",1.000000e-3,5.44,61.25"), "{row}");
        let line = log_line(&report(), 10);
        assert!(
            line.starts_with(
                "epoch   3/10  train loss 0.5000 acc 0.750 | val loss 0.4000 acc 0.750"
            ),
            "{line}"
        );
        assert!(line.contains("| at threshold 0.700: bal-acc 1.000 sens 1.000 spec 1.000 | lr 1.00e-3 | 5.4 s, 61.2 img/s"), "{line}");
    }
}
