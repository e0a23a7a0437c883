//! Finding the images of a data set laid out as class folders, possibly inside split folders:
//!
//! ```text
//! DIR/train/fractured/*.jpg      DIR/train/not_fractured/*.jpg
//! DIR/val/fractured/*.jpg        DIR/val/not_fractured/*.jpg      (or valid/, validation/)
//! DIR/test/...                   (optional)
//! ```
//! A folder with class folders directly inside it is one split on its own.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Names of the positive class folder (compared case-insensitively, `-` and ` ` read as `_`).
const POSITIVE: &[&str] = &["fractured", "fracture", "positive"];
/// Names of the negative class folder.
const NEGATIVE: &[&str] = &[
    "not_fractured",
    "non_fractured",
    "nonfractured",
    "unfractured",
    "normal",
    "negative",
];
/// File endings the image decoder reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "tif", "tiff", "gif", "webp"];

/// Whether `path` is an image to read: its ending is one the image decoder reads, or its content
/// is DICOM (PACS exports often have no ending, or a number for one).
pub fn is_image_file(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) || super::dicom::is_dicom_file(path)
}

/// Positive class = fractured.
pub const CLASS_NAMES: [&str; 2] = ["not_fractured", "fractured"];

/// One labelled image file.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// 1.0 for fractured, 0.0 for not fractured.
    pub label: f32,
}

/// The files of one split, and the files that were passed over (not images).
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub samples: Vec<Sample>,
    pub skipped: Vec<PathBuf>,
}

impl Split {
    pub fn count(&self, label: f32) -> usize {
        self.samples.iter().filter(|s| s.label == label).count()
    }
}

fn normalise(name: &str) -> String {
    name.to_lowercase().replace(['-', ' '], "_")
}

/// The label a class folder's name stands for, if it is one.
pub fn class_of(folder_name: &str) -> Option<f32> {
    let n = normalise(folder_name);
    if POSITIVE.contains(&n.as_str()) {
        Some(1.0)
    } else if NEGATIVE.contains(&n.as_str()) {
        Some(0.0)
    } else {
        None
    }
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        if e.path().is_dir() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The sub-folder of `root` named like one of `names`, if any.
pub fn find_split(root: &Path, names: &[&str]) -> Result<Option<PathBuf>> {
    Ok(subdirs(root)?
        .into_iter()
        .find(|d| names.contains(&normalise(&file_name(d)).as_str())))
}

/// Reads a split folder: its class folders and their files (sorted, so that runs repeat).
pub fn read_split(dir: &Path) -> Result<Split> {
    let classes: Vec<(PathBuf, f32)> = subdirs(dir)?
        .into_iter()
        .filter_map(|d| class_of(&file_name(&d)).map(|l| (d, l)))
        .collect();
    if classes.is_empty() {
        bail!(
            "{} has no class folders: expected 'fractured' and 'not_fractured' \
             (or 'normal', 'non_fractured', 'unfractured', 'not fractured') inside it",
            dir.display()
        );
    }
    let mut split = Split::default();
    for (class_dir, label) in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .with_context(|| format!("cannot read {}", class_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            if is_image_file(&path) {
                split.samples.push(Sample { path, label });
            } else {
                split.skipped.push(path);
            }
        }
    }
    for (label, name) in [(1.0, "fractured"), (0.0, "not_fractured")] {
        if split.count(label) == 0 {
            bail!(
                "{} has no {name} images: both classes are needed to train and to measure",
                dir.display()
            );
        }
    }
    Ok(split)
}

/// The training and validation splits of a data folder.
pub struct DataDir {
    pub train: Split,
    pub val: Split,
    pub train_dir: PathBuf,
    pub val_dir: PathBuf,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!(
                "data folder {} does not exist (pass --data DIR: a folder with train/ and val/, \
                 each holding fractured/ and not_fractured/)",
                root.display()
            );
        }
        let train_dir = find_split(root, &["train", "training"])?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no train/ folder (expected train/ and val/ or valid/, each with \
                 fractured/ and not_fractured/ inside)",
                root.display()
            )
        })?;
        let val_dir = find_split(root, &["val", "valid", "validation"])?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no val/ (or valid/) folder next to train/",
                root.display()
            )
        })?;
        Ok(DataDir {
            train: read_split(&train_dir)?,
            val: read_split(&val_dir)?,
            train_dir,
            val_dir,
        })
    }
}
