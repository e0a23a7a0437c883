//! A counter-based random generator: the random number for element `i` is a hash of
//! `(seed, i)`, so a dropout mask can be recomputed in the backward pass (nothing is stored) and
//! every backend, CPU or GPU shader, draws exactly the same mask from the same seed.
//!
//! The mixer is Chris Wellons' `lowbias32` (two xor-shift-multiply rounds), chosen because it
//! uses only 32-bit integer operations, which WGSL has (`shaders/elementwise.wgsl` has its twin).

/// One round of mixing a 32-bit value.
#[inline]
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The per-call key derived from a 64-bit seed.
#[inline]
pub fn key(seed: u64) -> u32 {
    lowbias32(lowbias32(seed as u32) ^ (seed >> 32) as u32)
}

/// A uniform number in `[0, 1)` for element `index` under `key`, with 24 bits of resolution.
#[inline]
pub fn uniform(key: u32, index: u32) -> f32 {
    (lowbias32(index ^ key) >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_roughly_uniform_and_depends_on_seed() {
        let k = key(42);
        let n = 100_000u32;
        let mean: f64 = (0..n).map(|i| uniform(k, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let below: usize = (0..n).filter(|&i| uniform(k, i) < 0.3).count();
        assert!((below as f64 / n as f64 - 0.3).abs() < 0.01);
        let other = key(43);
        let same = (0..1000)
            .filter(|&i| uniform(k, i) == uniform(other, i))
            .count();
        assert!(same < 5);
    }
}
