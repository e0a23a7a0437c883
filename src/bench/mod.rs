//! `fracture-cnn bench`: every op of a model at that model's shapes, a whole training step and an
//! inference batch, timed on one backend; the command runs each backend in a process of its own
//! (so that each has its own peak memory) and puts the results side by side.
//!
//! The op list ([`ops`]) is shared with the criterion benchmarks in `benches/`, so that both time
//! the same work.

pub mod peak;
pub mod plans;
pub mod report;

pub use report::{Backends, ChildResult, Report};

use crate::backend::cases;
use crate::backend::cpu::gemm::Kernel;
use crate::backend::gpu::{Gpu, KernelTime};
use crate::backend::{AdamStep, Backend, Epilogue};
use crate::nn::spec::LayerInfo;
use crate::nn::LayerSpec;
use crate::nn::{self, loss, Mode, Model, ModelSpec};
use crate::optim::{Optimizer, OptimizerKind};
use crate::tensor::Tensor;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One piece of work to time: an op at a layer's shapes, a training step or an inference batch.
pub struct Op<'a> {
    pub name: String,
    /// FLOPs of one run where they are defined (a multiply-add counts 2).
    pub flops: Option<u64>,
    pub run: Box<dyn FnMut() + 'a>,
}

impl<'a> Op<'a> {
    fn new(name: String, flops: Option<u64>, run: impl FnMut() + 'a) -> Self {
        Op {
            name,
            flops,
            run: Box::new(run),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub spec: ModelSpec,
    pub batch: usize,
    pub infer_batch: usize,
    /// Untimed runs before the timed ones (compilation, caches, buffer pools).
    pub warmup: usize,
    /// Timed runs; the median is reported.
    pub repeats: usize,
}

/// The time of one op.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpTime {
    pub name: String,
    pub ms: f64,
    pub gflops: Option<f64>,
}

/// Everything measured on one backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendReport {
    pub device: String,
    /// The first training step alone, wall clock, before any warm-up: on the GPU it includes
    /// compiling the shaders and allocating the buffers, which the median of the warm steps
    /// leaves out.
    #[serde(default)]
    pub first_step_ms: f64,
    /// How op times were taken: "wall clock" or "gpu timestamps".
    pub timer: String,
    pub train_step_ms: f64,
    pub train_images_per_s: f64,
    /// Training FLOPs counted as 3× the forward FLOPs (forward, and two products backward).
    pub train_gflops: f64,
    pub infer_batch_ms: f64,
    pub infer_images_per_s: f64,
    pub infer_gflops: f64,
    /// Peak resident memory of the process after the training steps and inference batches
    /// (before the per-op measurements), MiB.
    pub peak_rss_mib: f64,
    pub ops: Vec<OpTime>,
    /// Our GEMM on 1024×1024 matrices, its micro-kernel alone on operands in cache, and the
    /// measured FMA peak of all threads (CPU only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gemm_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub micro_kernel_gflops: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peak_gflops: Option<f64>,
    /// GPU time per kernel over the whole run, with `--profile`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kernels: Option<Vec<KernelTime>>,
}

/// How long one run of some work takes, in milliseconds.
pub trait Clock {
    fn ms(&self, run: &mut dyn FnMut()) -> f64;
    fn name(&self) -> &'static str;
}

/// Host time from start to finish, the backend's queue drained.
pub struct WallClock<'a, B>(pub &'a B);

impl<B: Backend> Clock for WallClock<'_, B> {
    fn ms(&self, run: &mut dyn FnMut()) -> f64 {
        self.0.synchronize();
        let start = Instant::now();
        run();
        self.0.synchronize();
        start.elapsed().as_secs_f64() * 1e3
    }
    fn name(&self) -> &'static str {
        "wall clock"
    }
}

/// The device's own time of every kernel the work launched (timestamp queries); host work and
/// buffer copies between kernels are not counted.
pub struct GpuClock<'a>(pub &'a Gpu);

impl Clock for GpuClock<'_> {
    fn ms(&self, run: &mut dyn FnMut()) -> f64 {
        self.0.take_kernel_times();
        run();
        let times = self.0.take_kernel_times().unwrap_or_default();
        times.iter().map(|k| k.ms).sum()
    }
    fn name(&self) -> &'static str {
        "gpu timestamps"
    }
}

/// The median of `repeats` timed runs after `warmup` untimed ones.
pub fn median_ms(clock: &dyn Clock, run: &mut dyn FnMut(), warmup: usize, repeats: usize) -> f64 {
    for _ in 0..warmup {
        clock.ms(run);
    }
    let mut times: Vec<f64> = (0..repeats.max(1)).map(|_| clock.ms(run)).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn random<B: Backend>(be: &B, shape: Vec<usize>, seed: u64) -> B::Tensor {
    be.upload(&Tensor::rand_uniform(shape, -1.0, 1.0, seed))
}

/// The shape of a batch of `batch` samples of shape `sample`.
fn batched(batch: usize, sample: &[usize]) -> Vec<usize> {
    std::iter::once(batch)
        .chain(sample.iter().copied())
        .collect()
}

/// The op case of one layer of a model at its shapes, with a batch of `batch` (none for a
/// flatten, which moves no data).
fn layer_case(info: &LayerInfo, batch: usize) -> Option<cases::Op> {
    let batched = |sample: &[usize]| batched(batch, sample);
    let op = match &info.spec {
        LayerSpec::Conv2d { .. } => {
            cases::Op::Conv2d(info.spec.conv_geom(&info.input)?.with_batch(batch))
        }
        LayerSpec::DepthwiseConv2d { .. } => {
            cases::Op::Depthwise(info.spec.conv_geom(&info.input)?.with_batch(batch))
        }
        LayerSpec::MaxPool { .. } => {
            cases::Op::MaxPool(info.spec.pool_geom(&info.input)?.with_batch(batch))
        }
        LayerSpec::BatchNorm { .. } => cases::Op::BatchNorm(batched(&info.input), Epilogue::NONE),
        LayerSpec::GlobalAvgPool => {
            let [c, h, w] = info.input[..] else {
                return None;
            };
            cases::Op::GlobalAvgPool([batch, c, h, w])
        }
        LayerSpec::Dense { units } => cases::Op::Dense {
            n: batch,
            i: info.input[0],
            o: *units,
        },
        // the sum itself; a projection's 1x1 convolution is timed within whole steps
        LayerSpec::Add => cases::Op::Add(batched(&info.output)),
        LayerSpec::Relu => cases::Op::Relu(batched(&info.input)),
        LayerSpec::Dropout { rate } => cases::Op::Dropout {
            shape: batched(&info.input),
            p: *rate,
        },
        LayerSpec::Flatten => return None,
        LayerSpec::Upsample { factor } => {
            let [c, h, w] = info.input[..] else {
                return None;
            };
            cases::Op::Upsample([batch, c, h, w], *factor)
        }
    };
    Some(op)
}

/// The op cases of `spec`'s layers as a training step runs them, with a batch of `batch`: a batch
/// norm with the ReLU and max pooling it runs inside its passes (`nn::model::epilogues`) is one
/// case, and those layers have none of their own. With each: its layer and its label.
fn layer_cases(spec: &ModelSpec, batch: usize) -> Result<Vec<(LayerInfo, String, cases::Op)>> {
    let infos = spec.layers()?;
    let epilogues = nn::model::epilogues(&infos);
    let mut out = Vec::new();
    let mut covered = 0;
    for (info, epilogue) in infos.iter().cloned().zip(epilogues) {
        if covered > 0 {
            covered -= 1;
            continue;
        }
        let Some(mut case) = layer_case(&info, batch) else {
            continue; // a flatten moves no data
        };
        let mut label = format!("{:02} {}", info.index, info.spec.describe());
        if let (cases::Op::BatchNorm(_, then), Some((epilogue, layers))) = (&mut case, epilogue) {
            *then = Epilogue {
                relu: epilogue.relu,
                pool: epilogue.pool.map(|g| g.with_batch(batch)),
            };
            for next in &infos[info.index + 1..=info.index + layers] {
                label += &format!("+{}", next.spec.describe());
            }
            covered = layers;
        }
        out.push((info, label, case));
    }
    Ok(out)
}

/// Every op of `spec`'s layers at the model's shapes with a batch of `batch` (`layer_cases`),
/// then the loss and an Adam update of every parameter. Each pass of each op (`backend::cases`,
/// the list the tests check against the reference) runs the backend's kernel on the case's
/// inputs.
pub fn ops<'a, B: Backend>(be: &'a B, spec: &ModelSpec, batch: usize) -> Result<Vec<Op<'a>>> {
    let mut ops = Vec::new();
    for (info, label, case) in layer_cases(spec, batch)? {
        // the FLOPs of the layer itself, which for an `add` include its projection's
        let flops = case.flops(0).map(|_| info.flops * batch as u64);
        ops.extend(timed_passes(
            be,
            &case,
            &label,
            flops,
            100 * info.index as u64,
        ));
    }
    let loss = cases::Op::Bce {
        n: batch,
        pos_weight: 1.0,
    };
    ops.extend(timed_passes(be, &loss, "loss (BCE with logits)", None, 1));
    ops.push(adam_op(be, spec)?);
    Ok(ops)
}

/// Each pass of `case` as one op to time, each with inputs of its own (the backend's tensors
/// are not `Clone`), labelled "<label> <pass>" ("forward" alone for a one-pass op).
fn timed_passes<'a, B: Backend>(
    be: &'a B,
    case: &cases::Op,
    label: &str,
    flops: Option<u64>,
    seed: u64,
) -> Vec<Op<'a>> {
    let inputs = case.inputs(seed);
    let dy = Tensor::rand_uniform(case.output_shape(), -1.0, 1.0, seed + 1);
    let passes = case.passes();
    (0..passes.len())
        .map(|pass| {
            let mut state = case.prepare(be, &inputs, &dy);
            let case = case.clone();
            let name = if passes.len() == 1 {
                label.to_string()
            } else {
                format!("{label} {}", passes[pass])
            };
            Op::new(name, flops, move || drop(case.run(be, pass, &mut state)))
        })
        .collect()
}

/// One Adam update of every trainable parameter of the model.
fn adam_op<'a, B: Backend>(be: &'a B, spec: &ModelSpec) -> Result<Op<'a>> {
    let model = Model::new(be, spec, 1)?;
    let mut state: Vec<[B::Tensor; 4]> = model
        .named_params()
        .iter()
        .filter(|p| p.param.trainable)
        .enumerate()
        .map(|(i, p)| {
            let shape = be.shape(&p.param.value).clone();
            [
                random(be, shape.0.clone(), 2 * i as u64),
                random(be, shape.0.clone(), 2 * i as u64 + 1),
                be.zeros(&shape),
                be.zeros(&shape),
            ]
        })
        .collect();
    let (params, _) = spec.param_counts()?;
    let h = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        t: 1,
    };
    Ok(Op::new(
        format!("adam update, {params} parameters"),
        None,
        move || {
            for [p, g, m, v] in state.iter_mut() {
                be.adam_step(p, g, m, v, &h);
            }
        },
    ))
}

/// A whole training step of the model on a fixed random batch: upload, forward, loss, backward,
/// Adam (the loss is read back, as a training loop does for its log). A model with a fracture
/// map trains it too, on a per-pixel BCE against a fixed random target map, so that the map's
/// layers run backward as in training (and as the peers' twin does).
pub fn train_step<'a, B: Backend>(be: &'a B, spec: &ModelSpec, batch: usize) -> Result<Op<'a>> {
    let mut model = Model::new(be, spec, 1)?;
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.0);
    let x = Tensor::rand_uniform(batched(batch, &spec.input), 0.0, 1.0, 1234);
    let y = be.upload(&Tensor::new(
        [batch],
        (0..batch).map(|i| (i % 2) as f32).collect(),
    ));
    let layers = spec.layers()?;
    let map_target = match spec.map_layer()? {
        Some(m) => {
            let shape = batched(batch, &layers[m].output);
            let coin = Tensor::rand_uniform(shape.as_slice(), 0.0, 1.0, 4321);
            let target = coin.data.iter().map(|v| v.round()).collect();
            Some(be.upload(&Tensor::new(shape, target)))
        }
        None => None,
    };
    let flops = 3 * layers.iter().map(|l| l.flops).sum::<u64>() * batch as u64;
    Ok(Op::new(
        format!("training step, batch {batch}"),
        Some(flops),
        move || {
            let (logits, map) = model.forward_with_map(be, be.upload(&x), Mode::Train { seed: 7 });
            let (loss, dlogits) = loss::bce_with_logits(be, &logits, &y, 1.0);
            let dmap = map
                .zip(map_target.as_ref())
                .map(|(m, t)| loss::bce_with_logits(be, &m, t, 1.0).1);
            model.backward_with_map(be, (dlogits, dmap), false);
            opt.step(be, &mut model, 1e-3);
            std::hint::black_box(loss);
        },
    ))
}

/// The model's logits for a fixed random batch, read back, as `predict` runs it: with each
/// batch norm folded into its convolution.
pub fn inference<'a, B: Backend>(be: &'a B, spec: &ModelSpec, batch: usize) -> Result<Op<'a>> {
    let mut model = crate::nn::fold::inference_model(be, &Model::new(be, spec, 1)?)?;
    let x = Tensor::rand_uniform(batched(batch, &spec.input), 0.0, 1.0, 5678);
    let flops = spec.layers()?.iter().map(|l| l.flops).sum::<u64>() * batch as u64;
    Ok(Op::new(
        format!("inference, batch {batch}"),
        Some(flops),
        move || {
            let logits = model.forward(be, be.upload(&x), Mode::Eval);
            std::hint::black_box(be.download(&logits));
        },
    ))
}

fn gflops(flops: Option<u64>, ms: f64) -> Option<f64> {
    flops.map(|f| f as f64 / ms / 1e6)
}

/// The training step and the inference batch, timed by the wall clock (what a user waits for),
/// and the peak resident memory after them.
pub struct Whole {
    pub first_step_ms: f64,
    pub train_step_ms: f64,
    pub infer_batch_ms: f64,
    pub peak_rss_mib: f64,
}

/// Times a training step and an inference batch; `tick` is called after each with its name.
pub fn run_whole<B: Backend>(
    be: &B,
    cfg: &BenchConfig,
    tick: &mut dyn FnMut(&str),
) -> Result<Whole> {
    let clock = WallClock(be);
    let mut step = train_step(be, &cfg.spec, cfg.batch)?;
    let first_step_ms = clock.ms(&mut step.run);
    let warm = cfg.warmup.saturating_sub(1);
    let train_step_ms = median_ms(&clock, &mut step.run, warm, cfg.repeats);
    tick(&step.name);
    drop(step);
    let mut infer = inference(be, &cfg.spec, cfg.infer_batch)?;
    let infer_batch_ms = median_ms(&clock, &mut infer.run, cfg.warmup, cfg.repeats);
    tick(&infer.name);
    Ok(Whole {
        first_step_ms,
        train_step_ms,
        infer_batch_ms,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Times every op of [`ops`] with `clock`; `tick` is called after each with its name.
pub fn run_ops<B: Backend>(
    be: &B,
    clock: &dyn Clock,
    cfg: &BenchConfig,
    tick: &mut dyn FnMut(&str),
) -> Result<Vec<OpTime>> {
    let mut times = Vec::new();
    for mut op in ops(be, &cfg.spec, cfg.batch)? {
        let ms = median_ms(clock, &mut op.run, cfg.warmup, cfg.repeats);
        tick(&op.name);
        times.push(OpTime {
            gflops: gflops(op.flops, ms),
            name: op.name,
            ms,
        });
    }
    Ok(times)
}

/// Measures everything on one backend, op times by `clock`.
pub fn run<B: Backend>(
    be: &B,
    clock: &dyn Clock,
    cfg: &BenchConfig,
    tick: &mut dyn FnMut(&str),
) -> Result<BackendReport> {
    let whole = run_whole(be, cfg, tick)?;
    let ops = run_ops(be, clock, cfg, tick)?;
    BackendReport::new(be.name(), clock.name(), cfg, &whole, ops)
}

impl BackendReport {
    pub fn new(
        device: String,
        timer: &str,
        cfg: &BenchConfig,
        whole: &Whole,
        ops: Vec<OpTime>,
    ) -> Result<Self> {
        let forward: u64 = cfg.spec.layers()?.iter().map(|l| l.flops).sum();
        let per_s = |images: usize, ms: f64| images as f64 / ms * 1e3;
        Ok(BackendReport {
            device,
            timer: timer.into(),
            first_step_ms: whole.first_step_ms,
            train_step_ms: whole.train_step_ms,
            train_images_per_s: per_s(cfg.batch, whole.train_step_ms),
            train_gflops: (3 * forward * cfg.batch as u64) as f64 / whole.train_step_ms / 1e6,
            infer_batch_ms: whole.infer_batch_ms,
            infer_images_per_s: per_s(cfg.infer_batch, whole.infer_batch_ms),
            infer_gflops: (forward * cfg.infer_batch as u64) as f64 / whole.infer_batch_ms / 1e6,
            peak_rss_mib: whole.peak_rss_mib,
            ops,
            gemm_gflops: None,
            micro_kernel_gflops: None,
            peak_gflops: None,
            kernels: None,
        })
    }
}

/// GPU time per kernel of one training step (after a warm-up step), by timestamp queries; the
/// GPU must be profiling ([`Gpu::start_profiling`]).
pub fn profile_training_step(gpu: &Gpu, cfg: &BenchConfig) -> Result<Vec<KernelTime>> {
    let mut step = train_step(gpu, &cfg.spec, cfg.batch)?;
    (step.run)();
    gpu.take_kernel_times();
    (step.run)();
    Ok(gpu.take_kernel_times().unwrap_or_default())
}

/// How many timed items [`run`] reports through `tick` for this config.
pub fn steps(cfg: &BenchConfig) -> usize {
    let layer_passes: usize = layer_cases(&cfg.spec, cfg.batch)
        .unwrap_or_default()
        .iter()
        .map(|(_, _, op)| op.passes().len())
        .sum();
    // the training step and the inference batch; the ops; the loss and the Adam update
    2 + layer_passes + 2
}

/// Our GEMM's rate on 1024×1024 matrices, its micro-kernel's alone, and the CPU's measured FMA
/// peak, in GFLOP/s, on `kernel` (the CPU backend's), into the CPU's report.
pub fn measure_cpu_peak(kernel: Kernel, report: &mut BackendReport) {
    report.gemm_gflops = Some(peak::gemm_gflops(kernel, 1024, 10));
    report.micro_kernel_gflops = Some(peak::micro_kernel_gflops(
        kernel,
        Duration::from_millis(300),
    ));
    report.peak_gflops = Some(peak::peak_gflops(kernel, Duration::from_millis(500)));
}

/// The most memory this process has held resident, in MiB.
pub fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    // Linux reports KiB, macOS bytes.
    let kib = if cfg!(target_os = "macos") {
        usage.ru_maxrss as f64 / 1024.0
    } else {
        usage.ru_maxrss as f64
    };
    kib / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::LayerSpec;

    #[test]
    fn every_layer_op_runs_and_is_counted() {
        let spec = ModelSpec::load("fracturenet")
            .unwrap()
            .with_image_size(32)
            .unwrap();
        let cfg = BenchConfig {
            spec: spec.clone(),
            batch: 2,
            infer_batch: 3,
            warmup: 0,
            repeats: 1,
        };
        let mut names = Vec::new();
        let report = run(&Cpu::new(), &WallClock(&Cpu::new()), &cfg, &mut |n| {
            names.push(n.to_string())
        })
        .unwrap();
        assert_eq!(names.len(), steps(&cfg));
        let convs = spec
            .layers
            .iter()
            .filter(|l| matches!(l.layer, LayerSpec::Conv2d { .. }))
            .count();
        let conv_ops = report
            .ops
            .iter()
            .filter(|o| o.name.contains("conv2d"))
            .count();
        assert_eq!(conv_ops, 3 * convs);
        assert!(report.ops.iter().all(|o| o.ms >= 0.0));
        assert!(report.train_images_per_s > 0.0 && report.infer_images_per_s > 0.0);
        // FLOP rates are given exactly for the ops with a defined FLOP count
        for op in &report.ops {
            let counted = op.name.contains("conv2d") || op.name.contains("dense");
            assert_eq!(op.gflops.is_some(), counted, "{}", op.name);
        }
        assert!(report.peak_rss_mib > 1.0);

        // the table, with one backend and with two (the second a copy of the first)
        let mut whole = report::Report {
            model: spec.name.clone(),
            batch_size: 2,
            image_size: 32,
            infer_batch_size: 3,
            warmup: 0,
            repeats: 1,
            cpu: "test".into(),
            threads: 1,
            backends: report::Backends {
                cpu: Some(report.clone()),
                gpu: None,
            },
            notes: vec![],
        };
        let one = whole.render();
        assert!(one.contains("training images/s") && !one.contains("gpu vs cpu"));
        whole.backends.gpu = Some(report);
        let two = whole.render();
        assert!(two.contains("gpu vs cpu"), "{two}");
        let rows = two.lines().filter(|l| l.contains(" forward")).count();
        assert_eq!(
            rows,
            names.iter().filter(|n| n.contains(" forward")).count()
        );
    }
}
