//! The JSON endpoints that compute: the model's description, predictions, Grad-CAM, one layer's
//! feature maps, and the arithmetic of one output value of a convolution.

use super::multipart::{self, Part};
use super::{ApiError, Body, State};
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::data::dicom::{self, DicomInfo};
use crate::data::image::to_model_input;
use crate::eval::class_name;
use crate::explain;
use crate::localize::{FractureMap, Location};
use crate::nn::LayerSpec;
use crate::tensor::Tensor;
use base64::Engine;
use image::DynamicImage;
use serde_json::{json, Value};

/// Images per forward pass, as `predict` runs them.
const BATCH: usize = 32;
/// Feature maps sent for one layer (the first ones of a wider layer).
const MAX_MAPS: usize = 64;
/// Bins of the weight and gradient histograms.
const BINS: usize = 40;

/// `GET /api/model`: the checkpoint, its preprocessing and threshold, and each layer with its
/// inputs, output shape, parameters and FLOPs; the histogram of each parameter's values.
pub fn model(state: &State) -> Value {
    let spec = &state.info.spec;
    let infos = spec.layers().expect("a loaded model's spec is valid");
    let name = |s: &Option<usize>| s.map_or("input".to_string(), |j| layer_name(state, j));
    let layers: Vec<Value> = infos
        .iter()
        .map(|l| {
            json!({
                "index": l.index,
                "name": layer_name(state, l.index),
                "kind": kind(&l.spec),
                "describe": l.spec.describe(),
                "inputs": l.sources.iter().map(name).collect::<Vec<_>>(),
                "output": l.output,
                "params": l.trainable_params + l.fixed_params,
                "flops": l.flops,
            })
        })
        .collect();
    let model = state.model();
    let histograms: Vec<Value> = model
        .named_params()
        .iter()
        .map(|p| histogram(&p.name, &Cpu::new().download(&p.param.value).data))
        .collect();
    json!({
        "checkpoint": state.checkpoint.display().to_string(),
        "name": spec.name,
        "input": spec.input,
        "framing": spec.square().describe(),
        "threshold": short(state.info.threshold),
        "tta": state.tta,
        "epoch": state.info.epoch,
        "explain_layer": explain::target_layer(spec).ok(),
        "layers": layers,
        "weight_histograms": histograms,
    })
}

/// `POST /api/predict`: `{"predictions": [{file, probability, label, threshold}]}`, one per
/// part named `image`, with `predict`'s numbers.
pub fn predict(state: &State, body: &Body) -> Result<Value, ApiError> {
    // each image is framed as soon as it is decoded, and the decoded image dropped: a request
    // holds one image at full size at a time, however many it carries
    let square = state.info.spec.square();
    let inputs = image_parts(body)?
        .iter()
        .map(|part| {
            let Upload { file, img, dicom } = decode(state, part)?;
            let size = (img.width(), img.height());
            Ok((file, to_model_input(&img, square), size, dicom))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let threshold = state.info.threshold;
    let mut predictions = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(BATCH) {
        let framed: Vec<&[f32]> = chunk.iter().map(|(_, x, _, _)| x.as_slice()).collect();
        for ((file, x, size, dicom), p) in chunk.iter().zip(probabilities(state, &framed)) {
            let mut prediction = json!({
                "file": file,
                "probability": short(p),
                "label": class_name(p >= threshold),
                "threshold": short(threshold),
            });
            let location = fracture_map(state, x)?.locate(*size, p);
            merge(&mut prediction, location_json(&location));
            if let Some(dicom) = dicom {
                merge(&mut prediction, json!({ "dicom": dicom }));
            }
            predictions.push(prediction);
        }
    }
    Ok(json!({ "predictions": predictions }))
}

/// The fracture map of an X-ray as the model takes it, as `predict` reads `where` from it: the
/// model's own map (its batch norm folded, as `predict` runs it), or Grad-CAM of the model as
/// trained.
fn fracture_map(state: &State, input: &[f32]) -> Result<FractureMap, ApiError> {
    let map = if state.info.spec.map.is_some() {
        crate::eval::map_of_input(&Cpu::new(), &mut state.inference(), input)
    } else {
        crate::eval::map_of_input(&Cpu::new(), &mut state.model(), input)
    };
    map.map_err(|e| ApiError::new(422, format!("{e:#}")))
}

/// `where`, `boxes` and `from` as `predict --json` writes them, each number as short as it reads
/// back.
fn location_json(l: &Location) -> Value {
    let boxes: Vec<Value> = l
        .boxes
        .iter()
        .map(|b| {
            let r = b.rect;
            json!({"x": short(r.x), "y": short(r.y), "width": short(r.width),
                   "height": short(r.height), "score": short(b.score)})
        })
        .collect();
    json!({
        "where": {"x": short(l.point.x), "y": short(l.point.y)},
        "boxes": boxes,
        "from": l.from.name(),
    })
}

/// The fields of the object `extra` added to the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// `POST /api/explain` (one image): its prediction, the gray input the model saw, the Grad-CAM
/// overlay (PNG data URLs), and the histogram of each parameter's gradient for this image.
pub fn explain(state: &State, body: &Body) -> Result<Value, ApiError> {
    let Upload { file, img, .. } = first_image(state, body)?;
    let size = state.info.spec.square().side;
    let framed = to_model_input(&img, state.info.spec.square());
    let p = probabilities(state, &[&framed])[0];
    let input = image::GrayImage::from_raw(
        size as u32,
        size as u32,
        framed.iter().map(|v| (v * 255.0).round() as u8).collect(),
    )
    .expect("size × size values");
    let map = fracture_map(state, &framed)?;
    let location = map.locate((img.width(), img.height()), p);
    let mut overlay = explain::overlay(&img, &map, 512);
    explain::draw_location(&mut overlay, &location, (img.width(), img.height()));
    let mut model = state.model();
    let x = Cpu::new().upload(&input_tensor(state, &[&img]));
    model.outputs_and_parameter_gradients(&Cpu::new(), x);
    let gradients: Vec<Value> = model
        .named_params()
        .iter()
        .filter_map(|p| {
            p.param
                .grad
                .as_ref()
                .map(|g| histogram(&p.name, &Cpu::new().download(g).data))
        })
        .collect();
    Ok(json!({
        "file": file,
        "probability": short(p),
        "label": class_name(p >= state.info.threshold),
        "threshold": short(state.info.threshold),
        "input_png": png_data_url(&DynamicImage::ImageLuma8(input)),
        "heatmap_png": png_data_url(&DynamicImage::ImageRgb8(overlay)),
        "location": location_json(&location),
        "gradient_histograms": gradients,
    }))
}

/// `POST /api/layer?index=I` (one image): layer I's output for the image: feature maps as PNGs
/// (each scaled to its own range, the first [`MAX_MAPS`]), or the values of a flat output.
pub fn layer(state: &State, body: &Body, index: usize) -> Result<Value, ApiError> {
    let Upload { img, .. } = first_image(state, body)?;
    let outputs = layer_outputs(state, &img, index)?;
    let y = &outputs[index];
    let shape = &y.dims()[1..];
    let mut answer = json!({
        "index": index,
        "name": layer_name(state, index),
        "kind": kind(&state.info.spec.layers[index].layer),
        "shape": shape,
    });
    if let &[c, h, w] = shape {
        let maps: Vec<Value> = y
            .data
            .chunks_exact(h * w)
            .take(MAX_MAPS)
            .map(|m| {
                let (lo, hi) = range(m);
                json!({ "png": png_data_url(&map_image(m, h, w, lo, hi)), "min": lo, "max": hi })
            })
            .collect();
        answer["channels"] = json!(c);
        answer["maps"] = json!(maps);
    } else {
        answer["values"] = json!(y.data.iter().take(1024).collect::<Vec<_>>());
    }
    Ok(answer)
}

/// Where in a convolution's output to take a value apart.
pub struct DotAt {
    pub layer: usize,
    pub channel: usize,
    pub y: usize,
    pub x: usize,
}

/// `POST /api/dot?layer=L&channel=C&y=Y&x=X` (one image): output value (C, Y, X) of convolution
/// L as its dot product, input channel by input channel (the window of inputs, zeros where it
/// overhangs the padding, the filter's weights, their sum), plus the bias; then what the batch
/// norm and ReLU right after it make of the value.
pub fn dot(state: &State, body: &Body, at: DotAt) -> Result<Value, ApiError> {
    let spec = &state.info.spec;
    let infos = spec.layers().expect("a loaded model's spec is valid");
    let info = infos
        .get(at.layer)
        .ok_or_else(|| ApiError::new(400, format!("the model has no layer {}", at.layer)))?;
    let g = info
        .spec
        .conv_geom(&info.input)
        .ok_or_else(|| ApiError::new(400, format!("layer {} is not a convolution", at.layer)))?;
    let depthwise = matches!(info.spec, LayerSpec::DepthwiseConv2d { .. });
    if at.channel >= g.c_out || at.y >= g.out_h || at.x >= g.out_w {
        return Err(ApiError::new(
            400,
            format!(
                "channel {}, y {}, x {} is outside layer {}'s output of {}x{}x{}",
                at.channel, at.y, at.x, at.layer, g.c_out, g.out_h, g.out_w
            ),
        ));
    }
    let Upload { img, .. } = first_image(state, body)?;
    let outputs = layer_outputs(state, &img, at.layer)?;
    let input = match info.sources[0] {
        Some(j) => outputs[j].clone(),
        None => input_tensor(state, &[&img]),
    };
    let (weight, bias) = {
        let model = state.model();
        let params = model.layers[at.layer].params();
        (
            Cpu::new().download(&params[0].value),
            Cpu::new().download(&params[1].value).data[at.channel],
        )
    };
    let (kh, kw) = (g.kh, g.kw);
    let in_channels: Vec<usize> = if depthwise {
        vec![at.channel]
    } else {
        (0..g.c_in).collect()
    };
    let mut total = bias as f64;
    let channels: Vec<Value> = in_channels
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let mut inputs = Vec::with_capacity(kh * kw);
            let mut weights = Vec::with_capacity(kh * kw);
            for u in 0..kh {
                for v in 0..kw {
                    let i = (at.y * g.stride_h + u) as isize - g.pad_top as isize;
                    let j = (at.x * g.stride_w + v) as isize - g.pad_left as isize;
                    let inside = (0..g.h as isize).contains(&i) && (0..g.w as isize).contains(&j);
                    inputs.push(if inside {
                        input.data[(c * g.h + i as usize) * g.w + j as usize]
                    } else {
                        0.0
                    });
                    let filter = if depthwise {
                        at.channel
                    } else {
                        at.channel * g.c_in + k
                    };
                    weights.push(weight.data[filter * kh * kw + u * kw + v]);
                }
            }
            let sum: f64 = inputs
                .iter()
                .zip(&weights)
                .map(|(a, b)| (a * b) as f64)
                .sum();
            total += sum;
            json!({ "channel": c, "inputs": inputs, "weights": weights, "sum": sum })
        })
        .collect();
    let value = outputs[at.layer].data[(at.channel * g.out_h + at.y) * g.out_w + at.x];
    Ok(json!({
        "layer": at.layer,
        "name": layer_name(state, at.layer),
        "channel": at.channel,
        "y": at.y,
        "x": at.x,
        "kernel": [kh, kw],
        "stride": [g.stride_h, g.stride_w],
        "channels": channels,
        "bias": bias,
        "sum": total,
        "value": value,
        "then": after(state, &outputs, &at, (g.out_h, g.out_w)),
    }))
}

/// The batch norm and ReLU layers that take the convolution's output right after it, each with
/// its arithmetic on the value at `at`.
fn after(state: &State, outputs: &[Tensor], at: &DotAt, (h, w): (usize, usize)) -> Vec<Value> {
    let spec = &state.info.spec;
    let infos = spec.layers().expect("a loaded model's spec is valid");
    let at_value = |t: &Tensor| t.data[(at.channel * h + at.y) * w + at.x];
    let mut steps = Vec::new();
    let mut j = at.layer + 1;
    while j < outputs.len() && infos[j].sources == [Some(j - 1)] {
        let step = match &infos[j].spec {
            LayerSpec::BatchNorm { eps, .. } => {
                let model = state.model();
                let p: Vec<f32> = model.layers[j]
                    .params()
                    .iter()
                    .map(|p| Cpu::new().download(&p.value).data[at.channel])
                    .collect();
                json!({ "kind": "batchnorm", "gamma": p[0], "beta": p[1], "mean": p[2],
                        "var": p[3], "eps": short(*eps), "value": at_value(&outputs[j]) })
            }
            LayerSpec::Relu => json!({ "kind": "relu", "value": at_value(&outputs[j]) }),
            _ => break,
        };
        steps.push(step);
        j += 1;
    }
    steps
}

/// Every layer's output for `img` (Mode::Eval), once `index` is known to be a layer.
fn layer_outputs(state: &State, img: &DynamicImage, index: usize) -> Result<Vec<Tensor>, ApiError> {
    let n = state.info.spec.layers.len();
    if index >= n {
        return Err(ApiError::new(
            400,
            format!("the model has layers 0 to {}, not {index}", n - 1),
        ));
    }
    let x = Cpu::new().upload(&input_tensor(state, &[img]));
    Ok(state.model().outputs(&Cpu::new(), x))
}

/// The model's input for `images`: `[N, 1, S, S]`, framed as in training.
fn input_tensor(state: &State, images: &[&DynamicImage]) -> Tensor {
    let square = state.info.spec.square();
    let size = square.side;
    let data: Vec<f32> = images
        .iter()
        .flat_map(|img| to_model_input(img, square))
        .collect();
    Tensor::new([images.len(), 1, size, size], data)
}

/// P(fractured) for each framed image (`S × S` values), as `predict` computes it.
fn probabilities(state: &State, framed: &[&[f32]]) -> Vec<f32> {
    let size = state.info.spec.square().side;
    let x = Tensor::new([framed.len(), 1, size, size], framed.concat());
    crate::eval::batch_probabilities(&Cpu::new(), &mut state.inference(), x, state.tta)
}

/// The parts named `image`, or a 400 when there are none.
fn image_parts(body: &Body) -> Result<Vec<Part<'_>>, ApiError> {
    let parts = multipart::parts(&body.bytes, &body.boundary).map_err(|e| ApiError::new(400, e))?;
    let images: Vec<Part> = parts.into_iter().filter(|p| p.name == "image").collect();
    if images.is_empty() {
        return Err(ApiError::new(400, "the upload has no part named 'image'"));
    }
    Ok(images)
}

/// The first image part, decoded (the others are not).
fn first_image(state: &State, body: &Body) -> Result<Upload, ApiError> {
    decode(state, &image_parts(body)?[0])
}

/// An uploaded image, decoded.
struct Upload {
    file: String,
    img: DynamicImage,
    /// What a DICOM upload says about itself (no personal data).
    dicom: Option<DicomInfo>,
}

/// One uploaded image (any format `predict` reads, DICOM included), refused with the reason
/// when it is not an image, is larger than the pixel limit, or is cut short.
fn decode(state: &State, part: &Part) -> Result<Upload, ApiError> {
    let file = part.filename.clone().unwrap_or_else(|| "image".into());
    if dicom::is_dicom(part.data) {
        return decode_dicom(state, part.data, file);
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(part.data))
            .with_guessed_format()
            .expect("reading from memory cannot fail")
    };
    let not_an_image = || {
        ApiError::new(
            415,
            format!(
                "{file} is not an image this server reads (JPEG, PNG, BMP, TIFF, GIF, WebP or \
                 DICOM)"
            ),
        )
    };
    let format = reader().format().ok_or_else(not_an_image)?;
    let (w, h) = reader()
        .into_dimensions()
        .map_err(|e| ApiError::new(422, format!("{file} cannot be read: {e}")))?;
    within_limit(state, &file, (w, h))?;
    if format == image::ImageFormat::Jpeg && !part.data.ends_with(&[0xFF, 0xD9]) {
        // the JPEG decoder fills a cut-off image with gray instead of failing
        return Err(ApiError::new(
            422,
            format!("{file} is truncated: its JPEG data stops before the end marker"),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(state.max_pixels.saturating_mul(16));
    let mut r = reader();
    r.limits(limits);
    let img = crate::data::image::decode_upright(r)
        .map_err(|e| ApiError::new(422, format!("{file} is truncated or damaged: {e}")))?;
    Ok(Upload {
        file,
        img,
        dicom: None,
    })
}

/// A DICOM upload: its attributes read and its size checked before any pixel is decoded.
fn decode_dicom(state: &State, bytes: &[u8], file: String) -> Result<Upload, ApiError> {
    let unreadable = |e: anyhow::Error| ApiError::new(422, format!("{e:#}"));
    let parsed = dicom::Dicom::parse(bytes, &file).map_err(unreadable)?;
    within_limit(state, &file, parsed.size())?;
    let (img, info) = parsed.decode().map_err(unreadable)?;
    Ok(Upload {
        file,
        img,
        dicom: Some(info),
    })
}

/// A 413 when an image of `w × h` has more pixels than the server takes.
fn within_limit(state: &State, file: &str, (w, h): (u32, u32)) -> Result<(), ApiError> {
    if u64::from(w) * u64::from(h) > state.max_pixels {
        return Err(ApiError::new(
            413,
            format!(
                "{file} is {w}x{h} pixels, more than the limit of {}",
                state.max_pixels
            ),
        ));
    }
    Ok(())
}

/// An f32 as the shortest decimal that reads back to it, exactly as `predict --json` prints it
/// (not the 17 digits of its widening to f64). Written by the same serializer: where two
/// shortest decimals read back to the f32 (251.828125 is 251.82812 and 251.82813), Rust's
/// `Display` and serde_json may pick different ones.
fn short(v: f32) -> Value {
    serde_json::to_string(&v)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn layer_name(state: &State, i: usize) -> String {
    let node = &state.info.spec.layers[i];
    node.name
        .clone()
        .unwrap_or_else(|| format!("{i:02} {}", kind(&node.layer)))
}

/// The type of a layer as spec files write it.
fn kind(layer: &LayerSpec) -> String {
    serde_json::to_value(layer)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

fn range(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// A feature map in gray, `lo` black and `hi` white.
fn map_image(m: &[f32], h: usize, w: usize, lo: f32, hi: f32) -> DynamicImage {
    let shade = |v: f32| {
        if hi > lo {
            (255.0 * (v - lo) / (hi - lo)).round() as u8
        } else {
            0
        }
    };
    let gray =
        image::GrayImage::from_raw(w as u32, h as u32, m.iter().map(|&v| shade(v)).collect());
    DynamicImage::ImageLuma8(gray.expect("h × w values"))
}

fn png_data_url(img: &DynamicImage) -> String {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("PNG encoding to memory");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// `{"name", "min", "max", "counts"}`: [`BINS`] equal bins from the smallest to the largest value.
fn histogram(name: &str, values: &[f32]) -> Value {
    let (lo, hi) = range(values);
    let mut counts = vec![0u32; BINS];
    let width = (hi - lo).max(f32::MIN_POSITIVE);
    for &v in values {
        counts[(((v - lo) / width * BINS as f32) as usize).min(BINS - 1)] += 1;
    }
    json!({ "name": name, "min": lo, "max": hi, "counts": counts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_predict_writes_them() {
        // 251.828125 = 251 + 53/64 is an f32 with two shortest decimals; predict's serializer
        // writes one of them, and the page must show the same
        let tie = 251.0f32 + 53.0 / 64.0;
        for v in [tie, 0.1, 0.8526925, 1e-7, 3.0] {
            let printed = serde_json::to_string(&v).unwrap();
            assert_eq!(short(v).to_string(), printed, "{v}");
        }
        assert_ne!(
            tie.to_string(),
            serde_json::to_string(&tie).unwrap(),
            "the tie this guards against"
        );
    }
}
