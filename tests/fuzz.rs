//! The readers of user files fed random and mutated bytes: the checkpoint reader, the model-spec
//! parser and the image loader must answer Ok or a clear error, never panic or hang. Seeded, so a
//! failure repeats.

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::checkpoint;
use fracture_cnn::nn::{Model, ModelSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

/// A copy of `good` with one of several kinds of damage.
fn mutate(good: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut b = good.to_vec();
    match rng.gen_range(0..5) {
        // flip a few bytes, mostly near the start, where headers are
        0 | 1 => {
            for _ in 0..rng.gen_range(1..8) {
                let reach = if rng.gen_bool(0.7) {
                    b.len().min(256)
                } else {
                    b.len()
                };
                let i = rng.gen_range(0..reach.max(1));
                if let Some(v) = b.get_mut(i) {
                    *v = rng.gen();
                }
            }
        }
        // cut short
        2 => b.truncate(rng.gen_range(0..b.len().max(1))),
        // extreme values written over a run of bytes (sizes, lengths, dimensions)
        3 => {
            let i = rng.gen_range(0..b.len().max(1));
            let v = [0x00, 0xff, 0x7f][rng.gen_range(0..3)];
            for x in b.iter_mut().skip(i).take(rng.gen_range(1..9)) {
                *x = v;
            }
        }
        // random bytes of a random length
        _ => b = (0..rng.gen_range(0..512)).map(|_| rng.gen()).collect(),
    }
    b
}

/// Runs `check` on `n` mutations of `good`, each within a time bound.
fn fuzz(good: &[u8], n: usize, seed: u64, mut check: impl FnMut(&[u8])) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let bytes = mutate(good, &mut rng);
        let t = Instant::now();
        check(&bytes);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "an input of {} bytes took {:?}",
            bytes.len(),
            t.elapsed()
        );
    }
}

#[test]
fn the_checkpoint_reader_survives_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ModelSpec::load("fracturenet")
        .unwrap()
        .with_image_size(16)
        .unwrap();
    let model = Model::new(&Cpu::new(), &spec, 1).unwrap();
    let info = checkpoint::CheckpointInfo {
        spec,
        threshold: 0.5,
        epoch: 3,
        progress: None,
    };
    let good_path = dir.path().join("good.safetensors");
    checkpoint::save(&Cpu::new(), &model, &info, Vec::new(), &good_path).unwrap();
    let good = std::fs::read(&good_path).unwrap();
    let path = dir.path().join("damaged.safetensors");
    let mut refused = 0;
    fuzz(&good, 400, 1, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        match checkpoint::load(&Cpu::new(), &path) {
            Ok(_) => {}
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains("damaged.safetensors"), "{e}");
                refused += 1;
            }
        }
    });
    assert!(refused > 200, "only {refused} of 400 damaged files refused");
}

#[test]
fn the_model_spec_parser_survives_damaged_text() {
    let good = std::fs::read("models/xray-bone-classifier.toml").unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let mut parsed = 0;
    fuzz(&good, 1500, 3, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(spec) = ModelSpec::parse(&text) {
            parsed += 1;
            spec.param_counts().unwrap();
            let _ = spec.with_image_size(rng.gen_range(0..1 << 20));
        }
    });
    // numbers of every size in every field
    for _ in 0..500 {
        let mut n = || match rng.gen_range(0..4) {
            0 => 0u64,
            1 => rng.gen_range(1..8),
            2 => rng.gen::<u32>() as u64,
            _ => rng.gen(),
        };
        let text = format!(
            "name = \"f\"\ninput = [{}, {}, {}]\nlayers = [\n\
             {{ type = \"conv2d\", filters = {}, kernel = {}, stride = {} }},\n\
             {{ type = \"maxpool\", size = {} }}, {{ type = \"flatten\" }},\n\
             {{ type = \"dense\", units = {} }}, {{ type = \"dense\", units = 1 }} ]",
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            n()
        );
        if let Ok(spec) = ModelSpec::parse(&text) {
            spec.param_counts().unwrap();
        }
    }
    // MobileNet's layer types: its spec damaged, and with numbers of every size
    let mobilenet = ModelSpec::load("mobilenet").unwrap().to_toml().unwrap();
    fuzz(mobilenet.as_bytes(), 500, 4, |bytes| {
        if let Ok(spec) = ModelSpec::parse(&String::from_utf8_lossy(bytes)) {
            spec.param_counts().unwrap();
        }
    });
    let mut parsed_numbers = 0;
    for _ in 0..500 {
        // mostly small numbers, so that some specs are valid and get through to the size checks
        let mut n = || match rng.gen_range(0..8) {
            0 => 0u64,
            1 => rng.gen::<u32>() as u64,
            2 => rng.gen(),
            _ => rng.gen_range(1..12),
        };
        let text = format!(
            "name = \"m\"\ninput = [{}, {}, {}]\nlayers = [\n\
             {{ type = \"depthwise_conv2d\", kernel = [{}, {}], stride = {}, padding = \"valid\" }},\n\
             {{ type = \"depthwise_conv2d\", kernel = {}, stride = {} }},\n\
             {{ type = \"global_avgpool\" }}, {{ type = \"dense\", units = 1 }} ]",
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            n()
        );
        if let Ok(spec) = ModelSpec::parse(&text) {
            parsed_numbers += 1;
            spec.param_counts().unwrap();
        }
    }
    assert!(
        parsed > 0 && parsed_numbers > 0,
        "no mutation parsed: the mutations are too coarse"
    );
}

fn write_sample_images(dir: &Path) -> Vec<std::path::PathBuf> {
    let img = image::GrayImage::from_fn(23, 17, |x, y| image::Luma([(x * 11 + y * 7) as u8]));
    ["png", "jpg", "bmp", "gif", "tiff", "webp"]
        .iter()
        .map(|ext| {
            let p = dir.join(format!("sample.{ext}"));
            // each format with a pixel layout its encoder takes
            let colour = image::DynamicImage::ImageLuma8(img.clone());
            match *ext {
                "jpg" | "webp" => colour.to_rgb8().save(&p).unwrap(),
                "gif" => colour.to_rgba8().save(&p).unwrap(),
                _ => img.save(&p).unwrap(),
            }
            p
        })
        .collect()
}

#[test]
fn the_image_loader_survives_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    for (k, sample) in write_sample_images(dir.path()).iter().enumerate() {
        let good = std::fs::read(sample).unwrap();
        let ext = sample.extension().unwrap().to_string_lossy().into_owned();
        let path = dir.path().join(format!("damaged.{ext}"));
        fuzz(&good, 250, 10 + k as u64, |bytes| {
            std::fs::write(&path, bytes).unwrap();
            match fracture_cnn::data::image::load_gray(
                &path,
                8,
                fracture_cnn::data::Framing::PadReflect,
            ) {
                Ok(px) => assert!(px.len() == 64 && px.iter().all(|v| (0.0..=1.0).contains(v))),
                Err(e) => assert!(format!("{e:#}").contains("damaged"), "{e:#}"),
            }
        });
    }
}
