//! The house's layers point one way: every module of `src/` uses only modules of the layers below
//! its own, as `src/lib.rs` lists them. A `crate::` path in code or in an intra-doc link is a use;
//! a path named in prose (in backticks, not linked) is not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Module → layer, from `src/lib.rs`' numbered list ("//! 3. [`data`]: ...").
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut layer = BTreeMap::new();
    let mut current = None;
    for line in lib.lines().map_while(|l| l.strip_prefix("//!")) {
        let line = line.trim_start();
        if let Some((n, _)) = line.split_once(". ") {
            current = n.parse::<usize>().ok().or(current);
        } else if line.is_empty() {
            current = None;
        }
        let Some(n) = current else { continue };
        // "[`name`]" or "[`name`](mod@name)"
        for name in line.split("[`").skip(1).filter_map(|s| s.split_once("`]")) {
            layer.insert(name.0.to_string(), n);
        }
    }
    layer
}

/// The top-level modules a file uses: `crate::NAME` in its code, or in an intra-doc link of
/// its comments (`[`crate::NAME...`]` or `](crate::NAME...)`); its tests are left out.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = Vec::new();
    for line in code.lines() {
        let (code, comment) = line.split_once("//").unwrap_or((line, ""));
        let mut paths: Vec<&str> = code.split("crate::").skip(1).collect();
        for link in ["[`crate::", "(crate::"] {
            paths.extend(comment.split(link).skip(1));
        }
        // `use crate::{a, b::c}` names several
        for path in paths {
            let names = match path.strip_prefix('{') {
                Some(group) => group.split(',').map(str::trim).collect(),
                None => vec![path],
            };
            for name in names {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The module of `src` a file belongs to: its first component, without `.rs`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(SRC).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every use of `files` that reaches a module of its own layer or above, as "a -> b (file)".
fn upward_uses(files: &[(PathBuf, String)], layer: &BTreeMap<String, usize>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (file, text) in files {
        let module = module_of(file);
        if ["lib", "main", "cli"].contains(&module.as_str()) {
            continue;
        }
        let own = *layer
            .get(&module)
            .unwrap_or_else(|| panic!("module {module} is in no layer of src/lib.rs"));
        for used in uses(text) {
            let Some(&theirs) = layer.get(&used) else {
                continue; // crate::self-relative items such as a macro
            };
            if used != module && theirs >= own {
                wrong.push(format!(
                    "{module} (layer {own}) -> {used} (layer {theirs}) in {}",
                    file.display()
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    wrong
}

fn sources() -> Vec<(PathBuf, String)> {
    rust_files(Path::new(SRC))
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let layer = layers(&lib);
    for declared in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
        let name = declared.trim_end_matches(';');
        assert!(layer.contains_key(name), "lib.rs lists no layer for {name}");
    }
    let wrong = upward_uses(&sources(), &layer);
    assert!(
        wrong.is_empty(),
        "uses that point up:\n{}",
        wrong.join("\n")
    );
}

/// The negative controls: a use pointing up, in code and in a doc link, is found; one in prose
/// is not.
#[test]
fn a_use_pointing_up_is_found() {
    let layer = layers(&std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap());
    let file = |text: &str| vec![(Path::new(SRC).join("data/mod.rs"), text.to_string())];
    for text in [
        "use crate::nn::LayerSpec;",
        "use crate::{backend::Backend, checkpoint};",
        "/// as [`crate::train::load_data`] does",
        "fn f() { crate::eval::run() }",
    ] {
        assert_eq!(upward_uses(&file(text), &layer).len(), 1, "{text}");
    }
    for text in [
        "use crate::backend::Backend;",
        "//! unlike `crate::nn`, ...",
    ] {
        assert!(upward_uses(&file(text), &layer).is_empty(), "{text}");
    }
}
