//! The GPU backend for tests: one device shared by every test of a binary (kernels compile once).
//! Without an adapter, GPU tests are skipped with a note, unless FRACTURE_REQUIRE_GPU=1 (as in
//! CI), where a missing adapter fails them.

use fracture_cnn::backend::gpu::Gpu;
use std::sync::OnceLock;

pub fn backend() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(g) => Some(g),
        Err(e) => {
            let required = std::env::var("FRACTURE_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "FRACTURE_REQUIRE_GPU=1 but the GPU backend failed: {e:#}"
            );
            eprintln!("note: skipping GPU tests, no GPU backend: {e:#}");
            None
        }
    })
    .as_ref()
}
