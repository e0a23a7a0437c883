//! Matrix products on the GPU (`shaders/gemm.wgsl`): the convolutions and dense layers are
//! lowered onto them, as on the CPU (`cpu/gemm.rs`).

use super::params::{u, wgsl_params};
use super::{GemmKernel, Gpu};

wgsl_params!(
    /// `gemm.wgsl`'s parameter block (see the layout comment there).
    Params {
        m: u32, n: u32, k_hi: u32, k_lo: u32,
        a_off: u32, a_rs: u32, a_khi: u32, a_klo: u32,
        b_off: u32, b_cs: u32, b_khi: u32, b_klo: u32,
        c_off: u32, c_rs: u32, a_batch: u32, b_batch: u32,
        c_batch: u32, accumulate: u32, epilogue: u32, pad1: u32,
    }
);

/// One launch of `gemm.wgsl`: `batch` products C = A · B, each `m × n`, summed over `k_hi × k_lo`
/// (two levels, so that a sum can run over images and pixels), A and B given by their offsets
/// and strides.
#[derive(Clone, Copy, Default)]
pub(super) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k_hi: usize,
    pub k_lo: usize,
    pub a_off: usize,
    pub a_rs: usize,
    pub a_khi: usize,
    pub a_klo: usize,
    pub b_off: usize,
    pub b_cs: usize,
    pub b_khi: usize,
    pub b_klo: usize,
    pub c_off: usize,
    pub c_rs: usize,
    pub a_batch: usize,
    pub b_batch: usize,
    pub c_batch: usize,
    pub accumulate: bool,
    pub batch: usize,
}

impl Gemm {
    /// A single `m × k` by `k × n` product, row-major C, with A and B given by their
    /// (row, column) strides, as the dense layers need.
    pub fn matmul(
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

    fn params(&self) -> Params {
        Params {
            m: u(self.m),
            n: u(self.n),
            k_hi: u(self.k_hi),
            k_lo: u(self.k_lo),
            a_off: u(self.a_off),
            a_rs: u(self.a_rs),
            a_khi: u(self.a_khi),
            a_klo: u(self.a_klo),
            b_off: u(self.b_off),
            b_cs: u(self.b_cs),
            b_khi: u(self.b_khi),
            b_klo: u(self.b_klo),
            c_off: u(self.c_off),
            c_rs: u(self.c_rs),
            a_batch: u(self.a_batch),
            b_batch: u(self.b_batch),
            c_batch: u(self.c_batch),
            accumulate: u32::from(self.accumulate),
            ..Params::default()
        }
    }
}

/// Records the products `g` of A in `a` and B in `b` into `c`, with the device's GEMM kernel.
pub(super) fn gemm(gpu: &Gpu, g: Gemm, a: &wgpu::Buffer, b: &wgpu::Buffer, c: &wgpu::Buffer) {
    launch(gpu, g, (a, b, c), None)
}

/// What `gemm.wgsl` does to each value of C as it stores it (its epilogue).
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    /// One value per row of C, added.
    pub bias: &'a wgpu::Buffer,
    /// Then max(0, ·).
    pub relu: bool,
    /// Then each row's 4 adjacent columns j..j+3 (a 2×2 pooling window) stored as their
    /// maximum at column j/4: `c_rs` and `c_batch` count stored columns.
    pub pool: bool,
}

/// [`gemm`] with an epilogue. C is overwritten, not accumulated.
pub(super) fn gemm_with_epilogue(
    gpu: &Gpu,
    g: Gemm,
    (a, b, c): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    epilogue: Epilogue,
) {
    assert!(
        !g.accumulate,
        "gemm: the epilogue applies to C's final values"
    );
    assert!(
        !epilogue.pool || g.n.is_multiple_of(4),
        "gemm: pooling takes whole windows of 4 columns"
    );
    launch(gpu, g, (a, b, c), Some(epilogue))
}

fn launch(
    gpu: &Gpu,
    g: Gemm,
    (a, b, c): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    epilogue: Option<Epilogue>,
) {
    let groups = (u(g.n.div_ceil(64)), u(g.m.div_ceil(64)), u(g.batch));
    let aligned = [g.n, g.b_off, g.b_klo, g.b_khi, g.b_batch]
        .iter()
        .all(|v| v % 4 == 0);
    let kernel = match gpu.gemm {
        GemmKernel::Tiled => "gemm::gemm_tiled",
        GemmKernel::Registers if g.b_cs == 1 && aligned => "gemm::gemm_vec4b",
        GemmKernel::Registers => "gemm::gemm",
    };
    let mut params = g.params();
    // without an epilogue the bias binding is unread: A stands in for it
    let bias = epilogue.map_or(a, |e| {
        // gemm.wgsl's ROW_BIAS, RELU and POOL
        params.epilogue = 1 | u32::from(e.relu) << 1 | u32::from(e.pool) << 2;
        e.bias
    });
    // The register kernel binds B twice (as f32s and as vec4s), each variant reading through
    // one of them; the tiled kernel reads f32s.
    let bind = [(1, a), (2, b), (3, c), (5, bias), (4, b)];
    let bind = if gpu.gemm == GemmKernel::Tiled {
        &bind[..4]
    } else {
        &bind[..]
    };
    gpu.ctx.launch(kernel, &params, bind, groups);
}
