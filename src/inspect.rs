//! What a trained network computes, as pictures (`fracture-cnn inspect`): for one X-ray, every
//! convolution's output as a grid of feature maps; the first convolution's learned filters; and a
//! histogram of every layer's weights and of their gradients for that image (the gradient of the
//! fracture logit, taken as Grad-CAM takes it, with inference statistics).
//!
//! Each feature map is scaled to its own range (black its lowest value, white its highest), so a
//! map shows where its feature responds, not how strongly compared with the others. Filters share
//! one scale, gray being 0, so their signs and sizes compare.

use crate::backend::Backend;
use crate::data::image::to_model_input;
use crate::nn::{LayerSpec, Model};
use crate::plots;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Pixels between tiles of a grid.
const GAP: u32 = 2;

/// Columns and rows of a grid of `n` tiles, as square as it goes.
pub fn grid_shape(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (cols, n.div_ceil(cols).max(1))
}

/// Lays out `n` tiles of `h × w` values (tile i is `values[i·h·w..]`), each drawn `scale` times
/// larger, on a dark background; `shade` maps a tile's value to a gray level.
fn grid(
    values: &[f32],
    n: usize,
    (h, w): (usize, usize),
    scale: u32,
    shade: impl Fn(usize, f32) -> u8,
) -> image::RgbImage {
    let (cols, rows) = grid_shape(n);
    let (tw, th) = (w as u32 * scale, h as u32 * scale);
    let size = |tiles: usize, t: u32| tiles as u32 * (t + GAP) + GAP;
    let mut img =
        image::RgbImage::from_pixel(size(cols, tw), size(rows, th), image::Rgb([40, 40, 60]));
    for t in 0..n {
        let (x0, y0) = (
            GAP + (t % cols) as u32 * (tw + GAP),
            GAP + (t / cols) as u32 * (th + GAP),
        );
        for y in 0..th {
            for x in 0..tw {
                let v = values[t * h * w + (y / scale) as usize * w + (x / scale) as usize];
                let g = shade(t, v);
                img.put_pixel(x0 + x, y0 + y, image::Rgb([g, g, g]));
            }
        }
    }
    img
}

/// The feature maps of one image, `A[1, C, H, W]`, each scaled to its own range.
pub fn feature_map_grid(a: &Tensor) -> image::RgbImage {
    let (_, c, h, w) = a.shape.nchw();
    let plane = h * w;
    let ranges: Vec<(f32, f32)> = a
        .data
        .chunks_exact(plane)
        .map(|m| {
            m.iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
        })
        .collect();
    let scale = (64 / h.max(w).max(1)).max(1) as u32;
    grid(&a.data, c, (h, w), scale, |t, v| {
        let (lo, hi) = ranges[t];
        if hi > lo {
            (255.0 * (v - lo) / (hi - lo)).round() as u8
        } else {
            0
        }
    })
}

/// Convolution filters `w[Co, Ci, KH, KW]` (the first input channel of each), gray = 0, white
/// and black the largest magnitude either way.
pub fn filter_grid(weight: &Tensor) -> image::RgbImage {
    let (co, ci, kh, kw) = weight.shape.nchw();
    let first_channel: Vec<f32> = weight
        .data
        .chunks_exact(ci * kh * kw)
        .flat_map(|f| f[..kh * kw].iter().copied())
        .collect();
    let top = first_channel
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    grid(&first_channel, co, (kh, kw), 16, |_, v| {
        (127.5 + 127.5 * v / top).round() as u8
    })
}

/// Writes the pictures of `model` on `image` into `out`; returns the files written.
pub fn inspect<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    image: &image::DynamicImage,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let [c, h, w] = model.spec.input;
    if c != 1 || h != w {
        bail!("inspect needs a model of one gray channel on square images");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let x = Tensor::new([1, 1, h, w], to_model_input(image, model.spec.square()));
    let outputs = model.outputs_and_parameter_gradients(be, be.upload(&x));
    let mut written = Vec::new();
    let mut save = |name: String, img: image::RgbImage| -> Result<()> {
        let path = out.join(name);
        plots::save_png(&path, img)?;
        written.push(path);
        Ok(())
    };
    let mut first_conv = true;
    for (i, (node, output)) in model.spec.layers.iter().zip(&outputs).enumerate() {
        if !matches!(
            node.layer,
            LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. }
        ) {
            continue;
        }
        let kind = model.layers[i].kind();
        save(
            format!("activations-{i:02}-{kind}.png"),
            feature_map_grid(output),
        )?;
        if first_conv {
            let weight = be.download(&model.layers[i].params()[0].value);
            save(format!("filters-{i:02}-{kind}.png"), filter_grid(&weight))?;
            first_conv = false;
        }
    }
    let (mut weights, mut grads) = (Vec::new(), Vec::new());
    for p in model
        .named_params()
        .iter()
        .filter(|p| p.param.trainable && p.name.ends_with("weight"))
    {
        weights.push((p.name.clone(), be.download(&p.param.value).data));
        if let Some(g) = &p.param.grad {
            grads.push((p.name.clone(), be.download(g).data));
        }
    }
    let path = out.join("weights.png");
    plots::histograms(&path, "weights of each layer", &weights)?;
    written.push(path);
    let path = out.join("gradients.png");
    plots::histograms(
        &path,
        "gradients of the fracture logit for this image",
        &grads,
    )?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_as_square_as_they_go_and_scale_each_map() {
        assert_eq!(grid_shape(32), (6, 6));
        assert_eq!(grid_shape(128), (12, 11));
        assert_eq!(grid_shape(1), (1, 1));
        // two 2×2 maps: each runs from black to white over its own range
        let a = Tensor::new(
            [1, 2, 2, 2],
            vec![0.0, 1.0, 2.0, 3.0, -5.0, -5.0, -5.0, 10.0],
        );
        let img = feature_map_grid(&a);
        let scale = 32; // 64 / 2
        assert_eq!(
            img.dimensions(),
            (2 * (2 * scale + GAP) + GAP, 2 * scale + 2 * GAP)
        );
        let at = |tile: u32, x: u32, y: u32| {
            img.get_pixel(GAP + tile * (2 * scale + GAP) + x * scale, GAP + y * scale)
                .0[0]
        };
        assert_eq!((at(0, 0, 0), at(0, 1, 1)), (0, 255));
        assert_eq!((at(1, 0, 0), at(1, 1, 1)), (0, 255));
    }

    #[test]
    fn filters_share_one_scale_with_zero_gray() {
        let w = Tensor::new([2, 1, 1, 1], vec![0.5, -1.0]);
        let img = filter_grid(&w);
        let px = |tile: u32| img.get_pixel(GAP + tile * (16 + GAP), GAP).0[0];
        assert_eq!((px(0), px(1)), (191, 0));
    }
}
