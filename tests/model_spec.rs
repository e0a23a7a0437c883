//! Model specs: the presets, shape inference, and errors that name the layer.

use fracture_cnn::nn::ModelSpec;

/// The shape the flatten layer outputs.
fn flattened(spec: &ModelSpec) -> Vec<usize> {
    let layers = spec.layers().unwrap();
    let flat = layers
        .iter()
        .find(|l| l.spec.describe() == "flatten")
        .unwrap();
    flat.output.clone()
}

#[test]
fn presets_have_the_documented_sizes() {
    let x = ModelSpec::load("xray-bone-classifier").unwrap();
    let (trainable, fixed) = x.param_counts().unwrap();
    assert_eq!(
        trainable + fixed,
        11_180_673,
        "Keras reports 11,180,673 parameters"
    );
    let flat = flattened(&x);
    assert_eq!(flat, [4608]);

    let f = ModelSpec::load("fracturenet").unwrap();
    let flat = flattened(&f);
    assert_eq!(flat, [8192]);
    let f224 = f.clone().with_image_size(224).unwrap();
    let flat = flattened(&f224);
    assert_eq!(flat, [128 * 14 * 14]);
    // forward FLOPs of fracturenet's four convolutions at 128x128, as the peers count them
    let conv: u64 = f
        .layers()
        .unwrap()
        .iter()
        .filter(|l| l.spec.describe().starts_with("conv"))
        .map(|l| l.flops)
        .sum();
    assert_eq!(conv, 9_437_184 + 150_994_944 + 150_994_944 + 75_497_472);
}

#[test]
fn mobilenet_has_the_parameters_of_keras_mobilenet_at_half_width() {
    // keras.applications.MobileNet(alpha=0.5, input_shape=(128, 128, 3)): 1,342,536 parameters,
    // of which its 1000-class head (a 1×1 convolution 512 → 1000 with bias) holds 513,000. Ours
    // differs in three places only: one gray input channel (the first conv's 3×3×16 weights for
    // each of 3 colours: 288 fewer), a bias on every convolution, and a one-logit dense head.
    let spec = ModelSpec::load("mobilenet").unwrap();
    let (trainable, fixed) = spec.param_counts().unwrap();
    let layers = spec.layers().unwrap();
    let conv_biases: usize = layers
        .iter()
        .filter(|l| {
            let d = l.spec.describe();
            d.starts_with("conv") || d.starts_with("depthwise")
        })
        .map(|l| l.output[0])
        .sum();
    let head = 512 + 1;
    assert_eq!(
        trainable + fixed - conv_biases - head + 288,
        1_342_536 - 513_000
    );
    assert_eq!(trainable + fixed, 835_233);
    // every preset and width round-trips through the TOML that `model spec` prints
    for name in [
        "fracturenet",
        "xray-bone-classifier",
        "mobilenet",
        "mobilenet-0.75",
        "resnet",
        "resnet-8-3",
    ] {
        let spec = ModelSpec::load(name).unwrap();
        assert_eq!(ModelSpec::parse(&spec.to_toml().unwrap()).unwrap(), spec);
    }
}

#[test]
fn a_learner_can_write_a_model_in_toml_or_json() {
    let toml = r#"
        name = "tiny"
        input = [1, 12, 10]
        [[layers]]
        type = "conv2d"
        filters = 4
        kernel = [3, 2]
        stride = 2
        padding = "valid"
        [[layers]]
        type = "relu"
        [[layers]]
        type = "flatten"
        [[layers]]
        type = "dense"
        units = 1
    "#;
    let spec = ModelSpec::parse(toml).unwrap();
    let layers = spec.layers().unwrap();
    assert_eq!(layers[0].output, [4, 5, 5]);
    assert_eq!(layers[3].trainable_params, 100 + 1);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(ModelSpec::parse(&json).unwrap(), spec);
}

fn err(text: &str) -> String {
    ModelSpec::parse(text).err().unwrap().to_string()
}

#[test]
fn errors_name_the_layer_and_the_problem() {
    let head = "name = \"bad\"\ninput = [1, 8, 8]\n";
    let layers = "[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"dense\"\nunits = 1\n";
    let e = err(&format!("{head}crop = 0.25\n{layers}"));
    assert!(e.contains("crop 0.25 is outside [0.5, 1]"), "{e}");
    let cropped = ModelSpec::parse(&format!("{head}crop = 0.8\n{layers}")).unwrap();
    assert_eq!(cropped.square().framed_side(), 10, "8 of 10");
    let whole = ModelSpec::parse(&format!("{head}{layers}")).unwrap();
    assert!(
        !whole.to_toml().unwrap().contains("crop"),
        "the whole square is not written"
    );
    let e = err(&format!("{head}[[layers]]\ntype = \"dense\"\nunits = 1\n"));
    assert!(
        e.contains("layer 0 (dense 1)") && e.contains("add a flatten layer"),
        "{e}"
    );

    let e = err(&format!(
        "{head}[[layers]]\ntype = \"conv2d\"\nfilters = 2\nkernel = 9\npadding = \"valid\"\n"
    ));
    assert!(
        e.contains("layer 0 (conv2d 9x9") && e.contains("does not fit"),
        "{e}"
    );

    let e = err(&format!(
        "{head}[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"dense\"\nunits = 3\n"
    ));
    assert!(e.contains("outputs [3]") && e.contains("one logit"), "{e}");

    let e = err(&format!(
        "{head}[[layers]]\ntype = \"dropout\"\nrate = 1.5\n"
    ));
    assert!(
        e.contains("layer 0 (dropout 1.5)") && e.contains("[0, 1)"),
        "{e}"
    );

    let flat = format!("{head}[[layers]]\ntype = \"global_avgpool\"\n[[layers]]\n");
    let e = err(&format!("{flat}type = \"depthwise_conv2d\"\nkernel = 3\n"));
    assert!(
        e.contains("layer 1 (depthwise 3x3/1x1 same)") && e.contains("needs an image input"),
        "{e}"
    );
    let e = err(&format!("{flat}type = \"global_avgpool\"\n"));
    assert!(
        e.contains("layer 1 (global avgpool)") && e.contains("got [1]"),
        "{e}"
    );
    let e = err(&format!(
        "{head}[[layers]]\ntype = \"depthwise_conv2d\"\nkernel = 9\npadding = \"valid\"\n"
    ));
    assert!(
        e.contains("layer 0 (depthwise 9x9") && e.contains("does not fit"),
        "{e}"
    );
    let e = ModelSpec::load("mobilenet-wide").err().unwrap().to_string();
    assert!(e.contains("must be a number"), "{e}");

    let e = err(&format!("{head}[[layers]]\ntype = \"convolution\"\n"));
    assert!(
        e.contains("invalid TOML") && e.contains("convolution"),
        "{e}"
    );

    let e = err("name = \"x\"\ninput = [1, 8\n");
    assert!(e.contains("invalid TOML"), "{e}");

    let e = ModelSpec::load("no-such-model").err().unwrap().to_string();
    assert!(
        e.contains("fracturenet, xray-bone-classifier") && e.contains("mobilenet"),
        "{e}"
    );

    let e = ModelSpec::load("xray-bone-classifier")
        .unwrap()
        .with_image_size(64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("image size 64") && e.contains("layer"), "{e}");
}

#[test]
fn a_graph_spec_names_its_inputs_and_every_mistake_is_named() {
    let block = |add_inputs: &str, extra: &str| {
        format!(
            r#"
            name = "block"
            input = [1, 8, 8]
            [[layers]]
            type = "conv2d"
            filters = 4
            kernel = 3
            name = "stem"
            [[layers]]
            type = "conv2d"
            filters = 8
            kernel = 3
            stride = 2
            name = "body"
            {extra}
            [[layers]]
            type = "add"
            inputs = {add_inputs}
            [[layers]]
            type = "global_avgpool"
            [[layers]]
            type = "dense"
            units = 1
            "#
        )
    };
    // a projection shortcut: 4x8x8 brought to 8x4x4 by a 1x1 convolution of stride 2
    let spec = ModelSpec::parse(&block(r#"["body", "stem"]"#, "")).unwrap();
    let layers = spec.layers().unwrap();
    assert_eq!(layers[2].sources, [Some(1), Some(0)]);
    assert_eq!(layers[2].output, [8, 4, 4]);
    assert_eq!(layers[2].trainable_params, 4 * 8 + 8);
    // the TOML that `model spec` writes reads back to the same graph
    assert_eq!(ModelSpec::parse(&spec.to_toml().unwrap()).unwrap(), spec);
    for (inputs, extra, message) in [
        (
            r#"["body", "nowhere"]"#,
            "",
            "input 'nowhere' is not the name of an earlier layer",
        ),
        (r#"["body"]"#, "", "takes 2 input(s), 1 given"),
        (
            r#"["body", "stem", "input"]"#,
            "",
            "takes 2 input(s), 3 given",
        ),
        (
            r#"["stem", "input"]"#,
            "",
            "layer 1 (conv2d 3x3/2x2 same, 8): its output is used by no later layer",
        ),
        (
            r#"["body", "stem"]"#,
            "[[layers]]\ntype = \"relu\"\nname = \"stem\"",
            "the name 'stem' is taken",
        ),
        (
            r#"["flat", "stem"]"#,
            "[[layers]]\ntype = \"flatten\"\nname = \"flat\"",
            "cannot add [4, 8, 8] to [128]",
        ),
        (r#"["body", 3]"#, "", "inputs must be a list of layer names"),
    ] {
        let err = ModelSpec::parse(&block(inputs, extra))
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{inputs} {extra}: {err}");
    }
}
