//! Each op of a model at that model's shapes, and a whole training step, timed on the CPU backend
//! and on the GPU backend in the same run (so the ratio is fair on a shared machine):
//!
//!     cargo bench --bench backends                       # fracturenet, 64x64, batch 8
//!     cargo bench --bench backends -- fracturenet 128 32
//!
//! Times are wall clock after a warm-up (GPU work is waited for), median of 5 runs. The GPU runs
//! once with each GEMM kernel of shaders/gemm.wgsl (register-blocked and workgroup-tiled).

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::gpu::{GemmKernel, Gpu};
use fracture_cnn::backend::{AdamStep, Backend, Conv2dGeom, Padding, Pool2dGeom};
use fracture_cnn::nn::{loss, Mode, Model, ModelSpec};
use fracture_cnn::optim::{Optimizer, OptimizerKind};
use fracture_cnn::tensor::Tensor;
use std::time::Instant;

mod common;

fn median_ms<B: Backend>(be: &B, mut f: impl FnMut()) -> f64 {
    f();
    be.synchronize();
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            be.synchronize();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

/// (op name, ms) for every op kind at the model's second convolution block, and a training step.
fn run<B: Backend>(be: &B, spec: &ModelSpec, batch: usize) -> Vec<(String, f64)> {
    let s = spec.input[1] / 2;
    let g = Conv2dGeom::new(batch, 32, s, s, 64, (3, 3), (1, 1), Padding::Same).unwrap();
    let up = |t: Tensor| be.upload(&t);
    let x = up(Tensor::rand_uniform(g.input_shape(), -1.0, 1.0, 1));
    let w = up(Tensor::rand_uniform(g.weight_shape(), -0.1, 0.1, 2));
    let b = up(Tensor::zeros([64]));
    let y = be.conv2d_forward(&x, &w, &b, &g);
    let gamma = up(Tensor::full([64], 1.0));
    let (_, stats) = be.batchnorm_forward_train(&y, &gamma, &b, 1e-5);
    let pg = Pool2dGeom::new(batch, 64, s, s, (2, 2), (2, 2)).unwrap();
    let (_, idx) = be.maxpool_forward(&y, &pg);
    let dyp = up(Tensor::rand_uniform(pg.output_shape(), -1.0, 1.0, 3));
    let fx = up(Tensor::rand_uniform([batch, 8192], -1.0, 1.0, 4));
    let fw = up(Tensor::rand_uniform([128, 8192], -0.01, 0.01, 5));
    let fb = up(Tensor::zeros([128]));
    let fdy = up(Tensor::rand_uniform([batch, 128], -1.0, 1.0, 6));
    let (mut p, mut m, mut v) = (
        up(Tensor::zeros([8192 * 128])),
        up(Tensor::zeros([8192 * 128])),
        up(Tensor::zeros([8192 * 128])),
    );
    let grad = up(Tensor::rand_uniform([8192 * 128], -1.0, 1.0, 7));
    let h = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        t: 1,
    };
    let mut out = vec![
        (
            format!("conv 3x3 32->64 {s}x{s} forward"),
            median_ms(be, || drop(be.conv2d_forward(&x, &w, &b, &g))),
        ),
        (
            "conv backward input".into(),
            median_ms(be, || drop(be.conv2d_backward_input(&y, &w, &g))),
        ),
        (
            "conv backward weight".into(),
            median_ms(be, || drop(be.conv2d_backward_weight(&x, &y, &g))),
        ),
        (
            "batchnorm forward (train)".into(),
            median_ms(be, || {
                drop(be.batchnorm_forward_train(&y, &gamma, &b, 1e-5))
            }),
        ),
        (
            "batchnorm backward".into(),
            median_ms(be, || drop(be.batchnorm_backward(&y, &y, &gamma, &stats))),
        ),
        (
            "relu forward".into(),
            median_ms(be, || drop(be.relu_forward(&y))),
        ),
        (
            "maxpool forward".into(),
            median_ms(be, || drop(be.maxpool_forward(&y, &pg))),
        ),
        (
            "maxpool backward".into(),
            median_ms(be, || drop(be.maxpool_backward(&dyp, &idx, &pg))),
        ),
        (
            "dense 8192->128 forward".into(),
            median_ms(be, || drop(be.dense_forward(&fx, &fw, &fb))),
        ),
        (
            "dense backward (both)".into(),
            median_ms(be, || {
                drop(be.dense_backward_input(&fdy, &fw));
                drop(be.dense_backward_weight(&fx, &fdy));
            }),
        ),
        (
            "adam, 1M parameters".into(),
            median_ms(be, || be.adam_step(&mut p, &grad, &mut m, &mut v, &h)),
        ),
    ];
    let mut model = Model::new(be, spec, 1).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.0);
    let [c, hh, ww] = spec.input;
    let xb = Tensor::rand_uniform([batch, c, hh, ww], 0.0, 1.0, 8);
    let yb = up(Tensor::new(
        [batch],
        (0..batch).map(|i| (i % 2) as f32).collect(),
    ));
    out.push((
        format!("whole training step, batch {batch}"),
        median_ms(be, || {
            let logits = model.forward(be, be.upload(&xb), Mode::Train { seed: 1 });
            let (_, d) = loss::bce_with_logits(be, &logits, &yb, 1.0);
            model.backward(be, d, false);
            opt.step(be, &mut model, 1e-3);
        }),
    ));
    out
}

fn main() {
    let (spec, batch) = common::model_from_args(64, 8);
    println!("CPU: {}", Cpu.name());
    let mut columns = vec![("cpu ms".to_string(), run(&Cpu, &spec, batch))];
    match Gpu::new() {
        Ok(g) => {
            println!("GPU: {}", g.name());
            // every GPU op twice, once per GEMM kernel: the ops without a GEMM show the noise
            for (label, kernel) in [
                ("registers", GemmKernel::Registers),
                ("tiled", GemmKernel::Tiled),
            ] {
                columns.push((
                    format!("gpu {label} ms"),
                    run(&g.with_gemm(kernel), &spec, batch),
                ));
            }
        }
        Err(e) => println!("GPU: none ({e:#}); CPU only"),
    }
    print!("{:<40}", "op");
    for (label, _) in &columns {
        print!(" {label:>17}");
    }
    println!();
    for (i, (op, _)) in columns[0].1.iter().enumerate() {
        print!("{op:<40}");
        for (_, times) in &columns {
            print!(" {:>17.2}", times[i].1);
        }
        println!();
    }
}
