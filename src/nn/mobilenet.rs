//! MobileNet v1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for
//! Mobile Vision Applications"), built as a spec for any width multiplier.
//!
//! After a full 3×3 convolution of stride 2, thirteen blocks each split a convolution in two:
//! a **depthwise** 3×3 convolution filters every channel on its own (9 multiply-adds per output)
//! and a **pointwise** 1×1 convolution mixes the channels (Ci per output). A full 3×3
//! convolution from Ci to Co channels costs 9·Ci·Co per pixel; the pair costs 9·Ci + Ci·Co,
//! 8–9× less for the channel counts here. Each convolution is followed by batch norm and ReLU
//! (the paper's; Keras' version uses ReLU6). Five strides of 2 take 128×128 down to 4×4; global
//! average pooling then gives one value per channel, and a dense layer one logit.
//!
//! The width multiplier α scales every layer's channels (32·α … 1024·α), cutting parameters and
//! FLOPs by about α². The preset `mobilenet` is α = 0.5 on 1×128×128; `mobilenet-0.25`,
//! `mobilenet-0.75`, `mobilenet-1.0` (any α in (0, 4]) are the others.

use super::spec::{LayerSpec, ModelSpec, Node, Size2, SpecError};
use crate::backend::Padding;

/// The width multiplier of the `mobilenet` preset.
pub const DEFAULT_WIDTH: f32 = 0.5;

/// (stride of the depthwise convolution, channels of the pointwise one) of the 13 blocks, at α = 1.
const BLOCKS: [(usize, usize); 13] = [
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
];

/// Batch norm then ReLU, after every convolution.
pub(super) fn bn_relu() -> [LayerSpec; 2] {
    [
        LayerSpec::BatchNorm {
            momentum: 0.1,
            eps: 1e-5,
        },
        LayerSpec::Relu,
    ]
}

/// A convolution with same padding.
pub(super) fn conv(filters: usize, kernel: usize, stride: usize) -> LayerSpec {
    LayerSpec::Conv2d {
        filters,
        kernel: Size2::Square(kernel),
        stride: Size2::Square(stride),
        padding: Padding::Same,
        activation: None,
    }
}

/// MobileNet v1 with width multiplier `width` on one-channel `size`×`size` images, ending in one
/// logit (dropout 0.2 before it).
pub fn mobilenet_v1(width: f32, size: usize) -> Result<ModelSpec, SpecError> {
    if !(width > 0.0 && width <= 4.0) {
        return Err(SpecError(format!(
            "the width multiplier of mobilenet must be in (0, 4], got {width}"
        )));
    }
    let channels = |c: usize| ((c as f32 * width).round() as usize).max(1);
    let mut layers = vec![conv(channels(32), 3, 2)];
    layers.extend(bn_relu());
    for (stride, filters) in BLOCKS {
        layers.push(LayerSpec::DepthwiseConv2d {
            kernel: Size2::Square(3),
            stride: Size2::Square(stride),
            padding: Padding::Same,
            activation: None,
        });
        layers.extend(bn_relu());
        layers.push(conv(channels(filters), 1, 1));
        layers.extend(bn_relu());
    }
    layers.extend([
        LayerSpec::GlobalAvgPool,
        LayerSpec::Dropout { rate: 0.2 },
        LayerSpec::Dense { units: 1 },
    ]);
    let name = if width == DEFAULT_WIDTH {
        "mobilenet".to_string()
    } else {
        format!("mobilenet-{width}")
    };
    let spec = ModelSpec {
        name,
        input: [1, size, size],
        framing: Default::default(),
        crop: 1.0,
        map: None,
        layers: layers.into_iter().map(Node::from).collect(),
    };
    spec.layers()?;
    Ok(spec)
}

/// The MobileNet a preset name stands for: `mobilenet` (α = 0.5) or `mobilenet-α`; `None` for
/// any other name, an error for a `mobilenet-` name whose α is not a number in (0, 4].
pub fn from_preset_name(name: &str) -> Option<Result<ModelSpec, SpecError>> {
    let width = match name.strip_prefix("mobilenet") {
        Some("") => Ok(DEFAULT_WIDTH),
        Some(rest) => rest.strip_prefix('-')?.parse::<f32>().map_err(|_| {
            SpecError(format!(
                "'{name}': the width after 'mobilenet-' must be a number, e.g. mobilenet-0.25"
            ))
        }),
        None => return None,
    };
    Some(width.and_then(|w| mobilenet_v1(w, 128)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_width_at_128_has_the_papers_shape() {
        let spec = from_preset_name("mobilenet").unwrap().unwrap();
        let layers = spec.layers().unwrap();
        // 1 + 13·2 convolutions, each with batch norm and ReLU, then pooling, dropout, dense
        assert_eq!(layers.len(), 27 * 3 + 3);
        let pooled = &layers[layers.len() - 3];
        assert_eq!(pooled.input, [512, 4, 4]);
        assert_eq!(pooled.output, [512]);
        assert_eq!(layers[0].output, [16, 64, 64]);
        // depthwise 3x3 filters of the first block: 16 channels x 9 taps + 16 biases
        assert_eq!(layers[3].trainable_params, 16 * 9 + 16);
        assert_eq!(layers[3].output, [16, 64, 64]);
        let (trainable, _) = spec.param_counts().unwrap();
        // α² of the full network's 3.2 M convolution weights, and then some batch norm
        assert!((800_000..900_000).contains(&trainable), "{trainable}");
    }

    #[test]
    fn width_is_parsed_from_the_name_and_checked() {
        let quarter = from_preset_name("mobilenet-0.25").unwrap().unwrap();
        assert_eq!(quarter.name, "mobilenet-0.25");
        assert_eq!(quarter.layers().unwrap()[0].output, [8, 64, 64]);
        assert!(from_preset_name("fracturenet").is_none());
        assert!(from_preset_name("mobilenetx").is_none());
        assert!(from_preset_name("mobilenet-wide").unwrap().is_err());
        assert!(from_preset_name("mobilenet-0").unwrap().is_err());
        assert!(from_preset_name("mobilenet-NaN").unwrap().is_err());
    }
}
