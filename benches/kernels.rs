//! Criterion benchmarks of the work `fracture-cnn bench` times: every op of fracturenet's layers,
//! a training step and an inference batch (64×64 images, batch 8, so that a software GPU finishes
//! too), on the CPU backend and, where wgpu finds an adapter, on the GPU backend; and the CPU GEMM.
//!
//!     cargo bench --bench kernels                # everything
//!     cargo bench --bench kernels -- cpu/        # one backend, or any name filter
//!
//! `fracture-cnn bench` is the side-by-side table (and JSON) at any model and size; this is for
//! tracking one kernel's time across changes, with criterion's statistics and saved baselines.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fracture_cnn::backend::cpu::{self, gemm, Cpu};
use fracture_cnn::backend::gpu::Gpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::bench;
use fracture_cnn::nn::ModelSpec;
use fracture_cnn::tensor::Tensor;

const IMAGE_SIZE: usize = 64;
const BATCH: usize = 8;

fn backend<B: Backend>(c: &mut Criterion, label: &str, be: &B) {
    let spec = ModelSpec::load("fracturenet")
        .and_then(|s| s.with_image_size(IMAGE_SIZE))
        .expect("the fracturenet preset");
    let mut group = c.benchmark_group(label);
    group.sample_size(10);
    let whole = [
        bench::train_step(be, &spec, BATCH),
        bench::inference(be, &spec, BATCH),
    ];
    let ops = bench::ops(be, &spec, BATCH).expect("the ops of a valid spec");
    for mut op in ops.into_iter().chain(whole.into_iter().map(Result::unwrap)) {
        // throughput in "elements" = FLOPs, so that criterion prints FLOP/s
        if let Some(flops) = op.flops {
            group.throughput(Throughput::Elements(flops));
        }
        group.bench_function(op.name.as_str(), |b| {
            b.iter(|| {
                (op.run)();
                be.synchronize();
            })
        });
    }
    group.finish();
}

fn gemm_sizes(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu gemm");
    for n in [256, 512, 1024] {
        let a = Tensor::rand_uniform([n, n], -1.0, 1.0, 1).data;
        let b = Tensor::rand_uniform([n, n], -1.0, 1.0, 2).data;
        let mut out = vec![0f32; n * n];
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, &n| {
            bench.iter(|| {
                let (am, bm) = (gemm::MatRef::rows(&a, n, n), gemm::MatRef::rows(&b, n, n));
                gemm::gemm(gemm::Kernel::fastest(), am, bm, &mut out, n, false)
            })
        });
    }
    group.finish();
}

fn all(c: &mut Criterion) {
    cpu::keep_freed_memory();
    gemm_sizes(c);
    backend(c, "cpu", &Cpu::new());
    match Gpu::new() {
        Ok(gpu) => backend(c, "gpu", &gpu),
        Err(e) => eprintln!("no GPU benchmarks: {e:#}"),
    }
}

criterion_group!(benches, all);
criterion_main!(benches);
