//! The flat unfolding: the image copied once into padded planes laid out flat, from which each
//! row of `col` is one contiguous run (`FlatCol`), and the input gradient folded back the same way.

use super::super::as_uninit;
use super::super::flat::Flat;
use super::super::gemm::{gemm, gemm_with_epilogue, Epilogue, Kernel, MatRef, PackB, PackedA, NR};
use super::*;
use crate::backend::Conv2dGeom;
use std::mem::MaybeUninit;

/// One image's input channels laid out flat (`Flat`): each plane padded (dealt into phases
/// at a stride), `[Ci, padded_len]`, and the offset of each tap into a plane's phases.
pub(super) struct FlatPlanes {
    pub(super) flat: Flat,
    pub(super) offsets: Vec<usize>,
    pub(super) planes: Vec<f32>,
}

impl FlatPlanes {
    /// Zeroed once: each image writes the same positions, so the padding stays zero.
    pub(super) fn new(flat: Flat, c_in: usize) -> FlatPlanes {
        FlatPlanes {
            flat,
            offsets: flat.offsets(),
            planes: vec![0.0; c_in * flat.padded_len()],
        }
    }

    /// Lays out one image `x[Ci,H,W]`.
    pub(super) fn lay_out(&mut self, x: &[f32]) {
        let f = &self.flat;
        let planes = self.planes.chunks_exact_mut(f.padded_len());
        for (padded, plane) in planes.zip(x.chunks_exact(f.in_h * f.in_w)) {
            f.pad(plane, padded);
        }
    }

    /// Each input channel's padded plane.
    pub(super) fn each(&self) -> impl Iterator<Item = &[f32]> {
        self.planes.chunks_exact(self.flat.padded_len())
    }
}

/// One image's `col[Ci·KH·KW, Ho·wq]` over its flat planes ([`Unfolding::Flat`]): row (ci, k)
/// is plane ci from tap k's offset, column i the flat output i (rows of [`Flat::wq`]).
pub(super) struct FlatCol<'a>(&'a FlatPlanes);

impl PackB for FlatCol<'_> {
    fn rows(&self) -> usize {
        self.0.planes.len() / self.0.flat.padded_len() * self.0.offsets.len()
    }
    fn cols(&self) -> usize {
        self.0.flat.out_h * self.0.flat.wq()
    }
    #[inline(always)]
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        // strip by strip, so that `out` is written in order; each row's run is contiguous
        for (s, strip) in out.chunks_exact_mut(NR * kc).enumerate() {
            let (j, width) = (j0 + s * NR, NR.min(nc - s * NR));
            for (p, dst) in strip.chunks_exact_mut(NR).enumerate() {
                let at = self.row_start(p0 + p) + j;
                copy_run(&mut dst[..width], &self.0.planes[at..at + width]);
            }
        }
    }
    /// Every row is a run of a plane, and a plane's rows overlap (at stride 1 tap (ky, kx) is
    /// `ky·wq + kx` from tap (0, 0)): read in place, a strip's rows of one plane share most of
    /// their cache lines, where the packed copy has two lines of its own per row.
    fn rows_in_place(&self, p0: usize, kc: usize, starts: &mut [usize]) -> Option<&[f32]> {
        for (r, start) in (p0..p0 + kc).zip(starts) {
            *start = self.row_start(r);
        }
        Some(&self.0.planes)
    }
}

impl FlatCol<'_> {
    /// Where row r = (ci, tap) starts in the planes: plane ci from the tap's offset.
    #[inline(always)]
    fn row_start(&self, r: usize) -> usize {
        let (taps, len) = (self.0.offsets.len(), self.0.flat.padded_len());
        (r / taps) * len + self.0.offsets[r % taps]
    }
}

/// The buffers of one task's [`Unfolding::Flat`] forward passes: the image's flat planes and
/// the product in flat rows, `[Co, Ho·wq]`.
pub(super) struct FlatImage {
    kernel: Kernel,
    planes: FlatPlanes,
    product: Vec<f32>,
}

impl FlatImage {
    pub(super) fn new(flat: Flat, g: &Conv2dGeom, kernel: Kernel) -> FlatImage {
        FlatImage {
            kernel,
            planes: FlatPlanes::new(flat, g.c_in),
            product: vec![0.0; g.c_out * flat.out_h * flat.wq()],
        }
    }

    /// `yn[Co,Ho,Wo]` = the epilogue of wm · col(xn), every element written.
    pub(super) fn forward(
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
            self.kernel,
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

/// The buffers of one task's input gradients on flat planes ([`Unfolding::Flat`]): dy in rows
/// of `wq`, the product `dcol[Ci·KH·KW, Ho·wq]`, and dx on the image's padded planes, into
/// which row (ci, k) of dcol is added at tap k's offset: a contiguous run, where [`col2im`]
/// places each element of a strided layer one at a time. The same sums in the same order.
pub(super) struct FlatInputGradient {
    kernel: Kernel,
    planes: FlatPlanes,
    dy_rows: Vec<f32>,
    dcol: Vec<f32>,
    c_out: usize,
}

impl FlatInputGradient {
    pub(super) fn new(flat: Flat, g: &Conv2dGeom, kernel: Kernel) -> FlatInputGradient {
        let cols = flat.out_h * flat.wq();
        FlatInputGradient {
            kernel,
            planes: FlatPlanes::new(flat, g.c_in),
            // each row's last (kw − 1)/s values stay 0: their dcol columns are 0
            dy_rows: vec![0.0; g.c_out * cols],
            dcol: vec![0.0; g.patch_len() * cols],
            c_out: g.c_out,
        }
    }

    /// `dxn[Ci,H,W]` = col2im(wt · dyn), every element written.
    pub(super) fn image(&mut self, wt: &PackedA, dyn_: &[f32], dxn: &mut [MaybeUninit<f32>]) {
        let f = self.planes.flat;
        let cols = f.out_h * f.wq();
        dy_in_rows(&f, dyn_, &mut self.dy_rows, cols);
        let dy = MatRef::rows(&self.dy_rows, self.c_out, cols);
        gemm(self.kernel, wt, dy, &mut self.dcol, cols, false);
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
pub(super) fn dy_in_rows(f: &Flat, dy: &[f32], rows: &mut [f32], row_len: usize) {
    let planes = rows.chunks_exact_mut(row_len);
    for (flat, plane) in planes.zip(dy.chunks_exact(f.out_h * f.out_w)) {
        for (row, d) in flat.chunks_mut(f.wq()).zip(plane.chunks_exact(f.out_w)) {
            row[..f.out_w].copy_from_slice(d);
        }
    }
}
