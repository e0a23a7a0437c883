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

/// A dense tensor in host memory: f32, as every backend stores it; f64 only in the reference
/// backend's wide form (`Reference<f64>`), on which finite-difference checks of whole models run.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T = f32> {
    pub shape: Shape,
    pub data: Vec<T>,
}

impl<T> Tensor<T> {
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
    /// Largest absolute difference between two tensors of the same shape; infinite when either
    /// holds a NaN or an infinity, so that no tolerance accepts one. (`f32::max` alone would drop
    /// a NaN difference, and a kernel that writes NaN would pass.)
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape);
        (0..self.numel())
            .map(|i| self.abs_diff_at(other, i))
            .fold(0.0, f32::max)
    }

    /// Whether `self` is `expected` within `rel_tol` of `expected`'s own scale (its largest
    /// |value|): `Err` names the worst entry. A NaN or an infinity on either side, or a shape
    /// that differs, is never close. The scale has no floor, so a tensor of small values (a
    /// gradient of 1e-6) is held to its own size, not to 1.
    pub fn check_close(&self, expected: &Tensor, rel_tol: f32) -> Result<(), String> {
        // the scale of the finite values: an infinity expected would make any answer close
        let scale = expected
            .data
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f32, |m, v| m.max(v.abs()));
        self.check_close_at_scale(expected, rel_tol, scale)
    }

    /// [`Tensor::check_close`] with the scale given: for a tensor that is zero in exact
    /// arithmetic (the bias gradient of a convolution that batch norm follows), whose own values
    /// are rounding noise, the scale of the computation that produced it.
    pub fn check_close_at_scale(
        &self,
        expected: &Tensor,
        rel_tol: f32,
        scale: f32,
    ) -> Result<(), String> {
        if self.shape != expected.shape {
            return Err(format!(
                "shape {} where {} was expected",
                self.shape, expected.shape
            ));
        }
        let allowed = rel_tol * scale.max(f32::MIN_POSITIVE);
        let worst = (0..self.numel())
            .map(|i| (i, self.abs_diff_at(expected, i)))
            .fold((0, 0f32), |w, d| if d.1 > w.1 { d } else { w });
        match worst {
            (i, diff) if diff > allowed || diff.is_infinite() => Err(format!(
                "entry {i} is {} where {} was expected: off by {diff:.3e}, more than {rel_tol:e} of the scale {scale:.3e}",
                self.data[i], expected.data[i]
            )),
            _ => Ok(()),
        }
    }

    /// |a − b| at entry `i`; infinite when either is NaN or infinite.
    fn abs_diff_at(&self, other: &Tensor, i: usize) -> f32 {
        let (a, b) = (self.data[i], other.data[i]);
        if a.is_finite() && b.is_finite() {
            (a - b).abs()
        } else {
            f32::INFINITY
        }
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

    /// Negative controls: each kind of wrong answer is refused at a tolerance that accepts
    /// rounding, also for a tensor of tiny values, which a scale floored at 1 would accept.
    #[test]
    fn check_close_refuses_every_kind_of_wrong_answer_at_any_scale() {
        type Entrywise = dyn Fn(usize, f32) -> f32;
        for scale in [1.0f32, 1e-6, 1e4] {
            let right = Tensor::new(
                [4],
                [1.0, -2.0, 0.5, 3.0].iter().map(|v| v * scale).collect(),
            );
            let with = |f: &dyn Fn(usize, f32) -> f32| {
                let data = right
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| f(i, v))
                    .collect();
                Tensor::new([4], data).check_close(&right, 1e-5)
            };
            assert_eq!(
                with(&|_, v| v * (1.0 + 1e-7)),
                Ok(()),
                "rounding at scale {scale}"
            );
            let wrongs: [(&str, &Entrywise); 6] = [
                ("a sign flip", &|_, v| -v),
                ("a factor of 2", &|_, v| 2.0 * v),
                ("one wrong entry", &|i, v| if i == 2 { 1.01 * v } else { v }),
                ("a NaN", &|i, v| if i == 1 { f32::NAN } else { v }),
                ("an infinity", &|i, v| {
                    if i == 3 {
                        f32::INFINITY
                    } else {
                        v
                    }
                }),
                ("all zeros", &|_, _| 0.0),
            ];
            for (what, f) in wrongs {
                let err = with(f).expect_err(what);
                assert!(err.contains("entry"), "{what}: {err}");
            }
        }
        let nan = Tensor::new([1], vec![f32::NAN]);
        assert!(nan.check_close(&nan, 1.0).is_err(), "NaN on both sides");
        // an infinity expected: the scale is the finite values', and no answer there is close
        let expected = Tensor::new([2], vec![f32::INFINITY, 1.0]);
        for got in [
            vec![0.0, 1.0],
            vec![f32::INFINITY, 1.0],
            vec![f32::NAN, 1.0],
        ] {
            let err = Tensor::new([2], got.clone()).check_close(&expected, 1e-5);
            assert!(err.is_err(), "{got:?} against an infinity passed");
        }
        assert!(
            Tensor::new([2], vec![0.0, 5.0])
                .check_close(&Tensor::new([2], vec![f32::NEG_INFINITY, 1.0]), 1.0)
                .is_err(),
            "a -infinity expected"
        );
        let zeros = Tensor::zeros([3]);
        assert_eq!(zeros.check_close(&zeros, 0.0), Ok(()), "exact zeros");
        assert!(
            Tensor::full([3], 1e-30).check_close(&zeros, 1e-5).is_err(),
            "zero is held exactly"
        );
        let err = Tensor::zeros([2, 2])
            .check_close(&Tensor::zeros([4]), 1.0)
            .unwrap_err();
        assert!(err.contains("shape"), "{err}");
    }
}
