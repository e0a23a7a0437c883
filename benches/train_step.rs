//! Training and inference throughput of a model on the CPU backend, on synthetic data:
//!
//!     cargo bench --bench train_step                      # fracturenet, 128x128, batch 32
//!     cargo bench --bench train_step -- xray-bone-classifier 224 16
//!
//! Arguments: model, image size, batch size. Prints the median of 10 timed steps after 3 warm-up
//! steps (the protocol of the peer scripts in ../shared/peers), as images per second.

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::nn::{loss, Mode, Model};
use fracture_cnn::optim::{Optimizer, OptimizerKind};
use fracture_cnn::tensor::Tensor;
use std::time::Instant;

mod common;

const WARMUP: usize = 3;
const TIMED: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_steps(mut step: impl FnMut()) -> f64 {
    let times: Vec<f64> = (0..WARMUP + TIMED)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64()
        })
        .skip(WARMUP)
        .collect();
    median(times)
}

fn main() {
    let (spec, batch) = common::model_from_args(128, 32);
    let size = spec.input[1];
    let be = Cpu;
    let mut model = Model::new(&be, &spec, 1).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.0);
    let x = be.upload(&Tensor::rand_uniform(
        [batch, 1, size, size],
        0.0,
        1.0,
        1234,
    ));
    let y = be.upload(&Tensor::new(
        [batch],
        (0..batch).map(|i| (i % 2) as f32).collect(),
    ));
    let train = time_steps(|| {
        let logits = model.forward(&be, x.clone(), Mode::Train { seed: 7 });
        let (_, dlogits) = loss::bce_with_logits(&be, &logits, &y, 1.0);
        model.backward(&be, dlogits, false);
        opt.step(&be, &mut model, 1e-3);
    });
    let x64 = be.upload(&Tensor::rand_uniform([64, 1, size, size], 0.0, 1.0, 5678));
    let infer = time_steps(|| {
        let logits = model.forward(&be, x64.clone(), Mode::Eval);
        std::hint::black_box(be.download(&logits));
    });
    let flops: u64 = spec.layers().unwrap().iter().map(|l| l.flops).sum();
    println!("{} on {}, {size}x{size}", spec.name, be.name());
    println!(
        "train batch {batch}: {:.1} ms/step, {:.1} images/s, {:.1} GFLOP/s (3x forward FLOPs)",
        train * 1e3,
        batch as f64 / train,
        3.0 * flops as f64 * batch as f64 / train / 1e9
    );
    println!(
        "infer batch 64: {:.1} ms/batch, {:.1} images/s, {:.1} GFLOP/s",
        infer * 1e3,
        64.0 / infer,
        flops as f64 * 64.0 / infer / 1e9
    );
}
