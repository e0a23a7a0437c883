//! A model: the layers of a [`ModelSpec`], run in order forward and in reverse order backward.

use super::{
    avgpool::GlobalAvgPool, batchnorm::BatchNorm, conv2d::Conv2d, dense::Dense,
    depthwise::DepthwiseConv2d, dropout::Dropout, flatten::Flatten, maxpool::MaxPool, relu::Relu,
    Layer, LayerSpec, Mode, ModelSpec, Param,
};
use crate::backend::Backend;
use crate::nn::spec::SpecError;
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};

pub struct Model<B: Backend> {
    pub spec: ModelSpec,
    pub layers: Vec<Box<dyn Layer<B>>>,
}

/// A parameter with its checkpoint name, e.g. `"04.conv2d.weight"`.
pub struct NamedParam<'a, B: Backend> {
    pub name: String,
    pub param: &'a Param<B>,
}

impl<B: Backend> Model<B> {
    /// Builds the layers of `spec` with weights drawn from `seed`.
    pub fn new(be: &B, spec: &ModelSpec, seed: u64) -> Result<Self, SpecError> {
        let infos = spec.layers()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let layers = spec
            .layers
            .iter()
            .zip(&infos)
            .map(|(layer, info)| build_layer(be, layer, &info.input, info.index, &mut rng))
            .collect();
        Ok(Model {
            spec: spec.clone(),
            layers,
        })
    }

    /// `logits[N,1]` = model(`x[N,C,H,W]`).
    pub fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        self.layers
            .iter_mut()
            .fold(x, |h, layer| layer.forward(be, h, mode))
    }

    /// Backpropagates `dlogits[N,1]` through every layer, leaving each parameter's gradient in
    /// `Param::grad`; returns dloss/dx when `want_dx` (for input-gradient checks and saliency).
    pub fn backward(&mut self, be: &B, dlogits: B::Tensor, want_dx: bool) -> Option<B::Tensor> {
        let mut grad = dlogits;
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            grad = layer.backward(be, grad, i > 0 || want_dx)?;
        }
        Some(grad)
    }

    /// For explanations: with inference statistics (Mode::Explain), the logits for x, the
    /// output A of layer `at`, and the gradient of the summed logits with respect to A, all read
    /// back to the host. Parameters' gradients are left set but meaningless, and layers up to
    /// `at` keep their inputs until the next forward pass.
    pub fn activation_and_gradient(
        &mut self,
        be: &B,
        x: B::Tensor,
        at: usize,
    ) -> (Tensor, Tensor, Tensor) {
        assert!(
            at < self.layers.len(),
            "layer {at} of {}",
            self.layers.len()
        );
        let mut h = x;
        let mut activation = None;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            h = layer.forward(be, h, Mode::Explain);
            if i == at {
                activation = Some(be.download(&h));
            }
        }
        let logits = be.download(&h);
        let ones = Tensor::full(logits.shape.clone(), 1.0);
        let mut grad = be.upload(&ones);
        for layer in self.layers[at + 1..].iter_mut().rev() {
            grad = layer.backward(be, grad, true).expect("dx was asked for");
        }
        let activation = activation.expect("at is a layer index");
        (logits, activation, be.download(&grad))
    }

    /// For inspection: with inference statistics (Mode::Explain), every layer's output for x
    /// (the last is the logits), read back; then the gradient of the summed logits is taken with
    /// respect to every parameter, which `Param::grad` holds afterwards.
    pub fn outputs_and_parameter_gradients(&mut self, be: &B, x: B::Tensor) -> Vec<Tensor> {
        let mut outputs = Vec::with_capacity(self.layers.len());
        let mut h = x;
        for layer in self.layers.iter_mut() {
            h = layer.forward(be, h, Mode::Explain);
            outputs.push(be.download(&h));
        }
        let ones = Tensor::full(be.shape(&h).clone(), 1.0);
        self.backward(be, be.upload(&ones), false);
        outputs
    }

    /// The kink fingerprints of every layer after a training forward pass (see [`Layer::kinks`]).
    pub fn kinks(&self, be: &B) -> u64 {
        super::fingerprint(self.layers.iter().map(|l| {
            let k = l.kinks(be);
            (k ^ (k >> 32)) as u32
        }))
    }

    /// Every parameter in a fixed order, with its name.
    pub fn named_params(&self) -> Vec<NamedParam<'_, B>> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| {
                layer.params().into_iter().map(move |p| NamedParam {
                    name: format!("{i:02}.{}.{}", layer.kind(), p.name),
                    param: p,
                })
            })
            .collect()
    }

    /// Every parameter in the same order as [`Model::named_params`], mutable.
    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.params_mut())
            .collect()
    }
}

/// One layer of `layer`'s kind for a sample of shape `input` (already checked to fit).
pub fn build_layer<B: Backend>(
    be: &B,
    layer: &LayerSpec,
    input: &[usize],
    index: usize,
    rng: &mut StdRng,
) -> Box<dyn Layer<B>> {
    // `ModelSpec::layers` has checked every shape, so the geometry here always exists.
    match layer {
        LayerSpec::Conv2d { .. } => {
            let g = layer
                .conv_geom(input)
                .expect("checked by ModelSpec::layers");
            Box::new(Conv2d::new(be, g, rng))
        }
        LayerSpec::DepthwiseConv2d { .. } => {
            let g = layer
                .conv_geom(input)
                .expect("checked by ModelSpec::layers");
            Box::new(DepthwiseConv2d::new(be, g, rng))
        }
        LayerSpec::GlobalAvgPool => Box::new(GlobalAvgPool::default()),
        LayerSpec::BatchNorm { momentum, eps } => {
            Box::new(BatchNorm::new(be, input[0], *momentum, *eps))
        }
        LayerSpec::MaxPool { .. } => {
            let g = layer
                .pool_geom(input)
                .expect("checked by ModelSpec::layers");
            Box::new(MaxPool::new(g))
        }
        LayerSpec::Dense { units } => Box::new(Dense::new(be, input[0], *units, rng)),
        LayerSpec::Relu => Box::new(Relu::default()),
        LayerSpec::Dropout { rate } => Box::new(Dropout::new(*rate, index)),
        LayerSpec::Flatten => Box::new(Flatten::default()),
    }
}
