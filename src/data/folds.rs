//! Stratified k-fold assignment for cross-validation: the training and validation images of a
//! data folder pooled, near-duplicates (by the data check's difference hash) kept in one fold,
//! each fold holding about the same share of fractures. The assignment is written once, as
//! `folds.csv` in the cross-validation's folder, and every fold's run reads it back.

use super::check::{self, DHash};
use super::folder::{DataDir, Sample};
use crate::files::write_atomic;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every image of the pooled data with its fold (1-based) and its near-duplicate group.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub folds: usize,
    pub rows: Vec<FoldRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FoldRow {
    pub path: PathBuf,
    pub label: f32,
    pub fold: usize,
    /// Images of one group are near-duplicates of each other (directly or through others).
    pub group: usize,
}

/// The train and val images of `dir`, pooled, in a fixed order.
pub fn pooled(dir: &DataDir) -> Vec<Sample> {
    dir.train
        .samples
        .iter()
        .chain(&dir.val.samples)
        .cloned()
        .collect()
}

/// Groups of near-duplicates (hashes within [`check::NEAR`] bits, joined transitively): the
/// group number of each hash.
pub fn duplicate_groups(hashes: &[DHash]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..hashes.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let pairs: Vec<(usize, usize)> = (0..hashes.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            (i + 1..hashes.len())
                .filter(move |&j| check::distance(&hashes[i], &hashes[j]) <= check::NEAR)
                .map(move |j| (i, j))
        })
        .collect();
    for (i, j) in pairs {
        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
        parent[a.max(b)] = a.min(b);
    }
    let mut number = HashMap::new();
    (0..hashes.len())
        .map(|i| {
            let r = root(&mut parent, i);
            let next = number.len();
            *number.entry(r).or_insert(next)
        })
        .collect()
}

/// Deals the groups into `folds` folds: groups in an order shuffled by `seed`, the largest
/// first, each to the fold that has the fewest images of the group's class so far (fewest
/// images in all on a tie), so that each fold gets its share of fractures.
pub fn assign(labels: &[f32], groups: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let n_groups = groups.iter().max().map_or(0, |&g| g + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_groups];
    for (i, &g) in groups.iter().enumerate() {
        members[g].push(i);
    }
    members.shuffle(&mut StdRng::seed_from_u64(seed));
    members.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let (mut per_class, mut total) = (vec![[0usize; 2]; folds], vec![0usize; folds]);
    let mut fold_of = vec![0; labels.len()];
    for m in members.iter().filter(|m| !m.is_empty()) {
        let positives = m.iter().filter(|&&i| labels[i] == 1.0).count();
        let class = usize::from(2 * positives >= m.len());
        let f = (0..folds)
            .min_by_key(|&f| (per_class[f][class], total[f]))
            .expect("at least one fold");
        for &i in m {
            fold_of[i] = f + 1;
            per_class[f][usize::from(labels[i] == 1.0)] += 1;
        }
        total[f] += m.len();
    }
    fold_of
}

impl Assignment {
    /// Hashes every pooled image of `dir` (decoding each once, with a progress bar) and deals
    /// them into `folds` stratified folds.
    pub fn make(dir: &DataDir, folds: usize, seed: u64, quiet: bool) -> Result<Self> {
        let samples = pooled(dir);
        if folds < 2 {
            bail!("--folds must be at least 2, got {folds}");
        }
        let positives = samples.iter().filter(|s| s.label == 1.0).count();
        if positives < folds || samples.len() - positives < folds {
            bail!(
                "{folds} folds need at least {folds} images of each class; the data has \
                 {positives} fractured and {} not",
                samples.len() - positives
            );
        }
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(samples.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("hashing [{bar:30}] {pos}/{len} images, eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let hashes: Vec<Result<DHash>> = samples
            .par_iter()
            .map(|s| {
                let h = super::image::open(&s.path).map(|img| check::dhash(&img));
                bar.inc(1);
                h
            })
            .collect();
        bar.finish_and_clear();
        // an unreadable image gets a hash of its own, so it joins no group; training skips it
        let hashes: Vec<DHash> = hashes
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.unwrap_or([i as u64, !0, !0, !(i as u64)]))
            .collect();
        let groups = duplicate_groups(&hashes);
        let labels: Vec<f32> = samples.iter().map(|s| s.label).collect();
        let fold_of = assign(&labels, &groups, folds, seed);
        let rows = samples
            .into_iter()
            .zip(groups)
            .zip(fold_of)
            .map(|((s, group), fold)| FoldRow {
                path: s.path,
                label: s.label,
                fold,
                group,
            })
            .collect();
        Ok(Assignment { folds, rows })
    }

    /// Writes the assignment as CSV: `file,label,fold,group`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = String::from("file,label,fold,group\n");
        for r in &self.rows {
            let name = r
                .path
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", r.path.display()))?;
            if name.contains([',', '\n', '"']) {
                bail!(
                    "{name}: a file name with a comma, quote or line break cannot go in {}",
                    path.display()
                );
            }
            text.push_str(&format!("{name},{},{},{}\n", r.label, r.fold, r.group));
        }
        write_atomic(path, text.as_bytes())
    }

    /// Reads back what [`Assignment::write`] wrote, naming the file and line of any damage.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fold assignment {}", path.display()))?;
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            let bad = || {
                format!(
                    "{} line {}: expected file,label,fold,group",
                    path.display(),
                    n + 1
                )
            };
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 4 {
                bail!(bad());
            }
            rows.push(FoldRow {
                path: PathBuf::from(f[0]),
                label: f[1].parse().with_context(bad)?,
                fold: f[2].parse().with_context(bad)?,
                group: f[3].parse().with_context(bad)?,
            });
        }
        let folds = rows.iter().map(|r| r.fold).max().unwrap_or(0);
        if folds < 2 || rows.iter().any(|r| r.fold == 0) {
            bail!("{} holds no valid fold assignment", path.display());
        }
        Ok(Assignment { folds, rows })
    }

    /// The fold of each pooled image's path.
    pub fn fold_of(&self) -> HashMap<&Path, usize> {
        self.rows
            .iter()
            .map(|r| (r.path.as_path(), r.fold))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_share_a_group_transitively() {
        let a = [0u64; 4];
        let mut b = a;
        b[0] = 0b111; // 3 bits from a
        let mut c = b;
        c[1] = 0b111; // 3 bits from b, 6 from a
        let far = [!0u64; 4];
        let g = duplicate_groups(&[a, far, c, b]);
        assert_eq!(g[0], g[2]);
        assert_eq!(g[0], g[3]);
        assert_ne!(g[0], g[1]);
    }

    #[test]
    fn folds_are_stratified_and_keep_groups_together() {
        // 100 images, 20 fractured, and three groups of near-duplicates
        let labels: Vec<f32> = (0..100).map(|i| f32::from(i % 5 == 0)).collect();
        let mut groups: Vec<usize> = (0..100).collect();
        for (i, g) in [(1, 0), (2, 0), (6, 0), (11, 10), (12, 10), (40, 41)] {
            groups[i] = g;
        }
        let dense = duplicate_groups_numbered(&groups);
        let fold = assign(&labels, &dense, 5, 1);
        for f in 1..=5 {
            let in_fold: Vec<usize> = (0..100).filter(|&i| fold[i] == f).collect();
            let pos = in_fold.iter().filter(|&&i| labels[i] == 1.0).count();
            assert_eq!(pos, 4, "fold {f}: {pos} fractured");
            assert!(
                (19..=21).contains(&in_fold.len()),
                "fold {f}: {}",
                in_fold.len()
            );
        }
        for (i, j) in [(0, 1), (0, 2), (0, 6), (10, 11), (10, 12), (40, 41)] {
            assert_eq!(fold[i], fold[j], "{i} and {j} are near-duplicates");
        }
        assert_eq!(fold, assign(&labels, &dense, 5, 1), "seeded");
        assert_ne!(fold, assign(&labels, &dense, 5, 2));
    }

    /// Group ids made dense (0..n), as `duplicate_groups` returns them.
    fn duplicate_groups_numbered(groups: &[usize]) -> Vec<usize> {
        let mut number = HashMap::new();
        groups
            .iter()
            .map(|g| {
                let next = number.len();
                *number.entry(*g).or_insert(next)
            })
            .collect()
    }

    #[test]
    fn the_csv_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignment {
            folds: 2,
            rows: vec![
                FoldRow {
                    path: "x/a.jpg".into(),
                    label: 1.0,
                    fold: 1,
                    group: 0,
                },
                FoldRow {
                    path: "x/b.jpg".into(),
                    label: 0.0,
                    fold: 2,
                    group: 1,
                },
            ],
        };
        let path = dir.path().join("folds.csv");
        a.write(&path).unwrap();
        assert_eq!(Assignment::read(&path).unwrap(), a);
        std::fs::write(&path, "file,label,fold,group\nx/a.jpg,1,one,0\n").unwrap();
        let err = format!("{:#}", Assignment::read(&path).unwrap_err());
        assert!(err.contains("folds.csv line 2"), "{err}");
    }
}
