//! Decoding an X-ray into the model's input: one gray channel in [0, 1], resized to a square.

use anyhow::{Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Luma};
use std::path::Path;

/// Decodes any format the `image` crate reads (JPEG, PNG, BMP, TIFF, ...; 8 or 16 bits; gray,
/// RGB, RGBA or palette), converts it to gray and resizes it to `size × size` (row-major).
///
/// The aspect ratio is not kept (as in Keras' `flow_from_directory`): X-rays come portrait and
/// landscape, and padding instead would mark each image's orientation with black bars.
pub fn load_gray(path: &Path, size: usize) -> Result<Vec<f32>> {
    Ok(to_gray_square(&open(path)?, size))
}

/// Decodes an image file, refusing headers that claim more pixels than any radiograph has.
pub fn open(path: &Path) -> Result<DynamicImage> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    reader.limits(decode_limits());
    reader
        .decode()
        .with_context(|| format!("{} is not a readable image", path.display()))
}

/// Large enough for any radiograph (detector panels are a few thousand pixels a side, and a
/// 16-bit RGBA 20000 × 12000 scan still fits), small enough that a corrupt header claiming a
/// gigapixel image is refused instead of exhausting memory.
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(2 << 30);
    limits
}

/// Gray in [0, 1], resized to `size × size`. 16-bit images keep their precision.
pub fn to_gray_square(img: &DynamicImage, size: usize) -> Vec<f32> {
    let gray: ImageBuffer<Luma<f32>, Vec<f32>> = img.to_luma32f();
    let s = size as u32;
    let resized = if gray.dimensions() == (s, s) {
        gray
    } else {
        image::imageops::resize(&gray, s, s, FilterType::Triangle)
    };
    resized
        .into_raw()
        .into_iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect()
}
