//! Correlations over zero-padded planes laid out flat, where every tap of a filter is a fixed
//! offset from its output: the depthwise passes (`depthwise.rs`) and the full convolution's
//! weight gradient (`conv/weight_gradient.rs`) run on them.
//!
//! A plane is copied once into a buffer with its zero padding around it, rows `wq` wide (`Flat`);
//! then at stride 1 output `i` (counted in rows of `wq`) reads `P[i + ky·wq + kx]` at tap (ky, kx),
//! and at stride s the padded plane is dealt into s² phases in which every tap is again a fixed
//! offset. So a correlation is one loop over the plane with blocks of outputs summed over all taps
//! in registers (`correlate`), and a weight gradient is dot products of dy, laid out on the same
//! rows, with the padded plane at each tap's offset (`dot_offsets` for one channel's own filter,
//! `dot_rows` for every output channel against every input channel). Each is compiled for every
//! SIMD level of [`Kernel`] (AVX-512, AVX2 + FMA, portable; the GEMM's choice,
//! `FRACTURE_CPU_KERNEL`).

use super::gemm::Kernel;
use crate::backend::Conv2dGeom;
use std::mem::MaybeUninit;

/// A correlation at stride `s` (the same both ways) of a `in_h × in_w` plane padded by
/// `pad_top`, `pad_left` (and what the output size needs on the other sides) with a `kh × kw`
/// filter, laid out flat. The padded plane is dealt into `s²` phases (row mod s, column mod s),
/// each with rows `wq` wide: tap (ky, kx) of output (oy, ox) is then element
/// `(oy + ky/s)·wq + ox + kx/s` of phase (ky mod s, kx mod s), a fixed offset from the output's
/// own flat index `oy·wq + ox`. At stride 1 there is one phase, the padded plane itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flat {
    pub(super) in_h: usize,
    pub(super) in_w: usize,
    pub(super) pad_top: usize,
    pub(super) pad_left: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
}

impl Flat {
    /// The forward pass of `g`, if its stride is the same both ways.
    pub(super) fn forward(g: &Conv2dGeom) -> Option<Flat> {
        (g.stride_h == g.stride_w).then_some(Flat {
            in_h: g.h,
            in_w: g.w,
            pad_top: g.pad_top,
            pad_left: g.pad_left,
            kh: g.kh,
            kw: g.kw,
            stride: g.stride_h,
            out_h: g.out_h,
            out_w: g.out_w,
        })
    }
    /// The input gradient of `g` at stride 1: the forward pass of its [turned](Conv2dGeom::turned)
    /// convolution, `dx[iy, ix] = Σ_k w[KH-1-ky, KW-1-kx] · dy_padded[iy + ky, ix + kx]`.
    pub(super) fn backward_input(g: &Conv2dGeom) -> Option<Flat> {
        Flat::forward(&g.turned()?)
    }
    /// Width of a phase's rows; outputs are counted in rows of this width too.
    pub(super) fn wq(&self) -> usize {
        self.out_w + (self.kw - 1) / self.stride
    }
    /// Outputs in rows of `wq` (the last `(kw - 1)/s` of each row are past the plane's edge),
    /// and past the last row up to a whole block of [`LANES`].
    pub(super) fn flat_outputs(&self) -> usize {
        (self.out_h * self.wq()).next_multiple_of(LANES)
    }
    /// Length of a phase: every tap of every flat output reads inside it.
    pub(super) fn phase_len(&self) -> usize {
        self.flat_outputs() + (self.kh - 1) / self.stride * self.wq() + (self.kw - 1) / self.stride
    }
    /// Length of the buffer of all phases.
    pub(super) fn padded_len(&self) -> usize {
        self.stride * self.stride * self.phase_len()
    }
    /// The offset of each tap `k = ky·kw + kx` from its output, into the buffer of phases.
    pub(super) fn offsets(&self) -> Vec<usize> {
        let (s, wq) = (self.stride, self.wq());
        (0..self.kh * self.kw)
            .map(|k| {
                let (ky, kx) = (k / self.kw, k % self.kw);
                let phase = (ky % s) * s + kx % s;
                phase * self.phase_len() + (ky / s) * wq + kx / s
            })
            .collect()
    }
    /// `plane[in_h, in_w]` dealt into the phases of `padded`, zeros around it. `padded` comes
    /// from [`flat_buffers`] of this `Flat` and was used by nothing else: every plane writes the
    /// same positions, so the zeros around them, written when the buffer was made, are still
    /// there (zeroing it for each plane cost more than the copy at stride 2: four phases).
    pub(super) fn pad(&self, plane: &[f32], padded: &mut [f32]) {
        debug_assert_eq!(plane.len(), self.in_h * self.in_w);
        debug_assert_eq!(padded.len(), self.padded_len());
        let (s, wq) = (self.stride, self.wq());
        if s == 1 {
            for (iy, row) in plane.chunks_exact(self.in_w).enumerate() {
                let at = (iy + self.pad_top) * wq + self.pad_left;
                padded[at..at + self.in_w].copy_from_slice(row);
            }
            return;
        }
        self.runs(|at, from, len| gather_every(s, &plane[from..], &mut padded[at..at + len]));
    }
    /// The plane back from its phases (`pad` undone): every value of `plane` written, 0 where no
    /// tap reads it (a valid convolution's last rows and columns).
    pub(super) fn unpad(&self, padded: &[f32], plane: &mut [MaybeUninit<f32>]) {
        debug_assert_eq!(plane.len(), self.in_h * self.in_w);
        plane.fill(MaybeUninit::new(0.0));
        self.runs(|at, from, len| {
            let dst = plane[from..].iter_mut().step_by(self.stride);
            for (d, &v) in dst.zip(&padded[at..at + len]) {
                d.write(v);
            }
        });
    }
    /// Each run of the plane in the phases: `each(at, from, len)` for the `len` values of the
    /// phases' buffer from `at`, which hold the plane's values from `from`, `stride` apart.
    fn runs(&self, mut each: impl FnMut(usize, usize, usize)) {
        let (s, wq) = (self.stride, self.wq());
        let rows = self.out_h + (self.kh - 1) / s;
        for ph in 0..s * s {
            let (ry, rx) = (ph / s, ph % s);
            // phase column b holds padded column s·b + rx, input column s·b + rx − pad_left
            let first = self.pad_left.saturating_sub(rx).div_ceil(s);
            let ends = (self.in_w + self.pad_left)
                .saturating_sub(rx)
                .div_ceil(s)
                .min(wq);
            if first >= ends {
                continue;
            }
            for a in 0..rows {
                let Some(iy) = (s * a + ry).checked_sub(self.pad_top) else {
                    continue;
                };
                if iy >= self.in_h {
                    break;
                }
                let from = iy * self.in_w + s * first + rx - self.pad_left;
                each(ph * self.phase_len() + a * wq + first, from, ends - first);
            }
        }
    }
    /// The plane's outputs from the flat ones (dropping each row's last few), with ReLU.
    pub(super) fn unflatten(&self, flat: &[f32], out: &mut [MaybeUninit<f32>], relu: bool) {
        // every value of `out` is written (callers rely on it: `correlate_planes`)
        assert!(out.len() == self.out_h * self.out_w && flat.len() >= self.out_h * self.wq());
        let rows = out.chunks_exact_mut(self.out_w).zip(flat.chunks(self.wq()));
        for (o, f) in rows {
            for (o, &v) in o.iter_mut().zip(f) {
                o.write(if relu { v.max(0.0) } else { v });
            }
        }
    }
}

/// `dst[j]` = `src[j·s]`. At stride 2 with the stride a constant, which the compiler turns into
/// vector loads and shuffles (`step_by` is an element at a time).
fn gather_every(s: usize, src: &[f32], dst: &mut [f32]) {
    fn constant<const S: usize>(src: &[f32], dst: &mut [f32]) {
        // whole chunks of S cover all but maybe the last value read
        let whole = (src.len() / S).min(dst.len());
        let (body, last) = dst.split_at_mut(whole);
        debug_assert!(last.len() <= 1, "src holds dst's values");
        for (d, chunk) in body.iter_mut().zip(src.chunks_exact(S)) {
            *d = chunk[0];
        }
        if let [d] = last {
            *d = src[whole * S];
        }
    }
    match s {
        2 => constant::<2>(src, dst),
        _ => dst
            .iter_mut()
            .zip(src.iter().step_by(s))
            .for_each(|(d, &v)| *d = v),
    }
}

/// Per-thread buffers of the flat passes: the padded plane and the flat outputs, zeroed once
/// here; each plane then writes the same positions of them (see [`Flat::pad`]).
pub(super) fn flat_buffers(f: &Flat) -> (Vec<f32>, Vec<f32>) {
    (vec![0f32; f.padded_len()], vec![0f32; f.flat_outputs()])
}

/// Outputs summed together in registers by `correlate` and `dot_offsets`.
pub(super) const LANES: usize = 32;

/// `out[i]` = bias + Σ_k `w[k]` · `p[i + offsets[k]]`, in blocks of [`LANES`] outputs (`out`
/// is whole blocks) held in registers over all taps, the taps added in order (as the per-tap
/// loops add them). Two blocks at a time: one block's sums are a chain of dependent adds per
/// register, which the add's latency, not its throughput, paced.
#[inline(always)]
fn correlate_lanes(p: &[f32], offsets: &[usize], w: &[f32], bias: f32, out: &mut [f32]) {
    debug_assert_eq!(out.len() % LANES, 0);
    let last = out.len().saturating_sub(LANES);
    let mut pairs = out.chunks_exact_mut(2 * LANES);
    for (i, o) in (&mut pairs).enumerate() {
        correlate_blocks::<2>(p, 2 * i * LANES, offsets, w, bias, o);
    }
    let rest = pairs.into_remainder();
    if !rest.is_empty() {
        correlate_blocks::<1>(p, last, offsets, w, bias, rest);
    }
}

/// [`correlate_lanes`] of the `BLOCKS` blocks of outputs from `start`, into `out`.
#[inline(always)]
fn correlate_blocks<const BLOCKS: usize>(
    p: &[f32],
    start: usize,
    offsets: &[usize],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
) {
    let mut acc = [[bias; LANES]; BLOCKS];
    for (&off, &wk) in offsets.iter().zip(w) {
        let src = &p[start + off..][..BLOCKS * LANES];
        for (acc, src) in acc.iter_mut().zip(src.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += wk * src[l];
            }
        }
    }
    out.copy_from_slice(acc.as_flattened());
}

/// For each tap k, `a[i] · p[i + offsets[k]]` added into lane `i mod LANES` of `lanes[k]` (`a`
/// is whole blocks of [`LANES`]). The lanes are left unreduced: the caller adds more images into
/// them and sums them once, at the end. Three taps at a time, each block of `a` read once for
/// them: one tap alone was a chain of dependent adds per register, paced by the add's latency.
#[inline(always)]
fn dot_offsets_lanes(a: &[f32], p: &[f32], offsets: &[usize], lanes: &mut [[f32; LANES]]) {
    debug_assert_eq!(a.len() % LANES, 0);
    let whole = offsets.len() / 3 * 3;
    let (offs3, offs1) = offsets.split_at(whole);
    let (sums3, sums1) = lanes.split_at_mut(whole);
    for (offs, sums) in offs3.chunks_exact(3).zip(sums3.chunks_exact_mut(3)) {
        dot_taps::<3>(a, p, offs, sums);
    }
    for (off, sums) in offs1.chunks(1).zip(sums1.chunks_mut(1)) {
        dot_taps::<1>(a, p, off, sums);
    }
}

/// [`dot_offsets_lanes`] of `TAPS` taps together: `offsets` and `lanes` hold `TAPS` each.
#[inline(always)]
fn dot_taps<const TAPS: usize>(
    a: &[f32],
    p: &[f32],
    offsets: &[usize],
    lanes: &mut [[f32; LANES]],
) {
    let mut acc: [[f32; LANES]; TAPS] = lanes.try_into().expect("TAPS sums");
    for (b, ab) in a.chunks_exact(LANES).enumerate() {
        for (acc, &off) in acc.iter_mut().zip(offsets) {
            let src: &[f32; LANES] = p[b * LANES + off..][..LANES].try_into().expect("a block");
            for l in 0..LANES {
                acc[l] += ab[l] * src[l];
            }
        }
    }
    lanes.copy_from_slice(&acc);
}

/// [`correlate_lanes`] compiled for `simd`.
pub(super) fn correlate(
    simd: Kernel,
    p: &[f32],
    offsets: &[usize],
    w: &[f32],
    bias: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(p: &[f32], offsets: &[usize], w: &[f32], bias: f32, out: &mut [f32]) {
            correlate_lanes(p, offsets, w, bias, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(p: &[f32], offsets: &[usize], w: &[f32], bias: f32, out: &mut [f32]) {
            correlate_lanes(p, offsets, w, bias, out)
        }
        match simd.checked() {
            // SAFETY: `checked` refused a kernel whose instructions this processor lacks.
            Kernel::Avx512 => return unsafe { avx512(p, offsets, w, bias, out) },
            // SAFETY: as above.
            Kernel::Avx2Fma => return unsafe { avx2(p, offsets, w, bias, out) },
            Kernel::Portable => {}
        }
    }
    correlate_lanes(p, offsets, w, bias, out)
}

/// [`dot_offsets_lanes`] compiled for `simd`.
pub(super) fn dot_offsets(
    simd: Kernel,
    a: &[f32],
    p: &[f32],
    offsets: &[usize],
    sums: &mut [[f32; LANES]],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(a: &[f32], p: &[f32], offsets: &[usize], sums: &mut [[f32; LANES]]) {
            dot_offsets_lanes(a, p, offsets, sums)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(a: &[f32], p: &[f32], offsets: &[usize], sums: &mut [[f32; LANES]]) {
            dot_offsets_lanes(a, p, offsets, sums)
        }
        match simd.checked() {
            // SAFETY: `checked` refused a kernel whose instructions this processor lacks.
            Kernel::Avx512 => return unsafe { avx512(a, p, offsets, sums) },
            // SAFETY: as above.
            Kernel::Avx2Fma => return unsafe { avx2(a, p, offsets, sums) },
            Kernel::Portable => {}
        }
    }
    dot_offsets_lanes(a, p, offsets, sums)
}

/// A SIMD register of f32 lanes as `dot_rows` uses it: each of its sums lives in one.
///
/// # Safety
/// Every function needs the processor to have the implementation's instructions (callers run in
/// code compiled for them, reached only through `Kernel::checked`).
trait Lanes {
    type V: Copy;
    /// Lanes of a register (every row's length is a whole number of them).
    const WIDTH: usize;
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// Also: `p` must point to `WIDTH` readable floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `acc + a·b` lane by lane.
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// The lanes' sum, added as a tree (halves, then quarters, ...): the same order every time.
    unsafe fn sum(v: Self::V) -> f32;
}

/// AVX-512: 16 lanes.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type V = std::arch::x86_64::__m512;
    const WIDTH: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        std::arch::x86_64::_mm512_reduce_add_ps(v)
    }
}

/// AVX2 + FMA: 8 lanes.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    type V = std::arch::x86_64::__m256;
    const WIDTH: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, acc)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        use std::arch::x86_64::*;
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
    }
}

/// Plain Rust: 4 lanes, a multiply then an add (what the compiler vectorises for SSE2).
struct Portable;

impl Lanes for Portable {
    type V = [f32; 4];
    const WIDTH: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 4]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        (p as *const [f32; 4]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        std::array::from_fn(|l| acc[l] + a[l] * b[l])
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        (v[0] + v[2]) + (v[1] + v[3])
    }
}

/// For each row r of `a` (rows of `len` values) and each tap k, Σ_i `a[r][i]` · `p[i +
/// offsets[k]]` added into `out[r·stride + k]`. In blocks of `ROWS` rows by `TAPS` taps whose
/// sums stay in registers over the whole row, each in the lanes of one register: each register
/// of a row is loaded once for `TAPS` taps, each of p once for `ROWS` rows.
///
/// # Safety
/// The processor must have `L`'s instructions.
#[inline(always)]
unsafe fn dot_rows_blocked<L: Lanes, const ROWS: usize, const TAPS: usize>(
    (a, len): (&[f32], usize),
    p: &[f32],
    offsets: &[usize],
    (out, stride): (&mut [f32], usize),
) {
    assert!(len % L::WIDTH == 0 && a.len() % len == 0);
    assert!(offsets.iter().all(|&o| o + len <= p.len()));
    let rows = a.len() / len;
    let (whole_rows, whole_taps) = (rows / ROWS * ROWS, offsets.len() / TAPS * TAPS);
    let mut r = 0;
    while r < rows {
        let block_rows = if r < whole_rows { ROWS } else { 1 };
        let a = &a[r * len..(r + block_rows) * len];
        let mut k = 0;
        while k < offsets.len() {
            let block_taps = if k < whole_taps { TAPS } else { 1 };
            let offs = &offsets[k..k + block_taps];
            let block = (a, len, p, offs);
            let sums = (&mut out[r * stride + k..], stride);
            // SAFETY (each): a holds the block's rows and every tap's run lies in p (asserted).
            match (block_rows == ROWS, block_taps == TAPS) {
                (true, true) => dot_block::<L, ROWS, TAPS>(block, sums),
                (true, false) => dot_block::<L, ROWS, 1>(block, sums),
                (false, true) => dot_block::<L, 1, TAPS>(block, sums),
                (false, false) => dot_block::<L, 1, 1>(block, sums),
            }
            k += block_taps;
        }
        r += block_rows;
    }
}

/// One block of [`dot_rows_blocked`]: `a` holds `ROWS` rows of `len`, `offsets` `TAPS` taps;
/// the sums are added into `out[r·stride + t]`.
///
/// # Safety
/// `a` must hold `ROWS·len` floats, `p` at least `offsets[t] + len` for every t, and the
/// processor must have `L`'s instructions.
#[inline(always)]
unsafe fn dot_block<L: Lanes, const ROWS: usize, const TAPS: usize>(
    (a, len, p, offsets): (&[f32], usize, &[f32], &[usize]),
    (out, stride): (&mut [f32], usize),
) {
    let (pa, pp) = (a.as_ptr(), p.as_ptr());
    let mut acc = [[L::zero(); TAPS]; ROWS];
    for b in (0..len).step_by(L::WIDTH) {
        let taps: [L::V; TAPS] = std::array::from_fn(|t| L::load(pp.add(offsets[t] + b)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let row = L::load(pa.add(r * len + b));
            for (acc, &tap) in acc.iter_mut().zip(&taps) {
                *acc = L::mul_add(row, tap, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, &v) in acc.iter().enumerate() {
            out[r * stride + t] += L::sum(v);
        }
    }
}

/// [`dot_rows_blocked`] on `simd`'s registers, in the block that fits them: 8 rows × 3 taps, 24
/// of AVX-512's 32 registers (4 × 3 for the rows left); 4 × 3, 12 of AVX's 16 (all 16 with the
/// three taps and a row), where 2 × 3 ran resnet-192's 16- and 32-channel weight gradients
/// 20–25 % slower on Zen 3 (its loads, 5 per 6 multiply-adds against 7 per 12, set the pace);
/// portable, 2 × 2.
pub(super) fn dot_rows(
    simd: Kernel,
    a: (&[f32], usize),
    p: &[f32],
    offsets: &[usize],
    out: (&mut [f32], usize),
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(
            a: (&[f32], usize),
            p: &[f32],
            offsets: &[usize],
            out: (&mut [f32], usize),
        ) {
            // blocks of 8 rows, then of 4 for what is left (a whole 8 × 3 block measured 5–15 %
            // faster than 4 × 3 on resnet's 16- and 32-channel layers)
            let ((a, len), (out, stride)) = (a, out);
            let (eights, rest) = a.split_at(a.len() / len / 8 * 8 * len);
            let (out8, out_rest) = out.split_at_mut((eights.len() / len * stride).min(out.len()));
            dot_rows_blocked::<Avx512, 8, 3>((eights, len), p, offsets, (out8, stride));
            dot_rows_blocked::<Avx512, 4, 3>((rest, len), p, offsets, (out_rest, stride));
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(a: (&[f32], usize), p: &[f32], offsets: &[usize], out: (&mut [f32], usize)) {
            dot_rows_blocked::<Avx2, 4, 3>(a, p, offsets, out)
        }
        match simd.checked() {
            // SAFETY: `checked` refused a kernel whose instructions this processor lacks.
            Kernel::Avx512 => return unsafe { avx512(a, p, offsets, out) },
            // SAFETY: as above.
            Kernel::Avx2Fma => return unsafe { avx2(a, p, offsets, out) },
            Kernel::Portable => {}
        }
    }
    // SAFETY: the portable lanes need no particular instructions.
    unsafe { dot_rows_blocked::<Portable, 2, 2>(a, p, offsets, out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// `dot_rows` on every SIMD level this processor has, against plain f64 sums: row counts
    /// and tap counts on both sides of the blocks (8 × 3 then 4 × 3, 4 × 3, 2 × 2), rows of one and of
    /// several registers, the sums added to what `out` holds, and `out`'s other values left alone.
    #[test]
    fn dot_rows_adds_each_rows_dot_product_at_each_offset_on_every_kernel() {
        for (case, &(rows, len, offsets)) in [
            (1, 16, &[0usize][..]),
            (4, 32, &[0, 1, 2]),
            (5, 64, &[3, 0, 7, 1]),
            (9, 96, &[0, 1, 2, 10, 11, 12, 20]),
            (3, 48, &[5, 9]),
        ]
        .iter()
        .enumerate()
        {
            let a = Tensor::rand_uniform([rows, len], -1.0, 1.0, case as u64).data;
            let p_len = len + offsets.iter().max().unwrap();
            let p = Tensor::rand_uniform([p_len], -1.0, 1.0, 9 + case as u64).data;
            let stride = offsets.len() + 2;
            let start: Vec<f32> = (0..rows * stride).map(|i| i as f32).collect();
            let want: Vec<f64> = (0..rows * stride)
                .map(|i| {
                    let (r, k) = (i / stride, i % stride);
                    let dot = |off: usize| {
                        (0..len)
                            .map(|j| a[r * len + j] as f64 * p[j + off] as f64)
                            .sum::<f64>()
                    };
                    start[i] as f64 + offsets.get(k).map_or(0.0, |&off| dot(off))
                })
                .collect();
            for kernel in Kernel::available() {
                let mut out = start.clone();
                dot_rows(kernel, (&a, len), &p, offsets, (&mut out, stride));
                for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*got as f64 - want).abs() < 1e-4,
                        "{kernel:?}, case {case}, out[{i}]: {got} against {want}"
                    );
                }
            }
        }
    }
}
