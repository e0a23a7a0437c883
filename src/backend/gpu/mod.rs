//! The GPU backend: the same ops as the CPU backend, as WGSL compute shaders (`shaders/`) run by
//! wgpu on Vulkan, Metal, DX12 or OpenGL. Tensors are GPU buffers that stay on the device between
//! layers and between steps; launches are recorded into one command encoder and submitted when
//! the host needs a value (the loss, the logits for the metrics) or a batch is uploaded.

mod context;

pub use context::Context;

use self::context::{grid_1d, Binding};
use super::{AdamStep, Backend, BatchNormStats, Conv2dGeom, Pool2dGeom, SgdStep};
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

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("a GPU index beyond 32 bits")
}

impl Gpu {
    /// Opens the default adapter and compiles every kernel.
    pub fn new() -> Result<Gpu> {
        Ok(Gpu {
            ctx: Context::new()?,
        })
    }
    pub fn from_context(ctx: Arc<Context>) -> Gpu {
        Gpu { ctx }
    }
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.ctx.info
    }

    fn alloc(&self, shape: impl Into<Shape>) -> GpuTensor {
        let shape = shape.into();
        let n = shape.numel();
        assert!(
            n <= self.ctx.max_binding_floats(),
            "a tensor of shape {shape} ({} MiB) exceeds what this GPU can bind ({} MiB): \
             lower --batch-size or --image-size",
            (n * 4) >> 20,
            (self.ctx.max_binding_floats() * 4) >> 20
        );
        GpuTensor {
            buf: Some(self.ctx.take_buffer(4 * n as u64)),
            shape,
            ctx: self.ctx.clone(),
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
        let kernel = if g.b_cs == 1 && aligned {
            "gemm::gemm_vec4b"
        } else {
            "gemm::gemm"
        };
        // B is bound twice (as f32s and as vec4s); each variant reads through one of them.
        self.ctx
            .launch(kernel, &params, &[(1, a), (2, b), (3, c), (4, b)], groups);
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

    /// dst[c] = Σ over n, q of src[n, c, q] for an [N, C, Q] view.
    fn channel_sum(&self, src: &GpuTensor, n: usize, c: usize, q: usize) -> GpuTensor {
        let dst = self.alloc([c]);
        let params = [u(n), u(c), u(q), 0];
        self.ctx.launch(
            "reduce::channel_sum",
            &params,
            &[(1, src.buf()), (2, dst.buf())],
            (u(c), 1, 1),
        );
        dst
    }

    fn conv_params(g: &Conv2dGeom, images: usize, first: usize) -> [u32; 16] {
        [
            g.c_in, g.h, g.w, g.kh, g.kw, g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.out_h,
            g.out_w, images, first, 0, 0, 0,
        ]
        .map(u)
    }

    /// Chunks of images (first, count) whose unfolded columns fit the budget.
    fn conv_chunks(&self, g: &Conv2dGeom) -> Vec<(usize, usize)> {
        let per_image = g.patch_len() * g.out_h * g.out_w;
        let budget = COL_BUDGET.min(self.ctx.max_binding_floats());
        assert!(
            per_image <= budget,
            "one image's unfolded convolution input needs {per_image} values, more than this GPU \
             can bind: lower --image-size"
        );
        let step = (budget / per_image).clamp(1, g.n.max(1));
        (0..g.n)
            .step_by(step)
            .map(|f| (f, step.min(g.n - f)))
            .collect()
    }

    fn im2col(&self, x: &GpuTensor, g: &Conv2dGeom, first: usize, images: usize, col: &GpuTensor) {
        let n = images * g.patch_len() * g.out_h * g.out_w;
        let params = Self::conv_params(g, images, first);
        self.ctx.launch(
            "conv::im2col",
            &params,
            &[(1, x.buf()), (2, col.buf())],
            grid_1d(n),
        );
    }
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Indices = GpuTensor;

    fn name(&self) -> String {
        let i = &self.ctx.info;
        format!("gpu ({}, {:?}, {})", i.name, i.backend, i.driver_info)
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
    fn max_tensor_len(&self) -> Option<usize> {
        Some(self.ctx.max_binding_floats())
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
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let y = self.alloc(g.output_shape());
        let chunks = self.conv_chunks(g);
        let col = self.alloc([chunks[0].1 * k * q]);
        for (first, images) in chunks {
            self.im2col(x, g, first, images, &col);
            // y[n] [Co × Q] = w [Co × K] · col[n] [K × Q]
            let gm = Gemm {
                m: g.c_out,
                n: q,
                k_hi: 1,
                k_lo: k,
                a_rs: k,
                a_klo: 1,
                b_cs: 1,
                b_klo: q,
                b_batch: k * q,
                c_off: first * g.c_out * q,
                c_rs: q,
                c_batch: g.c_out * q,
                batch: images,
                ..Default::default()
            };
            self.gemm(gm, w.buf(), col.buf(), y.buf());
        }
        let n = y.len();
        self.elementwise(
            "add_channel_bias",
            n,
            [u(g.c_out), u(q), 0, 0],
            [0.0; 2],
            &[(1, b.buf()), (3, y.buf())],
        );
        y
    }

    fn conv2d_backward_input(&self, dy: &GpuTensor, w: &GpuTensor, g: &Conv2dGeom) -> GpuTensor {
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let dx = self.alloc(g.input_shape());
        let chunks = self.conv_chunks(g);
        let col = self.alloc([chunks[0].1 * k * q]);
        for (first, images) in chunks {
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
                c_rs: q,
                c_batch: k * q,
                batch: images,
                ..Default::default()
            };
            self.gemm(gm, w.buf(), dy.buf(), col.buf());
            let n = images * g.c_in * g.h * g.w;
            let params = Self::conv_params(g, images, first);
            self.ctx.launch(
                "conv::col2im",
                &params,
                &[(1, col.buf()), (2, dx.buf())],
                grid_1d(n),
            );
        }
        dx
    }

    fn conv2d_backward_weight(
        &self,
        x: &GpuTensor,
        dy: &GpuTensor,
        g: &Conv2dGeom,
    ) -> (GpuTensor, GpuTensor) {
        let (k, q) = (g.patch_len(), g.out_h * g.out_w);
        let dw = self.alloc(g.weight_shape());
        let chunks = self.conv_chunks(g);
        let col = self.alloc([chunks[0].1 * k * q]);
        // Each chunk is summed in `groups` independent partial products (more parallel work for
        // the GPU than one long sum), which are then added up.
        let max_groups = (1..=8)
            .rev()
            .find(|d| chunks[0].1.is_multiple_of(*d))
            .unwrap_or(1);
        let partials = self.alloc([max_groups * g.c_out * k]);
        for (i, (first, images)) in chunks.into_iter().enumerate() {
            self.im2col(x, g, first, images, &col);
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
                b_cs: q,
                b_khi: k * q,
                b_klo: 1,
                b_batch: per_group * k * q,
                c_rs: k,
                c_batch: g.c_out * k,
                batch: groups,
                ..Default::default()
            };
            self.gemm(gm, dy.buf(), col.buf(), partials.buf());
            let params = [u(groups), u(g.c_out * k), 0, (i > 0) as u32];
            let n = g.c_out * k;
            self.ctx.launch(
                "reduce::sum_leading",
                &params,
                &[(1, partials.buf()), (2, dw.buf())],
                grid_1d(n),
            );
        }
        let db = self.channel_sum(dy, g.n, g.c_out, q);
        (dw, db)
    }

    fn batchnorm_forward_train(
        &self,
        x: &GpuTensor,
        gamma: &GpuTensor,
        beta: &GpuTensor,
        eps: f32,
    ) -> (GpuTensor, BatchNormStats<GpuTensor>) {
        let (n, c, h, w) = x.shape.nchw();
        let params = [u(n), u(c), u(h * w), 0, eps.to_bits(), 0, 0, 0];
        let packed = self.alloc([3 * c]);
        self.ctx.launch(
            "batchnorm::stats",
            &params,
            &[(1, x.buf()), (7, packed.buf())],
            (u(c), 1, 1),
        );
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
        let params = [u(n), u(c), u(h * w), 0, eps.to_bits(), 0, 0, 0];
        let bind = [
            (1, x.buf()),
            (3, gamma.buf()),
            (4, beta.buf()),
            (5, mean.buf()),
            (6, var.buf()),
            (7, y.buf()),
        ];
        self.ctx
            .launch("batchnorm::normalize", &params, &bind, grid_1d(y.len()));
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
        let params = [u(n), u(c), u(h * w), 0, 0, 0, 0, 0];
        let sums = self.alloc([2 * c]);
        let (mean, inv_std) = (stats.mean.buf(), stats.inv_std.buf());
        let bind = [
            (1, x.buf()),
            (2, dy.buf()),
            (5, mean),
            (6, inv_std),
            (8, sums.buf()),
        ];
        self.ctx
            .launch("batchnorm::backward_reduce", &params, &bind, (u(c), 1, 1));
        let dx = self.alloc(x.shape.clone());
        let bind = [
            (1, x.buf()),
            (2, dy.buf()),
            (3, gamma.buf()),
            (5, mean),
            (6, inv_std),
            (7, dx.buf()),
            (8, sums.buf()),
        ];
        self.ctx
            .launch("batchnorm::backward_dx", &params, &bind, grid_1d(dx.len()));
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
            &[(1, batch.buf()), (3, running.buf())],
        );
    }

    fn maxpool_forward(&self, x: &GpuTensor, g: &Pool2dGeom) -> (GpuTensor, GpuTensor) {
        let y = self.alloc(g.output_shape());
        let idx = self.alloc(g.output_shape());
        let params = pool_params(g);
        let bind = [(1, x.buf()), (2, idx.buf()), (3, y.buf())];
        self.ctx
            .launch("pool::forward", &params, &bind, grid_1d(y.len()));
        (y, idx)
    }
    fn maxpool_backward(&self, dy: &GpuTensor, argmax: &GpuTensor, g: &Pool2dGeom) -> GpuTensor {
        let dx = self.alloc(g.input_shape());
        let bind = [(1, dy.buf()), (2, argmax.buf()), (3, dx.buf())];
        self.ctx
            .launch("pool::backward", &pool_params(g), &bind, grid_1d(dx.len()));
        dx
    }

    fn dense_forward(&self, x: &GpuTensor, w: &GpuTensor, b: &GpuTensor) -> GpuTensor {
        let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], w.shape.dims()[0]);
        let y = self.alloc([n, o]);
        // y [N × O] = x [N × I] · wᵀ [I × O]
        let gm = Gemm::matmul(n, o, i, (i, 1), (1, i));
        self.gemm(gm, x.buf(), w.buf(), y.buf());
        self.elementwise(
            "add_channel_bias",
            n * o,
            [u(o), 1, 0, 0],
            [0.0; 2],
            &[(1, b.buf()), (3, y.buf())],
        );
        y
    }
    fn dense_backward_input(&self, dy: &GpuTensor, w: &GpuTensor) -> GpuTensor {
        let (n, o, i) = (dy.shape.dims()[0], w.shape.dims()[0], w.shape.dims()[1]);
        let dx = self.alloc([n, i]);
        // dx [N × I] = dy [N × O] · w [O × I]
        let gm = Gemm::matmul(n, i, o, (o, 1), (i, 1));
        self.gemm(gm, dy.buf(), w.buf(), dx.buf());
        dx
    }
    fn dense_backward_weight(&self, x: &GpuTensor, dy: &GpuTensor) -> (GpuTensor, GpuTensor) {
        let (n, i, o) = (x.shape.dims()[0], x.shape.dims()[1], dy.shape.dims()[1]);
        let dw = self.alloc([o, i]);
        // dw [O × I] = dyᵀ [O × N] · x [N × I]
        let gm = Gemm::matmul(o, i, n, (1, o), (i, 1));
        self.gemm(gm, dy.buf(), x.buf(), dw.buf());
        let db = self.channel_sum(dy, n, o, 1);
        (dw, db)
    }

    fn relu_forward(&self, x: &GpuTensor) -> GpuTensor {
        let y = self.alloc(x.shape.clone());
        self.elementwise(
            "relu_forward",
            x.len(),
            [0; 4],
            [0.0; 2],
            &[(1, x.buf()), (3, y.buf())],
        );
        y
    }
    fn relu_backward(&self, x: &GpuTensor, dy: &GpuTensor) -> GpuTensor {
        let dx = self.alloc(x.shape.clone());
        self.elementwise(
            "relu_backward",
            x.len(),
            [0; 4],
            [0.0; 2],
            &[(1, x.buf()), (2, dy.buf()), (3, dx.buf())],
        );
        dx
    }
    fn dropout_forward(&self, x: &GpuTensor, p: f32, seed: u64) -> GpuTensor {
        let y = self.alloc(x.shape.clone());
        let key = super::hash::key(seed);
        self.elementwise(
            "dropout",
            x.len(),
            [0, 0, key, 0],
            [p, 0.0],
            &[(1, x.buf()), (3, y.buf())],
        );
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
            (1, logits.buf()),
            (2, targets.buf()),
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
        let mut bind = vec![(1, g.buf()), (2, p.buf()), (3, a.buf())];
        if let Some(b) = b {
            bind.push((4, b.buf()));
        }
        self.ctx
            .launch(&format!("optim::{entry}"), &params, &bind, grid_1d(p.len()));
    }
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
