//! Where the fractures are: the outlines and boxes radiologists drew, in COCO's object-detection
//! format (the de facto standard, which FracAtlas ships), and a per-image table of groups (body
//! part, view, hardware) to judge figures by.
//!
//! A COCO file is JSON with `images` (`id`, `file_name`, `width`, `height`) and `annotations`
//! (`image_id`, `bbox` as `[x, y, width, height]`, and `segmentation`, a list of outline polygons
//! `[x1, y1, x2, y2, ...]`), in the pixels of each file as a viewer shows it (after its EXIF
//! orientation). It is read with serde: the format is a handful of fields, and no COCO crate
//! checks what matters here (boxes inside their image, polygons that enclose something).
//!
//! Images are matched to data files by the path in `file_name`, as the end of the file's path
//! (`IMG0000019.jpg`, or `val/fractured/img000.png` where names repeat across folders), so the
//! same file serves a data folder wherever it lies. An image without an entry has no outline (not
//! fractured, or not outlined).

use super::image::Framing;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A rectangle in an image's pixels: its top-left corner and its size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Rect {
    /// Intersection over union with `other` (0 when either is empty).
    pub fn iou(&self, other: &Rect) -> f32 {
        let w = (self.x + self.width).min(other.x + other.width) - self.x.max(other.x);
        let h = (self.y + self.height).min(other.y + other.height) - self.y.max(other.y);
        let inter = w.max(0.0) * h.max(0.0);
        let union = self.width * self.height + other.width * other.height - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    /// Distance from the point `(x, y)` to the rectangle (0 inside it).
    pub fn distance(&self, (x, y): (f32, f32)) -> f32 {
        let dx = (self.x - x).max(x - (self.x + self.width)).max(0.0);
        let dy = (self.y - y).max(y - (self.y + self.height)).max(0.0);
        dx.hypot(dy)
    }

    /// The rectangle with both axes scaled.
    pub fn scaled(&self, sx: f32, sy: f32) -> Rect {
        Rect {
            x: self.x * sx,
            y: self.y * sy,
            width: self.width * sx,
            height: self.height * sy,
        }
    }
}

/// One outlined fracture.
#[derive(Clone, Debug, PartialEq)]
pub struct Fracture {
    /// The annotation's id in the file.
    pub id: u64,
    pub bbox: Rect,
    /// Outline polygons, each of 3 points or more, `(x, y)` in pixels.
    pub polygons: Vec<Vec<(f32, f32)>>,
}

/// The fractures outlined on one image, in the pixels of a `width × height` image.
#[derive(Clone, Debug, PartialEq)]
pub struct Outlines {
    pub width: u32,
    pub height: u32,
    pub fractures: Vec<Fracture>,
}

impl Outlines {
    /// The outlines in the pixels of the image as decoded (`w × h`): the file may have been
    /// resized since it was outlined.
    pub fn scaled_to(&self, w: u32, h: u32) -> Outlines {
        if (w, h) == (self.width, self.height) {
            return self.clone();
        }
        let (sx, sy) = (w as f32 / self.width as f32, h as f32 / self.height as f32);
        Outlines {
            width: w,
            height: h,
            fractures: self
                .fractures
                .iter()
                .map(|f| Fracture {
                    id: f.id,
                    bbox: f.bbox.scaled(sx, sy),
                    polygons: f
                        .polygons
                        .iter()
                        .map(|p| p.iter().map(|&(x, y)| (x * sx, y * sy)).collect())
                        .collect(),
                })
                .collect(),
        }
    }

    /// The outlines rasterised in the `side × side` square that `framing` makes of the image
    /// (row-major, 1 inside a fracture, 0 elsewhere and in the framing's fill): the training
    /// target of a fracture map, laid out as the image's pixels are.
    pub fn framed_mask(&self, side: usize, framing: Framing) -> Vec<f32> {
        let (left, top, cw, ch) = framing.content(self.width, self.height);
        let polygons: Vec<&Vec<(f32, f32)>> =
            self.fractures.iter().flat_map(|f| &f.polygons).collect();
        let mut mask = Vec::with_capacity(side * side);
        for r in 0..side {
            for c in 0..side {
                let fx = ((c as f32 + 0.5) / side as f32 - left) / cw;
                let fy = ((r as f32 + 0.5) / side as f32 - top) / ch;
                let p = (fx * self.width as f32, fy * self.height as f32);
                let on = (0.0..1.0).contains(&fx)
                    && (0.0..1.0).contains(&fy)
                    && polygons.iter().any(|poly| inside(poly, p));
                mask.push(f32::from(u8::from(on)));
            }
        }
        mask
    }

    /// The boxes of the fractures.
    pub fn boxes(&self) -> Vec<Rect> {
        self.fractures.iter().map(|f| f.bbox).collect()
    }

    /// The outlines rasterised on a `cols × rows` grid laid over the image (row-major): a cell is
    /// inside when its centre is inside some polygon (even-odd rule, as SVG and COCO's own
    /// rasteriser fill a polygon).
    pub fn mask(&self, cols: usize, rows: usize) -> Vec<bool> {
        let (cw, ch) = (
            self.width as f32 / cols as f32,
            self.height as f32 / rows as f32,
        );
        let polygons: Vec<&Vec<(f32, f32)>> =
            self.fractures.iter().flat_map(|f| &f.polygons).collect();
        let mut mask = Vec::with_capacity(cols * rows);
        for r in 0..rows {
            for c in 0..cols {
                let p = ((c as f32 + 0.5) * cw, (r as f32 + 0.5) * ch);
                mask.push(polygons.iter().any(|poly| inside(poly, p)));
            }
        }
        mask
    }
}

/// Whether `(x, y)` is inside `polygon` by the even-odd rule: a ray to the right crosses its
/// edges an odd number of times.
pub fn inside(polygon: &[(f32, f32)], (x, y): (f32, f32)) -> bool {
    let mut odd = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let ((xi, yi), (xj, yj)) = (polygon[i], polygon[j]);
        if (yi > y) != (yj > y) && x < xi + (y - yi) / (yj - yi) * (xj - xi) {
            odd = !odd;
        }
        j = i;
    }
    odd
}

/// Every image's outlines, by file name, and the file they came from.
#[derive(Clone, Debug)]
pub struct Annotations {
    pub file: PathBuf,
    /// By file name: the entries of that name, each with its `file_name` as given.
    by_name: HashMap<String, Vec<(PathBuf, Outlines)>>,
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    bbox: [f32; 4],
    #[serde(default)]
    segmentation: Segmentation,
}

/// Polygons, or a run-length mask (which this reader refuses by name).
#[derive(Deserialize)]
#[serde(untagged)]
enum Segmentation {
    Polygons(Vec<Vec<f32>>),
    RunLength(serde::de::IgnoredAny),
}

impl Default for Segmentation {
    fn default() -> Self {
        Segmentation::Polygons(Vec::new())
    }
}

/// Rounding in the tools that draw outlines puts a box a fraction of a pixel past the edge.
const EDGE_SLACK: f32 = 0.5;

impl Annotations {
    /// Reads and checks a COCO file.
    pub fn read(file: &Path) -> Result<Annotations> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the annotations {}", file.display()))?;
        Self::parse(&text, file)
    }

    /// Parses and checks COCO JSON; errors name `file` and the entry at fault.
    pub fn parse(text: &str, file: &Path) -> Result<Annotations> {
        let at = file.display();
        let coco: CocoFile = serde_json::from_str(text)
            .with_context(|| format!("{at} is not a COCO annotation file"))?;
        let mut by_id: BTreeMap<u64, (String, Outlines)> = BTreeMap::new();
        for img in coco.images {
            if img.width == 0 || img.height == 0 {
                bail!(
                    "{at}: image {} ({}) has a size of {}x{}",
                    img.id,
                    img.file_name,
                    img.width,
                    img.height
                );
            }
            let name = img.file_name.clone();
            let outlines = Outlines {
                width: img.width,
                height: img.height,
                fractures: Vec::new(),
            };
            if by_id.insert(img.id, (name, outlines)).is_some() {
                bail!("{at}: image id {} appears twice", img.id);
            }
        }
        for a in coco.annotations {
            let Some((name, outlines)) = by_id.get_mut(&a.image_id) else {
                bail!(
                    "{at}: annotation {} is of image {}, which is not among the file's images",
                    a.id,
                    a.image_id
                );
            };
            let what = format!("{at}: annotation {} (image {name})", a.id);
            let fracture = check_annotation(&a, outlines, &what)?;
            outlines.fractures.push(fracture);
        }
        let mut by_name: HashMap<String, Vec<(PathBuf, Outlines)>> = HashMap::new();
        for (id, (name, outlines)) in by_id {
            let same = by_name.entry(file_key(Path::new(&name))).or_default();
            if same.iter().any(|(p, _)| p == Path::new(&name)) {
                bail!("{at}: two images are named {name} (the second is id {id})");
            }
            same.push((PathBuf::from(name), outlines));
        }
        Ok(Annotations {
            file: file.to_path_buf(),
            by_name,
        })
    }

    /// The annotation file of a data folder: `--annotations` if given, else the one COCO file
    /// (`*.json`) in `annotations/` beside the folder's splits (in `dir` or, when `dir` is a
    /// split, in its parent). None when there is none.
    pub fn find(dir: &Path, given: Option<&Path>) -> Result<Option<Annotations>> {
        if let Some(file) = given {
            return Self::read(file).map(Some);
        }
        for folder in [Some(dir), dir.parent()].into_iter().flatten() {
            let folder = folder.join("annotations");
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            let mut coco: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            coco.sort();
            match coco.as_slice() {
                [] => continue,
                [one] => return Self::read(one).map(Some),
                more => bail!(
                    "{} holds {} JSON files ({}): choose one with --annotations FILE",
                    folder.display(),
                    more.len(),
                    more.iter()
                        .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Ok(None)
    }

    /// The outlines of the image file at `path`, if it has any: the entry whose `file_name` is
    /// the end of `path` (the longest, when several are).
    pub fn get(&self, path: &Path) -> Option<&Outlines> {
        self.by_name
            .get(&file_key(path))?
            .iter()
            .filter(|(name, _)| path.ends_with(name))
            .max_by_key(|(name, _)| name.components().count())
            .map(|(_, outlines)| outlines)
    }

    /// Images with an entry.
    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Files are matched by name, whatever their folder.
fn file_key(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// One annotation as a [`Fracture`], or the reason it is wrong.
fn check_annotation(a: &CocoAnnotation, img: &Outlines, what: &str) -> Result<Fracture> {
    let [x, y, w, h] = a.bbox;
    if a.bbox.iter().any(|v| !v.is_finite()) {
        bail!(
            "{what}: its box {:?} holds a value that is not a number",
            a.bbox
        );
    }
    if w <= 0.0 || h <= 0.0 {
        bail!("{what}: its box {:?} has a negative or zero size", a.bbox);
    }
    let (iw, ih) = (img.width as f32, img.height as f32);
    if x < -EDGE_SLACK || y < -EDGE_SLACK || x + w > iw + EDGE_SLACK || y + h > ih + EDGE_SLACK {
        bail!(
            "{what}: its box {:?} lies outside the image ({}x{})",
            a.bbox,
            img.width,
            img.height
        );
    }
    let polygons = match &a.segmentation {
        Segmentation::Polygons(p) => p,
        Segmentation::RunLength(_) => bail!(
            "{what}: its segmentation is a run-length mask; this reader takes outline polygons"
        ),
    };
    let mut outline = Vec::with_capacity(polygons.len());
    for (k, p) in polygons.iter().enumerate() {
        if p.len() % 2 != 0 || p.len() < 6 {
            bail!(
                "{what}: polygon {k} has {} coordinates; an outline needs x, y pairs of at least \
                 3 points",
                p.len()
            );
        }
        if p.iter().any(|v| !v.is_finite()) {
            bail!("{what}: polygon {k} holds a value that is not a number");
        }
        outline.push(p.chunks_exact(2).map(|c| (c[0], c[1])).collect());
    }
    Ok(Fracture {
        id: a.id,
        bbox: Rect {
            x,
            y,
            width: w,
            height: h,
        },
        polygons: outline,
    })
}

/// The groups each image belongs to, from a CSV table with a row per image (FracAtlas'
/// `dataset.csv`): the first column names the image file; a column of 0 and 1 is a group of the
/// images with 1 (`hand`, `frontal`, `hardware`), any other column a group per value
/// (`fracture_count=2`). The `fractured` column, the label itself, is left out.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    pub file: PathBuf,
    /// The groups in the table's column order.
    pub names: Vec<String>,
    by_image: HashMap<String, Vec<usize>>,
}

impl Groups {
    pub fn read(file: &Path) -> Result<Groups> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the groups table {}", file.display()))?;
        Self::parse(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Groups> {
        let at = file.display();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .with_context(|| format!("{at} is empty"))?
            .split(',')
            .map(str::trim)
            .collect();
        if header.len() < 2 {
            bail!("{at}: the header has no group columns (image, then one column a group)");
        }
        let rows: Vec<Vec<&str>> = lines
            .map(|l| l.split(',').map(str::trim).collect())
            .collect();
        for (i, row) in rows.iter().enumerate() {
            if row.len() != header.len() {
                bail!(
                    "{at}: line {} has {} fields, the header {}",
                    i + 2,
                    row.len(),
                    header.len()
                );
            }
        }
        let binary = |c: usize| rows.iter().all(|r| r[c] == "0" || r[c] == "1");
        let mut names = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut by_image: HashMap<String, Vec<usize>> = HashMap::new();
        for c in 1..header.len() {
            if header[c].eq_ignore_ascii_case("fractured") {
                continue;
            }
            let is_binary = binary(c);
            for row in &rows {
                let name = match (is_binary, row[c]) {
                    (true, "1") => header[c].to_string(),
                    (true, _) => continue,
                    (false, v) => format!("{}={v}", header[c]),
                };
                let next = index.len();
                let g = *index.entry(name.clone()).or_insert_with(|| {
                    names.push(name);
                    next
                });
                by_image
                    .entry(file_key(Path::new(row[0])))
                    .or_default()
                    .push(g);
            }
        }
        Ok(Groups {
            file: file.to_path_buf(),
            names,
            by_image,
        })
    }

    /// The groups (indices into `names`) of the image file at `path`.
    pub fn of(&self, path: &Path) -> &[usize] {
        self.by_image
            .get(&file_key(path))
            .map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Annotations> {
        Annotations::parse(text, Path::new("ann.json"))
    }

    const GOOD: &str = r#"{"images": [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "b.jpg", "width": 40, "height": 40}],
      "annotations": [
        {"id": 7, "image_id": 1, "bbox": [10, 5, 20, 10],
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
        {"id": 8, "image_id": 1, "bbox": [60, 20, 10, 10], "segmentation": []}],
      "categories": [{"id": 1, "name": "fracture"}]}"#;

    #[test]
    fn a_coco_file_is_read_by_file_name() {
        let a = parse(GOOD).unwrap();
        assert_eq!(a.len(), 2);
        let o = a.get(Path::new("some/folder/a.jpg")).unwrap();
        assert_eq!((o.width, o.height), (100, 50));
        assert_eq!(o.fractures.len(), 2);
        assert_eq!(o.fractures[0].polygons[0][2], (30.0, 15.0));
        assert_eq!(
            o.fractures[1].bbox,
            Rect {
                x: 60.0,
                y: 20.0,
                width: 10.0,
                height: 10.0
            }
        );
        assert!(a.get(Path::new("b.jpg")).unwrap().fractures.is_empty());
        assert!(a.get(Path::new("c.jpg")).is_none());
        assert!(
            a.get(Path::new("xa.jpg")).is_none(),
            "a whole name, not its end"
        );
        // names with folders tell apart files of the same name
        let foldered = GOOD
            .replace("\"a.jpg\"", "\"val/fractured/x.png\"")
            .replace("\"b.jpg\"", "\"train/fractured/x.png\"");
        let a = parse(&foldered).unwrap();
        let val = a.get(Path::new("/data/val/fractured/x.png")).unwrap();
        assert_eq!(val.fractures.len(), 2);
        let train = a.get(Path::new("data/train/fractured/x.png")).unwrap();
        assert!(train.fractures.is_empty());
        assert!(a.get(Path::new("data/val/not_fractured/x.png")).is_none());
        // resized to half: every coordinate halves
        let half = o.scaled_to(50, 25);
        assert_eq!(half.fractures[0].bbox.width, 10.0);
        assert_eq!(half.fractures[0].polygons[0][1], (15.0, 2.5));
    }

    #[test]
    fn bad_annotations_are_refused_naming_file_and_entry() {
        let with = |annotation: &str| {
            GOOD.replace(
                r#"{"id": 8, "image_id": 1, "bbox": [60, 20, 10, 10], "segmentation": []}"#,
                annotation,
            )
        };
        for (annotation, expected) in [
            (
                r#"{"id": 8, "image_id": 9, "bbox": [1, 1, 2, 2]}"#,
                "ann.json: annotation 8 is of image 9, which is not among the file's images",
            ),
            (
                r#"{"id": 8, "image_id": 1, "bbox": [90, 20, 20, 10]}"#,
                "ann.json: annotation 8 (image a.jpg): its box [90.0, 20.0, 20.0, 10.0] lies \
                 outside the image (100x50)",
            ),
            (
                r#"{"id": 8, "image_id": 1, "bbox": [1, 1, -2, 2]}"#,
                "ann.json: annotation 8 (image a.jpg): its box [1.0, 1.0, -2.0, 2.0] has a \
                 negative or zero size",
            ),
            (
                r#"{"id": 8, "image_id": 1, "bbox": [1, 1, 2, 2], "segmentation": [[1, 1, 2, 2]]}"#,
                "ann.json: annotation 8 (image a.jpg): polygon 0 has 4 coordinates; an outline \
                 needs x, y pairs of at least 3 points",
            ),
            (
                r#"{"id": 8, "image_id": 1, "bbox": [1, 1, 2, 2], "segmentation": {"counts": [1], "size": [2, 2]}}"#,
                "ann.json: annotation 8 (image a.jpg): its segmentation is a run-length mask",
            ),
        ] {
            let err = format!("{:#}", parse(&with(annotation)).unwrap_err());
            assert!(err.starts_with(expected), "{err}");
        }
        let err = format!("{:#}", parse("{\"images\": [}").unwrap_err());
        assert!(
            err.starts_with("ann.json is not a COCO annotation file:"),
            "{err}"
        );
        let twice = GOOD.replace("\"b.jpg\"", "\"a.jpg\"");
        let err = format!("{:#}", parse(&twice).unwrap_err());
        assert!(err.contains("two images are named a.jpg"), "{err}");
    }

    #[test]
    fn a_polygon_rasterises_to_the_cells_whose_centres_it_holds() {
        // a right triangle (0,0), (8,0), (0,8) on an 8 x 8 image, one cell a pixel: the cell
        // (c, r) has its centre (c + 0.5, r + 0.5) inside when c + r + 1 < 8, i.e. c + r <= 6
        let o = Outlines {
            width: 8,
            height: 8,
            fractures: vec![Fracture {
                id: 0,
                bbox: Rect {
                    x: 0.0,
                    y: 0.0,
                    width: 8.0,
                    height: 8.0,
                },
                polygons: vec![vec![(0.0, 0.0), (8.0, 0.0), (0.0, 8.0)]],
            }],
        };
        let mask = o.mask(8, 8);
        let expected: Vec<bool> = (0..64).map(|i| i % 8 + i / 8 <= 6).collect();
        assert_eq!(mask, expected);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 28);
        // a 4 x 2 grid over the same image: cells of 2 x 4 pixels, centres (1 + 2c, 2 + 4r)
        let coarse = o.mask(4, 2);
        assert_eq!(
            coarse,
            vec![true, true, true, false, true, false, false, false]
        );
        // framed: squashed into 8 x 8 it is the same mask; an 8 x 4 image with the same
        // triangle scaled (0,0), (8,0), (0,4) padded into 8 x 8 fills rows 2..6, the rest 0
        let squashed = o.framed_mask(8, Framing::Squash);
        assert_eq!(
            squashed,
            expected
                .iter()
                .map(|&m| f32::from(u8::from(m)))
                .collect::<Vec<_>>()
        );
        let wide = o.scaled_to(8, 4);
        let padded = wide.framed_mask(8, Framing::PadEdge);
        for r in 0..8 {
            for c in 0..8 {
                // inside the image: row r - 2 of the 8 x 4 image, the triangle x/8 + y/4 < 1
                let y = r as f32 - 2.0 + 0.5;
                let want = (2..6).contains(&r) && (c as f32 + 0.5) / 8.0 + y / 4.0 < 1.0;
                assert_eq!(padded[r * 8 + c], f32::from(u8::from(want)), "({c}, {r})");
            }
        }
    }

    #[test]
    fn rectangles_measure_overlap_and_distance() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        let a = r(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&r(5.0, 0.0, 10.0, 10.0)), 50.0 / 150.0);
        assert_eq!(a.iou(&r(20.0, 0.0, 1.0, 1.0)), 0.0);
        assert_eq!(a.distance((5.0, 5.0)), 0.0);
        assert_eq!(a.distance((13.0, 14.0)), 5.0);
    }

    #[test]
    fn a_groups_table_names_binary_columns_and_values() {
        let g = Groups::parse(
            "image_id,hand,leg,fractured,fracture_count\n\
             a.jpg,1,0,1,2\n\
             b.jpg,0,1,0,0\n",
            Path::new("dataset.csv"),
        )
        .unwrap();
        assert_eq!(
            g.names,
            ["hand", "leg", "fracture_count=2", "fracture_count=0"]
        );
        let of = |f: &str| -> Vec<&str> {
            g.of(Path::new(f))
                .iter()
                .map(|&i| g.names[i].as_str())
                .collect()
        };
        assert_eq!(of("x/a.jpg"), vec!["hand", "fracture_count=2"]);
        assert_eq!(of("b.jpg"), vec!["leg", "fracture_count=0"]);
        let err = Groups::parse("image_id,hand\na.jpg\n", Path::new("t.csv")).unwrap_err();
        assert_eq!(err.to_string(), "t.csv: line 2 has 1 fields, the header 2");
    }
}
