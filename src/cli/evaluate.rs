//! `eval`, `predict` (with Grad-CAM heatmaps) and `data check`.

use super::*;

/// All the metrics of a trained model on a labelled folder.
#[derive(Args)]
pub(super) struct EvalArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used); several
    /// --model average their probabilities (an ensemble) [default: the shipped model,
    /// models/fracatlas.safetensors].
    #[arg(long)]
    model: Vec<PathBuf>,
    /// A folder with fractured/ and not_fractured/ inside, or a data folder (its test/ split, or
    /// else its val/ split, is used).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Also write each image's label, probability and prediction to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    views: TestTimeViews,
    /// Folder for reliability.png (the calibration diagram) and roc.png [default: RUN_DIR/eval
    /// when --model is a run folder, else none].
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Resamples of the stratified bootstrap behind the 95 % intervals (at least 1000).
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    /// Seed of the bootstrap's resampling: the same seed gives the same intervals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fracture outlines in COCO format, to measure where the model looked (pointing game, box
    /// AP, Dice) [default: the one JSON file in annotations/ beside the data's splits, if any].
    #[arg(long, value_name = "COCO.json")]
    annotations: Option<PathBuf>,
    /// A CSV table of groups (first column the image's file name; a column of 0/1 a group, as
    /// FracAtlas' annotations/dataset.csv: body part, view, hardware): where the model looked
    /// is also judged per group.
    #[arg(long, value_name = "TABLE.csv")]
    groups: Option<PathBuf>,
    #[command(flatten)]
    run: RunModelArgs,
}

/// The probability that each image shows a fracture.
#[derive(Args)]
pub(super) struct PredictArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors is used); several
    /// --model average their probabilities (an ensemble) [default: the shipped model,
    /// models/fracatlas.safetensors].
    #[arg(long)]
    model: Vec<PathBuf>,
    /// Image files, or folders searched for images.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// One JSON object per line: {"file", "probability", "label", "where": {"x", "y"}, "boxes":
    /// [{"x", "y", "width", "height", "score"}], "from"}: the most likely fracture point and up
    /// to 3 boxes, in the file's pixels as a viewer shows it, and what they were read from
    /// ("grad-cam").
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    views: TestTimeViews,
    /// Also draw where the model looked (Grad-CAM of its last convolutional block over the
    /// X-ray) into this PNG; with several images, this is a folder that gets one PNG per image,
    /// named FOLDER-NAME.heatmap.png after the image's folder and name.
    #[arg(long, value_name = "OUT.png")]
    heatmap: Option<PathBuf>,
    #[command(flatten)]
    run: RunModelArgs,
}

/// Sets the decision threshold saved in a checkpoint.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_cv", "value"])))]
pub(super) struct ThresholdArgs {
    /// A checkpoint (.safetensors) or a run folder (its best.safetensors); rewritten in place,
    /// atomically, its weights untouched.
    model: PathBuf,
    /// Take the threshold a finished cross-validation of the model's recipe chose (the one that
    /// maximises balanced accuracy over all its out-of-fold predictions, summary.json): chosen
    /// on every pooled image, not on one small validation split.
    #[arg(long, value_name = "CV_DIR")]
    from_cv: Option<PathBuf>,
    /// Set this threshold (a probability between 0 and 1).
    #[arg(long)]
    value: Option<f32>,
}

pub(super) fn threshold(a: ThresholdArgs) -> Result<()> {
    let path = eval::checkpoint_path(&a.model);
    let (threshold, why) = match (&a.from_cv, a.value) {
        (Some(cv_dir), _) => {
            let (t, judged) = fracture_cnn::cv::chosen_threshold(cv_dir)?;
            let (info, _) = fracture_cnn::checkpoint::read(&path)?;
            anyhow::ensure!(
                judged.split([',', ' ']).next() == Some(info.spec.name.as_str()),
                "{} cross-validated {judged}, but {} is a {}: take the threshold of the \
                 model's own recipe",
                cv_dir.display(),
                path.display(),
                info.spec.name
            );
            (
                t,
                format!("chosen by the cross-validation in {}", cv_dir.display()),
            )
        }
        (None, Some(v)) => (v, "given".to_string()),
        (None, None) => unreachable!("clap requires --from-cv or --value"),
    };
    let old = fracture_cnn::checkpoint::set_threshold(&path, threshold)?;
    println!(
        "decision threshold of {}: {old} -> {threshold} ({why})",
        path.display()
    );
    Ok(())
}

pub(super) fn eval(a: EvalArgs) -> Result<()> {
    anyhow::ensure!(
        a.bootstrap >= 1000,
        "--bootstrap must be at least 1000 resamples, got {}",
        a.bootstrap
    );
    let models = eval::models_or_shipped(&a.model)?;
    let opts = eval::EvalOptions {
        batch: a.run.batch_size,
        tta: a.views.tta,
        csv: a.csv.clone(),
        figures: a
            .figures
            .clone()
            .or_else(|| models[0].is_dir().then(|| models[0].join("eval"))),
        bootstrap: fracture_cnn::metrics::Bootstrap {
            resamples: a.bootstrap,
            seed: a.seed,
        },
        quiet: a.json,
        annotations: a.annotations.clone(),
        groups: a.groups.clone(),
    };
    let picked = pick_backend_quietly(a.run.backend, a.json)?;
    let e = on_backend!(picked, |be| eval::evaluate(be, &models, &a.data, &opts))?;
    for (p, why) in &e.skipped {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    print!("{}", eval::render(&e));
    if let Some(csv) = &a.csv {
        println!("per-image predictions written to {}", csv.display());
    }
    if let Some(dir) = &opts.figures {
        println!(
            "figures: {} and {}",
            dir.join("reliability.png").display(),
            dir.join("roc.png").display()
        );
    }
    Ok(())
}

pub(super) fn predict(a: PredictArgs) -> Result<()> {
    let batch = a.run.batch_size;
    let models = eval::models_or_shipped(&a.model)?;
    let picked = pick_backend_quietly(a.run.backend, true)?;
    let (predictions, failed) = on_backend!(picked, |be| eval::predict(
        be,
        &models,
        &a.paths,
        batch,
        a.views.tta
    ))?;
    for (p, why) in &failed {
        eprintln!("warning: skipping {}: {why}", p.display());
    }
    for p in &predictions {
        if let Some(frames) = p.dicom.as_ref().map(|d| d.frames).filter(|&n| n > 1) {
            eprintln!("note: {} has {frames} frames; the first was read", p.file);
        }
        if a.json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            let at = p.location.as_ref().map_or(String::new(), |l| {
                format!(
                    "  (most likely at x {:.0}, y {:.0}; {})",
                    l.point.x,
                    l.point.y,
                    l.from.name()
                )
            });
            println!("{:.4}  {:<13}  {}{at}", p.probability, p.label, p.file);
        }
    }
    if predictions.is_empty() {
        anyhow::bail!("none of the {} image files could be read", failed.len());
    }
    if let Some(out) = &a.heatmap {
        on_backend!(picked, |be| heatmaps(be, &models[0], &predictions, out))?;
    }
    Ok(())
}

/// Writes a Grad-CAM heatmap of each predicted image, labelled with its prediction: to `out` for
/// one image, else into the folder `out`.
pub(super) fn heatmaps<B: Backend>(
    be: &B,
    model: &std::path::Path,
    predictions: &[eval::Prediction],
    out: &std::path::Path,
) -> Result<()> {
    use fracture_cnn::{data::image, explain, plots};
    if predictions.len() > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let files: Vec<PathBuf> = predictions.iter().map(|p| PathBuf::from(&p.file)).collect();
    let maps = eval::fracture_maps(be, model, &files, true)?;
    let mut taken = std::collections::HashSet::new();
    for (prediction, mapped) in predictions.iter().zip(maps) {
        let file = std::path::Path::new(&prediction.file);
        let path = if predictions.len() == 1 {
            out.to_path_buf()
        } else {
            // class folders often hold files of the same name: the folder's name goes first,
            // and a number after any name already written
            let stem = file.file_stem().unwrap_or_default().to_string_lossy();
            let folder = file
                .parent()
                .and_then(|p| p.file_name())
                .unwrap_or_default();
            let name = format!("{}-{stem}", folder.to_string_lossy());
            let unique = (1..)
                .map(|i| {
                    if i == 1 {
                        name.clone()
                    } else {
                        format!("{name}-{i}")
                    }
                })
                .find(|n| taken.insert(n.clone()))
                .expect("some name is free");
            out.join(format!("{unique}.heatmap.png"))
        };
        let img = image::open(file)?;
        let mapped = mapped.map_err(anyhow::Error::msg)?;
        let mut drawing = explain::overlay(&img, &mapped.map, 768);
        if let Some(location) = &prediction.location {
            explain::draw_location(&mut drawing, location, mapped.size);
        }
        let text = format!("{}  p = {:.3}", prediction.label, prediction.probability);
        plots::write_labelled_png(&path, drawing, &text)?;
        eprintln!("heatmap of {}: {}", file.display(), path.display());
    }
    Ok(())
}

pub(super) fn data_check(
    dir: &std::path::Path,
    annotations: Option<&std::path::Path>,
    quiet: bool,
) -> Result<()> {
    let report = fracture_cnn::data::check::check(dir, annotations, quiet)?;
    println!("data check: {}\n", dir.display());
    print!("{}", report.render());
    Ok(())
}
