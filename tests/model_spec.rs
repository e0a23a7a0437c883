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

    let e = err(&format!("{head}[[layers]]\ntype = \"convolution\"\n"));
    assert!(
        e.contains("invalid TOML") && e.contains("convolution"),
        "{e}"
    );

    let e = err("name = \"x\"\ninput = [1, 8\n");
    assert!(e.contains("invalid TOML"), "{e}");

    let e = ModelSpec::load("no-such-model").err().unwrap().to_string();
    assert!(e.contains("fracturenet, xray-bone-classifier"), "{e}");

    let e = ModelSpec::load("xray-bone-classifier")
        .unwrap()
        .with_image_size(64)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("image size 64") && e.contains("layer"), "{e}");
}
