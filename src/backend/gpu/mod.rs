//! The GPU backend: the same ops as the CPU backend, as WGSL compute shaders (`shaders/`) run by
//! wgpu on Vulkan, Metal, DX12 or OpenGL. Tensors are GPU buffers that stay on the device between
//! layers and between steps; launches are recorded into one command encoder and submitted when
//! the host needs a value (the loss, the logits for the metrics) or a batch is uploaded.
//!
//! A batch tensor may be larger than one binding (128 MiB on many adapters): it then lives in one
//! large buffer, and each op runs over windows of whole images, each window copied into a scratch
//! buffer that fits a binding (see `Gpu::per_window`). Reductions over the batch (batch-norm
//! statistics, weight and bias gradients) add up across windows.

//!
//! The files mirror `cpu/`, one op family each, beside its shader (`shaders/<family>.wgsl`):
//! `gemm`, `conv`, `dense`, `depthwise`, `batchnorm`, `pool`, `upsample`, `elementwise`, `reduce`,
//! `loss`, `optim`.
//! Each declares its kernels' parameter block as a `Params` struct, field for field the WGSL
//! struct of its shader (`params.rs` checks them against each other).

mod batchnorm;
mod context;
mod conv;
mod dense;
mod depthwise;
mod elementwise;
mod gemm;
mod loss;
mod optim;
mod params;
mod pool;
mod reduce;
mod upsample;

pub use context::{Context, Created, GpuFault, KernelTime};

use super::{
    AdamStep, Backend, BatchNormStats, Conv2dGeom, Epilogue, Pool2dGeom, SgdStep, TensorLimits,
};
use crate::tensor::{Shape, Tensor};
use anyhow::Result;
use std::sync::Arc;

/// A tensor in GPU memory. Its buffer returns to the backend's pool when it is dropped.
pub struct GpuTensor {
    buf: Option<wgpu::Buffer>,
    shape: Shape,
    ctx: Arc<Context>,
}

impl GpuTensor {
    fn buf(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("a live tensor has a buffer")
    }
    fn len(&self) -> usize {
        self.shape.numel()
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.ctx.give_back(b);
        }
    }
}

/// The GPU backend.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<Context>,
    /// Values one binding may hold: the adapter's limit, or less to exercise the windowed path.
    window: usize,
    gemm: GemmKernel,
}

/// Which kernel of `gemm.wgsl` runs the matrix products (see the comment at its top).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// Register blocking only: best where workgroup memory is ordinary memory (lavapipe).
    Registers,
    /// Tiles of A and B shared through workgroup memory: best on real GPUs.
    Tiled,
}

impl GemmKernel {
    /// `FRACTURE_GEMM=tiled|registers` if set, else tiled on real GPUs and registers on a CPU
    /// emulating one.
    fn choose(info: &wgpu::AdapterInfo) -> GemmKernel {
        match std::env::var("FRACTURE_GEMM").as_deref() {
            Ok("tiled") => GemmKernel::Tiled,
            Ok("registers") => GemmKernel::Registers,
            _ if info.device_type == wgpu::DeviceType::Cpu => GemmKernel::Registers,
            _ => GemmKernel::Tiled,
        }
    }
}

/// Images `[first, first + count)` of a batch: the part of it that one launch sees.
#[derive(Clone, Copy, Debug)]
struct Window {
    first: usize,
    count: usize,
    /// `count` images are the whole batch's last ones (reductions finish here).
    last: bool,
}

impl Window {
    fn is_first(&self) -> bool {
        self.first == 0
    }
}

impl Gpu {
    /// Opens the default adapter and compiles every kernel.
    pub fn new() -> Result<Gpu> {
        Ok(Gpu::from_context(Context::new()?))
    }
    pub fn from_context(ctx: Arc<Context>) -> Gpu {
        let window = ctx.max_binding_floats();
        let gemm = GemmKernel::choose(&ctx.info);
        Gpu { ctx, window, gemm }
    }
    /// The same device with another GEMM kernel (for tests and benchmarks).
    pub fn with_gemm(&self, gemm: GemmKernel) -> Gpu {
        Gpu {
            gemm,
            ..self.clone()
        }
    }
    pub fn gemm_kernel(&self) -> GemmKernel {
        self.gemm
    }
    /// The same device with a smaller binding limit, in f32 values, so that tests can run the
    /// windowed path (tensors split across bindings) on small shapes.
    pub fn with_binding_limit(&self, values: usize) -> Gpu {
        Gpu {
            window: values.min(self.ctx.max_binding_floats()),
            ..self.clone()
        }
    }
    /// GPU buffers and bind groups created so far: a warmed-up training step adds none.
    pub fn created(&self) -> Created {
        self.ctx.created()
    }
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.info
    }
    /// Times every kernel from now on with GPU timestamp queries (an error where the adapter has
    /// none); see [`Gpu::take_kernel_times`].
    pub fn start_profiling(&self) -> Result<()> {
        self.ctx.start_profiling()
    }
    /// GPU time per kernel since profiling started or since the last call, slowest first.
    pub fn take_kernel_times(&self) -> Option<Vec<KernelTime>> {
        self.ctx.take_kernel_times()
    }

    fn alloc(&self, shape: impl Into<Shape>) -> GpuTensor {
        let shape = shape.into();
        let n = shape.numel();
        assert!(
            n <= self.ctx.max_buffer_floats(),
            "a tensor of shape {shape} ({} MiB) exceeds the largest buffer of this GPU ({} MiB): \
             lower --batch-size or --image-size",
            (n * 4) >> 20,
            (self.ctx.max_buffer_floats() * 4) >> 20
        );
        GpuTensor {
            buf: Some(self.ctx.take_buffer(4 * n as u64)),
            shape,
            ctx: self.ctx.clone(),
        }
    }

    /// The buffer of a tensor that a kernel binds whole (parameters, per-channel values).
    fn whole<'a>(&self, t: &'a GpuTensor) -> &'a wgpu::Buffer {
        assert!(
            t.len() <= self.window,
            "a tensor of shape {} is larger than one binding of this GPU; train::check_fits \
             should have refused this model",
            t.shape
        );
        t.buf()
    }

    /// Runs `op` over windows of a batch of `n` images, each small enough that its slice of
    /// every tensor in `ins` and `outs` fits one binding. `op` gets the window and the buffers
    /// to bind, holding that window's images from offset 0: when the whole batch fits (the usual
    /// case) these are the tensors' own buffers and `op` runs once; otherwise each input window is
    /// copied into a scratch buffer before `op`, and each output window copied back after it.
    fn per_window(
        &self,
        n: usize,
        ins: &[&GpuTensor],
        outs: &[&GpuTensor],
        mut op: impl FnMut(Window, &[&wgpu::Buffer], &[&wgpu::Buffer]),
    ) {
        let per_image = |t: &GpuTensor| t.len() / n.max(1);
        let largest = ins
            .iter()
            .chain(outs)
            .map(|t| per_image(t))
            .max()
            .unwrap_or(0);
        let step = (self.window / largest.max(1)).min(n.max(1));
        assert!(
            step >= 1,
            "one image's slice of a tensor ({largest} values) is larger than one binding of this \
             GPU; train::check_fits should have refused this image size"
        );
        if step == n.max(1) {
            let window = Window {
                first: 0,
                count: n,
                last: true,
            };
            op(window, &buffers(ins), &buffers(outs));
            return;
        }
        let scratch = |ts: &[&GpuTensor]| {
            ts.iter()
                .map(|t| self.alloc([step * per_image(t)]))
                .collect::<Vec<_>>()
        };
        let (si, so) = (scratch(ins), scratch(outs));
        let (bi, bo) = (
            buffers(&si.iter().collect::<Vec<_>>()),
            buffers(&so.iter().collect::<Vec<_>>()),
        );
        for first in (0..n).step_by(step) {
            let count = step.min(n - first);
            let bytes = |t: &GpuTensor| {
                let values = per_image(t) as u64;
                (4 * first as u64 * values, 4 * count as u64 * values)
            };
            for (t, s) in ins.iter().zip(&bi) {
                let (at, len) = bytes(t);
                self.ctx.copy(t.buf(), at, s, 0, len);
            }
            let window = Window {
                first,
                count,
                last: first + count == n,
            };
            op(window, &bi, &bo);
            for (t, s) in outs.iter().zip(&bo) {
                let (at, len) = bytes(t);
                self.ctx.copy(s, 0, t.buf(), at, len);
            }
        }
    }
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Indices = GpuTensor;

    fn name(&self) -> String {
        let i = &self.ctx.info;
        format!(
            "gpu ({}, {:?}, {}; {} GEMM)",
            i.name,
            i.backend,
            i.driver_info,
            match self.gemm {
                GemmKernel::Registers => "register-blocked",
                GemmKernel::Tiled => "tiled",
            }
        )
    }

    fn upload(&self, t: &Tensor) -> GpuTensor {
        let out = self.alloc(t.shape.clone());
        self.ctx.write(out.buf(), bytemuck::cast_slice(&t.data));
        out
    }
    fn download(&self, t: &GpuTensor) -> Tensor {
        let bytes = self.ctx.read(t.buf(), 4 * t.len() as u64);
        Tensor::new(t.shape.clone(), bytemuck::cast_slice(&bytes).to_vec())
    }
    fn download_indices(&self, idx: &GpuTensor) -> Vec<u32> {
        bytemuck::cast_slice(&self.ctx.read(idx.buf(), 4 * idx.len() as u64)).to_vec()
    }
    fn tensor_limits(&self) -> Option<TensorLimits> {
        Some(TensorLimits {
            batch_tensor: self.ctx.max_buffer_floats(),
            window: self.window,
        })
    }
    fn synchronize(&self) {
        self.ctx.wait();
    }
    fn shape<'a>(&self, t: &'a GpuTensor) -> &'a Shape {
        &t.shape
    }
    fn zeros(&self, shape: &Shape) -> GpuTensor {
        self.upload(&Tensor::zeros(shape.clone()))
    }
    fn reshape(&self, mut t: GpuTensor, shape: Shape) -> GpuTensor {
        assert_eq!(
            t.shape.numel(),
            shape.numel(),
            "cannot reshape {} to {shape}",
            t.shape
        );
        t.shape = shape;
        t
    }

    fn conv2d_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        conv::forward(self, x, w, b, g, false)
    }
    fn conv2d_relu_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        conv::forward(self, x, w, b, g, true)
    }
    fn conv2d_maxpool_forward(
        &self,
        x: &GpuTensor,
        (w, b): (&GpuTensor, &GpuTensor),
        g: &Conv2dGeom,
        relu: bool,
        p: &Pool2dGeom,
    ) -> GpuTensor {
        conv::forward_maxpool(self, x, (w, b), g, relu, p).unwrap_or_else(|| {
            let y = conv::forward(self, x, w, b, g, relu);
            self.maxpool_forward_infer(&y, p)
        })
    }
    fn conv2d_backward_input(&self, dy: &GpuTensor, w: &GpuTensor, g: &Conv2dGeom) -> GpuTensor {
        conv::backward_input(self, dy, w, g)
    }
    fn conv2d_backward_weight(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeom,
    ) -> (GpuTensor, GpuTensor) {
        conv::backward_weight(self, x, dy, g)
    }

    fn depthwise_conv2d_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        depthwise::forward(self, x, w, b, g)
    }
    fn depthwise_conv2d_backward_input(
        &self,
        dy: &GpuTensor,
        w: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        depthwise::backward_input(self, dy, w, g)
    }
    fn depthwise_conv2d_backward_weight(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeom,
    ) -> (GpuTensor, GpuTensor) {
        depthwise::backward_weight(self, x, dy, g)
    }

    fn batchnorm_forward_train(
        &self,
        x: &GpuTensor,
        gamma_beta: (&GpuTensor, &GpuTensor),
        eps: f32,
        then: &Epilogue,
    ) -> (GpuTensor, BatchNormStats<GpuTensor>, Option<GpuTensor>) {
        batchnorm::forward_train(self, x, gamma_beta, eps, then)
    }
    fn batchnorm_forward_infer(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        mean: &GpuTensor,
        var: &GpuTensor,
        eps: f32,
    ) -> GpuTensor {
        batchnorm::forward_infer(self, x, (gamma, beta), (mean, var), eps)
    }
    fn batchnorm_backward(
        &self,
        x: &GpuTensor,
        dy_argmax: (&GpuTensor, Option<&GpuTensor>),
        gamma_beta: (&GpuTensor, &GpuTensor),
        stats: &BatchNormStats<GpuTensor>,
        then: &Epilogue,
    ) -> (GpuTensor, GpuTensor, GpuTensor) {
        batchnorm::backward(self, x, dy_argmax, gamma_beta, stats, then)
    }
    fn ema_update(&self, running: &mut GpuTensor, batch: &GpuTensor, momentum: f32, scale: f32) {
        elementwise::ema(self, running, batch, momentum, scale);
    }

    fn maxpool_forward(&self, x: &GpuTensor, g: &Pool2dGeom) -> (GpuTensor, GpuTensor) {
        pool::max_forward(self, x, g)
    }
    fn maxpool_backward(&self, dy: &GpuTensor, argmax: &GpuTensor, g: &Pool2dGeom) -> GpuTensor {
        pool::max_backward(self, dy, argmax, g)
    }
    fn global_avgpool_forward(&self, x: &GpuTensor) -> GpuTensor {
        pool::global_avg_forward(self, x)
    }
    fn global_avgpool_backward(&self, dy: &GpuTensor, hw: (usize, usize)) -> GpuTensor {
        pool::global_avg_backward(self, dy, hw)
    }

    fn upsample_forward(&self, x: &GpuTensor, s: usize) -> GpuTensor {
        upsample::forward(self, x, s)
    }
    fn upsample_backward(&self, dy: &GpuTensor, s: usize) -> GpuTensor {
        upsample::backward(self, dy, s)
    }

    fn dense_forward(&self, x: &GpuTensor, w: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        dense::forward(self, x, w, b)
    }
    fn dense_backward_input(&self, dy: &GpuTensor, w: &GpuTensor) -> GpuTensor {
        dense::backward_input(self, dy, w)
    }
    fn dense_backward_weight(&self, x: &GpuTensor, dy: &GpuTensor) -> (GpuTensor, GpuTensor) {
        dense::backward_weight(self, x, dy)
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        elementwise::add(self, a, b)
    }
    fn copy(&self, x: &GpuTensor) -> GpuTensor {
        elementwise::copy(self, x)
    }
    fn relu_forward(&self, x: &GpuTensor) -> GpuTensor {
        elementwise::relu_forward(self, x)
    }
    fn relu_backward(&self, x: &GpuTensor, dy: &GpuTensor) -> GpuTensor {
        elementwise::relu_backward(self, x, dy)
    }
    fn dropout_forward(&self, x: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
        elementwise::dropout(self, x, p, seed)
    }
    fn dropout_backward(&self, dy: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
        elementwise::dropout(self, dy, p, seed)
    }

    fn bce_with_logits(
        &self,
        logits: &GpuTensor,
        targets: &GpuTensor,
        pos_weight: f32,
    ) -> (GpuTensor, GpuTensor) {
        loss::bce_with_logits(self, logits, targets, pos_weight)
    }

    fn adam_step(
        &self,
        p: &mut GpuTensor,
        g: &GpuTensor,
        m: &mut GpuTensor,
        v: &mut GpuTensor,
        h: &AdamStep,
    ) {
        optim::adam(self, p, g, m, v, h);
    }
    fn sgd_step(&self, p: &mut GpuTensor, g: &GpuTensor, velocity: &mut GpuTensor, h: &SgdStep) {
        optim::sgd(self, p, g, velocity, h);
    }

    fn squared_norms(&self, ts: &[&GpuTensor]) -> Vec<f32> {
        reduce::squared_norms(self, ts)
    }
    fn scale(&self, t: &mut GpuTensor, s: f32) {
        elementwise::scale(self, t, s);
    }
}

fn buffers<'a>(ts: &[&'a GpuTensor]) -> Vec<&'a wgpu::Buffer> {
    ts.iter().map(|t| t.buf()).collect()
}
