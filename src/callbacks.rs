//! What happens between epochs, as in Keras' callbacks: which validation figure decides what is
//! "better" (the best checkpoint, early stopping, reduce-on-plateau), and the learning-rate
//! schedule.

use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The validation figure that decides which epoch is best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    RocAuc,
    BalancedAccuracy,
    Accuracy,
    F1,
    Loss,
}

impl Monitor {
    pub const NAMES: &str = "roc_auc, balanced_accuracy, accuracy, f1, loss";

    pub fn value(self, m: &Metrics) -> f64 {
        match self {
            Monitor::RocAuc => m.roc_auc,
            Monitor::BalancedAccuracy => m.balanced_accuracy,
            Monitor::Accuracy => m.accuracy,
            Monitor::F1 => m.f1,
            Monitor::Loss => m.loss,
        }
    }

    /// `a` is better than `b` (lower for the loss, higher for the rest).
    pub fn better(self, a: f64, b: f64) -> bool {
        if self == Monitor::Loss {
            a < b
        } else {
            a > b
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Monitor::RocAuc => "ROC-AUC",
            Monitor::BalancedAccuracy => "balanced accuracy",
            Monitor::Accuracy => "accuracy",
            Monitor::F1 => "F1",
            Monitor::Loss => "loss",
        }
    }
}

impl FromStr for Monitor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
            .map_err(|_| format!("unknown metric '{s}': one of {}", Monitor::NAMES))
    }
}

/// How the learning rate changes over the epochs (before any reduce-on-plateau).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// From the base rate down along half a cosine, to near zero in the last epoch.
    Cosine,
    /// Multiplied by `factor` every `every` epochs.
    Step {
        every: usize,
        factor: f32,
    },
}

impl Schedule {
    /// The multiplier of the base rate in `epoch` (1-based) of `epochs`.
    pub fn factor(self, epoch: usize, epochs: usize) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let t = (epoch - 1) as f32 / epochs.max(1) as f32;
                0.5 * (1.0 + (std::f32::consts::PI * t).cos())
            }
            Schedule::Step { every, factor } => factor.powi(((epoch - 1) / every.max(1)) as i32),
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    /// `constant`, `cosine`, or `step:EVERY:FACTOR` (e.g. `step:10:0.5`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown schedule '{s}': constant, cosine or step:EVERY:FACTOR");
        match s.split(':').collect::<Vec<_>>().as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["cosine"] => Ok(Schedule::Cosine),
            ["step", every, factor] => {
                let every: usize = every.parse().map_err(|_| bad())?;
                let factor: f32 = factor.parse().map_err(|_| bad())?;
                if every == 0 || !(factor > 0.0 && factor <= 1.0) {
                    return Err(format!(
                        "step:EVERY:FACTOR needs EVERY >= 1 and 0 < FACTOR <= 1, got '{s}'"
                    ));
                }
                Ok(Schedule::Step { every, factor })
            }
            _ => Err(bad()),
        }
    }
}

/// Reduce-on-plateau: multiply the learning rate by `factor` when the monitored figure has not
/// improved for `patience` epochs (never below `min_lr`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    pub patience: usize,
    pub factor: f32,
    pub min_lr: f32,
}

/// Every between-epochs rule of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Callbacks {
    pub monitor: Monitor,
    pub schedule: Schedule,
    /// Stop when the monitored figure has not improved for this many epochs.
    pub early_stopping: Option<usize>,
    pub plateau: Option<Plateau>,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks {
            monitor: Monitor::RocAuc,
            schedule: Schedule::Constant,
            early_stopping: None,
            plateau: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_their_names() {
        assert_eq!("cosine".parse::<Schedule>(), Ok(Schedule::Cosine));
        let step: Schedule = "step:3:0.5".parse().unwrap();
        let f: Vec<f32> = (1..=7).map(|e| step.factor(e, 7)).collect();
        assert_eq!(f, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
        assert_eq!(Schedule::Cosine.factor(1, 10), 1.0);
        assert!((Schedule::Cosine.factor(6, 10) - 0.5).abs() < 1e-6);
        assert!(Schedule::Cosine.factor(10, 10) < 0.03);
        assert!("step:0:0.5".parse::<Schedule>().is_err());
        assert!("linear".parse::<Schedule>().unwrap_err().contains("cosine"));
        assert_eq!("balanced-accuracy".parse(), Ok(Monitor::BalancedAccuracy));
        assert!("auc".parse::<Monitor>().unwrap_err().contains("roc_auc"));
        assert!(Monitor::Loss.better(0.2, 0.3) && Monitor::RocAuc.better(0.8, 0.7));
    }
}
