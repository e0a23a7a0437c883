//! The weight gradient `dw = Σₙ dyₙ · colₙᵀ`, and how it is computed ([`WeightGradient`]): a
//! GEMM, or dot products over the padded image laid out flat.

use super::super::flat::{dot_rows, Flat};
use super::super::gemm::{gemm, Kernel, MatRef};
use super::*;
use crate::backend::Conv2dGeom;

/// How a convolution's weight gradient `dw = Σₙ dyₙ · colₙᵀ` is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGradient {
    /// A GEMM of dy with colᵀ, which the packing gathers from the image (`Unfolded`; the image
    /// itself when pointwise; a written im2col under [`Unfolding::Copy`]). Wins on
    /// small planes, where each sum of the flat way is short and its reduction dominates.
    Gemm,
    /// Dot products of dy with the padded image at each tap's offset, nothing packed
    /// (`flat::dot_rows`; strides the same both ways). Wins on large planes of few output
    /// channels: there each element of colᵀ is used by only `Co` multiply-adds, so gathering it
    /// cost more than the product (resnet at 192: the 7×7/2 layer's 15.5 → 4.3 ms, a 16-channel
    /// 48×48 layer's 6.0 → 2.2, a 32-channel 24×24 one's 4.0 → 1.9).
    Flat,
    /// A pointwise layer's `dw[Co, Ci]` as the dot products of dy's rows with x's
    /// (`flat::dot_rows`, x's channel planes as the taps), both read where they lie. Wins on
    /// large planes of few channels: the GEMM pads 16 input channels to its 32 columns and
    /// packs both operands across their contiguous direction.
    Dots,
    /// Through Winograd's transforms ([`winograd::add_transformed_weight_gradient`]): 16
    /// products of the transformed input with the transformed dy, 2.25× fewer multiply-adds on
    /// operands written out whole, then Gᵀ dU G. For Winograd layers of 64 channels or more
    /// (`WINOGRAD_WEIGHT_GRADIENT_MIN_CHANNELS`); batch 32, each method timed in one process,
    /// alternated, best of 25: 64 channels at 12×12 4.2 flat → 3.3 ms, at 16×16 4.5 → 4.2;
    /// 128 at 16×16 15.7 with the GEMM → 11.0, at 8×8 4.7 → 4.0, at 6×6 3.9 → 3.3; 256 at 8×8
    /// 14.3 → 13.1. With fewer channels its products are too thin: 32 at 16×16 1.0 flat against
    /// 1.7, 16 at 48×48 2.2 against 5.3.
    Winograd,
}

impl WeightGradient {
    /// Whether [`WeightGradient::Dots`] can run `g`: a pointwise layer whose plane is a whole
    /// number of AVX-512 registers (`dot_rows` takes whole registers).
    pub fn dots_apply(g: &Conv2dGeom) -> bool {
        g.is_pointwise() && (g.out_h * g.out_w).is_multiple_of(16)
    }

    /// Flat where it applies, the output plane has `FLAT_MIN_OUTPUTS` pixels or more and the
    /// layer fewer than `FLAT_MAX_CHANNELS` output channels; not for a pointwise layer (already
    /// a plain GEMM), nor when the unfolding is [`Unfolding::Copy`]. Dots for a pointwise layer
    /// whose plane is a whole number of AVX-512 registers and has `DOTS_MIN_PIXELS` pixels or
    /// more, or whose output channels are fewer than `DOTS_BELOW_CHANNELS`.
    pub fn choose(g: &Conv2dGeom, unfolding: Unfolding) -> WeightGradient {
        let pixels = g.out_h * g.out_w;
        let dots_pay = pixels >= DOTS_MIN_PIXELS || g.c_out < DOTS_BELOW_CHANNELS;
        if WeightGradient::dots_apply(g) && dots_pay {
            return WeightGradient::Dots;
        }
        let flat = flat_applies(g)
            && pixels >= FLAT_MIN_OUTPUTS
            && g.c_out < FLAT_MAX_CHANNELS
            && unfolding != Unfolding::Copy;
        if flat {
            WeightGradient::Flat
        } else {
            WeightGradient::Gemm
        }
    }
}

/// Output pixels from which [`WeightGradient::Flat`] is chosen: resnet's 3×3 layers (batch 32,
/// per layer) were faster flat at 12×12 (2.55 against 2.85 ms) and with the GEMM at 6×6 (5.1
/// against 2.8 ms); at 8×8 the GEMM won once (1.41 against 1.62), and flat since the dot
/// products' 4 × 3 blocks (`bench --plans`, an AMD EPYC with AVX2, resnet at 128's 64-channel
/// 3×3/2 layer: 1.96–2.11 flat against 2.51–2.53).
pub(super) const FLAT_MIN_OUTPUTS: usize = 64;

/// Pixels from which [`WeightGradient::Dots`] is chosen for a pointwise layer: below, each dot
/// product is short and its sum across the register's lanes costs more than the GEMM's packing.
pub(super) const DOTS_MIN_PIXELS: usize = 1024;

/// Output channels below which [`WeightGradient::Dots`] is chosen for a pointwise layer of any
/// plane: the GEMM's strips of 8 rows of dy are mostly padding there (resnet-loc's 1-channel map
/// layer at 24×24, batch 32: 0.39–0.47 ms with the GEMM against 0.06–0.07 as dot products,
/// `bench --plans`).
pub(super) const DOTS_BELOW_CHANNELS: usize = 8;

/// Output channels from which the GEMM is chosen: its packing is shared by more rows of the
/// product. With the 8 × 3 blocks of `dot_rows` (batch 32, alternated three times):
/// fracturenet's 64-channel layer at 64×64 took 37–40 ms with the GEMM against 24–33 flat, and
/// resnet's 64-channel 12×12 layers 3.0–3.2 against 2.7–2.8; fracturenet's 128-channel layers
/// at 32×32 and 16×16 were no faster flat (20–26 ms both ways; 11–14 against 11–15).
pub(super) const FLAT_MAX_CHANNELS: usize = 128;

/// One image and its dy laid out flat (`Flat`): the operands of [`WeightGradient::Flat`].
pub(super) struct FlatGrid<'g> {
    kernel: Kernel,
    planes: FlatPlanes,
    g: &'g Conv2dGeom,
    /// `[Co, flat_outputs]`: dy in rows of `wq`, zero past each row's `Wo` outputs.
    dy_rows: Vec<f32>,
}

impl<'g> FlatGrid<'g> {
    /// Zeroed once: each image writes the same positions, so the padding stays zero.
    pub(super) fn new((flat, g): (Flat, &'g Conv2dGeom), kernel: Kernel) -> FlatGrid<'g> {
        FlatGrid {
            kernel,
            planes: FlatPlanes::new(flat, g.c_in),
            g,
            dy_rows: vec![0.0; g.c_out * flat.flat_outputs()],
        }
    }

    /// Lays out one image `x[Ci,H,W]` and its `dy[Co,Ho,Wo]`.
    pub(super) fn lay_out(&mut self, x: &[f32], dy: &[f32]) {
        self.planes.lay_out(x);
        let f = &self.planes.flat;
        dy_in_rows(f, dy, &mut self.dy_rows, f.flat_outputs());
    }

    /// `dw[Co, Ci·KH·KW]` += Σ_i dy[co][i] · plane_ci[i + offset_k] for every (co, ci, k).
    pub(super) fn add_weight_gradient(&self, dw: &mut [f32]) {
        let (f, g) = (&self.planes.flat, self.g);
        let taps = g.kh * g.kw;
        let dy = (&self.dy_rows[..], f.flat_outputs());
        for (ci, plane) in self.planes.each().enumerate() {
            let out = (&mut dw[ci * taps..], g.patch_len());
            dot_rows(self.kernel, dy, plane, &self.planes.offsets, out);
        }
    }
}

/// A pointwise layer's `dw[Co, Ci]` += Σₙ dyₙ · xₙᵀ for the images `xs[m,Ci,H,W]` and their
/// `dys`: `dw[co][ci]` += Σ_i `dy[co][i]` · `x[ci][i]`, each channel plane of x one tap of
/// `dot_rows` (at `ci·H·W`).
pub(super) fn add_pointwise_weight_gradients(
    kernel: Kernel,
    xs: &[f32],
    dys: &[f32],
    g: &Conv2dGeom,
    dw: &mut [f32],
) {
    let pixels = g.h * g.w;
    let planes: Vec<usize> = (0..g.c_in).map(|ci| ci * pixels).collect();
    for (xn, dyn_) in xs
        .chunks_exact(g.c_in * pixels)
        .zip(dys.chunks_exact(g.c_out * pixels))
    {
        dot_rows(kernel, (dyn_, pixels), xn, &planes, (&mut *dw, g.c_in));
    }
}

/// `dw[Co, Ci·KH·KW]` += dyₙ · colₙᵀ for one image, colₙᵀ unfolded the way `plan` says.
pub(super) fn add_weight_gradient(
    plan: &Plan,
    xn: &[f32],
    dyn_: &[f32],
    g: &Conv2dGeom,
    dw: &mut [f32],
) {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let dym = MatRef::rows(dyn_, g.c_out, p);
    let kernel = plan.kernel;
    if g.is_pointwise() {
        gemm(kernel, dym, MatRef::rows(xn, k, p).t(), dw, k, true);
    } else if plan.unfolding != Unfolding::Copy {
        let colt = Unfolded {
            x: xn,
            g,
            transposed: true,
        };
        gemm(kernel, dym, colt, dw, k, true);
    } else {
        with_col(g, |col| {
            im2col(xn, g, col);
            gemm(kernel, dym, MatRef::rows(col, k, p).t(), dw, k, true);
        });
    }
}

/// `dw[Co, Ci·KH·KW]` += Σₙ dyₙ · colₙᵀ for the images `xs[m,Ci,H,W]` and their `dys`, as one
/// product: dy's rows side by side `[Co, m·Ho·Wo]` times the images' colᵀ, whose K is every
/// image's pixels. Per image, a small plane's product is a loop over k shorter than one of the
/// GEMM's slices, and dw's blocks are read and written again for every image.
pub(super) fn add_weight_gradient_together(
    kernel: Kernel,
    xs: &[f32],
    dys: &[f32],
    g: &Conv2dGeom,
    dw: &mut [f32],
) {
    let p = g.out_h * g.out_w;
    let m = dys.len() / (g.c_out * p);
    let mut side = vec![0f32; g.c_out * m * p];
    for (n, dyn_) in dys.chunks_exact(g.c_out * p).enumerate() {
        for (co, row) in dyn_.chunks_exact(p).enumerate() {
            side[(co * m + n) * p..][..p].copy_from_slice(row);
        }
    }
    // the images' col side by side, [Ci·KH·KW, m·Ho·Wo], written out: its transpose packed
    // faster than the one the packing gathered from the images (resnet-loc's 128-channel 3×3/2
    // layer at 6×6, batch 32: 15 % slower than a product per image before, level after)
    let k = g.patch_len();
    with_buffer(&COL, k * m * p, |col| {
        for (n, xn) in xs.chunks_exact(g.c_in * g.h * g.w).enumerate() {
            im2col_rows(xn, g, &mut col[n * p..], m * p);
        }
        let colt = MatRef::rows(col, k, m * p).t();
        gemm(
            kernel,
            MatRef::rows(&side, g.c_out, m * p),
            colt,
            dw,
            k,
            true,
        );
    });
}
