//! Small image folders written by tests, so that tests need nothing outside the repository.

use image::{GrayImage, Luma};
use std::path::Path;

/// A `w × h` gray image whose brightness tells its class: bright (≈200) for fractured and dark
/// (≈60) for not fractured, with a seeded texture so that no two are alike.
pub fn class_image(fractured: bool, seed: u32, w: u32, h: u32) -> GrayImage {
    let base: i32 = if fractured { 200 } else { 60 };
    GrayImage::from_fn(w, h, |x, y| {
        let n = fracture_cnn::backend::hash::lowbias32(seed ^ (x * 131 + y * 7919)) % 40;
        Luma([(base + n as i32 - 20).clamp(0, 255) as u8])
    })
}

/// Writes `root/<split>/<class>/img<i>.png` with `per_class` images of each class per split.
pub fn write_separable_dataset(root: &Path, per_class: usize, size: u32) {
    for (split, offset) in [("train", 0u32), ("val", 1000)] {
        for (class, fractured) in [("fractured", true), ("not_fractured", false)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class as u32 {
                let seed = offset + i * 2 + fractured as u32;
                class_image(fractured, seed, size + i % 3, size)
                    .save(dir.join(format!("img{i:03}.png")))
                    .unwrap();
            }
        }
    }
}
