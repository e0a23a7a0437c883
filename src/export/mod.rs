//! `fracture-cnn export`: a trained model as an ONNX file (opset 13) that other runtimes
//! (onnxruntime, tract, OpenVINO, TensorRT, ...) run without this crate.
//!
//! The graph maps each layer of the spec to its ONNX operator, with the checkpoint's tensors as
//! initializers under their checkpoint names:
//!
//! | layer | ONNX |
//! |---|---|
//! | conv2d | `Conv` with explicit `pads` (our `same` puts the odd zero at the bottom/right, as TensorFlow does), then `Relu` with `activation = "relu"` |
//! | depthwise_conv2d | `Conv` with `group` = channels (then `Relu`, as conv2d) |
//! | batchnorm | `BatchNormalization` (running statistics) |
//! | maxpool | `MaxPool` (no padding, floor) |
//! | global_avgpool | `GlobalAveragePool` then `Flatten` (ours gives `[N, C]`) |
//! | flatten | `Flatten` (axis 1: NCHW order, as ours) |
//! | dense | `Gemm` with `transB` (weights `[out, in]`) |
//! | relu | `Relu` |
//! | dropout | nothing: the identity at inference |
//! | add | `Add`, after a 1×1 `Conv` when the block projects its shortcut |
//!
//! then `Sigmoid`, so the output `probability` `[N, 1]` is what `predict` prints. The input
//! `image` is `[N, 1, H, W]` with N free; the preprocessing and the decision threshold travel in
//! `metadata_props`.

mod proto;

use crate::backend::cpu::Cpu;
use crate::backend::{Backend, Conv2dGeom};
use crate::checkpoint::{self, CheckpointInfo};
use crate::nn::{Activation, LayerSpec, Model, ModelSpec};
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use proto::Message;
use std::collections::HashMap;
use std::path::Path;

/// The opset the graph is written against, and the IR version that goes with it.
pub const OPSET: i64 = 13;
const IR_VERSION: i64 = 7;
/// The graph's input and output names.
pub const INPUT_NAME: &str = "image";
pub const OUTPUT_NAME: &str = "probability";
/// The second output of a model with a fracture map: `[N, 1, H, W]`, the probability of a
/// fracture at each cell of the input.
pub const MAP_OUTPUT_NAME: &str = "fracture_map";

/// What an export wrote.
pub struct Exported {
    pub nodes: usize,
    pub bytes: usize,
    pub info: CheckpointInfo,
}

/// Reads the checkpoint at `checkpoint` and writes it to `out` as ONNX (atomically).
pub fn export(checkpoint: &Path, out: &Path) -> Result<Exported> {
    let (model, info) = checkpoint::load(&Cpu::new(), checkpoint)?;
    let (bytes, nodes) = onnx_model(&Cpu::new(), &model, &info)
        .with_context(|| format!("cannot export {}", checkpoint.display()))?;
    crate::files::write_atomic(out, &bytes)?;
    Ok(Exported {
        nodes,
        bytes: bytes.len(),
        info,
    })
}

/// The serialised ONNX `ModelProto` of `model` (described by `info`), and its number of nodes.
pub fn onnx_model<B: Backend>(
    be: &B,
    model: &Model<B>,
    info: &CheckpointInfo,
) -> Result<(Vec<u8>, usize)> {
    let tensors: HashMap<String, Tensor> = model
        .named_params()
        .into_iter()
        .map(|p| (p.name, be.download(&p.param.value)))
        .collect();
    let kinds: Vec<&str> = model.layers.iter().map(|l| l.kind()).collect();
    let graph = Graph::of(&info.spec, &kinds, &tensors)?;
    let nodes = graph.nodes.len();
    let mut opset = Message::new();
    opset.string(1, "").int(2, OPSET);
    let mut model = Message::new();
    model
        .int(1, IR_VERSION)
        .string(2, "fracture-cnn")
        .string(3, env!("CARGO_PKG_VERSION"))
        .string(
            6,
            "P(fractured) of a bone X-ray; see metadata_props for the preprocessing",
        )
        .message(7, graph.into_message(&info.spec))
        .message(8, opset);
    for (key, value) in metadata(info) {
        let mut entry = Message::new();
        entry.string(1, &key).string(2, &value);
        model.message(14, entry);
    }
    Ok((model.into_bytes(), nodes))
}

/// What a runtime needs to feed the graph as training fed the model, and to decide as `predict`.
fn metadata(info: &CheckpointInfo) -> Vec<(String, String)> {
    let [_, h, w] = info.spec.input;
    let square = info.spec.square();
    let framing = square.framing.name();
    let f = square.framed_side();
    let window = if f == h {
        String::new()
    } else {
        format!(
            "; then keep the centre {h}x{w} window (from row and column {})",
            (f - h) / 2
        )
    };
    vec![
        ("threshold".into(), info.threshold.to_string()),
        ("input_height".into(), h.to_string()),
        ("input_width".into(), w.to_string()),
        ("framing".into(), square.describe()),
        (
            "preprocessing".into(),
            format!(
                "decode; convert to gray (luma) as float in [0, 1] (16-bit images keep their \
                 precision); resize to {f}x{f} by '{framing}' (squash: to the square, aspect not \
                 kept; pad-edge / pad-reflect: long side to {f}, centred, the rest filled with \
                 the edge repeated / the image mirrored) with a triangle (bilinear) filter\
                 {window}; no mean or scale beyond [0, 1]; NCHW with one channel"
            ),
        ),
        (
            "label".into(),
            format!(
                "fractured when probability >= {}, else not fractured",
                info.threshold
            ),
        ),
        (
            "outputs".into(),
            match info.spec.map.is_some() {
                true => format!(
                    "{OUTPUT_NAME} [N, 1]: P(fractured); {MAP_OUTPUT_NAME} [N, 1, H, W]: the \
                     probability of a fracture at each cell of the input's H x W grid"
                ),
                false => format!("{OUTPUT_NAME} [N, 1]: P(fractured)"),
            },
        ),
        ("epoch".into(), info.epoch.to_string()),
        (
            "spec".into(),
            serde_json::to_string(&info.spec).unwrap_or_default(),
        ),
    ]
}

/// The nodes and initializers of the graph being built.
struct Graph<'a> {
    tensors: &'a HashMap<String, Tensor>,
    nodes: Vec<Message>,
    initializers: Vec<Message>,
}

impl<'a> Graph<'a> {
    /// The graph of `spec`, its weights taken from `tensors` by checkpoint name.
    /// (`kinds`: each layer's kind, which prefixes its tensors' names).
    fn of(spec: &ModelSpec, kinds: &[&str], tensors: &'a HashMap<String, Tensor>) -> Result<Self> {
        let infos = spec.layers()?;
        let mut g = Graph {
            tensors,
            nodes: Vec::new(),
            initializers: Vec::new(),
        };
        // the value each layer's output is known by in the graph
        let mut values: Vec<String> = Vec::with_capacity(infos.len());
        for info in &infos {
            let i = info.index;
            let inputs: Vec<String> = info
                .sources
                .iter()
                .map(|s| s.map_or(INPUT_NAME.to_string(), |j| values[j].clone()))
                .collect();
            let node = &spec.layers[i];
            let prefix = format!("{i:02}.{}", kinds[i]);
            let value = g.layer(
                &node.layer,
                &info.input,
                info.branch.as_deref(),
                &inputs,
                &prefix,
            )?;
            values.push(value);
        }
        if let Some(m) = spec.map_layer()? {
            g.node("Sigmoid", &[&values[m]], MAP_OUTPUT_NAME, vec![]);
        }
        let logits = values.pop().context("a model has at least one layer")?;
        g.node("Sigmoid", &[&logits], OUTPUT_NAME, vec![]);
        Ok(g)
    }

    /// Adds the nodes of one layer reading `inputs`; returns the name of its output.
    fn layer(
        &mut self,
        layer: &LayerSpec,
        input: &[usize],
        branch: Option<&[usize]>,
        inputs: &[String],
        prefix: &str,
    ) -> Result<String> {
        let x = inputs[0].as_str();
        let out = prefix.to_string();
        match layer {
            LayerSpec::Conv2d { activation, .. }
            | LayerSpec::DepthwiseConv2d { activation, .. } => {
                let g = layer.conv_geom(input).context("checked by the spec")?;
                let depthwise = matches!(layer, LayerSpec::DepthwiseConv2d { .. });
                let groups = if depthwise { g.c_in } else { 1 };
                match activation {
                    Some(Activation::Relu) => {
                        let conv = format!("{prefix}.conv");
                        self.conv(x, &g, groups, prefix, &conv)?;
                        self.node("Relu", &[&conv], &out, vec![]);
                    }
                    None => self.conv(x, &g, groups, prefix, &out)?,
                }
            }
            LayerSpec::BatchNorm { eps, .. } => {
                let names = ["gamma", "beta", "running_mean", "running_var"]
                    .map(|p| self.weight(&format!("{prefix}.{p}")));
                let names = names.into_iter().collect::<Result<Vec<_>>>()?;
                let mut args = vec![x];
                args.extend(names.iter().map(String::as_str));
                self.node(
                    "BatchNormalization",
                    &args,
                    &out,
                    vec![attr_float("epsilon", *eps)],
                );
            }
            LayerSpec::MaxPool { .. } => {
                let g = layer.pool_geom(input).context("checked by the spec")?;
                let attrs = vec![
                    attr_ints("kernel_shape", &[g.kh, g.kw]),
                    attr_ints("strides", &[g.stride_h, g.stride_w]),
                ];
                self.node("MaxPool", &[x], &out, attrs);
            }
            LayerSpec::GlobalAvgPool => {
                let pooled = format!("{prefix}.pooled");
                self.node("GlobalAveragePool", &[x], &pooled, vec![]);
                self.node("Flatten", &[&pooled], &out, vec![attr_int("axis", 1)]);
            }
            LayerSpec::Flatten => self.node("Flatten", &[x], &out, vec![attr_int("axis", 1)]),
            LayerSpec::Dense { .. } => {
                let w = self.weight(&format!("{prefix}.weight"))?;
                let b = self.weight(&format!("{prefix}.bias"))?;
                self.node("Gemm", &[x, &w, &b], &out, vec![attr_int("transB", 1)]);
            }
            LayerSpec::Relu => self.node("Relu", &[x], &out, vec![]),
            LayerSpec::Dropout { .. } => return Ok(x.to_string()),
            LayerSpec::Add => {
                let shortcut = match LayerSpec::projection_geom(input, branch.unwrap_or(input))
                    .map_err(anyhow::Error::msg)?
                {
                    Some(g) => {
                        let projected = format!("{prefix}.projection");
                        self.conv(&inputs[1], &g, 1, prefix, &projected)?;
                        projected
                    }
                    None => inputs[1].clone(),
                };
                self.node("Add", &[x, &shortcut], &out, vec![]);
            }
            LayerSpec::Upsample { factor } => {
                // ONNX's Resize, nearest neighbour: input pixel floor(i / s) for output pixel i
                let s = *factor as f32;
                let scales = format!("{prefix}.scales");
                self.initializer(&scales, &[4], &[1.0, 1.0, s, s]);
                let attrs = vec![
                    attr_string("mode", "nearest"),
                    attr_string("coordinate_transformation_mode", "asymmetric"),
                    attr_string("nearest_mode", "floor"),
                ];
                self.node("Resize", &[x, "", &scales], &out, attrs);
            }
        }
        Ok(out)
    }

    /// A `Conv` node of geometry `g` in `groups` groups, with the weights `{prefix}.weight` and
    /// `{prefix}.bias`.
    fn conv(
        &mut self,
        x: &str,
        g: &Conv2dGeom,
        groups: usize,
        prefix: &str,
        out: &str,
    ) -> Result<()> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = self.weight(&format!("{prefix}.bias"))?;
        // the zeros after the last row and column: what the last window reaches past the input
        let pad_end = |out: usize, s: usize, k: usize, pad: usize, n: usize| {
            ((out - 1) * s + k).saturating_sub(n + pad)
        };
        let pads = [
            g.pad_top,
            g.pad_left,
            pad_end(g.out_h, g.stride_h, g.kh, g.pad_top, g.h),
            pad_end(g.out_w, g.stride_w, g.kw, g.pad_left, g.w),
        ];
        let attrs = vec![
            attr_ints("kernel_shape", &[g.kh, g.kw]),
            attr_ints("strides", &[g.stride_h, g.stride_w]),
            attr_ints("pads", &pads),
            attr_int("group", groups as i64),
        ];
        self.node("Conv", &[x, &w, &b], out, attrs);
        Ok(())
    }

    /// Adds the checkpoint tensor `name` as an initializer; returns its name.
    fn weight(&mut self, name: &str) -> Result<String> {
        let Some(t) = self.tensors.get(name) else {
            bail!("the checkpoint has no tensor {name}");
        };
        self.initializer(name, t.shape.dims(), &t.data);
        Ok(name.to_string())
    }

    /// Adds a float tensor `name` of shape `dims` as an initializer.
    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        let mut m = Message::new();
        for &d in dims {
            m.int(1, d as i64);
        }
        m.int(2, FLOAT)
            .string(8, name)
            .bytes(9, bytemuck::cast_slice(data));
        self.initializers.push(m);
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attributes: Vec<Message>) {
        let mut m = Message::new();
        for i in inputs {
            m.string(1, i);
        }
        m.string(2, output).string(3, output).string(4, op);
        for a in attributes {
            m.message(5, a);
        }
        self.nodes.push(m);
    }

    fn into_message(self, spec: &ModelSpec) -> Message {
        let [c, h, w] = spec.input;
        let mut graph = Message::new();
        for n in self.nodes {
            graph.message(1, n);
        }
        graph.string(2, &spec.name);
        for t in self.initializers {
            graph.message(5, t);
        }
        graph
            .message(
                11,
                value_info(
                    INPUT_NAME,
                    &[Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)],
                ),
            )
            .message(12, value_info(OUTPUT_NAME, &[Dim::Batch, Dim::Fixed(1)]));
        if let Ok(Some(m)) = spec.map_layer() {
            let shape = spec
                .layers()
                .map(|l| l[m].output.clone())
                .unwrap_or_default();
            if let [c, mh, mw] = shape[..] {
                let dims = [Dim::Batch, Dim::Fixed(c), Dim::Fixed(mh), Dim::Fixed(mw)];
                graph.message(12, value_info(MAP_OUTPUT_NAME, &dims));
            }
        }
        graph
    }
}

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i64 = 1;

enum Dim {
    /// The batch: any size (`dim_param` "N").
    Batch,
    Fixed(usize),
}

/// A `ValueInfoProto` of a float tensor.
fn value_info(name: &str, dims: &[Dim]) -> Message {
    let mut shape = Message::new();
    for d in dims {
        let mut dim = Message::new();
        match d {
            Dim::Batch => dim.string(2, "N"),
            Dim::Fixed(n) => dim.int(1, *n as i64),
        };
        shape.message(1, dim);
    }
    let mut tensor = Message::new();
    tensor.int(1, FLOAT).message(2, shape);
    let mut ty = Message::new();
    ty.message(1, tensor);
    let mut info = Message::new();
    info.string(1, name).message(2, ty);
    info
}

/// `AttributeProto`s: name (1), f (2), i (3), s (4), ints (8), type (20: FLOAT 1, INT 2,
/// STRING 3, INTS 7).
fn attr_int(name: &str, v: i64) -> Message {
    let mut m = Message::new();
    m.string(1, name).int(3, v).int(20, 2);
    m
}
fn attr_float(name: &str, v: f32) -> Message {
    let mut m = Message::new();
    m.string(1, name).float(2, v).int(20, 1);
    m
}
fn attr_string(name: &str, v: &str) -> Message {
    let mut m = Message::new();
    m.string(1, name).string(4, v).int(20, 3);
    m
}
fn attr_ints(name: &str, vs: &[usize]) -> Message {
    let mut m = Message::new();
    m.string(1, name);
    for &v in vs {
        m.int(8, v as i64);
    }
    m.int(20, 7);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelSpec;

    /// The metadata's value of `key` for the resnet at 192 with `crop`.
    fn metadata_of(crop: f32, key: &str) -> String {
        let mut spec = ModelSpec::load("resnet")
            .unwrap()
            .with_image_size(192)
            .unwrap();
        spec.crop = crop;
        let info = CheckpointInfo {
            spec,
            threshold: 0.5,
            epoch: 1,
            progress: None,
        };
        let entries = metadata(&info);
        entries.into_iter().find(|(k, _)| k == key).unwrap().1
    }

    #[test]
    fn the_metadata_says_how_to_frame_and_crop_an_xray() {
        assert_eq!(metadata_of(1.0, "framing"), "squash");
        let whole = metadata_of(1.0, "preprocessing");
        assert!(
            whole.contains("resize to 192x192") && !whole.contains("window"),
            "{whole}"
        );
        assert_eq!(
            metadata_of(0.875, "framing"),
            "squash, the centre 192 of 219"
        );
        let cropped = metadata_of(0.875, "preprocessing");
        assert!(
            cropped.contains("resize to 219x219")
                && cropped.contains("keep the centre 192x192 window (from row and column 13)"),
            "{cropped}"
        );
    }
}
