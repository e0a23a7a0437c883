//! A disk cache of decoded, resized images, so that a second run on the same folder starts at
//! once. One file per (split folder, image size) under the run output folder (`runs/.cache/`);
//! an entry is used only while its image file keeps its path, length and modification time.
//! Pixels are stored as the exact f32 values decoding gives, so a cached run repeats an
//! uncached one bit for bit.
//!
//! Format (little-endian): magic `FRCACHE2`, size u32, count u32, then per image: path length
//! u32, path bytes (UTF-8), file length u64, mtime (ns since the epoch) u64, size² f32 values.

use super::folder::Sample;
use super::image::Framing;
use crate::files::write_atomic;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The format's version: 2 since images are decoded upright (EXIF orientation), so that a cache of
/// sideways images is not read.
const MAGIC: &[u8; 8] = b"FRCACHE2";

/// What identifies a file's contents cheaply: its length and modification time.
fn stamp(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some((meta.len(), mtime.as_nanos() as u64))
}

/// The cache file of the images of `split_dir` at `size`.
pub fn file_for(cache_dir: &Path, split_dir: &Path, (size, framing): (usize, Framing)) -> PathBuf {
    let canonical = split_dir
        .canonicalize()
        .unwrap_or_else(|_| split_dir.to_path_buf());
    let key = match framing {
        Framing::Squash => format!("{}|{size}", canonical.display()),
        other => format!("{}|{size}|{}", canonical.display(), other.name()),
    };
    // FNV-1a: a stable name, not a security boundary
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    cache_dir.join(format!("{h:016x}-{size}.bin"))
}

/// Cached pixels by path, for the entries whose files are unchanged. A missing, foreign or damaged
/// cache file reads as empty.
pub fn read(file: &Path, size: usize) -> HashMap<PathBuf, Vec<f32>> {
    let Ok(bytes) = std::fs::read(file) else {
        return HashMap::new();
    };
    parse(&bytes, size).unwrap_or_default()
}

fn parse(bytes: &[u8], size: usize) -> Option<HashMap<PathBuf, Vec<f32>>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    if take(8)? != MAGIC {
        return None;
    }
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    if u32_at(take(4)?) != size {
        return None;
    }
    let count = u32_at(take(4)?);
    let mut out = HashMap::new();
    for _ in 0..count {
        let len = u32_at(take(4)?);
        let path = PathBuf::from(std::str::from_utf8(take(len)?).ok()?);
        let stamp_then = (u64_at(take(8)?), u64_at(take(8)?));
        let pixels: Vec<f32> = take(4 * size * size)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        if stamp(&path) == Some(stamp_then) {
            out.insert(path, pixels);
        }
    }
    Some(out)
}

/// Writes the decoded images (`samples[i]` ↔ `pixels[i]`) as the cache file.
pub fn write(file: &Path, size: usize, entries: &[(&Sample, &[f32])]) -> Result<()> {
    let mut out = Vec::with_capacity(16 + entries.len() * (64 + 4 * size * size));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(size as u32).to_le_bytes());
    let stamped: Vec<_> = entries
        .iter()
        .filter_map(|(s, px)| Some((s, px, stamp(&s.path)?, s.path.to_str()?)))
        .collect();
    out.extend_from_slice(&(stamped.len() as u32).to_le_bytes());
    for (_, px, (len, mtime), path) in stamped {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&mtime.to_le_bytes());
        out.extend(px.iter().flat_map(|v| v.to_le_bytes()));
    }
    write_atomic(file, &out)
}
