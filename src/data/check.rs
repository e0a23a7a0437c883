//! `fracture-cnn data check DIR`: what is in a data folder before training on it. Counts per split
//! and class, files that cannot be used, the format of the images per class (differences between
//! the classes are shortcuts a model can learn instead of fractures), and near-duplicate images
//! shared between splits (which inflate validation figures).

use super::annotations::Annotations;
use super::folder::{find_split, read_split, Sample};
use anyhow::Result;
use image::DynamicImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A perceptual hash: the signs of horizontal brightness steps of the image shrunk to 17 × 16
/// gray (a "difference hash"), 256 bits. Re-encoding, resizing and small edits change few bits.
pub type DHash = [u64; 4];

/// What one image file is.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub split: String,
    pub path: PathBuf,
    pub fractured: bool,
    pub width: u32,
    pub height: u32,
    /// Pixel layout as stored, e.g. "L8", "Rgb8", "L16".
    pub color: String,
    pub format: String,
    /// A DICOM file's photometric interpretation and bits stored ("MONOCHROME1 12-bit").
    pub dicom: Option<String>,
    pub hash: DHash,
}

/// The whole report.
#[derive(Debug, Default)]
pub struct DataReport {
    pub images: Vec<ImageInfo>,
    /// Files that are not images, or that cannot be decoded, with the reason.
    pub unusable: Vec<(PathBuf, String)>,
    /// Near-duplicate pairs in different splits, with their Hamming distance.
    pub duplicates: Vec<(PathBuf, PathBuf, u32)>,
    /// How far the fracture outlines beside the data cover it, when there are any.
    pub coverage: Option<Coverage>,
}

/// How far a COCO file of fracture outlines covers a data folder's images.
#[derive(Debug, Default)]
pub struct Coverage {
    pub file: PathBuf,
    pub fractured: usize,
    /// Fractured images with no outline: left out of the pointing game and of training a map.
    pub without_outline: Vec<PathBuf>,
    /// Not fractured images that have outlines: a label or an annotation is wrong.
    pub outlined_but_not_fractured: Vec<PathBuf>,
    /// Images whose outlines were drawn on an image of another shape (turned, or cropped).
    pub other_shape: Vec<OtherShape>,
}

/// An image's path, the size its outlines were drawn at, and its size (upright).
pub type OtherShape = (PathBuf, (u32, u32), (u32, u32));

/// What the outlines in `annotations` cover of `images`.
pub fn coverage(annotations: &Annotations, images: &[ImageInfo]) -> Coverage {
    let mut c = Coverage {
        file: annotations.file.clone(),
        ..Coverage::default()
    };
    for i in images {
        let outlines = annotations.get(&i.path).filter(|o| !o.fractures.is_empty());
        c.fractured += usize::from(i.fractured);
        match (i.fractured, outlines) {
            (true, None) => c.without_outline.push(i.path.clone()),
            (false, Some(_)) => c.outlined_but_not_fractured.push(i.path.clone()),
            _ => {}
        }
        if let Some(o) = outlines {
            let aspect = |w: u32, h: u32| w as f64 / h as f64;
            if (aspect(o.width, o.height) / aspect(i.width, i.height) - 1.0).abs() > 0.02 {
                c.other_shape
                    .push((i.path.clone(), (o.width, o.height), (i.width, i.height)));
            }
        }
    }
    c
}

impl Coverage {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "
fracture outlines ({}): {} of {} fractured images outlined",
            self.file.display(),
            self.fractured - self.without_outline.len(),
            self.fractured
        );
        let lists: [(&str, Vec<String>); 3] = [
            (
                "fractured images without an outline (left out of the pointing game)",
                self.without_outline
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            ),
            (
                "not fractured images with outlines (a label or an outline is wrong)",
                self.outlined_but_not_fractured
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            ),
            (
                "images outlined at another shape (turned or cropped since)",
                self.other_shape
                    .iter()
                    .map(|(p, (aw, ah), (w, h))| {
                        format!("{}: outlined at {aw}x{ah}, is {w}x{h}", p.display())
                    })
                    .collect(),
            ),
        ];
        for (what, items) in lists.iter().filter(|(_, items)| !items.is_empty()) {
            let _ = writeln!(out, "  {what}: {}", items.len());
            for item in items.iter().take(10) {
                let _ = writeln!(out, "    {item}");
            }
            if items.len() > 10 {
                let _ = writeln!(out, "    ... and {} more", items.len() - 10);
            }
        }
    }
}

/// Bits that may differ between two images called near-duplicates (of 256).
pub const NEAR: u32 = 4;

/// The difference hash of a decoded image.
pub fn dhash(img: &DynamicImage) -> DHash {
    let gray = img.to_luma8();
    let small = image::imageops::resize(&gray, 17, 16, image::imageops::FilterType::Triangle);
    let mut h = [0u64; 4];
    for y in 0..16 {
        for x in 0..16 {
            let bit = y * 16 + x;
            if small.get_pixel(x + 1, y)[0] > small.get_pixel(x, y)[0] {
                h[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
    }
    h
}

/// Bits in which two hashes differ.
pub fn distance(a: &DHash, b: &DHash) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

fn inspect(split: &str, s: &Sample) -> Result<ImageInfo, String> {
    // upright, as the model sees it: width and height as a viewer shows them
    let decoded = super::image::open_file(&s.path).map_err(|e| format!("{e:#}"))?;
    let img = &decoded.image;
    Ok(ImageInfo {
        split: split.to_string(),
        path: s.path.clone(),
        fractured: s.label == 1.0,
        width: img.width(),
        height: img.height(),
        color: decoded.stored,
        format: decoded.format,
        dicom: decoded
            .dicom
            .map(|d| format!("{} {}-bit", d.photometric_interpretation, d.bits_stored)),
        hash: dhash(img),
    })
}

/// Reads every image of every split under `root` (train, val or valid, test; or `root` itself
/// when it holds class folders), and the fracture outlines in `annotations` (or else the COCO
/// file in `root/annotations/`, if any).
pub fn check(root: &Path, annotations: Option<&Path>, quiet: bool) -> Result<DataReport> {
    if !root.is_dir() {
        anyhow::bail!("data folder {} does not exist", root.display());
    }
    let mut splits = Vec::new();
    for (name, names) in [
        ("train", &["train", "training"][..]),
        ("val", &["val", "valid", "validation"][..]),
        ("test", &["test", "testing"][..]),
    ] {
        if let Some(dir) = find_split(root, names)? {
            splits.push((name, read_split(&dir)?));
        }
    }
    if splits.is_empty() {
        splits.push(("all", read_split(root)?));
    }
    let mut report = DataReport::default();
    let work: Vec<(&str, &Sample)> = splits
        .iter()
        .flat_map(|(name, s)| s.samples.iter().map(move |x| (*name, x)))
        .collect();
    for (_, split) in &splits {
        for p in &split.skipped {
            report
                .unusable
                .push((p.clone(), "not an image file".into()));
        }
    }
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(work.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images, eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message("reading");
    let infos: Vec<_> = work
        .par_iter()
        .map(|(split, s)| {
            let r = inspect(split, s);
            bar.inc(1);
            r.map_err(|e| (s.path.clone(), e))
        })
        .collect();
    bar.finish_and_clear();
    for r in infos {
        match r {
            Ok(info) => report.images.push(info),
            Err(e) => report.unusable.push(e),
        }
    }
    report.duplicates = cross_split_duplicates(&report.images);
    report.coverage = Annotations::find(root, annotations)?.map(|a| coverage(&a, &report.images));
    Ok(report)
}

/// Pairs of images in different splits whose hashes differ in at most [`NEAR`] bits.
fn cross_split_duplicates(images: &[ImageInfo]) -> Vec<(PathBuf, PathBuf, u32)> {
    let pairs: Vec<_> = (0..images.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            (i + 1..images.len()).filter_map(move |j| {
                let (a, b) = (&images[i], &images[j]);
                let d = distance(&a.hash, &b.hash);
                (a.split != b.split && d <= NEAR).then(|| (a.path.clone(), b.path.clone(), d))
            })
        })
        .collect();
    pairs
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

impl DataReport {
    /// The report as text, with a warning for each shortcut a model could learn.
    /// DICOM files per class by photometric interpretation and bits stored, if there are any:
    /// MONOCHROME1 in one class only, say, is a cue as telling as a file format.
    fn render_dicom(&self, out: &mut String) {
        let mut kinds: Vec<&str> = self
            .images
            .iter()
            .filter_map(|i| i.dicom.as_deref())
            .collect();
        if kinds.is_empty() {
            return;
        }
        kinds.sort();
        kinds.dedup();
        let _ = writeln!(
            out,
            "\nDICOM files per class, by photometric interpretation and bits stored (share of the \
             class's images):"
        );
        let _ = writeln!(
            out,
            "{:<24}{:>17}{:>17}",
            "kind", "fractured", "not_fractured"
        );
        for kind in kinds {
            let share = |f: bool| {
                let class = self.images.iter().filter(|i| i.fractured == f);
                let n = class.clone().count();
                let k = class.filter(|i| i.dicom.as_deref() == Some(kind)).count();
                (k, percent(k, n))
            };
            let ((kp, sp), (kn, sn)) = (share(true), share(false));
            let _ = writeln!(out, "{kind:<24}{kp:>8} ({sp:>5.1}%){kn:>8} ({sn:>5.1}%)");
            if (sp - sn).abs() >= 5.0 {
                let _ = writeln!(
                    out,
                    "warning: {kind} DICOM differs by {:.0} points between the classes: a model \
                     can learn how the files were made instead of fractures",
                    (sp - sn).abs()
                );
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8}{:>12}{:>16}{:>14}",
            "split", "fractured", "not_fractured", "% fractured"
        );
        let mut splits: Vec<&str> = self.images.iter().map(|i| i.split.as_str()).collect();
        splits.dedup();
        for split in &splits {
            let of = |f: bool| {
                self.images
                    .iter()
                    .filter(|i| i.split == *split && i.fractured == f)
                    .count()
            };
            let (pos, neg) = (of(true), of(false));
            let _ = writeln!(
                out,
                "{split:<8}{pos:>12}{neg:>16}{:>13.1}%",
                percent(pos, pos + neg)
            );
        }
        let _ = writeln!(
            out,
            "\nimage format per class (all splits); a difference between the classes is a shortcut \
             a model can learn instead of fractures:"
        );
        let _ = writeln!(
            out,
            "{:<15}{:>8}{:>11}{:>12}{:>10}{:>13}  formats",
            "class", "images", "portrait", ">1000 px", "gray", "16-bit"
        );
        let mut shares = Vec::new();
        for (name, f) in [("fractured", true), ("not_fractured", false)] {
            let imgs: Vec<&ImageInfo> = self.images.iter().filter(|i| i.fractured == f).collect();
            let n = imgs.len();
            let count = |p: &dyn Fn(&ImageInfo) -> bool| imgs.iter().filter(|i| p(i)).count();
            let portrait = percent(count(&|i| i.height > i.width), n);
            let large = percent(count(&|i| i.width.max(i.height) > 1000), n);
            let gray = percent(count(&|i| i.color.starts_with('L')), n);
            let deep = percent(
                count(&|i| i.color.contains("16") || i.color.contains("32")),
                n,
            );
            let mut formats: Vec<String> = imgs.iter().map(|i| i.format.clone()).collect();
            formats.sort();
            formats.dedup();
            let _ = writeln!(
                out,
                "{name:<15}{n:>8}{portrait:>10.1}%{large:>11.1}%{gray:>9.1}%{deep:>12.1}%  {}",
                formats.join(" ")
            );
            shares.push([portrait, large, gray, deep]);
        }
        if let [a, b] = shares.as_slice() {
            let cues = [
                (
                    "portrait orientation",
                    "resizing to a square squashes one orientation and stretches the other, so \
                     some of this cue survives",
                ),
                (
                    "large size",
                    "resizing to one size removes most of this cue (large scans are sharper)",
                ),
                (
                    "gray storage",
                    "converting every image to one gray channel removes this cue",
                ),
                (
                    "16-bit depth",
                    "scaling every image to [0, 1] removes most of this cue",
                ),
            ];
            for (k, (what, effect)) in cues.iter().enumerate() {
                let gap = (a[k] - b[k]).abs();
                if gap >= 5.0 {
                    let _ = writeln!(
                        out,
                        "warning: {what} differs by {gap:.0} points between the classes: {effect}"
                    );
                }
            }
        }
        self.render_dicom(&mut out);
        let _ = writeln!(out, "\nunusable files: {}", self.unusable.len());
        for (p, why) in &self.unusable {
            let _ = writeln!(out, "  {}: {why}", p.display());
        }
        let _ = writeln!(
            out,
            "\nnear-duplicates shared between splits (difference hash, at most {NEAR} of 256 bits \
             apart): {}",
            self.duplicates.len()
        );
        for (a, b, d) in &self.duplicates {
            let _ = writeln!(out, "  {} ~ {} ({d} bits)", a.display(), b.display());
        }
        if !self.duplicates.is_empty() {
            let _ = writeln!(
                out,
                "warning: images in more than one split make validation figures look better than \
                 they are: remove one of each pair"
            );
        }
        if let Some(c) = &self.coverage {
            c.render(&mut out);
        }
        out
    }
}
