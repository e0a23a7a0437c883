//! The fused sigmoid-BCE loss on the CPU (its GPU twin: `gpu/loss.rs`, `shaders/loss.wgsl`).

/// log(1 + e^z) without overflow for large |z|.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Per sample, with w = pos_weight and σ the sigmoid:
///   loss = w·y·softplus(-z) + (1-y)·softplus(z)        (= -w·y·log σ(z) - (1-y)·log(1-σ(z)))
///   dloss/dz = w·y·(σ(z) - 1) + (1-y)·σ(z)
/// averaged over the N samples. Written with softplus, it stays finite at any |z|.
pub fn bce_with_logits(z: &[f32], y: &[f32], pos_weight: f32) -> (f32, Vec<f32>) {
    let n = z.len() as f64;
    let w = pos_weight as f64;
    let mut loss = 0f64;
    let grad = z
        .iter()
        .zip(y)
        .map(|(&z, &y)| {
            let (z, y) = (z as f64, y as f64);
            loss += w * y * softplus(-z) + (1.0 - y) * softplus(z);
            ((w * y * (sigmoid(z) - 1.0) + (1.0 - y) * sigmoid(z)) / n) as f32
        })
        .collect();
    ((loss / n) as f32, grad)
}
