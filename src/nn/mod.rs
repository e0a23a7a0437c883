//! Layers and models, written once against the [`Backend`] trait.
//!
//! Every layer has an explicit `forward` that keeps what its backward pass needs, and a `backward`
//! that takes the gradient of the loss with respect to the layer's output (`dy`), stores the
//! gradients of its parameters, and returns the gradient with respect to its input (`dx`).
//! A model ([`Model`]) is a graph of layers built from a text spec ([`spec::ModelSpec`]): a
//! sequence, where a layer may also take the output of an earlier one (residual networks).

pub mod add;
pub mod avgpool;
pub mod batchnorm;
pub mod conv;
pub mod dense;
pub mod depthwise;
pub mod dropout;
pub mod flatten;
pub mod fold;
pub mod init;
pub mod loss;
pub mod maxpool;
pub mod mobilenet;
pub mod model;
pub mod relu;
pub mod resnet;
pub mod spec;
pub mod upsample;

pub use model::Model;
pub use spec::{Activation, LayerSpec, ModelSpec, Node};

use crate::backend::{Backend, Epilogue};

/// A tensor the model owns: a learned weight (trainable) or a running statistic (not trainable,
/// but saved in checkpoints and counted as a parameter, as Keras does).
pub struct Param<B: Backend> {
    pub name: &'static str,
    pub value: B::Tensor,
    /// Gradient of the loss from the last backward pass (trainable parameters only).
    pub grad: Option<B::Tensor>,
    pub trainable: bool,
}

impl<B: Backend> Param<B> {
    pub fn trainable(name: &'static str, value: B::Tensor) -> Self {
        Param {
            name,
            value,
            grad: None,
            trainable: true,
        }
    }
    pub fn statistic(name: &'static str, value: B::Tensor) -> Self {
        Param {
            name,
            value,
            grad: None,
            trainable: false,
        }
    }
}

/// What a forward pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics in batch norm, dropout on; `seed` picks this step's dropout masks.
    Train { seed: u64 },
    /// Running statistics in batch norm, dropout off.
    Eval,
    /// As `Eval`, but every layer keeps what its backward pass needs, so that gradients of the
    /// prediction with respect to inner activations can be taken (Grad-CAM): batch norm's
    /// backward is then its running-statistics form, dx = γ dy / √(running var + ε), and
    /// dropout's the identity.
    Explain,
}

impl Mode {
    /// Whether layers keep their inputs for a backward pass.
    pub fn keeps_for_backward(self) -> bool {
        self != Mode::Eval
    }
}

/// One layer of a model.
pub trait Layer<B: Backend>: Send {
    /// The spec type, as written in model files: "conv2d", "batchnorm", ...
    fn kind(&self) -> &'static str;
    /// y = layer(x). In `Mode::Train` the layer keeps what `backward` needs.
    fn forward(&mut self, be: &B, x: B::Tensor, mode: Mode) -> B::Tensor;
    /// Stores the parameters' gradients and returns dx, or `None` when `want_dx` is false (the
    /// first layer of a model need not compute the gradient with respect to the image).
    fn backward(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Option<B::Tensor>;
    /// How many inputs the layer takes: 1, or 2 for a merge (`add`).
    fn arity(&self) -> usize {
        1
    }
    /// y = layer(x₀, x₁, …), as a model calls every layer: a merge layer takes its inputs here,
    /// any other layer its one input through `forward`.
    fn forward_inputs(&mut self, be: &B, mut xs: Vec<B::Tensor>, mode: Mode) -> B::Tensor {
        assert_eq!(xs.len(), 1, "{} takes one input", self.kind());
        let x = xs.pop().expect("one input");
        self.forward(be, x, mode)
    }
    /// The gradient with respect to each input (`None`s when `want_dx` is false).
    fn backward_inputs(&mut self, be: &B, dy: B::Tensor, want_dx: bool) -> Vec<Option<B::Tensor>> {
        vec![self.backward(be, dy, want_dx)]
    }
    /// This layer's output passed through `then` (a pooling of batch 1) inside its own pass,
    /// so that the tensors between them are never written; `Err(x)`, the input given back, for
    /// a layer that cannot in this mode. In a mode that keeps for backward, `backward` then takes
    /// the gradient at `then`'s output.
    fn forward_then(
        &mut self,
        _be: &B,
        x: B::Tensor,
        _mode: Mode,
        _then: &Epilogue,
    ) -> Result<B::Tensor, B::Tensor> {
        Err(x)
    }
    /// In a pass that keeps nothing (`Mode::Eval`): y = layer(x), then `then` inside the pass
    /// when given (as [`Layer::forward_then`]), from an x that another layer reads later, so
    /// that it need not be copied; `None` for a layer that cannot (the model copies x then).
    fn forward_borrowed(
        &mut self,
        _be: &B,
        _x: &B::Tensor,
        _then: Option<&Epilogue>,
    ) -> Option<B::Tensor> {
        None
    }
    /// A fingerprint of the linear piece the last training forward pass landed on (which inputs
    /// of a ReLU were positive, which element won each pooling window); 0 for smooth layers.
    /// Gradient checks use it to skip finite differences that straddle a kink.
    fn kinks(&self, _be: &B) -> u64 {
        0
    }
    fn params(&self) -> Vec<&Param<B>> {
        Vec::new()
    }
    fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        Vec::new()
    }
}

/// The tensor a layer saved in its forward pass, or a clear panic if backward came first
/// (a programming error, not a user error).
pub(crate) fn saved<T>(slot: &mut Option<T>, layer: &str) -> T {
    slot.take()
        .unwrap_or_else(|| panic!("{layer}: backward called without a training-mode forward pass"))
}

/// FNV-1a over a sequence of words, for [`Layer::kinks`].
pub(crate) fn fingerprint(words: impl Iterator<Item = u32>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
