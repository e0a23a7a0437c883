//! DICOM in: files the tests write byte by byte (tests/common/dicom.rs), read through every path
//! an image takes: the decoder's pixel pipeline, predict (folders, files without an ending,
//! `--json`), data check, training's cache, and damaged files refused with their reason.

mod common;

use common::cli::{run, train_args};
use common::dicom::{self, Spec};
use fracture_cnn::data::image::{open, open_file, to_model_input, Framing, Square};
use image::{GrayImage, Luma};
use std::path::{Path, PathBuf};

/// The 16-bit levels of a decoded DICOM, as [0, 1] values.
fn levels(path: &Path) -> Vec<f32> {
    open(path).unwrap().to_luma32f().into_raw()
}

fn write(dir: &Path, name: &str, spec: &Spec) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, dicom::file(spec)).unwrap();
    path
}

/// One row of 16-bit stored values.
fn row16(values: &[i32]) -> Spec {
    Spec {
        width: values.len() as u16,
        height: 1,
        bits_allocated: 16,
        bits_stored: 16,
        values: values.to_vec(),
        ..Spec::default()
    }
}

fn assert_levels(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: pixel count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // levels are kept to 16 bits: half a step of 1/65535
        assert!(
            (*g as f64 - w).abs() <= 0.5 / 65535.0 + 1e-7,
            "{what}: pixel {i} is {g}, the pipeline says {w}"
        );
    }
}

#[test]
fn eight_bits_without_a_window_read_as_the_same_image_as_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let img = GrayImage::from_fn(37, 23, |x, y| Luma([((x * 7 + y * 11) % 256) as u8]));
    let png = dir.path().join("x.png");
    img.save(&png).unwrap();
    let dcm = dir.path().join("x.dcm");
    std::fs::write(&dcm, dicom::file_of_gray(&img)).unwrap();
    let want: Vec<f64> = img.pixels().map(|p| p.0[0] as f64 / 255.0).collect();
    assert_levels(&levels(&dcm), &want, "8-bit MONOCHROME2");
    let square = Square::whole(16, Framing::PadEdge);
    assert_eq!(
        to_model_input(&open(&dcm).unwrap(), square),
        to_model_input(&open(&png).unwrap(), square),
        "the model's input of the DICOM and of the PNG"
    );
    let info = open_file(&dcm).unwrap().dicom.unwrap();
    assert_eq!(info.window, "stored range 0..255");
    assert_eq!((info.bits_stored, info.frames), (8, 1));
}

#[test]
fn a_window_maps_values_by_dicoms_linear_function_and_monochrome1_inverts() {
    let dir = tempfile::tempdir().unwrap();
    // center 100, width 51: 0 up to 74.5, 1 above 124.5, (x - 99.5) / 50 + 0.5 between
    let stored = [0, 74, 75, 99, 112, 124, 125, 4000];
    let want = [0.0, 0.0, 0.01, 0.49, 0.75, 0.99, 1.0, 1.0];
    let spec = Spec {
        window: Some((100.0, 51.0)),
        ..row16(&stored)
    };
    let two = write(dir.path(), "m2.dcm", &spec);
    assert_levels(&levels(&two), &want, "MONOCHROME2 windowed");
    let one = write(
        dir.path(),
        "m1.dcm",
        &Spec {
            photometric: "MONOCHROME1",
            ..spec.clone()
        },
    );
    let inverted: Vec<f64> = want.iter().map(|w| 1.0 - w).collect();
    assert_levels(&levels(&one), &inverted, "MONOCHROME1 windowed");
    assert_eq!(
        open_file(&one).unwrap().dicom.unwrap().window,
        "file window 100/51"
    );
}

#[test]
fn the_rescale_comes_before_the_window() {
    let dir = tempfile::tempdir().unwrap();
    // 2 x stored - 1000, windowed at center 0.5, width 201: (x - 0) / 200 + 0.5
    let stored = [400, 450, 500, 520, 560];
    let want = [0.0, 0.0, 0.5, 0.7, 1.0];
    let path = write(
        dir.path(),
        "r.dcm",
        &Spec {
            rescale: Some((2.0, -1000.0)),
            window: Some((0.5, 201.0)),
            ..row16(&stored)
        },
    );
    assert_levels(&levels(&path), &want, "rescaled, then windowed");
}

#[test]
fn without_a_window_deep_values_span_their_central_99_percent() {
    let dir = tempfile::tempdir().unwrap();
    // 1000 values 1000..2000 with 12 stored bits: the 0.5 and 99.5 percentiles are the 6th and
    // the 995th smallest (1005 and 1994); below and above clamp
    let stored: Vec<i32> = (1000..2000).collect();
    let path = write(
        dir.path(),
        "p.dcm",
        &Spec {
            bits_stored: 12,
            ..row16(&stored)
        },
    );
    let want: Vec<f64> = stored
        .iter()
        .map(|&v| ((v as f64 - 1005.0) / 989.0).clamp(0.0, 1.0))
        .collect();
    assert_levels(&levels(&path), &want, "12-bit without a window");
    assert_eq!(
        open_file(&path).unwrap().dicom.unwrap().window,
        "percentiles 0.5-99.5 1005..1994"
    );
}

#[test]
fn signed_samples_are_sign_extended_from_their_stored_bits() {
    let dir = tempfile::tempdir().unwrap();
    // 12 stored bits, signed: 0x0FFB and 0xFFFB are both -5 (the bits above 12 are not the
    // value's); window center 0.5, width 1001: x / 1000 + 0.5
    let path = write(
        dir.path(),
        "s.dcm",
        &Spec {
            bits_stored: 12,
            signed: true,
            window: Some((0.5, 1001.0)),
            ..row16(&[0x0FFB, 0xFFFBu16 as i32, 100, 0x07FF])
        },
    );
    assert_levels(
        &levels(&path),
        &[0.495, 0.495, 0.6, 1.0],
        "12-bit signed, windowed",
    );
}

#[test]
fn a_multi_frame_file_reads_its_first_frame_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "frames.dcm",
        &Spec {
            width: 2,
            height: 1,
            frames: 3,
            values: vec![10, 20, 200, 210, 250, 255],
            ..Spec::default()
        },
    );
    let decoded = open_file(&path).unwrap();
    assert_levels(
        &decoded.image.to_luma32f().into_raw(),
        &[10.0 / 255.0, 20.0 / 255.0],
        "the first frame",
    );
    assert_eq!(decoded.dicom.unwrap().frames, 3);
}

#[test]
fn a_jpeg_compressed_file_decodes_like_the_jpeg_itself() {
    let dir = tempfile::tempdir().unwrap();
    let img = GrayImage::from_fn(48, 40, |x, y| Luma([(40 + x * 3 + y * 2) as u8]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&img)
        .unwrap();
    let path = write(
        dir.path(),
        "baseline.dcm",
        &Spec {
            width: 48,
            height: 40,
            transfer_syntax: dicom::JPEG_BASELINE,
            fragment: Some(jpeg.clone()),
            ..Spec::default()
        },
    );
    let direct = image::load_from_memory(&jpeg).unwrap().to_luma8();
    let got = levels(&path);
    // two JPEG decoders may round an 8-bit level differently
    for (i, (g, d)) in got.iter().zip(direct.pixels()).enumerate() {
        let diff = (g * 255.0 - d.0[0] as f32).abs();
        assert!(diff <= 2.0, "pixel {i}: {g} against the JPEG's {}", d.0[0]);
    }
}

/// Each damaged or unreadable file, and what its error must say.
fn damaged(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let good = Spec {
        width: 8,
        height: 8,
        values: vec![100; 64],
        ..Spec::default()
    };
    let whole = dicom::file(&good);
    let truncated = dir.join("truncated.dcm");
    std::fs::write(&truncated, &whole[..whole.len() - 20]).unwrap();
    let short_pixels = Spec {
        values: vec![100; 40],
        ..good.clone()
    };
    let cases = [
        (
            "no-pixels.dcm",
            Spec {
                with_pixel_data: false,
                ..good.clone()
            },
            "no pixel data",
        ),
        (
            "short.dcm",
            short_pixels,
            "its pixel data holds 40 bytes where 8x8 samples of 8 bits need 64",
        ),
        (
            "huge.dcm",
            Spec {
                width: 30_000,
                ..good.clone()
            },
            "30000x8 is not that of a radiograph",
        ),
        (
            "palette.dcm",
            Spec {
                photometric: "PALETTE COLOR",
                ..good.clone()
            },
            "PALETTE COLOR",
        ),
        (
            "jpeg-ls.dcm",
            Spec {
                transfer_syntax: dicom::JPEG_LS,
                fragment: Some(vec![0xFF, 0xD8, 0xFF, 0xF7, 0, 0]),
                ..good.clone()
            },
            "transfer syntax 1.2.840.10008.1.2.4.80 (JPEG-LS Lossless",
        ),
    ];
    let mut out = vec![(
        truncated,
        "is a damaged DICOM file: its element (7FE0,0010) claims 64 bytes where 44 remain",
    )];
    for (name, spec, why) in cases {
        out.push((write(dir, name, &spec), why));
    }
    out
}

#[test]
fn damaged_files_are_refused_with_their_name_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (path, why) in damaged(dir.path()) {
        let err = format!("{:#}", open(&path).expect_err(&path.display().to_string()));
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(why), "{}: says {why:?}: {err}", path.display());
    }
}

/// A folder as a PACS export leaves it: DICOM files without an ending beside the damaged ones
/// and a note that is not an image.
#[test]
fn predict_reads_dicom_without_an_ending_skips_the_damaged_and_never_prints_the_patient() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::images::class_image(true, 7, 40, 32);
    std::fs::write(dir.path().join("IM000001"), dicom::file_of_gray(&img)).unwrap();
    let frames = Spec {
        width: 4,
        height: 4,
        frames: 2,
        values: (0..32).map(|v| v * 8).collect(),
        ..Spec::default()
    };
    std::fs::write(dir.path().join("IM000002"), dicom::file(&frames)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let broken = damaged(dir.path());
    let o = run(&[
        "predict",
        "--json",
        "--backend",
        "cpu",
        dir.path().to_str().unwrap(),
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "the two readable files: {out}");
    for line in &lines {
        let d = &line["dicom"];
        assert_eq!(d["sop_instance_uid"], dicom::SOP_INSTANCE_UID, "{line}");
        assert_eq!(d["modality"], "DX");
        assert_eq!(d["body_part"], "HAND");
        assert!(line["where"]["x"].is_number(), "{line}");
    }
    assert!(
        err.contains("IM000002 has 2 frames; the first was read"),
        "{err}"
    );
    for (path, _) in &broken {
        assert!(
            err.contains(&format!("skipping {}", path.display())),
            "{} is named: {err}",
            path.display()
        );
    }
    assert!(!err.contains("notes.txt") && !out.contains("notes.txt"));
    for secret in [
        dicom::PATIENT_NAME,
        dicom::PATIENT_ID,
        dicom::PATIENT_BIRTH_DATE,
        "Doe",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed"
        );
    }
}

/// The check: a DICOM made from an X-ray of data/val (8 bits, MONOCHROME2, no window)
/// gets the X-ray's own probability from the shipped model.
#[test]
fn a_dicom_of_a_val_xray_gets_the_xrays_probability() {
    let dir = tempfile::tempdir().unwrap();
    let val = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/val/fractured");
    let mut jpegs: Vec<PathBuf> = std::fs::read_dir(&val)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    jpegs.sort();
    jpegs.truncate(3);
    let mut args = vec!["predict", "--json", "--backend", "cpu"];
    let mut paths = Vec::new();
    for jpeg in &jpegs {
        let gray = open(jpeg).unwrap().to_luma8();
        let dcm = dir.path().join(jpeg.file_stem().unwrap());
        std::fs::write(&dcm, dicom::file_of_gray(&gray)).unwrap();
        paths.push(jpeg.display().to_string());
        paths.push(dcm.display().to_string());
    }
    args.extend(paths.iter().map(String::as_str));
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p: Vec<f64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["probability"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(p.len(), 6);
    for pair in p.chunks(2) {
        assert!(
            (pair[0] - pair[1]).abs() <= 1e-4,
            "JPEG {} and its DICOM {}",
            pair[0],
            pair[1]
        );
    }
}

/// data check lists DICOM by photometric interpretation and depth, and warns when the classes
/// differ; training reads DICOM and its cache keeps no patient data.
#[test]
fn data_check_and_training_read_a_dicom_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (split, offset) in [("train", 0u32), ("val", 100)] {
        for (class, fractured) in [("fractured", true), ("not_fractured", false)] {
            let folder = data.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..4u32 {
                let img = common::images::class_image(
                    fractured,
                    offset + 2 * i + fractured as u32,
                    20,
                    20,
                );
                let spec = Spec {
                    width: 20,
                    height: 20,
                    // the fractured ones stored inverted, as a different machine might
                    photometric: if fractured {
                        "MONOCHROME1"
                    } else {
                        "MONOCHROME2"
                    },
                    values: img
                        .pixels()
                        .map(|p| {
                            if fractured {
                                255 - p.0[0] as i32
                            } else {
                                p.0[0] as i32
                            }
                        })
                        .collect(),
                    ..Spec::default()
                };
                std::fs::write(folder.join(format!("{i}")), dicom::file(&spec)).unwrap();
            }
        }
    }
    let o = run(&["data", "check", data.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("MONOCHROME1 8-bit"), "{out}");
    assert!(
        out.contains("warning: MONOCHROME1 8-bit DICOM differs by 100 points between the classes"),
        "{out}"
    );
    let runs = dir.path().join("runs");
    let o = run(&train_args(
        &data,
        &runs,
        &["--epochs", "1", "--model", "fracturenet"],
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut written = Vec::new();
    for entry in walk(&runs) {
        written.extend(std::fs::read(entry).unwrap());
    }
    assert!(!written.is_empty());
    let text = String::from_utf8_lossy(&written);
    for secret in [
        dicom::PATIENT_NAME,
        dicom::PATIENT_ID,
        dicom::PATIENT_BIRTH_DATE,
    ] {
        assert!(
            !text.contains(secret),
            "{secret} kept in the run folder or its cache"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Cut at every length and with bytes flipped, a file is read or refused, never a panic (a
/// server reads uploads with the same code). A flipped length byte once made the parser allocate
/// up to 4 GB and take seconds before refusing it: lengths are checked first (this test took 71 s
/// without that check, 0.3 s with it).
#[test]
fn damaged_at_every_byte_never_panics() {
    let spec = Spec {
        width: 6,
        height: 5,
        bits_allocated: 16,
        bits_stored: 12,
        window: Some((100.0, 200.0)),
        rescale: Some((1.5, -3.0)),
        values: (0..30).map(|v| v * 97).collect(),
        ..Spec::default()
    };
    let whole = dicom::file(&spec);
    for cut in 0..whole.len() {
        let _ = fracture_cnn::data::dicom::decode(&whole[..cut], "cut");
    }
    let mut refused = 0;
    for at in 132..whole.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bytes = whole.clone();
            bytes[at] ^= flip;
            refused += fracture_cnn::data::dicom::decode(&bytes, "flipped").is_err() as usize;
        }
    }
    assert!(refused > 0, "some flipped bytes make the file unreadable");
}

#[test]
fn implicit_vr_files_read_as_explicit_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        window: Some((100.0, 51.0)),
        ..row16(&[0, 75, 112, 4000])
    };
    let explicit = write(dir.path(), "explicit.dcm", &spec);
    let implicit = write(
        dir.path(),
        "implicit.dcm",
        &Spec {
            transfer_syntax: dicom::IMPLICIT_LE,
            ..spec
        },
    );
    assert_levels(&levels(&implicit), &[0.0, 0.01, 0.75, 1.0], "implicit VR");
    assert_eq!(levels(&implicit), levels(&explicit));
    let info = open_file(&implicit).unwrap().dicom.unwrap();
    assert_eq!(info.body_part.as_deref(), Some("HAND"));
}
