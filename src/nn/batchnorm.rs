//! Batch normalisation, per channel over N, H, W (or per feature over N for `[N, F]` inputs).
//!
//! Forward (training):  μ = mean(x), σ² = mean((x - μ)²), x̂ = (x - μ)/√(σ² + ε), y = γ x̂ + β,
//!   and the running statistics move towards the batch's: r ← (1 - m) r + m · batch value
//!   (the running variance takes the unbiased σ² · M/(M-1), as PyTorch does).
//! Forward (inference): the same with the running mean and variance in place of μ and σ².
//! Backward (training): with M values per channel,
//!   dβ = Σ dy,  dγ = Σ dy · x̂,  dx = γ/(M √(σ² + ε)) · (M · dy - dβ - x̂ · dγ).
//!   The two subtracted terms are the gradient flowing through μ and σ², which depend on every x.
//! Backward (inference statistics, for explanations): y is affine in x per channel, so
//!   dx = γ / √(running var + ε) · dy, which is the inference forward pass applied to dy with
//!   β = 0 and mean = 0.
//! With an epilogue (training): the ReLU and max pooling that follow a batch norm in a model run
//! inside its passes (`Model` hands them over, [`Layer::forward_then`]). Forward writes only the
//! pooled output and its positions; backward rebuilds, run by run in cache, the gradient at y
//! (dy at each maximum's position, masked where y = γ x̂ + β ≤ 0, recomputed from x) and uses it
//! in the formulas above. Neither y, the ReLU's output nor their gradients are written whole.
//!
//! Its op family, batchnorm, by the same names in each: the `batchnorm` section of
//! `backend/reference.rs` (the definition), `backend/cpu/batchnorm.rs`, `backend/gpu/batchnorm.rs`
//! and `shaders/batchnorm.wgsl`.

use super::{saved, Layer, Mode, Param};
use crate::backend::{Backend, BatchNormStats, Epilogue};
use crate::tensor::Tensor;

pub struct BatchNorm<B: Backend> {
    gamma: Param<B>,        // [C]
    beta: Param<B>,         // [C]
    running_mean: Param<B>, // [C]
    running_var: Param<B>,  // [C]
    momentum: f32,
    eps: f32,
    saved: Option<Saved<B>>,
}

/// What the forward pass kept for backward.
enum Saved<B: Backend> {
    /// Training: the input, the batch's statistics, and the epilogue run inside the pass (its
    /// pooling of this batch) with the pooling's positions.
    Batch {
        x: B::Tensor,
        stats: BatchNormStats<B::Tensor>,
        then: Epilogue,
        argmax: Option<B::Indices>,
    },
    /// Mode::Explain: the running statistics were used, nothing else is needed.
    Running,
}

impl<B: Backend> BatchNorm<B> {
    pub fn new(be: &B, channels: usize, momentum: f32, eps: f32) -> Self {
        let ones = || be.upload(&Tensor::full([channels], 1.0));
        let zeros = || be.zeros(&[channels].into());
        BatchNorm {
            gamma: Param::trainable("gamma", ones()),
            beta: Param::trainable("beta", zeros()),
            running_mean: Param::statistic("running_mean", zeros()),
            running_var: Param::statistic("running_var", ones()),
            momentum,
            eps,
            saved: None,
        }
    }
}

impl<B: Backend> BatchNorm<B> {
    /// The training pass: batch statistics, the running ones moved towards them, and `then`
    /// (of this batch) applied inside.
    fn forward_train(&mut self, be: &B, x: B::Tensor, then: Epilogue) -> B::Tensor {
        let gamma_beta = (&self.gamma.value, &self.beta.value);
        let (y, stats, argmax) = be.batchnorm_forward_train(&x, gamma_beta, self.eps, &then);
        let count = be.shape(&x).numel() / be.shape(&stats.mean).numel();
        let unbiased = if count > 1 {
            count as f32 / (count - 1) as f32
        } else {
            1.0
        };
        be.ema_update(
            &mut self.running_mean.value,
            &stats.mean,
            self.momentum,
            1.0,
        );
        be.ema_update(
            &mut self.running_var.value,
            &stats.var,
            self.momentum,
            unbiased,
        );
        self.saved = Some(Saved::Batch {
            x,
            stats,
            then,
            argmax,
        });
        y
    }
}

impl<B: Backend> Layer<B> for BatchNorm<B> {
    fn kind(&self) -> &'static str {
        "batchnorm"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        if matches!(mode, Mode::Train { .. }) {
            return self.forward_train(be, x, Epilogue::NONE);
        }
        if mode.keeps_for_backward() {
            self.saved = Some(Saved::Running);
        }
        let (g, b) = (&self.gamma.value, &self.beta.value);
        let (m, v) = (&self.running_mean.value, &self.running_var.value);
        be.batchnorm_forward_infer(&x, g, b, m, v, self.eps)
    }
    /// In training, the ReLU and max pooling that follow run inside batch norm's passes: only
    /// the pooled output is written, and backward finds the ReLU's mask again from x.
    fn forward_then(
        &mut self,
        be: &B,
        x: B::Tensor,
        mode: Mode,
        then: &Epilogue,
    ) -> Result<B::Tensor, B::Tensor> {
        if !matches!(mode, Mode::Train { .. }) {
            return Err(x);
        }
        let n = be.shape(&x).dims()[0];
        let then = Epilogue {
            relu: then.relu,
            pool: then.pool.map(|g| g.with_batch(n)),
        };
        Ok(self.forward_train(be, x, then))
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        let (x, stats, then, argmax) = match saved(&mut self.saved, "batchnorm") {
            Saved::Batch {
                x,
                stats,
                then,
                argmax,
            } => (x, stats, then, argmax),
            Saved::Running => {
                let zeros = be.zeros(be.shape(&self.gamma.value));
                let (g, v) = (&self.gamma.value, &self.running_var.value);
                return Some(be.batchnorm_forward_infer(&dy, g, &zeros, &zeros, v, self.eps));
            }
        };
        let (dx, dgamma, dbeta) = be.batchnorm_backward(
            &x,
            (&dy, argmax.as_ref()),
            (&self.gamma.value, &self.beta.value),
            &stats,
            &then,
        );
        self.gamma.grad = Some(dgamma);
        self.beta.grad = Some(dbeta);
        Some(dx)
    }
    /// With an epilogue, which values its ReLU let through and where its pooling's maxima were.
    fn kinks(&self, be: &B) -> u64 {
        let Some(Saved::Batch {
            x,
            stats,
            then,
            argmax,
        }) = &self.saved
        else {
            return 0;
        };
        let relu_mask = then.relu.then(|| {
            let [x, gamma, beta, mean, inv_std] = [
                x,
                &self.gamma.value,
                &self.beta.value,
                &stats.mean,
                &stats.inv_std,
            ]
            .map(|t| be.download(t));
            let (c, hw) = (gamma.numel(), x.numel() / x.shape.dims()[0] / gamma.numel());
            x.data
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = (i / hw) % c;
                    let s = gamma.data[ch] * inv_std.data[ch];
                    (s * v + (beta.data[ch] - s * mean.data[ch]) > 0.0) as u32
                })
                .collect::<Vec<_>>()
        });
        let positions = argmax.as_ref().map(|a| be.download_indices(a));
        super::fingerprint(relu_mask.into_iter().chain(positions).flatten())
    }
    fn params(&self) -> Vec<&Param<B>> {
        vec![
            &self.gamma,
            &self.beta,
            &self.running_mean,
            &self.running_var,
        ]
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        vec![
            &mut self.gamma,
            &mut self.beta,
            &mut self.running_mean,
            &mut self.running_var,
        ]
    }
}
