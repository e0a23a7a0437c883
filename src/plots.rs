//! The PNG figures of a run folder: loss and accuracy curves (train against validation) drawn
//! from `metrics.csv` after every epoch, and the ROC curve and confusion matrix of the best
//! epoch. Drawn with `plotters` into a pixel buffer, encoded by `image`, written atomically.

use crate::files::write_atomic;
use crate::metrics::report::CalibrationBin;
use crate::metrics::{roc_curve, Confusion};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const SIZE: (u32, u32) = (800, 500);

/// The font is compiled in (assets/DejaVuSansMono.ttf), so plots need no system fonts.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let font = include_bytes!("../assets/DejaVuSansMono.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .unwrap_or_else(|_| panic!("the built-in font does not load"));
    });
}

/// Draws with `draw` into a `size` RGB image and writes it to `path` as PNG.
fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut pixels = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(&area)?;
        area.present()
            .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    save_png(
        path,
        image::RgbImage::from_raw(size.0, size.1, pixels).expect("the buffer fits"),
    )
}

/// Encodes `img` as PNG and writes it atomically.
pub fn save_png(path: &Path, img: image::RgbImage) -> Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomic(path, &png)
}

/// Writes `text` in the top-left corner of `img`, white on a dark band, and saves it as PNG.
pub fn write_labelled_png(path: &Path, img: image::RgbImage, text: &str) -> Result<()> {
    register_font();
    let (w, h) = img.dimensions();
    let mut pixels = img.into_raw();
    {
        let area = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        let size = (h.min(w) / 16).clamp(12, 32);
        let band = (text.len() as u32 * size * 6 / 10 + size, size * 3 / 2);
        drawn(area.draw(&Rectangle::new(
            [(0, 0), (band.0 as i32, band.1 as i32)],
            BLACK.mix(0.6).filled(),
        )))?;
        let style = ("sans-serif", size).into_font().color(&WHITE);
        drawn(area.draw_text(text, &style, (size as i32 / 2, size as i32 / 4)))?;
        area.present()
            .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    }
    save_png(
        path,
        image::RgbImage::from_raw(w, h, pixels).expect("the buffer fits"),
    )
}

/// Turns plotters' drawing errors into ours.
fn drawn<T, E: std::fmt::Debug>(r: Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow::anyhow!("plotting failed: {e:?}"))
}

/// A column of `metrics.csv` by its header name (empty when there is none).
pub fn column(csv: &str, name: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let Some(at) = lines
        .next()
        .and_then(|h| h.split(',').position(|c| c == name))
    else {
        return Vec::new();
    };
    lines
        .filter_map(|l| l.split(',').nth(at)?.parse().ok())
        .collect()
}

/// One line chart of several series against the epoch.
fn curves(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<f64>, RGBColor)],
) -> Result<()> {
    let epochs = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    let values = series.iter().flat_map(|s| s.1.iter().copied());
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.1).max(1e-3);
    write_png(path, SIZE, |area| {
        let mut chart = drawn(
            ChartBuilder::on(area)
                .caption(title, ("sans-serif", 24))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(1usize..epochs.max(2), (lo - pad)..(hi + pad)),
        )?;
        drawn(
            chart
                .configure_mesh()
                .x_labels(epochs.clamp(2, 20))
                .x_desc("epoch")
                .y_desc(y_label)
                .label_style(("sans-serif", 14))
                .draw(),
        )?;
        for (name, ys, colour) in series {
            let points = ys.iter().enumerate().map(|(i, &y)| (i + 1, y));
            drawn(chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(2))))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            drawn(chart.draw_series(points.map(|p| Circle::new(p, 3, colour.filled()))))?;
        }
        drawn(
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw(),
        )
    })
}

/// `loss.png` and `accuracy.png` from the rows of `metrics.csv` so far.
pub fn training_curves(dir: &Path, csv: &str) -> Result<()> {
    let c = |name| column(csv, name);
    curves(
        &dir.join("loss.png"),
        "Loss (binary cross-entropy)",
        "loss",
        &[
            ("train", c("train_loss"), BLUE),
            ("validation", c("val_loss"), RED),
        ],
    )?;
    curves(
        &dir.join("accuracy.png"),
        "Accuracy",
        "share",
        &[
            ("train accuracy", c("train_accuracy"), BLUE),
            ("validation accuracy", c("val_accuracy"), RED),
            (
                "validation balanced accuracy",
                c("val_balanced_accuracy_at_threshold"),
                MAGENTA,
            ),
            ("validation ROC-AUC", c("val_roc_auc"), GREEN),
        ],
    )
}

/// `roc.png`: the ROC curve of validation scores, with its area and the chosen threshold's point.
pub fn roc(dir: &Path, probs: &[f32], labels: &[f32], auc: f64, at: (f64, f64)) -> Result<()> {
    let title = format!("ROC curve (validation), AUC {auc:.3}");
    let curve = [(String::new(), roc_curve(probs, labels))];
    roc_chart(&dir.join("roc.png"), &title, &curve, Some(at))
}

/// Several ROC curves in one chart (the folds of a cross-validation), each named in the legend.
pub fn roc_curves(path: &Path, title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    roc_chart(path, title, curves, None)
}

/// Draws with `draw` on a chart of [0, 1]² with its axes named and the diagonal drawn faintly.
fn unit_square<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    draw: impl FnOnce(&mut UnitChart<'a, DB>) -> Result<()>,
) -> Result<()> {
    let mut chart = drawn(
        ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64),
    )?;
    drawn(
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .draw(),
    )?;
    drawn(chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))))?;
    draw(&mut chart)
}

/// A chart over [0, 1]².
type UnitChart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// ROC curves over the chance diagonal, with a point marked at `at` if given.
fn roc_chart(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<(f64, f64)>)],
    at: Option<(f64, f64)>,
) -> Result<()> {
    write_png(path, (560, 560), |area| {
        let axes = (
            "false-positive rate (1 - specificity)",
            "true-positive rate (sensitivity)",
        );
        unit_square(area, title, axes, |chart| {
            for (i, (name, points)) in curves.iter().enumerate() {
                let colour = Palette99::pick(if curves.len() == 1 { 3 } else { i }).to_rgba();
                let series = drawn(chart.draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                )))?;
                if !name.is_empty() {
                    series.label(name.as_str()).legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                }
            }
            if let Some(at) = at {
                drawn(chart.draw_series([Circle::new(at, 6, BLUE.filled())]))?;
            }
            if curves.iter().any(|(name, _)| !name.is_empty()) {
                drawn(
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::LowerRight)
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font(("sans-serif", 13))
                        .draw(),
                )?;
            }
            Ok(())
        })
    })
}

/// A reliability diagram: for each bin of predicted probability, the share of its images that
/// are fractured (a calibrated model sits on the diagonal), each point labelled with its count.
pub fn reliability(path: &Path, bins: &[CalibrationBin], ece: f64) -> Result<()> {
    write_png(path, (560, 560), |area| {
        let title = format!("Reliability diagram, ECE {ece:.3}");
        let axes = (
            "mean predicted probability of the bin",
            "share of the bin that is fractured",
        );
        unit_square(area, &title, axes, |chart| {
            let filled: Vec<_> = bins.iter().filter(|b| b.count > 0).collect();
            let points = filled
                .iter()
                .map(|b| (b.mean_probability, b.fraction_fractured));
            drawn(chart.draw_series(LineSeries::new(points.clone(), RED.stroke_width(2))))?;
            drawn(chart.draw_series(points.map(|p| Circle::new(p, 4, RED.filled()))))?;
            drawn(chart.draw_series(filled.iter().map(|b| {
                Text::new(
                    format!("{}", b.count),
                    (b.mean_probability, (b.fraction_fractured + 0.03).min(0.97)),
                    ("sans-serif", 12),
                )
            })))?;
            Ok(())
        })
    })
}

/// `confusion.png`: the confusion matrix at the decision threshold (rows: truth).
pub fn confusion(dir: &Path, c: &Confusion, threshold: f32) -> Result<()> {
    write_png(&dir.join("confusion.png"), (520, 460), |area| {
        let title = format!("Confusion matrix at threshold {threshold:.3}");
        let area = drawn(area.titled(&title, ("sans-serif", 22)))?;
        let (w, h) = area.dim_in_pixel();
        let (left, top, cell) = (160i32, 40i32, ((w.min(h) as i32) - 80) / 2);
        let rows = [
            ("fractured", [c.tp, c.fn_]),
            ("not_fractured", [c.fp, c.tn]),
        ];
        let total = (c.tp + c.fn_ + c.fp + c.tn).max(1) as f64;
        for (r, (truth, counts)) in rows.iter().enumerate() {
            let y = top + r as i32 * cell;
            let label = Text::new(*truth, (8, y + cell / 2), ("sans-serif", 16));
            drawn(area.draw(&label))?;
            for (k, &n) in counts.iter().enumerate() {
                let x = left + k as i32 * cell;
                let shade = 1.0 - 0.7 * n as f64 / total;
                let colour = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
                drawn(area.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                )))?;
                drawn(area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK)))?;
                let text = Text::new(
                    n.to_string(),
                    (x + cell / 2 - 12, y + cell / 2 - 10),
                    ("sans-serif", 24),
                );
                drawn(area.draw(&text))?;
            }
        }
        for (k, pred) in ["fractured", "not_fractured"].iter().enumerate() {
            let x = left + k as i32 * cell + 10;
            let text = Text::new(format!("said {pred}"), (x, top - 22), ("sans-serif", 14));
            drawn(area.draw(&text))?;
        }
        Ok(())
    })
}

/// A histogram of each series (40 bins between its extremes), in a grid of panels.
pub fn histograms(path: &Path, title: &str, series: &[(String, Vec<f32>)]) -> Result<()> {
    let cols = (series.len() as f64).sqrt().ceil().max(1.0) as usize;
    let rows = series.len().div_ceil(cols).max(1);
    let size = (300 * cols as u32, 60 + 220 * rows as u32);
    write_png(path, size, |area| {
        let area = drawn(area.titled(title, ("sans-serif", 24)))?;
        for (panel, (name, values)) in area.split_evenly((rows, cols)).iter().zip(series) {
            histogram_panel(panel, name, values)?;
        }
        Ok(())
    })
}

fn histogram_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    name: &str,
    values: &[f32],
) -> Result<()> {
    const BINS: usize = 40;
    let (lo, hi) = values
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let width = (hi - lo) / BINS as f32;
    let mut counts = [0u32; BINS];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = drawn(
        ChartBuilder::on(area)
            .caption(name, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1),
    )?;
    drawn(
        chart
            .configure_mesh()
            .x_labels(4)
            .y_labels(3)
            .label_style(("sans-serif", 11))
            .draw(),
    )?;
    let bars = counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f32 * width;
        Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.7).filled())
    });
    drawn(chart.draw_series(bars))?;
    Ok(())
}
