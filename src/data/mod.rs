//! Data: finding labelled X-rays on disk, decoding them once into memory, and cutting them into
//! shuffled mini-batches.

pub mod annotations;
pub mod augment;
pub mod cache;
pub mod check;
pub mod dicom;
pub mod folder;
pub mod folds;
pub mod image;

pub use augment::Augment;
pub use folder::{DataDir, Sample, Split, CLASS_NAMES};
pub use image::{Framing, Square};

use crate::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use rayon::prelude::*;
use std::path::PathBuf;

/// What a fracture map is trained toward on one image.
#[derive(Clone, Debug, PartialEq)]
pub enum MapTarget {
    /// Not fractured: no fracture anywhere.
    Healthy,
    /// Fractured and outlined: the outlines rasterised in the framed square, as its pixels are.
    Outlined(Vec<f32>),
    /// Fractured without an outline: the map is not trained on it.
    Unknown,
}

/// Decoded images of one split, all framed in `framed × framed` gray squares, in memory; a batch
/// holds `size × size` windows of them (the whole square without a crop).
pub struct Dataset {
    /// Side of the images a batch holds (the model's input).
    pub size: usize,
    /// Side of the stored framed squares (`size` / the crop).
    pub framed: usize,
    /// `len × framed × framed` pixels in [0, 1].
    pub pixels: Vec<f32>,
    pub labels: Vec<f32>,
    pub paths: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// What each image's fracture map is trained toward, once outlines are attached
    /// ([`Dataset::attach_outlines`]); empty before.
    pub targets: Vec<MapTarget>,
}

impl Dataset {
    /// Decodes `samples` in parallel (with a progress bar titled `what`), skipping unreadable
    /// files: they are listed in `failed` for the caller to report.
    pub fn decode(samples: &[Sample], square: Square, what: &str, quiet: bool) -> Dataset {
        Self::load(samples, square, what, quiet, None)
    }

    /// Like [`Dataset::decode`], taking the images already in the disk cache `cache_file` (see
    /// [`cache`]) from there, and writing the cache anew when any had to be decoded.
    pub fn load(
        samples: &[Sample],
        square: Square,
        what: &str,
        quiet: bool,
        cache_file: Option<&std::path::Path>,
    ) -> Dataset {
        let (framed, framing) = (square.framed_side(), square.framing);
        let mut cached = cache_file.map_or_else(Default::default, |f| cache::read(f, framed));
        let todo: Vec<&Sample> = samples
            .iter()
            .filter(|s| !cached.contains_key(&s.path))
            .collect();
        let bar = if quiet || todo.is_empty() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(todo.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("decoding {what}"));
        let decoded: Vec<_> = todo
            .par_iter()
            .map(|s| {
                let r = image::load_gray(&s.path, framed, framing);
                bar.inc(1);
                r
            })
            .collect();
        bar.finish_and_clear();
        let mut failed = Vec::new();
        for (s, r) in todo.iter().zip(decoded) {
            match r {
                Ok(px) => {
                    cached.insert(s.path.clone(), px);
                }
                Err(e) => failed.push((s.path.clone(), format!("{e:#}"))),
            }
        }
        let mut ds = Dataset {
            size: square.side,
            framed,
            pixels: Vec::with_capacity(samples.len() * framed * framed),
            labels: Vec::new(),
            paths: Vec::new(),
            failed,
            targets: Vec::new(),
        };
        let mut entries = Vec::new();
        for s in samples {
            if let Some(px) = cached.get(&s.path) {
                ds.pixels.extend_from_slice(px);
                ds.labels.push(s.label);
                ds.paths.push(s.path.clone());
                entries.push((s, px.as_slice()));
            }
        }
        if let Some(file) = cache_file.filter(|_| !todo.is_empty()) {
            if let Err(e) = cache::write(file, framed, &entries) {
                eprintln!("warning: the image cache was not saved: {e:#}");
            }
        }
        ds
    }

    /// The images at `indices`, in that order (`failed` is left empty: the caller has already
    /// reported the files that could not be read).
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let plane = self.framed * self.framed;
        let mut pixels = Vec::with_capacity(indices.len() * plane);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * plane..(i + 1) * plane]);
        }
        Dataset {
            size: self.size,
            framed: self.framed,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            paths: indices.iter().map(|&i| self.paths[i].clone()).collect(),
            failed: Vec::new(),
            targets: match self.targets.is_empty() {
                true => Vec::new(),
                false => indices.iter().map(|&i| self.targets[i].clone()).collect(),
            },
        }
    }

    /// The images of `self` followed by those of `other` (of the same size).
    pub fn concat(mut self, other: Dataset) -> Dataset {
        assert_eq!(
            (self.size, self.framed),
            (other.size, other.framed),
            "datasets of one image size"
        );
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
        self.paths.extend(other.paths);
        self.failed.extend(other.failed);
        assert_eq!(
            self.targets.is_empty(),
            other.targets.is_empty(),
            "outlines attached to both or neither"
        );
        self.targets.extend(other.targets);
        self
    }

    /// Attaches each image's fracture-map target from `annotations`, framed as the images are:
    /// the outlines of a fractured image, none on a healthy one. Returns the number of fractured
    /// images without an outline (their maps are not trained).
    pub fn attach_outlines(
        &mut self,
        annotations: &annotations::Annotations,
        framing: Framing,
    ) -> usize {
        self.targets = self
            .paths
            .iter()
            .zip(&self.labels)
            .map(|(path, &label)| {
                let outlines = annotations.get(path).filter(|o| !o.fractures.is_empty());
                match (label == 1.0, outlines) {
                    (false, _) => MapTarget::Healthy,
                    (true, Some(o)) => MapTarget::Outlined(o.framed_mask(self.framed, framing)),
                    (true, None) => MapTarget::Unknown,
                }
            })
            .collect();
        self.targets
            .iter()
            .filter(|t| **t == MapTarget::Unknown)
            .count()
    }

    /// The fracture-map targets of the images at `indices`, `[n, 1, side, side]` (each the share
    /// of its cell inside a fracture), windowed and transformed exactly as
    /// [`Dataset::augmented_batch`] does the images with the same `key`; and each image's weight
    /// in the map's loss (0 for an image without an outline).
    pub fn map_targets(
        &self,
        indices: &[usize],
        augment: &Augment,
        key: impl Fn(usize) -> Option<u32> + Sync,
        side: usize,
    ) -> (Tensor, Vec<f32>) {
        let (framed, size) = (self.framed, self.size);
        assert!(size % side == 0, "a map of {side} cells over {size} pixels");
        let cell = size / side;
        let mut t = vec![0.0; indices.len() * side * side];
        t.par_chunks_mut((side * side).max(1))
            .zip(indices)
            .for_each(|(out, &i)| {
                let MapTarget::Outlined(mask) = &self.targets[i] else {
                    return; // healthy: all zero; unknown: weighed 0
                };
                let key = key(i);
                let corner = match key {
                    Some(key) => augment::window_corner(framed, size, key),
                    None => ((framed - size) / 2, (framed - size) / 2),
                };
                let mut window = vec![0.0; size * size];
                image::copy_window(mask, (framed, size), corner, &mut window);
                if let Some(key) = key {
                    augment.apply_geometry(&mut window, size, key);
                }
                for (k, v) in out.iter_mut().enumerate() {
                    let (r, c) = (k / side * cell, k % side * cell);
                    let sum: f32 = (r..r + cell)
                        .map(|y| {
                            window[y * size + c..y * size + c + cell]
                                .iter()
                                .sum::<f32>()
                        })
                        .sum();
                    *v = sum / (cell * cell) as f32;
                }
            });
        let weights = indices
            .iter()
            .map(|&i| f32::from(u8::from(self.targets[i] != MapTarget::Unknown)))
            .collect();
        (Tensor::new([indices.len(), 1, side, side], t), weights)
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

    /// The images at `indices` (their centre windows) as an `[n, 1, size, size]` tensor, with
    /// their labels `[n]`.
    pub fn batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        self.augmented_batch(indices, &Augment::OFF, |_| None)
    }

    /// Like [`Dataset::batch`], each image transformed by `augment` with the draws of
    /// `key(index)` (see [`augment::key`]), its window placed at random by the same draws; a
    /// `None` key takes the centre window, unchanged.
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        augment: &Augment,
        key: impl Fn(usize) -> Option<u32> + Sync,
    ) -> (Tensor, Tensor) {
        let (framed, size) = (self.framed, self.size);
        let plane = size * size;
        let mut x = vec![0.0; indices.len() * plane];
        x.par_chunks_mut(plane.max(1))
            .zip(indices)
            .for_each(|(img, &i)| {
                let source = &self.pixels[i * framed * framed..(i + 1) * framed * framed];
                let key = key(i);
                let corner = match key {
                    Some(key) => augment::window_corner(framed, size, key),
                    None => ((framed - size) / 2, (framed - size) / 2),
                };
                image::copy_window(source, (framed, size), corner, img);
                if let Some(key) = key {
                    augment.apply(img, size, key);
                }
            });
        let y = indices.iter().map(|&i| self.labels[i]).collect();
        (
            Tensor::new([indices.len(), 1, self.size, self.size], x),
            Tensor::new([indices.len()], y),
        )
    }

    /// Mini-batches for balanced sampling: as many draws as there are samples, each from either
    /// class with equal chance (with replacement within the class), so that the rarer class is
    /// seen as often as the other. Seeded.
    pub fn balanced_batches(&self, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
        let class =
            |c: f32| -> Vec<usize> { (0..self.len()).filter(|&i| self.labels[i] == c).collect() };
        let (pos, neg) = (class(1.0), class(0.0));
        let mut rng = StdRng::seed_from_u64(seed);
        let draws: Vec<usize> = (0..self.len())
            .map(|_| {
                let from = if pos.is_empty() || (!neg.is_empty() && rng.gen_bool(0.5)) {
                    &neg
                } else {
                    &pos
                };
                from[rng.gen_range(0..from.len())]
            })
            .collect();
        draws
            .chunks(batch_size.max(1))
            .map(|c| c.to_vec())
            .collect()
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
