//! Single-precision matrix multiply, `C (+)= A · B`, the engine's workhorse on the CPU: dense layers
//! call it directly and every convolution pass is lowered onto it.
//!
//! The structure is the classic one of GotoBLAS/BLIS:
//! - C is cut into `MC × NC` tiles, handed out to rayon tasks (tiles are disjoint, so no locks);
//! - for each `KC`-deep slice of the inner dimension, a task copies ("packs") its slice of A into
//!   `MR`-row strips and its slice of B into `NR`-column strips, contiguous in the order the
//!   micro-kernel reads them, so the hot loop streams through L1/L2 with unit stride; one strip
//!   of A stays in L1 while the kernel runs it against every strip of B's slice, from L2; a B
//!   whose rows lie close together, each a contiguous run (a convolution's flat unfolding), is
//!   read where it lies instead ([`PackB::rows_in_place`]): no copy, and fewer lines in cache;
//! - the micro-kernel keeps an `MR × NR` block of C in registers (8 × 32 floats: 16 AVX-512
//!   registers, or three passes over AVX registers) and performs `MR·NR` fused multiply-adds per
//!   step of k. Eight rows divide every channel count of our models (16 to 512), so no row of a
//!   convolution's product is padding; on a 1024³ product the 8 × 32 block ran at 74 % of the
//!   peak on one thread against 68 % for the 6 × 32 block it replaced (12 × 32 measured the
//!   same as 8 × 32 and wastes rows on 16-channel layers).
//!
//! Each element of C is always summed in the same order, whatever the thread count, so results are
//! reproducible bit for bit. Matrices are passed as strided views: a transpose is just a view with
//! its strides swapped, never a copy.
//!
//! Why one file of over 1,000 lines: about 200 of them are its unit tests, and the packing, the
//! micro-kernels of each SIMD level and the loop nest around them are one algorithm (BLIS's);
//! split, the cache-blocking constants would live far from the code they size.

use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Rows of C held in registers by the micro-kernel.
const MR: usize = 8;
/// Columns of C held in registers by the micro-kernel (two 16-wide AVX-512 vectors, or four
/// 8-wide AVX vectors, two at a time).
pub const NR: usize = 32;
/// Depth of a packed slice of A and B (a `KC × MR` strip of A, 8 KiB, stays in L1; 192, 320 and
/// 384 measured lower).
const KC: usize = 256;
/// Rows of a C tile (its packed `MC × KC` block of A, 512 KiB, read strip by strip). Large, so
/// that B's slices, packed once per tile, are packed few times.
const MC: usize = 512;
/// Columns of a C tile (its packed `KC × NC` slice of B, 1 MiB, stays in L2, where the
/// micro-kernel streams it from).
const NC: usize = 1024;
/// Below this many multiply-adds, one thread does the whole product.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// A read-only view of a `rows × cols` matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
    #[cfg(test)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// The B operand of a product: a `rows × cols` matrix that copies any `kc × nc` block of itself
/// into the micro-kernel's layout. A [`MatRef`] copies from memory; a convolution's unfolded
/// input (`conv::Unfolded`) gathers from the image itself, so the unfolded matrix is never
/// written out whole.
pub trait PackB: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Writes `B[p0..p0+kc, j0..j0+nc]` into `out` as `NR`-column strips, each `kc × NR`
    /// (element (p, j) of strip s at `(s·kc + p)·NR + j`). `out` holds `nc.div_ceil(NR) · NR · kc`
    /// floats; only the last strip's are zero on entry, so its missing columns stay zero.
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]);
    /// B's data, if the micro-kernel may read rows `p0..p0+kc` where they lie instead of from a
    /// packed copy, each row's start written into `starts` (element (p, j) is
    /// `data[starts[p - p0] + j]` for every column j). `None`, the default: B is packed.
    ///
    /// Only for a B whose rows are close together in memory: rows far apart, at strides whose
    /// lines share L1's sets, would be fetched again from L2 for each strip of A.
    fn rows_in_place(&self, _p0: usize, _kc: usize, _starts: &mut [usize]) -> Option<&[f32]> {
        None
    }
}

impl PackB for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    /// Reads B along its contiguous direction: row by row for a row-major B, column by column
    /// for a transposed one (reading across it would touch a new cache line, or page, per value).
    #[inline(always)]
    fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
        let strips = nc.div_ceil(NR);
        if self.cs == 1 {
            for p in 0..kc {
                for s in 0..strips {
                    let cols = NR.min(nc - s * NR);
                    let dst = &mut out[(s * kc + p) * NR..][..cols];
                    let start = (p0 + p) * self.rs + j0 + s * NR;
                    dst.copy_from_slice(&self.data[start..start + cols]);
                }
            }
            return;
        }
        // column-major (a transposed view): the strip's columns are read side by side, so that
        // it is written in order (a column at a time wrote it NR times, strided)
        assert_eq!(
            self.rs, 1,
            "gemm: B is a row-major matrix or a transposed one"
        );
        for s in 0..strips {
            let strip = &mut out[s * NR * kc..(s + 1) * NR * kc];
            let cols = NR.min(nc - s * NR);
            let src: [&[f32]; NR] = std::array::from_fn(|j| {
                let col = j0 + s * NR + j.min(cols - 1);
                &self.data[col * self.cs + p0..][..kc]
            });
            for (p, dst) in strip.chunks_exact_mut(NR).enumerate() {
                for (j, d) in dst[..cols].iter_mut().enumerate() {
                    *d = src[j][p];
                }
            }
        }
    }
}

/// Which micro-kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust that the compiler vectorises for the baseline target (SSE2 on x86_64).
    Portable,
    /// AVX2 + FMA intrinsics, chosen at run time when the processor has them.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512 intrinsics: half the instructions of AVX2 for the same FLOPs, and twice the FLOPs
    /// per cycle on processors with two 512-bit FMA units.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest kernel this processor runs: the CPU backend's default.
    pub fn fastest() -> Kernel {
        *Kernel::available().last().expect("the portable kernel")
    }

    /// The kernel called `name` (portable, avx2 or avx512), if this processor runs it.
    pub fn named(name: &str) -> Result<Kernel, String> {
        match Kernel::all().into_iter().find(|k| k.name() == name) {
            Some(k) => k.usable(),
            None => Err(format!(
                "no GEMM kernel is called {name:?} (this processor runs: {})",
                Kernel::names_here()
            )),
        }
    }

    /// This kernel, if this processor has its instructions; else why not.
    pub fn usable(self) -> Result<Kernel, String> {
        if self.runs_here() {
            return Ok(self);
        }
        Err(format!(
            "the {} kernel needs instructions this processor does not have (it runs: {})",
            self.name(),
            Kernel::names_here()
        ))
    }

    /// This kernel, or a panic saying why it cannot run: its SIMD code is `unsafe` to run without
    /// its instructions, whoever asked for it.
    pub fn checked(self) -> Kernel {
        self.usable().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The names of the kernels this processor runs, for messages.
    fn names_here() -> String {
        let names: Vec<_> = Kernel::available().iter().map(|k| k.name()).collect();
        names.join(", ")
    }

    /// Its name, as [`Kernel::named`] and `FRACTURE_CPU_KERNEL` take it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512",
        }
    }

    /// Every kernel of this build, slowest first, whether this processor runs it or not.
    pub fn all() -> Vec<Kernel> {
        vec![
            Kernel::Portable,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512,
        ]
    }

    /// Every kernel this processor runs, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::all()
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// Whether this processor has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
        }
    }
}

/// The A operand of a product: a `rows × cols` matrix that hands the micro-kernel its `MR`-row
/// strips. A [`MatRef`] packs them on every call; a [`PackedA`] has packed them once, for an A
/// that many products share (a layer's filters, multiplied with image after image).
pub trait PackA: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// The strips of `A[i0..i0+mc, p0..p0+kc]` (`i0` a multiple of `MR`, `p0` of `KC`, `kc` the
    /// slice's depth), each `kc × MR`, zero-padded to whole strips: packed into `buf`, or
    /// borrowed from where they were packed before.
    fn strips<'s>(
        &'s self,
        i0: usize,
        mc: usize,
        p0: usize,
        kc: usize,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32];
}

impl PackA for MatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn strips<'s>(
        &'s self,
        i0: usize,
        mc: usize,
        p0: usize,
        kc: usize,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        pack_a(self, i0, mc, p0, kc, buf)
    }
}

/// A matrix packed whole into the micro-kernel's A layout: for each `KC` slice of its columns,
/// all its `MR`-row strips.
pub struct PackedA {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// `a` packed, its slices of K and groups of strips in parallel: a convolution packs its
    /// filters once a call, before the images' products can start, so one thread packing left
    /// the others waiting (a Winograd layer packs 16 matrices of Co × Ci).
    pub fn new(a: MatRef) -> PackedA {
        let padded = a.rows.div_ceil(MR) * MR;
        let mut data = vec![0f32; padded * a.cols];
        data.par_chunks_mut(padded * KC)
            .enumerate()
            .for_each(|(slice, out)| {
                let (p0, kc) = (slice * KC, out.len() / padded);
                out.par_chunks_mut(STRIPS_PER_TASK * MR * kc)
                    .enumerate()
                    .for_each(|(task, strips)| {
                        let i0 = task * STRIPS_PER_TASK * MR;
                        let mc = (strips.len() / kc).min(a.rows - i0);
                        pack_a_into(&a, i0, mc, p0, kc, strips);
                    });
            });
        PackedA {
            rows: a.rows,
            cols: a.cols,
            data,
        }
    }
}

/// Strips of A one task of [`PackedA::new`] packs.
const STRIPS_PER_TASK: usize = 16;

impl PackA for &PackedA {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn strips<'s>(
        &'s self,
        i0: usize,
        mc: usize,
        p0: usize,
        kc: usize,
        _: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        let slice = p0 * self.rows.div_ceil(MR) * MR;
        &self.data[slice + (i0 / MR) * MR * kc..][..mc.div_ceil(MR) * MR * kc]
    }
}

/// What is done to each block of C after its last slice of K, while the block is still in L1,
/// instead of in a pass of its own over the whole of C: a bias per row added (a convolution's
/// output channel), then max(0, ·).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// `row_bias[i]` is added to every element of row i of C.
    pub row_bias: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    fn is_nothing(&self) -> bool {
        self.row_bias.is_none() && !self.relu
    }

    /// Applies to the `rows × cols` block at `c0`, whose first row is row `i0` of C.
    ///
    /// # Safety
    /// `c0` must point to `rows` rows of `cols` floats with row stride `ldc` that no other
    /// thread touches.
    unsafe fn apply(&self, c0: *mut f32, ldc: usize, i0: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            let row = std::slice::from_raw_parts_mut(c0.add(i * ldc), cols);
            let bias = self.row_bias.map_or(0.0, |b| b[i0 + i]);
            if self.relu {
                row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += bias);
            }
        }
    }
}

/// `C = A · B`, then the epilogue on each block, with an explicit micro-kernel.
///
/// C need not be initialised (a new activation is not zeroed first just to be overwritten):
/// every element of the `M × N` product is written before anything reads it.
pub fn gemm_with_epilogue(
    kernel: Kernel,
    a: impl PackA,
    b: impl PackB,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    epilogue: Epilogue,
) {
    if let Some(bias) = epilogue.row_bias {
        assert_eq!(bias.len(), a.rows(), "gemm: one bias per row of C");
    }
    let c = (c.as_mut_ptr().cast::<f32>(), c.len());
    run_gemm(kernel, a, b, c, ldc, false, epilogue)
}

/// `C = A · B` (or `C += A · B` when `accumulate`), C row-major `M × N` with row stride `ldc`,
/// on the micro-kernel `kernel` (which must run here: [`Kernel::runs_here`]).
pub fn gemm(
    kernel: Kernel,
    a: impl PackA,
    b: impl PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let c = (c.as_mut_ptr(), c.len());
    run_gemm(kernel, a, b, c, ldc, accumulate, Epilogue::default())
}

/// The product behind [`gemm`] and [`gemm_with_epilogue`], into C given as its pointer and
/// length: without `accumulate` C may be uninitialised, and no reference to it is formed before
/// its elements are written.
fn run_gemm(
    kernel: Kernel,
    a: impl PackA,
    b: impl PackB,
    (c, c_len): (*mut f32, usize),
    ldc: usize,
    accumulate: bool,
    epilogue: Epilogue,
) {
    let kernel = kernel.checked();
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert_eq!(
        b.rows(),
        k,
        "gemm: A is {m}x{k} but B has {} rows",
        b.rows()
    );
    assert!(m == 0 || c_len >= (m - 1) * ldc + n, "gemm: C is too small");
    if m == 0 || n == 0 {
        return;
    }
    // Tiles of at most MC × NC, all of nearly the same size, so that the threads finish together.
    let (mc, nc) = (even_split(m, MC, MR), even_split(n, NC, NR));
    let tiles_n = n.div_ceil(nc);
    let tiles = m.div_ceil(mc) * tiles_n;
    let c_ptr = SendPtr(c);
    let run_tile = |t: usize| {
        let (i0, j0) = ((t / tiles_n) * mc, (t % tiles_n) * nc);
        let tile = Tile {
            i0,
            j0,
            mc: mc.min(m - i0),
            nc: nc.min(n - j0),
        };
        // SAFETY: tiles are disjoint rectangles of C, each written by exactly one task.
        unsafe { gemm_tile(kernel, &a, &b, c_ptr, ldc, tile, accumulate, epilogue) }
    };
    if m * n * k < PARALLEL_MIN_WORK {
        (0..tiles).for_each(run_tile);
    } else {
        (0..tiles).into_par_iter().for_each(run_tile);
    }
}

/// The size of the pieces when `len` is cut into as few pieces of at most `max` as possible, all
/// but the last of equal size, a multiple of `unit` (the micro-kernel's block).
fn even_split(len: usize, max: usize, unit: usize) -> usize {
    len.div_ceil(len.div_ceil(max))
        .next_multiple_of(unit)
        .min(max)
}

/// C's data, shared by the tasks that write its tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through by `gemm_tile`, each task to its own tile, and C
// outlives the tasks (`gemm` returns after all of them).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[derive(Clone, Copy)]
struct Tile {
    i0: usize,
    j0: usize,
    mc: usize,
    nc: usize,
}

thread_local! {
    /// Per-thread packing buffers, reused across calls so that a product allocates nothing.
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Computes one `mc × nc` tile of C, looping over K in `KC` slices.
///
/// # Safety
/// `c` must point to a C of at least `(t.i0 + t.mc - 1) * ldc + t.j0 + t.nc` floats that no
/// other thread reads or writes inside the tile while this runs, and `kernel` must run here
/// (`Kernel::runs_here`).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_tile(
    kernel: Kernel,
    a: &impl PackA,
    b: &impl PackB,
    c: SendPtr,
    ldc: usize,
    t: Tile,
    accumulate: bool,
    epilogue: Epilogue,
) {
    let k = a.cols();
    if k == 0 {
        let c0 = c.0.add(t.i0 * ldc + t.j0);
        if !accumulate {
            for i in 0..t.mc {
                std::ptr::write_bytes(c0.add(i * ldc), 0, t.nc);
            }
        }
        epilogue.apply(c0, ldc, t.i0, t.mc, t.nc);
        return;
    }
    PACK.with(|bufs| {
        let (ref mut pa, ref mut pb) = *bufs.borrow_mut();
        let mut starts = [0usize; KC];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let pa = a.strips(t.i0, t.mc, p0, kc, pa);
            let in_place = rows_in_place(b, p0, kc, &mut starts[..kc]);
            // whole strips are read in place, a partial last one packed (the kernel reads NR)
            let unpacked = if in_place.is_some() { t.nc / NR } else { 0 };
            let pb = strips_buffer(pb, t.nc - unpacked * NR, NR, kc);
            if t.nc > unpacked * NR {
                let j_packed = t.j0 + unpacked * NR;
                pack_b(kernel, b, p0, kc, j_packed, t.nc - unpacked * NR, pb);
            }
            let first = p0 == 0 && !accumulate;
            let last = p0 + kc == k && !epilogue.is_nothing();
            let strips = (t.mc.div_ceil(MR), t.nc.div_ceil(NR));
            BlockOrder::for_tile(t).run(strips, |is, js| {
                let pa_strip = &pa[is * MR * kc..(is + 1) * MR * kc];
                let block = Block {
                    rows: MR.min(t.mc - is * MR),
                    cols: NR.min(t.nc - js * NR),
                    c0: c.0.add((t.i0 + is * MR) * ldc + t.j0 + js * NR),
                    ldc,
                    first,
                };
                // SAFETY (both calls): the block lies in this task's tile of C (the caller's
                // contract); the strip of A holds kc·MR floats, and B's strip kc rows of NR:
                // packed, or whole columns of B checked against its data by `rows_in_place`.
                match in_place {
                    Some(data) if js < unpacked => {
                        let b_strip = InPlace {
                            first: data.as_ptr().add(t.j0 + js * NR),
                            starts: starts.as_ptr(),
                        };
                        block.run(kernel, kc, pa_strip, b_strip)
                    }
                    _ => {
                        let at = (js - unpacked) * NR * kc;
                        block.run(kernel, kc, pa_strip, Packed(pb[at..at + NR * kc].as_ptr()))
                    }
                }
                if last {
                    epilogue.apply(block.c0, ldc, t.i0 + is * MR, block.rows, block.cols);
                }
            });
        }
    })
}

/// `b.rows_in_place(…)`, checked: every row's `b.cols()` columns inside its data, so that the
/// micro-kernel's reads of whole strips are in bounds.
fn rows_in_place<'b>(
    b: &'b impl PackB,
    p0: usize,
    kc: usize,
    starts: &mut [usize],
) -> Option<&'b [f32]> {
    let data = b.rows_in_place(p0, kc, starts)?;
    let inside = starts.iter().all(|&s| s + b.cols() <= data.len());
    assert!(inside, "gemm: a row of B read in place ends past its data");
    Some(data)
}

/// One register block of a tile of C: `rows × cols` (at most `MR × NR`) at `c0`, row stride
/// `ldc`; `first` when the block's first slice of K overwrites it.
struct Block {
    rows: usize,
    cols: usize,
    c0: *mut f32,
    ldc: usize,
    first: bool,
}

impl Block {
    /// Adds (or on the first slice writes) `A strip · B strip` into the block: a whole block by
    /// the kernel itself, a partial one through a block in registers' worth of scratch.
    ///
    /// # Safety
    /// As [`run_kernel`] for the block's `rows × cols` part of C.
    #[inline(always)]
    unsafe fn run(&self, kernel: Kernel, kc: usize, a: &[f32], b: impl StripRows) {
        if (self.rows, self.cols) == (MR, NR) {
            run_kernel(kernel, kc, a, b, self.c0, self.ldc, self.first);
        } else {
            let mut acc = [0f32; MR * NR];
            run_kernel(kernel, kc, a, b, acc.as_mut_ptr(), NR, true);
            store_block(&acc, self.c0, self.ldc, self.rows, self.cols, self.first);
        }
    }
}

/// The order in which a tile's register blocks run, for one slice of K. Either way each element
/// of C is summed in the same order, so the choice changes no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockOrder {
    /// Each strip of B (32 KiB) stays in L1 while every strip of A runs against it from L2.
    /// For short tiles (a convolution's forward product has as many rows as output channels,
    /// 16–128 in fracturenet and resnet): A has few strips, so each strip of B, reused by only
    /// a few, is better kept in L1 than streamed from L2 for each.
    StripOfB,
    /// Each strip of A (8 KiB) stays in L1 while every strip of B runs against it from L2, and
    /// C is walked along its rows (down its columns, rows 4 KiB apart on a 1024-wide C share
    /// L1's sets). For tall tiles: on a 1024³ product 75–82 % of the peak against 71–76 %,
    /// alternated. The convolutions' tall products (backward to the input, 9 × input channels
    /// rows; MobileNet's 256- and 512-channel layers) run it too, their models' steps unchanged
    /// within the noise.
    StripOfA,
}

impl BlockOrder {
    /// Rows from which a tile runs [`BlockOrder::StripOfA`].
    const TALL: usize = 256;

    fn for_tile(t: Tile) -> BlockOrder {
        if t.mc >= Self::TALL {
            BlockOrder::StripOfA
        } else {
            BlockOrder::StripOfB
        }
    }

    /// Runs `block(strip of A, strip of B)` for every pair of a tile of `(a_strips, b_strips)`,
    /// in this order.
    #[inline(always)]
    fn run(self, (a_strips, b_strips): (usize, usize), mut block: impl FnMut(usize, usize)) {
        match self {
            BlockOrder::StripOfB => {
                for js in 0..b_strips {
                    for is in 0..a_strips {
                        block(is, js);
                    }
                }
            }
            BlockOrder::StripOfA => {
                for is in 0..a_strips {
                    for js in 0..b_strips {
                        block(is, js);
                    }
                }
            }
        }
    }
}

/// Adds (or, on the first slice without `accumulate`, writes) a register block into C.
///
/// # Safety
/// `c0` must point to the block's first element of a C with row stride `ldc` holding at least
/// `rows` rows of `cols` floats from there, which no other thread touches.
unsafe fn store_block(
    acc: &[f32; MR * NR],
    c0: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    overwrite: bool,
) {
    for i in 0..rows {
        store_row(&acc[i * NR..i * NR + cols], c0.add(i * ldc), overwrite);
    }
}

/// Writes (`overwrite`) or adds `src` into the row of C at `dst`. Written through the pointer,
/// not a slice, because an overwritten C may not be initialised yet.
///
/// # Safety
/// `dst` must point to `src.len()` floats of C that no other thread touches; when adding, they
/// must be initialised.
unsafe fn store_row(src: &[f32], dst: *mut f32, overwrite: bool) {
    if overwrite {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len());
    } else {
        let row = std::slice::from_raw_parts_mut(dst, src.len());
        row.iter_mut().zip(src).for_each(|(c, s)| *c += s);
    }
}

/// `b.pack(p0, kc, j0, nc, out)` compiled for `kernel`'s instructions. The packers are plain
/// Rust, inlined here: built for the baseline target, their copies went 16 bytes at a time.
fn pack_b<B: PackB>(
    kernel: Kernel,
    b: &B,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<B: PackB>(
            b: &B,
            p0: usize,
            kc: usize,
            j0: usize,
            nc: usize,
            out: &mut [f32],
        ) {
            b.pack(p0, kc, j0, nc, out)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<B: PackB>(
            b: &B,
            p0: usize,
            kc: usize,
            j0: usize,
            nc: usize,
            out: &mut [f32],
        ) {
            b.pack(p0, kc, j0, nc, out)
        }
        match kernel {
            // SAFETY: run_gemm's `checked` refused a kernel this processor lacks.
            Kernel::Avx512 => return unsafe { avx512(b, p0, kc, j0, nc, out) },
            // SAFETY: as above.
            Kernel::Avx2Fma => return unsafe { avx2(b, p0, kc, j0, nc, out) },
            Kernel::Portable => {}
        }
    }
    b.pack(p0, kc, j0, nc, out)
}

/// Bytes of a cache line.
const LINE: usize = 64;

/// `buf` as room for `len.div_ceil(width)` strips of `width × kc` floats, starting at a cache
/// line, reusing what it holds without clearing it (the packers overwrite every real row and
/// column), except the last strip when it is partial: zeroed, so that its padding adds nothing.
///
/// A cache line, because the micro-kernel loads each step of a B strip as whole vectors: from a
/// buffer as the allocator gives it (16 bytes past a line, for large ones) every 64-byte load
/// spans two lines, and the kernel ran 8–14 % slower over a tile's blocks.
fn strips_buffer(buf: &mut Vec<f32>, len: usize, width: usize, kc: usize) -> &mut [f32] {
    let size = len.div_ceil(width) * width * kc;
    let slack = LINE / size_of::<f32>();
    if buf.len() < size + slack {
        buf.resize(size + slack, 0.0);
    }
    let skip = buf.as_ptr().align_offset(LINE).min(slack);
    let out = &mut buf[skip..skip + size];
    if !len.is_multiple_of(width) {
        out[size - width * kc..].fill(0.0);
    }
    out
}

/// Packs `A[i0..i0+mc, p0..p0+kc]` as `MR`-row strips, each `kc × MR`, zero-padded to a full strip,
/// into `buf`; returns them.
fn pack_a<'b>(
    a: &MatRef,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    buf: &'b mut Vec<f32>,
) -> &'b [f32] {
    let out = strips_buffer(buf, mc, MR, kc);
    pack_a_into(a, i0, mc, p0, kc, out);
    out
}

/// [`pack_a`] into `out` (`mc` rounded up to whole strips, × `kc`), whose padding rows of a
/// partial last strip are 0 already.
fn pack_a_into(a: &MatRef, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    for (s, strip) in out.chunks_exact_mut(MR * kc).enumerate() {
        let (first, rows) = (i0 + s * MR, MR.min(mc - s * MR));
        if a.cs == 1 {
            // row-major: the strip's rows are read side by side, so that it is written in
            // order (a row at a time wrote it MR times, strided, and took 7 % of a 1024³ product)
            let src: [&[f32]; MR] = std::array::from_fn(|i| {
                let row = first + i.min(rows - 1);
                &a.data[row * a.rs + p0..][..kc]
            });
            for (p, dst) in strip.chunks_exact_mut(MR).enumerate() {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = if i < rows { src[i][p] } else { 0.0 };
                }
            }
        } else {
            // column-major (a transposed view): each step of k is a contiguous run of rows
            assert_eq!(a.rs, 1, "gemm: A is a row-major matrix or a transposed one");
            for (p, dst) in strip.chunks_exact_mut(MR).enumerate() {
                dst[..rows].copy_from_slice(&a.data[(p0 + p) * a.cs + first..][..rows]);
            }
        }
    }
}

/// Where the micro-kernel finds each step of k of its strip of B: `NR` floats from `row(p)`.
trait StripRows: Copy {
    /// The first of step `p`'s `NR` floats.
    ///
    /// # Safety
    /// `p` must be below the strip's depth.
    unsafe fn row(self, p: usize) -> *const f32;
}

/// A packed strip (`strips_buffer`): step p at `p · NR`.
#[derive(Clone, Copy)]
struct Packed(*const f32);

impl StripRows for Packed {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        self.0.add(p * NR)
    }
}

/// A strip read where B lies ([`PackB::rows_in_place`]): step p at `starts[p]` from `first`,
/// the strip's first column.
#[derive(Clone, Copy)]
struct InPlace {
    first: *const f32,
    starts: *const usize,
}

impl StripRows for InPlace {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        self.first.add(*self.starts.add(p))
    }
}

/// Runs the micro-kernel on one `MR × NR` block: `C[i][j]` (+)= Σ_p `a[p][i]` · `b[p][j]`,
/// overwriting C when `overwrite`, else adding to it.
///
/// # Safety
/// `c` must point to `MR` rows of `NR` floats with row stride `ldc` that no other thread
/// touches; `a` must hold `kc * MR` floats and each of `b`'s first `kc` rows `NR`; `kernel`
/// must run here.
unsafe fn run_kernel(
    kernel: Kernel,
    kc: usize,
    a: &[f32],
    b: impl StripRows,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    debug_assert!(a.len() >= kc * MR);
    match kernel {
        Kernel::Portable => kernel_portable(kc, a, b, c, ldc, overwrite),
        // SAFETY: `gemm` refuses a kernel whose instructions this processor lacks
        // (`Kernel::runs_here`); the rest is this function's contract.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => kernel_avx2_fma(kc, a, b, c, ldc, overwrite),
        // SAFETY: as above, for AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => kernel_avx512(kc, a, b, c, ldc, overwrite),
    }
}

/// The micro-kernel in plain Rust.
///
/// # Safety
/// As [`run_kernel`].
unsafe fn kernel_portable(
    kc: usize,
    a: &[f32],
    b: impl StripRows,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    let mut acc = [[0f32; NR]; MR];
    for (p, ap) in a.chunks_exact(MR).take(kc).enumerate() {
        let bp = std::slice::from_raw_parts(b.row(p), NR);
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        store_row(row, c.add(i * ldc), overwrite);
    }
}

/// The micro-kernel with fused multiply-adds: AVX has 16 registers, so the `MR × NR` block is
/// done in three passes that each fit: rows 0–5 by columns 0–15 and 16–31 (12 accumulators),
/// then rows 6–7 by all 32 columns (8). Passes of 12 sums ran at 79 % of the peak on a 1024³
/// product, four passes of 8 at 72 %.
///
/// # Safety
/// As [`run_kernel`], and the processor must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2_fma(
    kc: usize,
    a: &[f32],
    b: impl StripRows,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    prefetch_c_block(c, ldc);
    avx2_pass::<6, 2>(kc, a, b, c, ldc, overwrite, (0, 0));
    avx2_pass::<6, 2>(kc, a, b, c, ldc, overwrite, (0, 16));
    avx2_pass::<2, 4>(kc, a, b, c, ldc, overwrite, (6, 0));
}

/// One pass of [`kernel_avx2_fma`]: the `ROWS × 8·VECS` part of the block whose first element
/// is at (`top`, `left`), in `ROWS · VECS` accumulators.
///
/// # Safety
/// As [`kernel_avx2_fma`], and the part must lie inside the `MR × NR` block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_pass<const ROWS: usize, const VECS: usize>(
    kc: usize,
    a: &[f32],
    b: impl StripRows,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
    (top, left): (usize, usize),
) {
    use std::arch::x86_64::*;
    debug_assert!(top + ROWS <= MR && left + 8 * VECS <= NR);
    let pa = a.as_ptr().add(top);
    let mut acc = [[_mm256_setzero_ps(); VECS]; ROWS];
    steps_by_four(kc, pa, |p| {
        let pb = b.row(p).add(left);
        let bv: [__m256; VECS] = std::array::from_fn(|v| _mm256_loadu_ps(pb.add(8 * v)));
        for (i, ai) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*pa.add(p * MR + i));
            for (acc, bv) in ai.iter_mut().zip(&bv) {
                *acc = _mm256_fmadd_ps(av, *bv, *acc);
            }
        }
    });
    for (i, ai) in acc.iter().enumerate() {
        for (v, reg) in ai.iter().enumerate() {
            let dst = c.add((top + i) * ldc + left + 8 * v);
            let sum = if overwrite {
                *reg
            } else {
                _mm256_add_ps(_mm256_loadu_ps(dst), *reg)
            };
            _mm256_storeu_ps(dst, sum);
        }
    }
}

/// Asks for the 16 lines of C's `MR × NR` block at `c`: the kernels touch C only after their
/// loop over k, and in a large product it is in memory, so that its lines arrive while the FMAs
/// run instead of stalling the stores at the end.
///
/// # Safety
/// The processor must have SSE (every x86_64 does); `c` need not be valid (prefetches do not fault).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_c_block(c: *const f32, ldc: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for i in 0..MR {
        for half in 0..2 {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + 16 * half) as *const i8);
        }
    }
}

/// Runs `step(p)` for every step of k in order, four steps a trip (fewer loop instructions
/// between the FMAs), first asking for the A strip's two lines that the trip two ahead will read:
/// the strip streams from L2.
///
/// # Safety
/// As [`prefetch_c_block`], for `a`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn steps_by_four(kc: usize, a: *const f32, mut step: impl FnMut(usize)) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let whole = kc - kc % 4;
    for p in (0..whole).step_by(4) {
        for line in 0..2 {
            _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add((p + 8) * MR + 16 * line) as *const i8);
        }
        for q in p..p + 4 {
            step(q);
        }
    }
    (whole..kc).for_each(step);
}

/// The whole `MR × NR` block in 16 AVX-512 accumulators.
///
/// # Safety
/// As [`run_kernel`], and the processor must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(
    kc: usize,
    a: &[f32],
    b: impl StripRows,
    c: *mut f32,
    ldc: usize,
    overwrite: bool,
) {
    use std::arch::x86_64::*;
    let pa = a.as_ptr();
    prefetch_c_block(c, ldc);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    steps_by_four(kc, pa, |p| {
        let pb = b.row(p);
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(16));
        for (i, ai) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*pa.add(p * MR + i));
            ai[0] = _mm512_fmadd_ps(av, b0, ai[0]);
            ai[1] = _mm512_fmadd_ps(av, b1, ai[1]);
        }
    });
    for (i, ai) in acc.iter().enumerate() {
        for (v, reg) in ai.iter().enumerate() {
            let dst = c.add(i * ldc + 16 * v);
            let sum = if overwrite {
                *reg
            } else {
                _mm512_add_ps(_mm512_loadu_ps(dst), *reg)
            };
            _mm512_storeu_ps(dst, sum);
        }
    }
}

/// Multiply-adds per second of one thread running the micro-kernel alone for about `time`, in the
/// product's order: one `KC × MR` strip of A (it stays in L1) against the `NR`-column strips of
/// one `KC × NC` slice of B (in L2), into one block of C. This is the product without its packing
/// and without C's traffic to memory: against the measured peak, what the kernel itself loses;
/// against the whole product, what the memory around it costs.
pub fn micro_kernel_rate(kernel: Kernel, time: std::time::Duration) -> f64 {
    assert!(
        kernel.runs_here(),
        "the {} kernel cannot run here",
        kernel.name()
    );
    let a = vec![1e-3f32; MR * KC];
    // B's slice at a cache line, as the product packs it
    let mut b_buf = Vec::new();
    let b = strips_buffer(&mut b_buf, NC, NR, KC);
    b.fill(1e-3);
    let mut c = [0f32; MR * NR];
    let start = std::time::Instant::now();
    let mut blocks = 0usize;
    while start.elapsed() < time {
        for strip in b.chunks_exact(NR * KC) {
            // SAFETY: C is one MR × NR block of row stride NR owned here; the strips hold KC·MR
            // and KC·NR floats; the kernel runs here (asserted above).
            unsafe {
                run_kernel(
                    kernel,
                    KC,
                    &a,
                    Packed(strip.as_ptr()),
                    c.as_mut_ptr(),
                    NR,
                    false,
                )
            };
            blocks += 1;
        }
    }
    std::hint::black_box(c);
    (blocks * MR * NR * KC) as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::as_uninit;
    use crate::tensor::Tensor;

    fn naive(a: &MatRef, b: &MatRef) -> Vec<f32> {
        let mut c = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let s: f64 = (0..a.cols)
                    .map(|p| a.at(i, p) as f64 * b.at(p, j) as f64)
                    .sum();
                c[i * b.cols + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_on_odd_shapes_and_transposes() {
        // Sizes straddle MR, NR, KC, MC and NC so that every edge path runs.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 17),
            (13, 300, 5),
            (97, 257, 258),
            (6, 16, 16),
            // a tall tile (BlockOrder::StripOfA), partial strips both ways, two slices of K
            (300, 300, 75),
        ] {
            let a = Tensor::rand_uniform([m, k], -1.0, 1.0, 1).data;
            let at = Tensor::rand_uniform([k, m], -1.0, 1.0, 2).data;
            let b = Tensor::rand_uniform([k, n], -1.0, 1.0, 3).data;
            let cases = [
                (MatRef::rows(&a, m, k), MatRef::rows(&b, k, n)),
                (MatRef::rows(&at, k, m).t(), MatRef::rows(&b, k, n)),
            ];
            for kernel in Kernel::available() {
                for (av, bv) in &cases {
                    let want = naive(av, bv);
                    let mut c = vec![f32::NAN; m * n];
                    gemm(kernel, *av, *bv, &mut c, n, false);
                    let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - y).abs() <= tol, "{kernel:?} {m}x{k}x{n}: {x} vs {y}");
                    }
                    // accumulate adds a second product on top
                    gemm(kernel, *av, *bv, &mut c, n, true);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - 2.0 * y).abs() <= 2.0 * tol);
                    }
                }
            }
        }
    }

    #[test]
    fn a_packed_once_gives_the_products_of_a_packed_per_call_bit_for_bit() {
        // two slices of K, two tiles of rows (MC = 288) with a partial strip; a transposed A;
        // more strips than one task of `PackedA::new` packs, row-major and transposed
        let cases = [
            (13, 300, 37, false),
            (301, 270, 40, true),
            (5, 3, 4, false),
            (203, 300, 9, false),
        ];
        for &(m, k, n, transposed) in &cases {
            let a = Tensor::rand_uniform([m, k], -1.0, 1.0, 9).data;
            let b = Tensor::rand_uniform([k, n], -1.0, 1.0, 10).data;
            let am = if transposed {
                MatRef::rows(&a, k, m).t()
            } else {
                MatRef::rows(&a, m, k)
            };
            let packed = PackedA::new(am);
            for kernel in Kernel::available() {
                let bm = MatRef::rows(&b, k, n);
                let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
                gemm(kernel, am, bm, &mut want, n, false);
                gemm(kernel, &packed, bm, &mut got, n, false);
                assert_eq!(got, want, "{kernel:?} {m}x{k}x{n}");
            }
        }
    }

    /// B with its rows scattered in a buffer (row p at `start(p)`, out of order, gaps between
    /// them), offered to the kernel in place; `short` makes the first row's start run past it.
    #[derive(Clone, Copy)]
    struct Scattered<'a> {
        data: &'a [f32],
        rows: usize,
        cols: usize,
        short: bool,
    }

    /// Row p of a `rows × cols` B in the buffer of [`Scattered`]: in reverse order, `cols + 3`
    /// apart, from 5 floats in.
    fn scattered_start(rows: usize, cols: usize, p: usize) -> usize {
        (rows - 1 - p) * (cols + 3) + 5
    }

    /// `b`'s rows scattered, NaN between them.
    fn scatter(b: &MatRef) -> Vec<f32> {
        let mut data = vec![f32::NAN; b.rows * (b.cols + 3) + 5];
        for p in 0..b.rows {
            let at = scattered_start(b.rows, b.cols, p);
            for j in 0..b.cols {
                data[at + j] = b.at(p, j);
            }
        }
        data
    }

    impl PackB for Scattered<'_> {
        fn rows(&self) -> usize {
            self.rows
        }
        fn cols(&self) -> usize {
            self.cols
        }
        fn pack(&self, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
            for (s, strip) in out.chunks_exact_mut(NR * kc).enumerate() {
                let (j, width) = (j0 + s * NR, NR.min(nc - s * NR));
                for (p, dst) in strip.chunks_exact_mut(NR).enumerate() {
                    let at = scattered_start(self.rows, self.cols, p0 + p) + j;
                    dst[..width].copy_from_slice(&self.data[at..at + width]);
                }
            }
        }
        fn rows_in_place(&self, p0: usize, kc: usize, starts: &mut [usize]) -> Option<&[f32]> {
            for (p, start) in (p0..p0 + kc).zip(starts.iter_mut()) {
                *start = scattered_start(self.rows, self.cols, p);
            }
            if self.short {
                starts[0] = self.data.len() - self.cols + 1;
            }
            Some(self.data)
        }
    }

    #[test]
    fn b_read_in_place_gives_the_products_of_b_packed_bit_for_bit_on_every_kernel() {
        // partial strips both ways; two slices of K; two tiles of columns (n > NC); a tall tile
        // (BlockOrder::StripOfA); fewer columns than a strip (nothing read in place)
        for &(m, k, n) in &[(13, 300, 75), (8, 40, 1100), (260, 257, 70), (9, 5, 20)] {
            let a = Tensor::rand_uniform([m, k], -1.0, 1.0, 11).data;
            let b = Tensor::rand_uniform([k, n], -1.0, 1.0, 12).data;
            let bias = Tensor::rand_uniform([m], -1.0, 1.0, 13).data;
            let (am, bm) = (MatRef::rows(&a, m, k), MatRef::rows(&b, k, n));
            let data = scatter(&bm);
            let scattered = Scattered {
                data: &data,
                rows: k,
                cols: n,
                short: false,
            };
            let epilogue = Epilogue {
                row_bias: Some(&bias),
                relu: true,
            };
            for kernel in Kernel::available() {
                let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
                gemm(kernel, am, bm, &mut want, n, false);
                gemm(kernel, am, scattered, &mut got, n, false);
                assert_eq!(got, want, "{kernel:?} {m}x{k}x{n}");
                gemm(kernel, am, bm, &mut want, n, true);
                gemm(kernel, am, scattered, &mut got, n, true);
                assert_eq!(got, want, "{kernel:?} {m}x{k}x{n}, accumulated");
                // SAFETY (both): f32s written as f32s.
                gemm_with_epilogue(kernel, am, bm, unsafe { as_uninit(&mut want) }, n, epilogue);
                gemm_with_epilogue(
                    kernel,
                    am,
                    scattered,
                    unsafe { as_uninit(&mut got) },
                    n,
                    epilogue,
                );
                assert_eq!(got, want, "{kernel:?} {m}x{k}x{n}, with the epilogue");
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemm: a row of B read in place ends past its data")]
    fn a_row_read_in_place_past_its_data_is_refused() {
        let b = Tensor::rand_uniform([4, 40], -1.0, 1.0, 14).data;
        let data = scatter(&MatRef::rows(&b, 4, 40));
        let scattered = Scattered {
            data: &data,
            rows: 4,
            cols: 40,
            short: true,
        };
        let (a, mut c) = (vec![1.0f32; 8 * 4], vec![0f32; 8 * 40]);
        gemm(
            Kernel::Portable,
            MatRef::rows(&a, 8, 4),
            scattered,
            &mut c,
            40,
            false,
        );
    }

    #[test]
    fn the_epilogue_adds_each_rows_bias_then_relu_on_every_kernel() {
        // 13 rows straddle MR; k = 0 is a product of nothing plus the bias; 300 takes two slices
        for &(m, k, n) in &[(13, 300, 37), (7, 3, 70), (5, 0, 4)] {
            let a = Tensor::rand_uniform([m, k], -1.0, 1.0, 6).data;
            let b = Tensor::rand_uniform([k, n], -1.0, 1.0, 7).data;
            let bias = Tensor::rand_uniform([m], -1.0, 1.0, 8).data;
            let product = naive(&MatRef::rows(&a, m, k), &MatRef::rows(&b, k, n));
            for kernel in Kernel::available() {
                for relu in [false, true] {
                    // NaN where C's old contents would be: a product that read them shows it
                    let mut c = vec![MaybeUninit::new(f32::NAN); m * n];
                    let epilogue = Epilogue {
                        row_bias: Some(&bias),
                        relu,
                    };
                    let (am, bm) = (MatRef::rows(&a, m, k), MatRef::rows(&b, k, n));
                    gemm_with_epilogue(kernel, am, bm, &mut c, n, epilogue);
                    // SAFETY: every element was initialised (to NaN) before the product
                    let c: Vec<f32> = c.iter().map(|v| unsafe { v.assume_init() }).collect();
                    for (idx, (got, p)) in c.iter().zip(&product).enumerate() {
                        let want = if relu {
                            (p + bias[idx / n]).max(0.0)
                        } else {
                            p + bias[idx / n]
                        };
                        let tol = 1e-5 * (k as f32).sqrt() * 4.0 + 1e-6;
                        assert!(
                            (got - want).abs() <= tol,
                            "{kernel:?} {m}x{k}x{n} relu {relu}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn either_block_order_runs_every_block_once() {
        for order in [BlockOrder::StripOfB, BlockOrder::StripOfA] {
            let mut blocks = Vec::new();
            order.run((3, 5), |i, j| blocks.push((i, j)));
            assert_eq!(blocks.len(), 15, "{order:?}");
            blocks.sort();
            blocks.dedup();
            assert_eq!(blocks.len(), 15, "{order:?}: a block twice");
            assert!(blocks.iter().all(|&(i, j)| i < 3 && j < 5));
        }
        let tile = |mc| Tile {
            i0: 0,
            j0: 0,
            mc,
            nc: 1024,
        };
        assert_eq!(BlockOrder::for_tile(tile(64)), BlockOrder::StripOfB);
        assert_eq!(BlockOrder::for_tile(tile(512)), BlockOrder::StripOfA);
    }

    #[test]
    fn a_kernel_this_processor_cannot_run_is_refused() {
        // On a processor that runs every kernel (Zen 4), there is nothing to refuse.
        let (a, b) = (vec![1.0; 4], vec![1.0; 4]);
        for kernel in Kernel::all().into_iter().filter(|k| !k.runs_here()) {
            let refused = std::panic::catch_unwind(|| {
                let mut c = vec![0.0; 4];
                gemm(
                    kernel,
                    MatRef::rows(&a, 2, 2),
                    MatRef::rows(&b, 2, 2),
                    &mut c,
                    2,
                    false,
                );
            });
            let message = *refused.expect_err("ran").downcast::<String>().unwrap();
            assert!(
                message.contains("instructions this processor does not have"),
                "{message}"
            );
        }
    }

    #[test]
    fn respects_leading_dimension_and_empty_k() {
        let (m, k, n, ldc) = (5, 4, 3, 7);
        let a = Tensor::rand_uniform([m, k], -1.0, 1.0, 4).data;
        let b = Tensor::rand_uniform([k, n], -1.0, 1.0, 5).data;
        let mut c = vec![9.0f32; m * ldc];
        gemm(
            Kernel::fastest(),
            MatRef::rows(&a, m, k),
            MatRef::rows(&b, k, n),
            &mut c,
            ldc,
            false,
        );
        let want = naive(&MatRef::rows(&a, m, k), &MatRef::rows(&b, k, n));
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j < n {
                    assert!((got - want[i * n + j]).abs() < 1e-5);
                } else {
                    assert_eq!(got, 9.0, "wrote outside the {n} columns");
                }
            }
        }
        let mut z = vec![1.0f32; 6];
        gemm(
            Kernel::fastest(),
            MatRef::rows(&[], 2, 0),
            MatRef::rows(&[], 0, 3),
            &mut z,
            3,
            false,
        );
        assert_eq!(z, vec![0.0; 6]);
    }

    #[test]
    fn packing_buffers_start_at_a_cache_line() {
        // a buffer grown from nothing, and one reused at sizes below and above what it holds
        let mut buf = Vec::new();
        for (len, kc) in [(NR, KC), (3 * NR + 5, 7), (1, 1), (40 * NR, KC)] {
            buf.iter_mut().for_each(|v| *v = 1.0);
            let strips = strips_buffer(&mut buf, len, NR, kc);
            assert_eq!(
                strips.as_ptr() as usize % LINE,
                0,
                "{len} columns, depth {kc}"
            );
            assert_eq!(strips.len(), len.div_ceil(NR) * NR * kc);
            // the padding of a partial last strip is zero
            let last = &strips[strips.len() - NR * kc..];
            assert!(len % NR == 0 || last.iter().all(|&v| v == 0.0));
        }
    }
}
