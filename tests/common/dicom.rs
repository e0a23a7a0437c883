//! DICOM files the tests make, byte by byte (explicit VR little endian, DICOM PS3.10), so that
//! the reader is checked against the standard's layout and not against the library it uses.

/// Transfer syntaxes the tests write.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
pub const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";
/// Digital X-ray image storage, for presentation.
const DX_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.1.1";

/// What goes into a test file; `Default` is an 8-bit MONOCHROME2 image without a window.
#[derive(Clone, Debug)]
pub struct Spec {
    pub width: u16,
    pub height: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub photometric: &'static str,
    pub samples: u16,
    /// Stored values, one per sample, row by row (frames one after another).
    pub values: Vec<i32>,
    pub frames: u32,
    /// Window Center and Width.
    pub window: Option<(f64, f64)>,
    /// Rescale Slope and Intercept.
    pub rescale: Option<(f64, f64)>,
    pub transfer_syntax: &'static str,
    /// For an encapsulated syntax: the one fragment of the first frame.
    pub fragment: Option<Vec<u8>>,
    pub with_pixel_data: bool,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            width: 1,
            height: 1,
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            photometric: "MONOCHROME2",
            samples: 1,
            values: vec![0],
            frames: 1,
            window: None,
            rescale: None,
            transfer_syntax: EXPLICIT_LE,
            fragment: None,
            with_pixel_data: true,
        }
    }
}

/// The patient a test file names, so that tests can check none of it comes out.
pub const PATIENT_NAME: &str = "Doe^Jane";
pub const PATIENT_ID: &str = "PID-778899";
pub const PATIENT_BIRTH_DATE: &str = "19610704";
pub const SOP_INSTANCE_UID: &str = "1.2.826.0.1.3680043.9.7433.1.42";

/// A data element: tag, VR, value (padded to an even length as the VR says).
fn element(out: &mut Vec<u8>, (group, elem): (u16, u16), vr: &str, value: &[u8]) {
    encode(out, (group, elem), vr, value, false)
}

/// An element, in implicit VR (no VR, a 4-byte length) when `implicit`.
fn encode(out: &mut Vec<u8>, (group, elem): (u16, u16), vr: &str, value: &[u8], implicit: bool) {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == "UI" || vr == "OB" { 0 } else { b' ' });
    }
    out.extend(group.to_le_bytes());
    out.extend(elem.to_le_bytes());
    if implicit {
        out.extend((value.len() as u32).to_le_bytes());
        out.extend(value);
        return;
    }
    out.extend(vr.as_bytes());
    if matches!(vr, "OB" | "OW" | "SQ" | "UN" | "UT") {
        out.extend([0, 0]);
        out.extend((value.len() as u32).to_le_bytes());
    } else {
        out.extend((value.len() as u16).to_le_bytes());
    }
    out.extend(value);
}

fn text(out: &mut Vec<u8>, tag: (u16, u16), vr: &str, value: &str) {
    element(out, tag, vr, value.as_bytes());
}

/// The whole file: preamble, file meta group, data set.
pub fn file(spec: &Spec) -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, (0x0002, 0x0001), "OB", &[0, 1]);
    text(&mut meta, (0x0002, 0x0002), "UI", DX_STORAGE);
    text(&mut meta, (0x0002, 0x0003), "UI", SOP_INSTANCE_UID);
    text(&mut meta, (0x0002, 0x0010), "UI", spec.transfer_syntax);
    text(
        &mut meta,
        (0x0002, 0x0012),
        "UI",
        "1.2.826.0.1.3680043.9.7433.2",
    );
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    element(
        &mut out,
        (0x0002, 0x0000),
        "UL",
        &(meta.len() as u32).to_le_bytes(),
    );
    out.extend(meta);
    out.extend(data_set(spec));
    out
}

fn data_set(spec: &Spec) -> Vec<u8> {
    let implicit = spec.transfer_syntax == IMPLICIT_LE;
    let mut d = Vec::new();
    encode(
        &mut d,
        (0x0008, 0x0016),
        "UI",
        DX_STORAGE.as_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0008, 0x0018),
        "UI",
        SOP_INSTANCE_UID.as_bytes(),
        implicit,
    );
    encode(&mut d, (0x0008, 0x0060), "CS", "DX".as_bytes(), implicit);
    referenced_image(&mut d, implicit);
    encode(
        &mut d,
        (0x0010, 0x0010),
        "PN",
        PATIENT_NAME.as_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0010, 0x0020),
        "LO",
        PATIENT_ID.as_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0010, 0x0030),
        "DA",
        PATIENT_BIRTH_DATE.as_bytes(),
        implicit,
    );
    encode(&mut d, (0x0018, 0x0015), "CS", "HAND".as_bytes(), implicit);
    encode(
        &mut d,
        (0x0028, 0x0002),
        "US",
        &(spec.samples).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0004),
        "CS",
        spec.photometric.as_bytes(),
        implicit,
    );
    if spec.frames > 1 {
        encode(
            &mut d,
            (0x0028, 0x0008),
            "IS",
            spec.frames.to_string().as_bytes(),
            implicit,
        );
    }
    encode(
        &mut d,
        (0x0028, 0x0010),
        "US",
        &(spec.height).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0011),
        "US",
        &(spec.width).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0100),
        "US",
        &(spec.bits_allocated).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0101),
        "US",
        &(spec.bits_stored).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0102),
        "US",
        &(spec.bits_stored - 1).to_le_bytes(),
        implicit,
    );
    encode(
        &mut d,
        (0x0028, 0x0103),
        "US",
        &(spec.signed as u16).to_le_bytes(),
        implicit,
    );
    if let Some((center, width)) = spec.window {
        encode(
            &mut d,
            (0x0028, 0x1050),
            "DS",
            center.to_string().as_bytes(),
            implicit,
        );
        encode(
            &mut d,
            (0x0028, 0x1051),
            "DS",
            width.to_string().as_bytes(),
            implicit,
        );
    }
    if let Some((slope, intercept)) = spec.rescale {
        encode(
            &mut d,
            (0x0028, 0x1052),
            "DS",
            intercept.to_string().as_bytes(),
            implicit,
        );
        encode(
            &mut d,
            (0x0028, 0x1053),
            "DS",
            slope.to_string().as_bytes(),
            implicit,
        );
    }
    if spec.with_pixel_data {
        match &spec.fragment {
            None => encode(
                &mut d,
                (0x7FE0, 0x0010),
                pixel_vr(spec),
                &native_pixels(spec),
                implicit,
            ),
            Some(fragment) => encapsulated(&mut d, fragment),
        }
    }
    d
}

/// A Referenced Image Sequence of undefined length holding one item of defined length, so that
/// every file has a nested data set to read past.
fn referenced_image(out: &mut Vec<u8>, implicit: bool) {
    let mut item = Vec::new();
    encode(
        &mut item,
        (0x0008, 0x1155),
        "UI",
        SOP_INSTANCE_UID.as_bytes(),
        implicit,
    );
    out.extend([0x08, 0x00, 0x40, 0x11]);
    if !implicit {
        out.extend(b"SQ\0\0");
    }
    out.extend(u32::MAX.to_le_bytes());
    out.extend([0xFE, 0xFF, 0x00, 0xE0]);
    out.extend((item.len() as u32).to_le_bytes());
    out.extend(item);
    out.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
}

fn pixel_vr(spec: &Spec) -> &'static str {
    if spec.bits_allocated > 8 {
        "OW"
    } else {
        "OB"
    }
}

/// Stored values as the bits allocated lay them out (two's complement when signed).
fn native_pixels(spec: &Spec) -> Vec<u8> {
    spec.values
        .iter()
        .flat_map(|&v| match spec.bits_allocated {
            8 => vec![v as u8],
            _ => (v as u16).to_le_bytes().to_vec(),
        })
        .collect()
}

/// Pixel data of undefined length: an empty offset table, one fragment, the delimiter.
fn encapsulated(out: &mut Vec<u8>, fragment: &[u8]) {
    let mut fragment = fragment.to_vec();
    if fragment.len() % 2 == 1 {
        fragment.push(0);
    }
    out.extend([0xE0, 0x7F, 0x10, 0x00]);
    out.extend(b"OB\0\0");
    out.extend(u32::MAX.to_le_bytes());
    let item = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend([0xFE, 0xFF, 0x00, 0xE0]);
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(bytes);
    };
    item(out, &[]);
    item(out, &fragment);
    out.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
}

/// An 8-bit MONOCHROME2 file of a gray image, no window: what a converter makes of a JPEG.
pub fn file_of_gray(img: &image::GrayImage) -> Vec<u8> {
    file(&Spec {
        width: img.width() as u16,
        height: img.height() as u16,
        values: img.pixels().map(|p| p.0[0] as i32).collect(),
        ..Spec::default()
    })
}
