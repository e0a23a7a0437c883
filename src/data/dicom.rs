//! Reading DICOM, the format hospitals store radiographs in (PACS exports, `.dcm` files or files
//! without an extension): recognised by content (the `DICM` magic after a 128-byte preamble),
//! parsed and decompressed by dicom-rs (`dicom-object`, `dicom-pixeldata`), and turned into the
//! display levels a radiologist would see, in this order:
//!
//! 1. **stored values**: the first frame, `Bits Stored` bits of each sample (sign-extended when
//!    `Pixel Representation` says signed);
//! 2. **rescale**: `slope × stored + intercept` (Rescale Slope and Intercept; 1 and 0 when absent);
//! 3. **VOI window**: the file's first Window Center and Width, with its VOI LUT Function (LINEAR,
//!    LINEAR_EXACT or SIGMOID, as DICOM PS3.3 C.11.2.1.2 defines them) to [0, 1]. Without a window:
//!    8 stored bits or fewer are display levels already (as in a JPEG), so their whole range maps
//!    to [0, 1]; deeper values map their 0.5–99.5 percentile range to [0, 1], clamped;
//! 4. **MONOCHROME1 inverted** (1 − level), so that bone is bright as in MONOCHROME2 and in our
//!    training X-rays;
//! 5. then the same gray [0, 1] pipeline as any image (kept to 16 bits, so an 8-bit level `v`
//!    comes out exactly as a JPEG's `v / 255`).
//!
//! Patient name, id and birth date are never read into anything this module returns.

use anyhow::{anyhow, bail, Context, Result};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    PhotometricInterpretation, PixelDecoder, PixelRepresentation, VoiLutFunction, WindowLevel,
};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use image::{DynamicImage, ImageBuffer, Luma};
use serde::Serialize;
use std::path::Path;

/// Where the magic `DICM` sits: after the 128-byte preamble.
const MAGIC_AT: usize = 128;
/// Bytes to read of a file to tell whether it is DICOM.
pub const HEAD_LEN: usize = MAGIC_AT + 4;
/// The largest side accepted, as for every other image format.
pub const MAX_SIDE: u32 = 20_000;

/// Whether a file starting with `head` is DICOM (Part 10: preamble, then `DICM`).
pub fn is_dicom(head: &[u8]) -> bool {
    head.get(MAGIC_AT..HEAD_LEN) == Some(b"DICM")
}

/// Whether the file at `path` is DICOM, by its content.
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; HEAD_LEN];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|_| is_dicom(&head))
}

/// What identifies a DICOM image without personal data, and how its pixels were stored and
/// displayed. Printed by `predict --json` and `/api/predict` as `"dicom"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DicomInfo {
    pub sop_instance_uid: Option<String>,
    pub modality: Option<String>,
    pub body_part: Option<String>,
    /// MONOCHROME1, MONOCHROME2 or RGB.
    pub photometric_interpretation: String,
    pub bits_stored: u16,
    /// Frames in the file; only the first is read.
    pub frames: u32,
    /// How values became levels: "file window C/W", or the range used without one.
    pub window: String,
}

/// How stored values become display levels (steps 2–4 of the module's pipeline).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Display {
    pub slope: f64,
    pub intercept: f64,
    /// The file's first window and its function, if it has a usable one.
    pub window: Option<(WindowLevel, VoiLutFunction)>,
    pub bits_stored: u16,
    pub signed: bool,
    pub monochrome1: bool,
}

impl Display {
    /// Display levels in [0, 1] of `stored` values, and a description of the window used.
    pub fn levels(&self, stored: &[f32]) -> (Vec<f32>, String) {
        let rescale = |v: f32| self.slope * v as f64 + self.intercept;
        let (level, how): (Box<dyn Fn(f64) -> f64>, String) = match self.window {
            Some((w, function)) => (
                Box::new(move |x| voi(x, w, function)),
                format!("file window {}/{}", w.center, w.width),
            ),
            None => {
                let (lo, hi, how) = self.range_without_window(stored);
                let span = (hi - lo).max(f64::MIN_POSITIVE);
                (
                    Box::new(move |x| ((x - lo) / span).clamp(0.0, 1.0)),
                    format!("{how} {lo}..{hi}"),
                )
            }
        };
        let levels = stored
            .iter()
            .map(|&v| {
                let y = level(rescale(v));
                (if self.monochrome1 { 1.0 - y } else { y }) as f32
            })
            .collect();
        (levels, how)
    }

    /// The rescaled range mapped to [0, 1] when the file has no window: the whole range of 8
    /// stored bits or fewer, else the 0.5–99.5 percentiles.
    fn range_without_window(&self, stored: &[f32]) -> (f64, f64, &'static str) {
        let (lo, hi, how) = if self.bits_stored <= 8 {
            let n = self.bits_stored as i32;
            let (lo, hi) = if self.signed {
                (-(2f64.powi(n - 1)), 2f64.powi(n - 1) - 1.0)
            } else {
                (0.0, 2f64.powi(n) - 1.0)
            };
            (lo, hi, "stored range")
        } else {
            let mut sorted = stored.to_vec();
            sorted.sort_by(f32::total_cmp);
            let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64;
            (at(0.005), at(0.995), "percentiles 0.5-99.5")
        };
        // a negative slope swaps the ends (percentiles of stored values are those of rescaled
        // ones, as the rescale is monotonic)
        let (a, b) = (
            self.slope * lo + self.intercept,
            self.slope * hi + self.intercept,
        );
        (a.min(b), a.max(b), how)
    }
}

/// The VOI LUT function `function` of window `w` at `x`, in [0, 1] (PS3.3 C.11.2.1.2).
pub fn voi(x: f64, w: WindowLevel, function: VoiLutFunction) -> f64 {
    let (c, width) = (w.center, w.width);
    match function {
        VoiLutFunction::Linear => {
            let (c, span) = (c - 0.5, width - 1.0);
            if x <= c - span / 2.0 {
                0.0
            } else if x > c + span / 2.0 {
                1.0
            } else {
                (x - c) / span + 0.5
            }
        }
        VoiLutFunction::LinearExact => ((x - c) / width + 0.5).clamp(0.0, 1.0),
        VoiLutFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / width).exp()),
    }
}

/// Decodes a DICOM file's first frame into display levels (see the module's pipeline), as a
/// 16-bit gray image, with what identifies it. `name` names the file in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<(DynamicImage, DicomInfo)> {
    Dicom::parse(bytes, name)?.decode()
}

/// A parsed DICOM file whose attributes say it is an image we can read; its pixels not yet
/// decoded (so that a server can refuse one too large before decoding it).
pub struct Dicom {
    obj: Object,
    image: Image,
    name: String,
}

impl Dicom {
    pub fn parse(bytes: &[u8], name: &str) -> Result<Dicom> {
        if !is_dicom(bytes) {
            bail!("{name} is not DICOM: no 'DICM' after its 128-byte preamble");
        }
        lengths_fit(bytes).with_context(|| format!("{name} is a damaged DICOM file"))?;
        let obj = OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .from_reader(bytes)
            .map_err(|e| anyhow!("{name} is a damaged DICOM file: {}", chain(&e)))?;
        let image =
            Image::of(&obj).with_context(|| format!("{name} cannot be read as an X-ray"))?;
        Ok(Dicom {
            obj,
            image,
            name: name.to_string(),
        })
    }

    /// Width and height of its frames.
    pub fn size(&self) -> (u32, u32) {
        (self.image.columns, self.image.rows)
    }

    /// The first frame's display levels as a 16-bit gray image, and what identifies it.
    pub fn decode(&self) -> Result<(DynamicImage, DicomInfo)> {
        self.image
            .decode(&self.obj)
            .with_context(|| format!("{}: its pixels cannot be decoded", self.name))
    }
}

/// What holds the elements being scanned by [`lengths_fit`].
#[derive(Clone, Copy, PartialEq)]
enum Holder {
    /// A data set (the file's, or a sequence item's): elements.
    DataSet,
    /// A sequence: items, each a data set.
    Sequence,
    /// Encapsulated pixel data: items, each a fragment of bytes.
    Fragments,
}

const UNDEFINED: u32 = u32::MAX;

/// The value representations DICOM defines (PS3.5 6.2); a parser reads another as a long value.
const KNOWN_VRS: [&[u8; 2]; 34] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

/// Checks that every element's declared length fits in the bytes that follow it. dicom-rs
/// allocates a value's declared length before reading it, so one damaged length byte (or a
/// hostile upload) would cost gigabytes and seconds before the file is refused. Scans the little-
/// endian syntaxes, implicit and explicit VR, into sequences and items; deflated and big-endian
/// data sets are left to the parser.
fn lengths_fit(bytes: &[u8]) -> Result<()> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let mut at = HEAD_LEN;
    let mut implicit = false;
    let mut stack: Vec<(Holder, Option<usize>)> = vec![(Holder::DataSet, None)];
    while at + 8 <= bytes.len() {
        while stack.len() > 1
            && stack
                .last()
                .is_some_and(|(_, end)| end.is_some_and(|e| at >= e))
        {
            stack.pop();
        }
        let holder = stack.last().map_or(Holder::DataSet, |h| h.0);
        let (group, element) = (u16_at(at), u16_at(at + 2));
        let in_meta = group == 0x0002;
        if group == 0xFFFE {
            // items and delimiters: a tag and a 4-byte length, never a VR
            let len = u32_at(at + 4);
            at += 8;
            match element {
                0xE000 if holder == Holder::Sequence => {
                    let end = match len {
                        UNDEFINED => None,
                        _ => Some(at + fits(len, at, bytes.len(), (group, element))?),
                    };
                    stack.push((Holder::DataSet, end));
                }
                0xE000 => at += fits(len, at, bytes.len(), (group, element))?,
                _ => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                }
            }
            continue;
        }
        let (vr, len, header) = if implicit && !in_meta {
            let vr = StandardDataDictionary
                .by_tag(dicom_core::Tag(group, element))
                .map(|e| e.vr().relaxed());
            (vr.map_or(*b"UN", |v| v.to_bytes()), u32_at(at + 4), 8)
        } else {
            let vr = [bytes[at + 4], bytes[at + 5]];
            if !KNOWN_VRS.contains(&&vr) {
                bail!(
                    "its element ({group:04X},{element:04X}) has no known value representation \
                     ({:?})",
                    String::from_utf8_lossy(&vr)
                );
            }
            if matches!(
                &vr,
                b"OB"
                    | b"OD"
                    | b"OF"
                    | b"OL"
                    | b"OV"
                    | b"OW"
                    | b"SQ"
                    | b"SV"
                    | b"UC"
                    | b"UN"
                    | b"UR"
                    | b"UT"
                    | b"UV"
            ) {
                if at + 12 > bytes.len() {
                    break;
                }
                (vr, u32_at(at + 8), 12)
            } else {
                (vr, u16_at(at + 6) as u32, 8)
            }
        };
        at += header;
        if len == UNDEFINED {
            let is_pixels = (group, element) == (0x7FE0, 0x0010);
            let kind = if is_pixels {
                Holder::Fragments
            } else {
                Holder::Sequence
            };
            stack.push((kind, None));
        } else if &vr == b"SQ" {
            let size = fits(len, at, bytes.len(), (group, element))?;
            stack.push((Holder::Sequence, Some(at + size)));
        } else {
            let size = fits(len, at, bytes.len(), (group, element))?;
            if (group, element) == (0x0002, 0x0010) {
                let uid = String::from_utf8_lossy(&bytes[at..at + size]);
                let uid = uid.trim_end_matches(['\0', ' ']);
                match uid {
                    "1.2.840.10008.1.2" => implicit = true,
                    "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.2" => return Ok(()),
                    _ => {}
                }
            }
            at += size;
        }
    }
    Ok(())
}

/// `len` as a size, if that many bytes remain after `at`.
fn fits(len: u32, at: usize, total: usize, (group, element): (u16, u16)) -> Result<usize> {
    let remain = total.saturating_sub(at);
    if len as usize > remain {
        bail!(
            "its element ({group:04X},{element:04X}) claims {len} bytes where {remain} remain \
             (a damaged length, or a file cut short)"
        );
    }
    Ok(len as usize)
}

/// The attributes that say how to read the pixels, checked before decoding any.
struct Image {
    rows: u32,
    columns: u32,
    samples: u16,
    bits_allocated: u16,
    bits_stored: u16,
    photometric: String,
    frames: u32,
}

type Object = FileDicomObject<InMemDicomObject>;

impl Image {
    fn of(obj: &Object) -> Result<Image> {
        if obj.get(tags::PIXEL_DATA).is_none() {
            bail!(
                "it has no pixel data (7FE0,0010): a report or a structured document, not an image"
            );
        }
        let number = |tag, what: &str| -> Result<u32> {
            let text = text(obj, tag).ok_or_else(|| anyhow!("it has no {what}"))?;
            text.parse()
                .map_err(|_| anyhow!("its {what} is not a number: {text:?}"))
        };
        let image = Image {
            rows: number(tags::ROWS, "Rows")?,
            columns: number(tags::COLUMNS, "Columns")?,
            samples: number(tags::SAMPLES_PER_PIXEL, "Samples per Pixel").unwrap_or(1) as u16,
            bits_allocated: number(tags::BITS_ALLOCATED, "Bits Allocated")? as u16,
            bits_stored: number(tags::BITS_STORED, "Bits Stored")? as u16,
            photometric: text(obj, tags::PHOTOMETRIC_INTERPRETATION)
                .ok_or_else(|| anyhow!("it has no Photometric Interpretation"))?,
            frames: text(obj, tags::NUMBER_OF_FRAMES)
                .and_then(|t| t.parse().ok())
                .unwrap_or(1),
        };
        image.check()?;
        Ok(image)
    }

    fn check(&self) -> Result<()> {
        let (w, h) = (self.columns, self.rows);
        if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
            bail!("its size {w}x{h} is not that of a radiograph (1 to {MAX_SIDE} pixels a side)");
        }
        if !matches!(self.bits_allocated, 8 | 16) {
            bail!(
                "{} bits allocated per sample: only 8 and 16 are read",
                self.bits_allocated
            );
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            bail!(
                "{} bits stored in {} allocated",
                self.bits_stored,
                self.bits_allocated
            );
        }
        match (self.photometric.as_str(), self.samples) {
            ("MONOCHROME1" | "MONOCHROME2", 1) | ("RGB" | "YBR_FULL_422" | "YBR_FULL", 3) => Ok(()),
            (pi, n) => bail!(
                "photometric interpretation {pi} with {n} samples per pixel cannot be converted \
                 to gray (MONOCHROME1, MONOCHROME2 and RGB can)"
            ),
        }
    }

    fn decode(&self, obj: &Object) -> Result<(DynamicImage, DicomInfo)> {
        let uid = obj.meta().transfer_syntax().trim_end_matches('\0');
        let ts = TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| anyhow!("its transfer syntax {uid} is not one DICOM defines"))?;
        if !ts.can_decode_all() {
            bail!(
                "its transfer syntax {uid} ({}) is not one this build decodes: export the study \
                 uncompressed, or as JPEG, JPEG 2000, RLE or deflate",
                ts.name()
            );
        }
        if ts.is_codec_free() {
            self.check_native_length(obj)?;
        }
        let px = obj
            .decode_pixel_data_frame(0)
            .map_err(|e| anyhow!("transfer syntax {uid} ({}): {}", ts.name(), chain(&e)))?;
        let bytes = px.frame_data(0).map_err(|e| anyhow!("{}", chain(&e)))?;
        let signed = px.pixel_representation() == PixelRepresentation::Signed;
        let n = self.rows as usize * self.columns as usize;
        let width = self.bits_allocated as usize / 8;
        // the decoder may hand back a colour frame as RGB whatever the file said
        let samples = px.samples_per_pixel() as usize;
        if bytes.len() < n * samples * width {
            bail!(
                "its pixel data holds {} bytes where {}x{} samples need {}",
                bytes.len(),
                self.columns,
                self.rows,
                n * samples * width
            );
        }
        let stored = stored_values(
            &bytes[..n * samples * width],
            self.bits_stored,
            signed,
            width,
        );
        if samples != 1 && px.photometric_interpretation() != &PhotometricInterpretation::Rgb {
            bail!(
                "its colour samples are {}, not RGB: only MONOCHROME1, MONOCHROME2 and RGB \
                 (or compressed colour the decoder turns into RGB) are converted to gray",
                px.photometric_interpretation()
            );
        }
        let (levels, how) = if samples == 1 {
            self.display(&px, signed).levels(&stored)
        } else {
            (luma(&stored, self.bits_stored), "RGB to gray".to_string())
        };
        let info = DicomInfo {
            sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
            modality: text(obj, tags::MODALITY),
            body_part: text(obj, tags::BODY_PART_EXAMINED),
            photometric_interpretation: self.photometric.clone(),
            bits_stored: self.bits_stored,
            frames: self.frames,
            window: how,
        };
        let quantised = levels
            .iter()
            .map(|&v| (v * 65535.0).round() as u16)
            .collect();
        let buffer =
            ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(self.columns, self.rows, quantised)
                .expect("one level per pixel");
        Ok((DynamicImage::ImageLuma16(buffer), info))
    }

    /// Uncompressed pixel data must hold every sample of the first frame.
    fn check_native_length(&self, obj: &Object) -> Result<()> {
        let Some(pixels) = obj
            .get(tags::PIXEL_DATA)
            .and_then(|e| e.value().primitive())
        else {
            return Ok(());
        };
        let held = pixels.to_bytes().len();
        let need = self.rows as usize
            * self.columns as usize
            * self.samples as usize
            * (self.bits_allocated as usize / 8);
        if held < need {
            bail!(
                "its pixel data holds {held} bytes where {}x{} samples of {} bits need {need}",
                self.columns,
                self.rows,
                self.bits_allocated
            );
        }
        Ok(())
    }

    fn display(&self, px: &dicom_pixeldata::DecodedPixelData, signed: bool) -> Display {
        let rescale = px.rescale().ok().and_then(|r| r.first().copied());
        let function = px
            .voi_lut_function()
            .ok()
            .flatten()
            .and_then(|f| f.first().copied())
            .unwrap_or_default();
        // a window of no width (or a broken one) says nothing usable: use the range instead
        let window = px
            .window()
            .ok()
            .flatten()
            .and_then(|w| w.first().copied())
            .filter(|w| w.center.is_finite() && w.width.is_finite() && w.width >= 1.0);
        Display {
            slope: rescale.map_or(1.0, |r| r.slope),
            intercept: rescale.map_or(0.0, |r| r.intercept),
            window: window.map(|w| (w, function)),
            bits_stored: self.bits_stored,
            signed,
            monochrome1: self.photometric == "MONOCHROME1",
        }
    }
}

/// Samples of `width` bytes (native order, as decoded), `bits` of each kept, sign-extended when
/// `signed`.
fn stored_values(bytes: &[u8], bits: u16, signed: bool, width: usize) -> Vec<f32> {
    let shift = 32 - bits as u32;
    bytes
        .chunks_exact(width)
        .map(|b| {
            let raw = match width {
                1 => b[0] as u32,
                _ => u16::from_ne_bytes([b[0], b[1]]) as u32,
            };
            if signed {
                (((raw << shift) as i32) >> shift) as f32
            } else {
                ((raw << shift) >> shift) as f32
            }
        })
        .collect()
}

/// Gray levels of RGB samples of `bits` bits (the image crate's weights, as for a colour JPEG).
fn luma(rgb: &[f32], bits: u16) -> Vec<f32> {
    let max = 2f32.powi(bits as i32) - 1.0;
    rgb.chunks_exact(3)
        .map(|p| ((0.2126 * p[0] + 0.7152 * p[1] + 0.0722 * p[2]) / max).clamp(0.0, 1.0))
        .collect()
}

/// A text attribute, trimmed of DICOM's padding; `None` when absent or empty.
fn text(obj: &Object, tag: dicom_core::Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_string())
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
