//! Every op of every backend against the reference backend (`backend::reference`, plain loops),
//! on the cases of `backend::cases`: each pass's every output, forward and backward, and the
//! optimisers' updates. A bug made the same way in a forward and its backward pass (padding on
//! the wrong side of both, say) passes the finite-difference checks; here it fails.
//! The CPU runs under each GEMM kernel this processor has, and each convolution algorithm and
//! unfolding forced everywhere; the GPU under each of its variants.

mod common;

use fracture_cnn::backend::cases::{suite, Op};
use fracture_cnn::backend::cpu::conv::{Algorithm, Unfolding};
use fracture_cnn::backend::cpu::gemm::Kernel;
use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::gpu::GemmKernel;
use fracture_cnn::backend::reference::{self, Reference};
use fracture_cnn::backend::Backend;
use fracture_cnn::tensor::Tensor;

/// Relative to each tensor's own largest value: f32 sums in another order than the reference's
/// f64 ones, over at most a few hundred terms.
const TOL: f32 = 1e-5;
/// Batch norm's input gradient is a difference of terms that nearly cancel.
const BN_TOL: f32 = 1e-4;

const SEED: u64 = 7;

fn tolerance(op: &Op) -> f32 {
    match op {
        Op::BatchNorm(..) => BN_TOL,
        _ => TOL,
    }
}

/// Each output of `got` within the op's tolerance of the same output of `want`.
fn mismatches(op: &Op, want: &[(String, Tensor)], got: &[(String, Tensor)]) -> Vec<String> {
    assert_eq!(
        want.len(),
        got.len(),
        "{}: outputs differ in number",
        op.name()
    );
    want.iter()
        .zip(got)
        .filter_map(|((name, w), (_, g))| {
            g.check_close(w, tolerance(op))
                .err()
                .map(|e| format!("{} {name}: {e}", op.name()))
        })
        .collect()
}

/// Every case on `be` against the reference; panics listing every output that differs.
fn assert_matches_reference<B: Backend>(be: &B) {
    let mut failed = Vec::new();
    for op in suite() {
        let want = op.outputs(&Reference::f32(), SEED);
        failed.extend(mismatches(&op, &want, &op.outputs(be, SEED)));
    }
    assert!(
        failed.is_empty(),
        "{} differs from the reference:\n{}",
        be.name(),
        failed.join("\n")
    );
}

#[test]
fn cpu_matches_the_reference() {
    assert_matches_reference(&Cpu::new());
}

/// Every GEMM kernel this processor runs (AVX-512, AVX2 + FMA, portable), each a backend of its
/// own in this process: the SIMD paths of the GEMM, the flat correlations and the dot products.
#[test]
fn cpu_matches_the_reference_with_every_gemm_kernel() {
    let others = Kernel::available()
        .into_iter()
        .filter(|k| *k != Kernel::fastest());
    for kernel in others {
        assert_matches_reference(&Cpu::new().with_kernel(kernel).unwrap());
    }
}

/// Each convolution algorithm on every case it applies to: the GEMM also where Winograd would be
/// chosen, Winograd also on thin layers; and each unfolding of the GEMM's input.
#[test]
fn cpu_matches_the_reference_with_each_conv_algorithm_and_unfolding() {
    for algorithm in [Algorithm::Gemm, Algorithm::Winograd] {
        assert_matches_reference(&Cpu::new().with_conv_algorithm(algorithm));
    }
    for unfolding in [Unfolding::Copy, Unfolding::Implicit, Unfolding::Flat] {
        let gemm = Cpu::new().with_conv_algorithm(Algorithm::Gemm);
        assert_matches_reference(&gemm.with_unfolding(unfolding));
    }
}

/// A kernel this processor cannot run is refused by name, not run (its instructions would fault).
#[test]
fn a_kernel_this_processor_lacks_is_refused() {
    for kernel in Kernel::all().into_iter().filter(|k| !k.runs_here()) {
        let e = Cpu::new().with_kernel(kernel).unwrap_err();
        assert!(
            e.contains(kernel.name()) && e.contains("does not have"),
            "{e}"
        );
    }
    let e = Kernel::named("avx9").unwrap_err();
    assert!(e.contains("\"avx9\"") && e.contains("portable"), "{e}");
}

#[test]
fn gpu_matches_the_reference_with_each_gemm_kernel() {
    let Some(gpu) = common::gpu::backend() else {
        return;
    };
    for kernel in [GemmKernel::Registers, GemmKernel::Tiled] {
        assert_matches_reference(&gpu.with_gemm(kernel));
    }
}

/// Negative controls: for every case and every output, a wrong answer of each kind is refused
/// at the tolerance the tests use, so no case's tolerance is loose enough to hide a bug.
#[test]
fn every_case_refuses_wrong_answers() {
    type Wrong = fn(&mut Tensor);
    let wrongs: [(&str, Wrong); 5] = [
        ("a sign flip", |t| t.data.iter_mut().for_each(|v| *v = -*v)),
        ("a factor of 2", |t| {
            t.data.iter_mut().for_each(|v| *v *= 2.0)
        }),
        ("one wrong entry", |t| {
            let i = largest(t);
            t.data[i] *= 1.01;
        }),
        ("a NaN", |t| {
            let i = t.numel() / 2;
            t.data[i] = f32::NAN;
        }),
        ("an infinity", |t| t.data[0] = f32::INFINITY),
    ];
    for op in suite() {
        let want = op.outputs(&Reference::f32(), SEED);
        for k in 0..want.len() {
            for (what, wrong) in wrongs {
                let mut got = want.clone();
                wrong(&mut got[k].1);
                let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                if bits(&got[k].1) == bits(&want[k].1) {
                    continue; // an all-zero output is its own negation and double
                }
                assert!(
                    !mismatches(&op, &want, &got).is_empty(),
                    "{} {}: {what} was accepted",
                    op.name(),
                    want[k].0
                );
            }
        }
    }
}

fn largest(t: &Tensor) -> usize {
    (0..t.numel())
        .max_by(|&a, &b| t.data[a].abs().total_cmp(&t.data[b].abs()))
        .unwrap_or(0)
}

/// Batch norm's running statistics as the layer keeps them, on `be`, against the reference's
/// definition (PyTorch's) over two training batches of a convolutional and a dense shape.
fn assert_running_statistics_are_the_references<B: Backend>(be: &B) {
    use fracture_cnn::nn::{batchnorm::BatchNorm, Layer, Mode};
    for shape in [vec![3, 4, 5, 5], vec![6, 4]] {
        let c = shape[1];
        let mut layer = BatchNorm::new(be, c, 0.1, 1e-5);
        let mut want = (Tensor::zeros([c]), Tensor::full([c], 1.0));
        for seed in [1, 2] {
            let x = Tensor::rand_uniform(shape.clone(), -1.0, 3.0, seed);
            layer.forward(be, be.upload(&x), Mode::Train { seed });
            want = reference::batchnorm_running_stats(&x, (&want.0, &want.1), 0.1);
        }
        let stats = layer.params();
        let got = |name: &str| {
            let p = stats.iter().find(|p| p.name == name).unwrap();
            be.download(&p.value)
        };
        got("running_mean").check_close(&want.0, TOL).unwrap();
        got("running_var").check_close(&want.1, TOL).unwrap();
    }
}

/// One channel of 1, 2, 3, 6 (μ 3, σ² 14/4, unbiased 14/3) moved from mean 0 and variance 1 with
/// momentum 0.1: mean 0.3 and variance 0.9 + 0.1 · 14/3; then the layer on every backend.
#[test]
fn batchnorm_running_statistics_are_pytorchs() {
    let x = Tensor::new([2, 1, 1, 2], vec![1.0, 2.0, 3.0, 6.0]);
    let (mean, var) =
        reference::batchnorm_running_stats(&x, (&Tensor::zeros([1]), &Tensor::full([1], 1.0)), 0.1);
    mean.check_close(&Tensor::new([1], vec![0.3]), 1e-6)
        .unwrap();
    var.check_close(&Tensor::new([1], vec![0.9 + 0.1 * 14.0 / 3.0]), 1e-6)
        .unwrap();
    assert_running_statistics_are_the_references(&Cpu::new());
    if let Some(gpu) = common::gpu::backend() {
        assert_running_statistics_are_the_references(gpu);
    }
}
