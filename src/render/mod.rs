//! Render: a checked-out tree and the configured paths in, the desired set out.
//!
//! Walks every `*.yaml` / `*.yml` below each path in a stable order and parses
//! its documents. Pure apart from reading files.

pub mod manifest;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use manifest::{Manifest, Origin, ParseError};

use crate::object::ObjectRef;

/// The objects rendered from one revision, in file order.
#[derive(Debug, Default, Clone)]
pub struct DesiredSet {
    pub manifests: Vec<Manifest>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("path {path} does not exist in the repository")]
    MissingPath { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{id} is defined twice: in {first} and in {second}; neither is applied")]
    Duplicate {
        id: Box<ObjectRef>,
        first: Origin,
        second: Origin,
    },
}

/// Everything wrong with one render, so a user can fix it all in one go.
#[derive(Debug)]
pub struct Errors(pub Vec<Error>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the manifests", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// The sha256 of an object's canonical JSON form (keys sorted), in hex.
pub fn checksum(object: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_vec(object).expect("JSON values serialize");
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Renders the desired set from `root`, reading each of `paths` (relative to
/// `root`; empty means the whole tree).
pub fn render(root: &Path, paths: &[PathBuf]) -> Result<DesiredSet, Errors> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let roots: Vec<PathBuf> = if paths.is_empty() {
        vec![PathBuf::new()]
    } else {
        paths.to_vec()
    };
    for rel in &roots {
        let abs = root.join(rel);
        if !abs.exists() {
            errors.push(Error::MissingPath { path: rel.clone() });
            continue;
        }
        if let Err(e) = find_yaml(root, rel, &mut files) {
            errors.push(e);
        }
    }
    files.sort();
    files.dedup();

    let mut manifests = Vec::new();
    for rel in files {
        let abs = root.join(&rel);
        match std::fs::read_to_string(&abs) {
            Ok(text) => match manifest::parse_file(&rel, &text) {
                Ok(found) => manifests.extend(found),
                Err(e) => errors.push(e.into()),
            },
            Err(source) => errors.push(Error::Read { path: rel, source }),
        }
    }

    let manifests = reject_duplicates(manifests, &mut errors);
    if errors.is_empty() {
        Ok(DesiredSet { manifests })
    } else {
        Err(Errors(errors))
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Collects YAML files below `rel`, skipping hidden directories (`.git`) and
/// Helm chart directories, whose templates are not plain manifests.
fn find_yaml(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let abs = root.join(rel);
    let read_err = |source| Error::Read {
        path: rel.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(&abs).map_err(read_err)?;
    if meta.is_file() {
        if is_yaml(rel) {
            out.push(rel.to_path_buf());
        }
        return Ok(());
    }
    if abs.join("Chart.yaml").is_file() {
        tracing::debug!(dir = %rel.display(), "skipping Helm chart directory");
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(&abs)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let child = rel.join(&name);
        let file_type = entry.file_type().map_err(read_err)?;
        if file_type.is_dir() {
            find_yaml(root, &child, out)?;
        } else if is_yaml(&child) {
            out.push(child);
        }
    }
    Ok(())
}

/// Drops every object defined more than once and reports where.
fn reject_duplicates(manifests: Vec<Manifest>, errors: &mut Vec<Error>) -> Vec<Manifest> {
    let mut first_seen: BTreeMap<ObjectRef, usize> = BTreeMap::new();
    let mut duplicated = vec![false; manifests.len()];
    for (i, m) in manifests.iter().enumerate() {
        if let Some(&j) = first_seen.get(&m.id) {
            duplicated[i] = true;
            duplicated[j] = true;
            errors.push(Error::Duplicate {
                id: Box::new(m.id.clone()),
                first: manifests[j].origin(),
                second: m.origin(),
            });
        } else {
            first_seen.insert(m.id.clone(), i);
        }
    }
    manifests
        .into_iter()
        .zip(duplicated)
        .filter(|(_, dup)| !dup)
        .map(|(m, _)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: demo\n")
    }

    #[test]
    fn checksum_ignores_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"b":{"d":4,"c":2},"a":1}"#).unwrap();
        assert_eq!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a), checksum(&c));
        assert_eq!(checksum(&a).len(), 64);
    }

    #[test]
    fn walks_recursively_in_stable_order_and_skips_charts() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b/z.yaml", &cm("zz"));
        write(dir.path(), "a/deep/y.yml", &cm("yy"));
        write(dir.path(), "a/x.yaml", &cm("xx"));
        write(dir.path(), "a/readme.md", "not yaml");
        write(
            dir.path(),
            "charts/web/Chart.yaml",
            "name: web\nversion: 1.0.0\n",
        );
        write(
            dir.path(),
            "charts/web/templates/cm.yaml",
            &cm("{{ .Values.name }}"),
        );
        write(dir.path(), ".hidden/w.yaml", &cm("ww"));
        let set = render(dir.path(), &[]).unwrap();
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["yy", "xx", "zz"]);
    }

    #[test]
    fn only_configured_paths_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "apps/a.yaml", &cm("a"));
        write(dir.path(), "infra/b.yaml", &cm("b"));
        let set = render(dir.path(), &[PathBuf::from("infra")]).unwrap();
        assert_eq!(set.manifests.len(), 1);
        assert_eq!(set.manifests[0].id.name, "b");
        assert_eq!(set.manifests[0].file, Path::new("infra/b.yaml"));
    }

    #[test]
    fn duplicates_name_both_files_and_neither_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "one.yaml", &cm("same"));
        write(
            dir.path(),
            "two.yaml",
            &format!("{}---\n{}", cm("other"), cm("same")),
        );
        let errors = render(dir.path(), &[]).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let msg = errors.to_string();
        assert!(msg.contains("one.yaml (document 0)"), "{msg}");
        assert!(msg.contains("two.yaml (document 1)"), "{msg}");
    }

    #[test]
    fn missing_path_and_bad_file_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok/bad.yaml", "apiVersion: v1\nkind: [\n");
        let errors = render(dir.path(), &[PathBuf::from("ok"), PathBuf::from("gone")]).unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
    }
}
