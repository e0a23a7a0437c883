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

/// The fracture map's pointing loss, on the host: for each outlined image with a fracture, the
/// cross-entropy between a softmax over its cells and the outline's share of each cell,
///   q = t / Σt,   p = softmax(z),   ℓ = −Σ q·log p = logsumexp(z) − Σ q·z,   ∂ℓ/∂z = p − q.
/// Where the per-cell loss asks each cell on its own whether it holds a fracture, this one asks
/// which cell of the image does: it is least when the hottest cells are the fracture's, which is
/// what the pointing game scores. The mean of ℓ over the images it applies to (weight 1 in
/// `image_weights` and some target); the gradient carries that mean's 1 / images.
/// Returns (loss, dloss/`dmap[N,1,H,W]`).
pub fn map_pointing(map: &Tensor, targets: &Tensor, image_weights: &[f32]) -> (f32, Tensor) {
    assert_eq!(map.shape, targets.shape, "a target per cell");
    let n = image_weights.len();
    let cells = map.numel() / n.max(1);
    let mut grad = vec![0f32; map.numel()];
    let pointed: Vec<usize> = (0..n)
        .filter(|&k| image_weights[k] > 0.0)
        .filter(|&k| targets.data[k * cells..(k + 1) * cells].iter().sum::<f32>() > 0.0)
        .collect();
    let mut sum = 0f64;
    for &k in &pointed {
        let z = &map.data[k * cells..(k + 1) * cells];
        let t = &targets.data[k * cells..(k + 1) * cells];
        let total: f64 = t.iter().map(|&v| v as f64).sum();
        let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exps: Vec<f64> = z.iter().map(|&v| (v as f64 - top).exp()).collect();
        let norm: f64 = exps.iter().sum();
        let log_norm = top + norm.ln();
        for c in 0..cells {
            let q = t[c] as f64 / total;
            sum += q * (log_norm - z[c] as f64);
            grad[k * cells + c] = ((exps[c] / norm - q) / pointed.len() as f64) as f32;
        }
    }
    let loss = sum / pointed.len().max(1) as f64;
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

    #[test]
    fn the_pointing_loss_is_a_softmax_over_cells_against_the_outlines_share() {
        // three images of 3 cells: outlined with a fracture over cells 0 and 1 (3:1), healthy
        // (no target: no term), and outlined but left out (weight 0)
        let z = Tensor::new(
            [3, 1, 1, 3],
            vec![0.5, -1.0, 2.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0],
        );
        let t = Tensor::new(
            [3, 1, 1, 3],
            vec![0.75, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        );
        let w = [1.0, 1.0, 0.0];
        let (loss, grad) = map_pointing(&z, &t, &w);
        let lse = (0.5f64.exp() + (-1.0f64).exp() + 2.0f64.exp()).ln();
        let want = 0.75 * (lse - 0.5) + 0.25 * (lse + 1.0);
        assert!((loss as f64 - want).abs() < 1e-6, "{loss} {want}");
        assert!(grad.data[3..].iter().all(|&g| g == 0.0), "{grad:?}");
        // the gradient p − q sums to 0 over an image's cells, and matches differences
        assert!(grad.data[..3].iter().sum::<f32>().abs() < 1e-6);
        for k in 0..3 {
            let h = 1e-3;
            let at = |d: f32| {
                let mut zz = z.clone();
                zz.data[k] += d;
                map_pointing(&zz, &t, &w).0 as f64
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
            assert!((numeric - grad.data[k] as f64).abs() < 1e-4, "cell {k}");
        }
        // a map hottest on the fracture scores lower than one hottest elsewhere
        let on = Tensor::new([1, 1, 1, 3], vec![4.0, 0.0, 0.0]);
        let off = Tensor::new([1, 1, 1, 3], vec![0.0, 0.0, 4.0]);
        let t1 = Tensor::new([1, 1, 1, 3], vec![1.0, 0.0, 0.0]);
        assert!(map_pointing(&on, &t1, &[1.0]).0 < map_pointing(&off, &t1, &[1.0]).0);
    }
}
