//! 3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016): the variant of the convolution ([`super`]) that does
//! 2.25× fewer multiply-adds.
//!
//! Each 2×2 block ("tile") of an output channel comes from the 4×4 input block under it:
//!   Y = Aᵀ [ Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! for the 3×3 filters g and the input blocks d of every input channel. The 16 products of ⊙
//! replace the 36 multiply-adds of four output pixels. Summed over the input channels they are,
//! for each position ξ of the transformed 4×4 tile, one matrix product, done by the GEMM:
//!   M[ξ][Co, tiles] = U[ξ][Co, Ci] · V[ξ][Ci, tiles],   U = G g Gᵀ,  V = Bᵀ d B.
//! The price is two transforms: of the input (16 floats per tile and input channel, 4 per input
//! pixel) and of the output. An image's tiles go through in blocks of whole tile rows, sized so
//! that V and M stay in L2; on small planes the tiles of a group of images go through together
//! ([`images_per_group`]), so that the products have enough columns.
//!
//! The weight gradient can go the same way ([`add_transformed_weight_gradient`]): it reuses the
//! input transform V, transforms dy's 2×2 tiles by A, multiplies the two per ξ into the
//! gradient of U, and takes that back to the 3×3 filters by Gᵀ · G ([`weight_gradient`]).
//!
//! Rounding: B and A add and subtract inputs, G halves them (exactly), so the result differs from
//! the direct sum by a few ulps of its largest terms; the op tests bound it against the reference
//! (`tests/ops.rs`, with this algorithm forced on every 3×3 stride-1 case, the weight gradient
//! included).

use crate::backend::cpu::gemm::{gemm, Kernel, MatRef, PackedA, NR};
use crate::backend::Conv2dGeom;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Positions ξ of a transformed 4×4 tile.
pub const XI: usize = 16;
/// Floats of V and M together for one block of tiles (1 MiB, an L2's worth).
const BLOCK_FLOATS: usize = 1 << 18;
/// Images with fewer tiles than this go through the products in groups ([`images_per_group`]):
/// four of the GEMM's column strips.
const GROUP_BELOW_TILES: usize = 4 * NR;

/// True for the convolutions this variant computes: 3×3, stride 1.
pub fn applies(g: &Conv2dGeom) -> bool {
    (g.kh, g.kw, g.stride_h, g.stride_w) == (3, 3, 1, 1)
}

/// How many images of `g`'s batch go through the 16 products together. One image of a small
/// plane has few tiles: a 6×6 output has 9, which fill 9 of the 32 columns of the GEMM's one
/// strip, so the products ran at a quarter of their rate. Below `GROUP_BELOW_TILES` an image's
/// tiles, the tiles of as many images as fit one block sit side by side in V and M (each image's
/// a run of columns), leaving at least one group per thread. Every output is the same sum as
/// alone: a column's products do not depend on the columns beside it.
pub fn images_per_group(g: &Conv2dGeom) -> usize {
    let tiles = g.out_h.div_ceil(2) * g.out_w.div_ceil(2);
    let fit = BLOCK_FLOATS / (XI * (g.c_in + g.c_out) * tiles);
    if tiles >= GROUP_BELOW_TILES || fit <= 1 {
        return 1;
    }
    fit.min(g.n.div_ceil(rayon::current_num_threads())).max(1)
}

/// A layer's filters made ready for its batch's 16 products ([`prepare`]).
pub struct Transformed {
    /// `U[ξ]` for each ξ, packed for the GEMM.
    u: Vec<PackedA>,
    /// The GEMM kernel that multiplies them.
    kernel: Kernel,
}

/// The filters `w[Co,Ci,3,3]` transformed, each `U[ξ]` packed for the GEMM `kernel`: once per
/// batch.
pub fn prepare(kernel: Kernel, w: &[f32], g: &Conv2dGeom) -> Transformed {
    assert!(
        applies(g),
        "Winograd F(2x2, 3x3) takes 3x3 stride-1 convolutions"
    );
    let per_filter = transform_filters(w);
    let u = (0..XI)
        .into_par_iter()
        .map(|xi| {
            let ui: Vec<f32> = per_filter.iter().map(|u| u[xi]).collect();
            PackedA::new(MatRef::rows(&ui, g.c_out, g.c_in))
        })
        .collect();
    Transformed { u, kernel }
}

impl Transformed {
    /// The GEMM kernel that multiplies them.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }
}

/// `U[ξ]` = G g Gᵀ for every filter g of `w[Co,Ci,3,3]`, filter by filter (`[Co·Ci][ξ]`, the
/// filters in parallel), with G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
fn transform_filters(w: &[f32]) -> Vec<[f32; XI]> {
    let g_times = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    w.par_chunks_exact(9)
        .with_min_len(FILTERS_PER_TASK)
        .map(|g| {
            // G down each column of g (cols[x][p]), then G along each row of the result
            let cols: [[f32; 4]; 3] = std::array::from_fn(|x| g_times(g[x], g[3 + x], g[6 + x]));
            let mut u = [0f32; XI];
            for (p, out) in u.chunks_exact_mut(4).enumerate() {
                out.copy_from_slice(&g_times(cols[0][p], cols[1][p], cols[2][p]));
            }
            u
        })
        .collect()
}

/// Filters one task of [`transform_filters`] or [`weight_gradient`] takes at least.
const FILTERS_PER_TASK: usize = 1024;

/// One thread's buffers, reused from image to image.
#[derive(Default)]
struct Scratch {
    /// V of a block of tiles, `[ξ][Ci][tiles]`.
    v: Vec<f32>,
    /// M of a block of tiles, `[ξ][Co][tiles]`.
    m: Vec<f32>,
    /// Rows: an input (or dy) row padded, then Bᵀ (or A) along the block's rows, or Aᵀ down
    /// the columns of its tile rows.
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Images `xs[m,Ci,H,W]` into `ys[m,Co,Ho,Wo]`, with the filters of [`prepare`]; every pixel
/// is written. Several images (a group of [`images_per_group`]) go through one block together;
/// one image goes through in blocks of its tile rows.
pub fn images(
    xs: &[f32],
    u: &Transformed,
    bias: Option<&[f32]>,
    relu: bool,
    g: &Conv2dGeom,
    ys: &mut [MaybeUninit<f32>],
) {
    // taken out while in use: the GEMM may run another image's task on this thread meanwhile
    let mut s = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for rows in tile_row_blocks(g, xs.len() / (g.c_in * g.h * g.w)) {
        block(xs, u, (bias, relu), g, rows, ys, &mut s);
    }
    SCRATCH.with(|c| *c.borrow_mut() = s);
}

/// The tile rows of each block that `images` images of `g` go through together: one image in
/// blocks of whole tile rows, sized so that V and M stay in L2; a group, all its rows at once.
fn tile_row_blocks(g: &Conv2dGeom, images: usize) -> impl Iterator<Item = Range<usize>> {
    let (th, tw) = (g.out_h.div_ceil(2), g.out_w.div_ceil(2));
    let rows_per_block = if images == 1 {
        (BLOCK_FLOATS / (XI * (g.c_in + g.c_out) * tw)).max(1)
    } else {
        th
    };
    (0..th)
        .step_by(rows_per_block)
        .map(move |ty0| ty0..(ty0 + rows_per_block).min(th))
}

/// Where one image's tiles lie among the columns of a block's V and M: from `first`, of `total`.
#[derive(Clone, Copy)]
struct Columns {
    first: usize,
    total: usize,
}

/// The tiles of a block: tile rows `rows` of each of its images, side by side.
#[derive(Clone, Copy)]
struct BlockTiles {
    per_image: usize,
    total: usize,
}

impl BlockTiles {
    fn new(g: &Conv2dGeom, rows: &Range<usize>, images: usize) -> BlockTiles {
        let per_image = rows.len() * g.out_w.div_ceil(2);
        BlockTiles {
            per_image,
            total: per_image * images,
        }
    }

    /// Image `i`'s columns.
    fn columns(self, i: usize) -> Columns {
        Columns {
            first: i * self.per_image,
            total: self.total,
        }
    }
}

impl Scratch {
    /// Sized for a block of `tiles` in tile rows `rows`.
    fn fit(&mut self, g: &Conv2dGeom, rows: &Range<usize>, tiles: BlockTiles) {
        let tw = g.out_w.div_ceil(2);
        self.v.resize(XI * g.c_in * tiles.total, 0.0);
        self.m.resize(XI * g.c_out * tiles.total, 0.0);
        self.rows
            .resize((2 * tw + 2) + (2 * rows.len() + 2) * 4 * tw, 0.0);
    }
}

/// The tiles of tile rows `rows` of each image of `xs`: V, the 16 products, Y.
fn block(
    xs: &[f32],
    u: &Transformed,
    epilogue: (Option<&[f32]>, bool),
    g: &Conv2dGeom,
    rows: Range<usize>,
    ys: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
) {
    let (x_img, y_img) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    let block_tiles = BlockTiles::new(g, &rows, xs.len() / x_img);
    let (tiles, columns) = (block_tiles.total, |i| block_tiles.columns(i));
    s.fit(g, &rows, block_tiles);
    for (i, xn) in xs.chunks_exact(x_img).enumerate() {
        transform_input(xn, g, (rows.clone(), columns(i)), &mut s.v, &mut s.rows);
    }
    for (xi, ui) in u.u.iter().enumerate() {
        let vi = MatRef::rows(&s.v[xi * g.c_in * tiles..][..g.c_in * tiles], g.c_in, tiles);
        gemm(
            u.kernel,
            ui,
            vi,
            &mut s.m[xi * g.c_out * tiles..][..g.c_out * tiles],
            tiles,
            false,
        );
    }
    for (i, yn) in ys.chunks_exact_mut(y_img).enumerate() {
        let at = (rows.clone(), columns(i));
        transform_output(&s.m, g, at, epilogue, yn, &mut s.rows);
    }
}

/// `V[ξ][ci][t]` = (Bᵀ d B)[ξ] for the tiles t of tile rows `rows` (numbered from the block's
/// first, in the image's `columns`), d the 4×4 input block at (2·ty − pad_top, 2·tx −
/// pad_left), zero outside the image;
/// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
///
/// Bᵀ runs along each input row the block reads once (tile rows overlap by two input rows),
/// then down the columns of all its tile rows at once. For that, the rows along which it ran
/// are kept even rows first, then odd ones (`h[q][row mod 2][row / 2][tx]`): the four rows under
/// tile row b are then rows b and b + 1 of each half, and the tiles of every tile row of a
/// block are one run of V. Down the columns a tile row at a time, the loops were `tw` long
/// (6 on a 12×12 plane): that pass was 12 % of resnet's inference.
fn transform_input(
    xn: &[f32],
    g: &Conv2dGeom,
    (rows, columns): (Range<usize>, Columns),
    v: &mut [f32],
    buf: &mut [f32],
) {
    let tw = g.out_w.div_ceil(2);
    let len = 2 * tw + 2;
    // rows of one parity: the block's tile rows and one more
    let half = (rows.len() + 1) * tw;
    let (padded, h) = buf.split_at_mut(len);
    let h = &mut h[..4 * 2 * half];
    for ci in 0..g.c_in {
        let plane = &xn[ci * g.h * g.w..][..g.h * g.w];
        for r in 0..2 * rows.len() + 2 {
            let iy = (2 * rows.start + r)
                .checked_sub(g.pad_top)
                .filter(|&i| i < g.h);
            pad_row(iy.map(|iy| &plane[iy * g.w..][..g.w]), g.pad_left, padded);
            let row = |q: usize| {
                let at = (2 * q + r % 2) * half + r / 2 * tw;
                at..at + tw
            };
            let [h0, h1, h2, h3] = h
                .get_disjoint_mut([row(0), row(1), row(2), row(3)])
                .expect("the rows of h[0..4] are disjoint");
            let pairs = padded.chunks_exact(2).zip(padded[2..].chunks_exact(2));
            let hs = h0.iter_mut().zip(h1).zip(h2.iter_mut().zip(h3));
            for ((d, e), ((h0, h1), (h2, h3))) in pairs.zip(hs) {
                (*h0, *h1, *h2, *h3) = (d[0] - e[0], d[1] + e[0], e[0] - d[1], d[1] - e[1]);
            }
        }
        // Bᵀ down the columns: V[p][q] from rows 2b .. 2b + 4 of h[q], for every b at once
        let n = rows.len() * tw;
        for (q, hq) in h.chunks_exact(2 * half).enumerate() {
            let (even, odd) = hq.split_at(half);
            let (k0, k1, k2, k3) = (&even[..n], &odd[..n], &even[tw..][..n], &odd[tw..][..n]);
            let at = |p: usize| ((p * 4 + q) * g.c_in + ci) * columns.total + columns.first;
            combine(&mut v[at(0)..][..n], k0, k2, |a, c| a - c);
            combine(&mut v[at(1)..][..n], k1, k2, |a, c| a + c);
            combine(&mut v[at(2)..][..n], k2, k1, |a, c| a - c);
            combine(&mut v[at(3)..][..n], k1, k3, |a, c| a - c);
        }
    }
}

/// `out` = one input row (`None`: a row of the padding), shifted right by `pad` and zero-filled.
fn pad_row(row: Option<&[f32]>, pad: usize, out: &mut [f32]) {
    let Some(row) = row else {
        out.fill(0.0);
        return;
    };
    let n = row.len().min(out.len() - pad);
    out[..pad].fill(0.0);
    out[pad..pad + n].copy_from_slice(&row[..n]);
    out[pad + n..].fill(0.0);
}

/// `out[j] = f(a[j], b[j])`.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// `y[co]` for the tiles of tile rows `rows` (in the image's `columns` of M): Aᵀ M A, plus the
/// bias, then max(0, ·) when `relu`, with Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]; the last tile of
/// an odd side writes one pixel.
///
/// Aᵀ runs down the columns of all the block's tile rows at once (their tiles are one run of
/// M), then along each output row.
fn transform_output(
    m: &[f32],
    g: &Conv2dGeom,
    (rows, columns): (Range<usize>, Columns),
    (bias, relu): (Option<&[f32]>, bool),
    yn: &mut [MaybeUninit<f32>],
    buf: &mut [f32],
) {
    let tw = g.out_w.div_ceil(2);
    let n = rows.len() * tw;
    let act = |v: f32| if relu { v.max(0.0) } else { v };
    // s[a][q]: Aᵀ down the columns, the block's tiles (8 runs of n)
    let s = &mut buf[..8 * n];
    for co in 0..g.c_out {
        let bias = bias.map_or(0.0, |b| b[co]);
        let mi = |p: usize, q: usize| {
            let row = ((p * 4 + q) * g.c_out + co) * columns.total;
            &m[row + columns.first..][..n]
        };
        let (s0, s1) = s.split_at_mut(4 * n);
        for (q, (s0, s1)) in s0
            .chunks_exact_mut(n)
            .zip(s1.chunks_exact_mut(n))
            .enumerate()
        {
            let ms = mi(0, q)
                .iter()
                .zip(mi(1, q))
                .zip(mi(2, q).iter().zip(mi(3, q)));
            for ((s0, s1), ((m0, m1), (m2, m3))) in s0.iter_mut().zip(s1).zip(ms) {
                (*s0, *s1) = (m0 + m1 + m2, m1 - m2 - m3);
            }
        }
        // Aᵀ along the rows, written as output pixels (2j, 2j + 1) of row 2·ty + a
        for (b, ty) in rows.clone().enumerate() {
            for (a, sa) in s.chunks_exact(4 * n).enumerate() {
                let oy = 2 * ty + a;
                if oy >= g.out_h {
                    break;
                }
                let part = |q: usize| &sa[q * n + b * tw..][..tw];
                let (s0, s1, s2, s3) = (part(0), part(1), part(2), part(3));
                let out = &mut yn[(co * g.out_h + oy) * g.out_w..][..g.out_w];
                let (pairs, last) = out.split_at_mut(g.out_w & !1);
                let sums = s0.iter().zip(s1).zip(s2.iter().zip(s3));
                for (pair, ((s0, s1), (s2, s3))) in pairs.chunks_exact_mut(2).zip(sums) {
                    pair[0].write(act(s0 + s1 + s2 + bias));
                    pair[1].write(act(s1 - s2 - s3 + bias));
                }
                if let [o] = last {
                    let j = tw - 1;
                    o.write(act(s0[j] + s1[j] + s2[j] + bias));
                }
            }
        }
    }
}

/// `dU[ξ][Co][Ci]` += Σ over the images of `xs[m,Ci,H,W]` and their `dys[m,Co,Ho,Wo]` of the
/// gradient with respect to the transformed filters `U[ξ]` (see [`weight_gradient`]). Since
/// Y = Aᵀ (U ⊙ V) A per tile, `∂L/∂U[ξ] = Σ_tiles (A dY Aᵀ)[ξ] · V[ξ]`: the same input
/// transform V as the forward pass, dY's 2×2 tiles transformed by A (4×2), and for each ξ one
/// product
///   `dU[ξ][Co, Ci] += D[ξ][Co, tiles] · V[ξ][Ci, tiles]ᵀ`,   D = A dY Aᵀ.
/// 16 products of Co·Ci·tiles multiply-adds: 2.25× fewer than dy · colᵀ, on operands written
/// out whole rather than gathered by the GEMM's packing.
pub fn add_transformed_weight_gradient(
    kernel: Kernel,
    xs: &[f32],
    dys: &[f32],
    g: &Conv2dGeom,
    du: &mut [f32],
) {
    let (x_img, dy_img) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    let group = images_per_group(g);
    let mut s = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for (xs, dys) in xs.chunks(group * x_img).zip(dys.chunks(group * dy_img)) {
        for rows in tile_row_blocks(g, xs.len() / x_img) {
            let block_tiles = BlockTiles::new(g, &rows, xs.len() / x_img);
            let tiles = block_tiles.total;
            s.fit(g, &rows, block_tiles);
            let images = xs.chunks_exact(x_img).zip(dys.chunks_exact(dy_img));
            for (i, (xn, dyn_)) in images.enumerate() {
                let at = (rows.clone(), block_tiles.columns(i));
                transform_input(xn, g, at.clone(), &mut s.v, &mut s.rows);
                transform_output_gradient(dyn_, g, at, &mut s.m, &mut s.rows);
            }
            for xi in 0..XI {
                let d = MatRef::rows(
                    &s.m[xi * g.c_out * tiles..][..g.c_out * tiles],
                    g.c_out,
                    tiles,
                );
                let v = MatRef::rows(&s.v[xi * g.c_in * tiles..][..g.c_in * tiles], g.c_in, tiles);
                let dui = &mut du[xi * g.c_out * g.c_in..][..g.c_out * g.c_in];
                gemm(kernel, d, v.t(), dui, g.c_in, true);
            }
        }
    }
    SCRATCH.with(|c| *c.borrow_mut() = s);
}

/// `D[ξ][co][t] = (A dy Aᵀ)[ξ]` for the tiles t of tile rows `rows` (in the image's `columns`),
/// dy the 2×2 block of output gradients at (2·ty, 2·tx), zero past the plane's edge; with
/// A = [[1, 0], [1, 1], [1, −1], [0, −1]] (Aᵀ of the forward pass, transposed).
///
/// A runs along each of the two rows of dy under each tile row, then down the columns of all
/// the block's tile rows at once.
fn transform_output_gradient(
    dyn_: &[f32],
    g: &Conv2dGeom,
    (rows, columns): (Range<usize>, Columns),
    d: &mut [f32],
    buf: &mut [f32],
) {
    let tw = g.out_w.div_ceil(2);
    let n = rows.len() * tw;
    // a row of dy padded to 2·tw, then h[a][q]: A along row a of each tile row (8 runs of n)
    let (padded, h) = buf.split_at_mut(2 * tw);
    let h = &mut h[..8 * n];
    let along = |p0: f32, p1: f32| [p0, p0 + p1, p0 - p1, -p1];
    for co in 0..g.c_out {
        let plane = &dyn_[co * g.out_h * g.out_w..][..g.out_h * g.out_w];
        for (b, ty) in rows.clone().enumerate() {
            for (a, ha) in h.chunks_exact_mut(4 * n).enumerate() {
                let oy = Some(2 * ty + a).filter(|&oy| oy < g.out_h);
                pad_row(oy.map(|oy| &plane[oy * g.out_w..][..g.out_w]), 0, padded);
                for (j, pair) in padded.chunks_exact(2).enumerate() {
                    for (q, v) in along(pair[0], pair[1]).into_iter().enumerate() {
                        ha[q * n + b * tw + j] = v;
                    }
                }
            }
        }
        // A down the columns: D[p][q] from h[0][q] and h[1][q]
        let (h0, h1) = h.split_at(4 * n);
        for (q, (r0, r1)) in h0.chunks_exact(n).zip(h1.chunks_exact(n)).enumerate() {
            let at = |p: usize| ((p * 4 + q) * g.c_out + co) * columns.total + columns.first;
            d[at(0)..][..n].copy_from_slice(r0);
            combine(&mut d[at(1)..][..n], r0, r1, |a, c| a + c);
            combine(&mut d[at(2)..][..n], r0, r1, |a, c| a - c);
            for (o, &c) in d[at(3)..][..n].iter_mut().zip(r1) {
                *o = -c;
            }
        }
    }
}

/// `dw[Co,Ci,3,3]` = Gᵀ dU G for every (co, ci) of `du[ξ][Co][Ci]` ([`add_transformed_weight_gradient`]):
/// the chain rule through U = G g Gᵀ, with Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
pub fn weight_gradient(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let gt_times = |u: [f32; 4]| {
        [
            u[0] + (u[1] + u[2]) * 0.5,
            (u[1] - u[2]) * 0.5,
            (u[1] + u[2]) * 0.5 + u[3],
        ]
    };
    let filters = c_out * c_in;
    let mut dw = vec![0f32; filters * 9];
    dw.par_chunks_mut(9)
        .with_min_len(FILTERS_PER_TASK)
        .enumerate()
        .for_each(|(f, out)| {
            let at = |p: usize, q: usize| du[(p * 4 + q) * filters + f];
            // Gᵀ down each column q of dU, then along each row of the result
            let cols: [[f32; 3]; 4] =
                std::array::from_fn(|q| gt_times([at(0, q), at(1, q), at(2, q), at(3, q)]));
            for y in 0..3 {
                let row = gt_times([cols[0][y], cols[1][y], cols[2][y], cols[3][y]]);
                out[y * 3..][..3].copy_from_slice(&row);
            }
        });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Padding;
    use crate::tensor::Tensor;

    #[test]
    fn a_group_of_small_images_gives_each_image_its_own_sums() {
        // resnet's last stage at 192 pixels: 6×6 planes, 9 tiles an image
        let g = Conv2dGeom::new(32, 128, 6, 6, 128, (3, 3), (1, 1), Padding::Same).unwrap();
        let group = images_per_group(&g);
        assert!(group > 1, "6x6 planes go through in groups, not {group}");
        let g = Conv2dGeom { n: group, ..g };
        let x = Tensor::rand_uniform([group, 128, 6, 6], -1.0, 1.0, 1).data;
        let w = Tensor::rand_uniform([128, 128, 3, 3], -0.1, 0.1, 2).data;
        let b = Tensor::rand_uniform([128], -0.1, 0.1, 3).data;
        let u = prepare(Kernel::fastest(), &w, &g);
        let y_img = 128 * 36;
        let run = |xs: &[f32]| {
            let mut ys = vec![MaybeUninit::new(f32::NAN); xs.len() / (128 * 36) * y_img];
            images(xs, &u, Some(&b), true, &g, &mut ys);
            // SAFETY: `images` wrote every element (initialised above in any case).
            ys.into_iter()
                .map(|v| unsafe { v.assume_init() })
                .collect::<Vec<f32>>()
        };
        let together = run(&x);
        let alone: Vec<f32> = x.chunks_exact(128 * 36).flat_map(run).collect();
        let differ = together
            .iter()
            .zip(&alone)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{differ} of {} outputs differ", alone.len());
    }
}
