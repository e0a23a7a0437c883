//! ResNet with basic blocks (He et al., 2016, "Deep Residual Learning for Image Recognition"),
//! built as a spec graph for any width and depth, on one gray channel.
//!
//! A **basic block** computes F(x) = BN(conv3×3(ReLU(BN(conv3×3(x))))) and outputs
//! ReLU(F(x) + x): the block learns a correction to its input rather than a new representation,
//! and the gradient reaches early layers through the `+ x` unchanged. The first block of a stage
//! halves the image with stride 2 and doubles the channels; its shortcut is then a 1×1
//! convolution of stride 2 (the `add` layer's projection).
//!
//! Layout (ResNet-18's at depth 2): a 7×7 convolution of stride 2 and a 2×2 max pool (the stem),
//! four stages of `depth` blocks with `width`, 2·`width`, 4·`width`, 8·`width` channels, global
//! average pooling and one logit. At 128×128: 32×32 after the stem, 4×4 at the last stage.
//! The preset `resnet` is width 16, depth 2; `resnet-W` and `resnet-W-D` are the others
//! (ResNet-18 itself is `resnet-64-2`).
//!
//! **With a fracture map** (`resnet-loc`, and `-loc` after any of the names above): a small
//! feature pyramid (Lin et al., 2017) over the last three stages outputs a map of fracture logits
//! at stride 8 (24 × 24 at 192 pixels) beside the classification logit. The last stage, brought
//! to 2·`width` channels by a 1×1 convolution, is upsampled ×2 and added to the third stage
//! (projected to 2·`width` by the `add`), upsampled ×2 again and added to the second stage; a
//! 3×3 convolution with batch norm and ReLU and a 1×1 convolution of one filter follow. The fine
//! stage says where edges and cracks are; the coarse ones, what bone they are on. The
//! classification head reads the last stage as without the map.

use super::mobilenet::{bn_relu, conv};
use super::spec::{LayerSpec, ModelSpec, Node, Size2, SpecError};

/// Width (channels of the first stage) and blocks per stage of the `resnet` preset.
pub const DEFAULT_WIDTH: usize = 16;
pub const DEFAULT_DEPTH: usize = 2;

fn named(layer: LayerSpec, name: String) -> Node {
    Node {
        name: Some(name),
        ..layer.into()
    }
}

/// One basic block reading the output named `input`, its own output named `name`.
fn basic_block(layers: &mut Vec<Node>, input: &str, name: &str, channels: usize, stride: usize) {
    layers.push(conv(channels, 3, stride).into());
    layers.extend(bn_relu().map(Node::from));
    layers.push(conv(channels, 3, 1).into());
    let [bn, relu] = bn_relu();
    layers.push(named(bn, format!("{name}.body")));
    layers.push(Node {
        inputs: vec![format!("{name}.body"), input.to_string()],
        ..LayerSpec::Add.into()
    });
    layers.push(named(relu, name.to_string()));
}

/// The name of the fracture map's layer in the `-loc` presets.
pub const MAP_LAYER: &str = "fracture_map";

/// A residual network of basic blocks: `width` channels in the first of four stages, `depth`
/// blocks per stage, on one-channel `size`×`size` images, ending in one logit.
pub fn resnet(width: usize, depth: usize, size: usize) -> Result<ModelSpec, SpecError> {
    build(width, depth, size, false)
}

/// [`resnet`] with a fracture map at stride 8 (see the module comment).
pub fn resnet_loc(width: usize, depth: usize, size: usize) -> Result<ModelSpec, SpecError> {
    build(width, depth, size, true)
}

/// The feature pyramid over the stages named `stages` (their last blocks, finest first: stride
/// 8, 16, 32), ending in the map layer.
fn pyramid(layers: &mut Vec<Node>, stages: [&str; 3], channels: usize) {
    let [s8, s16, s32] = stages;
    layers.push(Node {
        name: Some("fpn.32".into()),
        inputs: vec![s32.to_string()],
        ..conv(channels, 1, 1).into()
    });
    // each level: the coarser one upsampled, plus this stage (projected to `channels`)
    let mut coarser = "fpn.32".to_string();
    for (stage, level) in [(s16, "fpn.16"), (s8, "fpn.8")] {
        let up = format!("{coarser}.up");
        layers.push(named(LayerSpec::Upsample { factor: 2 }, up.clone()));
        layers.push(Node {
            name: Some(level.to_string()),
            inputs: vec![up, stage.to_string()],
            ..LayerSpec::Add.into()
        });
        coarser = level.to_string();
    }
    layers.push(conv(channels, 3, 1).into());
    layers.extend(bn_relu().map(Node::from));
    layers.push(named(conv(1, 1, 1), MAP_LAYER.into()));
}

fn build(width: usize, depth: usize, size: usize, map: bool) -> Result<ModelSpec, SpecError> {
    if !(1..=512).contains(&width) || !(1..=16).contains(&depth) {
        return Err(SpecError(format!(
            "resnet takes a width from 1 to 512 and a depth from 1 to 16, got {width} and {depth}"
        )));
    }
    let mut layers: Vec<Node> = vec![conv(width, 7, 2).into()];
    let [bn, relu] = bn_relu();
    layers.extend([bn.into(), relu.into()]);
    let pool = LayerSpec::MaxPool {
        size: Size2::Square(2),
        stride: None,
    };
    layers.push(named(pool, "stem".into()));
    let mut input = "stem".to_string();
    for stage in 0..4 {
        for block in 0..depth {
            let name = format!("stage{}.block{}", stage + 1, block + 1);
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            basic_block(&mut layers, &input, &name, width << stage, stride);
            input = name;
        }
    }
    if map {
        let last = |stage: usize| format!("stage{stage}.block{depth}");
        let (s8, s16, s32) = (last(2), last(3), last(4));
        pyramid(&mut layers, [&s8, &s16, &s32], 2 * width);
        // the head reads the last stage, not the map
        layers.push(Node {
            inputs: vec![s32],
            ..LayerSpec::GlobalAvgPool.into()
        });
    } else {
        layers.push(LayerSpec::GlobalAvgPool.into());
    }
    layers.push(LayerSpec::Dense { units: 1 }.into());
    let name = match (width, depth) {
        (DEFAULT_WIDTH, DEFAULT_DEPTH) => "resnet".to_string(),
        (w, DEFAULT_DEPTH) => format!("resnet-{w}"),
        (w, d) => format!("resnet-{w}-{d}"),
    };
    let name = if map { format!("{name}-loc") } else { name };
    let spec = ModelSpec {
        name,
        input: [1, size, size],
        framing: Default::default(),
        crop: 1.0,
        map: map.then(|| MAP_LAYER.to_string()),
        layers,
    };
    spec.layers()?;
    Ok(spec)
}

/// The ResNet a preset name stands for: `resnet`, `resnet-W` or `resnet-W-D`; `None` for any
/// other name, an error for a `resnet-` name whose numbers are not whole numbers.
pub fn from_preset_name(name: &str) -> Option<Result<ModelSpec, SpecError>> {
    let rest = name.strip_prefix("resnet")?;
    let (rest, map) = match rest.strip_suffix("-loc") {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Some(build(DEFAULT_WIDTH, DEFAULT_DEPTH, 128, map));
    }
    let numbers: Vec<&str> = rest.strip_prefix('-')?.split('-').collect();
    let parsed: Result<Vec<usize>, _> = numbers.iter().map(|n| n.parse::<usize>()).collect();
    Some(match parsed.as_deref() {
        Ok([w]) => build(*w, DEFAULT_DEPTH, 128, map),
        Ok([w, d]) => build(*w, *d, 128, map),
        _ => Err(SpecError(format!(
            "'{name}': a resnet preset is resnet, resnet-WIDTH or resnet-WIDTH-DEPTH, e.g. \
             resnet-32-2, each with -loc after it for a fracture map"
        ))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_layout_and_parameter_count() {
        // ResNet-18 at width 64 on one gray channel: torchvision's resnet18 has 11,689,512
        // parameters; minus its 1000-class head (513,000), minus 6,272 for one input channel
        // instead of three, plus a 1-unit head (513), plus our conv biases (16 3x3 convs and 3
        // projections: 64*4 + 128*4 + 256*4 + 512*4 + 128 + 256 + 512 + 64 for the stem), minus
        // the projections' batch norms that torchvision has and we do not (2*(128+256+512)).
        let spec = resnet(64, 2, 128).unwrap();
        let (trainable, _) = spec.param_counts().unwrap();
        let biases = 64 * 4 + 128 * 4 + 256 * 4 + 512 * 4 + (128 + 256 + 512) + 64;
        let expected = 11_689_512 - 513_000 - 6_272 + 513 + biases - 2 * (128 + 256 + 512);
        assert_eq!(trainable, expected);
        let layers = spec.layers().unwrap();
        assert_eq!(layers[3].output, [64, 32, 32], "the stem");
        let pooled = &layers[layers.len() - 2];
        assert_eq!(pooled.input, [512, 4, 4]);
        let adds: Vec<_> = layers.iter().filter(|l| l.spec == LayerSpec::Add).collect();
        assert_eq!(adds.len(), 8);
        let projected = adds.iter().filter(|l| l.trainable_params > 0).count();
        assert_eq!(projected, 3, "stages 2-4 open with a strided projection");
    }

    #[test]
    fn the_loc_preset_adds_a_stride_8_map_beside_the_same_classifier() {
        let plain = resnet(16, 2, 192).unwrap();
        let loc = resnet_loc(16, 2, 192).unwrap();
        let (layers, at) = (loc.layers().unwrap(), loc.map_layer().unwrap().unwrap());
        assert_eq!(layers[at].output, [1, 24, 24], "stride 8 at 192");
        assert_eq!(layers.last().unwrap().output, [1]);
        // the head reads the last stage: the same classifier, its parameters all there
        let gap = layers
            .iter()
            .find(|l| l.spec == LayerSpec::GlobalAvgPool)
            .unwrap();
        assert_eq!(gap.input, [128, 6, 6]);
        let (p, _) = plain.param_counts().unwrap();
        let (l, _) = loc.param_counts().unwrap();
        // 1x1 128->32, the 64->32 projection, 3x3 32->32 with its batch norm, 1x1 32->1
        let decoder = (128 * 32 + 32) + (64 * 32 + 32) + (9 * 32 * 32 + 32) + 2 * 32 + (32 + 1);
        assert_eq!(l - p, decoder);
        assert_eq!(plain.map_layer().unwrap(), None);
    }

    #[test]
    fn preset_names() {
        assert_eq!(from_preset_name("resnet").unwrap().unwrap().name, "resnet");
        assert_eq!(
            from_preset_name("resnet-32").unwrap().unwrap().name,
            "resnet-32"
        );
        let deep = from_preset_name("resnet-8-3").unwrap().unwrap();
        assert_eq!(
            deep.layers
                .iter()
                .filter(|n| n.layer == LayerSpec::Add)
                .count(),
            12
        );
        assert!(from_preset_name("resnet-x").unwrap().is_err());
        assert!(from_preset_name("resnet-0").unwrap().is_err());
        assert!(from_preset_name("resnetish").is_none());
        let loc = from_preset_name("resnet-8-1-loc").unwrap().unwrap();
        assert_eq!(loc.name, "resnet-8-1-loc");
        assert_eq!(loc.map.as_deref(), Some(MAP_LAYER));
        assert!(from_preset_name("mobilenet").is_none());
    }
}
