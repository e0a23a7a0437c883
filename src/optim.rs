//! Optimisers: Adam (with bias correction and optional decoupled weight decay) and SGD with
//! momentum. Their state (moments, velocities) lives on the backend next to the parameters.

use crate::backend::{AdamStep, Backend, SgdStep};
use crate::nn::Model;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Which optimiser, with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam { beta1: f32, beta2: f32, eps: f32 },
    Sgd { momentum: f32 },
}

impl OptimizerKind {
    pub fn adam() -> Self {
        OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

pub struct Optimizer<B: Backend> {
    pub kind: OptimizerKind,
    pub weight_decay: f32,
    /// Steps taken so far (Adam's bias correction needs it).
    pub t: u64,
    /// Per parameter (in `Model::params_mut` order): Adam's (m, v), or SGD's (velocity, unused).
    state: Vec<Option<(B::Tensor, B::Tensor)>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(kind: OptimizerKind, weight_decay: f32) -> Self {
        Optimizer {
            kind,
            weight_decay,
            t: 0,
            state: Vec::new(),
        }
    }

    /// The state tensors for a checkpoint, named `optimizer.a.<param>` and `optimizer.b.<param>`
    /// (Adam's m and v; SGD's velocity and an unused zero tensor).
    pub fn named_state(&self, be: &B, model: &Model<B>) -> Vec<(String, Tensor)> {
        let names = model.named_params().into_iter().map(|p| p.name);
        names
            .zip(&self.state)
            .filter_map(|(name, s)| s.as_ref().map(|s| (name, s)))
            .flat_map(|(name, (a, b))| {
                [
                    (format!("optimizer.a.{name}"), be.download(a)),
                    (format!("optimizer.b.{name}"), be.download(b)),
                ]
            })
            .collect()
    }

    /// Puts back the state [`Optimizer::named_state`] saved, after `t` steps, taking its tensors
    /// out of `tensors`.
    pub fn restore(
        &mut self,
        be: &B,
        model: &Model<B>,
        t: u64,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<()> {
        self.t = t;
        self.state = model
            .named_params()
            .into_iter()
            .map(|p| {
                let a = tensors.remove(&format!("optimizer.a.{}", p.name));
                let b = tensors.remove(&format!("optimizer.b.{}", p.name));
                let shape = be.shape(&p.param.value);
                match (a, b) {
                    (Some(a), Some(b)) if &a.shape == shape && &b.shape == shape => {
                        Ok(Some((be.upload(&a), be.upload(&b))))
                    }
                    (None, None) => Ok(None),
                    _ => bail!("the optimiser state of {} is missing or misshapen", p.name),
                }
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// One update of every trainable parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, be: &B, model: &mut Model<B>, lr: f32) {
        self.t += 1;
        let params = model.params_mut();
        self.state.resize_with(params.len(), || None);
        for (p, state) in params.into_iter().zip(&mut self.state) {
            // The gradient is used up here: dropping it now frees its memory until the next
            // backward pass (and gives the GPU's pool the same free buffers at every step).
            let Some(grad) = p.grad.take().filter(|_| p.trainable) else {
                continue;
            };
            let (a, b) = state.get_or_insert_with(|| {
                let shape = be.shape(&p.value).clone();
                (be.zeros(&shape), be.zeros(&shape))
            });
            match self.kind {
                OptimizerKind::Adam { beta1, beta2, eps } => {
                    let h = AdamStep {
                        lr,
                        beta1,
                        beta2,
                        eps,
                        weight_decay: self.weight_decay,
                        t: self.t,
                    };
                    be.adam_step(&mut p.value, &grad, a, b, &h);
                }
                OptimizerKind::Sgd { momentum } => {
                    let h = SgdStep {
                        lr,
                        momentum,
                        weight_decay: self.weight_decay,
                    };
                    be.sgd_step(&mut p.value, &grad, a, &h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{cpu::optim as cpu_optim, AdamStep, SgdStep};

    #[test]
    fn adam_first_step_moves_each_weight_by_lr_against_its_gradient() {
        // With bias correction, m̂ = g and v̂ = g² at t = 1, so the step is lr · g/(|g| + eps).
        let mut p = vec![1.0f32, -2.0, 0.5];
        let g = [0.3f32, -4.0, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        let h = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            t: 1,
        };
        cpu_optim::adam(&mut p, &g, &mut m, &mut v, &h);
        let want = [0.99f32, -1.99, 0.49];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!((m[1] - (-0.4)).abs() < 1e-6 && (v[1] - 0.016).abs() < 1e-6);
    }

    #[test]
    fn sgd_momentum_accumulates_velocity() {
        let mut p = vec![1.0f32];
        let mut vel = vec![0.0f32];
        let h = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        cpu_optim::sgd(&mut p, &[1.0], &mut vel, &h);
        cpu_optim::sgd(&mut p, &[1.0], &mut vel, &h);
        // v1 = 1, p1 = 0.9; v2 = 1.9, p2 = 0.71
        assert!((p[0] - 0.71).abs() < 1e-6 && (vel[0] - 1.9).abs() < 1e-6);
    }
}

/// An exponential moving average of a model's weights (Polyak averaging): after each optimiser
/// step t, shadow ← d·shadow + (1 − d)·value with d = min(decay, (1 + t) / (10 + t)), so that the
/// first steps, far from any good weights, fade quickly. The average of the last few hundred
/// steps usually generalises better than the last step's weights, which jitter with each batch.
/// Batch norm's running statistics are averaged too.
pub struct WeightAverage<B: Backend> {
    pub decay: f32,
    /// Per parameter, in `Model::named_params` order.
    shadow: Vec<B::Tensor>,
}

/// Prefix of the averaged weights in a resumable checkpoint (training state, like the
/// optimiser's).
const EMA_PREFIX: &str = "optimizer.ema.";

impl<B: Backend> WeightAverage<B> {
    /// Starts the average at the model's weights.
    pub fn new(be: &B, model: &Model<B>, decay: f32) -> Self {
        let shadow = model
            .named_params()
            .iter()
            .map(|p| be.copy(&p.param.value))
            .collect();
        WeightAverage { decay, shadow }
    }

    /// Folds the weights after optimiser step `t` (1-based) into the average.
    pub fn update(&mut self, be: &B, model: &Model<B>, t: u64) {
        let d = self.decay.min((1 + t) as f32 / (10 + t) as f32);
        for (s, p) in self.shadow.iter_mut().zip(model.named_params()) {
            be.ema_update(s, &p.param.value, 1.0 - d, 1.0);
        }
    }

    /// Exchanges the averaged weights with the model's: the model then runs with the average;
    /// a second call puts its own weights back.
    pub fn swap(&mut self, model: &mut Model<B>) {
        for (s, p) in self.shadow.iter_mut().zip(model.params_mut()) {
            std::mem::swap(s, &mut p.value);
        }
    }

    /// The averaged weights for a checkpoint, named `optimizer.ema.<param>`.
    pub fn named_state(&self, be: &B, model: &Model<B>) -> Vec<(String, Tensor)> {
        model
            .named_params()
            .into_iter()
            .zip(&self.shadow)
            .map(|(p, s)| (format!("{EMA_PREFIX}{}", p.name), be.download(s)))
            .collect()
    }

    /// Puts back the average [`WeightAverage::named_state`] saved, taking its tensors out of
    /// `tensors`.
    pub fn restore(
        be: &B,
        model: &Model<B>,
        decay: f32,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<Self> {
        let shadow = model
            .named_params()
            .into_iter()
            .map(
                |p| match tensors.remove(&format!("{EMA_PREFIX}{}", p.name)) {
                    Some(t) if &t.shape == be.shape(&p.param.value) => Ok(be.upload(&t)),
                    _ => bail!("the averaged weight {} is missing or misshapen", p.name),
                },
            )
            .collect::<Result<_>>()?;
        Ok(WeightAverage { decay, shadow })
    }

    /// The averaged weights in `tensors` (a resumable checkpoint's), by parameter name, if it
    /// holds them.
    pub fn saved(tensors: &HashMap<String, Tensor>, name: &str) -> Option<Tensor> {
        tensors.get(&format!("{EMA_PREFIX}{name}")).cloned()
    }
}

#[cfg(test)]
mod weight_average_tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::ModelSpec;

    #[test]
    fn the_average_follows_the_weights_and_swaps_in_and_out() {
        let spec = ModelSpec::parse(
            "name = \"t\"\ninput = [1, 2, 2]\nlayers = [{ type = \"flatten\" }, { type = \"dense\", units = 1 }]",
        )
        .unwrap();
        let be = Cpu::new();
        let mut model = Model::new(&be, &spec, 1).unwrap();
        let w0 = be.download(&model.named_params()[0].param.value);
        let mut avg = WeightAverage::new(&be, &model, 0.9);
        // the weights jump by +1; step 1 uses d = min(0.9, 2/11)
        for p in model.params_mut() {
            p.value.data.iter_mut().for_each(|v| *v += 1.0);
        }
        avg.update(&be, &model, 1);
        let d = 2.0f32 / 11.0;
        avg.swap(&mut model);
        let averaged = be.download(&model.named_params()[0].param.value);
        for (a, w) in averaged.data.iter().zip(&w0.data) {
            assert!((a - (w + (1.0 - d))).abs() < 1e-6, "{a} vs {w}");
        }
        avg.swap(&mut model);
        let back = be.download(&model.named_params()[0].param.value);
        assert_eq!(
            back.data,
            w0.data.iter().map(|w| w + 1.0).collect::<Vec<_>>()
        );
        // saved and restored, the average is the same
        let mut saved: HashMap<String, Tensor> = avg.named_state(&be, &model).into_iter().collect();
        let mut again = WeightAverage::restore(&be, &model, 0.9, &mut saved).unwrap();
        assert!(saved.is_empty());
        again.swap(&mut model);
        assert_eq!(be.download(&model.named_params()[0].param.value), averaged);
        let err = WeightAverage::restore(&be, &model, 0.9, &mut HashMap::new());
        assert!(format!("{:#}", err.err().unwrap()).contains("averaged weight 01.dense.weight"));
    }
}
