//! Flatten: [N, C, H, W] → [N, C·H·W]. It moves no data (NCHW is already row-major), so its
//! backward pass just gives dy the input's shape back.

use super::{Layer, Mode};
use crate::backend::Backend;
use crate::tensor::Shape;

#[derive(Default)]
pub struct Flatten {
    input_shape: Option<Shape>,
}

impl<B: Backend> Layer<B> for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn forward(&mut self, be: &B, x: B::Tensor, _mode: Mode) -> B::Tensor {
        let shape = be.shape(&x).clone();
        let n = shape.dims()[0];
        let flat = Shape::new(&[n, shape.numel() / n.max(1)]);
        self.input_shape = Some(shape);
        be.reshape(x, flat)
    }
    fn backward(&mut self, be: &B, dy: B::Tensor, _want_dx: bool) -> Option<B::Tensor> {
        let shape = super::saved(&mut self.input_shape, "flatten");
        Some(be.reshape(dy, shape))
    }
}
