//! The gradient-check cases, instantiated once per backend by `gradcheck_suite!(Backend, samples)`.

use fracture_cnn::gradcheck::Report;

fn check(reports: &[Report], tol: f64) -> Vec<String> {
    for r in reports {
        println!("{r}");
    }
    reports
        .iter()
        .filter(|r| !r.passed(tol))
        .map(|r| r.to_string())
        .collect()
}

/// Every entry of every report within `tol`, and every report compared something.
pub fn assert_all(reports: &[Report], tol: f64) {
    let failed = check(reports, tol);
    assert!(
        failed.is_empty(),
        "gradient check failed (tolerance {tol}):\n{}",
        failed.join("\n")
    );
    assert!(
        reports.iter().all(|r| r.checked > 0),
        "a check compared nothing"
    );
}

/// As [`assert_all`], for an op that may have no differentiable input (an optimiser step).
pub fn assert_all_or_none(reports: &[Report], tol: f64) {
    if !reports.is_empty() {
        assert_all(reports, tol);
    }
}

#[macro_export]
macro_rules! gradcheck_suite {
    // $backend: an Option<&Backend> (None skips the tests); $samples: entries checked per tensor.
    ($backend:expr, $samples:expr) => {
        use fracture_cnn::backend::Padding;
        use fracture_cnn::gradcheck as gc;
        use fracture_cnn::gradcheck::{F32_TOL, LAYER_TOL as OP_TOL};
        use fracture_cnn::nn::spec::{Activation, Size2};
        use fracture_cnn::nn::{LayerSpec, ModelSpec};
        use $crate::common::gradchecks::{assert_all, assert_all_or_none};

        #[test]
        fn every_op_case_against_finite_differences() {
            let Some(be) = $backend else { return };
            for op in fracture_cnn::backend::cases::suite() {
                assert_all_or_none(&gc::op_case(be, &op, gc::Probe::op($samples)), OP_TOL);
            }
        }
        #[test]
        fn every_layer_through_its_layer_impl() {
            let Some(be) = $backend else { return };
            let image = [3usize, 6, 5];
            let cases: Vec<(LayerSpec, Vec<usize>, usize)> = vec![
                (
                    LayerSpec::Conv2d {
                        filters: 4,
                        kernel: Size2::Square(3),
                        stride: Size2::Square(1),
                        padding: Padding::Same,
                        activation: None,
                    },
                    image.to_vec(),
                    2,
                ),
                (
                    LayerSpec::Conv2d {
                        filters: 2,
                        kernel: Size2::Rect([3, 2]),
                        stride: Size2::Square(2),
                        padding: Padding::Valid,
                        activation: Some(Activation::Relu),
                    },
                    image.to_vec(),
                    2,
                ),
                (
                    LayerSpec::BatchNorm {
                        momentum: 0.1,
                        eps: 1e-5,
                    },
                    image.to_vec(),
                    1,
                ),
                (
                    LayerSpec::BatchNorm {
                        momentum: 0.1,
                        eps: 1e-5,
                    },
                    vec![7],
                    2,
                ),
                (
                    LayerSpec::MaxPool {
                        size: Size2::Square(2),
                        stride: None,
                    },
                    image.to_vec(),
                    2,
                ),
                (
                    LayerSpec::DepthwiseConv2d {
                        kernel: Size2::Square(3),
                        stride: Size2::Square(1),
                        padding: Padding::Same,
                        activation: None,
                    },
                    image.to_vec(),
                    2,
                ),
                (
                    LayerSpec::DepthwiseConv2d {
                        kernel: Size2::Rect([2, 3]),
                        stride: Size2::Square(2),
                        padding: Padding::Valid,
                        activation: None,
                    },
                    image.to_vec(),
                    2,
                ),
                (LayerSpec::GlobalAvgPool, image.to_vec(), 2),
                (LayerSpec::Dense { units: 3 }, vec![11], 2),
                (LayerSpec::Relu, image.to_vec(), 2),
                (LayerSpec::Dropout { rate: 0.3 }, vec![40], 2),
                (LayerSpec::Flatten, image.to_vec(), 2),
                (LayerSpec::Upsample { factor: 2 }, image.to_vec(), 2),
            ];
            for (spec, sample, batch) in cases {
                assert_all(
                    &gc::layer(be, &spec, batch, &sample, None, gc::Probe::op($samples)),
                    OP_TOL,
                );
            }
            // the residual merge: the same shapes; a projection of stride 2; an odd size
            for (main, branch) in [
                (vec![3, 4, 4], vec![3, 4, 4]),
                (vec![4, 2, 2], vec![3, 4, 4]),
                (vec![4, 3, 3], vec![2, 5, 5]),
            ] {
                let reports = gc::layer(
                    be,
                    &LayerSpec::Add,
                    2,
                    &main,
                    Some(&branch),
                    gc::Probe::op($samples),
                );
                let checked: Vec<&str> = reports.iter().map(|r| r.wrt.as_str()).collect();
                let projected = main != branch;
                let expected: &[&str] = if projected {
                    &["a", "b", "weight", "bias"]
                } else {
                    &["a", "b"]
                };
                assert_eq!(checked, expected);
                assert_all(&reports, OP_TOL);
            }
        }
        // Whole models: every gradient entry against the wide reference's, which
        // tests/gradcheck_models.rs holds to finite differences in f64.
        #[test]
        fn whole_resnet_at_32x32() {
            let Some(be) = $backend else { return };
            // width 4, one block per stage: 32 -> 16 (stem conv) -> 8 (pool) -> 4 -> 2 -> 1,
            // three projections
            let spec = ModelSpec::load("resnet-4-1")
                .unwrap()
                .with_image_size(32)
                .unwrap();
            assert_all(&gc::against_wide(be, &spec, 3), F32_TOL);
        }
        #[test]
        fn whole_resnet_with_a_fracture_map_at_32x32() {
            let Some(be) = $backend else { return };
            // the map at stride 8 (4 x 4), its pyramid from the 1 x 1 last stage up through
            // 2 x 2; the loss holds a projection of the map
            let spec = ModelSpec::load("resnet-4-1-loc")
                .unwrap()
                .with_image_size(32)
                .unwrap();
            assert_all(&gc::against_wide(be, &spec, 3), F32_TOL);
        }
        #[test]
        fn whole_fracturenet_at_32x32() {
            let Some(be) = $backend else { return };
            let spec = ModelSpec::load("fracturenet")
                .unwrap()
                .with_image_size(32)
                .unwrap();
            assert_all(&gc::against_wide(be, &spec, 3), F32_TOL);
        }
    };
}
