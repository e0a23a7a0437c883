//! `bench --plans`: every way each convolution of a model can run on the CPU (the algorithm, the
//! unfolding, the weight gradient's method: [`Plan::variants`]), timed side by side in one
//! process, in rounds that run each way once in turn, so that a machine whose speed drifts
//! drifts for all of them alike; each way checked against the one the backend chooses first.
//! Where another way is faster than the chosen one, the choice's constants (in
//! `backend::cpu::conv`) are what to look at on that machine.

use super::layer_cases;
use crate::backend::cases;
use crate::backend::cpu::conv::{self, Pass, Plan};
use crate::backend::cpu::Cpu;
use crate::backend::Conv2dGeom;
use crate::nn::ModelSpec;
use crate::tensor::Tensor;
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

/// One way of one pass of one convolution, and its best time.
#[derive(Clone, Debug, Serialize)]
pub struct WayTime {
    /// The first layer of this shape, "(xk)" when k layers share it.
    pub layer: String,
    /// How many layers of the model have this shape.
    pub layers: usize,
    pub pass: &'static str,
    /// [`Plan::describe`]'s words for it.
    pub way: String,
    /// The way the backend runs it.
    pub chosen: bool,
    /// The best of the rounds.
    pub ms: f64,
}

/// A way's output differs from the chosen way's by more than this share of the latter's largest
/// value: one of them is wrong (Winograd's rounding is a few ulps of the largest terms).
const AGREE: f32 = 1e-4;

/// The convolutions of `spec` at a batch of `batch` (one of each shape), each pass of each way
/// on `cpu`'s kernel run `rounds` times in turn, the way `cpu` runs it first (its settings,
/// `FRACTURE_CONV_ALGORITHM` and the like, included); `tick` after each layer.
pub fn conv_plans(
    spec: &ModelSpec,
    batch: usize,
    cpu: &Cpu,
    rounds: usize,
    tick: &mut dyn FnMut(&str),
) -> Result<Vec<WayTime>> {
    let mut out = Vec::new();
    for (label, g, layers) in conv_shapes(spec, batch)? {
        let label = match layers {
            1 => label,
            k => format!("{label} (x{k})"),
        };
        tick(&label);
        let inputs = Inputs::new(&g);
        for pass in Pass::ALL {
            let ways = Plan::variants(&g, cpu.conv_plan(&g), pass);
            check(&ways, pass, &g, &inputs, &label)?;
            let mut best = vec![f64::MAX; ways.len()];
            for _ in 0..rounds {
                for (plan, best) in ways.iter().zip(&mut best) {
                    let start = Instant::now();
                    std::hint::black_box(inputs.run(plan, pass, &g));
                    *best = best.min(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            out.extend(
                ways.iter()
                    .zip(best)
                    .enumerate()
                    .map(|(i, (plan, ms))| WayTime {
                        layer: label.clone(),
                        layers,
                        pass: pass.name(),
                        way: plan.describe(pass, &g),
                        chosen: i == 0,
                        ms,
                    }),
            );
        }
    }
    Ok(out)
}

/// Each convolution shape of `spec` once (depthwise ones aside): the label of its first layer,
/// its geometry at `batch`, and how many layers have it.
fn conv_shapes(spec: &ModelSpec, batch: usize) -> Result<Vec<(String, Conv2dGeom, usize)>> {
    let mut shapes: Vec<(String, Conv2dGeom, usize)> = Vec::new();
    for (_, label, case) in layer_cases(spec, batch)? {
        let g = match case {
            cases::Op::Conv2d(g) | cases::Op::ConvRelu(g) => g,
            cases::Op::ConvMaxPool { conv, .. } => conv,
            _ => continue,
        };
        match shapes.iter_mut().find(|(_, seen, _)| *seen == g) {
            Some((_, _, layers)) => *layers += 1,
            None => shapes.push((label, g, 1)),
        }
    }
    Ok(shapes)
}

/// A convolution's operands: x, the filters and a bias, an output gradient.
struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl Inputs {
    fn new(g: &Conv2dGeom) -> Inputs {
        let scale = 1.0 / (g.patch_len() as f32).sqrt();
        Inputs {
            x: Tensor::rand_uniform([g.n, g.c_in, g.h, g.w], -1.0, 1.0, 1).data,
            w: Tensor::rand_uniform([g.c_out, g.patch_len()], -scale, scale, 2).data,
            b: Tensor::rand_uniform([g.c_out], -0.1, 0.1, 3).data,
            dy: Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, 4).data,
        }
    }

    /// `pass` of `g` the way `plan` says: y, dx or dw.
    fn run(&self, plan: &Plan, pass: Pass, g: &Conv2dGeom) -> Vec<f32> {
        match pass {
            Pass::Forward => conv::forward(plan, &self.x, &self.w, &self.b, g, false),
            Pass::InputGradient => conv::backward_input(plan, &self.dy, &self.w, g),
            Pass::WeightGradient => conv::backward_weight(plan, &self.x, &self.dy, g).0,
        }
    }
}

/// Every way's output against the first's (the chosen way), within [`AGREE`].
fn check(ways: &[Plan], pass: Pass, g: &Conv2dGeom, inputs: &Inputs, label: &str) -> Result<()> {
    let want = inputs.run(&ways[0], pass, g);
    let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for plan in &ways[1..] {
        let worst = worst_difference(&inputs.run(plan, pass, g), &want);
        if !agrees(worst, largest) {
            bail!(
                "{label}, {}: \"{}\" differs from \"{}\" by {worst} (largest value {largest}): \
                 one of them is wrong",
                pass.name(),
                plan.describe(pass, g),
                ways[0].describe(pass, g)
            );
        }
    }
    Ok(())
}

/// The largest |got − want|: NaN when either holds a NaN or an infinity where the other differs
/// (inf − inf is NaN too), infinite when the lengths differ, so that no comparison with it
/// passes by accident.
fn worst_difference(got: &[f32], want: &[f32]) -> f32 {
    if got.len() != want.len() {
        return f32::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// Whether a way whose [`worst_difference`] from the chosen one is `worst` agrees with it, whose
/// largest value is `largest` (never for a NaN).
fn agrees(worst: f32, largest: f32) -> bool {
    worst <= AGREE * largest
}

/// The table of `times`: per layer and pass, each way's best time, the chosen one marked, and a
/// last line counting the passes where another way was faster by more than 10 %.
pub fn render(times: &[WayTime]) -> String {
    let mut s = format!(
        "{:<40} {:<16} {:<24} {:>9}\n",
        "layer", "pass", "way", "best ms"
    );
    let mut slower = Vec::new();
    let (mut passes, mut chosen_ms, mut fastest_ms) = (0, 0.0, 0.0);
    let mut last = (String::new(), "");
    for t in times {
        let first = (t.layer.clone(), t.pass) != last;
        if first {
            passes += 1;
            last = (t.layer.clone(), t.pass);
            let fastest = times
                .iter()
                .filter(|o| o.layer == t.layer && o.pass == t.pass)
                .min_by(|a, b| a.ms.total_cmp(&b.ms))
                .expect("this way at least");
            (chosen_ms, fastest_ms) = (
                chosen_ms + t.ms * t.layers as f64,
                fastest_ms + fastest.ms * t.layers as f64,
            );
            if fastest.ms * 1.1 < t.ms {
                slower.push(format!(
                    "{}, {}: {} {:.2} ms, {} {:.2}",
                    t.layer, t.pass, t.way, t.ms, fastest.way, fastest.ms
                ));
            }
        }
        let (layer, pass) = if first {
            (t.layer.as_str(), t.pass)
        } else {
            ("", "")
        };
        let mark = if t.chosen { "*" } else { " " };
        s += &format!("{layer:<40} {pass:<16} {mark}{:<23} {:>9.2}\n", t.way, t.ms);
    }
    s += &format!(
        "* the way the backend chooses; another way is over 10 % faster on {} of {passes} passes\n",
        slower.len()
    );
    for line in slower {
        s += &format!("  {line}\n");
    }
    s += &format!(
        "every pass of every convolution layer: {chosen_ms:.1} ms the chosen ways, {fastest_ms:.1} \
         the fastest of each\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_an_infinity_or_a_missing_value_is_never_within_tolerance() {
        let want = [1.0, -2.0, 3.0];
        assert_eq!(worst_difference(&[1.0, -2.5, 3.0], &want), 0.5);
        for got in [
            [1.0, f32::NAN, 3.0],
            [f32::NAN, -2.0, 3.5],
            [1.0, -2.0, f32::INFINITY],
        ] {
            let worst = worst_difference(&got, &want);
            assert!(!agrees(worst, 3.0), "{got:?}: {worst}");
        }
        let infinite = [f32::INFINITY, -2.0, 3.0];
        assert!(worst_difference(&infinite, &infinite).is_nan());
        assert_eq!(worst_difference(&want[..2], &want), f32::INFINITY);
    }

    /// Each convolution shape of a small resnet once, with how many layers share it.
    #[test]
    fn each_shape_is_timed_once() {
        let spec = ModelSpec::load("resnet")
            .unwrap()
            .with_image_size(32)
            .unwrap();
        let shapes = conv_shapes(&spec, 2).unwrap();
        let layers: usize = shapes.iter().map(|(_, _, k)| k).sum();
        let convs = spec
            .layers()
            .unwrap()
            .iter()
            .filter(|l| matches!(l.spec, crate::nn::LayerSpec::Conv2d { .. }))
            .count();
        assert_eq!(layers, convs);
        for (i, (_, g, _)) in shapes.iter().enumerate() {
            assert!(
                !shapes[..i].iter().any(|(_, seen, _)| seen == g),
                "{g:?} twice"
            );
        }
    }
}
