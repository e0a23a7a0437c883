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
//! |g − n| / max(|g|, |n|, floor), where the floor (1 % of the largest |g| of that tensor) stops
//! entries whose true gradient is ~0 from dividing noise by noise.

use crate::backend::cases::{away_from_kinks, Input, Op};
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
}

impl Report {
    pub fn passed(&self, tol: f64) -> bool {
        self.max_rel_err <= tol
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<34} {:<26} {:>4} checked {:>3} at kinks  analytic {:>12.5e}  numeric {:>12.5e}  max rel err {:.2e}",
            self.case,
            self.wrt,
            self.checked,
            self.skipped,
            self.worst.0,
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
    pub steps: &'static [f32],
    /// Entries of each tensor to check (all of them when the tensor is smaller).
    pub samples: usize,
    /// Rounding error of the loss itself (f32 forward passes): a slope measured with step h is
    /// only good to about `noise / h`, so gradients below that are compared in absolute terms.
    pub noise: f64,
}

impl Probe {
    /// For single ops and layers, whose gradients under a random projection are O(0.1–1).
    pub fn op(samples: usize) -> Self {
        Probe {
            steps: &[1e-2],
            samples,
            noise: 5e-5,
        }
    }
    /// For whole models, where gradients of the mean loss are O(1e-3–1e-1) and moving one weight
    /// of an early layer shifts thousands of units, some of which may cross a ReLU kink or swap a
    /// pooling winner: a smaller step is tried before an entry is skipped.
    pub fn model(samples: usize) -> Self {
        Probe {
            steps: &[2e-3, 5e-4, 1e-4],
            samples,
            noise: 2e-5,
        }
    }
}

/// Compares `grad` (= ∂loss/∂x) with central differences of `loss` at up to `probe.samples`
/// entries of x, chosen at random with `seed`. `loss` returns `None` when the point it was given
/// lies on another linear piece than x itself (a kink between them): that entry is skipped.
pub fn compare(
    case: &str,
    wrt: &str,
    x: &Tensor,
    grad: &Tensor,
    mut loss: impl FnMut(&Tensor) -> Option<f64>,
    probe: Probe,
    seed: u64,
) -> Report {
    assert_eq!(
        x.shape, grad.shape,
        "{case}: gradient wrt {wrt} has the wrong shape"
    );
    let mut idx: Vec<usize> = (0..x.numel()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let largest = grad.data.iter().fold(0f64, |m, g| m.max(g.abs() as f64));
    let mut report = Report {
        case: case.into(),
        wrt: wrt.into(),
        checked: 0,
        skipped: 0,
        max_rel_err: 0.0,
        rel_errs: Vec::new(),
        worst: (0.0, 0.0),
    };
    let mut xp = x.clone();
    // At most 4 tries per wanted sample, so that a tensor where most steps cross a kink ends.
    for i in idx.into_iter().take(4 * probe.samples) {
        if report.checked == probe.samples {
            break;
        }
        let x0 = xp.data[i];
        let mut slope = |h: f32| {
            xp.data[i] = x0 + h;
            let up = loss(&xp);
            xp.data[i] = x0 - h;
            let down = loss(&xp);
            xp.data[i] = x0;
            Some(((up? - down?) / (2.0 * h as f64), h))
        };
        let Some((numeric, h)) = probe.steps.iter().find_map(|&h| slope(h)) else {
            report.skipped += 1;
            continue;
        };
        report.checked += 1;
        let floor = (1e-2 * largest).max(probe.noise / h as f64);
        let analytic = grad.data[i] as f64;
        let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(floor);
        // a NaN on either side is the worst error there is, not one that compares false
        let err = if err.is_nan() { f64::INFINITY } else { err };
        report.rel_errs.push(err);
        if err >= report.max_rel_err {
            report.max_rel_err = err;
            report.worst = (analytic, numeric);
        }
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

/// Relative error allowed through whole models for 90 % of the compared entries, and for all of
/// them: f32 rounding accumulates over dozens of layers (the loss itself is only good to ~5e-7)
/// and a few entries sit near a kink that the step did not quite cross. (Measured over the four
/// presets' checks in the tests: 90 % within 4e-3, the worst 1.4e-2.)
pub const MODEL_TOL: (f64, f64) = (1e-2, 5e-2);

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
        // L is linear in every input of these layers, so a central difference is exact at any
        // step, and a larger one keeps f32 rounding (which grows with a layer's fan-out) small.
        let linear = matches!(
            info.spec,
            LayerSpec::Conv2d { .. }
                | LayerSpec::DepthwiseConv2d { .. }
                | LayerSpec::GlobalAvgPool
                | LayerSpec::Dense { .. }
                | LayerSpec::Flatten
                | LayerSpec::Dropout { .. }
                | LayerSpec::Add
                | LayerSpec::Upsample { .. }
        );
        let probe = if linear {
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

/// A whole model: the BCE loss's gradient wrt the input image and a sample of every trainable
/// parameter of every layer, in training mode (batch statistics, fixed dropout masks).
pub fn model<B: Backend>(be: &B, spec: &ModelSpec, batch: usize, probe: Probe) -> Vec<Report> {
    let [c, h, w] = spec.input;
    let x = Tensor::rand_uniform([batch, c, h, w], 0.0, 1.0, 21);
    let targets: Vec<f32> = (0..batch).map(|i| (i % 2) as f32).collect();
    let y = be.upload(&Tensor::new([batch], targets));
    let mut model = Model::new(be, spec, 22).expect("a valid spec");
    let mode = Mode::Train { seed: 23 };
    // a model with a fracture map: L also holds a fixed random projection of the map, so that
    // the map's layers and its gradient's way back into the trunk are checked too; weighed as a
    // per-pixel loss is, by 1 / (H·W), so that the map's term is as large as the logit's
    let infos = spec.layers().expect("a valid spec");
    let map_projection = spec.map_layer().expect("a valid spec").map(|m| {
        let [_, mh, mw] = infos[m].output[..] else {
            unreachable!("a map is [1, H, W]")
        };
        let weight = 1.0 / (mh * mw) as f32;
        Tensor::rand_uniform([batch, 1, mh, mw], -weight, weight, 26)
    });
    let (logits, _) = model.forward_with_map(be, be.upload(&x), mode);
    let base_kinks = model.kinks(be);
    let loss_at = |model: &mut Model<B>, x: &Tensor| {
        let (logits, map) = model.forward_with_map(be, be.upload(x), mode);
        let mut loss = nn::loss::bce_with_logits(be, &logits, &y, 2.0).0 as f64;
        if let (Some(map), Some(r)) = (map, &map_projection) {
            loss += project(&be.download(&map), r);
        }
        (model.kinks(be) == base_kinks).then_some(loss)
    };
    let (_, dlogits) = nn::loss::bce_with_logits(be, &logits, &y, 2.0);
    let dmap = map_projection.as_ref().map(|r| be.upload(r));
    let dx = model
        .backward_with_map(be, (dlogits, dmap), true)
        .expect("dx was asked for");
    // The rounding noise of this model's loss: how much L moves when one weight moves by a
    // step far too small to matter (1e-5 relative). Slopes are not trusted below 4× that / h.
    let mut noise = 0f64;
    // the point itself is on its own side of every kink, unless the forward pass is not
    // deterministic, which would make every slope below meaningless
    let base = loss_at(&mut model, &x).expect("the same forward pass twice lands on other kinks");
    let trainable: Vec<usize> = model
        .named_params()
        .iter()
        .enumerate()
        .filter(|(_, p)| p.param.trainable)
        .map(|(i, _)| i)
        .collect();
    for k in 0..8 {
        let i = trainable[(k * 5 + 1) % trainable.len()];
        let original = be.download(&model.params_mut()[i].value);
        let mut v = original.clone();
        let j = (k * 7919) % v.numel();
        v.data[j] = v.data[j] * (1.0 + 1e-5) + 1e-8;
        model.params_mut()[i].value = be.upload(&v);
        if let Some(l) = loss_at(&mut model, &x) {
            noise = noise.max((l - base).abs());
        }
        model.params_mut()[i].value = be.upload(&original);
    }
    let probe = Probe {
        noise: probe.noise.max(4.0 * noise),
        ..probe
    };
    let case = format!(
        "model {} {h}x{w} x{batch} (loss noise {noise:.1e})",
        spec.name
    );
    let mut reports = vec![compare(
        &case,
        "x",
        &x,
        &be.download(&dx),
        |p| loss_at(&mut model, p),
        probe,
        24,
    )];
    let params: Vec<(usize, String, Tensor, Tensor)> = model
        .named_params()
        .iter()
        .enumerate()
        .filter(|(_, p)| p.param.trainable)
        .map(|(i, p)| {
            let grad = p
                .param
                .grad
                .as_ref()
                .expect("backward sets every trainable grad");
            (
                i,
                p.name.clone(),
                be.download(&p.param.value),
                be.download(grad),
            )
        })
        .collect();
    for (i, name, value, grad) in params {
        let loss = |probe: &Tensor| {
            model.params_mut()[i].value = be.upload(probe);
            loss_at(&mut model, &x)
        };
        reports.push(compare(
            &case,
            &name,
            &value,
            &grad,
            loss,
            probe,
            25 + i as u64,
        ));
        model.params_mut()[i].value = be.upload(&value);
    }
    reports
}
