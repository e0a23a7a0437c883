//! `export`: every preset's ONNX file, run by an independent runtime (tract), gives the
//! probabilities `predict` gives, within 1e-4, on the X-rays in data/val.

mod common;

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::checkpoint::{self, CheckpointInfo};
use fracture_cnn::data::image::{open, to_model_input};
use fracture_cnn::eval;
use fracture_cnn::export;
use fracture_cnn::nn::{Mode, Model, ModelSpec};
use fracture_cnn::tensor::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::{Path, PathBuf};
use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoRunnable};

const TOLERANCE: f32 = 1e-4;

/// Eight X-rays of the repo's data/val, both classes.
fn xrays() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/val");
    ["fractured", "not_fractured"]
        .iter()
        .flat_map(|class| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.truncate(4);
            files
        })
        .collect()
}

/// A model of `spec` as a trained one would be: biases and batch norm's γ and β not at their
/// initial values, running statistics of real X-rays (so that no layer's output vanishes), and
/// the last layer scaled so that the logits of `images` have mean 0 and deviation 1 (so that
/// their probabilities differ, and an export that got any layer wrong could not agree).
fn trained_looking_model(spec: &ModelSpec, images: &[Vec<f32>], seed: u64) -> Model<Cpu> {
    let one_batch = common::models::taking_one_batch_statistics(spec);
    let mut model = Model::new(&Cpu::new(), &one_batch, seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for p in model.params_mut() {
        let (lo, hi) = match p.name {
            "bias" | "beta" => (-0.1, 0.1),
            "gamma" => (0.5, 1.5),
            _ => continue,
        };
        let shape = Cpu::new().shape(&p.value).clone();
        let data = (0..shape.numel()).map(|_| rng.gen_range(lo..hi)).collect();
        p.value = Cpu::new().upload(&Tensor::new(shape, data));
    }
    let [c, h, w] = spec.input;
    let x = Tensor::new([images.len(), c, h, w], images.concat());
    model.forward(&Cpu::new(), Cpu::new().upload(&x), Mode::Train { seed });
    let logits = Cpu::new()
        .download(&model.forward(&Cpu::new(), Cpu::new().upload(&x), Mode::Eval))
        .data;
    let n = logits.len() as f32;
    let mean = logits.iter().sum::<f32>() / n;
    let sd = (logits.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / n).sqrt();
    assert!(sd > 0.0, "{}: every image has the same logit", spec.name);
    let mut params = model.params_mut();
    let last = params.len() - 2;
    let [weight, bias] = &mut params[last..] else {
        unreachable!("the last layer is dense")
    };
    let scale = |t: &Tensor, k: f32, shift: f32| {
        Tensor::new(
            t.shape.clone(),
            t.data.iter().map(|v| v * k - shift).collect(),
        )
    };
    weight.value = Cpu::new().upload(&scale(&Cpu::new().download(&weight.value), 1.0 / sd, 0.0));
    bias.value = Cpu::new().upload(&scale(
        &Cpu::new().download(&bias.value),
        1.0 / sd,
        mean / sd,
    ));
    model
}

/// The probabilities tract computes with the ONNX file for `images` (each `[1, H, W]`), in one
/// batch of all of them (the batch dimension is free).
fn tract_probabilities(onnx: &Path, images: &[Vec<f32>], h: usize, w: usize) -> Vec<f32> {
    let plan = tract_onnx::onnx()
        .model_for_path(onnx)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let data: Vec<f32> = images.concat();
    let x = tract_onnx::prelude::Tensor::from_shape(&[images.len(), 1, h, w], &data).unwrap();
    let out = plan.run(tvec!(x.into())).unwrap();
    let p = out[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(p.shape(), &[images.len(), 1]);
    p.iter().copied().collect()
}

/// The input `spec` takes of the X-ray at `file`, prepared as its export's metadata says.
fn model_input(file: &Path, spec: &ModelSpec) -> Vec<f32> {
    to_model_input(&open(file).unwrap(), spec.square())
}

/// Exports the checkpoint `exported`, runs it in tract and `predict` with `predicted` on the
/// X-rays: the largest gap of their probabilities (infinite where either is NaN), and
/// `predict`'s probabilities.
fn export_gap(exported: &Path, predicted: &Path, spec: &ModelSpec, dir: &Path) -> (f32, Vec<f32>) {
    let onnx = dir.join(format!("{}.onnx", spec.name));
    export::export(exported, &onnx).unwrap();
    let files = xrays();
    let [_, h, w] = spec.input;
    let images: Vec<Vec<f32>> = files.iter().map(|f| model_input(f, spec)).collect();
    let theirs = tract_probabilities(&onnx, &images, h, w);
    let (ours, failed) =
        eval::predict(&Cpu::new(), &[predicted.to_path_buf()], &files, 3, false).unwrap();
    assert!(failed.is_empty());
    assert_eq!(ours.len(), theirs.len(), "an answer per X-ray from both");
    let ours: Vec<f32> = ours.iter().map(|p| p.probability).collect();
    // infinite where either side is NaN (a fold with f32::max would drop it)
    let worst = Tensor::new([theirs.len()], ours.clone())
        .max_abs_diff(&Tensor::new([theirs.len()], theirs.clone()));
    (worst, ours)
}

/// Exports the checkpoint at `ckpt`, runs it in tract and `predict` on the X-rays, and checks
/// that they agree.
fn assert_export_agrees(ckpt: &Path, spec: &ModelSpec, dir: &Path) {
    let (worst, ours) = export_gap(ckpt, ckpt, spec, dir);
    assert!(
        worst <= TOLERANCE,
        "{}: tract differs from predict by {worst:e}: ours {ours:?}",
        spec.name,
    );
    // probabilities that hardly differ between images would agree whatever the graph computed
    let (lo, hi) = ours
        .iter()
        .fold((1f32, 0f32), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
    assert!(
        hi - lo > 0.2,
        "{}: probabilities too alike: {ours:?}",
        spec.name
    );
}

/// A [`trained_looking_model`] of `spec` saved as `dir/model.safetensors`.
fn trained_looking_checkpoint(spec: &ModelSpec, seed: u64, dir: &Path) -> PathBuf {
    let images: Vec<Vec<f32>> = xrays().iter().map(|f| model_input(f, spec)).collect();
    let model = trained_looking_model(spec, &images, seed);
    let info = CheckpointInfo {
        spec: spec.clone(),
        threshold: 0.5,
        epoch: 1,
        progress: None,
    };
    let ckpt = dir.join("model.safetensors");
    checkpoint::save(&Cpu::new(), &model, &info, Vec::new(), &ckpt).unwrap();
    ckpt
}

fn check_spec(spec: ModelSpec, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained_looking_checkpoint(&spec, seed, dir.path());
    assert_export_agrees(&ckpt, &spec, dir.path());
}

/// The negative control of the export's tolerance: a graph whose first convolution's weights are
/// off by 0.1 % (as a batch norm exported with its variance off by 0.2 % would leave them) is
/// refused at [`TOLERANCE`], on every preset.
#[test]
fn an_export_off_by_a_tenth_of_a_percent_fails_the_comparison() {
    for (i, name) in ["fracturenet", "mobilenet", "resnet"]
        .into_iter()
        .enumerate()
    {
        let spec = ModelSpec::load(name).unwrap().with_image_size(96).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ckpt = trained_looking_checkpoint(&spec, 10 + i as u64, dir.path());
        let (mut model, info) = checkpoint::load(&Cpu::new(), &ckpt).unwrap();
        common::models::first_weight_off_by_a_tenth_of_a_percent(&mut model);
        let off = dir.path().join("off.safetensors");
        checkpoint::save(&Cpu::new(), &model, &info, Vec::new(), &off).unwrap();
        let (worst, _) = export_gap(&off, &ckpt, &spec, dir.path());
        assert!(
            worst > TOLERANCE,
            "{name}: off by 0.1 % and within {worst:e}"
        );
        println!("{name}: a first convolution off by 0.1 % moves a probability by {worst:e}");
    }
}

#[test]
fn fracturenet_exports() {
    check_spec(ModelSpec::load("fracturenet").unwrap(), 1);
}

#[test]
fn xray_bone_classifier_exports() {
    check_spec(ModelSpec::load("xray-bone-classifier").unwrap(), 2);
}

#[test]
fn mobilenet_exports() {
    check_spec(ModelSpec::load("mobilenet").unwrap(), 3);
}

/// A resnet with a fracture map: its second output, `fracture_map`, is the map `predict` reads
/// `where` from (the sigmoid of the map's logits), cell for cell.
#[test]
fn resnet_with_a_fracture_map_exports_both_outputs() {
    let spec = ModelSpec::load("resnet-loc")
        .unwrap()
        .with_image_size(96)
        .unwrap();
    check_spec(spec.clone(), 5);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained_looking_checkpoint(&spec, 5, dir.path());
    let onnx = dir.path().join("loc.onnx");
    export::export(&ckpt, &onnx).unwrap();
    let plan = tract_onnx::onnx()
        .model_for_path(&onnx)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let (net, _) = checkpoint::load(&Cpu::new(), &ckpt).unwrap();
    let mut net = fracture_cnn::nn::fold::inference_model(&Cpu::new(), &net).unwrap();
    let mut worst = 0f32;
    let mut spread = (1f32, 0f32);
    for file in xrays().iter().take(4) {
        let x = tract_onnx::prelude::Tensor::from_shape(&[1, 1, 96, 96], &model_input(file, &spec))
            .unwrap();
        let out = plan.run(tvec!(x.into())).unwrap();
        assert_eq!(out.len(), 2, "probability and fracture_map");
        let theirs = out[1].to_plain_array_view::<f32>().unwrap();
        assert_eq!(theirs.shape(), &[1, 1, 12, 12], "stride 8 at 96");
        let ours = eval::head_map(&Cpu::new(), &mut net, &model_input(file, &spec)).unwrap();
        assert_eq!(ours.heat.len(), 144);
        let theirs: Vec<f32> = theirs.iter().copied().collect();
        let gap = Tensor::new([144], ours.heat.clone()).max_abs_diff(&Tensor::new([144], theirs));
        worst = if gap.is_nan() || gap > worst {
            gap
        } else {
            worst
        };
        for o in &ours.heat {
            spread = (spread.0.min(*o), spread.1.max(*o));
        }
    }
    assert!(worst <= TOLERANCE, "the map differs by {worst:e}");
    assert!(
        spread.1 - spread.0 > 0.05,
        "a map too flat to tell: {spread:?}"
    );
}

#[test]
fn resnet_with_projections_exports() {
    check_spec(
        ModelSpec::load("resnet")
            .unwrap()
            .with_image_size(96)
            .unwrap(),
        4,
    );
}

/// Odd sizes, where `same` pads one more zero at the bottom/right than at the top/left and
/// `valid` windows and pools drop the last row; reflected framing and a crop (the centre 37 of
/// 46); dropout (absent in ONNX); a convolution with its ReLU inside (`activation`).
#[test]
fn uneven_padding_and_framing_export() {
    let spec = ModelSpec::parse(
        r#"
        name = "uneven"
        input = [1, 37, 37]
        framing = "pad-reflect"
        crop = 0.8
        [[layers]]
        type = "conv2d"
        filters = 4
        kernel = 4
        stride = 2
        [[layers]]
        type = "relu"
        [[layers]]
        type = "conv2d"
        filters = 6
        kernel = 3
        padding = "valid"
        activation = "relu"
        [[layers]]
        type = "maxpool"
        size = 3
        stride = 2
        [[layers]]
        type = "depthwise_conv2d"
        kernel = 3
        stride = 2
        [[layers]]
        type = "flatten"
        [[layers]]
        type = "dropout"
        rate = 0.5
        [[layers]]
        type = "dense"
        units = 5
        [[layers]]
        type = "batchnorm"
        [[layers]]
        type = "dense"
        units = 1
        "#,
    )
    .unwrap();
    check_spec(spec, 5);
}

/// The shipped, trained model.
#[test]
fn the_shipped_model_exports() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = eval::shipped_model();
    let (_, info) = checkpoint::load(&Cpu::new(), &ckpt).unwrap();
    assert_export_agrees(&ckpt, &info.spec, dir.path());
}
