//! The Runs view's data: every run folder under the runs folder (a folder with a `metrics.csv`,
//! at most two levels down, so that cross-validation folds are runs too), and one run's config and
//! epochs. A run is named by its path under the runs folder; a name from a request is only ever
//! matched against this listing, never joined to a path, so no request can reach a file outside.

use super::ApiError;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Run folders under `root`: (name, folder), sorted by name.
fn run_folders(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut visit = |dir: &Path, name: String| {
        if dir.join("metrics.csv").is_file() {
            found.push((name, dir.to_path_buf()));
        }
    };
    for entry in sorted_dirs(root) {
        let top = file_name(&entry);
        visit(&entry, top.clone());
        for inner in sorted_dirs(&entry) {
            visit(&inner, format!("{top}/{}", file_name(&inner)));
        }
    }
    found
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|p| p.is_dir());
    dirs.sort();
    dirs
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The epochs of a run's `metrics.csv`, each as an object of its columns (numbers where they
/// parse); a file being written can end in a partial line (no line break yet), which is left out.
fn epochs(csv: &str) -> Vec<Map<String, Value>> {
    let mut lines = csv
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(str::trim_end);
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    lines
        .filter(|l| l.split(',').count() == header.len())
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(k, v)| {
                    let value = v.parse::<f64>().map_or(json!(v), |x| json!(x));
                    (k.to_string(), value)
                })
                .collect()
        })
        .collect()
}

/// The epoch with the highest validation ROC-AUC.
fn best(epochs: &[Map<String, Value>]) -> Option<&Map<String, Value>> {
    let auc = |e: &Map<String, Value>| e.get("val_roc_auc").and_then(Value::as_f64);
    epochs
        .iter()
        .filter_map(|e| Some((auc(e)?, e)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
}

fn read_run(dir: &Path) -> (Value, Vec<Map<String, Value>>) {
    let config = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|c| c.get("config").cloned().unwrap_or(c))
        .unwrap_or(Value::Null);
    let rows = std::fs::read_to_string(dir.join("metrics.csv"))
        .map(|t| epochs(&t))
        .unwrap_or_default();
    (config, rows)
}

/// `GET /api/runs`: `{"root": ..., "runs": [{name, model, image_size, epochs, epochs_done,
/// best_epoch, best_val_roc_auc}]}`.
pub fn list(root: &Path) -> Value {
    let runs: Vec<Value> = run_folders(root)
        .into_iter()
        .map(|(name, dir)| {
            let (config, rows) = read_run(&dir);
            let best = best(&rows);
            json!({
                "name": name,
                "model": config.get("model"),
                "image_size": config.get("image_size"),
                "epochs": config.get("epochs"),
                "epochs_done": rows.len(),
                "best_epoch": best.and_then(|b| b.get("epoch")),
                "best_val_roc_auc": best.and_then(|b| b.get("val_roc_auc")),
            })
        })
        .collect();
    json!({ "root": root.display().to_string(), "runs": runs })
}

/// `GET /api/run?name=NAME`: `{"name", "config", "epochs": [{column: value}]}`.
pub fn detail(root: &Path, name: &str) -> Result<Value, ApiError> {
    let (_, dir) = run_folders(root)
        .into_iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| ApiError::new(404, format!("no run named '{name}'")))?;
    let (config, rows) = read_run(&dir);
    Ok(json!({ "name": name, "config": config, "epochs": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_two_levels_down_and_only_by_their_names() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("cv-resnet-001/fold-1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            run.join("metrics.csv"),
            "epoch,val_roc_auc\n1,0.7\n2,0.8\n3,0.75\n4,",
        )
        .unwrap();
        std::fs::write(
            run.join("config.json"),
            r#"{"config": {"model": "resnet"}}"#,
        )
        .unwrap();
        let l = list(root.path());
        assert_eq!(l["runs"][0]["name"], "cv-resnet-001/fold-1");
        assert_eq!(l["runs"][0]["model"], "resnet");
        assert_eq!(
            l["runs"][0]["epochs_done"], 3,
            "the partial line is left out"
        );
        assert_eq!(l["runs"][0]["best_epoch"], 2.0);
        let d = detail(root.path(), "cv-resnet-001/fold-1").unwrap();
        assert_eq!(d["epochs"][1]["val_roc_auc"], 0.8);
        for bad in [
            "../etc",
            "cv-resnet-001/../..",
            "/etc/passwd",
            "cv-resnet-001",
        ] {
            assert_eq!(detail(root.path(), bad).unwrap_err().status, 404, "{bad}");
        }
    }
}
