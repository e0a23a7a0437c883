//! Data augmentation on the fly: each training image is shown with a fresh random flip, rotation,
//! shear, zoom and shift (one affine map, sampled bilinearly, edges extended as in Keras'
//! `fill_mode="nearest"`) and a random brightness and contrast. Validation images are never
//! augmented.
//!
//! The randomness of image `i` at epoch `e` comes from a hash of (seed, e, i), not from a running
//! generator, so a resumed run sees exactly the images an uninterrupted one would.

use crate::backend::cpu::gemm::Kernel;
use crate::backend::hash;
use crate::tensor::Tensor;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How much each image may be changed; 0 (or `false`) turns a transform off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    pub hflip: bool,
    pub vflip: bool,
    /// Largest rotation, degrees either way.
    pub rotation: f32,
    /// Largest shear angle, degrees either way.
    pub shear: f32,
    /// Largest zoom in or out, as a fraction (0.1: 90 % to 110 %).
    pub zoom: f32,
    /// Largest shift along each axis, as a fraction of the side.
    pub shift: f32,
    /// Largest brightness change, added to pixels in [0, 1].
    pub brightness: f32,
    /// Largest contrast change about the image's mean, as a fraction.
    pub contrast: f32,
}

impl Augment {
    /// Nothing changed.
    pub const OFF: Augment = Augment {
        hflip: false,
        vflip: false,
        rotation: 0.0,
        shear: 0.0,
        zoom: 0.0,
        shift: 0.0,
        brightness: 0.0,
        contrast: 0.0,
    };

    /// Defaults for radiographs: left and right limbs mirror each other, so horizontal flips are
    /// real-looking; vertical flips are not (bones hang one way in a film), so off. Positioning
    /// varies by a few degrees and centimetres, and exposure by a little.
    pub const XRAY: Augment = Augment {
        hflip: true,
        vflip: false,
        rotation: 10.0,
        shear: 5.0,
        zoom: 0.1,
        shift: 0.1,
        brightness: 0.1,
        contrast: 0.1,
    };

    pub fn is_off(&self) -> bool {
        *self == Augment::OFF
    }

    /// Transforms one `size × size` image (row-major, values in [0, 1]) in place; `key` picks the
    /// random draws (see the module comment).
    pub fn apply(&self, img: &mut [f32], size: usize, key: u32) {
        if self.is_off() {
            return;
        }
        self.warp(img, size, key);
        let draw = |k: u32| 2.0 * hash::uniform(key, k) - 1.0;
        let brightness = self.brightness * draw(7);
        let contrast = 1.0 + self.contrast * draw(8);
        let mean = img.iter().sum::<f32>() / img.len().max(1) as f32;
        for v in img.iter_mut() {
            *v = ((*v - mean) * contrast + mean + brightness).clamp(0.0, 1.0);
        }
    }

    /// The geometric part of [`Augment::apply`] alone, with the same draws: what a fracture's
    /// mask goes through, so that it stays on the fracture its image shows.
    pub fn apply_geometry(&self, mask: &mut [f32], size: usize, key: u32) {
        if !self.is_off() {
            self.warp(mask, size, key);
        }
    }

    /// The flip, rotation, shear, zoom and shift of the draws of `key`, in place.
    fn warp(&self, img: &mut [f32], size: usize, key: u32) {
        let src = img.to_vec();
        self.affine(key).sample(Kernel::fastest(), &src, size, img);
    }

    /// The affine map of the draws of `key`.
    fn affine(&self, key: u32) -> Affine {
        // draw k: a uniform value in [-1, 1)
        let draw = |k: u32| 2.0 * hash::uniform(key, k) - 1.0;
        let flip_x = self.hflip && draw(0) < 0.0;
        let flip_y = self.vflip && draw(1) < 0.0;
        let angle = (self.rotation * draw(2)).to_radians();
        let shear = (self.shear * draw(3)).to_radians();
        let zoom = 1.0 + self.zoom * draw(4);
        let (c, s) = (angle.cos(), angle.sin());
        let fx = if flip_x { -1.0 } else { 1.0 };
        let fy = if flip_y { -1.0 } else { 1.0 };
        Affine {
            a: [
                [fx * c / zoom, fx * (c * shear.tan() - s) / zoom],
                [fy * s / zoom, fy * (s * shear.tan() + c) / zoom],
            ],
            shift: [self.shift * draw(5), self.shift * draw(6)],
        }
    }
}

/// Output pixel p (centred, in units of the side) reads input pixel A·p + t, where
/// A = flip · rotation · shear / zoom maps the output back to where it came from.
struct Affine {
    a: [[f32; 2]; 2],
    /// t, in units of the side.
    shift: [f32; 2],
}

impl Affine {
    /// `out[size, size]` = `src` sampled bilinearly where the map sends each pixel, edges
    /// extended (`simd`: on AVX2 eight pixels at a time, the same image bit for bit).
    fn sample(&self, simd: Kernel, src: &[f32], size: usize, out: &mut [f32]) {
        assert!(src.len() == size * size && out.len() == src.len());
        let half = (size as f32 - 1.0) / 2.0;
        let n = size as f32;
        // centred coordinates, the same for rows and columns
        let centred: Vec<f32> = (0..size).map(|i| (i as f32 - half) / n).collect();
        let a = &self.a;
        for (row, &py) in out.chunks_exact_mut(size).zip(&centred) {
            let map = RowMap {
                slope: [a[0][0], a[1][0]],
                offset: [a[0][1] * py, a[1][1] * py],
                shift: self.shift,
                n,
                half,
            };
            let done = sample_row_simd(simd, src, size, &centred, map, row);
            for (o, &px) in row[done..].iter_mut().zip(&centred[done..]) {
                let [sx, sy] = map.source(px);
                *o = bilinear(src, size, sx, sy);
            }
        }
    }
}

/// Where the pixels of one output row read: input coordinate d (column, row) of the pixel at
/// centred column px is `((slope[d]·px + offset[d]) + shift[d])·n + half`.
#[derive(Clone, Copy)]
struct RowMap {
    slope: [f32; 2],
    offset: [f32; 2],
    shift: [f32; 2],
    n: f32,
    half: f32,
}

impl RowMap {
    #[inline(always)]
    fn source(&self, px: f32) -> [f32; 2] {
        let at = |d: usize| ((self.slope[d] * px + self.offset[d]) + self.shift[d]) * self.n;
        [at(0) + self.half, at(1) + self.half]
    }
}

/// The row's pixels in whole eights by AVX2 (with `simd` at least [`Kernel::Avx2Fma`]); returns
/// how many it wrote (0 on other processors), the rest left to the scalar loop. Warping took
/// ~4 % of the processor time of a resnet-loc epoch at 192 pixels, ~19 ns a pixel on Zen 3;
/// gathered, 1.8–2× less (32 images of 192² on one thread, in one process, best of 30: 21.9
/// ms scalar, 12.1 by AVX2).
fn sample_row_simd(
    simd: Kernel,
    src: &[f32],
    size: usize,
    centred: &[f32],
    map: RowMap,
    row: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd != Kernel::Portable && i32::try_from(src.len()).is_ok() {
        let eights = size / 8 * 8;
        simd.checked(); // every processor with AVX-512 or AVX2 + FMA has AVX2
                        // SAFETY: AVX2 is here (checked); the image's indices fit an i32.
        unsafe { avx2::sample_row(src, size, &centred[..eights], map, &mut row[..eights]) };
        return eights;
    }
    let _ = (simd, src, size, centred, map, row);
    0
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::RowMap;
    use std::arch::x86_64::*;

    /// [`super::bilinear`] of [`RowMap::source`] for each of `centred`'s columns, eight at a
    /// time: the same multiplies and adds in the same order (no fused multiply-add), the clamp
    /// as max then min, truncation as the floor, and the four neighbours gathered. (A NaN
    /// coordinate, where the scalar code writes NaN, reads pixel 0 here: never out of bounds.)
    ///
    /// # Safety
    /// The processor must have AVX2; `src` is `size × size` with every index an i32, and
    /// `centred` and `row` hold whole eights of the same length.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sample_row(
        src: &[f32],
        size: usize,
        centred: &[f32],
        map: RowMap,
        row: &mut [f32],
    ) {
        debug_assert!(src.len() == size * size && centred.len() == row.len());
        let splat = _mm256_set1_ps;
        let (last, one) = (splat((size - 1) as f32), splat(1.0));
        let (side, last_index) = (
            _mm256_set1_epi32(size as i32),
            _mm256_set1_epi32(size as i32 - 1),
        );
        let coordinate = |px: __m256, d: usize| {
            let moved = _mm256_add_ps(_mm256_mul_ps(splat(map.slope[d]), px), splat(map.offset[d]));
            let scaled = _mm256_mul_ps(_mm256_add_ps(moved, splat(map.shift[d])), splat(map.n));
            let at = _mm256_add_ps(scaled, splat(map.half));
            _mm256_min_ps(_mm256_max_ps(at, _mm256_setzero_ps()), last)
        };
        for (out, px) in row.chunks_exact_mut(8).zip(centred.chunks_exact(8)) {
            let px = _mm256_loadu_ps(px.as_ptr());
            let (x, y) = (coordinate(px, 0), coordinate(px, 1));
            let (x0, y0) = (_mm256_cvttps_epi32(x), _mm256_cvttps_epi32(y));
            let next = |i| _mm256_min_epi32(_mm256_add_epi32(i, _mm256_set1_epi32(1)), last_index);
            let (x1, y1) = (next(x0), next(y0));
            let (wx, wy) = (
                _mm256_sub_ps(x, _mm256_cvtepi32_ps(x0)),
                _mm256_sub_ps(y, _mm256_cvtepi32_ps(y0)),
            );
            let (top, bottom) = (_mm256_mullo_epi32(y0, side), _mm256_mullo_epi32(y1, side));
            // SAFETY: every index is a row in [0, size) times size plus a column in [0, size).
            let read = |r, c| _mm256_i32gather_ps::<4>(src.as_ptr(), _mm256_add_epi32(r, c));
            let lerp = |a, b, w| {
                _mm256_add_ps(_mm256_mul_ps(a, _mm256_sub_ps(one, w)), _mm256_mul_ps(b, w))
            };
            let upper = lerp(read(top, x0), read(top, x1), wx);
            let lower = lerp(read(bottom, x0), read(bottom, x1), wx);
            _mm256_storeu_ps(out.as_mut_ptr(), lerp(upper, lower, wy));
        }
    }
}

/// The top-left corner of the random `size × size` window of a `framed × framed` image that the
/// draws of `key` pick (each corner equally likely; the whole image when the sides agree).
pub fn window_corner(framed: usize, size: usize, key: u32) -> (usize, usize) {
    let spare = framed - size;
    let at = |k: u32| ((hash::uniform(key, k) * (spare + 1) as f32) as usize).min(spare);
    (at(9), at(10))
}

/// The image at the real position (x, y), bilinear, positions outside clamped to the edge.
fn bilinear(img: &[f32], size: usize, x: f32, y: f32) -> f32 {
    let last = (size - 1) as f32;
    let (x, y) = (x.clamp(0.0, last), y.clamp(0.0, last));
    // x, y ≥ 0 (or NaN, which both make 0): truncation is the floor, without a call to floorf
    let (x0, y0) = (x as usize, y as usize);
    let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
    let (wx, wy) = (x - x0 as f32, y - y0 as f32);
    let (top, bottom) = (&img[y0 * size..][..size], &img[y1 * size..][..size]);
    let upper = top[x0] * (1.0 - wx) + top[x1] * wx;
    let lower = bottom[x0] * (1.0 - wx) + bottom[x1] * wx;
    upper * (1.0 - wy) + lower * wy
}

/// The key of image `index`'s draws at `epoch` of a run seeded with `seed`.
pub fn key(seed: u64, epoch: usize, index: usize) -> u32 {
    hash::key(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64) << 40)
}

/// A draw from Beta(α, α) by Jöhnk's method: with U, V uniform, X = U^(1/α), Y = V^(1/α), the
/// first pair with X + Y ≤ 1 gives X / (X + Y).
fn beta(alpha: f32, rng: &mut impl Rng) -> f32 {
    loop {
        let x = rng.gen::<f32>().powf(1.0 / alpha);
        let y = rng.gen::<f32>().powf(1.0 / alpha);
        if x + y <= 1.0 && x + y > 0.0 {
            return x / (x + y);
        }
    }
}

/// Mixup (Zhang et al., 2018): one λ ~ Beta(α, α) per batch, and every image of `x[N,…]` blended
/// with another of the batch (a seeded shuffle): x' = λ x + (1 − λ) x_other, and so its label
/// in `y[N]`. The model learns to answer in proportion between two X-rays.
pub fn mixup(x: &Tensor, y: &Tensor, alpha: f32, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let lambda = beta(alpha, &mut rng);
    let n = y.data.len();
    let mut other: Vec<usize> = (0..n).collect();
    other.shuffle(&mut rng);
    let per = x.data.len() / n.max(1);
    let mut xm = Vec::with_capacity(x.data.len());
    for (i, &j) in other.iter().enumerate() {
        let (a, b) = (
            &x.data[i * per..(i + 1) * per],
            &x.data[j * per..(j + 1) * per],
        );
        xm.extend(
            a.iter()
                .zip(b)
                .map(|(a, b)| lambda * a + (1.0 - lambda) * b),
        );
    }
    let ym = (0..n)
        .map(|i| lambda * y.data[i] + (1.0 - lambda) * y.data[other[i]])
        .collect();
    (
        Tensor::new(x.shape.clone(), xm),
        Tensor::new(y.shape.clone(), ym),
    )
}

/// Label smoothing: targets y(1 − ε) + ε/2, so 0 → ε/2 and 1 → 1 − ε/2.
pub fn smooth_labels(y: &Tensor, eps: f32) -> Tensor {
    let data = y.data.iter().map(|v| v * (1.0 - eps) + eps / 2.0).collect();
    Tensor::new(y.shape.clone(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixup_blends_images_and_labels_alike_and_beta_has_its_mean() {
        let x = Tensor::new([3, 1, 1, 2], vec![0.0, 0.0, 1.0, 1.0, 0.5, 0.5]);
        let y = Tensor::new([3], vec![0.0, 1.0, 0.5]);
        let (xm, ym) = mixup(&x, &y, 0.4, 7);
        // each blended image is λ·own + (1-λ)·other; its pixels equal its label here
        for i in 0..3 {
            assert!((xm.data[2 * i] - ym.data[i]).abs() < 1e-6, "{xm:?} {ym:?}");
        }
        assert_eq!(mixup(&x, &y, 0.4, 7), (xm, ym), "seeded");
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<f32> = (0..20000).map(|_| beta(0.4, &mut rng)).collect();
        let mean = draws.iter().sum::<f32>() / draws.len() as f32;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f32>() / draws.len() as f32;
        // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.1389 at a = 0.4
        assert!(
            (mean - 0.5).abs() < 0.01 && (var - 0.1389).abs() < 0.005,
            "{mean} {var}"
        );
        let s = smooth_labels(&Tensor::new([2], vec![0.0, 1.0]), 0.1);
        assert_eq!(s.data, vec![0.05, 0.95]);
    }

    fn gradient(size: usize) -> Vec<f32> {
        (0..size * size)
            .map(|i| (i % size) as f32 / (size - 1) as f32)
            .collect()
    }

    #[test]
    fn off_changes_nothing_and_the_same_key_repeats() {
        let img = gradient(9);
        let mut same = img.clone();
        Augment::OFF.apply(&mut same, 9, 5);
        assert_eq!(same, img);
        let (mut a, mut b) = (img.clone(), img.clone());
        Augment::XRAY.apply(&mut a, 9, 7);
        Augment::XRAY.apply(&mut b, 9, 7);
        assert_eq!(a, b);
        assert_ne!(a, img);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    /// The SIMD path warps to the image the scalar one does, bit for bit: on sides with and
    /// without pixels past whole eights, under maps that reach past every edge.
    #[test]
    fn every_simd_level_warps_to_the_same_image_bit_for_bit() {
        let wide = Augment {
            rotation: 30.0,
            zoom: 0.3,
            shift: 0.3,
            ..Augment::XRAY
        };
        for size in [7, 16, 37, 64] {
            let img: Vec<f32> = (0..size * size)
                .map(|i| ((i * 7919) % 251) as f32 / 250.0)
                .collect();
            for key in 0..20 {
                let map = wide.affine(key);
                let mut want = vec![0.0; size * size];
                map.sample(Kernel::Portable, &img, size, &mut want);
                for simd in Kernel::available() {
                    let mut got = vec![f32::NAN; size * size];
                    map.sample(simd, &img, size, &mut got);
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{} at side {size}, key {key}", simd.name());
                }
            }
        }
    }

    #[test]
    fn a_horizontal_flip_mirrors_the_image() {
        let img = gradient(8);
        let flip = Augment {
            hflip: true,
            ..Augment::OFF
        };
        // find a key whose draw flips, then check the mirror image
        let key = (0..100)
            .find(|&k| 2.0 * hash::uniform(k, 0) - 1.0 < 0.0)
            .unwrap();
        let mut out = img.clone();
        flip.apply(&mut out, 8, key);
        for y in 0..8 {
            for x in 0..8 {
                assert!((out[y * 8 + x] - img[y * 8 + 7 - x]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn a_shift_moves_content_by_that_fraction() {
        let size = 20;
        let img = gradient(size);
        let shift = Augment {
            shift: 0.1,
            ..Augment::OFF
        };
        let key = 3;
        let dx = 0.1 * (2.0 * hash::uniform(key, 5) - 1.0);
        let mut out = img.clone();
        shift.apply(&mut out, size, key);
        // away from the clamped edges, out(x) = in(x + dx·size)
        let x = 10;
        let want = (x as f32 + dx * size as f32) / (size - 1) as f32;
        assert!(
            (out[5 * size + x] - want).abs() < 1e-4,
            "{} vs {want}",
            out[5 * size + x]
        );
    }
}
