//! Where is the fracture: a map of fracture evidence over the model's input, laid back over the
//! X-ray, turned into the point and the boxes `predict` reports and `eval` measures.
//!
//! A map is `side × side` cells over the model's square input (Grad-CAM's 6 × 6 for resnet at
//! 192). The square holds the X-ray as its [`Square`] framed it, so a cell's place in the file's
//! own pixels comes from [`Square::content`]. Between cell centres the map is read bilinearly.
//! - The **point** is the hottest cell, refined to the heat-weighted centroid of it and its eight
//!   neighbours (a cell of a 6 × 6 map is 76 pixels of a 454-pixel X-ray; the centroid moves the
//!   point toward the warmer side).
//! - The **boxes** are the 4-connected regions of the map, read bilinearly on a grid of
//!   [`BOX_GRID`] cells along the X-ray's longer side, at [`BOX_LEVEL`] of the peak or more, each
//!   the extent of its cells, scored by the image's probability times
//!   the region's peak (so that boxes of confident images rank first when they are pooled for
//!   average precision); at most [`MAX_BOXES`] an image, best first.

use crate::data::annotations::Rect;
use crate::data::image::Square;
use serde::Serialize;

/// The share of a map's peak at which a place belongs to the map's region, the mask whose Dice
/// with the outlines `eval` measures.
pub const REGION_LEVEL: f32 = 0.5;

/// The share of a map's peak at which a place belongs to a box. Higher than the region's: read
/// bilinearly between cells of 8 pixels, a map's half-peak region is wider than a small fracture,
/// and a box of twice a fracture's side has an IoU of 1/4 with it.
pub const BOX_LEVEL: f32 = 0.8;

/// Boxes reported per image at most.
pub const MAX_BOXES: usize = 3;

/// What a map was made by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapSource {
    /// Grad-CAM of the last convolutional block: where the features that raised the score are.
    GradCam,
    /// The model's own fracture map, trained on outlines.
    #[serde(rename = "fracture-map")]
    Head,
}

impl MapSource {
    pub fn name(self) -> &'static str {
        match self {
            MapSource::GradCam => "grad-cam",
            MapSource::Head => "fracture-map",
        }
    }
}

/// A map of fracture evidence over a model's input.
#[derive(Clone, Debug, PartialEq)]
pub struct FractureMap {
    /// `side × side` values, row-major, in [0, 1].
    pub heat: Vec<f32>,
    pub side: usize,
    /// How the X-ray was framed into the model's input.
    pub square: Square,
    pub source: MapSource,
}

/// A point in an image's pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// A box in an image's pixels, with its score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ScoredBox {
    #[serde(flatten)]
    pub rect: Rect,
    pub score: f32,
}

/// Where a model says the fracture is, in the pixels of the file as a viewer shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Location {
    #[serde(rename = "where")]
    pub point: Point,
    pub boxes: Vec<ScoredBox>,
    /// What the point and boxes were read from.
    pub from: MapSource,
}

impl FractureMap {
    /// The map's value at a place of the model's square (fractions of its side), bilinear
    /// between cell centres, the outer cells' values beyond them.
    pub fn heat_at(&self, fx: f32, fy: f32) -> f32 {
        let s = self.side;
        let u = (fx * s as f32 - 0.5).clamp(0.0, (s - 1) as f32);
        let v = (fy * s as f32 - 0.5).clamp(0.0, (s - 1) as f32);
        let (x0, y0) = (u.floor() as usize, v.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(s - 1), (y0 + 1).min(s - 1));
        let (tx, ty) = (u - x0 as f32, v - y0 as f32);
        let at = |x: usize, y: usize| self.heat[y * s + x];
        let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
        let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
        top * (1.0 - ty) + bottom * ty
    }

    /// The map's value at pixel `(x, y)` of a `w × h` image.
    pub fn heat_at_pixel(&self, (w, h): (u32, u32), (x, y): (f32, f32)) -> f32 {
        let (left, top, cw, ch) = self.square.content(w, h);
        self.heat_at(left + x / w as f32 * cw, top + y / h as f32 * ch)
    }

    /// A place of the model's square (fractions of its side) in the pixels of a `w × h` image.
    fn to_pixels(&self, (w, h): (u32, u32), (fx, fy): (f32, f32)) -> (f32, f32) {
        let (left, top, cw, ch) = self.square.content(w, h);
        ((fx - left) / cw * w as f32, (fy - top) / ch * h as f32)
    }

    fn peak(&self) -> f32 {
        self.heat.iter().copied().fold(0.0, f32::max)
    }

    /// The point and the boxes, for a `w × h` image the model gave `probability`.
    pub fn locate(&self, (w, h): (u32, u32), probability: f32) -> Location {
        let clamp = |(x, y): (f32, f32)| Point {
            x: x.clamp(0.0, w as f32),
            y: y.clamp(0.0, h as f32),
        };
        let point = match self.hottest_centroid() {
            Some(at) => clamp(self.to_pixels((w, h), at)),
            None => Point {
                x: w as f32 / 2.0,
                y: h as f32 / 2.0,
            },
        };
        // regions of the map read bilinearly on a fine grid over the image, so that a box is
        // not a whole number of the map's cells
        let (cols, rows) = fine_grid((w, h));
        let (cw, ch) = (w as f32 / cols as f32, h as f32 / rows as f32);
        let mut heat = Vec::with_capacity(cols * rows);
        for r in 0..rows {
            for c in 0..cols {
                let at = ((c as f32 + 0.5) * cw, (r as f32 + 0.5) * ch);
                heat.push(self.heat_at_pixel((w, h), at));
            }
        }
        let mut boxes: Vec<ScoredBox> = regions(&heat, (cols, rows), BOX_LEVEL * self.peak())
            .into_iter()
            .map(|((c0, r0, c1, r1), peak)| ScoredBox {
                rect: Rect {
                    x: c0 as f32 * cw,
                    y: r0 as f32 * ch,
                    width: (c1 + 1 - c0) as f32 * cw,
                    height: (r1 + 1 - r0) as f32 * ch,
                },
                score: probability * peak,
            })
            .collect();
        boxes.sort_by(|a, b| b.score.total_cmp(&a.score));
        boxes.truncate(MAX_BOXES);
        Location {
            point,
            boxes,
            from: self.source,
        }
    }

    /// The heat-weighted centroid of the hottest cell and its neighbours, as fractions of the
    /// square's side; None for a map without heat.
    fn hottest_centroid(&self) -> Option<(f32, f32)> {
        let s = self.side;
        let (best, &peak) = self
            .heat
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
        if peak <= 0.0 {
            return None;
        }
        let (r, c) = (best / s, best % s);
        let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
        for rr in r.saturating_sub(1)..(r + 2).min(s) {
            for cc in c.saturating_sub(1)..(c + 2).min(s) {
                let v = self.heat[rr * s + cc].max(0.0);
                sx += v * (cc as f32 + 0.5);
                sy += v * (rr as f32 + 0.5);
                sw += v;
            }
        }
        Some((sx / sw / s as f32, sy / sw / s as f32))
    }

    /// The map's region (cells at [`REGION_LEVEL`] of the peak or more, read bilinearly) on a
    /// `cols × rows` grid laid over a `w × h` image, as [`Outlines::mask`] lays the outlines.
    ///
    /// [`Outlines::mask`]: crate::data::annotations::Outlines::mask
    pub fn mask(&self, (w, h): (u32, u32), cols: usize, rows: usize) -> Vec<bool> {
        let level = REGION_LEVEL * self.peak();
        let mut mask = Vec::with_capacity(cols * rows);
        for r in 0..rows {
            for c in 0..cols {
                let x = (c as f32 + 0.5) / cols as f32 * w as f32;
                let y = (r as f32 + 0.5) / rows as f32 * h as f32;
                mask.push(level > 0.0 && self.heat_at_pixel((w, h), (x, y)) >= level);
            }
        }
        mask
    }
}

/// The cells along an image's longer side of the grid on which boxes are found.
pub const BOX_GRID: usize = 128;

/// The box grid of a `w × h` image: [`BOX_GRID`] cells along its longer side.
fn fine_grid((w, h): (u32, u32)) -> (usize, usize) {
    let long = w.max(h) as f32;
    let cells = |side: u32| ((side as f32 / long * BOX_GRID as f32).round() as usize).max(1);
    (cells(w), cells(h))
}

/// The 4-connected regions of the cells of `values` (`cols × rows`, row-major) at `level` or
/// more (none when `level` is not above 0): each its extent in cells (first column, first row,
/// last column, last row) and its largest value.
fn regions(
    values: &[f32],
    (cols, rows): (usize, usize),
    level: f32,
) -> Vec<((usize, usize, usize, usize), f32)> {
    if level <= 0.0 {
        return Vec::new();
    }
    let hot: Vec<bool> = values.iter().map(|&v| v >= level).collect();
    let mut seen = vec![false; cols * rows];
    let mut found = Vec::new();
    for start in 0..cols * rows {
        if !hot[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let (mut extent, mut top) = ((cols, rows, 0, 0), 0f32);
        while let Some(i) = stack.pop() {
            let (r, c) = (i / cols, i % cols);
            extent = (
                extent.0.min(c),
                extent.1.min(r),
                extent.2.max(c),
                extent.3.max(r),
            );
            top = top.max(values[i]);
            let neighbours = [
                (r > 0).then(|| i - cols),
                (r + 1 < rows).then(|| i + cols),
                (c > 0).then(|| i - 1),
                (c + 1 < cols).then(|| i + 1),
            ];
            for n in neighbours.into_iter().flatten() {
                if hot[n] && !seen[n] {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
        found.push((extent, top));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::Framing;

    fn map(heat: Vec<f32>, framing: Framing) -> FractureMap {
        let side = (heat.len() as f64).sqrt() as usize;
        FractureMap {
            heat,
            side,
            square: Square::whole(32, framing),
            source: MapSource::GradCam,
        }
    }

    #[test]
    fn the_point_is_the_hottest_cell_pulled_toward_warm_neighbours() {
        // 4 x 4 map on a 400 x 200 image (squashed: a cell is 100 x 50 pixels)
        let mut heat = vec![0.0; 16];
        heat[4 + 2] = 1.0; // row 1, column 2: centre (250, 75)
        let m = map(heat.clone(), Framing::Squash);
        let l = m.locate((400, 200), 0.8);
        assert_eq!(l.point, Point { x: 250.0, y: 75.0 });
        // a neighbour to the right at 1/3 of the peak moves the centroid by a quarter cell
        heat[4 + 3] = 1.0 / 3.0;
        let l = map(heat, Framing::Squash).locate((400, 200), 0.8);
        assert!(
            (l.point.x - 275.0).abs() < 1e-3 && l.point.y == 75.0,
            "{:?}",
            l.point
        );
        // no heat at all: the image's centre
        let cold = map(vec![0.0; 16], Framing::Squash).locate((400, 200), 0.8);
        assert_eq!(cold.point, Point { x: 200.0, y: 100.0 });
        assert!(cold.boxes.is_empty());
    }

    #[test]
    fn boxes_are_connected_warm_regions_of_the_map_read_over_the_image() {
        // a 4 x 4 map over an 80 x 80 image (cell centres at 10, 30, 50, 70 px), hot at the
        // top-left cell (1.0) and the bottom-right one (0.9). Bilinear between centres, the
        // first is at BOX_LEVEL of the peak or more along the edges up to 10 + 20 (1 - level) px
        // from the corner; the second down to 70 - 20 (1 - level / 0.9) px; each to within one
        // cell of the box grid (80 / 128 px)
        let mut heat = vec![0.0; 16];
        heat[0] = 1.0;
        heat[15] = 0.9;
        let l = map(heat, Framing::Squash).locate((80, 80), 0.5);
        assert_eq!(l.boxes.len(), 2);
        let cell = 80.0 / BOX_GRID as f32;
        let first = l.boxes[0].rect;
        let edge = 10.0 + 20.0 * (1.0 - BOX_LEVEL);
        assert_eq!((first.x, first.y), (0.0, 0.0));
        assert!(
            (first.width - edge).abs() <= cell && first.width == first.height,
            "{first:?}"
        );
        assert_eq!(l.boxes[0].score, 0.5);
        let second = l.boxes[1].rect;
        let edge = 70.0 - 20.0 * (1.0 - BOX_LEVEL / 0.9);
        assert!(
            (second.x - edge).abs() <= cell && second.x == second.y,
            "{second:?}"
        );
        assert_eq!(second.x + second.width, 80.0);
        assert!((l.boxes[1].score - 0.45).abs() < 1e-6);
        // pad-edge framing: a 400 x 200 image fills rows 1..3 of the 4 x 4 square; heat in row
        // 0 is padding, and what of it reaches the image makes a box inside the image only,
        // and the point is clamped into the image
        let mut heat = vec![0.0; 16];
        heat[1] = 1.0;
        let l = map(heat, Framing::PadEdge).locate((400, 200), 0.5);
        for b in &l.boxes {
            assert!(
                b.rect.y >= 0.0 && b.rect.y + b.rect.height <= 200.0,
                "{b:?}"
            );
        }
        assert_eq!(l.point, Point { x: 150.0, y: 0.0 });
    }

    #[test]
    fn the_mask_reads_the_map_over_the_image() {
        // a 2 x 2 map, hot on the left column, over an 8 x 8 grid: bilinear between the cell
        // centres at 1/4 and 3/4, so columns whose centre is left of the middle are >= 0.5
        let m = map(vec![1.0, 0.0, 1.0, 0.0], Framing::Squash);
        let mask = m.mask((80, 80), 8, 8);
        for r in 0..8 {
            let row: Vec<bool> = mask[r * 8..r * 8 + 8].to_vec();
            assert_eq!(row, [true, true, true, true, false, false, false, false]);
        }
    }
}
