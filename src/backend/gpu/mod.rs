//! The GPU backend: the same ops as the CPU backend, as WGSL compute shaders (`shaders/`) run by
//! wgpu on Vulkan, Metal, DX12 or OpenGL. Tensors are GPU buffers that stay on the device between
//! layers and between steps; launches are recorded into one command encoder and submitted when
//! the host needs a value (the loss, the logits for the metrics) or a batch is uploaded.
//!
//! A batch tensor may be larger than one binding (128 MiB on many adapters): it then lives in one
//! large buffer, and each op runs over windows of whole images, each window copied into a scratch
//! buffer that fits a binding (see `Gpu::per_window`). Reductions over the batch (batch-norm
//! statistics, weight and bias gradients) add up across windows.

mod context;

pub use context::{Context, Created, GpuFault, KernelTime};

use self::context::{grid_1d, Binding};
use super::{AdamStep, Backend, BatchNormStats, Conv2dGeom, Pool2dGeom, SgdStep, TensorLimits};
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

/// Parameters of one `gemm.wgsl` launch (see the layout comment there).
#[derive(Clone, Copy, Default)]
struct Gemm {
    m: usize,
    n: usize,
    k_hi: usize,
    k_lo: usize,
    a_off: usize,
    a_rs: usize,
    a_khi: usize,
    a_klo: usize,
    b_off: usize,
    b_cs: usize,
    b_khi: usize,
    b_klo: usize,
    c_off: usize,
    c_rs: usize,
    a_batch: usize,
    b_batch: usize,
    c_batch: usize,
    accumulate: bool,
    batch: usize,
}

impl Gemm {
    /// A single `m × k` by `k × n` product, row-major C, with A and B given by their
    /// (row, column) strides, as the dense layers need.
    fn matmul(
        m: usize,
        n: usize,
        k: usize,
        (a_rs, a_cs): (usize, usize),
        (b_rs, b_cs): (usize, usize),
    ) -> Gemm {
        Gemm {
            m,
            n,
            k_hi: 1,
            k_lo: k,
            a_rs,
            a_klo: a_cs,
            b_cs,
            b_klo: b_rs,
            c_rs: n,
            batch: 1,
            ..Default::default()
        }
    }
}

/// Values of one unfolded chunk of images at most (keeps `col` well under binding limits).
const COL_BUDGET: usize = 1 << 24;
/// Output pixels summed by one invocation of depthwise.wgsl's weight gradient.
const DEPTHWISE_RUN: usize = 256;

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("a GPU index beyond 32 bits")
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

    fn gemm(&self, g: Gemm, a: &wgpu::Buffer, b: &wgpu::Buffer, c: &wgpu::Buffer) {
        let params = [
            g.m,
            g.n,
            g.k_hi,
            g.k_lo,
            g.a_off,
            g.a_rs,
            g.a_khi,
            g.a_klo,
            g.b_off,
            g.b_cs,
            g.b_khi,
            g.b_klo,
            g.c_off,
            g.c_rs,
            g.a_batch,
            g.b_batch,
            g.c_batch,
            g.accumulate as usize,
            0,
            0,
        ]
        .map(u);
        let groups = (u(g.n.div_ceil(64)), u(g.m.div_ceil(64)), u(g.batch));
        let aligned = [g.n, g.b_off, g.b_klo, g.b_khi, g.b_batch]
            .iter()
            .all(|v| v % 4 == 0);
        let kernel = match self.gemm {
            GemmKernel::Tiled => "gemm::gemm_tiled",
            GemmKernel::Registers if g.b_cs == 1 && aligned => "gemm::gemm_vec4b",
            GemmKernel::Registers => "gemm::gemm",
        };
        // The register kernel binds B twice (as f32s and as vec4s), each variant reading through
        // one of them; the tiled kernel reads f32s.
        let bind = [(1, a), (2, b), (3, c), (4, b)];
        let bind = if self.gemm == GemmKernel::Tiled {
            &bind[..3]
        } else {
            &bind[..]
        };
        self.ctx.launch(kernel, &params, bind, groups);
    }

    /// An element-wise kernel of `elementwise.wgsl` over `n` values.
    fn elementwise(&self, entry: &str, n: usize, extra: [u32; 4], f: [f32; 2], bind: &[Binding]) {
        let params = [
            u(n),
            extra[0],
            extra[1],
            extra[2],
            f[0].to_bits(),
            f[1].to_bits(),
            extra[3],
            0,
        ];
        self.ctx
            .launch(&format!("elementwise::{entry}"), &params, bind, grid_1d(n));
    }

    /// `dst[c]` (+)= Σ over n, q of `src[n, c, q]` for an [N, C, Q] view.
    fn channel_sum(
        &self,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        (n, c, q): (usize, usize, usize),
        accumulate: bool,
    ) {
        let params = [u(n), u(c), u(q), accumulate as u32];
        self.ctx.launch(
            "reduce::channel_sum",
            &params,
            &[(1, src), (2, dst)],
            (u(c), 1, 1),
        );
    }

    fn conv_params(g: &Conv2dGeom, images: usize, first: usize) -> [u32; 16] {
        [
            g.c_in, g.h, g.w, g.kh, g.kw, g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.out_h,
            g.out_w, images, first, 0, 0, 0,
        ]
        .map(u)
    }

    /// The parameter block of depthwise.wgsl for a window of `images` images (`run`: output
    /// pixels per partial sum of the weight gradient).
    fn depthwise_params(g: &Conv2dGeom, images: usize, run: usize) -> [u32; 16] {
        [
            g.c_in, g.h, g.w, g.kh, g.kw, g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.out_h,
            g.out_w, images, run, 0, 0, 0,
        ]
        .map(u)
    }

    /// Chunks of images (first, count) of `g`'s batch whose unfolded columns fit the budget.
    /// (A pointwise convolution unfolds nothing: one chunk.)
    fn conv_chunks(&self, g: &Conv2dGeom) -> Vec<(usize, usize)> {
        if g.is_pointwise() {
            return vec![(0, g.n)];
        }
        let per_image = g.patch_len() * g.out_h * g.out_w;
        let budget = COL_BUDGET.max(per_image).min(self.window);
        assert!(
            per_image <= budget,
            "one image's unfolded convolution input needs {per_image} values, more than this GPU \
             can bind; train::check_fits should have refused this image size"
        );
        let step = (budget / per_image).clamp(1, g.n.max(1));
        (0..g.n)
            .step_by(step)
            .map(|f| (f, step.min(g.n - f)))
            .collect()
    }

    fn im2col(
        &self,
        x: &wgpu::Buffer,
        g: &Conv2dGeom,
        (first, images): (usize, usize),
        col: &GpuTensor,
    ) {
        let n = images * g.patch_len() * g.out_h * g.out_w;
        let params = Self::conv_params(g, images, first);
        // four values per invocation (IM2COL_RUN in conv.wgsl)
        self.ctx.launch(
            "conv::im2col",
            &params,
            &[(1, x), (2, col.buf())],
            grid_1d(n.div_ceil(4)),
        );
    }

    /// The unfolded input of a chunk of images as (buffer, offset of the chunk's first column):
    /// `col`, filled by im2col, or for a pointwise convolution `x` itself, which needs none.
    fn unfolded<'a>(
        &self,
        x: &'a wgpu::Buffer,
        g: &Conv2dGeom,
        (first, images): (usize, usize),
        col: &'a Option<GpuTensor>,
    ) -> (&'a wgpu::Buffer, usize) {
        match col {
            Some(col) => {
                self.im2col(x, g, (first, images), col);
                (col.buf(), 0)
            }
            None => (x, first * g.c_in * g.h * g.w),
        }
    }

    /// A buffer for one chunk's unfolded input, or none for a pointwise convolution.
    fn col_buffer(&self, g: &Conv2dGeom, chunk_images: usize) -> Option<GpuTensor> {
        (!g.is_pointwise()).then(|| self.alloc([chunk_images * g.patch_len() * g.out_h * g.out_w]))
    }

    /// Forward convolution of one window: y = w ⊛ x + b, `g` with the window's batch.
    fn conv_forward_window(
        &self,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        g: &Conv2dGeom,
    ) {
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let chunks = self.conv_chunks(g);
        let col = self.col_buffer(g, chunks[0].1);
        for (first, images) in chunks {
            let (cols, b_off) = self.unfolded(x, g, (first, images), &col);
            // y[n] [Co × Q] = w [Co × K] · col[n] [K × Q]
            let gm = Gemm {
                m: g.c_out,
                n: q,
                k_hi: 1,
                k_lo: k,
                a_rs: k,
                a_klo: 1,
                b_off,
                b_cs: 1,
                b_klo: q,
                b_batch: k * q,
                c_off: first * g.c_out * q,
                c_rs: q,
                c_batch: g.c_out * q,
                batch: images,
                ..Default::default()
            };
            self.gemm(gm, w, cols, y);
        }
        let n = g.n * g.c_out * q;
        self.elementwise(
            "add_channel_bias",
            n,
            [u(g.c_out), u(q), 0, 0],
            [0.0; 2],
            &[(1, b), (3, y)],
        );
    }

    /// Input gradient of one window's convolution: dx = col2im(wᵀ · dy) (for a pointwise
    /// convolution the product is dx itself).
    fn conv_backward_input_window(
        &self,
        dy: &wgpu::Buffer,
        w: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        g: &Conv2dGeom,
    ) {
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let chunks = self.conv_chunks(g);
        let col = self.col_buffer(g, chunks[0].1);
        for (first, images) in chunks {
            let (dst, c_off) = match &col {
                Some(col) => (col.buf(), 0),
                None => (dx, first * k * q),
            };
            // dcol[n] [K × Q] = wᵀ [K × Co] · dy[n] [Co × Q]
            let gm = Gemm {
                m: k,
                n: q,
                k_hi: 1,
                k_lo: g.c_out,
                a_rs: 1,
                a_klo: k,
                b_off: first * g.c_out * q,
                b_cs: 1,
                b_klo: q,
                b_batch: g.c_out * q,
                c_off,
                c_rs: q,
                c_batch: k * q,
                batch: images,
                ..Default::default()
            };
            self.gemm(gm, w, dy, dst);
            if let Some(col) = &col {
                let n = images * g.c_in * g.h * g.w;
                let params = Self::conv_params(g, images, first);
                self.ctx.launch(
                    "conv::col2im",
                    &params,
                    &[(1, col.buf()), (2, dx)],
                    grid_1d(n),
                );
            }
        }
    }

    /// dw (+)= dy ⊛ x over one window's images (added to dw unless `window` is the batch's first).
    fn conv_backward_weight_window(
        &self,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dw: &GpuTensor,
        g: &Conv2dGeom,
        window: Window,
    ) {
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let chunks = self.conv_chunks(g);
        let col = self.col_buffer(g, chunks[0].1);
        // Each chunk is summed in `groups` independent partial products (more parallel work for
        // the GPU than one long sum), which are then added up.
        let max_groups = (1..=8)
            .rev()
            .find(|d| chunks[0].1.is_multiple_of(*d))
            .unwrap_or(1);
        let partials = self.alloc([max_groups * g.c_out * k]);
        for (i, (first, images)) in chunks.into_iter().enumerate() {
            let (cols, b_off) = self.unfolded(x, g, (first, images), &col);
            let groups = (1..=max_groups)
                .rev()
                .find(|d| images % d == 0)
                .unwrap_or(1);
            let per_group = images / groups;
            // partial[z] [Co × K] = Σ over its images n and pixels p of dy[n][co][p] · col[n][r][p]
            let gm = Gemm {
                m: g.c_out,
                n: k,
                k_hi: per_group,
                k_lo: q,
                a_off: first * g.c_out * q,
                a_rs: q,
                a_khi: g.c_out * q,
                a_klo: 1,
                a_batch: per_group * g.c_out * q,
                b_off,
                b_cs: q,
                b_khi: k * q,
                b_klo: 1,
                b_batch: per_group * k * q,
                c_rs: k,
                c_batch: g.c_out * k,
                batch: groups,
                ..Default::default()
            };
            self.gemm(gm, dy, cols, partials.buf());
            let accumulate = i > 0 || !window.is_first();
            let params = [u(groups), u(g.c_out * k), 0, accumulate as u32];
            let n = g.c_out * k;
            self.ctx.launch(
                "reduce::sum_leading",
                &params,
                &[(1, partials.buf()), (2, dw.buf())],
                grid_1d(n),
            );
        }
    }

    fn bn_params(x: &GpuTensor, window: Window, eps: f32) -> [u32; 8] {
        let (n, c, h, w) = x.shape.nchw();
        let flags = u32::from(!window.is_first()) | (u32::from(window.last) << 1);
        [
            u(window.count),
            u(c),
            u(h * w),
            flags,
            eps.to_bits(),
            u(n * h * w),
            0,
            0,
        ]
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
        let y = self.alloc(g.output_shape());
        let (w, b) = (self.whole(w), self.whole(b));
        self.per_window(g.n, &[x], &[&y], |win, i, o| {
            self.conv_forward_window(i[0], w, b, o[0], &g.with_batch(win.count));
        });
        y
    }

    fn conv2d_backward_input(&self, dy: &GpuTensor, w: &GpuTensor, g: &Conv2dGeom) -> GpuTensor {
        let dx = self.alloc(g.input_shape());
        let w = self.whole(w);
        self.per_window(g.n, &[dy], &[&dx], |win, i, o| {
            self.conv_backward_input_window(i[0], w, o[0], &g.with_batch(win.count));
        });
        dx
    }

    fn conv2d_backward_weight(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeom,
    ) -> (GpuTensor, GpuTensor) {
        let dw = self.alloc(g.weight_shape());
        let db = self.alloc([g.c_out]);
        let q = g.out_h * g.out_w;
        self.per_window(g.n, &[x, dy], &[], |win, i, _| {
            self.conv_backward_weight_window(i[0], i[1], &dw, &g.with_batch(win.count), win);
            self.channel_sum(i[1], db.buf(), (win.count, g.c_out, q), !win.is_first());
        });
        (dw, db)
    }

    fn depthwise_conv2d_forward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        b: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        let y = self.alloc(g.output_shape());
        let (w, b) = (self.whole(w), self.whole(b));
        self.per_window(g.n, &[x], &[&y], |win, i, o| {
            let params = Self::depthwise_params(g, win.count, 0);
            let len = win.count * g.c_in * g.out_h * g.out_w;
            let bind = [(1, i[0]), (2, w), (3, b), (4, o[0])];
            self.ctx
                .launch("depthwise::forward", &params, &bind, grid_1d(len));
        });
        y
    }

    fn depthwise_conv2d_backward_input(
        &self,
        dy: &GpuTensor,
        w: &GpuTensor,
        g: &Conv2dGeom,
    ) -> GpuTensor {
        let dx = self.alloc(g.input_shape());
        let w = self.whole(w);
        self.per_window(g.n, &[dy], &[&dx], |win, i, o| {
            let params = Self::depthwise_params(g, win.count, 0);
            let len = win.count * g.c_in * g.h * g.w;
            let bind = [(1, i[0]), (2, w), (4, o[0])];
            self.ctx
                .launch("depthwise::backward_input", &params, &bind, grid_1d(len));
        });
        dx
    }

    fn depthwise_conv2d_backward_weight(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeom,
    ) -> (GpuTensor, GpuTensor) {
        let dw = self.alloc(g.depthwise_weight_shape());
        let db = self.alloc([g.c_in]);
        let (q, weights) = (g.out_h * g.out_w, g.c_in * g.kh * g.kw);
        // output pixels per partial sum: DEPTHWISE_RUN, or more where the partial sums of all
        // weights would not fit one binding
        let run = DEPTHWISE_RUN.max((g.n * q).div_ceil((self.window / weights).max(1)));
        let runs = |images: usize| (images * q).div_ceil(run);
        let partials = self.alloc([runs(g.n) * weights]);
        let partials = self.whole(&partials);
        self.per_window(g.n, &[x, dy], &[], |win, i, _| {
            let params = Self::depthwise_params(g, win.count, run);
            let runs = runs(win.count);
            let bind = [(1, i[0]), (4, partials), (5, i[1])];
            self.ctx.launch(
                "depthwise::backward_weight",
                &params,
                &bind,
                grid_1d(runs * weights),
            );
            let sum = [u(runs), u(weights), 0, u32::from(!win.is_first())];
            self.ctx.launch(
                "reduce::sum_leading",
                &sum,
                &[(1, partials), (2, dw.buf())],
                grid_1d(weights),
            );
            self.channel_sum(i[1], db.buf(), (win.count, g.c_in, q), !win.is_first());
        });
        (dw, db)
    }

    fn batchnorm_forward_train(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
    ) -> (GpuTensor, BatchNormStats<GpuTensor>) {
        let (n, c, _, _) = x.shape.nchw();
        // packed = [mean | var | inv_std], built in two passes over the batch
        let packed = self.alloc([3 * c]);
        for pass in ["batchnorm::stats_sum", "batchnorm::stats_var"] {
            self.per_window(n, &[x], &[], |win, i, _| {
                let params = Self::bn_params(x, win, eps);
                let bind = [(1, i[0]), (8, packed.buf())];
                self.ctx.launch(pass, &params, &bind, (u(c), 1, 1));
            });
        }
        let part = |i: u64| {
            let t = self.alloc([c]);
            self.ctx
                .copy(packed.buf(), i * 4 * c as u64, t.buf(), 0, 4 * c as u64);
            t
        };
        let stats = BatchNormStats {
            mean: part(0),
            var: part(1),
            inv_std: part(2),
        };
        let y = self.batchnorm_forward_infer(x, gamma, beta, &stats.mean, &stats.var, eps);
        (y, stats)
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
        let (n, c, h, w) = x.shape.nchw();
        let y = self.alloc(x.shape.clone());
        let per_channel = [gamma, beta, mean, var].map(|t| self.whole(t));
        self.per_window(n, &[x], &[&y], |win, i, o| {
            let params = Self::bn_params(x, win, eps);
            let bind = [
                (1, i[0]),
                (3, per_channel[0]),
                (4, per_channel[1]),
                (5, per_channel[2]),
                (6, per_channel[3]),
                (7, o[0]),
            ];
            let len = win.count * c * h * w;
            self.ctx
                .launch("batchnorm::normalize", &params, &bind, grid_1d(len));
        });
        y
    }

    fn batchnorm_backward(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        gamma: &GpuTensor,
        stats: &BatchNormStats<GpuTensor>,
    ) -> (GpuTensor, GpuTensor, GpuTensor) {
        let (n, c, h, w) = x.shape.nchw();
        let sums = self.alloc([2 * c]);
        let (mean, inv_std, gamma) = (
            self.whole(&stats.mean),
            self.whole(&stats.inv_std),
            self.whole(gamma),
        );
        self.per_window(n, &[x, dy], &[], |win, i, _| {
            let params = Self::bn_params(x, win, 0.0);
            let bind = [
                (1, i[0]),
                (2, i[1]),
                (5, mean),
                (6, inv_std),
                (8, sums.buf()),
            ];
            self.ctx
                .launch("batchnorm::backward_reduce", &params, &bind, (u(c), 1, 1));
        });
        let dx = self.alloc(x.shape.clone());
        self.per_window(n, &[x, dy], &[&dx], |win, i, o| {
            let params = Self::bn_params(x, win, 0.0);
            let bind = [
                (1, i[0]),
                (2, i[1]),
                (3, gamma),
                (5, mean),
                (6, inv_std),
                (7, o[0]),
                (8, sums.buf()),
            ];
            let len = win.count * c * h * w;
            self.ctx
                .launch("batchnorm::backward_dx", &params, &bind, grid_1d(len));
        });
        let (dgamma, dbeta) = (self.alloc([c]), self.alloc([c]));
        self.ctx.copy(sums.buf(), 0, dbeta.buf(), 0, 4 * c as u64);
        self.ctx
            .copy(sums.buf(), 4 * c as u64, dgamma.buf(), 0, 4 * c as u64);
        (dx, dgamma, dbeta)
    }

    fn ema_update(&self, running: &mut GpuTensor, batch: &GpuTensor, momentum: f32, scale: f32) {
        let n = running.len();
        self.elementwise(
            "ema",
            n,
            [0; 4],
            [momentum, scale],
            &[(1, self.whole(batch)), (3, self.whole(running))],
        );
    }

    fn maxpool_forward(&self, x: &GpuTensor, g: &Pool2dGeom) -> (GpuTensor, GpuTensor) {
        let y = self.alloc(g.output_shape());
        let idx = self.alloc(g.output_shape());
        self.per_window(g.n, &[x], &[&y, &idx], |win, i, o| {
            let g = g.with_batch(win.count);
            let bind = [(1, i[0]), (2, o[1]), (3, o[0])];
            let len = g.n * g.c * g.out_h * g.out_w;
            self.ctx
                .launch("pool::forward", &pool_params(&g), &bind, grid_1d(len));
        });
        (y, idx)
    }
    fn maxpool_backward(&self, dy: &GpuTensor, argmax: &GpuTensor, g: &Pool2dGeom) -> GpuTensor {
        let dx = self.alloc(g.input_shape());
        self.per_window(g.n, &[dy, argmax], &[&dx], |win, i, o| {
            let g = g.with_batch(win.count);
            let bind = [(1, i[0]), (2, i[1]), (3, o[0])];
            let len = g.n * g.c * g.h * g.w;
            self.ctx
                .launch("pool::backward", &pool_params(&g), &bind, grid_1d(len));
        });
        dx
    }

    fn global_avgpool_forward(&self, x: &GpuTensor) -> GpuTensor {
        let (n, c, h, w) = x.shape.nchw();
        let y = self.alloc([n, c]);
        self.per_window(n, &[x], &[&y], |win, i, o| {
            let g = Pool2dGeom::new(win.count, c, h, w, (h, w), (h, w)).expect("the whole plane");
            let bind = [(1, i[0]), (3, o[0])];
            let params = pool_params(&g);
            self.ctx.launch(
                "pool::global_avg_forward",
                &params,
                &bind,
                grid_1d(win.count * c),
            );
        });
        y
    }
    fn global_avgpool_backward(&self, dy: &GpuTensor, (h, w): (usize, usize)) -> GpuTensor {
        let (n, c) = (dy.shape.dims()[0], dy.shape.dims()[1]);
        let dx = self.alloc([n, c, h, w]);
        self.per_window(n, &[dy], &[&dx], |win, i, o| {
            let g = Pool2dGeom::new(win.count, c, h, w, (h, w), (h, w)).expect("the whole plane");
            let bind = [(1, i[0]), (3, o[0])];
            let params = pool_params(&g);
            self.ctx.launch(
                "pool::global_avg_backward",
                &params,
                &bind,
                grid_1d(win.count * c * h * w),
            );
        });
        dx
    }

    fn dense_forward(&self, x: &GpuTensor, w: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], w.shape.dims()[0]);
        let y = self.alloc([n, o]);
        let (w, b) = (self.whole(w), self.whole(b));
        self.per_window(n, &[x], &[&y], |win, xs, ys| {
            // y [N × O] = x [N × I] · wᵀ [I × O]
            let gm = Gemm::matmul(win.count, o, i, (i, 1), (1, i));
            self.gemm(gm, xs[0], w, ys[0]);
            self.elementwise(
                "add_channel_bias",
                win.count * o,
                [u(o), 1, 0, 0],
                [0.0; 2],
                &[(1, b), (3, ys[0])],
            );
        });
        y
    }
    fn dense_backward_input(&self, dy: &GpuTensor, w: &GpuTensor) -> GpuTensor {
        let (n, o, i) = (dy.shape.dims()[0], w.shape.dims()[0], w.shape.dims()[1]);
        let dx = self.alloc([n, i]);
        let w = self.whole(w);
        self.per_window(n, &[dy], &[&dx], |win, dys, dxs| {
            // dx [N × I] = dy [N × O] · w [O × I]
            let gm = Gemm::matmul(win.count, i, o, (o, 1), (i, 1));
            self.gemm(gm, dys[0], w, dxs[0]);
        });
        dx
    }
    fn dense_backward_weight(&self, x: &GpuTensor, dy: &GpuTensor) -> (GpuTensor, GpuTensor) {
        let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], dy.shape.dims()[1]);
        let (dw, db) = (self.alloc([o, i]), self.alloc([o]));
        self.per_window(n, &[x, dy], &[], |win, t, _| {
            // dw [O × I] (+)= dyᵀ [O × N] · x [N × I]
            let gm = Gemm {
                accumulate: !win.is_first(),
                ..Gemm::matmul(o, i, win.count, (1, o), (i, 1))
            };
            self.gemm(gm, t[1], t[0], dw.buf());
            self.channel_sum(t[1], db.buf(), (win.count, o, 1), !win.is_first());
        });
        (dw, db)
    }

    fn add(&self, a: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        assert_eq!(a.shape, b.shape, "add of two shapes");
        let y = self.alloc(a.shape.clone());
        self.per_window(a.shape.dims()[0], &[a, b], &[&y], |win, i, o| {
            let len = win.count * a.len() / a.shape.dims()[0];
            let bind = [(1, i[0]), (2, i[1]), (3, o[0])];
            self.elementwise("add", len, [0; 4], [0.0; 2], &bind);
        });
        y
    }
    fn copy(&self, x: &GpuTensor) -> GpuTensor {
        let y = self.alloc(x.shape.clone());
        self.per_window(x.shape.dims()[0], &[x], &[&y], |win, i, o| {
            let len = win.count * x.len() / x.shape.dims()[0];
            self.elementwise("copy", len, [0; 4], [0.0; 2], &[(1, i[0]), (3, o[0])]);
        });
        y
    }
    fn relu_forward(&self, x: &GpuTensor) -> GpuTensor {
        let y = self.alloc(x.shape.clone());
        self.per_window(x.shape.dims()[0], &[x], &[&y], |win, i, o| {
            let len = win.count * x.len() / x.shape.dims()[0];
            self.elementwise(
                "relu_forward",
                len,
                [0; 4],
                [0.0; 2],
                &[(1, i[0]), (3, o[0])],
            );
        });
        y
    }
    fn relu_backward(&self, x: &GpuTensor, dy: &GpuTensor) -> GpuTensor {
        let dx = self.alloc(x.shape.clone());
        self.per_window(x.shape.dims()[0], &[x, dy], &[&dx], |win, i, o| {
            let len = win.count * x.len() / x.shape.dims()[0];
            let bind = [(1, i[0]), (2, i[1]), (3, o[0])];
            self.elementwise("relu_backward", len, [0; 4], [0.0; 2], &bind);
        });
        dx
    }
    fn dropout_forward(&self, x: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
        let y = self.alloc(x.shape.clone());
        let key = super::hash::key(seed);
        let per_image = x.len() / x.shape.dims()[0];
        self.per_window(x.shape.dims()[0], &[x], &[&y], |win, i, o| {
            // the mask of element e of the whole tensor is uniform(key, e), whatever the window
            let extra = [0, 0, key, u(win.first * per_image)];
            let bind = [(1, i[0]), (3, o[0])];
            self.elementwise("dropout", win.count * per_image, extra, [p, 0.0], &bind);
        });
        y
    }
    fn dropout_backward(&self, dy: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
        self.dropout_forward(dy, p, seed)
    }

    fn bce_with_logits(
        &self,
        logits: &GpuTensor,
        targets: &GpuTensor,
        pos_weight: f32,
    ) -> (GpuTensor, GpuTensor) {
        let grad = self.alloc(logits.shape.clone());
        let loss = self.alloc([1]);
        let params = [u(logits.len()), pos_weight.to_bits(), 0, 0];
        let bind = [
            (1, self.whole(logits)),
            (2, self.whole(targets)),
            (3, grad.buf()),
            (4, loss.buf()),
        ];
        self.ctx
            .launch("loss::bce_with_logits", &params, &bind, (1, 1, 1));
        (loss, grad)
    }

    fn adam_step(
        &self,
        p: &mut GpuTensor,
        g: &GpuTensor,
        m: &mut GpuTensor,
        v: &mut GpuTensor,
        h: &AdamStep,
    ) {
        let bc1 = 1.0 - h.beta1.powi(h.t as i32);
        let bc2 = 1.0 - h.beta2.powi(h.t as i32);
        let f = [h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, bc1, bc2];
        self.optim("adam", p, g, m, Some(v), f);
    }
    fn sgd_step(&self, p: &mut GpuTensor, g: &GpuTensor, velocity: &mut GpuTensor, h: &SgdStep) {
        let f = [h.lr, h.momentum, 0.0, 0.0, h.weight_decay, 1.0, 1.0];
        self.optim("sgd", p, g, velocity, None, f);
    }

    fn squared_norms(&self, ts: &[&GpuTensor]) -> Vec<f32> {
        let sums = self.alloc([ts.len().max(1)]);
        for (i, t) in ts.iter().enumerate() {
            let params = [u(t.len()), u(i), 0, 0];
            let bind = [(1, self.whole(t)), (2, sums.buf())];
            self.ctx
                .launch("reduce::sum_squares", &params, &bind, (1, 1, 1));
        }
        let mut out = self.download(&sums).data;
        out.truncate(ts.len());
        out
    }
    fn scale(&self, t: &mut GpuTensor, s: f32) {
        let bind = [(3, self.whole(t))];
        self.elementwise("scale", t.len(), [0; 4], [s, 0.0], &bind);
    }
}

impl Gpu {
    fn optim(
        &self,
        entry: &str,
        p: &GpuTensor,
        g: &GpuTensor,
        a: &GpuTensor,
        b: Option<&GpuTensor>,
        f: [f32; 7],
    ) {
        let mut params = vec![u(p.len())];
        params.extend(f.iter().map(|v| v.to_bits()));
        let mut bind = vec![(1, self.whole(g)), (2, self.whole(p)), (3, self.whole(a))];
        if let Some(b) = b {
            bind.push((4, self.whole(b)));
        }
        self.ctx
            .launch(&format!("optim::{entry}"), &params, &bind, grid_1d(p.len()));
    }
}

fn buffers<'a>(ts: &[&'a GpuTensor]) -> Vec<&'a wgpu::Buffer> {
    ts.iter().map(|t| t.buf()).collect()
}

fn pool_params(g: &Pool2dGeom) -> [u32; 12] {
    [
        g.n * g.c,
        g.h,
        g.w,
        g.kh,
        g.kw,
        g.stride_h,
        g.stride_w,
        g.out_h,
        g.out_w,
        0,
        0,
        0,
    ]
    .map(u)
}
