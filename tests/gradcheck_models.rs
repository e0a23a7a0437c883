//! Whole models differentiated both ways in f64: the backward pass of every preset's layers,
//! composed as the model composes them (residual merges, projections, the fracture map's
//! pyramid, batch norms over three values), against central differences of its loss, on the
//! wide reference backend. Each backend's own whole-model gradients are then held to these, entry
//! by entry (`whole_*` in tests/common/gradchecks.rs); this file also proves that both
//! comparators refuse wrong gradients at the tolerances the tests use.

mod common;

use common::gradchecks::assert_all;
use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::reference::Precision;
use fracture_cnn::gradcheck::{self as gc, Floor, Probe, Report, WideModel, F32_TOL, WIDE_TOL};
use fracture_cnn::nn::ModelSpec;
use fracture_cnn::tensor::Tensor;

fn wide(name: &str, size: usize, batch: usize) -> WideModel {
    let spec = ModelSpec::load(name)
        .unwrap()
        .with_image_size(size)
        .unwrap();
    WideModel::new(&spec, batch)
}

/// Every tensor compared (an entry is skipped when every step tried crossed a kink), and every
/// entry compared within `WIDE_TOL`.
fn assert_wide(reports: &[Report]) {
    assert_all(reports, WIDE_TOL);
}

#[test]
fn resnet_in_f64_against_finite_differences() {
    assert_wide(&wide("resnet-4-1", 32, 3).check_all(20));
}

#[test]
fn resnet_with_a_fracture_map_in_f64_against_finite_differences() {
    let mut model = wide("resnet-4-1-loc", 32, 3);
    let reports = model.check_all(20);
    let spec = ModelSpec::load("resnet-4-1-loc").unwrap();
    let decoder = spec
        .layers
        .iter()
        .position(|n| n.name.as_deref() == Some("fpn.32"));
    let first = format!("{:02}.", decoder.expect("the decoder's first layer"));
    assert!(
        reports.iter().any(|r| r.wrt.starts_with(&first)),
        "the decoder is checked"
    );
    assert_wide(&reports);
}

// Two other presets: their layers are checked one by one in tier 1, and their f32 gradients
// against their f64 ones; their reference forward passes take 10 ms and more. (The third,
// xray-bone-classifier, is a plain chain of the layers fracturenet chains, and its reference
// forward pass at 94 × 94, its smallest input, takes a second: its f32 gradients are held to its
// f64 ones in tier 2, tests/gradcheck_cpu.rs.)
#[test]
#[ignore = "tier 2 (minutes): cargo test --release -- --ignored, which CI runs"]
fn fracturenet_and_mobilenet_in_f64_against_finite_differences() {
    assert_wide(&wide("fracturenet", 32, 3).check_all(4));
    assert_wide(&wide("mobilenet-0.25", 32, 3).check_all(8));
}

/// In a tensor of `model`'s gradients, an entry whose true value is 1e-4 to 5e-4 of the tensor's
/// largest: what a floor of 1 % of the largest entry let pass as zero at the old whole-model
/// tolerance of 5e-2. (tensor index, entry)
fn small_true_entry(model: &WideModel, max_len: usize) -> (usize, usize) {
    model
        .gradients()
        .iter()
        .enumerate()
        .filter(|(_, (_, g))| g.numel() <= max_len)
        .find_map(|(t, (_, g))| {
            let largest = g.data.iter().fold(0f64, |m, v| m.max(v.abs()));
            let small = |v: f64| (1e-4 * largest..5e-4 * largest).contains(&v.abs());
            g.data.iter().position(|&v| small(v)).map(|i| (t, i))
        })
        .expect("some tensor holds a small true gradient")
}

/// A fault by name, and what it does to a gradient.
type Fault<T> = (String, Box<dyn Fn(&mut Tensor<T>)>);

/// The faults each comparator must refuse, applied to entry `i` of a gradient whose largest entry
/// is at `top`: named, and applied in place.
fn faults<T: Precision>(i: usize, top: usize, off: f64) -> Vec<Fault<T>> {
    vec![
        (
            "the small entry zeroed".into(),
            Box::new(move |g: &mut Tensor<T>| g.data[i] = T::narrow(0.0)),
        ),
        (
            "the small entry's sign flipped".into(),
            Box::new(move |g: &mut Tensor<T>| g.data[i] = T::narrow(-g.data[i].wide())),
        ),
        (
            "a NaN".into(),
            Box::new(move |g: &mut Tensor<T>| g.data[i] = T::narrow(f64::NAN)),
        ),
        (
            "an infinity".into(),
            Box::new(move |g: &mut Tensor<T>| g.data[i] = T::narrow(f64::INFINITY)),
        ),
        (
            format!("the largest entry off by {off:e} of itself"),
            Box::new(move |g: &mut Tensor<T>| {
                g.data[top] = T::narrow(g.data[top].wide() * (1.0 + off))
            }),
        ),
    ]
}

fn largest_at<T: Precision>(g: &Tensor<T>) -> usize {
    (0..g.numel())
        .max_by(|&a, &b| g.data[a].wide().abs().total_cmp(&g.data[b].wide().abs()))
        .unwrap()
}

#[test]
fn the_finite_difference_check_refuses_wrong_gradients() {
    let mut model = wide("resnet-4-1", 32, 3);
    let (t, i) = small_true_entry(&model, 64);
    let (wrt, truth) = model.gradients()[t].clone();
    let every_entry = model.probe(truth.numel());
    assert!(model.check(&wrt, &truth, every_entry).passed(WIDE_TOL));
    let top = largest_at(&truth);
    for (fault, apply) in faults(i, top, 1e-5) {
        let mut wrong = truth.clone();
        apply(&mut wrong);
        let report = model.check(&wrt, &wrong, every_entry);
        assert!(
            !report.passed(WIDE_TOL),
            "{wrt} with {fault} passed the finite-difference check: {report}"
        );
    }
    // what the old criterion, a floor of 1 % of the tensor's largest entry at a tolerance of
    // 5e-2, let through
    let mut zeroed = truth.clone();
    zeroed.data[i] = 0.0;
    let old = Probe {
        floor: Floor::LargestEntry { noise: 0.0 },
        ..every_entry
    };
    let report = model.check(&wrt, &zeroed, old);
    assert!(
        report.passed(5e-2),
        "the old floor refuses it too: {report}"
    );
}

#[test]
fn the_comparison_with_the_wide_reference_refuses_wrong_gradients() {
    let model = wide("resnet-4-1", 32, 3);
    let tested = gc::gradients_on(&Cpu::new(), &model).expect("the same kinks in f32");
    let case = "resnet-4-1 on the CPU";
    let compare = |tested: &[(String, Tensor)]| {
        gc::against_wide_gradients(case, tested, &model).expect("the same kinks in f32")
    };
    assert_all(&compare(&tested), F32_TOL);
    // an entry whose true value is 1e-3 to 1e-2 of its tensor's largest, in a tensor of any size
    let (t, i) = model
        .gradients()
        .iter()
        .enumerate()
        .find_map(|(t, (_, g))| {
            let largest = g.data.iter().fold(0f64, |m, v| m.max(v.abs()));
            let small = |v: f64| (1e-3 * largest..1e-2 * largest).contains(&v.abs());
            g.data.iter().position(|&v| small(v)).map(|i| (t, i))
        })
        .expect("a small true gradient");
    let top = largest_at(&tested[t].1);
    for (fault, apply) in faults(i, top, 2e-3) {
        let mut wrong = tested.to_vec();
        apply(&mut wrong[t].1);
        let reports = compare(&wrong);
        assert!(
            !reports[t].passed(F32_TOL),
            "{} with {fault} passed the comparison: {}",
            wrong[t].0,
            reports[t]
        );
    }
}
