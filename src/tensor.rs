//! Host tensors: a shape and a contiguous `Vec<f32>` in row-major (NCHW for images) order.
//!
//! This is the form in which data enters and leaves a backend: images are uploaded as host tensors,
//! and losses, logits and checkpoints come back as host tensors. Inside a backend, tensors have the
//! backend's own type (`Backend::Tensor`), which for the GPU lives in device memory.

use std::fmt;

/// The dimensions of a tensor, outermost first: `[N, C, H, W]` for images, `[N, F]` for features.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn new(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
    /// Number of elements (1 for a scalar of rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// `[N, C, H, W]` of a rank-4 shape; `[N, F]` is read as `[N, F, 1, 1]`.
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        match self.0.as_slice() {
            [n, c, h, w] => (*n, *c, *h, *w),
            [n, f] => (*n, *f, 1, 1),
            other => panic!("expected a rank-2 or rank-4 shape, got {other:?}"),
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const R: usize> From<[usize; R]> for Shape {
    fn from(d: [usize; R]) -> Self {
        Shape(d.to_vec())
    }
}

/// A dense f32 tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Shape,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: impl Into<Shape>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.numel(),
            data.len(),
            "tensor data has {} values but shape {shape} needs {}",
            data.len(),
            shape.numel()
        );
        Tensor { shape, data }
    }
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        Self::full(shape, 0.0)
    }
    pub fn full(shape: impl Into<Shape>, value: f32) -> Self {
        let shape = shape.into();
        let data = vec![value; shape.numel()];
        Tensor { shape, data }
    }
    /// Values drawn uniformly from `[lo, hi)` with a seeded generator (for tests and benchmarks).
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let shape = shape.into();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data = (0..shape.numel()).map(|_| rng.gen_range(lo..hi)).collect();
        Tensor { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Same data, another shape with the same number of elements.
    pub fn reshape(mut self, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.numel(),
            self.numel(),
            "cannot reshape {} to {shape}",
            self.shape
        );
        self.shape = shape;
        self
    }
    /// Largest absolute difference between two tensors of the same shape; infinite when either
    /// holds a NaN or an infinity, so that no tolerance accepts one. (`f32::max` alone would drop
    /// a NaN difference, and a kernel that writes NaN would pass.)
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape);
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| {
                if a.is_finite() && b.is_finite() {
                    (a - b).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0.0, f32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_catches_every_kind_of_wrong_answer() {
        let right = Tensor::new([4], vec![1.0, -2.0, 0.5, 3.0]);
        assert_eq!(right.max_abs_diff(&right), 0.0);
        let wrong = |data: Vec<f32>| right.max_abs_diff(&Tensor::new([4], data));
        assert_eq!(wrong(vec![-1.0, 2.0, -0.5, -3.0]), 6.0, "a sign flip");
        assert_eq!(wrong(vec![2.0, -4.0, 1.0, 6.0]), 3.0, "a factor of 2");
        assert_eq!(wrong(vec![1.0, -2.0, 0.75, 3.0]), 0.25, "one wrong entry");
        assert_eq!(wrong(vec![1.0, f32::NAN, 0.5, 3.0]), f32::INFINITY, "a NaN");
        assert_eq!(
            wrong(vec![1.0, -2.0, f32::INFINITY, 3.0]),
            f32::INFINITY,
            "an infinity"
        );
        let nan = Tensor::new([1], vec![f32::NAN]);
        assert_eq!(nan.max_abs_diff(&nan), f32::INFINITY, "NaN on both sides");
    }
}
