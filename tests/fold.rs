//! Folding batch norm and ReLU into convolutions for inference: the folded model gives the plain
//! model's logits (up to rounding) for every preset, on each backend, with one layer fewer per
//! folded batch norm or ReLU, and leaves alone what does not follow a convolution alone. And the
//! layers that run inside another's pass (pooling inside a convolution in inference, ReLU and
//! pooling inside batch norm in training) give what the layers one by one give.

mod common;

use fracture_cnn::backend::cpu::Cpu;
use fracture_cnn::backend::Backend;
use fracture_cnn::nn::fold::inference_model;
use fracture_cnn::nn::{LayerSpec, Mode, Model, ModelSpec};
use fracture_cnn::tensor::Tensor;

/// Tolerance relative to the logits' scale: the folded weights round differently.
const TOL: f32 = 1e-4;

/// A model of `spec` whose batch norms hold the statistics of a random batch (not their initial
/// zeros and ones, which fold into nothing), and that batch.
fn model_with_statistics<B: Backend>(be: &B, spec: &ModelSpec, seed: u64) -> (Model<B>, Tensor) {
    let one_batch = common::models::taking_one_batch_statistics(spec);
    let [c, h, w] = spec.input;
    let x = Tensor::rand_uniform([4, c, h, w], 0.0, 1.0, seed);
    let mut model = Model::new(be, &one_batch, seed).unwrap();
    model.forward(be, be.upload(&x), Mode::Train { seed });
    (model, x)
}

fn batchnorms(spec: &ModelSpec) -> usize {
    spec.layers
        .iter()
        .filter(|n| matches!(n.layer, LayerSpec::BatchNorm { .. }))
        .count()
}

/// Folds `spec`'s model on `be`; checks its logits against the plain model's, and returns how
/// many layers folding removed.
fn check<B: Backend>(be: &B, spec: ModelSpec) -> usize {
    let (mut plain, x) = model_with_statistics(be, &spec, 7);
    let mut folded = inference_model(be, &plain).unwrap();
    let want = be.download(&plain.forward(be, be.upload(&x), Mode::Eval));
    let got = be.download(&folded.forward(be, be.upload(&x), Mode::Eval));
    if let Err(e) = got.check_close(&want, TOL) {
        panic!("{}: folded logits differ: {e}", spec.name);
    }
    plain.layers.len() - folded.layers.len()
}

/// Layers of `spec` that folding takes in: batch norms right after a convolution (full or
/// depthwise), and ReLUs right after one or after such a batch norm.
fn foldable(spec: &ModelSpec) -> usize {
    let infos = spec.layers().unwrap();
    let is =
        |j: Option<usize>, f: &dyn Fn(&LayerSpec) -> bool| j.is_some_and(|j| f(&infos[j].spec));
    let any_conv = |l: &LayerSpec| {
        matches!(
            l,
            LayerSpec::Conv2d { .. } | LayerSpec::DepthwiseConv2d { .. }
        )
    };
    let bn = |l: &LayerSpec| matches!(l, LayerSpec::BatchNorm { .. });
    infos
        .iter()
        .filter(|l| {
            let s = l.sources[0];
            match l.spec {
                LayerSpec::BatchNorm { .. } => is(s, &any_conv),
                LayerSpec::Relu => {
                    is(s, &any_conv) || (is(s, &bn) && is(infos[s.unwrap()].sources[0], &any_conv))
                }
                _ => false,
            }
        })
        .count()
}

#[test]
fn every_preset_folds_to_the_same_logits_on_the_cpu() {
    for (name, size) in [("fracturenet", 64), ("mobilenet", 64), ("resnet", 64)] {
        let spec = ModelSpec::load(name)
            .unwrap()
            .with_image_size(size)
            .unwrap();
        let removed = check(&Cpu::new(), spec.clone());
        assert!(removed > batchnorms(&spec), "{name}: ReLUs fused too");
        assert_eq!(removed, foldable(&spec), "{name}");
    }
    assert_eq!(
        foldable(&ModelSpec::load("fracturenet").unwrap()),
        8,
        "4 blocks of conv-bn-relu"
    );
    assert_eq!(
        foldable(&ModelSpec::load("mobilenet").unwrap()),
        54,
        "27 convolutions (14 full, 13 depthwise), each with its batch norm and ReLU"
    );
    // conv -> relu -> batchnorm: the ReLU goes into the convolution, the batch norm stays
    let keras = ModelSpec::load("xray-bone-classifier")
        .unwrap()
        .with_image_size(94)
        .unwrap();
    assert_eq!(check(&Cpu::new(), keras), 8, "its 8 convolutions' ReLUs");
}

#[test]
fn a_convolution_read_by_two_layers_keeps_its_batch_norm_apart() {
    let spec = ModelSpec::parse(
        r#"
        name = "two-readers"
        input = [1, 12, 12]
        [[layers]]
        type = "conv2d"
        filters = 4
        kernel = 3
        name = "conv"
        [[layers]]
        type = "batchnorm"
        name = "bn"
        [[layers]]
        type = "add"
        inputs = ["bn", "conv"]
        [[layers]]
        type = "global_avgpool"
        [[layers]]
        type = "dense"
        units = 1
        "#,
    )
    .unwrap();
    // the add reads the convolution too: folding the batch norm would change what it adds
    assert_eq!(check(&Cpu::new(), spec), 0);
}

#[test]
fn folded_models_agree_on_the_gpu() {
    let Some(gpu) = common::gpu::backend() else {
        return;
    };
    let resnet = ModelSpec::load("resnet")
        .unwrap()
        .with_image_size(32)
        .unwrap();
    assert_eq!(check(gpu, resnet.clone()), foldable(&resnet));
}

/// In a pass that will not go backward, a convolution whose output only a max pooling reads
/// pools it inside its own pass (`Backend::conv2d_maxpool_forward`) and the pooling layer is
/// skipped: the logits are those of the layer-by-layer pass (`Model::outputs`, which keeps every
/// output), for the folded presets (convolution with ReLU, then pooling) and for a spec where a
/// second reader of the convolution's output must stop the fusion.
#[test]
fn pooling_inside_the_convolution_gives_the_layer_by_layer_logits() {
    let two_readers = ModelSpec::parse(
        r#"
        name = "pool-and-add"
        input = [1, 12, 12]
        [[layers]]
        type = "conv2d"
        filters = 16
        kernel = 3
        name = "conv"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "pool"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "pool-again"
        inputs = ["conv"]
        [[layers]]
        type = "add"
        inputs = ["pool", "pool-again"]
        [[layers]]
        type = "conv2d"
        filters = 16
        kernel = 3
        [[layers]]
        type = "maxpool"
        size = 2
        [[layers]]
        type = "global_avgpool"
        [[layers]]
        type = "dense"
        units = 1
        "#,
    )
    .unwrap();
    let specs = [
        ModelSpec::load("fracturenet")
            .unwrap()
            .with_image_size(32)
            .unwrap(),
        ModelSpec::load("resnet")
            .unwrap()
            .with_image_size(32)
            .unwrap(),
        two_readers,
    ];
    for spec in specs {
        let (plain, x) = model_with_statistics(&Cpu::new(), &spec, 3);
        let mut folded = inference_model(&Cpu::new(), &plain).unwrap();
        let layer_by_layer = folded
            .outputs(&Cpu::new(), Cpu::new().upload(&x))
            .pop()
            .unwrap();
        let fused =
            Cpu::new().download(&folded.forward(&Cpu::new(), Cpu::new().upload(&x), Mode::Eval));
        if let Err(e) = fused.check_close(&layer_by_layer, 1e-5) {
            panic!("{}: pooled inside, the logits differ: {e}", spec.name);
        }
    }
}

/// A spec where batch norm's output has a second reader (a pooling of its own), so its ReLU and
/// pooling must stay layers; the second batch norm takes its ReLU and pooling inside.
fn batchnorm_read_twice() -> ModelSpec {
    ModelSpec::parse(
        r#"
        name = "bn-read-twice"
        input = [1, 12, 12]
        [[layers]]
        type = "conv2d"
        filters = 4
        kernel = 3
        [[layers]]
        type = "batchnorm"
        name = "bn"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "pool"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "pool-bn"
        inputs = ["bn"]
        [[layers]]
        type = "add"
        inputs = ["pool", "pool-bn"]
        [[layers]]
        type = "batchnorm"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "maxpool"
        size = 2
        [[layers]]
        type = "global_avgpool"
        [[layers]]
        type = "dense"
        units = 1
        "#,
    )
    .unwrap()
}

/// One training step's logits, input gradient and parameter gradients, with `Model::forward`
/// (batch norm runs the ReLU and pooling after it inside its passes) or layer by layer.
fn training_step<B: Backend>(be: &B, spec: &ModelSpec, fused: bool) -> Vec<(String, Tensor)> {
    let mut model = Model::new(be, spec, 5).unwrap();
    let [c, h, w] = spec.input;
    let x = be.upload(&Tensor::rand_uniform([4, c, h, w], -1.0, 1.0, 6));
    let mode = Mode::Train { seed: 7 };
    let logits = if fused {
        model.forward(be, x, mode)
    } else {
        model.forward_layer_by_layer(be, x, mode)
    };
    let logits = be.download(&logits);
    let dlogits = Tensor::rand_uniform(logits.shape.clone(), -1.0, 1.0, 8);
    let dx = model.backward(be, be.upload(&dlogits), true).unwrap();
    let mut out = vec![("logits".into(), logits), ("dx".into(), be.download(&dx))];
    for p in model.named_params() {
        if let Some(g) = &p.param.grad {
            out.push((p.name.clone(), be.download(g)));
        }
        out.push((p.name, be.download(&p.param.value)));
    }
    out
}

/// In training, batch norm with the ReLU and max pooling after it in its own passes gives the
/// logits, the input gradient, every parameter's gradient and the running statistics of the
/// layers one by one, bit for bit (the same arithmetic in the same order), on each backend. Specs: fracturenet (ReLU and pooling), resnet (ReLU before a convolution and
/// before a merge) and one where a second reader of batch norm's output stops the fusion.
#[test]
fn relu_and_pooling_inside_batch_norm_train_as_the_layers_one_by_one() {
    let specs = [
        ModelSpec::load("fracturenet")
            .unwrap()
            .with_image_size(32)
            .unwrap(),
        ModelSpec::load("resnet")
            .unwrap()
            .with_image_size(32)
            .unwrap(),
        batchnorm_read_twice(),
    ];
    fn check<B: Backend>(be: &B, spec: &ModelSpec) {
        let plain = training_step(be, spec, false);
        let fused = training_step(be, spec, true);
        assert_eq!(plain.len(), fused.len());
        for ((name, p), (_, f)) in plain.iter().zip(&fused) {
            let differs = format!("{} on {}: {name} differs", spec.name, be.name());
            assert_eq!(p.shape, f.shape, "{differs}");
            let bits = |t: &Tensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(bits(p) == bits(f), "{differs}: {:?}", f.check_close(p, 0.0));
        }
    }
    for spec in &specs {
        check(&Cpu::new(), spec);
        // a whole residual network's step on lavapipe is tests/gpu_parity.rs's
        if let Some(gpu) = common::gpu::backend().filter(|_| spec.name != "resnet") {
            check(gpu, spec);
        }
    }
}

/// The negative control of the fold's tolerance: the folded first convolution's weights off by
/// 0.1 % (as a batch norm folded with its variance off by 0.2 % would leave them) fail the
/// comparison at [`TOL`], on every preset.
#[test]
fn a_fold_off_by_a_tenth_of_a_percent_fails_the_comparison() {
    for name in ["fracturenet", "mobilenet", "resnet"] {
        let spec = ModelSpec::load(name).unwrap().with_image_size(64).unwrap();
        let (mut plain, x) = model_with_statistics(&Cpu::new(), &spec, 7);
        let mut folded = inference_model(&Cpu::new(), &plain).unwrap();
        common::models::first_weight_off_by_a_tenth_of_a_percent(&mut folded);
        let want = plain.forward(&Cpu::new(), x.clone(), Mode::Eval);
        let got = folded.forward(&Cpu::new(), x, Mode::Eval);
        assert!(got.check_close(&want, TOL).is_err(), "{name}");
    }
}

/// In inference a convolution reads an output that a later layer reads too (a residual block's
/// input, read by its first convolution and by its `add`) in place, not from a copy
/// (`Layer::forward_borrowed`), with its ReLU and pooling inside its pass. Its logits must be
/// those of an explaining pass, which copies every such input and fuses nothing; on the
/// presets with blocks and on a spec where the convolution reading in place pools.
#[test]
fn an_output_read_twice_is_read_in_place_with_the_same_logits() {
    let pooled_in_place = ModelSpec::parse(
        r#"
        name = "read-in-place"
        input = [1, 12, 12]
        [[layers]]
        type = "conv2d"
        filters = 8
        kernel = 3
        name = "stem"
        [[layers]]
        type = "conv2d"
        filters = 8
        kernel = 3
        [[layers]]
        type = "relu"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "pooled"
        [[layers]]
        type = "maxpool"
        size = 2
        name = "stem-pooled"
        inputs = ["stem"]
        [[layers]]
        type = "add"
        inputs = ["pooled", "stem-pooled"]
        [[layers]]
        type = "global_avgpool"
        [[layers]]
        type = "dense"
        units = 1
        "#,
    )
    .unwrap();
    let preset = |name: &str| ModelSpec::load(name).unwrap().with_image_size(32).unwrap();
    let be = Cpu::new();
    for spec in [preset("resnet"), preset("resnet-loc"), pooled_in_place] {
        let (plain, x) = model_with_statistics(&be, &spec, 5);
        for mut model in [inference_model(&be, &plain).unwrap(), plain] {
            let explained = be.download(&model.forward(&be, be.upload(&x), Mode::Explain));
            let in_place = be.download(&model.forward(&be, be.upload(&x), Mode::Eval));
            if let Err(e) = in_place.check_close(&explained, 1e-5) {
                panic!("{}: read in place, the logits differ: {e}", spec.name);
            }
        }
    }
}
