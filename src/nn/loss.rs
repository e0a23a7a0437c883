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
use crate::tensor::Tensor;

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

/// The fracture map's loss, on the host (the map is small: 24 × 24 a image at 192 pixels).
///
/// For a cell's logit z, its target t ∈ [0, 1] (the share of the cell inside a fracture's
/// outline) and the weight w of fracture pixels (fractures cover about 1 % of an X-ray: without
/// it, a map that is cold everywhere is nearly optimal):
///   ℓ(z, t) = w·t·softplus(−z) + (1 − t)·softplus(z),   ∂ℓ/∂z = w·t·(σ(z) − 1) + (1 − t)·σ(z),
/// the loss above per cell with a soft target. The map's loss is the mean of ℓ over the cells of
/// the images whose weight in `image_weights` is 1 (an image without an outline weighs 0: its
/// map is not trained), and the gradient carries that mean's 1 / (cells · images).
/// Returns (loss, dloss/`dmap[N,1,H,W]`).
pub fn map_bce(
    map: &Tensor,
    targets: &Tensor,
    image_weights: &[f32],
    pos_weight: f32,
) -> (f32, Tensor) {
    assert_eq!(map.shape, targets.shape, "a target per cell");
    let n = image_weights.len();
    let cells = map.numel() / n.max(1);
    let counted = image_weights.iter().sum::<f32>() * cells as f32;
    let mut grad = vec![0f32; map.numel()];
    let mut sum = 0f64;
    if counted > 0.0 {
        for (k, ((&z, &t), g)) in map
            .data
            .iter()
            .zip(&targets.data)
            .zip(&mut grad)
            .enumerate()
        {
            let weight = image_weights[k / cells];
            let p = sigmoid(z);
            let l = pos_weight * t * softplus(-z) + (1.0 - t) * softplus(z);
            sum += (weight * l) as f64;
            *g = weight * (pos_weight * t * (p - 1.0) + (1.0 - t) * p) / counted;
        }
    }
    let loss = if counted > 0.0 {
        sum / counted as f64
    } else {
        0.0
    };
    (loss as f32, Tensor::new(map.shape.clone(), grad))
}

/// softplus(z) = ln(1 + e^z), without overflow.
fn softplus(z: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_loss_is_weighted_bce_per_cell_and_its_gradient_matches_differences() {
        // two images of 2 cells: the first outlined (targets 1 and 0.25), the second not
        // outlined (weight 0: left out)
        let z = Tensor::new([2, 1, 1, 2], vec![0.3, -1.2, 5.0, -5.0]);
        let t = Tensor::new([2, 1, 1, 2], vec![1.0, 0.25, 0.0, 0.0]);
        let (w, pos) = ([1.0, 0.0], 4.0);
        let (loss, grad) = map_bce(&z, &t, &w, pos);
        let sp = |v: f32| (1.0 + v.exp()).ln();
        let want = (pos * sp(-0.3) + (0.25 * pos * sp(1.2) + 0.75 * sp(-1.2))) / 2.0;
        assert!((loss - want).abs() < 1e-6, "{loss} {want}");
        assert_eq!(&grad.data[2..], &[0.0, 0.0], "the image without an outline");
        for k in 0..2 {
            let h = 1e-3;
            let at = |d: f32| {
                let mut zz = z.clone();
                zz.data[k] += d;
                map_bce(&zz, &t, &w, pos).0 as f64
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
            assert!((numeric - grad.data[k] as f64).abs() < 1e-4, "cell {k}");
        }
        // nothing to learn from: no loss, no gradient
        let (loss, grad) = map_bce(&z, &t, &[0.0, 0.0], pos);
        assert_eq!(loss, 0.0);
        assert!(grad.data.iter().all(|&g| g == 0.0));
        assert!(softplus(100.0).is_finite() && softplus(-100.0) >= 0.0);
    }
}
