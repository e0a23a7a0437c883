//! Decoding an X-ray into the model's input: one gray channel in [0, 1], resized to a square.

use super::dicom::{self, DicomInfo};
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

/// What the model sees of an X-ray: framed by `framing` in a square of [`Square::framed_side`],
/// of which the model's input is a `side × side` window. With `crop` below 1 the framed square is
/// larger than the input: training takes a random window of it (a random crop at full
/// resolution), judging its centre.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Square {
    /// Side of the model's input.
    pub side: usize,
    pub framing: Framing,
    /// The input's side as a fraction of the framed square's, from
    /// `nn::spec::MIN_CROP` to 1.
    pub crop: f32,
}

impl Square {
    /// The whole framed square as the input (no crop).
    pub fn whole(side: usize, framing: Framing) -> Square {
        Square {
            side,
            framing,
            crop: 1.0,
        }
    }

    /// Side of the framed square the input is cut from (`side` without a crop).
    pub fn framed_side(&self) -> usize {
        (self.side as f32 / self.crop).round().max(self.side as f32) as usize
    }

    /// The framing's name, and the window when there is a crop ("squash, the centre 192 of 219").
    pub fn describe(&self) -> String {
        match self.framed_side() {
            framed if framed == self.side => self.framing.name().to_string(),
            framed => format!(
                "{}, the centre {} of {framed}",
                self.framing.name(),
                self.side
            ),
        }
    }

    /// Where an image of `w × h` lands in the model's input, as fractions of its side (left, top,
    /// width, height); beyond [0, 1] where the centre window cuts it.
    pub fn content(&self, w: u32, h: u32) -> (f32, f32, f32, f32) {
        let (left, top, cw, ch) = self.framing.content(w, h);
        let c = self.side as f32 / self.framed_side() as f32;
        let margin = (1.0 - c) / 2.0;
        ((left - margin) / c, (top - margin) / c, cw / c, ch / c)
    }
}

/// The model's input of `img`: framed, then the centre window of the framed square.
pub fn to_model_input(img: &DynamicImage, square: Square) -> Vec<f32> {
    let framed = square.framed_side();
    let pixels = to_gray_square(img, framed, square.framing);
    if framed == square.side {
        return pixels;
    }
    let offset = (framed - square.side) / 2;
    let mut input = vec![0.0; square.side * square.side];
    copy_window(&pixels, (framed, square.side), (offset, offset), &mut input);
    input
}

/// Copies into `out` the `side × side` window of a `framed × framed` image whose top-left corner
/// is `(x, y)`.
pub fn copy_window(
    pixels: &[f32],
    (framed, side): (usize, usize),
    (x, y): (usize, usize),
    out: &mut [f32],
) {
    for (row, dst) in out.chunks_exact_mut(side.max(1)).enumerate() {
        let start = (y + row) * framed + x;
        dst.copy_from_slice(&pixels[start..start + side]);
    }
}

/// Decodes any format the `image` crate reads (JPEG, PNG, BMP, TIFF, ...; 8 or 16 bits; gray,
/// RGB, RGBA or palette) or DICOM, converts it to gray and frames it in `size × size`
/// (row-major).
pub fn load_gray(path: &Path, size: usize, framing: Framing) -> Result<Vec<f32>> {
    Ok(to_gray_square(&open(path)?, size, framing))
}

/// An image file decoded upright, and what its file says about it.
pub struct Decoded {
    pub image: DynamicImage,
    /// The file format: "jpeg", "png", ..., "dicom".
    pub format: String,
    /// The pixel layout as stored: "L8", "Rgb8", "L16", ...
    pub stored: String,
    /// What a DICOM file says about itself (no personal data).
    pub dicom: Option<DicomInfo>,
}

/// Decodes an image file upright (see [`decode_upright`]), or a DICOM file (by content,
/// whatever its name; see [`super::dicom`]), refusing headers that claim more pixels than any
/// radiograph has.
pub fn open(path: &Path) -> Result<DynamicImage> {
    Ok(open_file(path)?.image)
}

/// [`open`], with what the file says about the image.
pub fn open_file(path: &Path) -> Result<Decoded> {
    if dicom::is_dicom_file(path) {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return decode_dicom(&bytes, &path.display().to_string());
    }
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    reader.limits(decode_limits());
    let format = reader
        .format()
        .map_or("unknown".into(), |f| format!("{f:?}").to_lowercase());
    let (image, stored) = decode_upright_stored(reader)
        .with_context(|| format!("{} is not a readable image", path.display()))?;
    Ok(Decoded {
        image,
        format,
        stored: format!("{stored:?}"),
        dicom: None,
    })
}

/// A DICOM file's image (the bytes of the whole file; `name` names it in errors).
pub fn decode_dicom(bytes: &[u8], name: &str) -> Result<Decoded> {
    let (image, info) = dicom::decode(bytes, name)?;
    Ok(Decoded {
        stored: dicom_layout(&info).into(),
        image,
        format: "dicom".into(),
        dicom: Some(info),
    })
}

/// The layout a DICOM's samples compare with among other formats' ("L8", "L16", "Rgb8").
fn dicom_layout(info: &DicomInfo) -> &'static str {
    match (info.photometric_interpretation.as_str(), info.bits_stored) {
        ("RGB", b) if b <= 8 => "Rgb8",
        ("RGB", _) => "Rgb16",
        (_, b) if b <= 8 => "L8",
        _ => "L16",
    }
}

/// Decodes with the reader's limits, then turns the image as its EXIF orientation tag says, so
/// that it is seen as a viewer shows it, and as radiologists outlined it (FracAtlas' coordinates
/// are in that orientation). A camera or a scanner may store the pixels sideways and set the tag
/// instead of turning them; read without it, 24 of FracAtlas' files come out on their side.
pub fn decode_upright<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> image::ImageResult<DynamicImage> {
    Ok(decode_upright_stored(reader)?.0)
}

/// [`decode_upright`], and the colour type as the file stores it (`L8`, `Rgb8`, `L16`, ...).
pub fn decode_upright_stored<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> image::ImageResult<(DynamicImage, image::ExtendedColorType)> {
    use image::ImageDecoder;
    let mut decoder = reader.into_decoder()?;
    let orientation = decoder.orientation()?;
    let stored = decoder.original_color_type();
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok((img, stored))
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

    /// `jpeg` with an EXIF APP1 segment after its start marker whose only entry is the
    /// orientation `tag` (big-endian TIFF, one IFD entry of type SHORT).
    fn with_exif_orientation(jpeg: &[u8], tag: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend(1u16.to_be_bytes()); // one entry
        tiff.extend(0x0112u16.to_be_bytes()); // Orientation
        tiff.extend(3u16.to_be_bytes()); // SHORT
        tiff.extend(1u32.to_be_bytes()); // one value
        tiff.extend(tag.to_be_bytes());
        tiff.extend([0, 0]); // the value field's other half
        tiff.extend(0u32.to_be_bytes()); // no next IFD
        let payload = [&b"Exif\0\0"[..], &tiff].concat();
        let length = (payload.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend([0xFF, 0xE1]);
        out.extend(length.to_be_bytes());
        out.extend(payload);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn every_exif_orientation_is_decoded_upright() {
        // stored: 64 x 32, four flat quadrants (large, so JPEG keeps their levels)
        let (w, h) = (64u32, 32u32);
        let level = |x: u32, y: u32| [20u8, 90, 160, 230][(2 * (y * 2 / h) + x * 2 / w) as usize];
        let stored = image::GrayImage::from_fn(w, h, |x, y| Luma([level(x, y)]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&stored)
            .unwrap();
        // where each displayed pixel (x, y) comes from in the stored image, as the EXIF
        // standard defines the eight tags
        let source = |tag: u16, x: u32, y: u32| match tag {
            1 => (x, y),
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            8 => (w - 1 - y, x),
            _ => unreachable!(),
        };
        let dir = tempfile::tempdir().unwrap();
        for tag in 1..=8u16 {
            let path = dir.path().join(format!("tag{tag}.jpg"));
            std::fs::write(&path, with_exif_orientation(&jpeg, tag)).unwrap();
            let shown = open(&path).unwrap().to_luma8();
            let (dw, dh) = if tag >= 5 { (h, w) } else { (w, h) };
            assert_eq!(shown.dimensions(), (dw, dh), "tag {tag}: dimensions");
            // the centre of each displayed quadrant
            for (x, y) in [(dw / 4, dh / 4), (3 * dw / 4, dh / 4), (dw / 4, 3 * dh / 4)] {
                let (sx, sy) = source(tag, x, y);
                let got = shown.get_pixel(x, y).0[0] as i32;
                let want = level(sx, sy) as i32;
                assert!(
                    (got - want).abs() <= 6,
                    "tag {tag} at ({x}, {y}): {got} != {want}"
                );
            }
        }
    }

    #[test]
    fn a_crop_judges_the_centre_window_of_a_larger_framed_square() {
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(30, 20, |x, y| {
            Luma([(x * 7 + y * 3) as u8])
        }));
        let square = Square {
            side: 8,
            framing: Framing::PadEdge,
            crop: 0.8,
        };
        assert_eq!(square.framed_side(), 10);
        assert_eq!(square.describe(), "pad-edge, the centre 8 of 10");
        assert_eq!(Square::whole(8, Framing::PadEdge).describe(), "pad-edge");
        let framed = to_gray_square(&img, 10, Framing::PadEdge);
        let input = to_model_input(&img, square);
        assert_eq!(input.len(), 64);
        for (y, row) in input.chunks(8).enumerate() {
            assert_eq!(row, &framed[(y + 1) * 10 + 1..(y + 1) * 10 + 9], "row {y}");
        }
        // 30 x 20 fills rows 1/6..5/6 of the framed square; seen from the window of 0.1..0.9
        let (left, top, w, h) = square.content(30, 20);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(close(left, -0.125) && close(w, 1.25), "{left} {w}");
        assert!(
            close(top, (1.0 / 6.0 - 0.1) / 0.8) && close(h, (2.0 / 3.0) / 0.8),
            "{top} {h}"
        );
    }
}
