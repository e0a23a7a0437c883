//! Rebuilds the small data set shipped in `data/` from the full FracAtlas copy beside the project:
//!
//!     cargo run --release --example make_data_subset -- ../shared/data/fracatlas data
//!
//! From each split and class it takes a fixed number of images (the first ones in the order of a
//! hash of their file names, so the choice is reproducible and unrelated to file order), converts
//! them to 8-bit gray (which also removes the gray-vs-RGB format cue that differs between the
//! classes) and shrinks them to at most 160 pixels on the longer side, keeping the aspect ratio.

use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// (split, class, images to take)
const PLAN: &[(&str, &str, usize)] = &[
    ("train", "fractured", 100),
    ("train", "not_fractured", 200),
    ("val", "fractured", 25),
    ("val", "not_fractured", 75),
];
const LONG_SIDE: u32 = 160;

fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (src, dst) = match args.as_slice() {
        [_, src, dst] => (PathBuf::from(src), PathBuf::from(dst)),
        _ => anyhow::bail!("usage: make_data_subset SOURCE_DIR DEST_DIR"),
    };
    for &(split, class, take) in PLAN {
        let dir = src.join(split).join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort_by_key(|p| fnv(&p.file_name().unwrap().to_string_lossy()));
        let out_dir = dst.join(split).join(class);
        std::fs::create_dir_all(&out_dir)?;
        let mut written = 0;
        for path in files {
            if written == take {
                break;
            }
            let Ok(img) = image::open(&path) else {
                eprintln!("skipping unreadable {}", path.display());
                continue;
            };
            let gray = img
                .resize(LONG_SIDE, LONG_SIDE, FilterType::Lanczos3)
                .to_luma8();
            let name = Path::new(path.file_name().unwrap()).with_extension("jpg");
            let mut out = std::fs::File::create(out_dir.join(name))?;
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&gray)?;
            written += 1;
        }
        println!("{split}/{class}: {written} images");
    }
    Ok(())
}
