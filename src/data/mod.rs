//! Data: finding labelled X-rays on disk, decoding them once into memory, and cutting them into
//! shuffled mini-batches.

pub mod augment;
pub mod check;
pub mod folder;
pub mod image;

pub use augment::Augment;
pub use folder::{DataDir, Sample, Split, CLASS_NAMES};

use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;
use std::path::PathBuf;

/// Decoded images of one split, all `size × size` gray, in memory.
pub struct Dataset {
    pub size: usize,
    /// `len × size × size` pixels in [0, 1].
    pub pixels: Vec<f32>,
    pub labels: Vec<f32>,
    pub paths: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

impl Dataset {
    /// Decodes `samples` in parallel (with a progress bar titled `what`), skipping unreadable
    /// files: they are listed in `failed` for the caller to report.
    pub fn decode(samples: &[Sample], size: usize, what: &str, quiet: bool) -> Dataset {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(samples.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("decoding {what}"));
        let decoded: Vec<_> = samples
            .par_iter()
            .map(|s| {
                let r = image::load_gray(&s.path, size);
                bar.inc(1);
                r
            })
            .collect();
        bar.finish_and_clear();
        let mut ds = Dataset {
            size,
            pixels: Vec::with_capacity(samples.len() * size * size),
            labels: Vec::new(),
            paths: Vec::new(),
            failed: Vec::new(),
        };
        for (s, r) in samples.iter().zip(decoded) {
            match r {
                Ok(px) => {
                    ds.pixels.extend_from_slice(&px);
                    ds.labels.push(s.label);
                    ds.paths.push(s.path.clone());
                }
                Err(e) => ds.failed.push((s.path.clone(), format!("{e:#}"))),
            }
        }
        ds
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|&&l| l == 1.0).count()
    }

    /// The images at `indices` as an `[n, 1, size, size]` tensor, with their labels `[n]`.
    pub fn batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        self.augmented_batch(indices, &Augment::OFF, |_| 0)
    }

    /// Like [`Dataset::batch`], each image transformed by `augment` with the draws of
    /// `key(index)` (see [`augment::key`]).
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        augment: &Augment,
        key: impl Fn(usize) -> u32 + Sync,
    ) -> (Tensor, Tensor) {
        let plane = self.size * self.size;
        let mut x = vec![0.0; indices.len() * plane];
        x.par_chunks_mut(plane.max(1))
            .zip(indices)
            .for_each(|(img, &i)| {
                img.copy_from_slice(&self.pixels[i * plane..(i + 1) * plane]);
                augment.apply(img, self.size, key(i));
            });
        let y = indices.iter().map(|&i| self.labels[i]).collect();
        (
            Tensor::new([indices.len(), 1, self.size, self.size], x),
            Tensor::new([indices.len()], y),
        )
    }

    /// Mini-batches of indices: all samples in an order shuffled by `seed` (or in file order
    /// when `seed` is `None`), cut into batches of `batch_size` (the last one may be smaller).
    pub fn batches(&self, batch_size: usize, seed: Option<u64>) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = seed {
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        order
            .chunks(batch_size.max(1))
            .map(|c| c.to_vec())
            .collect()
    }
}
