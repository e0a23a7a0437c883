//! Convolution on the GPU (`shaders/conv.wgsl`), as on the CPU (`cpu/conv.rs`): im2col + GEMM
//! forward, GEMM + col2im for the input gradient, and for the weight gradient GEMMs summed over
//! groups of images, in chunks of images whose unfolded columns fit the budget.

use super::context::grid_1d;
use super::gemm::{gemm, gemm_with_epilogue, Epilogue, Gemm};
use super::params::{u, wgsl_params};
use super::{reduce, Gpu, GpuTensor, Window};
use crate::backend::{Conv2dGeom, Pool2dGeom};

wgsl_params!(
    /// `conv.wgsl`'s parameter block: the geometry, and the window's images from `first`.
    Params {
        c_in: u32, h: u32, w: u32, kh: u32,
        kw: u32, sh: u32, sw: u32, pt: u32,
        pl: u32, oh: u32, ow: u32, images: u32,
        first: u32, pooled: u32, pad1: u32, pad2: u32,
    }
);

/// Values of one unfolded chunk of images at most (keeps `col` well under binding limits).
const COL_BUDGET: usize = 1 << 24;

fn params(g: &Conv2dGeom, images: usize, first: usize) -> Params {
    Params {
        c_in: u(g.c_in),
        h: u(g.h),
        w: u(g.w),
        kh: u(g.kh),
        kw: u(g.kw),
        sh: u(g.stride_h),
        sw: u(g.stride_w),
        pt: u(g.pad_top),
        pl: u(g.pad_left),
        oh: u(g.out_h),
        ow: u(g.out_w),
        images: u(images),
        first: u(first),
        ..Params::default()
    }
}

/// `y[N,Co,Ho,Wo]` = conv(`x[N,Ci,H,W]`, `w[Co,Ci,KH,KW]`) + `b[Co]`
pub(super) fn forward(
    gpu: &Gpu,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    g: &Conv2dGeom,
    relu: bool,
) -> GpuTensor {
    let y = gpu.alloc(g.output_shape());
    forward_windows(gpu, x, (w, b), g, (relu, false), y)
}

/// The convolution (with its ReLU when `relu`) then the max pooling `p` over its output, for
/// inference, when `p` is a 2×2 window at stride 2: the columns are unfolded window by window
/// and the product stores only each window's maximum, so the full-size output is never written.
/// `None` for another pooling and for a pointwise convolution (which unfolds nothing).
pub(super) fn forward_maxpool(
    gpu: &Gpu,
    x: &GpuTensor,
    (w, b): (&GpuTensor, &GpuTensor),
    g: &Conv2dGeom,
    relu: bool,
    p: &Pool2dGeom,
) -> Option<GpuTensor> {
    let halving = (p.kh, p.kw, p.stride_h, p.stride_w) == (2, 2, 2, 2)
        && (p.out_h, p.out_w) == (g.out_h / 2, g.out_w / 2);
    if !halving || g.is_pointwise() || p.out_h * p.out_w == 0 {
        return None;
    }
    let y = gpu.alloc([g.n, g.c_out, p.out_h, p.out_w]);
    Some(forward_windows(gpu, x, (w, b), g, (relu, true), y))
}

/// `y`, filled window by window by [`forward_window`].
fn forward_windows(
    gpu: &Gpu,
    x: &GpuTensor,
    (w, b): (&GpuTensor, &GpuTensor),
    g: &Conv2dGeom,
    relu_pooled: (bool, bool),
    y: GpuTensor,
) -> GpuTensor {
    let (w, b) = (gpu.whole(w), gpu.whole(b));
    gpu.per_window(g.n, &[x], &[&y], |win, i, o| {
        let g = g.with_batch(win.count);
        forward_window(gpu, i[0], (w, b), o[0], &g, relu_pooled);
    });
    y
}

/// `dx[N,Ci,H,W]` from `dy[N,Co,Ho,Wo]` and `w[Co,Ci,KH,KW]`
pub(super) fn backward_input(
    gpu: &Gpu,
    dy: &GpuTensor,
    w: &GpuTensor,
    g: &Conv2dGeom,
) -> GpuTensor {
    let dx = gpu.alloc(g.input_shape());
    let w = gpu.whole(w);
    gpu.per_window(g.n, &[dy], &[&dx], |win, i, o| {
        backward_input_window(gpu, i[0], w, o[0], &g.with_batch(win.count));
    });
    dx
}

/// (`dw[Co,Ci,KH,KW]`, `db[Co]`) from `x[N,Ci,H,W]` and `dy[N,Co,Ho,Wo]`
pub(super) fn backward_weight(
    gpu: &Gpu,
    x: &GpuTensor,
    dy: &GpuTensor,
    g: &Conv2dGeom,
) -> (GpuTensor, GpuTensor) {
    let dw = gpu.alloc(g.weight_shape());
    let db = gpu.alloc([g.c_out]);
    let q = g.out_h * g.out_w;
    gpu.per_window(g.n, &[x, dy], &[], |win, i, _| {
        backward_weight_window(gpu, i[0], i[1], &dw, &g.with_batch(win.count), win);
        reduce::channel_sum(
            gpu,
            i[1],
            db.buf(),
            (win.count, g.c_out, q),
            !win.is_first(),
        );
    });
    (dw, db)
}

/// Chunks of images (first, count) of `g`'s batch whose unfolded columns fit the budget.
/// (A pointwise convolution unfolds nothing: one chunk.)
fn chunks(gpu: &Gpu, g: &Conv2dGeom) -> Vec<(usize, usize)> {
    if g.is_pointwise() {
        return vec![(0, g.n)];
    }
    let per_image = g.patch_len() * g.out_h * g.out_w;
    let budget = COL_BUDGET.max(per_image).min(gpu.window);
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

/// Columns of one image's unfolded input: its output pixels, or with `pooled` those that a 2×2
/// pooling at stride 2 reads, window by window (`conv.wgsl`).
fn columns(g: &Conv2dGeom, pooled: bool) -> usize {
    if pooled {
        4 * (g.out_h / 2) * (g.out_w / 2)
    } else {
        g.out_h * g.out_w
    }
}

fn im2col(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    g: &Conv2dGeom,
    (first, images): (usize, usize),
    (col, pooled): (&GpuTensor, bool),
) {
    let n = images * g.patch_len() * columns(g, pooled);
    let params = Params {
        pooled: u32::from(pooled),
        ..params(g, images, first)
    };
    // four values per invocation (IM2COL_RUN in conv.wgsl)
    gpu.ctx.launch(
        "conv::im2col",
        &params,
        &[(1, x), (2, col.buf())],
        grid_1d(n.div_ceil(4)),
    );
}

/// The unfolded input of a chunk of images as (buffer, offset of the chunk's first column):
/// `col`, filled by im2col, or for a pointwise convolution `x` itself, which needs none.
fn unfolded<'a>(
    gpu: &Gpu,
    x: &'a wgpu::Buffer,
    g: &Conv2dGeom,
    (first, images): (usize, usize),
    (col, pooled): (&'a Option<GpuTensor>, bool),
) -> (&'a wgpu::Buffer, usize) {
    match col {
        Some(col) => {
            im2col(gpu, x, g, (first, images), (col, pooled));
            (col.buf(), 0)
        }
        None => {
            assert!(
                !pooled,
                "a pointwise convolution's columns are its input, unpooled"
            );
            (x, first * g.c_in * g.h * g.w)
        }
    }
}

/// A buffer for one chunk's unfolded input, or none for a pointwise convolution.
fn col_buffer(gpu: &Gpu, g: &Conv2dGeom, chunk_images: usize) -> Option<GpuTensor> {
    (!g.is_pointwise()).then(|| gpu.alloc([chunk_images * g.patch_len() * g.out_h * g.out_w]))
}

/// Forward convolution of one window: y = w ⊛ x + b (then max(0, ·) when `relu`, then the 2×2
/// pooling at stride 2 when `pooled`), applied by the product as it stores y, `g` with the
/// window's batch.
fn forward_window(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    (w, b): (&wgpu::Buffer, &wgpu::Buffer),
    y: &wgpu::Buffer,
    g: &Conv2dGeom,
    (relu, pooled): (bool, bool),
) {
    let (k, q) = (g.patch_len(), columns(g, pooled));
    // columns of y per image: the pooled ones when pooled
    let stored = if pooled { q / 4 } else { q };
    let chunks = chunks(gpu, g);
    let col = col_buffer(gpu, g, chunks[0].1);
    for (first, images) in chunks {
        let (cols, b_off) = unfolded(gpu, x, g, (first, images), (&col, pooled));
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
            c_off: first * g.c_out * stored,
            c_rs: stored,
            c_batch: g.c_out * stored,
            batch: images,
            ..Default::default()
        };
        let epilogue = Epilogue {
            bias: b,
            relu,
            pool: pooled,
        };
        gemm_with_epilogue(gpu, gm, (w, cols, y), epilogue);
    }
}

/// Input gradient of one window's convolution: dx = col2im(wᵀ · dy) (for a pointwise
/// convolution the product is dx itself).
fn backward_input_window(
    gpu: &Gpu,
    dy: &wgpu::Buffer,
    w: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    g: &Conv2dGeom,
) {
    let (k, q) = (g.patch_len(), g.out_h * g.out_w);
    let chunks = chunks(gpu, g);
    let col = col_buffer(gpu, g, chunks[0].1);
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
        gemm(gpu, gm, w, dy, dst);
        if let Some(col) = &col {
            let n = images * g.c_in * g.h * g.w;
            gpu.ctx.launch(
                "conv::col2im",
                &params(g, images, first),
                &[(1, col.buf()), (2, dx)],
                grid_1d(n),
            );
        }
    }
}

/// dw (+)= dy ⊛ x over one window's images (added to dw unless `window` is the batch's first).
fn backward_weight_window(
    gpu: &Gpu,
    x: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    dw: &GpuTensor,
    g: &Conv2dGeom,
    window: Window,
) {
    let (k, q) = (g.patch_len(), g.out_h * g.out_w);
    let chunks = chunks(gpu, g);
    let col = col_buffer(gpu, g, chunks[0].1);
    // Each chunk is summed in `groups` independent partial products (more parallel work for
    // the GPU than one long sum), which are then added up.
    let max_groups = (1..=8)
        .rev()
        .find(|d| chunks[0].1.is_multiple_of(*d))
        .unwrap_or(1);
    let partials = gpu.alloc([max_groups * g.c_out * k]);
    for (i, (first, images)) in chunks.into_iter().enumerate() {
        let (cols, b_off) = unfolded(gpu, x, g, (first, images), (&col, false));
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
        gemm(gpu, gm, dy, cols, partials.buf());
        let accumulate = i > 0 || !window.is_first();
        reduce::sum_leading(
            gpu,
            partials.buf(),
            dw.buf(),
            (groups, g.c_out * k),
            accumulate,
        );
    }
}
