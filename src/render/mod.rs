//! Render: a checked-out tree and the configured paths in, the desired set out.
//!
//! Walks every `*.yaml` / `*.yml` below each path in a stable order and parses
//! its documents. Pure apart from reading files.

pub mod manifest;
pub mod removed;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use manifest::{Manifest, Origin, ParseError};

use crate::object::ObjectRef;

/// The objects rendered from one revision, in file order.
#[derive(Debug, Default, Clone)]
pub struct DesiredSet {
    pub manifests: Vec<Manifest>,
    /// Objects annotated to be left alone.
    pub ignored: Vec<ObjectRef>,
    /// Things the user should fix that did not stop the render.
    pub warnings: Vec<String>,
}

/// What to render and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directories (or files) relative to the root; empty means the whole tree.
    pub paths: Vec<PathBuf>,
    /// Apply objects of removed API versions under their replacement, where
    /// the schema did not change.
    pub upgrade_removed_apis: bool,
}

/// Annotations that make tidegate leave an object alone, in Git or live.
pub const IGNORE_ANNOTATIONS: [&str; 2] = ["fluxcd.io/ignore", "tidegate.dev/ignore"];

/// Flux v1 semantics: `"true"` ignores the object; `sync_only` ignores it
/// when syncing (Flux still updated images in it, tidegate has nothing else).
pub fn is_ignored(object: &serde_json::Value) -> bool {
    IGNORE_ANNOTATIONS.iter().any(|key| {
        matches!(
            object["metadata"]["annotations"][key].as_str(),
            Some("true" | "sync_only")
        )
    })
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
    #[error("{origin}: {id}: {api_version} {kind} was removed from Kubernetes; {advice}")]
    RemovedApi {
        origin: Origin,
        id: Box<ObjectRef>,
        api_version: String,
        kind: String,
        advice: String,
    },
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

/// Renders the desired set from `root`.
pub fn render(root: &Path, options: &Options) -> Result<DesiredSet, Errors> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let roots: Vec<PathBuf> = if options.paths.is_empty() {
        vec![PathBuf::new()]
    } else {
        options.paths.clone()
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
    for (file, result) in files.iter().zip(read_and_parse(root, &files)) {
        match result {
            Ok(found) if found.is_empty() => {
                tracing::debug!(file = %file.display(), "skipped: no Kubernetes objects in it");
            }
            Ok(found) => manifests.extend(found),
            Err(e) => errors.push(e),
        }
    }

    let mut set = DesiredSet::default();
    for mut m in manifests {
        if is_ignored(&m.object) {
            tracing::debug!(object = %m.id, "ignored: annotated in Git");
            set.ignored.push(m.id);
            continue;
        }
        match upgrade_removed(&mut m, options.upgrade_removed_apis) {
            Ok(Some(warning)) => set.warnings.push(warning),
            Ok(None) => {}
            Err(e) => {
                errors.push(e);
                continue;
            }
        }
        set.manifests.push(m);
    }
    set.manifests = reject_duplicates(std::mem::take(&mut set.manifests), &mut errors);
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(Errors(errors))
    }
}

/// Reads and parses files on every core, keeping their order.
fn read_and_parse(root: &Path, files: &[PathBuf]) -> Vec<Result<Vec<Manifest>, Error>> {
    let one = |rel: &PathBuf| match std::fs::read_to_string(root.join(rel)) {
        Ok(text) => manifest::parse_file(rel, &text).map_err(Error::from),
        Err(source) => Err(Error::Read {
            path: rel.clone(),
            source,
        }),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || files.len() < 64 {
        return files.iter().map(one).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a parser thread panicked"))
            .collect()
    })
}

/// Refuses an object of a removed API version, or moves it to the
/// replacement when allowed; returns the warning to show for a move.
fn upgrade_removed(m: &mut Manifest, allowed: bool) -> Result<Option<String>, Error> {
    let api_version = m.id.api_version();
    let refuse = |advice: String| Error::RemovedApi {
        origin: m.origin(),
        id: Box::new(m.id.clone()),
        api_version: api_version.clone(),
        kind: m.id.kind.clone(),
        advice,
    };
    if removed::removed_without_replacement(&api_version, &m.id.kind) {
        return Err(refuse("nothing replaces it; remove the object".into()));
    }
    let Some(found) = removed::lookup(&api_version, &m.id.kind) else {
        return Ok(None);
    };
    if !(allowed && found.same_schema) {
        let advice = if found.same_schema {
            format!(
                "use apiVersion {} (its schema is the same: --upgrade-removed-apis applies it so)",
                found.replacement
            )
        } else {
            format!(
                "use apiVersion {} and update the object to its schema",
                found.replacement
            )
        };
        return Err(refuse(advice));
    }
    let from = m.id.to_string();
    m.object["apiVersion"] = found.replacement.into();
    let (group, version) = found
        .replacement
        .split_once('/')
        .unwrap_or(("", found.replacement));
    m.id.group = group.to_string();
    m.id.version = version.to_string();
    let warning = format!(
        "{}: {from} uses a removed API version; applied as {} (update the file)",
        m.origin(),
        found.replacement
    );
    tracing::warn!("{warning}");
    Ok(Some(warning))
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
        let set = render(dir.path(), &Options::default()).unwrap();
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["yy", "xx", "zz"]);
    }

    #[test]
    fn only_configured_paths_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "apps/a.yaml", &cm("a"));
        write(dir.path(), "infra/b.yaml", &cm("b"));
        let options = Options {
            paths: vec![PathBuf::from("infra")],
            ..Options::default()
        };
        let set = render(dir.path(), &options).unwrap();
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
        let errors = render(dir.path(), &Options::default()).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let msg = errors.to_string();
        assert!(msg.contains("one.yaml (document 0)"), "{msg}");
        assert!(msg.contains("two.yaml (document 1)"), "{msg}");
    }

    #[test]
    fn missing_path_and_bad_file_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok/bad.yaml", "apiVersion: v1\nkind: [\n");
        let options = Options {
            paths: vec![PathBuf::from("ok"), PathBuf::from("gone")],
            ..Options::default()
        };
        let errors = render(dir.path(), &options).unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
    }

    const CRONJOB_V1BETA1: &str = "apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: nightly, namespace: demo}\nspec: {schedule: '@daily'}\n";

    #[test]
    fn removed_api_version_names_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cron.yaml", CRONJOB_V1BETA1);
        let msg = render(dir.path(), &Options::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cron.yaml (document 0)"), "{msg}");
        assert!(
            msg.contains(
                "batch/v1beta1 CronJob was removed from Kubernetes; use apiVersion batch/v1"
            ),
            "{msg}"
        );
    }

    #[test]
    fn removed_api_version_is_upgraded_when_allowed_and_schema_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cron.yaml", CRONJOB_V1BETA1);
        write(
            dir.path(),
            "deploy.yaml",
            "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old}\n",
        );
        let options = Options {
            upgrade_removed_apis: true,
            ..Options::default()
        };
        // The Deployment's schema changed: still refused.
        let errors = render(dir.path(), &options).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(
            errors
                .to_string()
                .contains("update the object to its schema")
        );
        std::fs::remove_file(dir.path().join("deploy.yaml")).unwrap();
        let set = render(dir.path(), &options).unwrap();
        assert_eq!(set.manifests[0].id.api_version(), "batch/v1");
        assert_eq!(set.manifests[0].object["apiVersion"], "batch/v1");
        assert_eq!(set.warnings.len(), 1);
    }

    #[test]
    fn ignore_annotations_drop_objects() {
        let dir = tempfile::tempdir().unwrap();
        let annotated = |name: &str, key: &str, value: &str| {
            format!("{}  annotations:\n    {key}: \"{value}\"\n", cm(name))
        };
        write(
            dir.path(),
            "a.yaml",
            &annotated("flux", "fluxcd.io/ignore", "true"),
        );
        write(
            dir.path(),
            "b.yaml",
            &annotated("ours", "tidegate.dev/ignore", "true"),
        );
        write(
            dir.path(),
            "c.yaml",
            &annotated("synconly", "fluxcd.io/ignore", "sync_only"),
        );
        write(
            dir.path(),
            "d.yaml",
            &annotated("kept", "fluxcd.io/ignore", "false"),
        );
        let set = render(dir.path(), &Options::default()).unwrap();
        let kept: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(kept, ["kept"]);
        assert_eq!(set.ignored.len(), 3);
    }
}
