//! The uniform parameter blocks of the kernels: one `#[repr(C)]` `Pod` struct per WGSL file,
//! declared with [`wgsl_params!`], which also records its fields so that a test can hold each
//! struct to its WGSL twin field for field (name, order and type).

/// Declares a kernel family's parameter struct: `#[repr(C)]`, `Pod`, every field `u32` or `f32`,
/// and `FIELDS`, its fields as (name, type) in order.
macro_rules! wgsl_params {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ident),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(super) struct $name {
            $(pub $field: $ty,)*
        }

        impl $name {
            /// The fields as (name, type), in order: `shaders/*.wgsl` must declare the same.
            #[cfg(test)]
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($field), stringify!($ty)),)*];
        }
    };
}
pub(super) use wgsl_params;

/// A size or index as the kernels take it.
pub(super) fn u(v: usize) -> u32 {
    u32::try_from(v).expect("a GPU index beyond 32 bits")
}

#[cfg(test)]
pub(super) mod tests {
    /// The fields of `struct Params { ... }` in a WGSL source, as (name, type).
    pub fn wgsl_fields(source: &str) -> Vec<(String, String)> {
        let start = source.find("struct Params {").expect("a Params struct") + 15;
        let body = &source[start..start + source[start..].find('}').expect("its end")];
        body.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .filter_map(|f| f.split_once(':'))
            .map(|(n, t)| (n.trim().to_string(), t.trim().to_string()))
            .collect()
    }

    /// Each family's struct against its WGSL file.
    #[test]
    fn every_params_struct_matches_its_wgsl_struct_field_for_field() {
        use super::super::*;
        let families: [(&str, &[(&str, &str)]); 10] = [
            ("batchnorm", batchnorm::Params::FIELDS),
            ("conv", conv::Params::FIELDS),
            ("depthwise", depthwise::Params::FIELDS),
            ("elementwise", elementwise::Params::FIELDS),
            ("gemm", gemm::Params::FIELDS),
            ("loss", loss::Params::FIELDS),
            ("optim", optim::Params::FIELDS),
            ("pool", pool::Params::FIELDS),
            ("reduce", reduce::Params::FIELDS),
            ("upsample", upsample::Params::FIELDS),
        ];
        for (family, fields) in families {
            let path = format!("{}/shaders/{family}.wgsl", env!("CARGO_MANIFEST_DIR"));
            let wgsl = wgsl_fields(&std::fs::read_to_string(&path).unwrap());
            let rust: Vec<(String, String)> = fields
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
            assert_eq!(rust, wgsl, "{family}: the Rust Params and {path} differ");
        }
        // and the check itself sees a difference
        let swapped = "struct Params {\n n: u32, eps: f32,\n}";
        assert_ne!(
            wgsl_fields(swapped),
            [("eps", "f32"), ("n", "u32")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
