//! The inference model: each batch norm folded into the convolution before it.
//!
//! With its running statistics, batch norm is an affine map of each channel,
//!   BN(z) = γ (z − μ) / √(σ² + ε) + β = s z + (β − s μ),   s = γ / √(σ² + ε),
//! and a convolution z = W ∗ x + b is linear in W and b, so
//!   BN(W ∗ x + b) = (s W) ∗ x + (s (b − μ) + β):
//! the same convolution with each output channel's filter scaled by its s and its bias moved. The
//! folded model computes the same numbers up to rounding with one pass over the activations
//! fewer per block. Training cannot fold: it normalises with each batch's own statistics.

use super::{LayerSpec, Model, ModelSpec, Node};
use crate::backend::Backend;
use crate::nn::spec::{SpecError, INPUT};
use crate::tensor::Tensor;

/// `model` for inference, with every batch norm that is the only reader of a convolution's
/// (full or depthwise) output folded into that convolution. Layers keep their names; unnamed
/// ones are named `layer-I` after their index in `model`.
pub fn fold_batchnorm<B: Backend>(be: &B, model: &Model<B>) -> Result<Model<B>, SpecError> {
    let infos = model.spec.layers()?;
    let mut readers = vec![0usize; infos.len()];
    for s in infos.iter().flat_map(|l| &l.sources).flatten() {
        readers[*s] += 1;
    }
    // folded[j] = Some(i): batch norm j is folded into convolution i
    let folded: Vec<Option<usize>> = infos
        .iter()
        .map(|l| match (&l.spec, l.sources.as_slice()) {
            (LayerSpec::BatchNorm { .. }, &[Some(i)])
                if readers[i] == 1 && infos[i].spec.conv_geom(&infos[i].input).is_some() =>
            {
                Some(i)
            }
            _ => None,
        })
        .collect();
    let name = |k: usize| {
        let node = &model.spec.layers[k];
        node.name.clone().unwrap_or_else(|| format!("layer-{k}"))
    };
    // the kept layer whose output stands for layer k's
    let standing = |k: usize| folded[k].unwrap_or(k);
    let kept: Vec<usize> = (0..infos.len()).filter(|&k| folded[k].is_none()).collect();
    let layers: Vec<Node> = kept
        .iter()
        .map(|&k| Node {
            layer: model.spec.layers[k].layer.clone(),
            name: Some(name(k)),
            inputs: infos[k]
                .sources
                .iter()
                .map(|s| s.map_or(INPUT.to_string(), |j| name(standing(j))))
                .collect(),
        })
        .collect();
    let spec = ModelSpec {
        layers,
        ..model.spec.clone()
    };
    let mut inference = Model::new(be, &spec, 0)?;
    for (n, &k) in kept.iter().enumerate() {
        let mut values: Vec<Tensor> = model.layers[k]
            .params()
            .iter()
            .map(|p| be.download(&p.value))
            .collect();
        if let Some(j) = folded.iter().position(|&f| f == Some(k)) {
            let LayerSpec::BatchNorm { eps, .. } = infos[j].spec else {
                unreachable!("only batch norms are folded")
            };
            let bn: Vec<Tensor> = model.layers[j]
                .params()
                .iter()
                .map(|p| be.download(&p.value))
                .collect();
            fold_into(&mut values, &bn, eps);
        }
        for (p, v) in inference.layers[n].params_mut().into_iter().zip(&values) {
            p.value = be.upload(v);
        }
    }
    Ok(inference)
}

/// Folds batch norm `[γ, β, μ, σ²]` (each `[C]`) into convolution `[weight [C, ...], bias [C]]`.
fn fold_into(conv: &mut [Tensor], bn: &[Tensor], eps: f32) {
    let [weight, bias] = conv else {
        unreachable!("a convolution has a weight and a bias")
    };
    let [gamma, beta, mean, var] = bn else {
        unreachable!("a batch norm has γ, β, μ and σ²")
    };
    let per_channel = weight.data.len() / bias.data.len();
    for c in 0..bias.data.len() {
        let s = gamma.data[c] / (var.data[c] + eps).sqrt();
        for w in &mut weight.data[c * per_channel..(c + 1) * per_channel] {
            *w *= s;
        }
        bias.data[c] = s * (bias.data[c] - mean.data[c]) + beta.data[c];
    }
}
