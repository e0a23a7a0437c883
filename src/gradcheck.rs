//! Gradient checks: every backward pass proven against central finite differences.
//!
//! For a scalar loss L(θ) and an analytic gradient g = ∂L/∂θ from a backward pass, pick entries θᵢ
//! and compare gᵢ with the numerical slope
//!     (L(θ + h·eᵢ) − L(θ − h·eᵢ)) / 2h,
//! whose error is O(h²) for smooth L. Ops with a vector output y are reduced to a scalar with a
//! fixed random projection L = Σ r ⊙ y, so that ∂L/∂y = r is the `dy` fed to backward: every
//! output element then weighs in, and a wrong index or a wrong sign anywhere shows.
//!
//! Losses are summed in f64 on the host; inputs are kept away from the kinks of ReLU and max
//! pooling (a finite difference across a kink measures neither slope). The error of one entry is
//! |g − n| / max(|g|, |n|, floor). For single ops and layers in f32 the floor is 1 % of the
//! largest |g| of that tensor, which stops entries whose true gradient is ~0 from dividing noise
//! by noise. Whole models, whose gradients span decades, are differentiated in f64 on the
//! reference backend ([`WideModel`]), with a floor set by each slope's measured uncertainty; each
//! backend's whole-model gradients are then held to those entry by entry ([`against_wide`]).

use crate::backend::cases::{away_from_kinks, Input, Op};
use crate::backend::reference::{Precision, Reference};
use crate::backend::Backend;
use crate::nn::{self, Layer, LayerSpec, Mode, Model, ModelSpec};
use crate::tensor::{Shape, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

/// The outcome of checking one gradient.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was differentiated, e.g. "conv2d 3x3 s2 valid".
    pub case: String,
    /// With respect to what, e.g. "x" or "03.batchnorm.gamma".
    pub wrt: String,
    pub checked: usize,
    /// Entries not compared because a step of ±h crossed a kink (a ReLU or pooling switch).
    pub skipped: usize,
    pub max_rel_err: f64,
    /// The relative error of every compared entry, in the order compared.
    pub rel_errs: Vec<f64>,
    /// The analytic and numeric values at the worst entry.
    pub worst: (f64, f64),
    /// What the gradient was compared with: "numeric" (finite differences) or "f64" (the wide
    /// reference's gradient).
    pub versus: &'static str,
}

impl Report {
    /// Nothing compared yet, against "numeric" or "f64" (`versus`).
    fn new(case: &str, wrt: &str, versus: &'static str) -> Self {
        Report {
            case: case.into(),
            wrt: wrt.into(),
            checked: 0,
            skipped: 0,
            max_rel_err: 0.0,
            rel_errs: Vec::new(),
            worst: (0.0, 0.0),
            versus,
        }
    }

    /// One more entry compared: `analytic` against `other`, with the error
    /// |analytic − other| / max(|analytic|, |other|, floor). A NaN on either side is the worst
    /// error there is, not one that compares false.
    fn record(&mut self, analytic: f64, other: f64, floor: f64) {
        let err = (analytic - other).abs() / analytic.abs().max(other.abs()).max(floor);
        let err = if err.is_nan() { f64::INFINITY } else { err };
        self.checked += 1;
        self.rel_errs.push(err);
        if err >= self.max_rel_err {
            self.max_rel_err = err;
            self.worst = (analytic, other);
        }
    }

    pub fn passed(&self, tol: f64) -> bool {
        self.max_rel_err <= tol
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<34} {:<26} {:>4} checked {:>3} at kinks  analytic {:>12.5e}  {:>7} {:>12.5e}  max rel err {:.2e}",
            self.case,
            self.wrt,
            self.checked,
            self.skipped,
            self.worst.0,
            self.versus,
            self.worst.1,
            self.max_rel_err
        )
    }
}

/// Settings of one comparison.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Steps h of the central differences, tried in order until one does not cross a kink.
    /// A large step keeps f32 rounding in the forward pass small next to the change it causes;
    /// a small one makes it less likely to cross a kink.
    pub steps: &'static [f64],
    /// Entries of each tensor to check (all of them when the tensor is smaller).
    pub samples: usize,
    /// Below what an entry's disagreement is not counted against it.
    pub floor: Floor,
}

/// What a disagreement |g − n| between the analytic gradient g and the numerical slope n is
/// measured against: the error of an entry is |g − n| / max(|g|, |n|, floor).
#[derive(Clone, Copy, Debug)]
pub enum Floor {
    /// For f32 forward passes of single ops and layers, whose gradients under a random
    /// projection are all of one order: 1 % of the tensor's largest |g|, or the loss's rounding
    /// `noise` / h if larger, so that an entry whose true gradient is ~0 does not divide noise by
    /// noise. (It also hides an entry 100× smaller than the largest: whole models, where
    /// gradients span decades, use `Measured`.)
    LargestEntry { noise: f64 },
    /// For f64 forward passes: the slope is Richardson's (4·s(h/2) − s(h)) / 3, and its measured
    /// uncertainty is ν = |s(h) − s(h/2)| plus the loss's measured rounding `noise` / h. The floor is ν /
    /// `tol`, so that an entry passes at `tol` when g is within `tol` of n relatively, or within
    /// ν of it absolutely, and nothing looser: a zero gradient against a true 1e-6 fails.
    Measured { tol: f64, noise: f64 },
}

impl Probe {
    /// For single ops and layers, whose gradients under a random projection are O(0.1–1).
    pub fn op(samples: usize) -> Self {
        Probe {
            steps: &[1e-2],
            samples,
            floor: Floor::LargestEntry { noise: 5e-5 },
        }
    }
    /// For whole models in f64 ([`WideModel::probe`]): steps of 1e-4 (1e-5, then 1e-6, when a
    /// step crosses a kink), and the loss's rounding `noise` as measured.
    pub fn wide(samples: usize, noise: f64) -> Self {
        Probe {
            steps: &[1e-4, 1e-5, 1e-6],
            samples,
            floor: Floor::Measured {
                tol: WIDE_TOL,
                noise,
            },
        }
    }
}

/// Compares `grad` (= ∂loss/∂x) with central differences of `loss` at up to `probe.samples`
/// entries of x, chosen at random with `seed`. `loss` returns `None` when the point it was given
/// lies on another linear piece than x itself (a kink between them): that entry is skipped.
/// The step is the one the stored values actually took (x ± h rounded to `T`).
pub fn compare<T: Precision>(
    case: &str,
    wrt: &str,
    x: &Tensor<T>,
    grad: &Tensor<T>,
    mut loss: impl FnMut(&Tensor<T>) -> Option<f64>,
    probe: Probe,
    seed: u64,
) -> Report {
    assert_eq!(
        x.shape, grad.shape,
        "{case}: gradient wrt {wrt} has the wrong shape"
    );
    let mut idx: Vec<usize> = (0..x.numel()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let largest = grad.data.iter().fold(0f64, |m, g| m.max(g.wide().abs()));
    let mut report = Report::new(case, wrt, "numeric");
    let mut xp = x.clone();
    // At most 4 tries per wanted sample, so that a tensor where most steps cross a kink ends.
    for i in idx.into_iter().take(4 * probe.samples) {
        if report.checked == probe.samples {
            break;
        }
        let x0 = xp.data[i];
        let mut slope = |h: f64| {
            xp.data[i] = T::narrow(x0.wide() + h);
            let (up_at, up) = (xp.data[i].wide(), loss(&xp));
            xp.data[i] = T::narrow(x0.wide() - h);
            let (down_at, down) = (xp.data[i].wide(), loss(&xp));
            xp.data[i] = x0;
            Some((up? - down?) / (up_at - down_at))
        };
        let mut estimate = |h: f64| match probe.floor {
            Floor::LargestEntry { noise } => Some((slope(h)?, (1e-2 * largest).max(noise / h))),
            Floor::Measured { tol, noise } => {
                let (coarse, fine) = (slope(h)?, slope(h / 2.0)?);
                let uncertainty = (coarse - fine).abs() + noise / h;
                Some(((4.0 * fine - coarse) / 3.0, uncertainty / tol))
            }
        };
        let Some((numeric, floor)) = probe.steps.iter().find_map(|&h| estimate(h)) else {
            report.skipped += 1;
            continue;
        };
        report.record(grad.data[i].wide(), numeric, floor);
    }
    report
}

/// Σ r ⊙ y in f64.
pub fn project(y: &Tensor, r: &Tensor) -> f64 {
    assert_eq!(y.shape, r.shape);
    y.data
        .iter()
        .zip(&r.data)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

fn rand(shape: impl Into<Shape>, seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, -1.0, 1.0, seed)
}

/// Every backward pass of an op case against central differences of its forward pass, with
/// L = Σ r ⊙ y (r = 1 when y is a scalar: the loss itself): one report per differentiable
/// input x, whose analytic gradient is the output `dx` of one of the op's backward passes.
pub fn op_case<B: Backend>(be: &B, op: &Op, probe: Probe) -> Vec<Report> {
    let inputs = op.inputs(1);
    let shape = op.output_shape();
    let r = if shape.numel() == 1 {
        Tensor::full(shape, 1.0)
    } else {
        rand(shape, 99)
    };
    let mut state = op.prepare(be, &inputs, &r);
    let grads: Vec<(&str, Tensor)> = (0..op.passes().len())
        .flat_map(|pass| op.run(be, pass, &mut state))
        .map(|(name, t)| (name, be.download(&t)))
        .collect();
    // the linear piece of the forward pass: where its maxima came from, and which outputs a
    // ReLU set to 0 (an output exactly 0 is one, in every case of the suite)
    let piece = |y: &Tensor, st: &_| {
        let zeros: Vec<bool> = y.data.iter().map(|&v| v == 0.0).collect();
        (op.argmax(be, st), zeros)
    };
    let base_piece = grads.first().map(|(_, y)| piece(y, &state));
    let case = op.name();
    let differentiable = inputs.iter().enumerate().filter(|(_, i)| i.differentiable);
    differentiable
        .map(|(k, x)| {
            let wanted = format!("d{}", x.name);
            let (_, grad) = grads
                .iter()
                .find(|(name, _)| *name == wanted)
                .unwrap_or_else(|| panic!("{case}: no pass returns {wanted}"));
            // None when a step crossed a kink (moved a pooling window's maximum or a ReLU's
            // switch): the slope across it is neither
            let loss = |probe: &Tensor| {
                let mut probed: Vec<Input> = op.inputs(1);
                probed[k].value = probe.clone();
                let mut st = op.prepare(be, &probed, &r);
                let (_, y) = op.run(be, 0, &mut st).swap_remove(0);
                let y = be.download(&y);
                (Some(piece(&y, &st)) == base_piece).then(|| project(&y, &r))
            };
            compare(&case, x.name, &x.value, grad, loss, probe, k as u64)
        })
        .collect()
}

/// One layer of the model zoo, run through its `Layer` implementation (so the layer's wiring of
/// ops, caches and parameter gradients is checked, not only the ops): gradients wrt each input
/// (a merge's second input, of shape `branch`, too) and every trainable parameter, with
/// L = Σ r ⊙ layer(x).
pub fn layer<B: Backend>(
    be: &B,
    spec: &LayerSpec,
    batch: usize,
    sample: &[usize],
    branch: Option<&[usize]>,
    probe: Probe,
) -> Vec<Report> {
    let case = match branch {
        Some(b) => format!("layer {} of {sample:?} and {b:?} x{batch}", spec.describe()),
        None => format!("layer {} on {sample:?} x{batch}", spec.describe()),
    };
    let xs: Vec<Tensor> = std::iter::once(sample)
        .chain(branch)
        .enumerate()
        .map(|(k, s)| check_input(spec, batch, s, 14 + 100 * k as u64))
        .collect();
    let mut rng = StdRng::seed_from_u64(15);
    let mut layer: Box<dyn Layer<B>> =
        nn::model::build_layer(be, spec, sample, branch, 3, &mut rng);
    let mode = Mode::Train { seed: 77 };
    let upload = |xs: &[Tensor]| xs.iter().map(|x| be.upload(x)).collect::<Vec<_>>();
    let y = be.download(&layer.forward_inputs(be, upload(&xs), mode));
    let base_kinks = layer.kinks(be);
    let r = rand(y.shape.clone(), 16);
    let dxs: Vec<Tensor> = layer
        .backward_inputs(be, be.upload(&r), true)
        .iter()
        .map(|dx| be.download(dx.as_ref().expect("dx was asked for")))
        .collect();
    let run = |layer: &mut Box<dyn Layer<B>>, xs: &[Tensor]| {
        let y = be.download(&layer.forward_inputs(be, upload(xs), mode));
        (layer.kinks(be) == base_kinks).then(|| project(&y, &r))
    };
    let names = if xs.len() == 1 { ["x", ""] } else { ["a", "b"] };
    let mut reports = Vec::new();
    for (k, dx) in dxs.iter().enumerate() {
        let loss = |p: &Tensor| {
            let mut probed = xs.clone();
            probed[k] = p.clone();
            run(&mut layer, &probed)
        };
        reports.push(compare(&case, names[k], &xs[k], dx, loss, probe, 17));
    }
    let trainable: Vec<(usize, &'static str, Tensor, Tensor)> = layer
        .params()
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trainable)
        .map(|(i, p)| {
            let grad = p.grad.as_ref().expect("backward sets every trainable grad");
            (i, p.name, be.download(&p.value), be.download(grad))
        })
        .collect();
    for (i, name, value, grad) in trainable {
        let loss = |probe: &Tensor| {
            layer.params_mut()[i].value = be.upload(probe);
            run(&mut layer, &xs)
        };
        reports.push(compare(
            &case,
            name,
            &value,
            &grad,
            loss,
            probe,
            18 + i as u64,
        ));
        layer.params_mut()[i].value = be.upload(&value);
    }
    reports
}

/// An input for a layer's check: values away from kinks, of shape `[batch, sample...]`.
fn check_input(spec: &LayerSpec, batch: usize, sample: &[usize], seed: u64) -> Tensor {
    let mut shape = vec![batch];
    shape.extend_from_slice(sample);
    let x = away_from_kinks(shape.as_slice(), seed);
    // Batch norm over a channel of a few values (the batch's 2, at the 1×1 end of MobileNet) is
    // very curved at the scale of their spread: spread them out, as `batchnorm` does. (Larger
    // channels are left alone: there, larger values would only add rounding to the loss.)
    let per_channel: usize = shape.iter().skip(2).product::<usize>() * batch;
    if matches!(spec, LayerSpec::BatchNorm { .. }) && per_channel <= 8 {
        Tensor::new(x.shape, x.data.iter().map(|v| 10.0 * v).collect())
    } else {
        x
    }
}

/// Relative error allowed for single ops and layers (f32 forward passes, h = 1e-2).
pub const LAYER_TOL: f64 = 1e-2;

/// Every layer of `spec`, each through [`layer`] at its own input shape in the model (a layer
/// that repeats with the same input shape is checked once), paired with the layer's index.
pub fn model_layers<B: Backend>(
    be: &B,
    spec: &ModelSpec,
    batch: usize,
    probe: Probe,
) -> Result<Vec<(usize, Report)>, crate::nn::spec::SpecError> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for info in spec.layers()? {
        let key = (
            info.spec.describe(),
            info.input.clone(),
            info.branch.clone(),
        );
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        // a larger step keeps f32 rounding (which grows with a layer's fan-out) small next to
        // the change it causes, and is exact for a linear layer
        let probe = if info.spec.is_linear() {
            Probe {
                steps: &[1e-1],
                ..probe
            }
        } else {
            probe
        };
        let branch = info.branch.as_deref();
        for r in layer(be, &info.spec, batch, &info.input, branch, probe) {
            out.push((info.index, r));
        }
    }
    Ok(out)
}

/// Relative error allowed when a whole model's f64 gradients meet finite differences of its f64
/// loss, beyond what the two steps' slopes disagree by.
pub const WIDE_TOL: f64 = 1e-6;

/// What a whole model is differentiated on: a batch of random images with alternating labels,
/// the loss BCE (positive weight 2) in training mode (batch statistics, fixed dropout masks),
/// plus, for a model with a fracture map, a fixed random projection of the map, weighed as a
/// per-pixel loss is (by 1 / (H·W)) so that the map's term is as large as the logit's: the map's
/// layers and its gradient's way back into the trunk are checked too.
struct ModelLoss {
    x: Tensor,
    targets: Tensor,
    map_projection: Option<Tensor>,
}

const MODEL_MODE: Mode = Mode::Train { seed: 23 };
const MODEL_POS_WEIGHT: f32 = 2.0;

impl ModelLoss {
    /// On the `input`-th random batch.
    fn new(spec: &ModelSpec, batch: usize, input: u64) -> Self {
        let [c, h, w] = spec.input;
        let targets: Vec<f32> = (0..batch).map(|i| (i % 2) as f32).collect();
        let infos = spec.layers().expect("a valid spec");
        let map_projection = spec.map_layer().expect("a valid spec").map(|m| {
            let [_, mh, mw] = infos[m].output[..] else {
                unreachable!("a map is [1, H, W]")
            };
            let weight = 1.0 / (mh * mw) as f32;
            Tensor::rand_uniform([batch, 1, mh, mw], -weight, weight, 26)
        });
        ModelLoss {
            x: Tensor::rand_uniform([batch, c, h, w], 0.0, 1.0, 21 + 1000 * input),
            targets: Tensor::new([batch], targets),
            map_projection,
        }
    }

    /// The model (seed 22) on `be` after one forward and backward pass, ∂L/∂x, and the kink
    /// fingerprint of the forward pass (which side of each ReLU and pooling choice it took).
    fn backward<B: Backend>(&self, be: &B, spec: &ModelSpec) -> (Model<B>, B::Tensor, u64) {
        let mut model = Model::new(be, spec, 22).expect("a valid spec");
        let (logits, _) = model.forward_with_map(be, be.upload(&self.x), MODEL_MODE);
        let kinks = model.kinks(be);
        let y = be.upload(&self.targets);
        let (_, dlogits) = be.bce_with_logits(&logits, &y, MODEL_POS_WEIGHT);
        let dmap = self.map_projection.as_ref().map(|r| be.upload(r));
        let dx = model
            .backward_with_map(be, (dlogits, dmap), true)
            .expect("dx was asked for");
        (model, dx, kinks)
    }
}

/// ("x", ∂L/∂x), then every trainable parameter's gradient by name, in the model's order.
fn named_gradients<B: Backend, T>(
    model: &Model<B>,
    dx: T,
    read: impl Fn(&B::Tensor) -> T,
) -> Vec<(String, T)> {
    let params = model
        .named_params()
        .into_iter()
        .filter(|p| p.param.trainable);
    let grads = params.map(|p| {
        let grad = p
            .param
            .grad
            .as_ref()
            .expect("backward sets every trainable grad");
        (p.name, read(grad))
    });
    std::iter::once(("x".to_string(), dx))
        .chain(grads)
        .collect()
}

/// The wide reference backend, on which whole models are differentiated both ways.
const WIDE: Reference<f64> = Reference::f64();

/// A whole model on the wide reference backend (every value f64), after one backward pass: its
/// analytic gradients, and its loss as a function of any one input or parameter, for central
/// differences. In f64 the loss is good to ~1e-15, so a slope is resolved to far below the
/// smallest gradient that matters, through batch norms over three values and dozens of layers,
/// where an f32 forward pass buries slopes of 1e-3 in its rounding.
pub struct WideModel {
    spec: ModelSpec,
    batch: usize,
    input: u64,
    case: String,
    model: Model<Reference<f64>>,
    x: Tensor<f64>,
    targets: Tensor<f64>,
    map_projection: Option<Tensor<f64>>,
    base_kinks: u64,
    gradients: Vec<(String, Tensor<f64>)>,
}

impl WideModel {
    pub fn new(spec: &ModelSpec, batch: usize) -> Self {
        Self::on_input(spec, batch, 0)
    }

    /// On the `input`-th random batch (the 0th for [`WideModel::new`]).
    pub fn on_input(spec: &ModelSpec, batch: usize, input: u64) -> Self {
        let setup = ModelLoss::new(spec, batch, input);
        let (model, dx, base_kinks) = setup.backward(&WIDE, spec);
        let gradients = named_gradients(&model, dx, Tensor::clone);
        let [_, h, w] = spec.input;
        WideModel {
            spec: spec.clone(),
            batch,
            input,
            case: format!("model {} {h}x{w} x{batch} in f64", spec.name),
            base_kinks,
            model,
            x: WIDE.upload(&setup.x),
            targets: WIDE.upload(&setup.targets),
            map_projection: setup.map_projection.as_ref().map(|r| WIDE.upload(r)),
            gradients,
        }
    }

    /// ("x", ∂L/∂x), then every trainable parameter's ∂L/∂θ by name, from the backward pass.
    pub fn gradients(&self) -> &[(String, Tensor<f64>)] {
        &self.gradients
    }

    /// L at input `x`, or None when the forward pass lands on another linear piece than the
    /// point the gradients were taken at.
    fn loss(&mut self, x: &Tensor<f64>) -> Option<f64> {
        let (logits, map) = self.model.forward_with_map(&WIDE, x.clone(), MODEL_MODE);
        let bce = WIDE
            .bce_with_logits(&logits, &self.targets, MODEL_POS_WEIGHT)
            .0;
        let map_term = match (&map, &self.map_projection) {
            (Some(map), Some(r)) => map.data.iter().zip(&r.data).map(|(a, b)| a * b).sum(),
            _ => 0.0,
        };
        (self.model.kinks(&WIDE) == self.base_kinks).then_some(bce.data[0] + map_term)
    }

    /// L with the tensor named `wrt` ("x" or a parameter) set to `value`, the others as they are.
    fn loss_with(&mut self, wrt: &str, value: &Tensor<f64>) -> Option<f64> {
        if wrt == "x" {
            return self.loss(value);
        }
        let i = self.param_index(wrt);
        let original = std::mem::replace(&mut self.model.params_mut()[i].value, value.clone());
        let loss = self.loss(&self.x.clone());
        self.model.params_mut()[i].value = original;
        loss
    }

    fn param_index(&self, wrt: &str) -> usize {
        let names = self.model.named_params();
        let i = names.iter().position(|p| p.name == wrt);
        i.unwrap_or_else(|| panic!("{} has no parameter {wrt}", self.case))
    }

    fn value(&self, wrt: &str) -> Tensor<f64> {
        match wrt {
            "x" => self.x.clone(),
            _ => self.model.named_params()[self.param_index(wrt)]
                .param
                .value
                .clone(),
        }
    }

    /// The rounding of L, measured: how far L lands from its linear prediction L + g·δ when one
    /// value moves by δ = 1e-9, far too little for curvature to show (~1e-18): the largest miss
    /// over 8 such moves of entries spread over the input and the parameters.
    pub fn loss_noise(&mut self) -> f64 {
        let base = self
            .loss(&self.x.clone())
            .expect("the same forward pass twice lands elsewhere");
        let gradients = self.gradients.clone();
        let mut noise = 0f64;
        for k in 0..8 {
            let (wrt, g) = &gradients[(k * 5 + 1) % gradients.len()];
            let j = (k * 7919) % g.numel();
            let mut value = self.value(wrt);
            value.data[j] += 1e-9;
            let moved = 1e-9 * g.data[j];
            if let Some(l) = self.loss_with(wrt, &value) {
                noise = noise.max((l - base - moved).abs());
            }
        }
        noise
    }

    /// The probe of [`WideModel::check_all`]: `samples` entries a tensor, and 10× the measured
    /// [`WideModel::loss_noise`] as the loss's rounding.
    pub fn probe(&mut self, samples: usize) -> Probe {
        Probe::wide(samples, 10.0 * self.loss_noise())
    }

    /// `grad`, a claimed gradient wrt `wrt` (a name of [`WideModel::gradients`]), against central
    /// differences of L.
    pub fn check(&mut self, wrt: &str, grad: &Tensor<f64>, probe: Probe) -> Report {
        let (case, value) = (self.case.clone(), self.value(wrt));
        let seed = match wrt {
            "x" => 24,
            _ => 25 + self.param_index(wrt) as u64,
        };
        compare(
            &case,
            wrt,
            &value,
            grad,
            |p| self.loss_with(wrt, p),
            probe,
            seed,
        )
    }

    /// Every gradient of the backward pass against central differences, `samples` entries each.
    pub fn check_all(&mut self, samples: usize) -> Vec<Report> {
        let probe = self.probe(samples);
        let gradients = self.gradients.clone();
        gradients
            .iter()
            .map(|(wrt, g)| self.check(wrt, g, probe))
            .collect()
    }
}

/// Relative error allowed between a backend's whole-model gradients and the wide reference's,
/// beyond [`F32_ROUNDING_MULTIPLE`] times the rounding that f32 storage alone causes there.
pub const F32_TOL: f64 = 1e-3;

/// How many times the measured rounding of f32 storage a backend's gradient may be off: its own
/// sums are f32 (the reference's are f64), over long dot products and Winograd's transforms.
/// (Measured over the tests' whole-model checks: at most 18 on the CPU, 25 on lavapipe.)
pub const F32_ROUNDING_MULTIPLE: f64 = 64.0;

/// A backend's whole-model gradients at the wide model's point, downloaded, in the order of
/// [`WideModel::gradients`]; None when its forward pass took another side than the f64 one of
/// some ReLU or pooling choice (a ReLU input within f32 rounding of 0 may fall on either side,
/// and the gradients of two linear pieces need not be close: see [`INPUTS_TRIED`]).
pub fn gradients_on<B: Backend>(be: &B, wide: &WideModel) -> Option<Vec<(String, Tensor)>> {
    let setup = ModelLoss::new(&wide.spec, wide.batch, wide.input);
    let (model, dx, kinks) = setup.backward(be, &wide.spec);
    (kinks == wide.base_kinks)
        .then(|| named_gradients(&model, be.download(&dx), |g| be.download(g)))
}

/// Random batches tried, one after another, before a comparison with the wide reference gives
/// up: on a batch where a ReLU or pooling choice fell otherwise in f32 than in f64, the two sets
/// of gradients belong to two linear pieces and compare nothing about the arithmetic. (In
/// xray-bone-classifier, batch norm follows each ReLU and pooling follows batch norm, so a unit
/// let through by a hair wins its pooling window and takes the window's whole gradient: the
/// input gradient's worst entry was 2.6e-2 off on the first batch at 94 × 94.)
pub const INPUTS_TRIED: u64 = 6;

/// A backend's whole-model gradients (every tensor, every entry) against the wide reference's,
/// which [`WideModel::check_all`] holds to finite differences ([`against_wide_gradients`]), on
/// the first of [`INPUTS_TRIED`] batches where the backend, the reference in f32 and in f64 all
/// take the same side of every kink. Panics, saying so, when there is none.
pub fn against_wide<B: Backend>(be: &B, spec: &ModelSpec, batch: usize) -> Vec<Report> {
    for input in 0..INPUTS_TRIED {
        let wide = WideModel::on_input(spec, batch, input);
        let case = format!("{} on {}", wide.case.replace(" in f64", ""), be.name());
        if let Some(tested) = gradients_on(be, &wide) {
            if let Some(reports) = against_wide_gradients(&case, &tested, &wide) {
                return reports;
            }
        }
    }
    panic!(
        "{} x{batch}: on each of {INPUTS_TRIED} batches some ReLU or pooling choice fell \
         otherwise on {} or in f32 than in f64",
        spec.name,
        be.name()
    )
}

/// `tested` (in the order of [`WideModel::gradients`]) against the wide reference's gradients.
/// f32 storage moves a gradient by an amount that is measured, not assumed: the reference run
/// with f32 tensors (each op's output rounded to f32, its sums in f64) against the wide one, per
/// tensor (its largest difference, and at least one f32 ulp of the tensor's largest entry). An
/// entry's error is |g − w| / max(|g|, |w|, floor), with the floor [`F32_ROUNDING_MULTIPLE`] ×
/// that rounding / [`F32_TOL`]: within `F32_TOL` relatively, or within that multiple of f32's
/// rounding absolutely, passes.
/// None when the reference in f32 took another side of a kink than in f64.
pub fn against_wide_gradients(
    case: &str,
    tested: &[(String, Tensor)],
    wide: &WideModel,
) -> Option<Vec<Report>> {
    let rounded = gradients_on(&Reference::f32(), wide)?;
    assert_eq!(
        tested.len(),
        wide.gradients.len(),
        "{case}: gradients missing"
    );
    let reports = wide
        .gradients
        .iter()
        .zip(&rounded)
        .zip(tested)
        .map(|(((wrt, w), (_, r)), (name, g))| {
            assert_eq!(wrt, name, "{case}: the gradients come in another order");
            let largest = w.data.iter().fold(0f64, |m, w| m.max(w.abs()));
            let rounding = w
                .data
                .iter()
                .zip(&r.data)
                .fold(f32::EPSILON as f64 * largest, |m, (w, r)| {
                    m.max((w - *r as f64).abs())
                });
            let floor = F32_ROUNDING_MULTIPLE * rounding / F32_TOL;
            entry_by_entry(case, wrt, g, w, floor)
        })
        .collect();
    Some(reports)
}

/// `g` against `want` at every entry, relative with `floor`; NaN is the worst error there is.
fn entry_by_entry(case: &str, wrt: &str, g: &Tensor, want: &Tensor<f64>, floor: f64) -> Report {
    assert_eq!(
        g.shape, want.shape,
        "{case}: gradient wrt {wrt} has the wrong shape"
    );
    let mut report = Report::new(case, wrt, "f64");
    for (&g, &w) in g.data.iter().zip(&want.data) {
        report.record(g as f64, w, floor);
    }
    report
}
