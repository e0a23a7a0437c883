//! What the benchmarks share: reading `MODEL IMAGE_SIZE BATCH_SIZE` from the command line.

use fracture_cnn::nn::ModelSpec;

/// The model spec at the image size given, and the batch size (defaults for missing arguments).
/// Flags that cargo passes to bench binaries (`--bench`) are ignored.
pub fn model_from_args(default_size: usize, default_batch: usize) -> (ModelSpec, usize) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let name = args.first().map_or("fracturenet", String::as_str);
    let size = args
        .get(1)
        .map_or(default_size, |s| s.parse().expect("image size"));
    let batch = args
        .get(2)
        .map_or(default_batch, |s| s.parse().expect("batch size"));
    let spec = ModelSpec::load(name)
        .unwrap()
        .with_image_size(size)
        .unwrap();
    (spec, batch)
}
