//! The inference model: each batch norm folded into the convolution before it, and each ReLU
//! after a convolution computed inside it (`activation = "relu"`: max(0, ·) where the bias is
//! added, so the output is written once).
//!
//! With its running statistics, batch norm is an affine map of each channel,
//!   BN(z) = γ (z − μ) / √(σ² + ε) + β = s z + (β − s μ),   s = γ / √(σ² + ε),
//! and a convolution z = W ∗ x + b is linear in W and b, so
//!   BN(W ∗ x + b) = (s W) ∗ x + (s (b − μ) + β):
//! the same convolution with each output channel's filter scaled by its s and its bias moved. The
//! folded model computes the same numbers up to rounding with one pass over the activations
//! fewer per block. Training cannot fold: it normalises with each batch's own statistics.

use super::{Activation, LayerSpec, Model, ModelSpec, Node};
use crate::backend::Backend;
use crate::nn::spec::{SpecError, INPUT};
use crate::tensor::Tensor;

/// `model` for inference, with every batch norm that is the only reader of a convolution's
/// (full or depthwise) output folded into that convolution, and every ReLU that is the only
/// reader of a convolution's output, full or depthwise (or of its folded batch norm's), made its
/// activation. Layers keep their names; unnamed ones are named `layer-I` after their index in
/// `model`.
pub fn inference_model<B: Backend>(be: &B, model: &Model<B>) -> Result<Model<B>, SpecError> {
    let infos = model.spec.layers()?;
    let mut readers = vec![0usize; infos.len()];
    for s in infos.iter().flat_map(|l| &l.sources).flatten() {
        readers[*s] += 1;
    }
    // folded[j] = Some(i): layer j (a batch norm, or a ReLU) is folded into convolution i
    let mut folded: Vec<Option<usize>> = vec![None; infos.len()];
    let mut with_relu = vec![false; infos.len()];
    for (j, l) in infos.iter().enumerate() {
        let &[Some(s)] = l.sources.as_slice() else {
            continue;
        };
        let i = folded[s].unwrap_or(s);
        let only_reader = readers[s] == 1 && !with_relu[i];
        match (&l.spec, &infos[i].spec) {
            (LayerSpec::BatchNorm { .. }, conv)
                if only_reader
                    && i == s
                    && conv.conv_geom(&infos[i].input).is_some()
                    && conv.activation().is_none() =>
            {
                folded[j] = Some(i);
            }
            (
                LayerSpec::Relu,
                LayerSpec::Conv2d {
                    activation: None, ..
                }
                | LayerSpec::DepthwiseConv2d {
                    activation: None, ..
                },
            ) if only_reader => {
                folded[j] = Some(i);
                with_relu[i] = true;
            }
            _ => {}
        }
    }
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
            layer: match model.spec.layers[k].layer.clone() {
                LayerSpec::Conv2d {
                    activation: None,
                    filters,
                    kernel,
                    stride,
                    padding,
                } if with_relu[k] => LayerSpec::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                    activation: Some(Activation::Relu),
                },
                LayerSpec::DepthwiseConv2d {
                    activation: None,
                    kernel,
                    stride,
                    padding,
                } if with_relu[k] => LayerSpec::DepthwiseConv2d {
                    kernel,
                    stride,
                    padding,
                    activation: Some(Activation::Relu),
                },
                layer => layer,
            },
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
        let batchnorm = (0..infos.len()).find(|&j| {
            folded[j] == Some(k) && matches!(infos[j].spec, LayerSpec::BatchNorm { .. })
        });
        if let Some(j) = batchnorm {
            let LayerSpec::BatchNorm { eps, .. } = infos[j].spec else {
                unreachable!("found as a batch norm")
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
