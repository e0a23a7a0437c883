//! How well a model says where the fracture is, against the outlines radiologists drew.
//!
//! - **Pointing game** (Zhang et al., 2016): the share of fractured, outlined X-rays whose point
//!   lies inside a fracture's box or within [`POINTING_TOLERANCE`] pixels of one, the tolerance
//!   scaled by the X-ray's longer side over 454 (FracAtlas' usual size): 15 px of 454.
//!   Two baselines go beside it: always pointing at the image's centre, and a random point's
//!   chance (the share of the image within the tolerance of a box, averaged).
//! - **Box average precision at IoU 0.5**, as COCO computes it: every image's boxes pooled and
//!   ranked by score; a box is a hit when it overlaps a fracture's box of its image not yet
//!   matched by IoU ≥ 0.5; AP is the mean of the interpolated precision at the 101 recalls 0,
//!   0.01, ..., 1 (precision at recall r = the best precision at any recall ≥ r).
//! - **Dice** of the map's region with the outlines, 2|A ∩ B| / (|A| + |B|), on a grid of
//!   [`GRID`] cells along the X-ray's longer side, averaged over fractured, outlined X-rays.
//!
//! Each with a 95 % stratified bootstrap interval over the images.

use super::report::{Bootstrap, Interval};
use crate::data::annotations::{Groups, Outlines, Rect};
use crate::localize::{FractureMap, Location, MapSource, ScoredBox};
use serde::Serialize;
use std::path::PathBuf;

/// The pointing game's tolerance in pixels of a 454-pixel X-ray.
pub const POINTING_TOLERANCE: f32 = 15.0;

/// The longer side's cells of the grid on which masks are compared.
pub const GRID: usize = 128;

/// A group with fewer fractured, outlined X-rays than this is listed but not judged.
pub const MIN_GROUP: usize = 10;

/// What one X-ray contributes to the figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub label: f32,
    /// The X-ray's boxes and the fractures' boxes, for average precision.
    pub predicted: Vec<ScoredBox>,
    pub truth: Vec<Rect>,
    /// For a fractured, outlined X-ray: the point's hit, the centre's hit, a random point's
    /// chance of a hit, and the Dice of the map's region with the outlines.
    pub outlined: Option<Outlined>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outlined {
    pub hit: bool,
    pub centre_hit: bool,
    pub chance: f64,
    pub dice: f64,
}

/// Judges one X-ray of `w × h` pixels: its location, its map, and its outlines (None when it has
/// no entry in the annotations), already in its pixels.
pub fn judge(
    label: f32,
    (w, h): (u32, u32),
    location: &Location,
    map: &FractureMap,
    outlines: Option<&Outlines>,
) -> Judged {
    let truth = outlines.map_or_else(Vec::new, Outlines::boxes);
    let outlined = outlines
        .filter(|o| label == 1.0 && !o.fractures.is_empty())
        .map(|o| {
            let tolerance = POINTING_TOLERANCE * w.max(h) as f32 / 454.0;
            let near = |p: (f32, f32)| truth.iter().any(|b| b.distance(p) <= tolerance);
            let (cols, rows) = grid((w, h));
            let cells = |x: usize, y: usize| {
                (
                    (x as f32 + 0.5) / cols as f32 * w as f32,
                    (y as f32 + 0.5) / rows as f32 * h as f32,
                )
            };
            let reachable = (0..rows)
                .flat_map(|y| (0..cols).map(move |x| (x, y)))
                .filter(|&(x, y)| near(cells(x, y)))
                .count();
            Outlined {
                hit: near((location.point.x, location.point.y)),
                centre_hit: near((w as f32 / 2.0, h as f32 / 2.0)),
                chance: reachable as f64 / (cols * rows) as f64,
                dice: dice(&map.mask((w, h), cols, rows), &o.mask(cols, rows)),
            }
        });
    Judged {
        label,
        predicted: location.boxes.clone(),
        truth,
        outlined,
    }
}

/// The comparison grid of a `w × h` image: [`GRID`] cells along its longer side.
fn grid((w, h): (u32, u32)) -> (usize, usize) {
    let long = w.max(h) as f32;
    let cells = |side: u32| ((side as f32 / long * GRID as f32).round() as usize).max(1);
    (cells(w), cells(h))
}

/// 2|A ∩ B| / (|A| + |B|); 1 when both are empty.
pub fn dice(a: &[bool], b: &[bool]) -> f64 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let total = a.iter().filter(|x| **x).count() + b.iter().filter(|x| **x).count();
    if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    }
}

/// COCO's box average precision at IoU 0.5 over `images` (every image's boxes pooled).
pub fn box_average_precision(images: &[&Judged]) -> f64 {
    let truths: usize = images.iter().map(|j| j.truth.len()).sum();
    if truths == 0 {
        return f64::NAN;
    }
    let mut ranked: Vec<(f32, usize, Rect)> = images
        .iter()
        .enumerate()
        .flat_map(|(i, j)| j.predicted.iter().map(move |b| (b.score, i, b.rect)))
        .collect();
    // best score first; ties in image order, as a stable sort leaves them
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut matched: Vec<Vec<bool>> = images.iter().map(|j| vec![false; j.truth.len()]).collect();
    let (mut hits, mut curve) = (0usize, Vec::with_capacity(ranked.len()));
    for (k, (_, i, rect)) in ranked.iter().enumerate() {
        let best = images[*i]
            .truth
            .iter()
            .enumerate()
            .filter(|(t, _)| !matched[*i][*t])
            .map(|(t, truth)| (t, rect.iou(truth)))
            .filter(|&(_, iou)| iou >= 0.5)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((t, _)) = best {
            matched[*i][t] = true;
            hits += 1;
        }
        curve.push((hits as f64 / truths as f64, hits as f64 / (k + 1) as f64));
    }
    // interpolated precision: the best precision at this recall or beyond
    for k in (0..curve.len().saturating_sub(1)).rev() {
        curve[k].1 = curve[k].1.max(curve[k + 1].1);
    }
    let sum: f64 = (0..=100)
        .map(|r| {
            let recall = r as f64 / 100.0;
            curve
                .iter()
                .find(|(rec, _)| *rec >= recall - 1e-12)
                .map_or(0.0, |&(_, p)| p)
        })
        .sum();
    sum / 101.0
}

/// A figure's mean over the fractured, outlined images among `picks`; NaN when there is none.
fn outlined_mean(judged: &[Judged], picks: &[usize], f: impl Fn(&Outlined) -> f64) -> f64 {
    let (sum, n) = picks
        .iter()
        .filter_map(|&i| judged[i].outlined.as_ref())
        .fold((0.0, 0usize), |(s, n), o| (s + f(o), n + 1));
    sum / n as f64
}

/// The localization figures of one set of images.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    /// Fractured X-rays with outlines (what the pointing game and Dice are over).
    pub outlined: usize,
    pub pointing_game: Interval,
    pub centre_baseline: Interval,
    pub random_chance: f64,
    pub dice: Interval,
}

impl Figures {
    fn new(judged: &[Judged], labels: &[f32], bootstrap: Bootstrap) -> Figures {
        let hit = |o: &Outlined| f64::from(u8::from(o.hit));
        let centre = |o: &Outlined| f64::from(u8::from(o.centre_hit));
        let all: Vec<usize> = (0..judged.len()).collect();
        Figures {
            outlined: judged.iter().filter(|j| j.outlined.is_some()).count(),
            pointing_game: bootstrap.interval(labels, |p| outlined_mean(judged, p, hit)),
            centre_baseline: bootstrap.interval(labels, |p| outlined_mean(judged, p, centre)),
            random_chance: outlined_mean(judged, &all, |o| o.chance),
            dice: bootstrap.interval(labels, |p| outlined_mean(judged, p, |o| o.dice)),
        }
    }
}

/// The figures of one group of a groups table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupFigures {
    pub group: String,
    pub images: usize,
    /// None when the group has fewer than [`MIN_GROUP`] fractured, outlined X-rays.
    pub figures: Option<Figures>,
    pub outlined: usize,
}

/// Everything `eval` and `cv` say about where a model looked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalizationReport {
    pub annotations: PathBuf,
    pub from: MapSource,
    pub images: usize,
    /// Fractured X-rays the annotations have no outline for (left out of the pointing game).
    pub fractured_without_outline: usize,
    #[serde(flatten)]
    pub figures: Figures,
    pub box_ap50: Interval,
    /// The groups with images in the set.
    pub groups: Vec<GroupFigures>,
}

impl LocalizationReport {
    /// The figures of `judged` (one per image, with `paths` for the groups).
    pub fn new(
        annotations: PathBuf,
        from: MapSource,
        judged: &[Judged],
        paths: &[PathBuf],
        groups: Option<&Groups>,
        bootstrap: Bootstrap,
    ) -> LocalizationReport {
        let labels: Vec<f32> = judged.iter().map(|j| j.label).collect();
        let ap = |picks: &[usize]| {
            box_average_precision(&picks.iter().map(|&i| &judged[i]).collect::<Vec<_>>())
        };
        let groups = groups.map_or_else(Vec::new, |g| {
            (0..g.names.len())
                .filter_map(|k| {
                    let members: Vec<usize> = (0..judged.len())
                        .filter(|&i| g.of(&paths[i]).contains(&k))
                        .collect();
                    let sub: Vec<Judged> = members.iter().map(|&i| judged[i].clone()).collect();
                    let sub_labels: Vec<f32> = sub.iter().map(|j| j.label).collect();
                    let outlined = sub.iter().filter(|j| j.outlined.is_some()).count();
                    if sub.is_empty() {
                        return None;
                    }
                    Some(GroupFigures {
                        group: g.names[k].clone(),
                        images: sub.len(),
                        figures: (outlined >= MIN_GROUP)
                            .then(|| Figures::new(&sub, &sub_labels, bootstrap)),
                        outlined,
                    })
                })
                .collect()
        });
        LocalizationReport {
            annotations,
            from,
            images: judged.len(),
            fractured_without_outline: judged
                .iter()
                .filter(|j| j.label == 1.0 && j.outlined.is_none())
                .count(),
            figures: Figures::new(judged, &labels, bootstrap),
            box_ap50: bootstrap.interval(&labels, ap),
            groups,
        }
    }

    /// The report as the lines `eval` and `cv` print.
    pub fn render(&self) -> String {
        let f = &self.figures;
        let mut out = format!(
            "where it looked ({} of {} X-rays; outlines from {}; fractured and outlined: {}{})\n",
            self.from.name(),
            self.images,
            self.annotations.display(),
            f.outlined,
            match self.fractured_without_outline {
                0 => String::new(),
                n => format!(", {n} fractured without an outline, left out"),
            }
        );
        out += &format!(
            "  {:<22}{}   (the image's centre: {:.4} [{:.4}, {:.4}]; a random point: {:.4})\n",
            "pointing game",
            f.pointing_game,
            f.centre_baseline.value,
            f.centre_baseline.lo,
            f.centre_baseline.hi,
            f.random_chance
        );
        out += &format!("  {:<22}{}\n", "box AP at IoU 0.5", self.box_ap50);
        out += &format!("  {:<22}{}\n", "Dice with outlines", f.dice);
        if !self.groups.is_empty() {
            out += &format!(
                "  {:<20}{:>7}{:>10}   {:<32}{}\n",
                "group", "images", "outlined", "pointing game", "centre"
            );
            for g in &self.groups {
                let judged = match &g.figures {
                    Some(f) => format!(
                        "{:<32}{:.4}",
                        f.pointing_game.to_string(),
                        f.centre_baseline.value
                    ),
                    None => format!("too few to judge (under {MIN_GROUP} outlined)"),
                };
                out += &format!(
                    "  {:<20}{:>7}{:>10}   {judged}\n",
                    g.group, g.images, g.outlined
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::Fracture;
    use crate::data::image::{Framing, Square};
    use crate::localize::Point;

    fn rect(x: f32, y: f32, width: f32, height: f32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    fn scored(r: Rect, score: f32) -> ScoredBox {
        ScoredBox { rect: r, score }
    }

    fn image(predicted: Vec<ScoredBox>, truth: Vec<Rect>) -> Judged {
        Judged {
            label: if truth.is_empty() { 0.0 } else { 1.0 },
            predicted,
            truth,
            outlined: None,
        }
    }

    #[test]
    fn box_average_precision_follows_coco_on_a_hand_made_set() {
        let t = rect(0.0, 0.0, 10.0, 10.0);
        // one fracture, one box on it: AP 1
        let perfect = image(vec![scored(t, 0.9)], vec![t]);
        assert_eq!(box_average_precision(&[&perfect]), 1.0);
        // a box of IoU 0.5 exactly still counts, one just under does not
        let half = rect(0.0, 0.0, 20.0, 10.0); // IoU 100 / 200
        assert_eq!(
            box_average_precision(&[&image(vec![scored(half, 0.9)], vec![t])]),
            1.0
        );
        let under = rect(0.0, 0.0, 20.5, 10.0);
        assert_eq!(
            box_average_precision(&[&image(vec![scored(under, 0.9)], vec![t])]),
            0.0
        );
        // two fractures on two images; ranked boxes: hit (0.9), false alarm on a healthy image
        // (0.8), hit (0.7). Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated: 1 up to
        // recall 0.5 (51 points), 2/3 beyond (50 points)
        let a = image(vec![scored(t, 0.9)], vec![t]);
        let healthy = image(vec![scored(t, 0.8)], vec![]);
        let b = image(vec![scored(t, 0.7)], vec![t]);
        let ap = box_average_precision(&[&a, &healthy, &b]);
        assert!(
            (ap - (51.0 + 50.0 * 2.0 / 3.0) / 101.0).abs() < 1e-12,
            "{ap}"
        );
        // the same box twice on one fracture: the second is a false alarm
        let twice = image(
            vec![scored(t, 0.9), scored(t, 0.8)],
            vec![t, rect(50.0, 50.0, 5.0, 5.0)],
        );
        let ap = box_average_precision(&[&twice]);
        assert!((ap - 51.0 / 101.0).abs() < 1e-12, "{ap}");
        // no fracture anywhere: undefined
        assert!(box_average_precision(&[&healthy]).is_nan());
    }

    #[test]
    fn the_pointing_game_counts_points_on_or_near_a_box() {
        // a 908 x 454 X-ray (tolerance 30 px), one fracture boxed at (100, 100) 50 x 50
        let outlines = Outlines {
            width: 908,
            height: 454,
            fractures: vec![Fracture {
                id: 0,
                bbox: rect(100.0, 100.0, 50.0, 50.0),
                polygons: vec![vec![(100.0, 100.0), (150.0, 100.0), (150.0, 150.0)]],
            }],
        };
        let map = FractureMap {
            heat: vec![1.0, 0.0, 0.0, 0.0],
            side: 2,
            square: Square::whole(32, Framing::Squash),
            source: MapSource::GradCam,
        };
        let at = |x, y| Location {
            point: Point { x, y },
            boxes: vec![],
            from: MapSource::GradCam,
        };
        let judged = |x, y| judge(1.0, (908, 454), &at(x, y), &map, Some(&outlines));
        assert!(judged(120.0, 130.0).outlined.unwrap().hit, "inside");
        assert!(
            judged(179.0, 125.0).outlined.unwrap().hit,
            "29 px to the right"
        );
        assert!(
            !judged(181.0, 125.0).outlined.unwrap().hit,
            "31 px to the right"
        );
        assert!(
            judged(171.0, 171.0).outlined.unwrap().hit,
            "21 px off each axis: 29.7"
        );
        assert!(!judged(172.0, 172.0).outlined.unwrap().hit, "22 px: 31.1");
        let o = judged(0.0, 0.0).outlined.unwrap();
        assert!(!o.centre_hit, "the centre (454, 227) is far");
        // a random point: the box grown by 30 px on each side, corners rounded, over the image
        let area = 110.0 * 110.0 - (4.0 - std::f64::consts::PI) * 900.0;
        assert!(
            (o.chance - area / (908.0 * 454.0)).abs() < 0.002,
            "{}",
            o.chance
        );
        // a healthy X-ray plays no pointing game
        assert!(judge(0.0, (908, 454), &at(0.0, 0.0), &map, None)
            .outlined
            .is_none());
        // the report: two of three fractured X-rays hit
        let set = vec![
            judged(120.0, 130.0),
            judged(179.0, 125.0),
            judged(500.0, 300.0),
            judge(0.0, (908, 454), &at(0.0, 0.0), &map, None),
        ];
        let paths: Vec<PathBuf> = (0..4).map(|i| PathBuf::from(format!("{i}.jpg"))).collect();
        let r = LocalizationReport::new(
            "ann.json".into(),
            MapSource::GradCam,
            &set,
            &paths,
            None,
            Bootstrap::default(),
        );
        assert_eq!(r.figures.outlined, 3);
        assert!((r.figures.pointing_game.value - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.figures.centre_baseline.value, 0.0);
        assert!(r.figures.pointing_game.lo <= r.figures.pointing_game.value);
        assert!(
            r.render().contains("pointing game         0.6667"),
            "{}",
            r.render()
        );
    }

    #[test]
    fn dice_of_masks() {
        assert_eq!(dice(&[true, true, false], &[true, false, false]), 2.0 / 3.0);
        assert_eq!(dice(&[false, false], &[false, false]), 1.0);
        assert_eq!(dice(&[true, false], &[false, true]), 0.0);
    }
}
