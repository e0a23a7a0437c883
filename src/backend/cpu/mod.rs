//! The CPU backend: plain Rust on rayon's thread pool. It is the reference implementation that the
//! GPU backend is tested against, so each kernel favours clarity first and speed second, with the
//! speed coming from the GEMM (`gemm.rs`) that convolution and dense layers are lowered onto.

pub mod batchnorm;
pub mod conv;
pub mod dense;
pub mod depthwise;
pub mod elementwise;
pub mod flat;
pub mod gemm;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod upsample;

use self::batchnorm::Dims;
use self::gemm::Kernel;
use super::{AdamStep, Backend, BatchNormStats, Conv2dGeom, Epilogue, Pool2dGeom, SgdStep};
use crate::tensor::{Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Makes freed tensors' memory stay with the process for the next ones (glibc; elsewhere a no-op).
///
/// A training step frees and allocates the same large tensors every step. glibc's malloc gives
/// blocks above 32 MiB their own pages from the kernel and hands them back on free, so each step
/// paid a page fault for every 4 KiB of every large activation, about as long as the op that
/// wrote it. With this, after the first step every tensor is served from memory already mapped.
/// Called by the `fracture-cnn` binary at start and by the benchmarks; the peak resident memory
/// is unchanged (it is the first step's), but it is not given back until the process ends.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only sets allocator parameters.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        });
    }
}

/// Values one rayon task should cover at least: with small planes (MobileNet's last layers are
/// 4 × 4, 16,384 planes to a batch) one task per plane would spend more on scheduling than on
/// the work.
const TASK_VALUES: usize = 4096;

/// Planes of `plane` values per rayon task, at least (for `with_min_len`).
pub(crate) fn planes_per_task(plane: usize) -> usize {
    (TASK_VALUES / plane.max(1)).max(1)
}

/// A new vector of `len` floats, every one written by `fill`, without zeroing it first: a large
/// op's output is otherwise written twice, and the zeroing pass alone took 6 % of a MobileNet
/// training step (batch norm's and the depthwise convolutions' outputs).
///
/// # Safety
/// `fill` must write every element of the slice it is given (`MaybeUninit::write`).
pub(crate) unsafe fn written_by<T: Copy>(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut out: Vec<MaybeUninit<T>> = Vec::with_capacity(len);
    out.resize_with(len, MaybeUninit::uninit);
    fill(&mut out);
    let mut out = std::mem::ManuallyDrop::new(out);
    // SAFETY: `fill` wrote every element (the caller's contract), so the buffer holds `len`
    // initialised values, and `MaybeUninit<T>` has the layout of `T`; the allocation is
    // handed over whole (pointer, length, capacity) and `out` is not dropped.
    Vec::from_raw_parts(out.as_mut_ptr().cast::<T>(), out.len(), out.capacity())
}

/// Two new vectors of `len` values each (an output and its pooling's positions), every element
/// of both written by `fill`, neither zeroed first.
///
/// # Safety
/// As [`written_by`], for both slices.
pub(crate) unsafe fn both_written_by<T: Copy, U: Copy>(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>], &mut [MaybeUninit<U>]),
) -> (Vec<T>, Vec<U>) {
    let mut second = Vec::new();
    let first = written_by(len, |a| second = written_by(len, |b| fill(a, b)));
    (first, second)
}

/// `s` filled with `value`, and so initialised: for an output that is summed into or written
/// by a function that takes initialised slices (a plane at a time, while it is in cache,
/// rather than the whole output zeroed first, on one thread, by `vec!`).
pub(crate) fn filled<T: Copy>(s: &mut [MaybeUninit<T>], value: T) -> &mut [T] {
    s.fill(MaybeUninit::new(value));
    // SAFETY: every element was just written; `MaybeUninit<T>` has the layout of `T`.
    unsafe { &mut *(s as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `s` seen as room to be overwritten, for a function that writes outputs it need not read
/// (the GEMM with an epilogue, Winograd's output transform) when `s` is a reused buffer.
///
/// # Safety
/// Whatever writes through the result must write initialised values only (never
/// `MaybeUninit::uninit()`), so that `s` still holds f32s afterwards.
pub(crate) unsafe fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; the caller keeps every element
    // initialised.
    &mut *(s as *mut [f32] as *mut [MaybeUninit<f32>])
}

/// The CPU backend. Its tensors are host tensors; it uses rayon's global thread pool.
///
/// Configured by value, as the GPU backend is: the GEMM micro-kernel every product runs on and,
/// for benchmarks and tests, a convolution algorithm or unfolding forced everywhere instead of
/// chosen per layer. Two backends with different settings run side by side in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    kernel: Kernel,
    algorithm: Option<conv::Algorithm>,
    unfolding: Option<conv::Unfolding>,
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu::new()
    }
}

impl Cpu {
    /// The fastest GEMM kernel this processor runs; each convolution's algorithm and unfolding
    /// chosen for its shape.
    pub fn new() -> Cpu {
        Cpu {
            kernel: Kernel::fastest(),
            algorithm: None,
            unfolding: None,
        }
    }

    /// This backend on the GEMM kernel `kernel`: refused when this processor lacks its
    /// instructions (the SIMD kernels are `unsafe` to run without them).
    pub fn with_kernel(self, kernel: Kernel) -> Result<Cpu, String> {
        Ok(Cpu {
            kernel: kernel.usable()?,
            ..self
        })
    }

    /// Every convolution `algorithm` runs wherever it applies (the GEMM everywhere; Winograd on
    /// every 3×3 stride-1 layer, thin ones included).
    pub fn with_conv_algorithm(self, algorithm: conv::Algorithm) -> Cpu {
        Cpu {
            algorithm: Some(algorithm),
            ..self
        }
    }

    /// Every GEMM convolution unfolds its input the way `unfolding` says (flat only where it
    /// applies).
    pub fn with_unfolding(self, unfolding: conv::Unfolding) -> Cpu {
        Cpu {
            unfolding: Some(unfolding),
            ..self
        }
    }

    /// [`Cpu::new`] with what the environment forces, for benchmarks run through the binary:
    /// `FRACTURE_CPU_KERNEL=portable|avx2|avx512`, `FRACTURE_CONV_ALGORITHM=gemm|winograd`,
    /// `FRACTURE_CONV_UNFOLDING=copy|implicit|flat`. A value it cannot take is an error naming
    /// the variable.
    pub fn from_env() -> Result<Cpu, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let named = |name: &str, e: String| format!("{name}: {e}");
        let mut cpu = Cpu::new();
        if let Some(v) = var("FRACTURE_CPU_KERNEL") {
            let kernel = Kernel::named(&v).map_err(|e| named("FRACTURE_CPU_KERNEL", e))?;
            cpu = cpu.with_kernel(kernel)?;
        }
        if let Some(v) = var("FRACTURE_CONV_ALGORITHM") {
            let a = conv::Algorithm::named(&v).map_err(|e| named("FRACTURE_CONV_ALGORITHM", e))?;
            cpu = cpu.with_conv_algorithm(a);
        }
        if let Some(v) = var("FRACTURE_CONV_UNFOLDING") {
            let u = conv::Unfolding::named(&v).map_err(|e| named("FRACTURE_CONV_UNFOLDING", e))?;
            cpu = cpu.with_unfolding(u);
        }
        Ok(cpu)
    }

    /// The GEMM kernel every product runs on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The convolution algorithm forced everywhere, if any.
    pub fn forced_algorithm(&self) -> Option<conv::Algorithm> {
        self.algorithm
    }

    /// How `g`'s convolution is computed on this backend.
    pub fn conv_plan(&self, g: &Conv2dGeom) -> conv::Plan {
        conv::Plan::choose(g, self.kernel, self.algorithm, self.unfolding)
    }
}

fn t(shape: impl Into<Shape>, data: Vec<f32>) -> Tensor {
    Tensor::new(shape, data)
}

fn bn_dims(x: &Tensor) -> Dims {
    let (n, c, h, w) = x.shape.nchw();
    Dims { n, c, hw: h * w }
}

impl Backend for Cpu {
    type Tensor = Tensor;
    type Indices = Vec<u32>;

    fn name(&self) -> String {
        let forced = match (self.algorithm, self.unfolding) {
            (None, None) => String::new(),
            (a, u) => format!(", convolutions forced to {a:?} / {u:?}"),
        };
        format!(
            "cpu ({} threads, {:?} GEMM kernel{forced})",
            rayon::current_num_threads(),
            self.kernel
        )
    }

    fn upload(&self, x: &Tensor) -> Tensor {
        t(x.shape.clone(), elementwise::copy(&x.data))
    }
    fn download(&self, x: &Tensor) -> Tensor {
        t(x.shape.clone(), elementwise::copy(&x.data))
    }
    fn download_indices(&self, idx: &Vec<u32>) -> Vec<u32> {
        idx.clone()
    }
    fn shape<'a>(&self, x: &'a Tensor) -> &'a Shape {
        &x.shape
    }
    fn zeros(&self, shape: &Shape) -> Tensor {
        Tensor::zeros(shape.clone())
    }
    fn reshape(&self, x: Tensor, shape: Shape) -> Tensor {
        x.reshape(shape)
    }

    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, g: &Conv2dGeom) -> Tensor {
        debug_assert_eq!(x.dims(), g.input_shape());
        t(
            g.output_shape(),
            conv::forward(&self.conv_plan(g), &x.data, &w.data, &b.data, g, false),
        )
    }
    fn conv2d_relu_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, g: &Conv2dGeom) -> Tensor {
        debug_assert_eq!(x.dims(), g.input_shape());
        t(
            g.output_shape(),
            conv::forward(&self.conv_plan(g), &x.data, &w.data, &b.data, g, true),
        )
    }
    fn conv2d_maxpool_forward(
        &self,
        x: &Tensor,
        (w, b): (&Tensor, &Tensor),
        g: &Conv2dGeom,
        relu: bool,
        p: &Pool2dGeom,
    ) -> Tensor {
        debug_assert_eq!(x.dims(), g.input_shape());
        debug_assert_eq!(p.input_shape(), g.output_shape());
        let plan = self.conv_plan(g);
        let y = conv::forward_pooled(&plan, &x.data, &w.data, &b.data, g, relu, Some(p));
        t(p.output_shape(), y)
    }
    fn conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &Conv2dGeom) -> Tensor {
        let dx = conv::backward_input(&self.conv_plan(g), &dy.data, &w.data, g);
        t(g.input_shape(), dx)
    }
    fn conv2d_backward_weight(&self, x: &Tensor, dy: &Tensor, g: &Conv2dGeom) -> (Tensor, Tensor) {
        let (dw, db) = conv::backward_weight(&self.conv_plan(g), &x.data, &dy.data, g);
        (t(g.weight_shape(), dw), t([g.c_out], db))
    }

    fn depthwise_conv2d_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        g: &Conv2dGeom,
    ) -> Tensor {
        debug_assert_eq!(x.dims(), g.input_shape());
        let y = depthwise::forward(self.kernel, &x.data, &w.data, &b.data, g, false);
        t(g.output_shape(), y)
    }
    fn depthwise_conv2d_relu_forward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        g: &Conv2dGeom,
    ) -> Tensor {
        debug_assert_eq!(x.dims(), g.input_shape());
        let y = depthwise::forward(self.kernel, &x.data, &w.data, &b.data, g, true);
        t(g.output_shape(), y)
    }
    fn depthwise_conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &Conv2dGeom) -> Tensor {
        t(
            g.input_shape(),
            depthwise::backward_input(self.kernel, &dy.data, &w.data, g),
        )
    }
    fn depthwise_conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &Conv2dGeom,
    ) -> (Tensor, Tensor) {
        let (dw, db) = depthwise::backward_weight(self.kernel, &x.data, &dy.data, g);
        (t(g.depthwise_weight_shape(), dw), t([g.c_in], db))
    }

    fn batchnorm_forward_train(
        &self,
        x: &Tensor,
        (gamma, beta): (&Tensor, &Tensor),
        eps: f32,
        then: &Epilogue,
    ) -> (Tensor, BatchNormStats<Tensor>, Option<Vec<u32>>) {
        let d = bn_dims(x);
        let r = batchnorm::forward_train(&x.data, (&gamma.data, &beta.data), eps, d, then);
        let stats = BatchNormStats {
            mean: t([d.c], r.mean),
            var: t([d.c], r.var),
            inv_std: t([d.c], r.inv_std),
        };
        let shape = match &then.pool {
            Some(g) => g.output_shape().into(),
            None => x.shape.clone(),
        };
        (t(shape, r.y), stats, r.argmax)
    }
    fn batchnorm_forward_infer(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Tensor {
        let y = batchnorm::forward_infer(
            &x.data,
            &gamma.data,
            &beta.data,
            &running_mean.data,
            &running_var.data,
            eps,
            bn_dims(x),
        );
        t(x.shape.clone(), y)
    }
    fn batchnorm_backward(
        &self,
        x: &Tensor,
        (dy, argmax): (&Tensor, Option<&Vec<u32>>),
        (gamma, beta): (&Tensor, &Tensor),
        stats: &BatchNormStats<Tensor>,
        then: &Epilogue,
    ) -> (Tensor, Tensor, Tensor) {
        let d = bn_dims(x);
        let (dx, dgamma, dbeta) = batchnorm::backward(
            &x.data,
            (&dy.data, argmax.map(|a| a.as_slice())),
            (&gamma.data, &beta.data),
            (&stats.mean.data, &stats.inv_std.data),
            d,
            then,
        );
        (t(x.shape.clone(), dx), t([d.c], dgamma), t([d.c], dbeta))
    }
    fn ema_update(&self, running: &mut Tensor, batch: &Tensor, momentum: f32, scale: f32) {
        optim::ema(&mut running.data, &batch.data, momentum, scale);
    }

    fn maxpool_forward(&self, x: &Tensor, g: &Pool2dGeom) -> (Tensor, Vec<u32>) {
        let (y, idx) = pool::forward(&x.data, g);
        (t(g.output_shape(), y), idx)
    }
    fn maxpool_forward_infer(&self, x: &Tensor, g: &Pool2dGeom) -> Tensor {
        t(g.output_shape(), pool::forward_infer(&x.data, g))
    }
    fn maxpool_backward(&self, dy: &Tensor, argmax: &Vec<u32>, g: &Pool2dGeom) -> Tensor {
        t(g.input_shape(), pool::backward(&dy.data, argmax, g))
    }

    fn global_avgpool_forward(&self, x: &Tensor) -> Tensor {
        let (n, c, h, w) = x.shape.nchw();
        t([n, c], pool::global_avg_forward(&x.data, h * w))
    }
    fn global_avgpool_backward(&self, dy: &Tensor, (h, w): (usize, usize)) -> Tensor {
        let (n, c) = (dy.dims()[0], dy.dims()[1]);
        t([n, c, h, w], pool::global_avg_backward(&dy.data, h * w))
    }

    fn upsample_forward(&self, x: &Tensor, s: usize) -> Tensor {
        let (n, c, h, w) = x.shape.nchw();
        t([n, c, h * s, w * s], upsample::forward(&x.data, (h, w), s))
    }
    fn upsample_backward(&self, dy: &Tensor, s: usize) -> Tensor {
        let (n, c, oh, ow) = dy.shape.nchw();
        let (h, w) = (oh / s, ow / s);
        t([n, c, h, w], upsample::backward(&dy.data, (h, w), s))
    }

    fn dense_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        dense::forward(self.kernel, x, w, b)
    }
    fn dense_backward_input(&self, dy: &Tensor, w: &Tensor) -> Tensor {
        dense::backward_input(self.kernel, dy, w)
    }
    fn dense_backward_weight(&self, x: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
        dense::backward_weight(self.kernel, x, dy)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.shape, b.shape, "add of two shapes");
        t(a.shape.clone(), elementwise::add(&a.data, &b.data))
    }
    fn copy(&self, x: &Tensor) -> Tensor {
        t(x.shape.clone(), elementwise::copy(&x.data))
    }
    fn relu_forward(&self, x: &Tensor) -> Tensor {
        t(x.shape.clone(), elementwise::relu_forward(&x.data))
    }
    fn relu_backward(&self, x: &Tensor, dy: &Tensor) -> Tensor {
        t(
            x.shape.clone(),
            elementwise::relu_backward(&x.data, &dy.data),
        )
    }
    fn dropout_forward(&self, x: &Tensor, p: f32, seed: u64) -> Tensor {
        t(x.shape.clone(), elementwise::dropout(&x.data, p, seed))
    }
    fn dropout_backward(&self, dy: &Tensor, p: f32, seed: u64) -> Tensor {
        t(dy.shape.clone(), elementwise::dropout(&dy.data, p, seed))
    }

    fn bce_with_logits(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        pos_weight: f32,
    ) -> (Tensor, Tensor) {
        let (loss, grad) = loss::bce_with_logits(&logits.data, &targets.data, pos_weight);
        (t([1], vec![loss]), t(logits.shape.clone(), grad))
    }

    fn adam_step(&self, p: &mut Tensor, g: &Tensor, m: &mut Tensor, v: &mut Tensor, h: &AdamStep) {
        optim::adam(&mut p.data, &g.data, &mut m.data, &mut v.data, h);
    }
    fn sgd_step(&self, p: &mut Tensor, g: &Tensor, velocity: &mut Tensor, h: &SgdStep) {
        optim::sgd(&mut p.data, &g.data, &mut velocity.data, h);
    }
    fn squared_norms(&self, ts: &[&Tensor]) -> Vec<f32> {
        ts.par_iter()
            .map(|t| optim::squared_norm(&t.data))
            .collect()
    }
    fn scale(&self, t: &mut Tensor, s: f32) {
        t.data.iter_mut().for_each(|v| *v *= s);
    }
}
