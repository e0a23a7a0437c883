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
    use crate::backend::{cpu::elementwise, AdamStep, SgdStep};

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
        elementwise::adam(&mut p, &g, &mut m, &mut v, &h);
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
        elementwise::sgd(&mut p, &[1.0], &mut vel, &h);
        elementwise::sgd(&mut p, &[1.0], &mut vel, &h);
        // v1 = 1, p1 = 0.9; v2 = 1.9, p2 = 0.71
        assert!((p[0] - 0.71).abs() < 1e-6 && (vel[0] - 1.9).abs() < 1e-6);
    }
}
