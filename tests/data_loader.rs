//! The image-folder loader: layouts, class-folder spellings, formats and bad files.

mod common;

use fracture_cnn::data::{folder, Augment, DataDir, Dataset, Framing, Square};
use image::{ImageBuffer, Luma, Rgb, Rgba};
use std::path::Path;

fn touch_class_dirs(root: &Path, split: &str, pos: &str, neg: &str) {
    for c in [pos, neg] {
        std::fs::create_dir_all(root.join(split).join(c)).unwrap();
    }
}

#[test]
fn accepts_common_class_and_split_spellings() {
    for (pos, neg, val) in [
        ("fractured", "not_fractured", "val"),
        ("Fractured", "not fractured", "valid"),
        ("fractured", "Non_fractured", "validation"),
        ("FRACTURED", "normal", "val"),
        ("fractured", "unfractured", "valid"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", val] {
            touch_class_dirs(dir.path(), split, pos, neg);
            for (c, fr) in [(pos, true), (neg, false)] {
                common::images::class_image(fr, 1, 8, 8)
                    .save(dir.path().join(split).join(c).join("a.png"))
                    .unwrap();
            }
        }
        let d = DataDir::open(dir.path()).unwrap_or_else(|e| panic!("{pos}/{neg}/{val}: {e:#}"));
        assert_eq!((d.train.count(1.0), d.train.count(0.0)), (1, 1));
        assert_eq!((d.val.count(1.0), d.val.count(0.0)), (1, 1));
    }
}

#[test]
fn decodes_gray_rgb_rgba_and_16_bit_into_one_channel_in_unit_range() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    ImageBuffer::from_pixel(5, 3, Luma([255u8]))
        .save(p.join("white8.png"))
        .unwrap();
    ImageBuffer::from_pixel(4, 4, Luma([32768u16]))
        .save(p.join("half16.png"))
        .unwrap();
    ImageBuffer::from_pixel(6, 6, Rgb([0u8, 0, 0]))
        .save(p.join("black.jpg"))
        .unwrap();
    ImageBuffer::from_pixel(7, 2, Rgba([255u8, 255, 255, 255]))
        .save(p.join("white_rgba.png"))
        .unwrap();
    ImageBuffer::from_pixel(1, 1, Luma([128u8]))
        .save(p.join("tiny.bmp"))
        .unwrap();
    let cases = [
        ("white8.png", 1.0),
        ("half16.png", 0.5),
        ("black.jpg", 0.0),
        ("white_rgba.png", 1.0),
        ("tiny.bmp", 128.0 / 255.0),
    ];
    for (name, want) in cases {
        let px = fracture_cnn::data::image::load_gray(&p.join(name), 4, Framing::Squash).unwrap();
        assert_eq!(px.len(), 16, "{name}");
        for v in px {
            assert!((v - want).abs() < 0.01, "{name}: {v} vs {want}");
        }
    }
}

#[test]
fn skips_non_images_and_reports_corrupt_files_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::images::write_separable_dataset(root, 2, 8);
    let frac = root.join("train").join("fractured");
    std::fs::write(frac.join("notes.txt"), "not an image").unwrap();
    std::fs::write(frac.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    std::fs::write(frac.join("empty.jpg"), b"").unwrap();
    let d = DataDir::open(root).unwrap();
    assert_eq!(d.train.skipped, vec![frac.join("notes.txt")]);
    let ds = Dataset::decode(
        &d.train.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
    );
    assert_eq!(ds.len(), 4);
    let failed: Vec<_> = ds
        .failed
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(failed, ["broken.png", "empty.jpg"]);
    assert!(ds.failed[0].1.contains("broken.png"), "{}", ds.failed[0].1);
}

#[test]
fn clear_errors_for_missing_folders_and_missing_classes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = DataDir::open(&missing).err().unwrap().to_string();
    assert!(e.contains("does not exist") && e.contains("nope"), "{e}");

    let e = DataDir::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("no train/ folder"), "{e}");

    std::fs::create_dir_all(dir.path().join("train").join("cats")).unwrap();
    std::fs::create_dir_all(dir.path().join("val")).unwrap();
    let e = format!("{:#}", DataDir::open(dir.path()).err().unwrap());
    assert!(e.contains("no class folders"), "{e}");

    touch_class_dirs(dir.path(), "train", "fractured", "normal");
    common::images::class_image(true, 1, 8, 8)
        .save(dir.path().join("train/fractured/a.png"))
        .unwrap();
    let e = format!("{:#}", DataDir::open(dir.path()).err().unwrap());
    assert!(e.contains("no not_fractured images"), "{e}");
    assert_eq!(folder::class_of("Not Fractured"), Some(0.0));
}

#[test]
fn batches_cover_every_sample_once_in_a_seeded_order() {
    let dir = tempfile::tempdir().unwrap();
    common::images::write_separable_dataset(dir.path(), 5, 8);
    let d = DataDir::open(dir.path()).unwrap();
    let ds = Dataset::decode(
        &d.train.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
    );
    let a = ds.batches(4, Some(7));
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
    let mut all: Vec<usize> = a.concat();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert_eq!(a, ds.batches(4, Some(7)));
    assert_ne!(a, ds.batches(4, Some(8)));
    let (x, y) = ds.batch(&a[0]);
    assert_eq!(x.dims(), [4, 1, 8, 8]);
    for (k, &i) in a[0].iter().enumerate() {
        assert_eq!(y.data[k], ds.labels[i]);
        // bright images are the fractured ones
        assert_eq!(x.data[k * 64] > 0.5, ds.labels[i] == 1.0);
    }
}

#[test]
fn data_check_finds_duplicates_across_splits_unusable_files_and_format_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::images::write_separable_dataset(root, 4, 24);
    // the same smooth "radiograph" in train and val, once re-encoded as JPEG and brightened
    let bone = |x: u32, y: u32| {
        let d = ((x as f32 - 30.0).powi(2) + (y as f32 - 20.0).powi(2)).sqrt();
        Luma([(40.0 + 2.0 * x as f32 + if d < 12.0 { 90.0 } else { 0.0 }) as u8])
    };
    ImageBuffer::from_fn(64, 48, bone)
        .save(root.join("train/fractured/bone.png"))
        .unwrap();
    let mut copy = ImageBuffer::from_fn(64, 48, bone);
    copy.pixels_mut()
        .for_each(|p| p[0] = p[0].saturating_add(3));
    copy.save(root.join("val/fractured/copy.jpg")).unwrap();
    std::fs::write(root.join("val/not_fractured/readme.txt"), "notes").unwrap();
    std::fs::write(
        root.join("val/not_fractured/broken.png"),
        b"\x89PNG\r\n\x1a\n",
    )
    .unwrap();
    // every fractured image stored as 16-bit: a format gap between the classes
    for entry in std::fs::read_dir(root.join("train/fractured")).unwrap() {
        let p = entry.unwrap().path();
        let img = image::open(&p).unwrap().to_luma16();
        img.save(&p).unwrap();
    }
    let report = fracture_cnn::data::check::check(root, None, true).unwrap();
    assert_eq!(report.images.len(), 9 + 9);
    let pairs: Vec<_> = report
        .duplicates
        .iter()
        .map(|(a, b, _)| {
            (
                a.file_name().unwrap().to_owned(),
                b.file_name().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(pairs, [("bone.png".into(), "copy.jpg".into())], "{pairs:?}");
    let text = report.render();
    assert!(text.contains("readme.txt: not an image file"), "{text}");
    assert!(text.contains("broken.png"), "{text}");
    assert!(text.contains("warning: 16-bit depth differs"), "{text}");
    assert!(text.contains("near-duplicates shared between splits") && text.contains("copy.jpg"));
}

#[test]
fn the_disk_cache_serves_unchanged_files_and_rereads_changed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    common::images::write_separable_dataset(&root, 3, 12);
    let split = DataDir::open(&root).unwrap().train;
    let cache =
        fracture_cnn::data::cache::file_for(&dir.path().join("cache"), &root, (8, Framing::Squash));
    let first = Dataset::load(
        &split.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
        Some(&cache),
    );
    assert!(cache.is_file());
    assert_eq!(
        first.pixels,
        Dataset::decode(
            &split.samples,
            Square::whole(8, Framing::Squash),
            "train",
            true
        )
        .pixels
    );
    // garbage of the same length with the old modification time: the cache still answers
    let victim = &split.samples[0].path;
    let modified = std::fs::metadata(victim).unwrap().modified().unwrap();
    let len = std::fs::metadata(victim).unwrap().len() as usize;
    std::fs::write(victim, vec![b'x'; len]).unwrap();
    let f = std::fs::File::options().write(true).open(victim).unwrap();
    f.set_modified(modified).unwrap();
    drop(f);
    let again = Dataset::load(
        &split.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
        Some(&cache),
    );
    assert_eq!(again.pixels, first.pixels, "served from the cache");
    // a newer modification time: read again, and now it fails
    let f = std::fs::File::options().write(true).open(victim).unwrap();
    f.set_modified(modified + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let fresh = Dataset::load(
        &split.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
        Some(&cache),
    );
    assert_eq!(fresh.failed.len(), 1);
    assert_eq!(fresh.len(), first.len() - 1);
    // a damaged cache file is ignored, not trusted
    std::fs::write(&cache, b"FRCACHE1 truncated").unwrap();
    let rebuilt = Dataset::load(
        &split.samples,
        Square::whole(8, Framing::Squash),
        "train",
        true,
        Some(&cache),
    );
    assert_eq!(rebuilt.len(), first.len() - 1);
}

#[test]
fn a_cropped_dataset_batches_random_windows_in_training_and_the_centre_when_judging() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    common::images::write_separable_dataset(&root, 3, 12);
    let split = DataDir::open(&root).unwrap().train;
    let whole = Dataset::decode(
        &split.samples,
        Square::whole(10, Framing::Squash),
        "t",
        true,
    );
    let square = Square {
        side: 8,
        framing: Framing::Squash,
        crop: 0.8,
    };
    let cropped = Dataset::decode(&split.samples, square, "t", true);
    assert_eq!((cropped.size, cropped.framed), (8, 10));
    assert_eq!(
        cropped.pixels, whole.pixels,
        "stores the framed 10 x 10 squares"
    );
    // the window of image 0 whose top-left corner is (x, y) in its 10 x 10 square
    let window = |(x, y): (usize, usize)| -> Vec<f32> {
        (y..y + 8)
            .flat_map(|r| whole.pixels[r * 10 + x..r * 10 + x + 8].to_vec())
            .collect()
    };
    let (judged, _) = cropped.batch(&[0]);
    assert_eq!(judged.shape.dims(), &[1, 1, 8, 8]);
    assert_eq!(judged.data, window((1, 1)), "judging takes the centre");
    let served = fracture_cnn::data::image::open(&cropped.paths[0]).unwrap();
    assert_eq!(
        fracture_cnn::data::image::to_model_input(&served, square),
        judged.data,
        "one image (serve, explain, inspect) is judged as a dataset's"
    );
    // training with nothing but the crop: every window is one of the 9 corners, and the draws
    // reach more than one of them
    let mut seen = std::collections::HashSet::new();
    for key in 0..40u32 {
        let (x, _) = cropped.augmented_batch(&[0], &Augment::OFF, |_| Some(key));
        let corner = (0..3)
            .flat_map(|y| (0..3).map(move |x| (x, y)))
            .find(|&c| window(c) == x.data)
            .expect("a window of the framed square");
        seen.insert(corner);
    }
    assert!(seen.len() >= 6, "random windows: {seen:?}");
}

#[test]
fn data_check_reports_which_fractured_images_have_outlines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 3 images a class and split, val/fractured/img00i.png of (24 + i) x 24 pixels
    common::images::write_separable_dataset(root, 3, 24);
    let image = |id: u32, name: &str, (w, h): (u32, u32)| {
        format!(r#"{{"id": {id}, "file_name": "{name}", "width": {w}, "height": {h}}}"#)
    };
    let outline = |id: u32| {
        format!(
            r#"{{"id": {id}, "image_id": {id}, "bbox": [1, 1, 8, 8], "segmentation": [[1, 1, 9, 1, 9, 9]]}}"#
        )
    };
    let coco = format!(
        r#"{{"images": [{}, {}, {}], "annotations": [{}, {}, {}]}}"#,
        image(0, "val/fractured/img000.png", (24, 24)),
        image(1, "val/fractured/img001.png", (24, 25)), // turned: the file is 25 x 24
        image(2, "val/not_fractured/img002.png", (26, 24)),
        outline(0),
        outline(1),
        outline(2)
    );
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    std::fs::write(root.join("annotations/fractures.coco.json"), coco).unwrap();
    let report = fracture_cnn::data::check::check(root, None, true).unwrap();
    let c = report
        .coverage
        .as_ref()
        .expect("the outlines beside the data are found");
    assert_eq!(c.fractured, 6);
    assert_eq!(c.without_outline.len(), 4, "{:?}", c.without_outline);
    assert!(c
        .without_outline
        .iter()
        .all(|p| !p.ends_with("val/fractured/img000.png")));
    assert_eq!(c.outlined_but_not_fractured.len(), 1);
    assert_eq!(c.other_shape.len(), 1);
    assert_eq!(
        (c.other_shape[0].1, c.other_shape[0].2),
        ((24, 25), (25, 24))
    );
    let text = report.render();
    assert!(text.contains("2 of 6 fractured images outlined"), "{text}");
    assert!(text.contains("fractured images without an outline (left out of the pointing game): 4"));
    assert!(
        text.contains("img001.png: outlined at 24x25, is 25x24"),
        "{text}"
    );
    // a bad annotation file is an error naming it and the entry
    std::fs::write(
        root.join("annotations/fractures.coco.json"),
        r#"{"images": [], "annotations": [{"id": 5, "image_id": 1, "bbox": [0, 0, 1, 1]}]}"#,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        fracture_cnn::data::check::check(root, None, true).unwrap_err()
    );
    assert!(
        err.contains("fractures.coco.json: annotation 5 is of image 1, which is not among"),
        "{err}"
    );
}

#[test]
fn a_fracture_mask_is_windowed_and_warped_with_its_image() {
    use fracture_cnn::data::{Dataset, MapTarget};
    // one 20 x 20 framed image whose pixels are its own mask (a blob off centre), a 16 x 16
    // window of it: every geometric draw that moves the image must move the mask the same way
    let (framed, size) = (20, 16);
    let mask: Vec<f32> = (0..framed * framed)
        .map(|i| {
            f32::from(u8::from(
                (3..9).contains(&(i % framed)) && (4..8).contains(&(i / framed)),
            ))
        })
        .collect();
    let ds = Dataset {
        size,
        framed,
        pixels: mask.clone(),
        labels: vec![1.0],
        paths: vec!["a.png".into()],
        failed: Vec::new(),
        targets: vec![MapTarget::Outlined(mask)],
    };
    let geometry = Augment {
        brightness: 0.0,
        contrast: 0.0,
        ..Augment::XRAY
    };
    let mut moved = 0;
    for key in 0..20u32 {
        let (x, _) = ds.augmented_batch(&[0], &geometry, |_| Some(key));
        let (t, weights) = ds.map_targets(&[0], &geometry, |_| Some(key), size);
        assert_eq!(weights, [1.0]);
        // (the image's contrast step, (v - mean) * 1 + mean, rounds in the last bit)
        let off = t
            .data
            .iter()
            .zip(&x.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            off < 1e-6,
            "key {key}: the mask at full resolution is the image, off by {off}"
        );
        // 4 x 4 cells: each the mean of its 4 x 4 pixels
        let (cells, _) = ds.map_targets(&[0], &geometry, |_| Some(key), 4);
        let mean = x.data[..4]
            .iter()
            .chain(&x.data[16..20])
            .chain(&x.data[32..36])
            .chain(&x.data[48..52])
            .sum::<f32>()
            / 16.0;
        assert!((cells.data[0] - mean).abs() < 1e-6);
        moved += usize::from(x.data != ds.batch(&[0]).0.data);
    }
    assert!(moved > 15, "the draws move the image ({moved} of 20)");
    // a fractured image without an outline weighs 0; a healthy one is all zero
    let mut ds = ds;
    ds.targets = vec![MapTarget::Unknown];
    assert_eq!(ds.map_targets(&[0], &geometry, |_| Some(1), 4).1, [0.0]);
    ds.targets = vec![MapTarget::Healthy];
    let (t, w) = ds.map_targets(&[0], &geometry, |_| Some(1), 4);
    assert_eq!((t.data.iter().sum::<f32>(), w), (0.0, vec![1.0]));
}
