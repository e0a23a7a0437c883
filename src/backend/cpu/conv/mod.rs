//! 2-D convolution on the CPU, lowered onto the GEMM by unfolding ("im2col").
//!
//! For one image, unfolding `x[Ci,H,W]` gives a matrix `col[Ci·KH·KW, Ho·Wo]` whose column p holds
//! the input patch under output pixel p. Then the three passes are three matrix products:
//! - forward:          `y[Co, Ho·Wo]`       = `w[Co, Ci·KH·KW]` · col
//! - weight gradient:  `dw[Co, Ci·KH·KW]`  += `dy[Co, Ho·Wo]` · colᵀ      (summed over the batch)
//! - input gradient:   dcol               = wᵀ · dy,  then folded back ("col2im") into dx,
//!   each patch element adding into the input pixel it was copied from; or, at stride 1, the
//!   forward pass of the [`turned`] convolution, whichever way the layer's forward pass runs
//!   ([`InputGradient`]).
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
//! out flat, and on the other 3×3 stride-1 layers that run Winograd it goes through Winograd's
//! transforms too ([`WeightGradient`]).

mod flat_unfolding;
mod unfold;
mod weight_gradient;
pub mod winograd;

use flat_unfolding::*;
pub use unfold::*;
pub use weight_gradient::*;

use super::flat::Flat;
use super::gemm::{gemm, gemm_with_epilogue, Epilogue, Kernel, MatRef, PackedA};
use super::{as_uninit, pool, written_by};
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
    /// implicit way is `col2im`); `forced` (benchmarks, tests) wins where it applies.
    pub fn choose(g: &Conv2dGeom, forced: Option<Unfolding>) -> Unfolding {
        let flat_applies = flat_applies(g);
        match forced {
            Some(Unfolding::Flat) if flat_applies => Unfolding::Flat,
            Some(Unfolding::Copy) => Unfolding::Copy,
            Some(_) => Unfolding::Implicit,
            None if flat_applies && flat_unfolding_pays(g) => Unfolding::Flat,
            None => Unfolding::Implicit,
        }
    }

    /// The unfolding called `name`: copy, implicit or flat.
    pub fn named(name: &str) -> Result<Unfolding, String> {
        match name {
            "copy" => Ok(Unfolding::Copy),
            "implicit" => Ok(Unfolding::Implicit),
            "flat" => Ok(Unfolding::Flat),
            _ => Err(format!(
                "no unfolding is called {name:?} (copy, implicit or flat)"
            )),
        }
    }
}

/// Whether [`Unfolding::Flat`] beats the implicit gather (and `col2im`) for `g`: at a stride,
/// where those go element by element (`bench`, batch 32: resnet at 192's 7×7/2 stem 11.1 → 3.7
/// ms forward, its 3×3/2 layers 2.8 → 1.2, 1.8 → 1.0 and 1.7 → 1.4 forward and 2.7 → 1.6,
/// 1.6 → 1.1 and 1.6 → 1.6 for the input gradient; MobileNet's 3×3/2 stem at 128 faster too),
/// and at stride 1 from `FLAT_MIN_CHANNELS` input channels (resnet's 16-channel 48×48 layers:
/// 4.2 → 2.8 ms forward, 9.0 → 4.2 for the input gradient; best of 20, one process). On fewer
/// channels the flat product's extra pass over the output (dropping each row's last columns)
/// costs more than it saves: fracturenet's first layer (3×3, one input channel, 32 output
/// channels at 128×128) took 3.6–4.2 ms implicit against 7.1–8.0 flat.
fn flat_unfolding_pays(g: &Conv2dGeom) -> bool {
    g.stride_h > 1 || g.c_in >= FLAT_MIN_CHANNELS
}

/// Whether `g` can be laid out flat ([`Unfolding::Flat`], [`WeightGradient::Flat`]): one stride
/// both ways, and not pointwise (already a plain GEMM).
fn flat_applies(g: &Conv2dGeom) -> bool {
    !g.is_pointwise() && g.stride_h == g.stride_w
}

/// Input channels from which [`Unfolding::Flat`] pays at stride 1 (`flat_unfolding_pays`).
const FLAT_MIN_CHANNELS: usize = 16;

/// How a convolution's output and input gradient are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// The filters times the unfolded input ([`Unfolding`]): any kernel, stride and padding.
    Gemm,
    /// Winograd F(2×2, 3×3) ([`winograd`]): 2.25× fewer multiply-adds for 3×3
    /// stride-1 layers, which pays for its two transforms once both sides have at least
    /// [`WINOGRAD_MIN_CHANNELS`] channels (a 1-channel first layer has little to multiply).
    Winograd,
}

/// Fewest input and output channels for which [`Algorithm::Winograd`] is chosen.
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Fewest input and output channels for which a layer where Winograd applies and pays runs it
/// forward (and turned, for its input gradient: [`InputGradient::Turned`]); below, it is the
/// GEMM on the image laid out flat ([`Unfolding::Flat`]). Each way timed in one process,
/// alternated, best of 20 (batch 32, an Intel Xeon with AVX-512): a 16-channel 48×48 layer 3.7
/// → 2.8 and 4.8 → 3.6 ms in two runs, a 32-channel 24×24 one 1.95 → 1.84 and 2.34 → 2.31
/// (level, so Winograd stays).
pub const WINOGRAD_FORWARD_MIN_CHANNELS: usize = 32;

/// Fewest input and output channels for which a Winograd layer's weight gradient goes through
/// Winograd's transforms too ([`WeightGradient::Winograd`]; forcing [`Algorithm::Winograd`]
/// forces it everywhere).
pub const WINOGRAD_WEIGHT_GRADIENT_MIN_CHANNELS: usize = 64;

impl Algorithm {
    /// Winograd where it applies and pays, else the GEMM; `forced` (benchmarks, tests) wins
    /// where it applies: the GEMM everywhere, or Winograd on thin layers too.
    pub fn choose(g: &Conv2dGeom, forced: Option<Algorithm>) -> Algorithm {
        let pays = g.c_in.min(g.c_out) >= WINOGRAD_MIN_CHANNELS;
        match forced {
            _ if !winograd::applies(g) => Algorithm::Gemm,
            Some(a) => a,
            None if pays => Algorithm::Winograd,
            None => Algorithm::Gemm,
        }
    }

    /// The algorithm called `name`: gemm or winograd.
    pub fn named(name: &str) -> Result<Algorithm, String> {
        match name {
            "gemm" => Ok(Algorithm::Gemm),
            "winograd" => Ok(Algorithm::Winograd),
            _ => Err(format!(
                "no convolution algorithm is called {name:?} (gemm or winograd)"
            )),
        }
    }
}

/// How one convolution runs on the CPU: the GEMM micro-kernel, and for its shape the algorithm,
/// the unfolding and the weight gradient's method, chosen by the backend ([`super::Cpu`]) once
/// per call from its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kernel: Kernel,
    /// The forward pass's algorithm.
    pub algorithm: Algorithm,
    pub input_gradient: InputGradient,
    pub unfolding: Unfolding,
    pub weight_gradient: WeightGradient,
}

impl Plan {
    /// Each choice for `g` on `kernel`, the algorithm and unfolding as forced where they are.
    pub fn choose(
        g: &Conv2dGeom,
        kernel: Kernel,
        algorithm: Option<Algorithm>,
        unfolding: Option<Unfolding>,
    ) -> Plan {
        let unfolding = Unfolding::choose(g, unfolding);
        let forced = algorithm.is_some();
        let winograd = Algorithm::choose(g, algorithm) == Algorithm::Winograd;
        let channels = g.c_in.min(g.c_out);
        let algorithm = if winograd && (forced || channels >= WINOGRAD_FORWARD_MIN_CHANNELS) {
            Algorithm::Winograd
        } else {
            Algorithm::Gemm
        };
        let input_gradient = if winograd {
            InputGradient::Turned(algorithm)
        } else {
            InputGradient::FoldBack
        };
        let wide = channels >= WINOGRAD_WEIGHT_GRADIENT_MIN_CHANNELS;
        let weight_gradient = if winograd && (wide || forced) {
            WeightGradient::Winograd
        } else {
            WeightGradient::choose(g, unfolding)
        };
        Plan {
            kernel,
            algorithm,
            input_gradient,
            unfolding,
            weight_gradient,
        }
    }
}

/// A pass of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    InputGradient,
    WeightGradient,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::InputGradient, Pass::WeightGradient];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGradient => "input gradient",
            Pass::WeightGradient => "weight gradient",
        }
    }
}

impl Plan {
    /// How this plan runs `pass` of `g`, in words: the fields that pass reads ("winograd",
    /// "gemm, flat", "turned gemm, implicit", "fold back", "dots", ...). Two plans that run a
    /// pass the same way describe it the same.
    pub fn describe(&self, pass: Pass, g: &Conv2dGeom) -> String {
        let unfolding = |u: Unfolding| match u {
            _ if g.is_pointwise() => String::new(),
            Unfolding::Flat if !flat_applies(g) => ", implicit".to_string(),
            u => format!(", {}", format!("{u:?}").to_lowercase()),
        };
        let algorithm = |a: Algorithm, u: Unfolding| match a {
            Algorithm::Winograd => "winograd".to_string(),
            Algorithm::Gemm => format!("gemm{}", unfolding(u)),
        };
        match pass {
            Pass::Forward => algorithm(self.algorithm, self.unfolding),
            Pass::InputGradient => match self.input_gradient {
                InputGradient::Turned(a) => format!("turned {}", algorithm(a, self.unfolding)),
                // col2im folds back the same way after either unfolding
                InputGradient::FoldBack => match self.unfolding {
                    Unfolding::Flat if flat_applies(g) => "fold back, flat".to_string(),
                    _ => "fold back".to_string(),
                },
            },
            Pass::WeightGradient => match self.weight_gradient {
                WeightGradient::Gemm => match self.unfolding {
                    Unfolding::Copy if !g.is_pointwise() => "gemm, copy".to_string(),
                    _ => "gemm".to_string(),
                },
                w => format!("{w:?}").to_lowercase(),
            },
        }
    }

    /// Every way `pass` of `g` can run on `chosen`'s kernel, each once (by [`Plan::describe`]),
    /// `chosen` (the backend's plan for `g`) first: for benchmarks that time them side by side
    /// and check each against the others.
    pub fn variants(g: &Conv2dGeom, chosen: Plan, pass: Pass) -> Vec<Plan> {
        let flat_applies = flat_applies(g);
        let unfoldings = [Unfolding::Copy, Unfolding::Implicit, Unfolding::Flat];
        let unfoldings = unfoldings
            .into_iter()
            .filter(|&u| u != Unfolding::Flat || flat_applies);
        let winograd = winograd::applies(g);
        let mut plans = vec![chosen];
        for unfolding in unfoldings {
            let with = |change: &dyn Fn(&mut Plan)| {
                let mut plan = Plan {
                    unfolding,
                    ..chosen
                };
                change(&mut plan);
                plan
            };
            match pass {
                Pass::Forward => {
                    plans.push(with(&|p| p.algorithm = Algorithm::Gemm));
                    if winograd {
                        plans.push(with(&|p| p.algorithm = Algorithm::Winograd));
                    }
                }
                Pass::InputGradient => {
                    plans.push(with(&|p| p.input_gradient = InputGradient::FoldBack));
                    if g.turned().is_some() {
                        let turned =
                            |a| move |p: &mut Plan| p.input_gradient = InputGradient::Turned(a);
                        plans.push(with(&turned(Algorithm::Gemm)));
                        if winograd {
                            plans.push(with(&turned(Algorithm::Winograd)));
                        }
                    }
                }
                Pass::WeightGradient => {
                    plans.push(with(&|p| p.weight_gradient = WeightGradient::Gemm));
                    if flat_applies && unfolding != Unfolding::Copy {
                        plans.push(with(&|p| p.weight_gradient = WeightGradient::Flat));
                    }
                    if WeightGradient::dots_apply(g) {
                        plans.push(with(&|p| p.weight_gradient = WeightGradient::Dots));
                    }
                    if winograd {
                        plans.push(with(&|p| p.weight_gradient = WeightGradient::Winograd));
                    }
                }
            }
        }
        let mut seen = Vec::new();
        plans.retain(|p| {
            let way = p.describe(pass, g);
            let new = !seen.contains(&way);
            seen.push(way);
            new
        });
        plans
    }
}

/// How the input gradient `dx` of a convolution runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGradient {
    /// `dcol = wᵀ · dy` through the GEMM, folded back into `dx` ([`col2im`], or in runs on the
    /// image laid out flat for [`Unfolding::Flat`]): any stride, the reference of the other.
    FoldBack,
    /// At stride 1, the forward pass of the [`turned`] convolution by the algorithm given: the
    /// layer's own forward algorithm, on the layers where Winograd applies and pays (3×3,
    /// [`WINOGRAD_MIN_CHANNELS`]). On resnet's 16-channel 48×48 layers, whose forward pass is
    /// the GEMM on the image laid out flat, that GEMM turned beats Winograd turned (`bench`,
    /// batch 32, an AMD EPYC with AVX2, best of 7 in five alternated runs: the four layers
    /// 16.0–24.7 → 11.8–16.2 ms); folding back was slower still than Winograd there (4.2
    /// against 3.4 ms a layer on an Intel Xeon with AVX-512).
    Turned(Algorithm),
}

/// The [turned](Conv2dGeom::turned) convolution of `g` and its filters `[Ci,Co,KH,KW]`: those
/// of `w[Co,Ci,KH,KW]` turned by 180° with their channels swapped, so that
///   `dx[ci][i][j] = Σ_co Σ_ky,kx dy[co][i + ky − p'][j + kx − q'] · w[co][ci][KH−1−ky][KW−1−kx]`.
pub fn turned(w: &[f32], g: &Conv2dGeom) -> (Conv2dGeom, Vec<f32>) {
    let turned = g
        .turned()
        .expect("a convolution turns only at stride 1 with less padding than its window");
    let taps = g.kh * g.kw;
    let mut wt = vec![0f32; w.len()];
    // each input channel's turned filters in parallel: every step turns them
    wt.par_chunks_mut(g.c_out * taps)
        .enumerate()
        .for_each(|(ci, filters)| {
            for (co, dst) in filters.chunks_exact_mut(taps).enumerate() {
                let src = &w[(co * g.c_in + ci) * taps..][..taps];
                dst.iter_mut()
                    .zip(src.iter().rev())
                    .for_each(|(d, s)| *d = *s);
            }
        });
    (turned, wt)
}

/// `y[N,Co,Ho,Wo]` = conv(x, w) + b, then max(0, ·) when `relu`: both in the GEMM's epilogue (or
/// Winograd's output transform), on each block of y while it is in cache.
pub fn forward(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    g: &Conv2dGeom,
    relu: bool,
) -> Vec<f32> {
    forward_pooled(plan, x, w, b, g, relu, None)
}

/// [`forward`], then max pooling `pool` over its output when given: each image's convolution
/// goes into this thread's buffer, still in cache when it is pooled, and only the pooled image
/// is written out (a quarter of it for 2×2 pooling).
pub fn forward_pooled(
    plan: &Plan,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    g: &Conv2dGeom,
    relu: bool,
    pool: Option<&Pool2dGeom>,
) -> Vec<f32> {
    let filters = match plan.algorithm {
        Algorithm::Winograd => Filters::Winograd(winograd::prepare(plan.kernel, w, g)),
        // packed once for all the images
        Algorithm::Gemm => Filters::Gemm(
            PackedA::new(MatRef::rows(w, g.c_out, g.patch_len())),
            plan.unfolding,
            plan.kernel,
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
        Filters::Gemm(_, Unfolding::Flat, _) => Flat::forward(g),
        _ => None,
    };
    let conv_image = g.c_out * g.out_h * g.out_w;
    let out_image = pool.map_or(conv_image, |p| p.c * p.out_h * p.out_w);
    // Winograd's products take the tiles of several small images at once
    let group = match (filters, pool) {
        (Filters::Winograd(_), None) => winograd::images_per_group(g),
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
                .for_each_init(
                    || flat.map(|f| FlatImage::new(f, g, filters.kernel())),
                    each_group,
                )
        })
    }
}

/// A convolution's filters made ready for a batch.
enum Filters {
    /// `w[Co, Ci·KH·KW]` packed for the GEMM, how `col` reaches it, and the GEMM's kernel.
    Gemm(PackedA, Unfolding, Kernel),
    /// Transformed and packed for Winograd ([`winograd::prepare`]).
    Winograd(winograd::Transformed),
}

impl Filters {
    /// The GEMM kernel that multiplies them.
    fn kernel(&self) -> Kernel {
        match self {
            Filters::Gemm(_, _, kernel) => *kernel,
            Filters::Winograd(u) => u.kernel(),
        }
    }
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
    /// for the GEMM, a group for Winograd ([`winograd::images_per_group`]); `flat` is this
    /// task's buffers when the unfolding is [`Unfolding::Flat`].
    fn images(&self, xs: &[f32], flat: Option<&mut FlatImage>, ys: &mut [MaybeUninit<f32>]) {
        let g = self.g;
        let (wm, unfolding, kernel) = match self.filters {
            Filters::Winograd(u) => return winograd::images(xs, u, Some(self.b), self.relu, g, ys),
            Filters::Gemm(wm, unfolding, kernel) => (wm, *unfolding, *kernel),
        };
        debug_assert_eq!(
            xs.len(),
            g.c_in * g.h * g.w,
            "the GEMM takes one image at a time"
        );
        let (xn, yn) = (xs, ys);
        let (k, p) = (g.patch_len(), g.out_h * g.out_w);
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

/// `dx[N,Ci,H,W]`, the way the plan's [`InputGradient`] says.
pub fn backward_input(plan: &Plan, dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    match plan.input_gradient {
        InputGradient::FoldBack => backward_input_by(plan, dy, w, g),
        InputGradient::Turned(algorithm) => {
            let (turned, wt) = turned(w, g);
            let plan = Plan { algorithm, ..*plan };
            forward(&plan, dy, &wt, &vec![0.0; g.c_in], &turned, false)
        }
    }
}

/// [`backward_input`] through the GEMM, dcol folded back the way the plan's unfolding says: on
/// the image laid out flat for [`Unfolding::Flat`], else by [`col2im`].
fn backward_input_by(plan: &Plan, dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (k, p) = (g.patch_len(), g.out_h * g.out_w);
    // packed once for all the images: on small planes packing wᵀ per image cost about as
    // much as its product
    let wt = &PackedA::new(MatRef::rows(w, g.c_out, k).t());
    let kernel = plan.kernel;
    let flat = match plan.unfolding {
        Unfolding::Flat if !g.is_pointwise() => Flat::forward(g),
        _ => None,
    };
    let each_image = |buffers: &mut Option<FlatInputGradient>,
                      (dxn, dyn_): (&mut [MaybeUninit<f32>], &[f32])| {
        let dym = MatRef::rows(dyn_, g.c_out, p);
        if g.is_pointwise() {
            gemm_with_epilogue(kernel, wt, dym, dxn, p, Epilogue::default());
        } else if let Some(buffers) = buffers {
            buffers.image(wt, dyn_, dxn);
        } else {
            with_col(g, |col| {
                gemm(kernel, wt, dym, col, p, false);
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
                .for_each_init(
                    || flat.map(|f| FlatInputGradient::new(f, g, kernel)),
                    each_image,
                )
        })
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
/// the way the plan's `weight_gradient` says (`Flat` needs strides the same both ways, `Dots` a
/// pointwise layer).
pub fn backward_weight(plan: &Plan, x: &[f32], dy: &[f32], g: &Conv2dGeom) -> (Vec<f32>, Vec<f32>) {
    let method = plan.weight_gradient;
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
    if method == WeightGradient::Winograd {
        let sums: Vec<f32> = dy
            .par_chunks(dy_img)
            .flat_map_iter(|d| plane_sums(d, p))
            .collect();
        return (
            winograd_weight_gradient(plan.kernel, x, dy, g),
            bias_gradient(&sums, g),
        );
    }
    // with each partial, its images' Σ dy of each channel, while their dy is in cache
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..g.n.div_ceil(IMAGES_PER_PARTIAL))
        .into_par_iter()
        .map(|chunk| {
            let mut dw = vec![0f32; g.c_out * k];
            let images = chunk * IMAGES_PER_PARTIAL..g.n.min((chunk + 1) * IMAGES_PER_PARTIAL);
            let (xs, dys) = (
                &x[images.start * x_img..images.end * x_img],
                &dy[images.start * dy_img..images.end * dy_img],
            );
            let mut sums = Vec::with_capacity(images.len() * g.c_out);
            if let Some(mut grid) = flat.map(|f| FlatGrid::new(f, plan.kernel)) {
                for (xn, dyn_) in xs.chunks_exact(x_img).zip(dys.chunks_exact(dy_img)) {
                    grid.lay_out(xn, dyn_);
                    sums.extend(plane_sums(dyn_, p));
                    grid.add_weight_gradient(&mut dw);
                }
                return (dw, sums);
            }
            if method == WeightGradient::Dots {
                add_pointwise_weight_gradients(plan.kernel, xs, dys, g, &mut dw);
            } else if p < ONE_PRODUCT_MAX_PIXELS
                && !g.is_pointwise()
                && plan.unfolding != Unfolding::Copy
            {
                add_weight_gradient_together(plan.kernel, xs, dys, g, &mut dw);
            } else {
                for (xn, dyn_) in xs.chunks_exact(x_img).zip(dys.chunks_exact(dy_img)) {
                    add_weight_gradient(plan, xn, dyn_, g, &mut dw);
                    sums.extend(plane_sums(dyn_, p));
                }
                return (dw, sums);
            }
            // small planes: the chunk's dy is still in cache
            sums.extend(dys.chunks_exact(dy_img).flat_map(|d| plane_sums(d, p)));
            (dw, sums)
        })
        .collect();
    let (partials, sums): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    let sums: Vec<f32> = sums.concat();
    (
        sum_partials(&partials, g.c_out * k),
        bias_gradient(&sums, g),
    )
}

/// The sum of `partials` (each `len` floats), in their order: the same bits for any thread count.
/// Runs of the sum in parallel (a 128-channel Winograd layer's four partials are 1 M floats).
fn sum_partials(partials: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut total = vec![0f32; len];
    total
        .par_chunks_mut(super::TASK_VALUES)
        .enumerate()
        .for_each(|(i, run)| {
            for part in partials {
                let part = &part[i * super::TASK_VALUES..][..run.len()];
                run.iter_mut().zip(part).for_each(|(d, s)| *d += s);
            }
        });
    total
}

/// Σ over each channel's plane of one image's `dy[Co, Ho, Wo]` (`p` pixels a plane).
fn plane_sums(dy: &[f32], p: usize) -> impl Iterator<Item = f32> + '_ {
    dy.chunks_exact(p).map(sum)
}

/// `db[co]` = Σ over the batch and the plane of `dy[N,Co,Ho,Wo]`, from each image's plane sums
/// `sums[n·Co + co]` ([`plane_sums`]), added in the order of the images. The sums are taken
/// where the weight gradient has just read that image's dy (a pass of its own read all of dy
/// once more, from memory: resnet-192's stem alone has 19 MB of it).
fn bias_gradient(sums: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    assert_eq!(sums.len(), g.n * g.c_out, "one sum per image and channel");
    (0..g.c_out)
        .map(|co| (0..g.n).map(|n| sums[n * g.c_out + co]).sum())
        .collect()
}

/// [`WeightGradient::Winograd`]: `dU` summed over groups of `IMAGES_PER_PARTIAL` images, one
/// partial per group as for the other methods, then `dw` = Gᵀ dU G.
fn winograd_weight_gradient(kernel: Kernel, x: &[f32], dy: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let (x_img, dy_img) = (g.c_in * g.h * g.w, g.c_out * g.out_h * g.out_w);
    let len = winograd::XI * g.c_out * g.c_in;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(IMAGES_PER_PARTIAL * x_img)
        .zip(dy.par_chunks(IMAGES_PER_PARTIAL * dy_img))
        .map(|(xs, dys)| {
            let mut du = vec![0f32; len];
            winograd::add_transformed_weight_gradient(kernel, xs, dys, g, &mut du);
            du
        })
        .collect();
    winograd::weight_gradient(&sum_partials(&partials, len), g.c_out, g.c_in)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gemm::{PackB, NR};
    use crate::backend::Padding;
    use crate::tensor::Tensor;

    /// Each pass's ways: the chosen plan first, each way once, and the ways that apply to the
    /// shape: the three unfoldings and Winograd for a 3×3 stride-1 layer, no Winograd nor
    /// turning at a stride, the dot products for a pointwise layer of one channel out.
    #[test]
    fn every_way_of_each_pass_is_listed_once_the_chosen_first() {
        let geom = |c_in, c_out, hw, k, s| {
            Conv2dGeom::new(2, c_in, hw, hw, c_out, (k, k), (s, s), Padding::Same).unwrap()
        };
        let ways = |g: &Conv2dGeom, pass| {
            let chosen = Plan::choose(g, Kernel::Portable, None, None);
            let plans = Plan::variants(g, chosen, pass);
            assert_eq!(plans[0], chosen, "{g:?} {pass:?}: the chosen plan first");
            let mut names: Vec<String> = plans.iter().map(|p| p.describe(pass, g)).collect();
            let listed = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), listed, "{g:?} {pass:?}: a way twice");
            names
        };
        let stride_one = geom(16, 16, 12, 3, 1);
        assert_eq!(
            ways(&stride_one, Pass::Forward),
            ["gemm, copy", "gemm, flat", "gemm, implicit", "winograd"]
        );
        assert_eq!(
            ways(&stride_one, Pass::InputGradient),
            [
                "fold back",
                "fold back, flat",
                "turned gemm, copy",
                "turned gemm, flat",
                "turned gemm, implicit",
                "turned winograd"
            ]
        );
        assert_eq!(
            ways(&stride_one, Pass::WeightGradient),
            ["flat", "gemm", "gemm, copy", "winograd"]
        );
        let strided = geom(3, 16, 12, 7, 2);
        assert_eq!(
            ways(&strided, Pass::InputGradient),
            ["fold back", "fold back, flat"]
        );
        assert_eq!(
            ways(&strided, Pass::WeightGradient),
            ["flat", "gemm", "gemm, copy"]
        );
        let map = geom(32, 1, 24, 1, 1);
        assert_eq!(ways(&map, Pass::Forward), ["gemm"]);
        assert_eq!(ways(&map, Pass::WeightGradient), ["dots", "gemm"]);
        let chosen = Plan::choose(&map, Kernel::Portable, None, None);
        assert_eq!(
            chosen.weight_gradient,
            WeightGradient::Dots,
            "one channel out"
        );
    }

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

    /// A pointwise weight gradient as dot products against the GEMM's, on every kernel this
    /// processor runs: channels off `dot_rows`' 8- and
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

    /// `g`'s plan on `kernel` with the weight gradient and unfolding given.
    fn plan(g: &Conv2dGeom, kernel: Kernel, method: WeightGradient, unfolding: Unfolding) -> Plan {
        Plan {
            weight_gradient: method,
            unfolding,
            ..Plan::choose(g, kernel, None, None)
        }
    }

    /// `method`'s weight gradient of random x and dy at `g` (drawn from `seed`) against the
    /// GEMM's, on each kernel this processor runs: db equal, dw within 1e-5 of its largest value.
    fn assert_weight_gradient_is_the_gemms(method: WeightGradient, g: &Conv2dGeom, seed: u64) {
        let x = Tensor::rand_uniform([g.n, g.c_in, g.h, g.w], -1.0, 1.0, seed).data;
        let dy = Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, 50 + seed).data;
        for kernel in Kernel::available() {
            let by = |m| backward_weight(&plan(g, kernel, m, Unfolding::Implicit), &x, &dy, g);
            let ((dw, db), (dw_gemm, db_gemm)) = (by(method), by(WeightGradient::Gemm));
            assert_eq!(db, db_gemm, "{method:?}, case {seed}");
            let largest = dw_gemm.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, (d, m)) in dw.iter().zip(&dw_gemm).enumerate() {
                assert!(
                    (d - m).abs() <= 1e-5 * largest,
                    "{method:?} on {kernel:?}, case {seed}, dw[{j}]: {d} against the GEMM's {m}"
                );
            }
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
                    let filters = Filters::Gemm(wm, unfolding, Kernel::fastest());
                    forward_with(&filters, &x, &b, &g, relu, pool)
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
            let by = |unfolding| {
                let plan = plan(&g, Kernel::fastest(), WeightGradient::Gemm, unfolding);
                backward_input_by(&plan, &dy, &wt, &g)
            };
            let (copy, flat) = (by(Unfolding::Copy), by(Unfolding::Flat));
            assert_same(&flat, &copy, &format!("case {i}"));
            // on one thread, one task's buffers serve every image: nothing of one may stay
            let one_thread = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let flat = one_thread.install(|| by(Unfolding::Flat));
            assert_same(&flat, &copy, &format!("case {i}, one thread"));
        }
    }
    /// The input gradient as the turned convolution's forward pass, by the GEMM with each
    /// unfolding and by Winograd, against the GEMM's folded back, on each kernel: stride-1
    /// layers 3×3 same (Winograd's 16 channels, a plane that is not whole tiles), 5×3 valid (the
    /// turned one padded by 4 and 2), 2×4 same (padded more below and on the right than above and
    /// on the left: turned, the other way round), 1×1. Within 1e-5 of dx's largest value.
    #[test]
    fn the_turned_input_gradient_is_the_folded_back_one() {
        let cases = [
            (2, 16, 9, 7, 17, (3, 3), Padding::Same),
            (3, 4, 9, 8, 5, (5, 3), Padding::Valid),
            (2, 3, 7, 10, 6, (2, 4), Padding::Same),
            (2, 6, 5, 4, 3, (1, 1), Padding::Valid),
        ];
        for (i, &(n, c_in, h, w, c_out, kernel, padding)) in cases.iter().enumerate() {
            let g = Conv2dGeom::new(n, c_in, h, w, c_out, kernel, (1, 1), padding).unwrap();
            let dy = Tensor::rand_uniform(g.output_shape(), -1.0, 1.0, i as u64).data;
            let wt = Tensor::rand_uniform([c_out, g.patch_len()], -1.0, 1.0, 20 + i as u64).data;
            for k in Kernel::available() {
                let folded_back = backward_input_by(&Plan::choose(&g, k, None, None), &dy, &wt, &g);
                let largest = folded_back.iter().fold(0f32, |m, v| m.max(v.abs()));
                let mut ways = vec![(Algorithm::Gemm, Unfolding::Copy)];
                ways.extend([Unfolding::Implicit, Unfolding::Flat].map(|u| (Algorithm::Gemm, u)));
                ways.extend(
                    winograd::applies(&g).then_some((Algorithm::Winograd, Unfolding::Flat)),
                );
                for (algorithm, unfolding) in ways {
                    let plan = Plan {
                        input_gradient: InputGradient::Turned(algorithm),
                        unfolding,
                        ..Plan::choose(&g, k, None, None)
                    };
                    let turned = backward_input(&plan, &dy, &wt, &g);
                    assert_eq!(turned.len(), folded_back.len());
                    for (j, (t, f)) in turned.iter().zip(&folded_back).enumerate() {
                        assert!(
                            (t - f).abs() <= 1e-5 * largest,
                            "case {i}, {algorithm:?} {unfolding:?} on {k:?}: dx[{j}] is {t} \
                             turned against {f} folded back"
                        );
                    }
                }
            }
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
            let kernel = Kernel::fastest();
            let plan = plan(&g, kernel, WeightGradient::Gemm, Unfolding::Implicit);
            for (xn, dyn_) in per_image {
                add_weight_gradient(&plan, xn, dyn_, &g, &mut each);
            }
            let mut together = vec![0f32; c_out * g.patch_len()];
            add_weight_gradient_together(kernel, &x, &dy, &g, &mut together);
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
