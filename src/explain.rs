//! Where did the model look? Grad-CAM (Selvaraju et al., 2017) with our own backward pass.
//!
//! Take A, the output of the last convolutional block (`K` feature maps of `H × W`), and the
//! gradient of the fracture logit with respect to it. Each map's weight is its average gradient,
//!   α_k = (1 / HW) Σ_ij ∂logit / ∂A_kij,
//! and the heatmap is the positive part of the weighted sum of the maps,
//!   cam_ij = max(0, Σ_k α_k A_kij),
//! scaled to [0, 1]. Large values mark where features that raise the fracture score are active.
//! The map is `H × W` (16 × 16 for fracturenet at 128 px) and is stretched over the X-ray.

use crate::backend::Backend;
use crate::data::image::to_model_input;
use crate::localize::{FractureMap, Location, MapSource};
use crate::nn::{LayerSpec, Model, ModelSpec};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};

/// The layer whose output Grad-CAM weighs: the one the first flatten (or global average pooling)
/// reads, or the layer before it when that is a max pooling (which only coarsens the map). For
/// fracturenet, the ReLU of the fourth block (128 maps of 16 × 16 at 128 px); for mobilenet, the
/// last block's ReLU (512 maps of 4 × 4); for a resnet with a fracture map, the last stage, which
/// the classifier reads (not the map's decoder, which comes before the head in the spec).
pub fn target_layer(spec: &ModelSpec) -> Result<usize> {
    let layers = spec.layers()?;
    let none = || format!("{} has no convolutional feature maps", spec.name);
    let head = layers
        .iter()
        .find(|l| matches!(l.spec, LayerSpec::Flatten | LayerSpec::GlobalAvgPool))
        .with_context(none)?;
    let mut at = head.sources[0].with_context(none)?;
    while matches!(layers[at].spec, LayerSpec::MaxPool { .. }) {
        at = layers[at].sources[0].with_context(none)?;
    }
    if layers[at].output.len() != 3 {
        bail!(none());
    }
    Ok(at)
}

/// The Grad-CAM map `[H × W]` in [0, 1] of one image, from its activation `A[1, K, H, W]` and the
/// gradient of the logit with respect to it (same shape). All zeros when no feature raises the
/// score.
pub fn grad_cam(activation: &Tensor, gradient: &Tensor) -> Vec<f32> {
    let (_, k, h, w) = activation.shape.nchw();
    assert_eq!(activation.shape, gradient.shape, "A and dA differ in shape");
    let plane = h * w;
    let mut cam = vec![0f32; plane];
    for c in 0..k {
        let maps = c * plane..(c + 1) * plane;
        let alpha = gradient.data[maps.clone()].iter().sum::<f32>() / plane as f32;
        for (v, a) in cam.iter_mut().zip(&activation.data[maps]) {
            *v += alpha * a;
        }
    }
    let top = cam.iter().copied().fold(0f32, f32::max);
    cam.iter()
        .map(|&v| if top > 0.0 { v.max(0.0) / top } else { 0.0 })
        .collect()
}

/// A Grad-CAM explanation of one X-ray.
pub struct Explanation {
    /// The model's probability of a fracture.
    pub probability: f32,
    /// The Grad-CAM map over the model's input, and how the X-ray was framed into it.
    pub map: FractureMap,
}

/// Runs `model` on `image` and explains its score.
pub fn explain<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    image: &image::DynamicImage,
) -> Result<Explanation> {
    explain_input(be, model, &to_model_input(image, model.spec.square()))
}

/// Runs `model` on `input`, an X-ray as the model takes it (`side × side`), and explains its
/// score.
pub fn explain_input<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    input: &[f32],
) -> Result<Explanation> {
    let [c, h, w] = model.spec.input;
    if c != 1 || h != w {
        bail!("heatmaps need a model of one gray channel on square images");
    }
    let at = target_layer(&model.spec)?;
    let x = Tensor::new([1, 1, h, w], input.to_vec());
    let (logits, activation, gradient) = model.activation_and_gradient(be, be.upload(&x), at);
    Ok(Explanation {
        probability: 1.0 / (1.0 + (-logits.data[0]).exp()),
        map: FractureMap {
            heat: grad_cam(&activation, &gradient),
            side: activation.shape.nchw().2,
            square: model.spec.square(),
            source: MapSource::GradCam,
        },
    })
}

/// The colour of a heat value in [0, 1] ("jet": blue, cyan, yellow, red).
pub fn jet(v: f32) -> [u8; 3] {
    let channel = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0);
    [channel(3.0), channel(2.0), channel(1.0)].map(|c| (c * 255.0).round() as u8)
}

/// The X-ray in gray with the map over it (bilinear, stretched like the model's input), at most
/// `max_side` pixels a side, as RGB.
pub fn overlay(image: &image::DynamicImage, map: &FractureMap, max_side: u32) -> image::RgbImage {
    let gray = image.to_luma8();
    let (w0, h0) = gray.dimensions();
    let scale = (max_side as f32 / w0.max(h0) as f32).min(1.0);
    let (w, h) = (
        ((w0 as f32 * scale).round() as u32).max(1),
        ((h0 as f32 * scale).round() as u32).max(1),
    );
    let gray = image::imageops::resize(&gray, w, h, image::imageops::FilterType::Triangle);
    // pixel centres of the drawing, in the original image's pixels
    let heat = |x: u32, y: u32| {
        let at = (
            (x as f32 + 0.5) / w as f32 * w0 as f32,
            (y as f32 + 0.5) / h as f32 * h0 as f32,
        );
        map.heat_at_pixel((w0, h0), at)
    };
    image::RgbImage::from_fn(w, h, |x, y| {
        let g = gray.get_pixel(x, y).0[0] as f32;
        let v = heat(x, y);
        // the colour shows only where the map is warm, so the bones stay readable elsewhere
        let alpha = 0.6 * v;
        image::Rgb(jet(v).map(|c| (g * (1.0 - alpha) + c as f32 * alpha).round() as u8))
    })
}

/// Draws `location` (found on an image of `w0 × h0` pixels) over `drawing`, that image at
/// another scale: each box as a white frame, the point as a magenta cross ringed in black, each
/// two pixels wide, so that they show over any heat.
pub fn draw_location(drawing: &mut image::RgbImage, location: &Location, (w0, h0): (u32, u32)) {
    let (w, h) = drawing.dimensions();
    let (sx, sy) = (w as f32 / w0 as f32, h as f32 / h0 as f32);
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
            drawing.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
    };
    for b in &location.boxes {
        let r = b.rect;
        let (x0, y0) = ((r.x * sx) as i64, (r.y * sy) as i64);
        let (x1, y1) = (
            ((r.x + r.width) * sx) as i64 - 1,
            ((r.y + r.height) * sy) as i64 - 1,
        );
        for t in 0..2 {
            for x in x0..=x1 {
                put(x, y0 + t, [255; 3]);
                put(x, y1 - t, [255; 3]);
            }
            for y in y0..=y1 {
                put(x0 + t, y, [255; 3]);
                put(x1 - t, y, [255; 3]);
            }
        }
    }
    let (px, py) = (
        (location.point.x * sx) as i64,
        (location.point.y * sy) as i64,
    );
    let arm = (w.min(h) as i64 / 40).max(4);
    for (colour, grow) in [([0u8; 3], 1), ([255, 0, 255], 0)] {
        for d in -arm - grow..=arm + grow {
            for t in -1 - grow..=grow {
                put(px + d, py + t, colour);
                put(px + t, py + d, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_cam_weighs_maps_by_their_mean_gradient_and_scales_to_one() {
        // two maps of 2×2: the first raises the score (gradient +1), the second lowers it (-1)
        let a = Tensor::new([1, 2, 2, 2], vec![1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 1.0]);
        let g = Tensor::new(
            [1, 2, 2, 2],
            vec![1.0; 4].into_iter().chain(vec![-1.0; 4]).collect(),
        );
        // Σ α_k A_k = [1, -3, 2, -1] → positive part [1, 0, 2, 0] → scaled [0.5, 0, 1, 0]
        assert_eq!(grad_cam(&a, &g), vec![0.5, 0.0, 1.0, 0.0]);
        // nothing raises the score: all zeros, not NaN
        let neg = Tensor::new([1, 2, 2, 2], vec![-1.0; 8]);
        assert_eq!(grad_cam(&a, &neg), vec![0.0; 4]);
    }

    #[test]
    fn the_target_is_the_last_feature_map_before_flatten_or_pooling() {
        let spec = ModelSpec::load("fracturenet").unwrap();
        let at = target_layer(&spec).unwrap();
        let layers = spec.layers().unwrap();
        assert_eq!(layers[at].spec, LayerSpec::Relu);
        assert_eq!(layers[at].output, vec![128, 16, 16]);
        assert_eq!(layers[at + 1].spec.describe(), "maxpool 2x2/2x2");
        // mobilenet: the last block's ReLU, just before global average pooling
        let spec = ModelSpec::load("mobilenet").unwrap();
        let at = target_layer(&spec).unwrap();
        let layers = spec.layers().unwrap();
        assert_eq!(layers[at].spec, LayerSpec::Relu);
        assert_eq!(layers[at].output, vec![512, 4, 4]);
        assert_eq!(layers[at + 1].spec, LayerSpec::GlobalAvgPool);
        // a resnet with a map: the last stage, not the map's decoder before the head
        let spec = crate::nn::resnet::resnet_loc(16, 2, 192).unwrap();
        let at = target_layer(&spec).unwrap();
        assert_eq!(spec.layers[at].name.as_deref(), Some("stage4.block2"));
        assert_eq!(spec.layers().unwrap()[at].output, vec![128, 6, 6]);
    }

    #[test]
    fn jet_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        let mid = jet(0.5);
        assert!(mid[1] == 255 && mid[0] > 100 && mid[2] > 100, "{mid:?}");
    }
}
