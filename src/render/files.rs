//! File discovery: a checked-out tree and the configured paths in, the YAML
//! files to parse out, each read within the byte limits.
//!
//! Symlinks are followed only while they stay inside the repository; a loop
//! ends; FIFOs, sockets and devices are never opened.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Error, Limits};

/// The files found, and the problems met on the way (each naming its path).
#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<PathBuf>,
    pub errors: Vec<Error>,
    pub warnings: Vec<String>,
    /// Directories holding a kustomization: built, not walked.
    pub kustomize_roots: Vec<PathBuf>,
}

/// YAML files, and JSON files (read when they hold a JSON object: SOPS
/// writes JSON manifests).
fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Walks `rel` below `root`, skipping hidden entries (`.git`) and Helm chart
/// directories, whose templates are not plain manifests.
pub fn find(root: &Path, rel: &Path, found: &mut Found) {
    let Ok(real_root) = root.canonicalize() else {
        found.errors.push(Error::MissingPath {
            path: PathBuf::new(),
        });
        return;
    };
    if rel.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        found.errors.push(Error::OutsidePath {
            path: rel.to_path_buf(),
        });
        return;
    }
    let mut visited = HashSet::new();
    if let Err(e) = walk(&real_root, rel, None, found, &mut visited, true) {
        found.errors.push(e);
    }
}

/// Most directory levels below a path walked: deeper is an error naming it.
pub const MAX_DEPTH: usize = 100;

/// Walks one path; an error is this path's, and ends only its walk.
/// `parent` is the real path of its directory when known, so that an entry
/// that is no link is placed without resolving the whole path again.
fn walk(
    root: &Path,
    rel: &Path,
    parent: Option<(&Path, usize)>,
    found: &mut Found,
    visited: &mut HashSet<PathBuf>,
    named: bool,
) -> Result<(), Error> {
    let abs = root.join(rel);
    let read_err = |source| Error::Read {
        path: rel.to_path_buf(),
        source,
    };
    let depth = parent.map_or(0, |(_, d)| d + 1);
    if depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            path: rel.to_path_buf(),
            limit: MAX_DEPTH,
        });
    }
    let real = resolve(&abs, rel, parent.map(|(p, _)| p))?;
    if !real.starts_with(root) {
        return Err(Error::Symlink {
            path: rel.to_path_buf(),
            reason: "points outside the repository".into(),
        });
    }
    let meta = std::fs::metadata(&real).map_err(read_err)?;
    if meta.is_file() {
        if named || is_yaml(rel) {
            found.files.push(rel.to_path_buf());
        }
        return Ok(());
    }
    if !meta.is_dir() {
        if named || is_yaml(rel) {
            found.warnings.push(format!(
                "{}: not a regular file (a FIFO, socket or device); not read",
                rel.display()
            ));
        }
        return Ok(());
    }
    if !visited.insert(real.clone()) {
        // Reached again through a symlink: already walked.
        return Ok(());
    }
    if real.join("Chart.yaml").is_file() {
        tracing::debug!(dir = %rel.display(), "skipping Helm chart directory");
        return Ok(());
    }
    if super::kustomize::kustomization_file(&real).is_some() {
        found.kustomize_roots.push(rel.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(&real)
        .and_then(|d| {
            d.map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
        })
        .map_err(read_err)?;
    entries.sort();
    for name in entries {
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let child = rel.join(&name);
        if let Err(e) = walk(root, &child, Some((&real, depth)), found, visited, false) {
            found.errors.push(e);
        }
    }
    Ok(())
}

/// Where `rel` (at `abs`) really is: below its parent's real path when it
/// is no link, else as the file system resolves it.
fn resolve(abs: &Path, rel: &Path, real_parent: Option<&Path>) -> Result<PathBuf, Error> {
    let known = real_parent.and_then(|real_parent| {
        let name = rel.file_name()?;
        let meta = std::fs::symlink_metadata(abs).ok()?;
        (!meta.file_type().is_symlink()).then(|| real_parent.join(name))
    });
    match known {
        Some(real) => Ok(real),
        None => abs.canonicalize(),
    }
    .map_err(|source| {
        let is_link = std::fs::symlink_metadata(abs).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            Error::Symlink {
                path: rel.to_path_buf(),
                reason: format!("cannot be resolved ({source}); a loop or a dangling link"),
            }
        } else {
            Error::Read {
                path: rel.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads one file as UTF-8 text, refusing it past `limits.max_file_bytes`
/// without reading further.
pub fn read(root: &Path, rel: &Path, limits: &Limits) -> Result<String, Error> {
    let read_err = |source| Error::Read {
        path: rel.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(root.join(rel)).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::TooLarge {
            path: rel.to_path_buf(),
            what: "bytes",
            limit: limits.max_file_bytes,
            flag: "--max-file-bytes",
        });
    }
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: rel.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}
