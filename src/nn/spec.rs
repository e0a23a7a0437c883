//! Model specs: a model written as a list of layers in TOML (or JSON), so that a new architecture
//! needs no recompiling. The built-in models are such files (`models/*.toml`), compiled in.
//!
//! ```toml
//! name = "tiny"
//! input = [1, 32, 32]          # channels, height, width of one image
//!
//! [[layers]]
//! type = "conv2d"
//! filters = 8
//! kernel = 3                   # or [height, width]
//! stride = 1                   # optional, default 1 (or [sh, sw])
//! padding = "same"             # "same" (default) or "valid"
//!
//! [[layers]]
//! type = "depthwise_conv2d"    # one kernel x kernel filter per channel (MobileNet)
//! kernel = 3                   # optional: stride and padding as for conv2d
//!
//! [[layers]]
//! type = "batchnorm"           # optional: momentum = 0.1, eps = 1e-5
//! [[layers]]
//! type = "relu"
//! [[layers]]
//! type = "maxpool"
//! size = 2                     # optional: stride (default = size)
//! [[layers]]
//! type = "flatten"             # or "global_avgpool": the mean of each channel, [C, H, W] -> [C]
//! [[layers]]
//! type = "dropout"
//! rate = 0.5
//! [[layers]]
//! type = "dense"
//! units = 1                    # the last layer must give one value: the logit of "fractured"
//! ```
//!
//! A layer takes the output of the layer before it. A spec can also be a graph, as residual
//! networks are: any layer may be given a `name`, and a later layer may list the names whose
//! outputs it takes in `inputs` (`"input"` is the image). The merge layer `add` takes two:
//!
//! ```toml
//! [[layers]]
//! type = "relu"
//! name = "block1"              # this output feeds the next layer and the add below
//! [[layers]]
//! type = "conv2d"
//! filters = 32
//! kernel = 3
//! stride = 2
//! [[layers]]
//! type = "batchnorm"
//! name = "body"
//! [[layers]]
//! type = "add"                 # y = body + shortcut; when the shapes differ, the shortcut goes
//! inputs = ["body", "block1"]  # through a learned 1x1 convolution (stride 2 here) first
//! ```
//!
//! Why one file of nearly 800 lines: the spec's types, their serde forms and the shape inference
//! of each layer kind are one vocabulary (the presets live in `resnet.rs` and `mobilenet.rs`).

use crate::backend::{Conv2dGeom, Padding, Pool2dGeom};
use crate::data::image::{Framing, Square};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A square size (`3`) or a `[height, width]` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    Square(usize),
    Rect([usize; 2]),
}

impl Size2 {
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size2::Square(s) => (s, s),
            Size2::Rect([h, w]) => (h, w),
        }
    }
}

fn one() -> Size2 {
    Size2::Square(1)
}
fn same() -> Padding {
    Padding::Same
}
fn bn_momentum() -> f32 {
    0.1
}
fn bn_eps() -> f32 {
    1e-5
}

/// Writes an f32 as the shortest decimal that reads back to it (0.1, not 0.10000000149011612,
/// which is what widening it to the f64 of TOML and JSON would print).
fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(f64::from(*v)))
}

/// An activation a layer applies to its own output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
}

/// One layer as written in a spec file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerSpec {
    Conv2d {
        filters: usize,
        kernel: Size2,
        #[serde(default = "one")]
        stride: Size2,
        #[serde(default = "same")]
        padding: Padding,
        /// Applied to the output inside the convolution (one pass over it fewer than a layer of
        /// its own): `activation = "relu"`, as in Keras' `Conv2D(activation="relu")`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
    },
    /// One `kernel` filter per channel, channels not mixed; output channels = input channels.
    #[serde(rename = "depthwise_conv2d")]
    DepthwiseConv2d {
        kernel: Size2,
        #[serde(default = "one")]
        stride: Size2,
        #[serde(default = "same")]
        padding: Padding,
        /// Applied to the output inside the convolution, as for `conv2d`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
    },
    /// `momentum` is the weight of the new batch in the running averages (PyTorch's convention;
    /// Keras' `momentum = 0.99` is `momentum = 0.01` here).
    BatchNorm {
        #[serde(default = "bn_momentum", serialize_with = "short_f32")]
        momentum: f32,
        #[serde(default = "bn_eps", serialize_with = "short_f32")]
        eps: f32,
    },
    MaxPool {
        size: Size2,
        #[serde(default)]
        stride: Option<Size2>,
    },
    Dense {
        units: usize,
    },
    Relu,
    Dropout {
        #[serde(serialize_with = "short_f32")]
        rate: f32,
    },
    Flatten,
    /// `[C, H, W]` → `[C]`: the mean of each channel.
    #[serde(rename = "global_avgpool")]
    GlobalAvgPool,
    /// y = a + b of its two inputs, a residual block's merge; when b's shape differs from a's, b
    /// first goes through a learned 1×1 convolution (a projection, strided to a's size).
    Add,
    /// `[C, H, W]` → `[C, factor·H, factor·W]`, each value repeated over a block (nearest
    /// neighbour): a feature pyramid's top-down path.
    Upsample {
        #[serde(default = "two")]
        factor: usize,
    },
}

fn two() -> usize {
    2
}

/// One node of a model's graph: a layer, the name later layers may use for its output, and the
/// names of the outputs it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub layer: LayerSpec,
    pub name: Option<String>,
    /// Names of earlier layers, or [`INPUT`]; empty: the layer just before (the image for the
    /// first layer).
    pub inputs: Vec<String>,
}

/// The name of the model's input image in `inputs`.
pub const INPUT: &str = "input";

impl From<LayerSpec> for Node {
    fn from(layer: LayerSpec) -> Self {
        Node {
            layer,
            name: None,
            inputs: Vec::new(),
        }
    }
}

// A node is written as its layer's table with `name` and `inputs` beside `type`, so that a plain
// list of layers stays a valid spec.
impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut table = match serde_json::to_value(&self.layer).map_err(S::Error::custom)? {
            serde_json::Value::Object(table) => table,
            _ => return Err(S::Error::custom("a layer is a table")),
        };
        // an option left out (a pooling stride) is absent from the table, as TOML has no null
        table.retain(|_, v| !v.is_null());
        if let Some(name) = &self.name {
            table.insert("name".into(), name.clone().into());
        }
        if !self.inputs.is_empty() {
            table.insert("inputs".into(), self.inputs.clone().into());
        }
        table.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let name = match table.remove("name") {
            None => None,
            Some(serde_json::Value::String(n)) => Some(n),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "name must be a string, got {other}"
                )))
            }
        };
        let inputs = match table.remove("inputs") {
            None => Vec::new(),
            Some(v) => serde_json::from_value(v)
                .map_err(|_| D::Error::custom("inputs must be a list of layer names"))?,
        };
        let layer =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(Node {
            layer,
            name,
            inputs,
        })
    }
}

/// A whole model: the shape of one input image and its layers in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    /// `[channels, height, width]` of one image.
    pub input: [usize; 3],
    /// How an X-ray of any shape is made square for `input` (written only when not `squash`).
    #[serde(default, skip_serializing_if = "is_squash")]
    pub framing: Framing,
    /// The input's side as a fraction of the framed square's: below 1, training sees random
    /// windows of the framed X-ray and judging its centre (written only when below 1).
    #[serde(default = "whole_square", skip_serializing_if = "is_whole_square")]
    pub crop: f32,
    /// The name of the layer whose output is the model's fracture map, `[1, H, W]` logits of a
    /// fracture at each place of the input (a localisation head, trained on outlines beside the
    /// classification logit); no map when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    pub layers: Vec<Node>,
}

fn is_squash(f: &Framing) -> bool {
    *f == Framing::Squash
}

/// The smallest crop: a window of half the framed side already leaves out three quarters of the
/// X-ray.
pub const MIN_CROP: f32 = 0.5;

fn whole_square() -> f32 {
    1.0
}

fn is_whole_square(crop: &f32) -> bool {
    *crop == 1.0
}

/// A spec that cannot be built, with the reason (naming the layer where there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SpecError {}

/// Most values one layer may hold per image, or in one weight tensor (8 GiB of f32).
const MAX_VALUES: u128 = 1 << 31;

/// What one layer does to the shape, and what it costs: a row of `model summary`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    pub index: usize,
    pub spec: LayerSpec,
    /// Shape of one sample's input and output (no batch dimension).
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub trainable_params: usize,
    /// Running statistics: saved and counted, not trained.
    pub fixed_params: usize,
    /// Forward FLOPs for one sample (a multiply-add counts 2).
    pub flops: u64,
    /// Values in the largest parameter tensor (0 for layers without parameters).
    pub largest_param: usize,
    /// Values of working memory per sample beside input and output: a convolution's unfolded
    /// input (im2col).
    pub workspace: usize,
    /// Where the layer's inputs come from: `Some(j)` for layer j's output, `None` for the image.
    pub sources: Vec<Option<usize>>,
    /// The shape of an `add` layer's second input.
    pub branch: Option<Vec<usize>>,
}

/// The built-in models: (name, spec text).
pub const PRESETS: &[(&str, &str)] = &[
    ("fracturenet", include_str!("../../models/fracturenet.toml")),
    (
        "xray-bone-classifier",
        include_str!("../../models/xray-bone-classifier.toml"),
    ),
];

impl LayerSpec {
    /// A convolution's geometry (full or depthwise) for one sample of shape `input`
    /// (`[C, H, W]`), batch 1; `None` for another kind of layer, a flat input, or a kernel that
    /// does not fit.
    pub fn conv_geom(&self, input: &[usize]) -> Option<Conv2dGeom> {
        let [c, h, w] = *input else {
            return None;
        };
        match self {
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                ..
            } => Conv2dGeom::new(1, c, h, w, *filters, kernel.hw(), stride.hw(), *padding),
            LayerSpec::DepthwiseConv2d {
                kernel,
                stride,
                padding,
                ..
            } => Conv2dGeom::depthwise(1, c, h, w, kernel.hw(), stride.hw(), *padding),
            _ => None,
        }
    }

    /// A pooling layer's geometry for one sample of shape `input` (`[C, H, W]`), batch 1.
    pub fn pool_geom(&self, input: &[usize]) -> Option<Pool2dGeom> {
        let (LayerSpec::MaxPool { size, stride }, [c, h, w]) = (self, input) else {
            return None;
        };
        Pool2dGeom::new(1, *c, *h, *w, size.hw(), stride.unwrap_or(*size).hw())
    }

    /// The 1×1 convolution that brings an `add` layer's second input, of shape `branch`, to the
    /// shape `main` of its first: `None` when the shapes are equal; an error when no such
    /// convolution exists (flat inputs, or sizes no stride maps).
    pub fn projection_geom(main: &[usize], branch: &[usize]) -> Result<Option<Conv2dGeom>, String> {
        if main == branch {
            return Ok(None);
        }
        let (&[c, h, w], &[cb, hb, wb]) = (main, branch) else {
            return Err(format!(
                "cannot add {branch:?} to {main:?}: shapes differ and are not both images"
            ));
        };
        let (sh, sw) = (hb.div_ceil(h), wb.div_ceil(w));
        Conv2dGeom::new(1, cb, hb, wb, c, (1, 1), (sh, sw), Padding::Valid)
            .filter(|g| (g.out_h, g.out_w) == (h, w))
            .map(Some)
            .ok_or_else(|| {
                format!("cannot add {branch:?} to {main:?}: no 1x1 convolution maps {hb}x{wb} to {h}x{w}")
            })
    }

    /// Whether the layer's output is linear in each of its inputs and parameters (with its
    /// activation, if any, left out): then a central difference is exact at any step, and the
    /// gradient checks probe it with a large one, which keeps f32 rounding small next to it.
    pub fn is_linear(&self) -> bool {
        match self {
            LayerSpec::Conv2d { activation, .. }
            | LayerSpec::DepthwiseConv2d { activation, .. } => activation.is_none(),
            LayerSpec::GlobalAvgPool
            | LayerSpec::Dense { .. }
            | LayerSpec::Flatten
            | LayerSpec::Dropout { .. }
            | LayerSpec::Add
            | LayerSpec::Upsample { .. } => true,
            LayerSpec::BatchNorm { .. } | LayerSpec::MaxPool { .. } | LayerSpec::Relu => false,
        }
    }

    /// The activation a layer applies to its own output, if any.
    pub fn activation(&self) -> Option<Activation> {
        match self {
            LayerSpec::Conv2d { activation, .. }
            | LayerSpec::DepthwiseConv2d { activation, .. } => *activation,
            _ => None,
        }
    }

    /// Short description for tables: "conv2d 3x3/1 same, 32".
    pub fn describe(&self) -> String {
        match self {
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                padding,
                activation,
            } => {
                let ((kh, kw), (sh, sw)) = (kernel.hw(), stride.hw());
                let relu = if activation.is_some() { " + relu" } else { "" };
                format!(
                    "conv2d {kh}x{kw}/{sh}x{sw} {}, {filters}{relu}",
                    padding.name()
                )
            }
            LayerSpec::DepthwiseConv2d {
                kernel,
                stride,
                padding,
                activation,
            } => {
                let ((kh, kw), (sh, sw)) = (kernel.hw(), stride.hw());
                let relu = if activation.is_some() { " + relu" } else { "" };
                format!("depthwise {kh}x{kw}/{sh}x{sw} {}{relu}", padding.name())
            }
            LayerSpec::GlobalAvgPool => "global avgpool".into(),
            LayerSpec::BatchNorm { .. } => "batchnorm".into(),
            LayerSpec::MaxPool { size, stride } => {
                let ((kh, kw), (sh, sw)) = (size.hw(), stride.unwrap_or(*size).hw());
                format!("maxpool {kh}x{kw}/{sh}x{sw}")
            }
            LayerSpec::Dense { units } => format!("dense {units}"),
            LayerSpec::Relu => "relu".into(),
            LayerSpec::Dropout { rate } => format!("dropout {rate}"),
            LayerSpec::Flatten => "flatten".into(),
            LayerSpec::Add => "add".into(),
            LayerSpec::Upsample { factor } => format!("upsample x{factor}"),
        }
    }

    /// The layer's output shape, parameter counts and FLOPs for one sample of shape `input`.
    fn infer(
        &self,
        index: usize,
        input: &[usize],
        branch: Option<&[usize]>,
    ) -> Result<LayerInfo, SpecError> {
        let err = |msg: String| SpecError(format!("layer {index} ({}): {msg}", self.describe()));
        let image = |what: &str| match input {
            [c, h, w] => Ok((*c, *h, *w)),
            _ => Err(err(format!(
                "{what} needs an image input [channels, height, width], got {input:?}"
            ))),
        };
        let (mut trainable, mut fixed, mut flops) = (0, 0, 0u64);
        let (mut largest_param, mut workspace) = (0, 0);
        let output = match self {
            LayerSpec::Conv2d {
                filters,
                kernel,
                stride,
                ..
            } => {
                let (_, h, w) = image("conv2d")?;
                let positive = *filters > 0 && kernel.hw().0 * kernel.hw().1 > 0;
                if !positive || stride.hw().0 == 0 || stride.hw().1 == 0 {
                    return Err(err("filters, kernel and stride must be at least 1".into()));
                }
                let g = self.conv_geom(input).ok_or_else(|| {
                    err(format!(
                        "the {}x{} kernel does not fit in the {h}x{w} input with valid padding",
                        kernel.hw().0,
                        kernel.hw().1
                    ))
                })?;
                trainable = g.patch_len() * filters + filters;
                flops = g.forward_flops();
                largest_param = g.patch_len() * filters;
                workspace = g.patch_len() * g.out_h * g.out_w;
                vec![*filters, g.out_h, g.out_w]
            }
            LayerSpec::DepthwiseConv2d { kernel, stride, .. } => {
                let (c, h, w) = image("depthwise_conv2d")?;
                let (kh, kw) = kernel.hw();
                if kh * kw == 0 || stride.hw().0 == 0 || stride.hw().1 == 0 {
                    return Err(err("kernel and stride must be at least 1".into()));
                }
                let g = self.conv_geom(input).ok_or_else(|| {
                    err(format!(
                        "the {kh}x{kw} kernel does not fit in the {h}x{w} input with valid padding"
                    ))
                })?;
                trainable = c * kh * kw + c;
                flops = g.depthwise_flops();
                largest_param = c * kh * kw;
                vec![c, g.out_h, g.out_w]
            }
            LayerSpec::GlobalAvgPool => {
                let (c, h, w) = image("global_avgpool")?;
                flops = (c * h * w) as u64;
                vec![c]
            }
            LayerSpec::BatchNorm { momentum, eps } => {
                if !(0.0..=1.0).contains(momentum) || eps.is_nan() || *eps <= 0.0 {
                    return Err(err("momentum must be in [0, 1] and eps above 0".into()));
                }
                let c = *input.first().ok_or_else(|| err("empty input".into()))?;
                trainable = 2 * c;
                fixed = 2 * c;
                largest_param = c;
                flops = 2 * input.iter().product::<usize>() as u64;
                input.to_vec()
            }
            LayerSpec::MaxPool { size, stride } => {
                let (c, h, w) = image("maxpool")?;
                let stride = stride.unwrap_or(*size);
                if size.hw().0 * size.hw().1 == 0 || stride.hw().0 * stride.hw().1 == 0 {
                    return Err(err("size and stride must be at least 1".into()));
                }
                let g = self.pool_geom(input).ok_or_else(|| {
                    err(format!(
                        "the pooling window does not fit in the {h}x{w} input"
                    ))
                })?;
                vec![c, g.out_h, g.out_w]
            }
            LayerSpec::Dense { units } => {
                let [features] = input else {
                    return Err(err(format!(
                        "dense needs a flat input, got {input:?}: add a flatten layer before it"
                    )));
                };
                if *units == 0 {
                    return Err(err("units must be at least 1".into()));
                }
                trainable = features * units + units;
                largest_param = features * units;
                flops = 2 * (features * units) as u64;
                vec![*units]
            }
            LayerSpec::Dropout { rate } => {
                if !(0.0..1.0).contains(rate) {
                    return Err(err(format!("rate must be in [0, 1), got {rate}")));
                }
                input.to_vec()
            }
            LayerSpec::Relu => input.to_vec(),
            LayerSpec::Flatten => vec![input.iter().product()],
            LayerSpec::Upsample { factor } => {
                let (c, h, w) = image("upsample")?;
                if *factor == 0 {
                    return Err(err("factor must be at least 1".into()));
                }
                vec![c, h * factor, w * factor]
            }
            LayerSpec::Add => {
                let branch = branch.ok_or_else(|| err("add needs two inputs".into()))?;
                let values = input.iter().product::<usize>();
                flops = values as u64;
                if let Some(g) = Self::projection_geom(input, branch).map_err(err)? {
                    trainable = g.c_in * g.c_out + g.c_out;
                    largest_param = g.c_in * g.c_out;
                    flops += g.forward_flops();
                }
                input.to_vec()
            }
        };
        // Sizes that no machine could hold are refused here, before anything is allocated (the
        // products are taken in u128, where they cannot overflow).
        let values = |dims: &[usize]| dims.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128));
        let weights = match self {
            LayerSpec::Conv2d {
                filters, kernel, ..
            } => values(&[
                input.first().copied().unwrap_or(0),
                kernel.hw().0,
                kernel.hw().1,
                *filters,
            ]),
            LayerSpec::DepthwiseConv2d { kernel, .. } => values(&[
                input.first().copied().unwrap_or(0),
                kernel.hw().0,
                kernel.hw().1,
            ]),
            LayerSpec::Dense { units } => values(&[input.iter().product(), *units]),
            // (an add's projection holds C_in × C_out weights of two shapes already checked)
            LayerSpec::BatchNorm { .. }
            | LayerSpec::MaxPool { .. }
            | LayerSpec::Relu
            | LayerSpec::Dropout { .. }
            | LayerSpec::Flatten
            | LayerSpec::GlobalAvgPool
            | LayerSpec::Add
            | LayerSpec::Upsample { .. } => 0,
        };
        if values(&output) > MAX_VALUES || weights > MAX_VALUES {
            return Err(err(format!(
                "too large: {} values per image and {weights} weights, the limit being {MAX_VALUES}",
                values(&output)
            )));
        }
        Ok(LayerInfo {
            index,
            spec: self.clone(),
            input: input.to_vec(),
            output,
            trainable_params: trainable,
            fixed_params: fixed,
            flops,
            largest_param,
            workspace,
            sources: Vec::new(),
            branch: branch.map(<[usize]>::to_vec),
        })
    }
}

impl ModelSpec {
    /// Parses a spec from TOML, or from JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let spec: ModelSpec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| SpecError(format!("invalid JSON: {e}")))?
        } else {
            toml::from_str(text).map_err(|e| SpecError(format!("invalid TOML: {e}")))?
        };
        spec.layers()?;
        Ok(spec)
    }

    /// A built-in model by name, or a spec file by path.
    pub fn load(name_or_path: &str) -> Result<Self, SpecError> {
        if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            if let Some(spec) = super::mobilenet::from_preset_name(name_or_path)
                .or_else(|| super::resnet::from_preset_name(name_or_path))
            {
                return spec;
            }
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(SpecError(format!(
                "no built-in model and no file named '{name_or_path}' (built-in models: {}, \
                 mobilenet, mobilenet-WIDTH, resnet, resnet-WIDTH, resnet-WIDTH-DEPTH)",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| SpecError(format!("{}: {e}", path.display())))
    }

    /// The spec as TOML, which [`ModelSpec::parse`] reads back to the same spec.
    pub fn to_toml(&self) -> Result<String, SpecError> {
        toml::to_string(self)
            .map_err(|e| SpecError(format!("cannot write {} as TOML: {e}", self.name)))
    }

    /// The side of the square input and how an X-ray is framed and cropped to it.
    pub fn square(&self) -> Square {
        Square {
            side: self.input[1],
            framing: self.framing,
            crop: self.crop,
        }
    }

    /// The same model for square input images of side `size`.
    pub fn with_image_size(mut self, size: usize) -> Result<Self, SpecError> {
        self.input[1] = size;
        self.input[2] = size;
        self.layers()
            .map_err(|e| SpecError(format!("image size {size} does not fit {}: {e}", self.name)))?;
        Ok(self)
    }

    /// Every layer's shapes and costs, checking that the layers fit together and that the model
    /// ends in the single logit that the loss expects.
    pub fn layers(&self) -> Result<Vec<LayerInfo>, SpecError> {
        if self.input.contains(&0) {
            return Err(SpecError(format!(
                "input {:?} has a zero dimension",
                self.input
            )));
        }
        if self.layers.is_empty() {
            return Err(SpecError("the model has no layers".into()));
        }
        if !(MIN_CROP..=1.0).contains(&self.crop) {
            return Err(SpecError(format!(
                "crop {} is outside [{MIN_CROP}, 1]: the input's side as a fraction of the framed \
                 X-ray's",
                self.crop
            )));
        }
        let mut infos: Vec<LayerInfo> = Vec::with_capacity(self.layers.len());
        let mut names = std::collections::HashMap::from([(INPUT, None)]);
        let mut used = vec![false; self.layers.len()];
        for (i, node) in self.layers.iter().enumerate() {
            let at =
                |msg: String| SpecError(format!("layer {i} ({}): {msg}", node.layer.describe()));
            let sources: Vec<Option<usize>> = if node.inputs.is_empty() {
                vec![i.checked_sub(1)]
            } else {
                node.inputs
                    .iter()
                    .map(|n| {
                        names.get(n.as_str()).copied().ok_or_else(|| {
                            at(format!(
                                "input '{n}' is not the name of an earlier layer nor '{INPUT}'"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?
            };
            let wanted = if node.layer == LayerSpec::Add { 2 } else { 1 };
            if sources.len() != wanted {
                return Err(at(format!(
                    "takes {wanted} input(s), {} given",
                    sources.len()
                )));
            }
            let shape_of =
                |s: &Option<usize>| s.map_or(self.input.to_vec(), |j| infos[j].output.clone());
            let branch = sources.get(1).map(shape_of);
            let mut info = node
                .layer
                .infer(i, &shape_of(&sources[0]), branch.as_deref())?;
            for s in sources.iter().flatten() {
                used[*s] = true;
            }
            info.sources = sources;
            if let Some(name) = &node.name {
                if names.insert(name.as_str(), Some(i)).is_some() {
                    return Err(at(format!(
                        "the name '{name}' is taken (by an earlier layer or the input)"
                    )));
                }
            }
            infos.push(info);
        }
        let map = self.map_layer_of(&infos)?;
        if let Some(m) = map {
            used[m] = true; // read by the map's loss, not by a layer
        }
        if let Some(unused) = used[..used.len() - 1].iter().position(|u| !u) {
            return Err(SpecError(format!(
                "layer {unused} ({}): its output is used by no later layer",
                self.layers[unused].layer.describe()
            )));
        }
        let shape = infos.last().map(|l| l.output.clone()).unwrap_or_default();
        if shape != [1] {
            return Err(SpecError(format!(
                "the last layer outputs {shape:?}, but a binary classifier must output [1] \
                 (one logit): end with a dense layer of 1 unit"
            )));
        }
        Ok(infos)
    }

    /// The index of the fracture map's layer, if the spec names one.
    pub fn map_layer(&self) -> Result<Option<usize>, SpecError> {
        self.layers().map(|_| {
            let named = |n: &Node| n.name.as_deref() == self.map.as_deref();
            self.map
                .as_ref()
                .and_then(|_| self.layers.iter().position(named))
        })
    }

    /// [`ModelSpec::map_layer`] from the layers' shapes, checking that the map is `[1, H, W]`.
    fn map_layer_of(&self, infos: &[LayerInfo]) -> Result<Option<usize>, SpecError> {
        let Some(map) = &self.map else {
            return Ok(None);
        };
        let at = self
            .layers
            .iter()
            .position(|n| n.name.as_deref() == Some(map.as_str()))
            .ok_or_else(|| SpecError(format!("map '{map}' is not the name of a layer")))?;
        match infos[at].output.as_slice() {
            [1, h, w] if *h > 0 && *w > 0 => Ok(Some(at)),
            other => Err(SpecError(format!(
                "map '{map}' (layer {at}) outputs {other:?}; a fracture map is [1, height, width]: \
                 end it with a convolution of 1 filter"
            ))),
        }
    }

    /// Total parameters (trainable, fixed).
    pub fn param_counts(&self) -> Result<(usize, usize), SpecError> {
        let infos = self.layers()?;
        Ok((
            infos.iter().map(|l| l.trainable_params).sum(),
            infos.iter().map(|l| l.fixed_params).sum(),
        ))
    }
}
