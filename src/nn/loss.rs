//! The loss: binary cross-entropy on the sigmoid of the model's logit, fused.
//!
//! With p = σ(z) the predicted probability of "fractured", y ∈ {0, 1} the label and w the weight
//! of positive samples (set it to #negatives/#positives to balance an imbalanced set):
//!   loss = -(w · y · log p + (1 - y) · log(1 - p))  = w·y·softplus(-z) + (1-y)·softplus(z)
//!   dloss/dz = w·y·(p - 1) + (1 - y)·p                (= p - y when w = 1)
//! Computing it from z rather than from p avoids log(0) when |z| is large, and the gradient of
//! the fused form is simpler than the product of the sigmoid's and the log's.
//!
//! Its op family, loss, by the same names in each: the `loss` section of `backend/reference.rs`
//! (the definition), `backend/cpu/loss.rs`, `backend/gpu/loss.rs` and `shaders/loss.wgsl`.

use crate::backend::Backend;

/// (mean loss as a host value, dloss/`dlogits[N,1]`) for `logits[N,1]` and `targets[N]`.
pub fn bce_with_logits<B: Backend>(
    be: &B,
    logits: &B::Tensor,
    targets: &B::Tensor,
    pos_weight: f32,
) -> (f32, B::Tensor) {
    let (loss, grad) = be.bce_with_logits(logits, targets, pos_weight);
    (be.download(&loss).data[0], grad)
}

/// σ(z) = 1 / (1 + e^-z), in a form that does not overflow for large |z|.
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}
