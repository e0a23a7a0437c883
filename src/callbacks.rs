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

/// Where the between-epochs rules stand: saved with a run's progress, so that a resumed run
/// goes on deciding as the uninterrupted one would.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Standing {
    /// Best value of the monitored validation figure so far, and its epoch.
    pub best: Option<(f64, usize)>,
    /// Multiplier of the learning rate left by reduce-on-plateau.
    #[serde(default = "one")]
    pub lr_scale: f32,
    /// The last epoch that improved the monitored figure or reduced the learning rate.
    #[serde(default)]
    pub plateau_from: usize,
    /// Early stopping ended the run.
    #[serde(default)]
    pub stopped_early: bool,
}

fn one() -> f32 {
    1.0
}

impl Default for Standing {
    fn default() -> Self {
        Standing {
            best: None,
            lr_scale: 1.0,
            plateau_from: 0,
            stopped_early: false,
        }
    }
}

/// What the rules decided after an epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The epoch's figure is the best so far: its weights are the run's best.
    pub improved: bool,
    /// Reduce-on-plateau lowered the learning rate to this.
    pub lr_reduced_to: Option<f32>,
    /// Early stopping ends the run here.
    pub stop: bool,
}

impl Callbacks {
    /// The learning rate of `epoch` of `epochs`: the schedule's, times what reduce-on-plateau
    /// left.
    pub fn lr(&self, base_lr: f32, epoch: usize, epochs: usize, s: &Standing) -> f32 {
        base_lr * self.schedule.factor(epoch, epochs) * s.lr_scale
    }

    /// Applies every rule to the figure `value` of `epoch`: the best so far is kept; after
    /// `patience` epochs without a better one reduce-on-plateau lowers the learning rate (never
    /// below its minimum) and early stopping ends the run.
    pub fn after_epoch(
        &self,
        s: &mut Standing,
        epoch: usize,
        value: f64,
        base_lr: f32,
    ) -> Decision {
        let improved = s.best.is_none_or(|(b, _)| self.monitor.better(value, b));
        if improved {
            s.best = Some((value, epoch));
            s.plateau_from = epoch;
        }
        let mut lr_reduced_to = None;
        if let Some(pl) = self
            .plateau
            .filter(|pl| epoch - s.plateau_from >= pl.patience)
        {
            let next = (base_lr * s.lr_scale * pl.factor).max(pl.min_lr);
            s.lr_scale = next / base_lr;
            s.plateau_from = epoch;
            lr_reduced_to = Some(next);
        }
        let best_epoch = s.best.map_or(0, |(_, e)| e);
        s.stopped_early = self
            .early_stopping
            .is_some_and(|patience| epoch - best_epoch >= patience);
        Decision {
            improved,
            lr_reduced_to,
            stop: s.stopped_early,
        }
    }

    /// The lines a run prints for `decision`, as "validation roc_auc has not improved ...".
    pub fn explain(&self, decision: &Decision, s: &Standing) -> Vec<String> {
        let name = self.monitor.name();
        let mut lines = Vec::new();
        if let (Some(lr), Some(pl)) = (decision.lr_reduced_to, self.plateau) {
            lines.push(format!(
                "validation {name} has not improved for {} epochs: learning rate now {lr:.3e}",
                pl.patience
            ));
        }
        if decision.stop {
            let best_epoch = s.best.map_or(0, |(_, e)| e);
            lines.push(format!(
                "validation {name} has not improved since epoch {best_epoch}: stopping early"
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's AUCs 0.70, 0.75, 0.74, 0.73, 0.72 with patience 2 for both rules: epoch 2 is the
    /// best; at epoch 4 the learning rate halves and the run stops.
    #[test]
    fn after_epoch_keeps_the_best_reduces_on_plateau_and_stops() {
        let cb = Callbacks {
            early_stopping: Some(2),
            plateau: Some(Plateau {
                patience: 2,
                factor: 0.5,
                min_lr: 1e-4,
            }),
            ..Callbacks::default()
        };
        let mut s = Standing::default();
        let decide = |s: &mut Standing, epoch, auc| cb.after_epoch(s, epoch, auc, 1e-3);
        assert!(decide(&mut s, 1, 0.70).improved);
        assert!(decide(&mut s, 2, 0.75).improved);
        let third = decide(&mut s, 3, 0.74);
        assert_eq!(
            (third.improved, third.lr_reduced_to, third.stop),
            (false, None, false)
        );
        let fourth = decide(&mut s, 4, 0.73);
        assert_eq!(fourth.lr_reduced_to, Some(5e-4));
        assert!(fourth.stop && s.stopped_early);
        assert_eq!(s.best, Some((0.75, 2)));
        assert_eq!(cb.lr(1e-3, 5, 10, &s), 5e-4);
        let said = cb.explain(&fourth, &s).join("\n");
        assert!(
            said.contains("learning rate now 5.000e-4") && said.contains("since epoch 2"),
            "{said}"
        );
        // never below the minimum
        let fifth = decide(&mut s, 6, 0.72);
        assert_eq!(fifth.lr_reduced_to, Some(2.5e-4));
        decide(&mut s, 8, 0.71);
        assert_eq!(decide(&mut s, 10, 0.70).lr_reduced_to, Some(1e-4));
    }

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
