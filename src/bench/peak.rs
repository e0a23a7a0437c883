//! The CPU's measured FP32 peak and our GEMM's rate, so that a GEMM figure can be read as a share
//! of what the machine can do.
//!
//! The peak is measured, not taken from a data sheet: every thread of the rayon pool runs a loop of
//! independent fused multiply-adds (the instruction our GEMM micro-kernel is made of) for a fixed
//! time, enough independent accumulators to cover the FMA latency on both FMA pipes, and the FLOPs
//! are counted (a multiply-add counts 2). Clock boosts and other processes affect it exactly as
//! they affect the GEMM measured next to it.

use crate::backend::cpu::gemm::{gemm, micro_kernel_rate, Kernel, MatRef};
use crate::tensor::Tensor;
use std::time::{Duration, Instant};

/// Independent accumulators: enough to cover an FMA's latency (4 cycles) on two FMA units.
const ACCUMULATORS: usize = 12;

/// Measured FP32 GFLOP/s of all threads running the fused multiply-adds of the GEMM kernel
/// `kernel`, over about `time`.
pub fn peak_gflops(kernel: Kernel, time: Duration) -> f64 {
    let flops: Vec<(u64, f64)> = rayon::broadcast(|_| {
        let start = Instant::now();
        let mut flops = 0u64;
        while start.elapsed() < time {
            flops += fma_loop(kernel, 1 << 16);
        }
        (flops, start.elapsed().as_secs_f64())
    });
    flops.iter().map(|(f, s)| *f as f64 / s).sum::<f64>() / 1e9
}

/// GFLOP/s of all threads running the GEMM's micro-kernel alone, its operands in cache
/// ([`micro_kernel_rate`]) over about `time`: the ceiling of the whole product.
pub fn micro_kernel_gflops(kernel: Kernel, time: Duration) -> f64 {
    let rates = rayon::broadcast(|_| micro_kernel_rate(kernel, time));
    2.0 * rates.iter().sum::<f64>() / 1e9
}

/// `trips` rounds of 12 independent multiply-adds as wide as the GEMM kernel `kernel` uses;
/// returns the FLOPs done.
fn fma_loop(kernel: Kernel, trips: usize) -> u64 {
    assert!(
        kernel.runs_here(),
        "the {} kernel cannot run here",
        kernel.name()
    );
    let lanes = match kernel {
        Kernel::Portable => {
            fma_loop_portable(trips);
            8
        }
        // SAFETY: checked above (`Kernel::runs_here`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => {
            unsafe { fma_loop_avx2(trips) };
            8
        }
        // SAFETY: as above, for AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            unsafe { fma_loop_avx512(trips) };
            16
        }
    };
    (trips * ACCUMULATORS * lanes * 2) as u64
}

fn fma_loop_portable(trips: usize) {
    let mut acc = [[1.0f32; 8]; ACCUMULATORS];
    let (a, b) = (
        std::hint::black_box(0.999_f32),
        std::hint::black_box(1e-3_f32),
    );
    for _ in 0..trips {
        for v in acc.iter_mut() {
            for x in v.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
    }
    std::hint::black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The processor must have AVX2 and FMA.
unsafe fn fma_loop_avx2(trips: usize) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(std::hint::black_box(0.999));
    let b = _mm256_set1_ps(std::hint::black_box(1e-3));
    let mut acc = [_mm256_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..trips {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// # Safety
/// The processor must have AVX-512F.
unsafe fn fma_loop_avx512(trips: usize) {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(std::hint::black_box(0.999));
    let b = _mm512_set1_ps(std::hint::black_box(1e-3));
    let mut acc = [_mm512_set1_ps(1.0); ACCUMULATORS];
    for _ in 0..trips {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
}

/// GFLOP/s of our GEMM on `kernel` on `n × n` matrices (all threads), median of `repeats` after
/// a warm-up.
pub fn gemm_gflops(kernel: Kernel, n: usize, repeats: usize) -> f64 {
    let a = Tensor::rand_uniform([n, n], -1.0, 1.0, 1).data;
    let b = Tensor::rand_uniform([n, n], -1.0, 1.0, 2).data;
    let mut c = vec![0f32; n * n];
    let mut run = || {
        let t = Instant::now();
        gemm(
            kernel,
            MatRef::rows(&a, n, n),
            MatRef::rows(&b, n, n),
            &mut c,
            n,
            false,
        );
        t.elapsed().as_secs_f64()
    };
    run();
    let mut times: Vec<f64> = (0..repeats.max(1)).map(|_| run()).collect();
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e9
}
