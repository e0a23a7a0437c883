//! The index arithmetic of convolution and pooling windows, worked out once on the host and
//! handed to every backend so that they all agree on output sizes and padding.

use serde::{Deserialize, Serialize};

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Output size `ceil(in / stride)`; the zeros are split between both sides, the extra one (if
    /// the total is odd) at the bottom/right, as in TensorFlow and Keras.
    Same,
    /// No padding: only windows that fit wholly inside the input, output `floor((in - k) / s) + 1`.
    Valid,
}

impl Padding {
    /// As written in spec files: "same" or "valid".
    pub fn name(self) -> &'static str {
        match self {
            Padding::Same => "same",
            Padding::Valid => "valid",
        }
    }
}

/// Geometry of a 2-D convolution over an `[N, Ci, H, W]` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    /// Zeros added above the first row / left of the first column.
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Output size and leading pad of one spatial axis, or `None` when the window does not fit.
fn conv_axis(input: usize, k: usize, stride: usize, padding: Padding) -> Option<(usize, usize)> {
    match padding {
        Padding::Valid => (input >= k).then(|| ((input - k) / stride + 1, 0)),
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(input);
            Some((out, total / 2))
        }
    }
}

impl Conv2dGeom {
    /// `None` when the kernel is larger than a `valid` input (the caller names the layer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        (kh, kw): (usize, usize),
        (stride_h, stride_w): (usize, usize),
        padding: Padding,
    ) -> Option<Self> {
        let (out_h, pad_top) = conv_axis(h, kh, stride_h, padding)?;
        let (out_w, pad_left) = conv_axis(w, kw, stride_w, padding)?;
        Some(Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride_h,
            stride_w,
            pad_top,
            pad_left,
            out_h,
            out_w,
        })
    }
    /// The same geometry for another batch size.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.n = n;
        self
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h, self.out_w]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }
    /// Length of one column of the unfolded input: `Ci * KH * KW`.
    pub fn patch_len(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    /// Multiply-adds times two, for the whole batch's forward pass.
    pub fn forward_flops(&self) -> u64 {
        2 * (self.n * self.c_out * self.out_h * self.out_w * self.patch_len()) as u64
    }

    /// At stride 1, the convolution whose forward pass is this one's input gradient: of dy, with
    /// the filters turned by 180° and their channels swapped, padded by KH − 1 − pad_top above
    /// and KW − 1 − pad_left on the left (and below and on the right by what the sizes leave).
    /// `None` at another stride, or with as much padding as the window (no such layer is built).
    pub fn turned(&self) -> Option<Conv2dGeom> {
        let turns = (self.stride_h, self.stride_w) == (1, 1)
            && self.pad_top < self.kh
            && self.pad_left < self.kw;
        turns.then_some(Conv2dGeom {
            c_in: self.c_out,
            h: self.out_h,
            w: self.out_w,
            c_out: self.c_in,
            pad_top: self.kh - 1 - self.pad_top,
            pad_left: self.kw - 1 - self.pad_left,
            out_h: self.h,
            out_w: self.w,
            ..*self
        })
    }

    /// True when unfolding the input would copy it unchanged (1×1 kernel, stride 1, no padding):
    /// each image `[Ci, H·W]` is then already the matrix the product needs.
    pub fn is_pointwise(&self) -> bool {
        (self.kh, self.kw, self.stride_h, self.stride_w) == (1, 1, 1, 1)
            && self.pad_top == 0
            && self.pad_left == 0
    }

    /// A depthwise convolution: each of the `c` channels convolved with its own single
    /// `KH×KW` filter (`c_out == c_in`, weights `[C, 1, KH, KW]`), as in MobileNet. `None` when
    /// the kernel does not fit a `valid` input.
    pub fn depthwise(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Option<Self> {
        Self::new(n, c, h, w, c, kernel, stride, padding)
    }
    /// `[C, 1, KH, KW]`: one filter per channel.
    pub fn depthwise_weight_shape(&self) -> [usize; 4] {
        [self.c_in, 1, self.kh, self.kw]
    }
    /// Multiply-adds times two of a depthwise forward pass: `KH·KW` per output value.
    pub fn depthwise_flops(&self) -> u64 {
        2 * (self.n * self.c_out * self.out_h * self.out_w * self.kh * self.kw) as u64
    }
}

/// Geometry of 2-D max pooling (no padding; partial windows at the bottom/right edge are dropped,
/// so odd sizes floor as in Keras and PyTorch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Pool2dGeom {
    /// `None` when the window is larger than the input.
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        (kh, kw): (usize, usize),
        (stride_h, stride_w): (usize, usize),
    ) -> Option<Self> {
        let (out_h, _) = conv_axis(h, kh, stride_h, Padding::Valid)?;
        let (out_w, _) = conv_axis(w, kw, stride_w, Padding::Valid)?;
        Some(Pool2dGeom {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride_h,
            stride_w,
            out_h,
            out_w,
        })
    }
    pub fn with_batch(mut self, n: usize) -> Self {
        self.n = n;
        self
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.out_h, self.out_w]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_keras() {
        // 3x3 stride 1: one zero each side.
        let g = Conv2dGeom::new(1, 1, 5, 5, 1, (3, 3), (1, 1), Padding::Same).unwrap();
        assert_eq!((g.out_h, g.pad_top), (5, 1));
        // 3x3 stride 2 on 6: out 3, total pad 1, 0 on top (extra goes to the bottom).
        let g = Conv2dGeom::new(1, 1, 6, 6, 1, (3, 3), (2, 2), Padding::Same).unwrap();
        assert_eq!((g.out_h, g.pad_top), (3, 0));
        // 2x4 kernel: pads 0/1 rows and 1/2 columns.
        let g = Conv2dGeom::new(1, 1, 4, 4, 1, (2, 4), (1, 1), Padding::Same).unwrap();
        assert_eq!((g.out_h, g.pad_top, g.out_w, g.pad_left), (4, 0, 4, 1));
    }

    #[test]
    fn valid_and_pool_sizes_floor() {
        let g = Conv2dGeom::new(1, 1, 224, 224, 1, (3, 3), (1, 1), Padding::Valid).unwrap();
        assert_eq!(g.out_h, 222);
        let p = Pool2dGeom::new(1, 1, 111, 7, (2, 2), (2, 2)).unwrap();
        assert_eq!((p.out_h, p.out_w), (55, 3));
        assert!(Pool2dGeom::new(1, 1, 1, 1, (2, 2), (2, 2)).is_none());
        assert!(Conv2dGeom::new(1, 1, 2, 2, 1, (3, 3), (1, 1), Padding::Valid).is_none());
    }
}
