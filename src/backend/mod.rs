//! The `Backend` trait: every primitive operation a model needs, forward and backward.
//!
//! Layers in `crate::nn` are written once against this trait; each backend (`cpu`, `gpu`) implements
//! it for its own tensor type. The reference backend (`reference.rs`: plain loops, sums in f64)
//! defines every op: the CPU and GPU backends are tested against it on the cases of `cases.rs`,
//! every backend's backward passes against finite differences of its forward passes, and the GPU
//! against the CPU.
//!
//! Conventions (shared by every backend, so that results agree):
//! - images are NCHW, dense features are `[N, F]` and are treated by batch norm as `[N, F, 1, 1]`;
//! - conv weights are `[C_out, C_in, KH, KW]`, dense weights are `[out, in]` (as in PyTorch);
//! - losses are means over the batch, so gradients already carry the `1/N`.

pub mod cases;
pub mod cpu;
pub mod geometry;
pub mod gpu;
pub mod hash;
pub mod reference;

pub use geometry::{Conv2dGeom, Padding, Pool2dGeom};

use crate::tensor::{Shape, Tensor};

/// Sizes, in f32 values, that a backend with bounded buffers can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorLimits {
    /// One tensor of a batch (activations and their gradients): such a tensor may be split into
    /// windows of whole samples, each processed on its own.
    pub batch_tensor: usize,
    /// One window: a single sample's slice of a batch tensor (or of its convolution workspace)
    /// must fit, and so must every parameter tensor, which is never split.
    pub window: usize,
}

/// Per-channel results of a training-mode batch-norm forward pass that backward and the running
/// statistics need.
pub struct BatchNormStats<T> {
    /// Batch mean per channel, `[C]`.
    pub mean: T,
    /// Biased batch variance per channel, `[C]`.
    pub var: T,
    /// `1 / sqrt(var + eps)` per channel, `[C]`.
    pub inv_std: T,
}

/// What an op applies to its output inside its own pass, so that the full-size tensors between
/// them are never written: a ReLU, then a max pooling (each optional). Training batch norm takes
/// one: its backward pass then starts from the gradient at the pooled output and finds the ReLU's
/// mask again from its input (y > 0 is a per-channel affine test of x).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    pub relu: bool,
    pub pool: Option<Pool2dGeom>,
}

impl Epilogue {
    /// Nothing after the op.
    pub const NONE: Epilogue = Epilogue {
        relu: false,
        pool: None,
    };
}

/// Hyper-parameters of one Adam update (with optional decoupled weight decay, as in AdamW).
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for the bias correction `1 - beta^t`.
    pub t: u64,
}

/// Hyper-parameters of one SGD-with-momentum update (PyTorch's form: `v = mu v + g; p -= lr v`).
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The primitive operations of the engine. Shapes are written next to each argument.
pub trait Backend: Send + Sync + Sized + 'static {
    /// A tensor that lives on this backend (host memory for the CPU, a buffer for the GPU).
    type Tensor: Send + Sync;
    /// The argmax positions that max pooling keeps for its backward pass.
    type Indices: Send + Sync;

    /// A human-readable description, e.g. "cpu (2 threads)".
    fn name(&self) -> String;

    // ---- moving data --------------------------------------------------------------------------
    fn upload(&self, t: &Tensor) -> Self::Tensor;
    fn download(&self, t: &Self::Tensor) -> Tensor;
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a Shape;
    fn download_indices(&self, idx: &Self::Indices) -> Vec<u32>;
    /// How large tensors may be on this backend (`None`: no limit but memory).
    fn tensor_limits(&self) -> Option<TensorLimits> {
        None
    }
    /// Waits until every op issued so far has finished (a no-op where ops run synchronously);
    /// for timing.
    fn synchronize(&self) {}
    fn zeros(&self, shape: &Shape) -> Self::Tensor;
    /// The same data seen with another shape of equal size (flatten).
    fn reshape(&self, t: Self::Tensor, shape: Shape) -> Self::Tensor;

    // ---- convolution --------------------------------------------------------------------------
    /// `y[N,Co,Ho,Wo]` = conv(`x[N,Ci,H,W]`, `w[Co,Ci,KH,KW]`) + `b[Co]`
    fn conv2d_forward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor;
    /// `y` = max(0, conv(`x`, `w`) + `b`): the ReLU applied where the bias is added, so the
    /// output is written once (a backend without a fused kernel runs the two ops).
    fn conv2d_relu_forward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor {
        self.relu_forward(&self.conv2d_forward(x, w, b, g))
    }
    /// The convolution (with its ReLU when `relu`) then max pooling `p` over its output, for a
    /// pass that will not go backward: a backend with a fused kernel never writes the
    /// convolution's full-size output, only the pooled one (a backend without one runs the ops).
    fn conv2d_maxpool_forward(
        &self,
        x: &Self::Tensor,
        (w, b): (&Self::Tensor, &Self::Tensor),
        g: &Conv2dGeom,
        relu: bool,
        p: &Pool2dGeom,
    ) -> Self::Tensor {
        let y = if relu {
            self.conv2d_relu_forward(x, w, b, g)
        } else {
            self.conv2d_forward(x, w, b, g)
        };
        self.maxpool_forward_infer(&y, p)
    }
    /// `dx[N,Ci,H,W]` from `dy[N,Co,Ho,Wo]` and `w[Co,Ci,KH,KW]` (a "transposed convolution").
    fn conv2d_backward_input(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor;
    /// (`dw[Co,Ci,KH,KW]`, `db[Co]`) from `x[N,Ci,H,W]` and `dy[N,Co,Ho,Wo]`.
    fn conv2d_backward_weight(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> (Self::Tensor, Self::Tensor);

    // ---- depthwise convolution (MobileNet), `g.c_out == g.c_in` ----------------------------------
    /// `y[N,C,Ho,Wo]` = each channel of `x[N,C,H,W]` convolved with its own filter of
    /// `w[C,1,KH,KW]`, + `b[C]`.
    fn depthwise_conv2d_forward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor;
    /// `y` = max(0, depthwise(`x`, `w`) + `b`), the ReLU where the bias is added (a backend
    /// without a fused kernel runs the two ops).
    fn depthwise_conv2d_relu_forward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        b: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor {
        self.relu_forward(&self.depthwise_conv2d_forward(x, w, b, g))
    }
    /// `dx[N,C,H,W]` from `dy[N,C,Ho,Wo]` and `w[C,1,KH,KW]`.
    fn depthwise_conv2d_backward_input(
        &self,
        dy: &Self::Tensor,
        w: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> Self::Tensor;
    /// (`dw[C,1,KH,KW]`, `db[C]`) from `x[N,C,H,W]` and `dy[N,C,Ho,Wo]`.
    fn depthwise_conv2d_backward_weight(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
        g: &Conv2dGeom,
    ) -> (Self::Tensor, Self::Tensor);

    // ---- batch normalisation (per channel over N, H, W) ----------------------------------------
    /// y = gamma (x - mean) / sqrt(var + eps) + beta with the batch's own mean and variance,
    /// then `then`'s ReLU and max pooling (whose positions it returns) applied to y.
    fn batchnorm_forward_train(
        &self,
        x: &Self::Tensor,
        gamma_beta: (&Self::Tensor, &Self::Tensor),
        eps: f32,
        then: &Epilogue,
    ) -> (
        Self::Tensor,
        BatchNormStats<Self::Tensor>,
        Option<Self::Indices>,
    );
    /// y = gamma (x - running_mean) / sqrt(running_var + eps) + beta.
    fn batchnorm_forward_infer(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running_mean: &Self::Tensor,
        running_var: &Self::Tensor,
        eps: f32,
    ) -> Self::Tensor;
    /// (dx, `dgamma[C]`, `dbeta[C]`) of the training-mode forward pass with the same `then`:
    /// `dy` is the gradient at its last output (the pooled one, with `argmax` its positions).
    fn batchnorm_backward(
        &self,
        x: &Self::Tensor,
        dy_argmax: (&Self::Tensor, Option<&Self::Indices>),
        gamma_beta: (&Self::Tensor, &Self::Tensor),
        stats: &BatchNormStats<Self::Tensor>,
        then: &Epilogue,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);
    /// running = (1 - momentum) running + momentum * scale * batch (an exponential moving average).
    fn ema_update(
        &self,
        running: &mut Self::Tensor,
        batch: &Self::Tensor,
        momentum: f32,
        scale: f32,
    );

    // ---- max pooling ----------------------------------------------------------------------------
    /// `y[N,C,Ho,Wo]` = max over each window of `x[N,C,H,W]`, with the position of each maximum.
    fn maxpool_forward(&self, x: &Self::Tensor, g: &Pool2dGeom) -> (Self::Tensor, Self::Indices);
    /// The `y` of [`Backend::maxpool_forward`] alone, for a pass that will not go backward (a
    /// backend without its own kernel computes the positions and drops them).
    fn maxpool_forward_infer(&self, x: &Self::Tensor, g: &Pool2dGeom) -> Self::Tensor {
        self.maxpool_forward(x, g).0
    }
    /// `dx[N,C,H,W]`: each dy goes to the position its maximum came from.
    fn maxpool_backward(
        &self,
        dy: &Self::Tensor,
        argmax: &Self::Indices,
        g: &Pool2dGeom,
    ) -> Self::Tensor;

    // ---- global average pooling ------------------------------------------------------------------
    /// `y[N,C]` = mean over H and W of `x[N,C,H,W]`.
    fn global_avgpool_forward(&self, x: &Self::Tensor) -> Self::Tensor;
    /// `dx[N,C,H,W]` = `dy[N,C]` / (H·W) at every position of the plane; `hw` = (H, W).
    fn global_avgpool_backward(&self, dy: &Self::Tensor, hw: (usize, usize)) -> Self::Tensor;

    // ---- upsampling -------------------------------------------------------------------------------
    /// `y[N,C,s·H,s·W]`: each value of `x[N,C,H,W]` repeated over an `s × s` block (nearest
    /// neighbour; a feature pyramid's top-down path).
    fn upsample_forward(&self, x: &Self::Tensor, s: usize) -> Self::Tensor;
    /// `dx[N,C,H,W]` = the sum of `dy[N,C,s·H,s·W]` over each value's `s × s` block.
    fn upsample_backward(&self, dy: &Self::Tensor, s: usize) -> Self::Tensor;

    // ---- dense ------------------------------------------------------------------------------------
    /// `y[N,O]` = `x[N,I]` `w[O,I]`^T + `b[O]`
    fn dense_forward(&self, x: &Self::Tensor, w: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// `dx[N,I]` = `dy[N,O]` `w[O,I]`
    fn dense_backward_input(&self, dy: &Self::Tensor, w: &Self::Tensor) -> Self::Tensor;
    /// (`dw[O,I]` = dy^T x, `db[O]` = sum over N of dy)
    fn dense_backward_weight(
        &self,
        x: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);

    // ---- element-wise -------------------------------------------------------------------------
    /// `y` = `a` + `b`, of one shape (the merge of a residual block; gradients of a tensor used
    /// twice are summed with it too).
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// A copy of `t` (a tensor that feeds two layers, each of which keeps its input).
    fn copy(&self, t: &Self::Tensor) -> Self::Tensor;
    /// y = max(x, 0)
    fn relu_forward(&self, x: &Self::Tensor) -> Self::Tensor;
    /// dx = dy where x > 0, else 0
    fn relu_backward(&self, x: &Self::Tensor, dy: &Self::Tensor) -> Self::Tensor;
    /// Inverted dropout: y = x * keep / (1 - p), keep drawn from `hash::uniform(seed, index) >= p`.
    fn dropout_forward(&self, x: &Self::Tensor, p: f32, seed: u64) -> Self::Tensor;
    /// dx = dy * keep / (1 - p), with the same mask as the forward pass of that seed.
    fn dropout_backward(&self, dy: &Self::Tensor, p: f32, seed: u64) -> Self::Tensor;

    // ---- loss -----------------------------------------------------------------------------------
    /// Mean binary cross-entropy of sigmoid(`logits[N,1]`) against `targets[N]` in {0,1}, fused on the
    /// logits for stability, positive terms weighted by `pos_weight`. Returns (`loss[1]`, `dlogits[N,1]`).
    fn bce_with_logits(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
        pos_weight: f32,
    ) -> (Self::Tensor, Self::Tensor);

    // ---- optimisers (in place) ------------------------------------------------------------------
    fn adam_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        h: &AdamStep,
    );
    fn sgd_step(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        velocity: &mut Self::Tensor,
        h: &SgdStep,
    );

    // ---- gradient health ------------------------------------------------------------------------
    /// Σ t² of each tensor, read back to the host together (NaN or ∞ if a value is).
    fn squared_norms(&self, ts: &[&Self::Tensor]) -> Vec<f32>;
    /// t *= s, in place (gradient clipping).
    fn scale(&self, t: &mut Self::Tensor, s: f32);
}
