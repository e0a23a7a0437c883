//! A model: the layers of a [`ModelSpec`] as a graph. Forward runs the layers in order, each on
//! the outputs its spec names (the layer before, by default); backward runs them in reverse and
//! sums the gradients of an output that several layers read (a residual block's input).
//!
//! A model with a fracture map (`ModelSpec::map`) has two outputs: the logit, the last layer's,
//! and the map, a named layer's that no layer reads. Backward starts from both: the logit's
//! gradient at the end, the map's at its layer (zeros when a caller has none, so that the
//! decoder's parameters get their true gradient, 0, rather than a stale one).

use super::{
    add::Add, avgpool::GlobalAvgPool, batchnorm::BatchNorm, conv::Conv2d, dense::Dense,
    depthwise::DepthwiseConv2d, dropout::Dropout, flatten::Flatten, maxpool::MaxPool, relu::Relu,
    upsample::Upsample, Activation, Layer, LayerSpec, Mode, ModelSpec, Param,
};
use crate::backend::{Backend, Epilogue};
use crate::nn::spec::{LayerInfo, SpecError};
use crate::tensor::Tensor;
use rand::{rngs::StdRng, SeedableRng};

pub struct Model<B: Backend> {
    pub spec: ModelSpec,
    pub layers: Vec<Box<dyn Layer<B>>>,
    /// Where each layer's inputs come from: `Some(j)` for layer j's output, `None` for the image.
    sources: Vec<Vec<Option<usize>>>,
    /// For each layer, the ReLU and max pooling after it that may run inside its pass
    /// ([`epilogues`]).
    epilogues: Vec<Option<(Epilogue, usize)>>,
    /// How many of the layers after each one ran inside its pass in the last forward pass (its
    /// epilogue, [`Layer::forward_then`]): backward skips them too.
    absorbed: Vec<usize>,
    /// The fracture map's layer and the shape of one image's map, `[1, H, W]`.
    map: Option<(usize, Vec<usize>)>,
}

/// For each layer of a model, the epilogue that may run inside its pass
/// ([`Layer::forward_then`]) and how many layers it covers: the ReLU and then the max pooling
/// that follow it, each the only reader of the output before it (`None` where no such layer
/// follows). The model offers it to the layer, which takes it or not (in training, batch norm
/// takes it; in inference, a convolution takes one with a pooling).
pub fn epilogues(infos: &[LayerInfo]) -> Vec<Option<(Epilogue, usize)>> {
    let mut readers = vec![0; infos.len() + 1];
    for s in infos.iter().flat_map(|i| &i.sources) {
        readers[slot(*s)] += 1;
    }
    let only_reader = |j: usize| infos[j].sources == [Some(j - 1)] && readers[j] == 1;
    (0..infos.len())
        .map(|i| {
            let mut then = Epilogue::NONE;
            let mut covered = 0;
            for (j, next) in infos.iter().enumerate().skip(i + 1) {
                if !only_reader(j) {
                    break;
                }
                match &next.spec {
                    LayerSpec::Relu if !then.relu && then.pool.is_none() => then.relu = true,
                    LayerSpec::MaxPool { .. } if then.pool.is_none() => {
                        then.pool = next.spec.pool_geom(&next.input);
                    }
                    _ => break,
                }
                covered += 1;
            }
            (covered > 0).then_some((then, covered))
        })
        .collect()
}

/// A parameter with its checkpoint name, e.g. `"04.conv2d.weight"`.
pub struct NamedParam<'a, B: Backend> {
    pub name: String,
    pub param: &'a Param<B>,
}

/// The slot of a source in the per-output tables below: 0 for the image, j + 1 for layer j.
fn slot(source: Option<usize>) -> usize {
    source.map_or(0, |j| j + 1)
}

impl<B: Backend> Model<B> {
    /// Builds the layers of `spec` with weights drawn from `seed`.
    pub fn new(be: &B, spec: &ModelSpec, seed: u64) -> Result<Self, SpecError> {
        let infos = spec.layers()?;
        let map = spec.map_layer()?.map(|m| (m, infos[m].output.clone()));
        let mut rng = StdRng::seed_from_u64(seed);
        let layers: Vec<Box<dyn Layer<B>>> = spec
            .layers
            .iter()
            .zip(&infos)
            .map(|(node, info)| {
                let branch = info.branch.as_deref();
                build_layer(be, &node.layer, &info.input, branch, info.index, &mut rng)
            })
            .collect();
        Ok(Model {
            spec: spec.clone(),
            epilogues: epilogues(&infos),
            absorbed: vec![0; layers.len()],
            map,
            layers,
            sources: infos.into_iter().map(|i| i.sources).collect(),
        })
    }

    /// How many layers read each output (by [`slot`]); the last layer's and the map's are read by
    /// the caller.
    fn readers(&self) -> Vec<usize> {
        let mut readers = vec![0; self.layers.len() + 1];
        for s in self.sources.iter().flatten() {
            readers[slot(*s)] += 1;
        }
        readers[self.layers.len()] += 1;
        if let Some((m, _)) = self.map {
            readers[m + 1] += 1;
        }
        readers
    }

    /// Whether the model outputs a fracture map beside its logit.
    pub fn has_map(&self) -> bool {
        self.map.is_some()
    }

    /// The shape of one image's fracture map, `[1, H, W]`, for a model with one.
    pub fn map_shape(&self) -> Option<&[usize]> {
        self.map.as_ref().map(|(_, shape)| shape.as_slice())
    }

    /// Runs every layer in order on the outputs it reads (a copy for each reader but the last,
    /// as layers keep their inputs; in a pass that keeps nothing, a layer that can reads such
    /// an output in place), showing each layer's output to `each`; returns the last.
    /// With `fuse` (a pass that shows nothing), a layer that can runs the ReLU and max pooling
    /// after it inside its own pass ([`epilogues`]), and those layers are skipped, in backward
    /// too. Returns the logits and, for a model with one, the map.
    fn run_forward(
        &mut self,
        be: &B,
        x: B::Tensor,
        (mode, fuse): (Mode, bool),
        mut each: impl FnMut(usize, &B::Tensor),
    ) -> (B::Tensor, Option<B::Tensor>) {
        self.absorbed = vec![0; self.layers.len()];
        let mut left = self.readers();
        let mut values: Vec<Option<B::Tensor>> = (0..left.len()).map(|_| None).collect();
        values[0] = Some(x);
        let mut skip = 0;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if skip > 0 {
                // ran inside the pass of a layer before, whose output only it read
                skip -= 1;
                left[slot(Some(i - 1))] -= 1;
                continue;
            }
            let then = self.epilogues[i].as_ref().filter(|_| fuse);
            // one input that another layer reads later, in a pass that keeps nothing: read in
            // place if the layer can ([`Layer::forward_borrowed`]), not copied
            let shared = match self.sources[i].as_slice() {
                [s] if !mode.keeps_for_backward() && left[slot(*s)] > 1 => Some(slot(*s)),
                _ => None,
            };
            let in_place = shared.and_then(|k| {
                let x = values[k]
                    .as_ref()
                    .expect("sources come before their readers");
                layer.forward_borrowed(be, x, then.map(|(t, _)| t))
            });
            if let (Some(y), Some(k)) = (in_place, shared) {
                left[k] -= 1;
                match then {
                    Some((_, covered)) => {
                        values[i + 1 + covered] = Some(y);
                        (skip, self.absorbed[i]) = (*covered, *covered);
                    }
                    None => {
                        each(i, &y);
                        values[i + 1] = Some(y);
                    }
                }
                continue;
            }
            let mut inputs = Vec::with_capacity(self.sources[i].len());
            for &s in &self.sources[i] {
                let k = slot(s);
                left[k] -= 1;
                let value = if left[k] == 0 {
                    values[k].take()
                } else {
                    values[k].as_ref().map(|v| be.copy(v))
                };
                inputs.push(value.expect("sources come before their readers"));
            }
            if let Some((then, covered)) = then {
                let x = inputs.pop().expect("one source");
                match layer.forward_then(be, x, mode, then) {
                    Ok(y) => {
                        values[i + 1 + covered] = Some(y);
                        (skip, self.absorbed[i]) = (*covered, *covered);
                        continue;
                    }
                    Err(x) => inputs.push(x),
                }
            }
            let y = layer.forward_inputs(be, inputs, mode);
            each(i, &y);
            values[i + 1] = Some(y);
        }
        let map = self.map.as_ref().and_then(|(m, _)| values[m + 1].take());
        (
            values.pop().flatten().expect("the last layer's output"),
            map,
        )
    }

    /// Backpropagates `dy` (at the last layer's output) and `dmap` (at the map's, zeros when
    /// None) through layers `stop..` in reverse, summing the gradients of outputs that several
    /// layers read. Returns the gradient at each output by [`slot`] from `stop` on (and at the
    /// image when `image` and `stop` is 0).
    fn run_backward(
        &mut self,
        be: &B,
        (dy, dmap): (B::Tensor, Option<B::Tensor>),
        stop: usize,
        image: bool,
    ) -> Vec<Option<B::Tensor>> {
        let n = self.layers.len();
        let mut grads: Vec<Option<B::Tensor>> = (0..=n).map(|_| None).collect();
        if let Some((m, shape)) = self.map.as_ref().filter(|(m, _)| *m >= stop) {
            let batch = be.shape(&dy).dims()[0];
            let zeros = || be.zeros(&[batch, shape[0], shape[1], shape[2]].into());
            grads[m + 1] = Some(dmap.unwrap_or_else(zeros));
        }
        grads[n] = Some(dy);
        let wanted = |s: &Option<usize>| s.map_or(image && stop == 0, |j| j + 1 >= stop);
        let mut inside = vec![false; n];
        for (i, &k) in self.absorbed.iter().enumerate() {
            inside[i + 1..=i + k].fill(true);
        }
        for i in (stop..n).rev() {
            if inside[i] {
                continue; // its backward pass is part of the layer's that ran it
            }
            let dy = grads[i + 1 + self.absorbed[i]]
                .take()
                .expect("every output leads to the logits (checked by ModelSpec::layers)");
            let want = self.sources[i].iter().any(wanted);
            let dxs = self.layers[i].backward_inputs(be, dy, want);
            for (&s, dx) in self.sources[i].iter().zip(dxs) {
                if let (true, Some(dx)) = (wanted(&s), dx) {
                    let k = slot(s);
                    grads[k] = Some(match grads[k].take() {
                        Some(g) => be.add(&g, &dx),
                        None => dx,
                    });
                }
            }
        }
        grads
    }

    /// `logits[N,1]` = model(`x[N,C,H,W]`).
    pub fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        self.run_forward(be, x, (mode, true), |_, _| {}).0
    }

    /// (`logits[N,1]`, the fracture map's logits `[N,1,H,W]` for a model with one).
    pub fn forward_with_map(
        &mut self,
        be: &B,
        x: B::Tensor,
        mode: Mode,
    ) -> (B::Tensor, Option<B::Tensor>) {
        self.run_forward(be, x, (mode, true), |_, _| {})
    }

    /// As [`Model::forward`], but every layer in its own pass (no epilogue inside another's): the
    /// plain composition that the fused passes are checked against.
    pub fn forward_layer_by_layer(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor {
        self.run_forward(be, x, (mode, false), |_, _| {}).0
    }

    /// Backpropagates `dlogits[N,1]` through every layer, leaving each parameter's gradient in
    /// `Param::grad`; returns dloss/dx when `want_dx` (for input-gradient checks and saliency).
    pub fn backward(&mut self, be: &B, dlogits: B::Tensor, want_dx: bool) -> Option<B::Tensor> {
        self.backward_with_map(be, (dlogits, None), want_dx)
    }

    /// [`Model::backward`] from the gradients at both outputs: `dlogits[N,1]` and, for a model
    /// with a map, `dmap[N,1,H,W]` (zeros when None).
    pub fn backward_with_map(
        &mut self,
        be: &B,
        (dlogits, dmap): (B::Tensor, Option<B::Tensor>),
        want_dx: bool,
    ) -> Option<B::Tensor> {
        self.run_backward(be, (dlogits, dmap), 0, want_dx)
            .swap_remove(0)
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
        let mut activation = None;
        let (logits, _) = self.run_forward(be, x, (Mode::Explain, false), |i, y| {
            if i == at {
                activation = Some(be.download(y));
            }
        });
        let logits = be.download(&logits);
        let ones = be.upload(&Tensor::full(logits.shape.clone(), 1.0));
        let mut grads = self.run_backward(be, (ones, None), at + 1, false);
        let grad = grads[at + 1]
            .take()
            .expect("layer `at` leads to the logits");
        let activation = activation.expect("at is a layer index");
        (logits, activation, be.download(&grad))
    }

    /// For inspection: with inference statistics (Mode::Explain), every layer's output for x
    /// (the last is the logits), read back; then the gradient of the summed logits is taken with
    /// respect to every parameter, which `Param::grad` holds afterwards.
    pub fn outputs_and_parameter_gradients(&mut self, be: &B, x: B::Tensor) -> Vec<Tensor> {
        let mut outputs = Vec::with_capacity(self.layers.len());
        let (logits, _) = self.run_forward(be, x, (Mode::Explain, false), |_, y| {
            outputs.push(be.download(y))
        });
        let ones = Tensor::full(be.shape(&logits).clone(), 1.0);
        self.backward(be, be.upload(&ones), false);
        outputs
    }

    /// With inference statistics (Mode::Eval), every layer's output for x, read back (the last
    /// is the logits): what the page of `serve` shows layer by layer.
    pub fn outputs(&mut self, be: &B, x: B::Tensor) -> Vec<Tensor> {
        let mut outputs = Vec::with_capacity(self.layers.len());
        self.run_forward(be, x, (Mode::Eval, false), |_, y| {
            outputs.push(be.download(y))
        });
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

/// One layer of `layer`'s kind for a sample of shape `input` (and `branch`, a merge's second
/// input), already checked to fit.
pub fn build_layer<B: Backend>(
    be: &B,
    layer: &LayerSpec,
    input: &[usize],
    branch: Option<&[usize]>,
    index: usize,
    rng: &mut StdRng,
) -> Box<dyn Layer<B>> {
    // `ModelSpec::layers` has checked every shape, so the geometry here always exists.
    match layer {
        LayerSpec::Conv2d { activation, .. } => {
            let g = layer
                .conv_geom(input)
                .expect("checked by ModelSpec::layers");
            let conv = Conv2d::new(be, g, rng);
            match activation {
                Some(Activation::Relu) => Box::new(conv.with_relu()),
                None => Box::new(conv),
            }
        }
        LayerSpec::DepthwiseConv2d { activation, .. } => {
            let g = layer
                .conv_geom(input)
                .expect("checked by ModelSpec::layers");
            let depthwise = DepthwiseConv2d::new(be, g, rng);
            match activation {
                Some(Activation::Relu) => Box::new(depthwise.with_relu()),
                None => Box::new(depthwise),
            }
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
        LayerSpec::Upsample { factor } => Box::new(Upsample { factor: *factor }),
        LayerSpec::Add => {
            let branch = branch.unwrap_or(input);
            let projection =
                LayerSpec::projection_geom(input, branch).expect("checked by ModelSpec::layers");
            Box::new(Add::new(be, projection, rng))
        }
    }
}
