//! 2-D convolution on the CPU, lowered onto the GEMM by unfolding ("im2col").
//!
//! For one image, unfolding `x[Ci,H,W]` gives a matrix `col[Ci·KH·KW, Ho·Wo]` whose column p holds
//! the input patch under output pixel p. Then the three passes are three matrix products:
//! - forward:          `y[Co, Ho·Wo]`       = `w[Co, Ci·KH·KW]` · col
//! - weight gradient:  `dw[Co, Ci·KH·KW]`  += `dy[Co, Ho·Wo]` · colᵀ      (summed over the batch)
//! - input gradient:   dcol               = wᵀ · dy,  then folded back ("col2im") into dx,
//!   each patch element adding into the input pixel it was copied from.
//!
//! How col reaches the GEMM is an [`Unfolding`]: written out whole first, gathered straight
//! from the image into the GEMM's packed blocks, or (at a stride) copied in runs from the image
//! laid out flat once, into which the input gradient's dcol is folded back in runs too. The
//! input gradient writes dcol into its thread's reused buffer (`with_col`), so memory stays near
//! `threads × Ci·KH·KW × Ho·Wo` floats whatever the batch size (a thread that starts another
//! image while it waits inside the parallel GEMM takes a second buffer). The weight gradient
//! sums its products over groups of `IMAGES_PER_PARTIAL` images, one partial `dw` per group (on
//! small planes the group's images are one product); on planes of 100 pixels or more and fewer
//! than 128 output channels it is not a GEMM at all but dot products over the padded image laid
//! out flat ([`WeightGradient`]).

use super::flat::{dot_rows, Flat};
use super::gemm::{gemm, gemm_with_epilogue, Epilogue, Kernel, MatRef, PackB, PackedA, NR};
use super::{as_uninit, conv_winograd, filled, pool, written_by};
use crate::backend::{Conv2dGeom, Pool2dGeom};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

thread_local! {
    /// One image's unfolded input `col`.
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One image's convolution output, before it is pooled.
    static CONV_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer `slot`, `len` floats long.
///
/// The buffer is taken out of the thread-local slot while `f` runs: `f` calls the parallel GEMM,
/// and while a rayon thread waits it may start another image's task on the same thread, which
/// then finds the slot empty and uses a buffer of its own instead of aliasing this one.
fn with_buffer<R>(
    slot: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = slot.with(|c| std::mem::take(&mut *c.borrow_mut()));
    buf.resize(len, 0.0);
    let result = f(&mut buf);
    slot.with(|c| *c.borrow_mut() = buf);
    result
}

/// [`with_buffer`] with this thread's unfolding buffer, sized to one image's `col`.
fn with_col<R>(g: &Conv2dGeom, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&COL, g.patch_len() * g.out_h * g.out_w, f)
}

/// Input row (or column) read by output row `o` at kernel offset `k`, if inside the image.
#[inline]
fn source_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Unfolds one image `x[Ci,H,W]` into `col[Ci·KH·KW, Ho·Wo]`.
pub fn im2col(x: &[f32], g: &Conv2dGeom, col: &mut [f32]) {
    let (ho, wo) = (g.out_h, g.out_w);
    let rows = col.chunks_exact_mut(ho * wo);
    for (r, row) in rows.enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (oy, out) in row.chunks_exact_mut(wo).enumerate() {
            match source_index(oy, ky, g.stride_h, g.pad_top, g.h) {
                None => out.fill(0.0),
                Some(iy) => {
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        *o = source_index(ox, kx, g.stride_w, g.pad_left, g.w)
                            .map_or(0.0, |ix| src[ix]);
                    }
                }
            }
        }
    }
}

/// Folds `col[Ci·KH·KW, Ho·Wo]` back into `dx[Ci,H,W]` (which it overwrites), summing overlaps.
pub fn col2im(col: &[f32], g: &Conv2dGeom, dx: &mut [MaybeUninit<f32>]) {
    let dx = filled(dx, 0.0);
    let (ho, wo) = (g.out_h, g.out_w);
    for (r, row) in col.chunks_exact(ho * wo).enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for (oy, src) in row.chunks_exact(wo).enumerate() {
            let Some(iy) = source_index(oy, ky, g.stride_h, g.pad_top, g.h) else {
                continue;
            };
            let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
            for (ox, s) in src.iter().enumerate() {
                if let Some(ix) = source_index(ox, kx, g.stride_w, g.pad_left, g.w) {
                    dst[ix] += s;
                }
            }
        }
    }
}

/// How the unfolded input `col` reaches the GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfolding {
    /// [`im2col`] writes one image's whole `col` (Ci·KH·KW × Ho·Wo floats, 4.7 MB for a
    /// 32-channel 64×64 image), which the GEMM then reads back to pack it: the plain way, and
    /// the reference of the others.
    Copy,
    /// The GEMM's packing gathers each block of `col` from the image itself ([`Unfolded`]):
    /// no `col` round trip through memory. The default where [`Unfolding::Flat`] does not pay,
    /// and the only implicit way for the weight and input gradients.
    Implicit,
    /// The image copied once into padded planes laid out flat (`Flat`, dealt into phases at a
    /// stride), where row (ci, ky, kx) of `col` is one contiguous run of plane ci from the tap's
    /// offset (`FlatCol`): packing a block is copying runs, with no index arithmetic per pixel
    /// nor, at a stride, per element. The product then has `(KW−1)/s` columns per output row
    /// past the plane's edge, dropped afterwards. The input gradient folds dcol back the same
    /// way (`FlatInputGradient`). The same sums as the others, bit for bit (the same products,
    /// only packed and folded differently).
    Flat,
}

impl Unfolding {
    /// The unfolding of `g`'s forward pass and input gradient: [`Unfolding::Flat`] where it
    /// applies and pays (`flat_unfolding_pays`), else implicit (the input gradient's
    /// implicit way is `col2im`); `FRACTURE_CONV_UNFOLDING=copy|implicit|flat` forces one (flat
    /// only where it applies), for benchmarks and tests.
    pub fn choose(g: &Conv2dGeom) -> Unfolding {
        let flat_applies = !g.is_pointwise() && g.stride_h == g.stride_w;
        match Unfolding::forced() {
            Some(Unfolding::Flat) if flat_applies => Unfolding::Flat,
            Some(Unfolding::Copy) => Unfolding::Copy,
            Some(_) => Unfolding::Implicit,
            None if flat_applies && flat_unfolding_pays(g) => Unfolding::Flat,
            None => Unfolding::Implicit,
        }
    }

    /// The unfolding `FRACTURE_CONV_UNFOLDING` (read once per process) forces, if any.
    pub fn forced() -> Option<Unfolding> {
        static FORCED: std::sync::OnceLock<Option<Unfolding>> = std::sync::OnceLock::new();
        *FORCED.get_or_init(
            || match std::env::var("FRACTURE_CONV_UNFOLDING").as_deref() {
                Ok("copy") => Some(Unfolding::Copy),
                Ok("implicit") => Some(Unfolding::Implicit),
                Ok("flat") => Some(Unfolding::Flat),
                _ => None,
            },
        )
    }
}

/// Whether [`Unfolding::Flat`] beats the implicit gather (and `col2im`) for `g`: at a stride,
/// where those go element by element (`bench`, batch 32: resnet at 192's 7×7/2 stem 11.1 → 3.7
/// ms forward, its 3×3/2 layers 2.8 → 1.2, 1.8 → 1.0 and 1.7 → 1.4 forward and 2.7 → 1.6,
/// 1.6 → 1.1 and 1.6 → 1.6 for the input gradient; MobileNet's 3×3/2 stem at 128 faster too).
/// At stride 1 the gather copies runs already, and the flat product's extra pass over the
/// output (dropping each row's last columns) costs more than it saves: fracturenet's first
/// layer (3×3, one input channel, 32 output channels at 128×128) took 3.6–4.2 ms implicit
/// against 7.1–8.0 flat.
fn flat_unfolding_pays(g: &Conv2dGeom) -> bool {
    g.stride_h > 1
}

/// How a convolution's output and input gradient are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// The filters times the unfolded input ([`Unfolding`]): any kernel, stride and padding.
    Gemm,
    /// Winograd F(2×2, 3×3) ([`super::conv_winograd`]): 2.25× fewer multiply-adds for 3×3
    /// stride-1 layers, which pays for its two transforms once both sides have at least
    /// [`WINOGRAD_MIN_CHANNELS`] channels (a 1-channel first layer has little to multiply).
    Winograd,
}

/// Fewest input and output channels for which [`Algorithm::Winograd`] is chosen.
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

impl Algorithm {
    /// Winograd where it applies and pays, else the GEMM. `FRACTURE_CONV_ALGORITHM=gemm` keeps
    /// the GEMM everywhere and `=winograd` takes Winograd wherever it applies (benchmarks, tests).
    pub fn choose(g: &Conv2dGeom) -> Algorithm {
        let pays = g.c_in.min(g.c_out) >= WINOGRAD_MIN_CHANNELS;
        match Algorithm::forced() {
            _ if !conv_winograd::applies(g) => Algorithm::Gemm,
            Some(a) => a,
            None if pays => Algorithm::Winograd,
            None => Algorithm::Gemm,
        }
    }

    /// The algorithm `FRACTURE_CONV_ALGORITHM` (read once per process) forces, if any.
    pub fn forced() -> Option<Algorithm> {
        *FORCED.get_or_init(
            || match std::env::var("FRACTURE_CONV_ALGORITHM").as_deref() {
                Ok("gemm") => Some(Algorithm::Gemm),
                Ok("winograd") => Some(Algorithm::Winograd),
                _ => None,
            },
        )
    }
}

/// The process's forced algorithm, decided once (see [`Algorithm::forced`]).
static FORCED: std::sync::OnceLock<Option<Algorithm>> = std::sync::OnceLock::new();

/// The `col[Ci·KH·KW, m·Ho·Wo]` of `m` images side by side (or, `transposed`, its transpose) as a
/// GEMM operand that is never stored: packing a block reads the images.
#[derive(Clone, Copy)]
pub struct Unfolded<'a> {
    /// The images, `[m,Ci,H,W]`; col's columns are their output pixels, image by image.
    pub x: &'a [f32],
    pub g: &'a Conv2dGeom,
    pub transposed: bool,
}

impl Unfolded<'_> {
    /// Output pixels of all the images: col's columns.
    fn pixels(&self) -> usize {
        let g = self.g;
        self.x.len() / (g.c_in * g.h * g.w) * g.out_h * g.out_w
    }

    /// Writes row r of col, from pixel j0 for nc pixels, into `out` in runs that stay inside one
    /// output row of one image and one packed strip: the run of pixel j0 + j starts at `at(j)`.
    /// Positions advance by counting, not dividing (this runs for every row of every block).
    #[inline]
    fn pack_row(
        &self,
        r: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
        at: impl Fn(usize) -> usize,
    ) {
        let g = self.g;
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let image_len = g.c_in * g.h * g.w;
        let (n, pixel) = (j0 / (g.out_h * g.out_w), j0 % (g.out_h * g.out_w));
        // the input plane `ci` of image n starts at `plane`
        let mut plane = n * image_len + ci * g.h * g.w;
        let (mut oy, mut ox) = (pixel / g.out_w, pixel % g.out_w);
        let mut j = 0;
        while j < nc {
            let len = (g.out_w - ox).min(NR - j % NR).min(nc - j);
            let seg = &mut out[at(j)..][..len];
            match source_index(oy, ky, g.stride_h, g.pad_top, g.h) {
                None => seg.fill(0.0),
                Some(iy) => {
                    let row = &self.x[plane + iy * g.w..][..g.w];
                    gather_columns(row, ox, kx, g, seg)
                }
            }
            j += len;
            ox += len;
            if ox == g.out_w {
                (oy, ox) = (oy + 1, 0);
                if oy == g.out_h {
                    (plane, oy) = (plane + image_len, 0);
                }
            }
        }
    }
}

/// `seg[i]` = the input value under output column `ox0 + i` at kernel column kx, 0 in the padding.
fn gather_columns(src: &[f32], ox0: usize, kx: usize, g: &Conv2dGeom, seg: &mut [f32]) {
    if g.stride_w != 1 {
        for (i, o) in seg.iter_mut().enumerate() {
            *o = source_index(ox0 + i, kx, g.stride_w, g.pad_left, g.w).map_or(0.0, |ix| src[ix]);
        }
        return;
    }
    // At stride 1, output column ox reads input column ox + kx - pad_left: one contiguous run
    // between zeros on the left (ox < pad_left - kx) and on the right (ox ≥ w + pad_left - kx).
    let first = g.pad_left.saturating_sub(kx).clamp(ox0, ox0 + seg.len()) - ox0;
    let end = (g.w + g.pad_left)
        .saturating_sub(kx)
        .clamp(ox0 + first, ox0 + seg.len())
        - ox0;
    seg[..first].fill(0.0);
    let ix0 = ox0 + first + kx - g.pad_left;
    copy_run(&mut seg[first..end], &src[ix0..ix0 + end - first]);
    seg[end..].fill(0.0);
}

/// `dst.copy_from_slice(src)` as inline vector moves: packing calls it for runs of at most one
/// strip (32 floats), where a call to memmove costs as much as the copy (a quarter of a 3×3
/// convolution's time went there).
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    let (mut d8, s8) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut d8).zip(s8.clone()) {
        let s: &[f32; 8] = s.try_into().expect("a chunk of 8");
        d.copy_from_slice(s);
    }
    let (d_tail, s_tail) = (d8.into_remainder(), s8.remainder());
    for (d, s) in d_tail.iter_mut().zip(s_tail) {
        *d = *s;
    }
}

impl PackB for Unfolded<'_> {
    fn rows(&self) -> usize {
        let (k, p) = (self.g.patch_len(), self.pixels());
        if self.transposed {
            p
        } else {
            k
        }
    }
    fn cols(&self) -> usize {
        let (k, p) = (self.g.patch_len(), self.pixels());
        if self.transposed {
            k
        } else {
            p
        }
    }
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        let strips = nc.div_ceil(NR);
        if !self.transposed {
            for p in 0..kc {
                self.pack_row(p0 + p, j0, nc, out, |j| ((j / NR) * kc + p) * NR + j % NR);
            }
            return;
        }
        // B = colᵀ: packed column j is patch row j0 + j over output pixels p0..p0+kc.
        let mut run = vec![0f32; kc];
        for s in 0..strips {
            let strip = &mut out[s * NR * kc..(s + 1) * NR * kc];
            for j in 0..NR.min(nc - s * NR) {
                self.pack_row(j0 + s * NR + j, p0, kc, &mut run, |i| i);
                for (dst, v) in strip.iter_mut().skip(j).step_by(NR).zip(&run) {
                    *dst = *v;
                }
            }
        }
    }
}

/// `y[N,Co,Ho,Wo]` = conv(x, w) + b, then max(0, ·) when `relu`: both in the GEMM's epilogue (or
/// Winograd's output transform), on each block of y while it is in cache.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], g: &Conv2dGeom, relu: bool) -> Vec<f32> {
    forward_pooled(x, w, b, g, relu, None)
}

/// [`forward`], then max pooling `pool` over its output when given: each image's convolution
/// goes into this thread's buffer, still in cache when it is pooled, and only the pooled image
/// is written out (a quarter of it for 2×2 pooling).
pub fn forward_pooled(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    g: &Conv2dGeom,
    relu: bool,
    pool: Option<&Pool2dGeom>,
) -> Vec<f32> {
    let filters = match Algorithm::choose(g) {
        Algorithm::Winograd => Filters::Winograd(conv_winograd::prepare(w, g)),
        // packed once for all the images
        Algorithm::Gemm => Filters::Gemm(
            PackedA::new(MatRef::rows(w, g.c_out, g.patch_len())),
            Unfolding::choose(g),
        ),
    };
    forward_with(&filters, x, b, g, relu, pool)
}

/// [`forward_pooled`] with the filters ready.
fn forward_with(
    filters: &Filters,
    x: &[f32],
    b: &[f32],
    g: &Conv2dGeom,
    relu: bool,
    pool: Option<&Pool2dGeom>,
) -> Vec<f32> {
    let flat = match filters {
        Filters::Gemm(_, Unfolding::Flat) => Flat::forward(g),
        _ => None,
    };
    let conv_image = g.c_out * g.out_h * g.out_w;
    let out_image = pool.map_or(conv_image, |p| p.c * p.out_h * p.out_w);
    // Winograd's products take the tiles of several small images at once
    let group = match (filters, pool) {
        (Filters::Winograd(_), None) => conv_winograd::images_per_group(g),
        _ => 1,
    };
    let each_group = |planes: &mut Option<FlatImage>,
                      (ys, xs): (&mut [MaybeUninit<f32>], &[f32])| {
        let conv = Conv {
            filters,
            b,
            g,
            relu,
        };
        match pool {
            None => conv.images(xs, planes.as_mut(), ys),
            Some(p) => with_buffer(&CONV_OUT, conv_image, |out| {
                // SAFETY: `images` writes f32s only.
                conv.images(xs, planes.as_mut(), unsafe { as_uninit(out) });
                pool::forward_infer_image(out, p, ys);
            }),
        }
    };
    // SAFETY: each image's output is written whole, by `images` (every element of its product)
    // or by the pooling (every output pixel).
    unsafe {
        written_by(g.n * out_image, |y| {
            y.par_chunks_mut(group * out_image)
                .zip(x.par_chunks(group * g.c_in * g.h * g.w))
                .for_each_init(|| flat.map(|f| FlatImage::new(f, g)), each_group)
        })
    }
}

/// A convolution's filters made ready for a batch.
enum Filters {
    /// `w[Co, Ci·KH·KW]` packed for the GEMM, and how `col` reaches it.
    Gemm(PackedA, Unfolding),
    /// Transformed and packed for Winograd ([`conv_winograd::prepare`]).
    Winograd(Vec<PackedA>),
}

/// One layer's forward pass, the same for every image of the batch.
struct Conv<'a> {
    filters: &'a Filters,
    b: &'a [f32],
    g: &'a Conv2dGeom,
    relu: bool,
}

impl Conv<'_> {
    /// Images `xs[m,Ci,H,W]` into `ys[m,Co,Ho,Wo]`, every element of which it writes: one image
    /// for the GEMM, a group for Winograd ([`conv_winograd::images_per_group`]); `flat` is this
    /// task's buffers when the unfolding is [`Unfolding::Flat`].
    fn images(&self, xs: &[f32], flat: Option<&mut FlatImage>, ys: &mut [MaybeUninit<f32>]) {
        let g = self.g;
        let (wm, unfolding) = match self.filters {
            Filters::Winograd(u) => {
                return conv_winograd::images(xs, u, Some(self.b), self.relu, g, ys)
            }
            Filters::Gemm(wm, unfolding) => (wm, *unfolding),
        };
        debug_assert_eq!(
            xs.len(),
            g.c_in * g.h * g.w,
            "the GEMM takes one image at a time"
        );
        let (xn, yn) = (xs, ys);
        let (k, p) = (g.patch_len(), g.out_h * g.out_w);
        let kernel = Kernel::detect();
        let epilogue = Epilogue {
            row_bias: Some(self.b),
            relu: self.relu,
        };
        if g.is_pointwise() {
            gemm_with_epilogue(kernel, wm, MatRef::rows(xn, k, p), yn, p, epilogue);
            return;
        }
        match (unfolding, flat) {
            (Unfolding::Flat, Some(flat)) => flat.forward(xn, wm, epilogue, yn),
            (Unfolding::Copy, _) => with_col(g, |col| {
                im2col(xn, g, col);
                gemm_with_epilogue(kernel, wm, MatRef::rows(col, k, p), yn, p, epilogue);
            }),
            _ => {
                let col = Unfolded {
                    x: xn,
                    g,
                    transposed: false,
                };
                gemm_with_epilogue(kernel, wm, col, yn, p, epilogue);
            }
        }
    }
}

/// One image's input channels laid out flat (`Flat`): each plane padded (dealt into phases
/// at a stride), `[Ci, padded_len]`, and the offset of each tap into a plane's phases.
struct FlatPlanes {
    flat: Flat,
    offsets: Vec<usize>,
    planes: Vec<f32>,
}

impl FlatPlanes {
    /// Zeroed once: each image writes the same positions, so the padding stays zero.
    fn new(flat: Flat, c_in: usize) -> FlatPlanes {
        FlatPlanes {
            flat,
            offsets: flat.offsets(),
            planes: vec![0.0; c_in * flat.padded_len()],
        }
    }

    /// Lays out one image `x[Ci,H,W]`.
    fn lay_out(&mut self, x: &[f32]) {
        let f = &self.flat;
        let planes = self.planes.chunks_exact_mut(f.padded_len());
        for (padded, plane) in planes.zip(x.chunks_exact(f.in_h * f.in_w)) {
            f.pad(plane, padded);
        }
    }

    /// Each input channel's padded plane.
    fn each(&self) -> impl Iterator<Item = &[f32]> {
        self.planes.chunks_exact(self.flat.padded_len())
    }
}

/// One image's `col[Ci·KH·KW, Ho·wq]` over its flat planes ([`Unfolding::Flat`]): row (ci, k)
/// is plane ci from tap k's offset, column i the flat output i (rows of [`Flat::wq`]).
struct FlatCol<'a>(&'a FlatPlanes);

impl PackB for FlatCol<'_> {
    fn rows(&self) -> usize {
        self.0.planes.len() / self.0.flat.padded_len() * self.0.offsets.len()
    }
    fn cols(&self) -> usize {
        self.0.flat.out_h * self.0.flat.wq()
    }
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        let (taps, len) = (self.0.offsets.len(), self.0.flat.padded_len());
        // strip by strip, so that `out` is written in order; each row's run is contiguous
        for (s, strip) in out.chunks_exact_mut(NR * kc).enumerate() {
            let (j, width) = (j0 + s * NR, NR.min(nc - s * NR));
            for (p, dst) in strip.chunks_exact_mut(NR).enumerate() {
                let r = p0 + p;
                let at = (r / taps) * len + self.0.offsets[r % taps] + j;
                copy_run(&mut dst[..width], &self.0.planes[at..at + width]);
            }
        }
    }
}

/// The buffers of one task's [`Unfolding::Flat`] forward passes: the image's flat planes and
/// the product in flat rows, `[Co, Ho·wq]`.
struct FlatImage {
    planes: FlatPlanes,
    product: Vec<f32>,
}

impl FlatImage {
    fn new(flat: Flat, g: &Conv2dGeom) -> FlatImage {
        FlatImage {
            planes: FlatPlanes::new(flat, g.c_in),
            product: vec![0.0; g.c_out * flat.out_h * flat.wq()],
        }
    }

    /// `yn[Co,Ho,Wo]` = the epilogue of wm · col(xn), every element written.
    fn forward(
        &mut self,
        xn: &[f32],
        wm: &PackedA,
        epilogue: Epilogue,
        yn: &mut [MaybeUninit<f32>],
    ) {
        self.planes.lay_out(xn);
        let f = self.planes.flat;
        let cols = f.out_h * f.wq();
        // SAFETY: the GEMM writes f32s only.
        let product = unsafe { as_uninit(&mut self.product) };
        gemm_with_epilogue(
            Kernel::detect(),
            wm,
            FlatCol(&self.planes),
            product,
            cols,
            epilogue,
        );
        let planes = yn.chunks_exact_mut(f.out_h * f.out_w);
        for (y, flat) in planes.zip(self.product.chunks_exact(cols)) {
            f.unflatten(flat, y, false);
        }
    }
}

/// `dx[N,Ci,H,W]` = col2im(wᵀ · dy) per image.
pub fn backward_input(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    if Algorithm::choose(g) == Algorithm::Winograd {
        return conv_winograd::backward_input(dy, w, g);
    }
    backward_input_by(Unfolding::choose(g), dy, w, g)
}

/// [`backward_input`] through the GEMM, dcol folded back the way `unfolding` says: on the image
/// laid out flat for [`Unfolding::Flat`], else by [`col2im`].
fn backward_input_by(unfolding: Unfolding, dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let wt = MatRef::rows(w, g.c_out, k).t();
    let flat = match unfolding {
        Unfolding::Flat if !g.is_pointwise() => Flat::forward(g),
        _ => None,
    };
    let each_image = |buffers: &mut Option<FlatInputGradient>,
                      (dxn, dyn_): (&mut [MaybeUninit<f32>], &[f32])| {
        let dym = MatRef::rows(dyn_, g.c_out, p);
        if g.is_pointwise() {
            gemm_with_epilogue(Kernel::detect(), wt, dym, dxn, p, Epilogue::default());
        } else if let Some(buffers) = buffers {
            buffers.image(wt, dyn_, dxn);
        } else {
            with_col(g, |col| {
                gemm(wt, dym, col, p, false);
                col2im(col, g, dxn);
            });
        }
    };
    // SAFETY: each image's dx is written whole, by the product (every element), by `col2im`
    // (which zeroes it before adding into it) or by `Flat::unpad` (every element).
    unsafe {
        written_by(g.n * g.c_in * g.h * g.w, |dx| {
            dx.par_chunks_mut(g.c_in * g.h * g.w)
                .zip(dy.par_chunks(g.c_out * p))
                .for_each_init(|| flat.map(|f| FlatInputGradient::new(f, g)), each_image)
        })
    }
}

/// The buffers of one task's input gradients on flat planes ([`Unfolding::Flat`]): dy in rows
/// of `wq`, the product `dcol[Ci·KH·KW, Ho·wq]`, and dx on the image's padded planes, into
/// which row (ci, k) of dcol is added at tap k's offset: a contiguous run, where [`col2im`]
/// places each element of a strided layer one at a time. The same sums in the same order.
struct FlatInputGradient {
    planes: FlatPlanes,
    dy_rows: Vec<f32>,
    dcol: Vec<f32>,
    c_out: usize,
}

impl FlatInputGradient {
    fn new(flat: Flat, g: &Conv2dGeom) -> FlatInputGradient {
        let cols = flat.out_h * flat.wq();
        FlatInputGradient {
            planes: FlatPlanes::new(flat, g.c_in),
            // each row's last (kw − 1)/s values stay 0: their dcol columns are 0
            dy_rows: vec![0.0; g.c_out * cols],
            dcol: vec![0.0; g.patch_len() * cols],
            c_out: g.c_out,
        }
    }

    /// `dxn[Ci,H,W]` = col2im(wt · dyn), every element written.
    fn image(&mut self, wt: MatRef, dyn_: &[f32], dxn: &mut [MaybeUninit<f32>]) {
        let f = self.planes.flat;
        let cols = f.out_h * f.wq();
        dy_in_rows(&f, dyn_, &mut self.dy_rows, cols);
        let dy = MatRef::rows(&self.dy_rows, self.c_out, cols);
        gemm(wt, dy, &mut self.dcol, cols, false);
        let (taps, len) = (self.planes.offsets.len(), f.padded_len());
        self.planes.planes.fill(0.0);
        for (r, row) in self.dcol.chunks_exact(cols).enumerate() {
            let at = (r / taps) * len + self.planes.offsets[r % taps];
            let dst = &mut self.planes.planes[at..at + cols];
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        }
        let planes = dxn.chunks_exact_mut(f.in_h * f.in_w);
        for (plane, padded) in planes.zip(self.planes.each()) {
            f.unpad(padded, plane);
        }
    }
}

/// Each plane of `dy[Co,Ho,Wo]` into `rows` (`row_len` floats a plane) laid out on `f`'s flat
/// outputs: its rows `wq` apart, the values past each row's `Wo` left as they are (0).
fn dy_in_rows(f: &Flat, dy: &[f32], rows: &mut [f32], row_len: usize) {
    let planes = rows.chunks_exact_mut(row_len);
    for (flat, plane) in planes.zip(dy.chunks_exact(f.out_h * f.out_w)) {
        for (row, d) in flat.chunks_mut(f.wq()).zip(plane.chunks_exact(f.out_w)) {
            row[..f.out_w].copy_from_slice(d);
        }
    }
}

/// Σ xs, in 8 interleaved accumulators (vectorised, and not paced by one chain of additions).
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How a convolution's weight gradient `dw = Σₙ dyₙ · colₙᵀ` is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightGradient {
    /// A GEMM of dy with colᵀ, which the packing gathers from the image (`Unfolded`; the image
    /// itself when pointwise; a written im2col under `FRACTURE_CONV_UNFOLDING=copy`). Wins on
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
}

impl WeightGradient {
    /// Flat where it applies, the output plane has `FLAT_MIN_OUTPUTS` pixels or more and the
    /// layer fewer than `FLAT_MAX_CHANNELS` output channels; not for a pointwise layer (already
    /// a plain GEMM), nor under `FRACTURE_CONV_UNFOLDING=copy`. Dots for a pointwise layer whose
    /// plane has `DOTS_MIN_PIXELS` pixels or more, a whole number of AVX-512 registers.
    pub fn choose(g: &Conv2dGeom) -> WeightGradient {
        let pixels = g.out_h * g.out_w;
        if g.is_pointwise() && pixels >= DOTS_MIN_PIXELS && pixels.is_multiple_of(16) {
            return WeightGradient::Dots;
        }
        let flat = g.stride_h == g.stride_w
            && !g.is_pointwise()
            && g.out_h * g.out_w >= FLAT_MIN_OUTPUTS
            && g.c_out < FLAT_MAX_CHANNELS
            && Unfolding::forced() != Some(Unfolding::Copy);
        if flat {
            WeightGradient::Flat
        } else {
            WeightGradient::Gemm
        }
    }
}

/// Output pixels from which [`WeightGradient::Flat`] is chosen: resnet's 3×3 layers (batch 32,
/// per layer) were faster flat at 12×12 (2.55 against 2.85 ms) and with the GEMM at 8×8 (1.62
/// against 1.41 ms) and 6×6 (5.1 against 2.8 ms).
const FLAT_MIN_OUTPUTS: usize = 100;

/// Pixels from which [`WeightGradient::Dots`] is chosen for a pointwise layer: below, each dot
/// product is short and its sum across the register's lanes costs more than the GEMM's packing.
const DOTS_MIN_PIXELS: usize = 1024;

/// Output channels from which the GEMM is chosen: its packing is shared by more rows of the
/// product. With the 8 × 3 blocks of `dot_rows` (batch 32, alternated three times):
/// fracturenet's 64-channel layer at 64×64 took 37–40 ms with the GEMM against 24–33 flat, and
/// resnet's 64-channel 12×12 layers 3.0–3.2 against 2.7–2.8; fracturenet's 128-channel layers
/// at 32×32 and 16×16 were no faster flat (20–26 ms both ways; 11–14 against 11–15).
const FLAT_MAX_CHANNELS: usize = 128;

/// One image and its dy laid out flat (`Flat`): the operands of [`WeightGradient::Flat`].
struct FlatGrid<'g> {
    planes: FlatPlanes,
    g: &'g Conv2dGeom,
    /// `[Co, flat_outputs]`: dy in rows of `wq`, zero past each row's `Wo` outputs.
    dy_rows: Vec<f32>,
}

impl<'g> FlatGrid<'g> {
    /// Zeroed once: each image writes the same positions, so the padding stays zero.
    fn new((flat, g): (Flat, &'g Conv2dGeom)) -> FlatGrid<'g> {
        FlatGrid {
            planes: FlatPlanes::new(flat, g.c_in),
            g,
            dy_rows: vec![0.0; g.c_out * flat.flat_outputs()],
        }
    }

    /// Lays out one image `x[Ci,H,W]` and its `dy[Co,Ho,Wo]`.
    fn lay_out(&mut self, x: &[f32], dy: &[f32]) {
        self.planes.lay_out(x);
        let f = &self.planes.flat;
        dy_in_rows(f, dy, &mut self.dy_rows, f.flat_outputs());
    }

    /// `dw[Co, Ci·KH·KW]` += Σ_i dy[co][i] · plane_ci[i + offset_k] for every (co, ci, k).
    fn add_weight_gradient(&self, dw: &mut [f32]) {
        let (f, g) = (&self.planes.flat, self.g);
        let taps = g.kh * g.kw;
        let dy = (&self.dy_rows[..], f.flat_outputs());
        for (ci, plane) in self.planes.each().enumerate() {
            let out = (&mut dw[ci * taps..], g.patch_len());
            dot_rows(Kernel::detect(), dy, plane, &self.planes.offsets, out);
        }
    }
}

/// A pointwise layer's `dw[Co, Ci]` += Σₙ dyₙ · xₙᵀ for the images `xs[m,Ci,H,W]` and their
/// `dys`: `dw[co][ci]` += Σ_i `dy[co][i]` · `x[ci][i]`, each channel plane of x one tap of
/// `dot_rows` (at `ci·H·W`).
fn add_pointwise_weight_gradients(xs: &[f32], dys: &[f32], g: &Conv2dGeom, dw: &mut [f32]) {
    let pixels = g.h * g.w;
    let planes: Vec<usize> = (0..g.c_in).map(|ci| ci * pixels).collect();
    for (xn, dyn_) in xs
        .chunks_exact(g.c_in * pixels)
        .zip(dys.chunks_exact(g.c_out * pixels))
    {
        dot_rows(
            Kernel::detect(),
            (dyn_, pixels),
            xn,
            &planes,
            (&mut *dw, g.c_in),
        );
    }
}

/// `dw[Co, Ci·KH·KW]` += dyₙ · colₙᵀ for one image.
fn add_weight_gradient(xn: &[f32], dyn_: &[f32], g: &Conv2dGeom, dw: &mut [f32]) {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let dym = MatRef::rows(dyn_, g.c_out, p);
    if g.is_pointwise() {
        gemm(dym, MatRef::rows(xn, k, p).t(), dw, k, true);
    } else if Unfolding::forced() != Some(Unfolding::Copy) {
        let colt = Unfolded {
            x: xn,
            g,
            transposed: true,
        };
        gemm(dym, colt, dw, k, true);
    } else {
        with_col(g, |col| {
            im2col(xn, g, col);
            gemm(dym, MatRef::rows(col, k, p).t(), dw, k, true);
        });
    }
}

/// `dw[Co, Ci·KH·KW]` += Σₙ dyₙ · colₙᵀ for the images `xs[m,Ci,H,W]` and their `dys`, as one
/// product: dy's rows side by side `[Co, m·Ho·Wo]` times the images' colᵀ, whose K is every
/// image's pixels. Per image, a small plane's product is a loop over k shorter than one of the
/// GEMM's slices, and dw's blocks are read and written again for every image.
fn add_weight_gradient_together(xs: &[f32], dys: &[f32], g: &Conv2dGeom, dw: &mut [f32]) {
    let p = g.out_h * g.out_w;
    let m = dys.len() / (g.c_out * p);
    let mut side = vec![0f32; g.c_out * m * p];
    for (n, dyn_) in dys.chunks_exact(g.c_out * p).enumerate() {
        for (co, row) in dyn_.chunks_exact(p).enumerate() {
            side[(co * m + n) * p..][..p].copy_from_slice(row);
        }
    }
    let colt = Unfolded {
        x: xs,
        g,
        transposed: true,
    };
    gemm(
        MatRef::rows(&side, g.c_out, m * p),
        colt,
        dw,
        g.patch_len(),
        true,
    );
}

/// Output pixels per image below which a chunk's images make one weight-gradient product
/// ([`add_weight_gradient_together`]; the GEMM's slice of K is 256): resnet's 128-channel 6×6
/// layers 2.9–3.4 → 2.6–3.0 ms (batch 32). Not for pointwise layers, whose per-image colᵀ is
/// the image itself, packed faster as a plain matrix: MobileNet's 256-channel 1×1 layers at 8×8
/// took 1.0–1.1 ms a product per image against 1.2–1.4 together.
const ONE_PRODUCT_MAX_PIXELS: usize = 256;

/// Images per partial weight gradient. Fixed (not derived from the thread count) so that the
/// summation order, and so the result, is the same on every machine.
const IMAGES_PER_PARTIAL: usize = 8;

/// (`dw[Co,Ci,KH,KW]` = Σₙ dyₙ · colₙᵀ, `db[Co]` = Σ over n, y, x of dy)
pub fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> (Vec<f32>, Vec<f32>) {
    backward_weight_by(WeightGradient::choose(g), x, dy, g)
}

/// [`backward_weight`] the way `method` says (`Flat` needs strides the same both ways, `Dots` a
/// pointwise layer).
fn backward_weight_by(
    method: WeightGradient,
    x: &[f32],
    dy: &[f32],
    g: &Conv2dGeom,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        method != WeightGradient::Dots || g.is_pointwise(),
        "the weight gradient as dot products needs a pointwise layer"
    );
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    let (x_img, dy_img) = (g.c_in * g.h * g.w, g.c_out * p);
    let flat = (method == WeightGradient::Flat).then(|| {
        let f = Flat::forward(g).expect("the flat weight gradient needs one stride both ways");
        (f, g)
    });
    let partials: Vec<Vec<f32>> = (0..g.n.div_ceil(IMAGES_PER_PARTIAL))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0f32; g.c_out * k];
            let images = chunk * IMAGES_PER_PARTIAL..g.n.min((chunk + 1) * IMAGES_PER_PARTIAL);
            let (xs, dys) = (
                &x[images.start * x_img..images.end * x_img],
                &dy[images.start * dy_img..images.end * dy_img],
            );
            if let Some(mut grid) = flat.map(FlatGrid::new) {
                for (xn, dyn_) in xs.chunks_exact(x_img).zip(dys.chunks_exact(dy_img)) {
                    grid.lay_out(xn, dyn_);
                    grid.add_weight_gradient(&mut dw);
                }
            } else if method == WeightGradient::Dots {
                add_pointwise_weight_gradients(xs, dys, g, &mut dw);
            } else if p < ONE_PRODUCT_MAX_PIXELS
                && !g.is_pointwise()
                && Unfolding::forced() != Some(Unfolding::Copy)
            {
                add_weight_gradient_together(xs, dys, g, &mut dw);
            } else {
                for (xn, dyn_) in xs.chunks_exact(x_img).zip(dys.chunks_exact(dy_img)) {
                    add_weight_gradient(xn, dyn_, g, &mut dw);
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; g.c_out * k];
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(d, s)| *d += s);
    }
    let db = (0..g.c_out)
        .into_par_iter()
        .map(|co| {
            (0..g.n)
                .map(|n| sum(&dy[n * dy_img + co * p..n * dy_img + (co + 1) * p]))
                .sum()
        })
        .collect();
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Padding;
    use crate::tensor::Tensor;

    /// Packs `b[p0.., j0..]` as the GEMM does (a zeroed buffer, then `pack`).
    fn packed(b: &impl PackB, p0: usize, kc: usize, j0: usize, nc: usize) -> Vec<f32> {
        let mut out = vec![0.0; nc.div_ceil(NR) * NR * kc];
        b.pack(p0, kc, j0, nc, &mut out);
        out
    }

    #[test]
    fn implicit_unfolding_packs_exactly_what_im2col_writes() {
        // (c_in, h, w, kernel, stride, padding): same and valid, odd sizes, strides 1 and 2,
        // asymmetric same padding, a kernel wider than tall, and output rows shorter than a strip.
        let cases = [
            (3, 9, 11, (3, 3), (1, 1), Padding::Same),
            (2, 8, 8, (3, 3), (2, 2), Padding::Same),
            (2, 10, 7, (5, 3), (1, 2), Padding::Valid),
            (1, 40, 37, (3, 3), (1, 1), Padding::Same),
            (4, 6, 6, (1, 3), (1, 1), Padding::Same),
        ];
        for (i, &(c_in, h, w, kernel, stride, padding)) in cases.iter().enumerate() {
            let g = Conv2dGeom::new(1, c_in, h, w, 4, kernel, stride, padding).unwrap();
            let x = Tensor::rand_uniform([c_in, h, w], -1.0, 1.0, i as u64).data;
            let (k, p) = (g.patch_len(), g.out_h * g.out_w);
            let mut col = vec![0.0; k * p];
            im2col(&x, &g, &mut col);
            for transposed in [false, true] {
                let implicit = Unfolded {
                    x: &x,
                    g: &g,
                    transposed,
                };
                let copy = if transposed {
                    MatRef::rows(&col, k, p).t()
                } else {
                    MatRef::rows(&col, k, p)
                };
                let (rows, cols) = (copy.rows, copy.cols);
                assert_eq!((implicit.rows(), implicit.cols()), (rows, cols));
                // The whole matrix, and a block that starts and ends mid-strip and mid-row.
                let blocks = [
                    (0, rows, 0, cols),
                    (1, rows - 2, NR, cols.saturating_sub(NR + 3).max(1)),
                ];
                for (p0, kc, j0, nc) in blocks {
                    if j0 >= cols {
                        continue;
                    }
                    let nc = nc.min(cols - j0);
                    assert_eq!(
                        packed(&implicit, p0, kc, j0, nc),
                        packed(&copy, p0, kc, j0, nc),
                        "case {i}, transposed {transposed}, block {p0} {kc} {j0} {nc}"
                    );
                }
            }
        }
    }

    /// The flat weight gradient against the GEMM one on odd shapes: strides 1, 2 and 3, valid
    /// and same (asymmetric) padding, kernels not square, output channels not a multiple of
    /// the 8- or 4-row blocks and taps not of the 3-tap block, more images than one partial holds.
    #[test]
    fn the_flat_weight_gradient_is_the_gemm_one() {
        // (n, c_in, h, w, c_out, kernel, stride, padding)
        let cases = [
            (2, 3, 9, 11, 5, (3, 3), (1, 1), Padding::Same),
            (9, 2, 8, 7, 4, (3, 3), (2, 2), Padding::Same),
            (3, 1, 13, 12, 6, (7, 7), (2, 2), Padding::Same),
            (2, 4, 10, 9, 3, (2, 3), (1, 1), Padding::Valid),
            (1, 2, 13, 13, 9, (5, 5), (3, 3), Padding::Valid),
            (2, 5, 6, 7, 17, (1, 3), (1, 1), Padding::Same),
            (1, 3, 12, 12, 4, (1, 1), (2, 2), Padding::Same),
        ];
        for (i, &(n, c_in, h, w, c_out, kernel, stride, padding)) in cases.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, kernel, stride, padding).unwrap();
            assert_weight_gradient_is_the_gemms(WeightGradient::Flat, &g, i as u64);
        }
    }

    /// A pointwise weight gradient as dot products against the GEMM's (on this process's
    /// kernel; `tests/ops.rs` runs a pointwise case under each): channels off `dot_rows`' 8- and
    /// 4-row and 3-tap blocks, more images than one partial holds, planes of one and of several
    /// AVX-512 registers.
    #[test]
    fn the_pointwise_weight_gradient_as_dots_is_the_gemm_one() {
        // (n, c_in, h, w, c_out)
        let cases = [
            (9, 5, 16, 16, 7),
            (2, 16, 4, 4, 17),
            (3, 1, 8, 6, 13),
            (1, 4, 32, 32, 3),
        ];
        for (i, &(n, c_in, h, w, c_out)) in cases.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, (1, 1), (1, 1), Padding::Same).unwrap();
            assert_weight_gradient_is_the_gemms(WeightGradient::Dots, &g, i as u64);
        }
    }

    /// `method`'s weight gradient of random x and dy at `g` (drawn from `seed`) against the
    /// GEMM's: db equal, dw within 1e-5 of its largest value.
    fn assert_weight_gradient_is_the_gemms(method: WeightGradient, g: &Conv2dGeom, seed: u64) {
        let x = Tensor::rand_uniform([g.n, g.c_in, g.h, g.w], -1.0, 1.0, seed).data;
        let dy = Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, 50 + seed).data;
        let (dw, db) = backward_weight_by(method, &x, &dy, g);
        let (dw_gemm, db_gemm) = backward_weight_by(WeightGradient::Gemm, &x, &dy, g);
        assert_eq!(db, db_gemm, "{method:?}, case {seed}");
        let largest = dw_gemm.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (j, (d, m)) in dw.iter().zip(&dw_gemm).enumerate() {
            assert!(
                (d - m).abs() <= 1e-5 * largest,
                "{method:?}, case {seed}, dw[{j}]: {d} against the GEMM's {m}"
            );
        }
    }

    /// `got` equal to `want` element by element, or a panic naming the first that is not.
    fn assert_same(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("{what}: element {i} is {} against {}", got[i], want[i]);
        }
    }

    /// Convolutions `(n, c_in, h, w, c_out, kernel, stride, padding)` on which the unfoldings
    /// are compared.
    const SHAPES: [Shape; 6] = [
        (2, 3, 9, 11, 5, (3, 3), (1, 1), Padding::Same),
        (3, 1, 40, 38, 16, (7, 7), (2, 2), Padding::Same),
        (2, 2, 13, 12, 9, (5, 3), (3, 3), Padding::Valid),
        (1, 32, 12, 10, 12, (3, 3), (2, 2), Padding::Same),
        (1, 2, 70, 40, 3, (1, 3), (1, 1), Padding::Same),
        (2, 3, 11, 12, 4, (3, 3), (2, 2), Padding::Valid),
    ];
    type Shape = (usize, usize, usize, usize, usize, Dim, Dim, Padding);
    type Dim = (usize, usize);

    /// The forward pass with each unfolding, bit for bit the same (one product, packed three
    /// ways): strides 1, 2 and 3, valid and asymmetric same padding, kernels 7×7, 5×3 and 1×3,
    /// more than one `KC` slice of K (Ci·KH·KW = 288) and than one `NC` tile of columns, output
    /// channels not a multiple of the micro-kernel's rows, with ReLU and with a pooling after it.
    #[test]
    fn every_unfolding_gives_the_same_forward_pass() {
        for (i, &(n, c_in, h, w, c_out, kernel, stride, padding)) in SHAPES.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, kernel, stride, padding).unwrap();
            let x = Tensor::rand_uniform([n, c_in, h, w], -1.0, 1.0, i as u64).data;
            let wt = Tensor::rand_uniform([c_out, g.patch_len()], -1.0, 1.0, 20 + i as u64).data;
            let b = Tensor::rand_uniform([c_out], -1.0, 1.0, 40 + i as u64).data;
            let pool = Pool2dGeom::new(n, c_out, g.out_h, g.out_w, (2, 2), (2, 2)).unwrap();
            for (relu, pool) in [(false, None), (true, None), (true, Some(&pool))] {
                let by = |unfolding| {
                    let wm = PackedA::new(MatRef::rows(&wt, c_out, g.patch_len()));
                    forward_with(&Filters::Gemm(wm, unfolding), &x, &b, &g, relu, pool)
                };
                let copy = by(Unfolding::Copy);
                assert_same(
                    &by(Unfolding::Implicit),
                    &copy,
                    &format!("case {i}, implicit"),
                );
                let flat = by(Unfolding::Flat);
                assert_same(&flat, &copy, &format!("case {i}, flat, relu {relu}"));
            }
        }
    }
    /// The input gradient folded on flat planes against [`col2im`], bit for bit, on the
    /// forward test's shapes (strides 1, 2 and 3; valid padding leaves input pixels no tap
    /// reads, whose gradient is 0), with each task's buffers shared by several images too.
    #[test]
    fn the_flat_input_gradient_is_col2ims() {
        for (i, &(n, c_in, h, w, c_out, kernel, stride, padding)) in SHAPES.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, kernel, stride, padding).unwrap();
            let dy = Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, i as u64).data;
            let wt = Tensor::rand_uniform([c_out, g.patch_len()], -1.0, 1.0, 20 + i as u64).data;
            let copy = backward_input_by(Unfolding::Copy, &dy, &wt, &g);
            let flat = backward_input_by(Unfolding::Flat, &dy, &wt, &g);
            assert_same(&flat, &copy, &format!("case {i}"));
            // on one thread, one task's buffers serve every image: nothing of one may stay
            let one_thread = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let flat = one_thread.install(|| backward_input_by(Unfolding::Flat, &dy, &wt, &g));
            assert_same(&flat, &copy, &format!("case {i}, one thread"));
        }
    }
    /// The weight gradient of several images as one product against the sum of one product per
    /// image: 3×3 same and strided, 5×3 valid, a 1×1 layer, planes whose pixels are not a whole
    /// strip, images across the pack's blocks.
    #[test]
    fn the_weight_gradient_of_images_together_is_the_sum_of_theirs() {
        let cases = [
            (5, 3, 6, 7, 9, (3, 3), (1, 1), Padding::Same),
            (3, 2, 9, 8, 4, (3, 3), (2, 2), Padding::Same),
            (4, 5, 7, 9, 3, (5, 3), (1, 1), Padding::Valid),
            (6, 12, 5, 5, 10, (1, 1), (1, 1), Padding::Valid),
        ];
        for (i, &(n, c_in, h, w, c_out, kernel, stride, padding)) in cases.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, kernel, stride, padding).unwrap();
            let x = Tensor::rand_uniform([n, c_in, h, w], -1.0, 1.0, i as u64).data;
            let dy = Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, 60 + i as u64).data;
            let mut each = vec![0f32; c_out * g.patch_len()];
            let per_image = (x.chunks_exact(x.len() / n)).zip(dy.chunks_exact(dy.len() / n));
            for (xn, dyn_) in per_image {
                add_weight_gradient(xn, dyn_, &g, &mut each);
            }
            let mut together = vec![0f32; c_out * g.patch_len()];
            add_weight_gradient_together(&x, &dy, &g, &mut together);
            let largest = each.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, (a, b)) in together.iter().zip(&each).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * largest,
                    "case {i}, dw[{j}]: together {a}, image by image {b}"
                );
            }
        }
    }
}
