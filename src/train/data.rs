//! The images a run trains and validates on: the splits (or a cross-validation fold of them
//! pooled), decoded through the cache, with the fracture map's targets when the model has one.

use super::*;
use crate::data::{DataDir, Dataset, Split, Square};
use crate::nn::ModelSpec;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub(super) fn load_split(
    split: &Split,
    size: Square,
    what: &str,
    quiet: bool,
    cache_file: Option<PathBuf>,
) -> Result<Dataset> {
    for p in &split.skipped {
        eprintln!("warning: skipping {} (not an image file)", p.display());
    }
    let ds = Dataset::load(&split.samples, size, what, quiet, cache_file.as_deref());
    for (p, why) in &ds.failed {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    if !ds.failed.is_empty() {
        eprintln!(
            "warning: {} of the {what} images could not be read",
            ds.failed.len()
        );
    }
    if ds.positives() == 0 || ds.positives() == ds.len() {
        bail!("no usable images of one class are left in the {what} split");
    }
    Ok(ds)
}

/// The decoded training and validation images (with their fracture-map targets when `spec` has
/// a map), and the positive-class weight of the loss.
pub fn load_data(cfg: &TrainConfig, spec: &ModelSpec) -> Result<(Dataset, Dataset, f32)> {
    let (mut train_ds, mut val_ds, pos_weight) = load_images(cfg, spec.square())?;
    if spec.map.is_some() {
        attach_outlines(cfg, spec, &mut train_ds, &mut val_ds)?;
    }
    Ok((train_ds, val_ds, pos_weight))
}

/// Attaches each image's fracture-map target from the outlines of `cfg`, saying how many of the
/// fractured images have one; an error when there are no outlines to learn from.
pub(super) fn attach_outlines(
    cfg: &TrainConfig,
    spec: &ModelSpec,
    train_ds: &mut Dataset,
    val_ds: &mut Dataset,
) -> Result<()> {
    if cfg.regularise.mixup > 0.0 {
        bail!(
            "--mixup blends images, and a fracture map has no blended target: leave it off for {}",
            spec.name
        );
    }
    let Some(annotations) =
        crate::data::annotations::Annotations::find(&cfg.data, cfg.annotations.as_deref())?
    else {
        bail!(
            "{} learns where fractures are from their outlines, and none were found: put a COCO \
             file in {}, or pass --annotations FILE",
            spec.name,
            cfg.data.join("annotations").display()
        );
    };
    let infos = spec.layers()?;
    let map = spec.map_layer()?.map(|m| infos[m].output.clone());
    if let Some([_, mh, mw]) = map.as_deref() {
        let side = spec.input[1];
        if mh != mw || !side.is_multiple_of(*mh) {
            bail!(
                "{}'s fracture map is {mh}x{mw} on a {side}x{side} input: training it needs a \
                 square map whose cells each cover a whole number of pixels",
                spec.name
            );
        }
    }
    let unknown = train_ds.attach_outlines(&annotations, spec.framing);
    val_ds.attach_outlines(&annotations, spec.framing);
    let fractured = train_ds.positives();
    println!(
        "outlines: {} — {} of {fractured} fractured training images outlined{}",
        annotations.file.display(),
        fractured - unknown,
        if unknown > 0 {
            " (the others train the image's label only)"
        } else {
            ""
        }
    );
    if unknown == fractured {
        bail!(
            "none of the {fractured} fractured training images has an outline in {}: its \
             file names must match the images'",
            annotations.file.display()
        );
    }
    Ok(())
}

/// The decoded training and validation images, and the positive-class weight of the loss.
pub(super) fn load_images(cfg: &TrainConfig, size: Square) -> Result<(Dataset, Dataset, f32)> {
    let dir = DataDir::open(&cfg.data)?;
    let cache_dir = cfg.out.join(".cache");
    let framed = (size.framed_side(), size.framing);
    let cache =
        |split_dir: &Path| Some(crate::data::cache::file_for(&cache_dir, split_dir, framed));
    let (train_ds, val_ds) = match &cfg.fold {
        None => {
            println!(
                "data: {} — train {} images ({} fractured, {} not), val {} images ({} fractured, {} not)",
                cfg.data.display(),
                dir.train.samples.len(),
                dir.train.count(1.0),
                dir.train.count(0.0),
                dir.val.samples.len(),
                dir.val.count(1.0),
                dir.val.count(0.0)
            );
            (
                load_split(&dir.train, size, "train", cfg.quiet, cache(&dir.train_dir))?,
                load_split(&dir.val, size, "val", cfg.quiet, cache(&dir.val_dir))?,
            )
        }
        Some(plan) => {
            let pooled =
                load_split(&dir.train, size, "train", cfg.quiet, cache(&dir.train_dir))?.concat(
                    load_split(&dir.val, size, "val", cfg.quiet, cache(&dir.val_dir))?,
                );
            let (train_ds, val_ds) = fold_split(&pooled, plan)?;
            println!(
                "data: {} pooled, fold {} of {} — train {} images ({} fractured), val {} images ({} fractured)",
                cfg.data.display(),
                plan.fold,
                plan.folds,
                train_ds.len(),
                train_ds.positives(),
                val_ds.len(),
                val_ds.positives()
            );
            (train_ds, val_ds)
        }
    };
    let pos_weight = cfg.pos_weight.unwrap_or_else(|| match cfg.sampling {
        Sampling::Balanced => 1.0,
        Sampling::Shuffle => {
            (train_ds.len() - train_ds.positives()) as f32 / train_ds.positives() as f32
        }
    });
    Ok((train_ds, val_ds, pos_weight))
}

/// The pooled images of a fold's run cut into (the other folds, this fold).
pub(super) fn fold_split(pooled: &Dataset, plan: &FoldPlan) -> Result<(Dataset, Dataset)> {
    let assignment = crate::data::folds::Assignment::read(&plan.assignment)?;
    let fold_of = assignment.fold_of();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, path) in pooled.paths.iter().enumerate() {
        match fold_of.get(path.as_path()) {
            Some(&f) if f == plan.fold => val.push(i),
            Some(_) => train.push(i),
            None => bail!(
                "{} is not in {}: the data folder changed after the cross-validation began",
                path.display(),
                plan.assignment.display()
            ),
        }
    }
    let (train, val) = (pooled.subset(&train), pooled.subset(&val));
    for (ds, what) in [(&train, "training"), (&val, "validation")] {
        if ds.positives() == 0 || ds.positives() == ds.len() {
            bail!("fold {}'s {what} images hold one class only", plan.fold);
        }
    }
    Ok((train, val))
}
