//! A model with a fracture map learns where fractures are from their outlines, end to end as a
//! user runs it: X-rays made by the test whose "fracture" is a bright square at a random place,
//! outlined in a COCO file beside the data; `train` a small resnet with a map; `eval` measures
//! the pointing game against the image centre; `predict` says where; `cv` pools it out of fold.

mod common;

use common::cli::run;
use image::{GrayImage, Luma};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Side of the test's X-rays, and of the square that marks a fracture.
const SIDE: u32 = 64;
const MARK: u32 = 12;

/// Writes `root/<split>/<class>/img<i>.png` and `root/annotations/fractures.coco.json`: each
/// fractured image has one bright square at a random place (its outline and box in the file),
/// each other image a dimmer square (so that brightness alone does not say where).
fn write_marked_dataset(root: &Path, per_class: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut images, mut annotations) = (Vec::new(), Vec::new());
    for split in ["train", "val"] {
        for (class, fractured) in [("fractured", true), ("not_fractured", false)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (x0, y0) = (
                    rng.gen_range(2..SIDE - MARK - 2),
                    rng.gen_range(2..SIDE - MARK - 2),
                );
                let level = if fractured { 230 } else { 140 };
                let noise: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.gen_range(40..90)).collect();
                let img = GrayImage::from_fn(SIDE, SIDE, |x, y| {
                    let inside = (x0..x0 + MARK).contains(&x) && (y0..y0 + MARK).contains(&y);
                    Luma([if inside {
                        level
                    } else {
                        noise[(y * SIDE + x) as usize]
                    }])
                });
                let name = format!("img{i:03}.png");
                img.save(dir.join(&name)).unwrap();
                if fractured {
                    let id = images.len();
                    images.push(format!(
                        r#"{{"id": {id}, "file_name": "{split}/{class}/{name}", "width": {SIDE}, "height": {SIDE}}}"#
                    ));
                    let (x1, y1) = (x0 + MARK, y0 + MARK);
                    annotations.push(format!(
                        r#"{{"id": {id}, "image_id": {id}, "bbox": [{x0}, {y0}, {MARK}, {MARK}], "segmentation": [[{x0}, {y0}, {x1}, {y0}, {x1}, {y1}, {x0}, {y1}]]}}"#
                    ));
                }
            }
        }
    }
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    std::fs::write(
        root.join("annotations/fractures.coco.json"),
        format!(
            r#"{{"images": [{}], "annotations": [{}]}}"#,
            images.join(", "),
            annotations.join(", ")
        ),
    )
    .unwrap();
}

/// `command` (train or cv) of `model` on `data` at `size` pixels, on the CPU, runs under `runs`,
/// quiet, with `more` arguments.
fn run_on(
    command: &str,
    (data, runs): (&Path, &Path),
    (model, size): (&str, u32),
    more: &[&str],
) -> Output {
    let size = size.to_string();
    let mut args = vec![
        command,
        "--data",
        data.to_str().unwrap(),
        "--out",
        runs.to_str().unwrap(),
        "--model",
        model,
        "--image-size",
        &size,
        "--backend",
        "cpu",
        "--quiet",
    ];
    args.extend_from_slice(more);
    run(&args)
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

#[test]
fn a_model_with_a_map_learns_where_the_marks_are() {
    let dir = tempfile::tempdir().unwrap();
    let (data, runs) = (dir.path().join("data"), dir.path().join("runs"));
    write_marked_dataset(&data, 24);
    let train_with = |model: &str, epochs: &str, extra: &[&str]| {
        let mut more = vec![
            "--epochs",
            epochs,
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--no-augment",
        ];
        more.extend_from_slice(extra);
        let o = run_on("train", (&data, &runs), (model, SIDE), &more);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let train = |model: &str, epochs: &str| train_with(model, epochs, &[]);
    let printed = train("resnet-4-1-loc", "25");
    assert!(
        printed.contains("24 of 24 fractured training images outlined"),
        "{printed}"
    );
    let model = runs.join("resnet-4-1-loc-001/final.safetensors");
    let eval = |model: &Path| {
        json_of(&run(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--tta",
            "false",
            "--json",
            "--backend",
            "cpu",
        ]))["localization"]
            .clone()
    };
    let l = eval(&model);
    assert_eq!(l["from"], "fracture-map", "{l}");
    assert_eq!(l["outlined"], 24, "{l}");
    let (pointing, centre) = (
        l["pointing_game"]["value"].as_f64().unwrap(),
        l["centre_baseline"]["value"].as_f64().unwrap(),
    );
    // the marks are anywhere: the centre hits a few; a map that learned them hits most
    assert!(centre < 0.3, "{l}");
    assert!(pointing >= 0.75, "pointing game {pointing}: {l}");
    assert!(l["dice"]["value"].as_f64().unwrap() > 0.3, "{l}");
    // the pointing loss (on by default) sharpens the map to a peak, so that its region at 0.8 of
    // the peak is smaller than a mark: some boxes match, and the per-cell loss alone matches most
    assert!(l["box_ap50"]["value"].as_f64().unwrap() > 0.0, "{l}");
    train_with("resnet-4-1-loc", "25", &["--map-pointing", "0"]);
    let per_cell = eval(&runs.join("resnet-4-1-loc-002/final.safetensors"));
    let pointing = per_cell["pointing_game"]["value"].as_f64().unwrap();
    assert!(pointing >= 0.75, "pointing game {pointing}: {per_cell}");
    assert!(
        per_cell["box_ap50"]["value"].as_f64().unwrap() > 0.3,
        "{per_cell}"
    );

    // predict says where, in the file's pixels, from the map
    let val = data.join("val/fractured/img000.png");
    let p = json_of(&run(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        val.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
    ]));
    assert_eq!(p["from"], "fracture-map");
    let (x, y) = (
        p["where"]["x"].as_f64().unwrap(),
        p["where"]["y"].as_f64().unwrap(),
    );
    assert!(
        (0.0..=64.0).contains(&x) && (0.0..=64.0).contains(&y),
        "{p}"
    );

    // the pointing loss joins the map's: one epoch from the same seed with it and without it,
    // whose losses differ by about the softmax's over the cells (ln 16 at first for a 4 × 4
    // map), and whose weights move elsewhere (the same validation loss would mean its gradient
    // never reached them)
    let epoch_line = |extra: &[&str]| {
        let printed = train_with("resnet-4-1-loc", "1", extra);
        let line = printed.lines().find(|l| l.starts_with("epoch")).unwrap();
        let figure = |name: &str| -> f64 {
            let after = line.split(name).nth(1).unwrap().trim_start();
            after.split_whitespace().next().unwrap().parse().unwrap()
        };
        (figure("train loss"), figure("val loss"))
    };
    let (without, with) = (
        epoch_line(&["--map-pointing", "0"]),
        epoch_line(&["--map-pointing", "1"]),
    );
    assert!(with.0 > without.0 + 1.0, "{with:?} against {without:?}");
    assert_ne!(with.1, without.1, "the pointing loss moved no weight");

    // the same recipe without a map points by Grad-CAM, and is judged by the same figures
    train("resnet-4-1", "3");
    let plain = eval(&runs.join("resnet-4-1-001/final.safetensors"));
    assert_eq!(plain["from"], "grad-cam", "{plain}");

    // a map whose cells do not tile the input is refused, naming the shapes
    let spec = dir.path().join("odd-map.toml");
    std::fs::write(
        &spec,
        "name = \"odd-map\"\ninput = [1, 30, 30]\nmap = \"fmap\"\n\
         [[layers]]\ntype = \"conv2d\"\nfilters = 4\nkernel = 3\nname = \"feat\"\n\
         [[layers]]\ntype = \"conv2d\"\nfilters = 1\nkernel = 3\nstride = 4\n\
         padding = \"valid\"\nname = \"fmap\"\n\
         [[layers]]\ntype = \"global_avgpool\"\ninputs = [\"feat\"]\n\
         [[layers]]\ntype = \"dense\"\nunits = 1\n",
    )
    .unwrap();
    let o = run_on(
        "train",
        (&data, &runs),
        (spec.to_str().unwrap(), 30),
        &["--epochs", "1"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("odd-map's fracture map is 7x7 on a 30x30 input"),
        "{err}"
    );

    // a map without outlines to learn from is refused before any training
    let bare = dir.path().join("bare");
    common::images::write_separable_dataset(&bare, 3, 16);
    let o = run_on(
        "train",
        (&bare, &runs),
        ("resnet-4-1-loc", 32),
        &["--epochs", "1"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "resnet-4-1-loc learns where fractures are from their outlines, and none were found"
        ),
        "{err}"
    );
}

#[test]
fn cv_pools_where_the_folds_looked() {
    let dir = tempfile::tempdir().unwrap();
    let (data, runs) = (dir.path().join("data"), dir.path().join("runs"));
    write_marked_dataset(&data, 8);
    let more = [
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--tta",
        "false",
    ];
    let o = run_on("cv", (&data, &runs), ("resnet-4-1-loc", 32), &more);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("pooled out of fold, where it looked (fracture-map of 32 X-rays"),
        "{printed}"
    );
    let cv_dir = runs.join("cv-resnet-4-1-loc-001");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(cv_dir.join("summary.json")).unwrap())
            .unwrap();
    let l = &summary["localization"];
    assert_eq!(l["images"], 32, "{l}");
    assert_eq!(
        l["outlined"], 16,
        "every fractured image, each judged by its own fold's model"
    );
}
