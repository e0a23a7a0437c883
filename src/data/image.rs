//! Decoding an X-ray into the model's input: one gray channel in [0, 1], resized to a square.

use anyhow::{Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Luma};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How an X-ray of any shape becomes the model's square input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Resized to the square, the aspect ratio not kept (Keras' `flow_from_directory`): nothing
    /// is added, but thin bones of a portrait X-ray come out wider.
    #[default]
    Squash,
    /// Resized with its aspect ratio kept, the long side filling the square, the rest filled by
    /// repeating the edge pixels outwards.
    PadEdge,
    /// As `pad-edge`, the rest filled with the image mirrored at its edges.
    PadReflect,
}

impl Framing {
    pub fn name(self) -> &'static str {
        match self {
            Framing::Squash => "squash",
            Framing::PadEdge => "pad-edge",
            Framing::PadReflect => "pad-reflect",
        }
    }

    /// Where an image of `w × h` lands in the square, as fractions of its side:
    /// (left, top, width, height).
    pub fn content(self, w: u32, h: u32) -> (f32, f32, f32, f32) {
        match self {
            Framing::Squash => (0.0, 0.0, 1.0, 1.0),
            Framing::PadEdge | Framing::PadReflect => {
                let long = w.max(h) as f32;
                let (cw, ch) = (w as f32 / long, h as f32 / long);
                ((1.0 - cw) / 2.0, (1.0 - ch) / 2.0, cw, ch)
            }
        }
    }
}

/// Decodes any format the `image` crate reads (JPEG, PNG, BMP, TIFF, ...; 8 or 16 bits; gray,
/// RGB, RGBA or palette), converts it to gray and frames it in `size × size` (row-major).
pub fn load_gray(path: &Path, size: usize, framing: Framing) -> Result<Vec<f32>> {
    Ok(to_gray_square(&open(path)?, size, framing))
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

/// Gray in [0, 1], framed in `size × size` by `framing`. 16-bit images keep their precision.
pub fn to_gray_square(img: &DynamicImage, size: usize, framing: Framing) -> Vec<f32> {
    let gray: ImageBuffer<Luma<f32>, Vec<f32>> = img.to_luma32f();
    let (w0, h0) = gray.dimensions();
    let s = size as u32;
    let (w, h) = match framing {
        Framing::Squash => (s, s),
        Framing::PadEdge | Framing::PadReflect => {
            let long = w0.max(h0) as f32;
            let fit = |side: u32| ((side as f32 * s as f32 / long).round() as u32).clamp(1, s);
            (fit(w0), fit(h0))
        }
    };
    let resized = if (w0, h0) == (w, h) {
        gray
    } else {
        image::imageops::resize(&gray, w, h, FilterType::Triangle)
    };
    let (w, h) = (w as usize, h as usize);
    let (left, top) = ((size - w) / 2, (size - h) / 2);
    let src = resized.into_raw();
    // the source index of a square's row or column: inside, the image; outside, its edge
    // repeated, or the image mirrored about its edge (reflection without repeating the edge)
    let fold = |i: usize, offset: usize, n: usize| -> usize {
        let i = i as isize - offset as isize;
        match framing {
            Framing::PadReflect if n > 1 => {
                let period = 2 * (n as isize - 1);
                let r = i.rem_euclid(period);
                (if r < n as isize { r } else { period - r }) as usize
            }
            _ => i.clamp(0, n as isize - 1) as usize,
        }
    };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        let row = fold(y, top, h) * w;
        for x in 0..size {
            out.push(src[row + fold(x, left, w)].clamp(0.0, 1.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 × 2 (wide) gray image with values 0..8 / 8.
    fn wide() -> DynamicImage {
        let img = image::GrayImage::from_fn(4, 2, |x, y| Luma([(32 * (y * 4 + x)) as u8]));
        DynamicImage::ImageLuma8(img)
    }

    #[test]
    fn framings_squash_or_keep_the_aspect_and_fill_the_rest() {
        let v = |k: u32| (32 * k) as f32 / 255.0;
        // the same size: squash changes nothing
        let same = to_gray_square(
            &DynamicImage::ImageLuma8(image::GrayImage::from_fn(4, 4, |x, y| {
                Luma([(x + 4 * y) as u8])
            })),
            4,
            Framing::Squash,
        );
        assert_eq!(same.len(), 16);
        assert_eq!(same[5], 5.0 / 255.0);
        // 4 x 2 in a 4 x 4 square, kept: rows 1 and 2 are the image, rows 0 and 3 the fill
        let edge = to_gray_square(&wide(), 4, Framing::PadEdge);
        let row = |img: &[f32], r: usize| img[4 * r..4 * r + 4].to_vec();
        assert_eq!(row(&edge, 1), (0..4).map(v).collect::<Vec<_>>());
        assert_eq!(row(&edge, 2), (4..8).map(v).collect::<Vec<_>>());
        assert_eq!(row(&edge, 0), row(&edge, 1), "the top edge repeated");
        assert_eq!(row(&edge, 3), row(&edge, 2), "the bottom edge repeated");
        let mirror = to_gray_square(&wide(), 4, Framing::PadReflect);
        assert_eq!(
            row(&mirror, 0),
            row(&mirror, 2),
            "mirrored about the top row"
        );
        assert_eq!(
            row(&mirror, 3),
            row(&mirror, 1),
            "mirrored about the bottom row"
        );
        assert_eq!(Framing::PadEdge.content(4, 2), (0.0, 0.25, 1.0, 0.5));
        assert_eq!(Framing::Squash.content(4, 2), (0.0, 0.0, 1.0, 1.0));
    }
}
