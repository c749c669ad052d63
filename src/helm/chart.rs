//! Charts: a release's chart source in, a chart directory or archive on disk
//! and the digest of its content out. A chart from the synced repository is
//! read from the same checked-out revision; one from another Git URL is
//! fetched with the same access; one from a Helm repository is pulled by
//! helm. Dependencies must be vendored under `charts/` or be fetched by helm.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::binary::Helm;
use super::release::ChartSource;
use crate::model::checksum::sha256_hex;
use crate::render::ParseLimits;
use crate::source::{GitSource, remote};

/// Most bytes a chart directory may hold (all files together).
const MAX_CHART_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("chart path {path} does not exist in revision {revision}, or holds no Chart.yaml")]
    NotFound { path: String, revision: String },
    #[error("cannot read the chart at {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot fetch the chart's repository {url} (ref {git_ref})")]
    Git {
        url: String,
        git_ref: String,
        #[source]
        source: Box<crate::source::Error>,
    },
    #[error(
        "chart dependency {name} (repository {repository}) is neither vendored under charts/ nor reachable: {reason}"
    )]
    Dependency {
        name: String,
        repository: String,
        reason: String,
    },
    #[error(
        "chart.git {url} is a repository on the daemon's disk; name a remote URL (or pass --allow-local-chart-repositories)"
    )]
    Local { url: String },
    #[error("cannot pull chart {name} {version} from {url}: {reason}")]
    Pull {
        url: String,
        name: String,
        version: String,
        reason: String,
    },
}

/// Where charts come from besides the synced revision.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The synced repository: its URL and checked-out revision.
    pub url: String,
    pub revision: String,
    pub tree: PathBuf,
    /// For charts in other Git repositories: the synced source's access.
    pub git: Option<GitSource>,
    /// Where fetched repositories and pulled charts are kept.
    pub cache: PathBuf,
    /// A proxy for values at a URL (`externalSourceRef`); otherwise the
    /// proxy variables apply.
    pub proxy: Option<String>,
    /// The repository's proxy settings, for the releases' workloads.
    pub proxy_settings: Option<crate::model::proxy::ProxySettings>,
    /// Digests of chart directories read in this sync: releases of the same
    /// chart hash it once.
    pub digests: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>>,
    /// `--allow-local-chart-repositories`: `chart.git` may name a
    /// repository on this machine's disk.
    pub allow_local: bool,
    /// Whether and where values at a URL may be fetched from.
    pub values: super::external::Access,
}

impl Sources {
    fn digest_of(&self, root: &Path, dir: &Path) -> Result<String, String> {
        if let Some(d) = self.digests.lock().expect("digests").get(dir) {
            return Ok(d.clone());
        }
        let digest = dir_digest(root, dir)?;
        self.digests
            .lock()
            .expect("digests")
            .insert(dir.to_path_buf(), digest.clone());
        Ok(digest)
    }
}

impl Sources {
    /// For a local checkout (`diff`, `validate`): charts of the repository
    /// `url` names (by default the checkout's `origin` remote) are read from
    /// the checkout itself.
    pub fn checkout(path: &Path, url: Option<&str>, cache: PathBuf) -> Sources {
        let url = url.map(str::to_string).unwrap_or_else(|| {
            git2::Repository::discover(path)
                .ok()
                .and_then(|repo| {
                    let remote = repo.find_remote("origin").ok()?;
                    remote.url().ok().map(str::to_string)
                })
                .unwrap_or_default()
        });
        Sources {
            url,
            revision: "(the checkout)".into(),
            tree: path.to_path_buf(),
            git: None,
            cache,
            proxy: None,
            proxy_settings: None,
            digests: Default::default(),
            allow_local: false,
            values: super::external::Access {
                fetch: true,
                allow: Vec::new(),
            },
        }
    }
}

/// A chart located, not yet made ready for helm.
#[derive(Debug, Clone)]
pub struct Located {
    pub kind: Kind,
    /// The sha256 of the chart's content, cut to 32 hex characters.
    pub digest: String,
    /// What status calls the chart's revision: a Git commit or a version.
    pub revision: String,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A chart directory (in the snapshot or a fetched repository).
    Dir(PathBuf),
    /// A chart in a Helm repository, pulled when first needed.
    Repository {
        url: String,
        name: String,
        version: String,
        pull_secret: Option<String>,
    },
}

/// Finds the chart and its digest. A Git chart is read (and fetched if it
/// lives elsewhere); a repository chart is named by URL, name and version,
/// which a Helm repository never reuses for other content.
pub fn locate(source: &ChartSource, sources: &Sources) -> Result<Located, Error> {
    match source {
        ChartSource::Git { url, git_ref, path } => {
            let (root, revision) = if remote::normalize(url) == remote::normalize(&sources.url) {
                (sources.tree.clone(), sources.revision.clone())
            } else {
                fetch_other(url, git_ref, sources)?
            };
            let dir = root.join(path);
            if !dir.join("Chart.yaml").is_file() {
                return Err(Error::NotFound {
                    path: path.clone(),
                    revision,
                });
            }
            let digest = sources
                .digest_of(&root, &dir)
                .map_err(|reason| Error::Read {
                    path: path.clone(),
                    reason,
                })?;
            Ok(Located {
                kind: Kind::Dir(dir),
                digest,
                revision,
            })
        }
        ChartSource::Repository {
            url,
            name,
            version,
            pull_secret,
        } => Ok(Located {
            kind: Kind::Repository {
                url: url.clone(),
                name: name.clone(),
                version: version.clone(),
                pull_secret: pull_secret.clone(),
            },
            digest: sha256_hex(
                serde_json::to_string(&["repository", url, name, version])
                    .expect("strings serialize")
                    .as_bytes(),
            )[..32]
                .to_string(),
            revision: version.clone(),
        }),
    }
}

fn fetch_other(url: &str, git_ref: &str, sources: &Sources) -> Result<(PathBuf, String), Error> {
    let key = &sha256_hex(format!("{url}\n{git_ref}").as_bytes())[..12];
    let mut git = sources.git.clone().unwrap_or_else(|| GitSource {
        url: String::new(),
        branch: String::new(),
        cache_dir: PathBuf::new(),
        access: Default::default(),
    });
    if remote::parse(url).scheme == remote::Scheme::File && !sources.allow_local {
        return Err(Error::Local {
            url: url.to_string(),
        });
    }
    // The synced repository's credentials go only to its own server.
    if !remote::same_server(url, &git.url) {
        git.access.deploy_key = None;
        git.access.https = None;
        git.access.withheld = true;
    }
    git.url = url.to_string();
    git.branch = git_ref.to_string();
    git.cache_dir = sources.cache.join("git").join(key);
    let snapshot = git.fetch().map_err(|source| Error::Git {
        url: remote::redact(url),
        git_ref: git_ref.to_string(),
        source: Box::new(source),
    })?;
    Ok((snapshot.tree, snapshot.revision))
}

/// The digest of every file below `dir` (paths and contents, in path
/// order). Symlinks are followed only inside `root`.
pub fn dir_digest(root: &Path, dir: &Path) -> Result<String, String> {
    let root = root.canonicalize().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    collect(&root, dir, Path::new(""), &mut files, 0)?;
    files.sort();
    let mut hashed = Vec::new();
    let mut total = 0u64;
    for (rel, abs) in files {
        let bytes = std::fs::read(&abs).map_err(|e| format!("{}: {e}", rel.display()))?;
        total += bytes.len() as u64;
        if total > MAX_CHART_BYTES {
            return Err(format!("more than {MAX_CHART_BYTES} bytes"));
        }
        hashed.extend_from_slice(rel.to_string_lossy().as_bytes());
        hashed.push(0);
        hashed.extend_from_slice(sha256_hex(&bytes).as_bytes());
        hashed.push(b'\n');
    }
    Ok(sha256_hex(&hashed)[..32].to_string())
}

fn collect(
    root: &Path,
    abs: &Path,
    rel: &Path,
    out: &mut Vec<(PathBuf, PathBuf)>,
    depth: usize,
) -> Result<(), String> {
    if depth > 32 {
        return Err(format!("{}: nested too deep", rel.display()));
    }
    let real = abs
        .canonicalize()
        .map_err(|e| format!("{}: {e}", rel.display()))?;
    if !real.starts_with(root) {
        return Err(format!(
            "{}: a symlink pointing outside the repository",
            rel.display()
        ));
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", rel.display()))?;
    if meta.is_file() {
        out.push((rel.to_path_buf(), real));
    } else if meta.is_dir() {
        let entries = std::fs::read_dir(&real).map_err(|e| format!("{}: {e}", rel.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            collect(root, &entry.path(), &rel.join(&name), out, depth + 1)?;
        }
    }
    Ok(())
}

/// A chart's `dependencies:` from its Chart.yaml: name and repository.
pub fn dependencies(chart_dir: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(chart_dir.join("Chart.yaml"))
        .map_err(|e| format!("Chart.yaml: {e}"))?;
    let docs = crate::render::manifest::parse_documents(&text, &ParseLimits::default())
        .map_err(|e| format!("Chart.yaml: {e}"))?;
    let chart = docs.into_iter().next().unwrap_or(Value::Null);
    Ok(chart["dependencies"]
        .as_array()
        .map(|deps| {
            deps.iter()
                .filter_map(|d| {
                    Some((
                        d["name"].as_str()?.to_string(),
                        d["repository"].as_str().unwrap_or_default().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether `charts/` holds the dependency, as a directory or an archive.
fn vendored(chart_dir: &Path, name: &str) -> bool {
    let charts = chart_dir.join("charts");
    if charts.join(name).join("Chart.yaml").is_file() {
        return true;
    }
    std::fs::read_dir(&charts).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| {
                    rest.ends_with(".tgz") && rest.starts_with(|c: char| c.is_ascii_digit())
                })
        })
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if std::fs::metadata(entry.path())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Makes a located chart ready for helm in `work` (a directory of this
/// operation's own): pulls a repository chart (cached by digest), and
/// fetches missing dependencies into a copy of the chart. Returns the path
/// to give helm.
pub async fn prepare(
    located: &Located,
    helm: &Helm,
    cache: &Path,
    work: &Path,
    credentials: Option<(String, String)>,
) -> Result<PathBuf, Error> {
    match &located.kind {
        Kind::Repository {
            url, name, version, ..
        } => {
            let dir = cache.join("pulled").join(&located.digest);
            let found = |dir: &Path| {
                std::fs::read_dir(dir).ok().and_then(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
                })
            };
            if let Some(archive) = found(&dir) {
                return Ok(archive);
            }
            let partial = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            let creds = credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            helm.pull(url, name, version, &partial, creds)
                .await
                .map_err(|e| Error::Pull {
                    url: remote::redact(url),
                    name: name.clone(),
                    version: version.clone(),
                    reason: e.to_string(),
                })?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&partial, &dir).map_err(|e| Error::Read {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            found(&dir).ok_or_else(|| Error::Pull {
                url: remote::redact(url),
                name: name.clone(),
                version: version.clone(),
                reason: "helm pull wrote no chart archive".into(),
            })
        }
        Kind::Dir(dir) => {
            let deps = dependencies(dir).map_err(|reason| Error::Read {
                path: dir.display().to_string(),
                reason,
            })?;
            let missing: Vec<&(String, String)> =
                deps.iter().filter(|(n, _)| !vendored(dir, n)).collect();
            if missing.is_empty() {
                return Ok(dir.clone());
            }
            // The checkout is shared and read-only: build into a copy.
            let copy = work.join("chart");
            copy_dir(dir, &copy).map_err(|e| Error::Read {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?;
            if let Err(e) = helm.dependency_build(&copy).await {
                let reason = e.to_string();
                // Name the dependency helm could not get, or the first missing.
                let (name, repository) = missing
                    .iter()
                    .find(|(n, _)| reason.contains(n.as_str()))
                    .unwrap_or(&missing[0]);
                return Err(Error::Dependency {
                    name: name.clone(),
                    repository: remote::redact(repository),
                    reason,
                });
            }
            Ok(copy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_digest_follows_content_and_names() {
        let root = tempfile::tempdir().unwrap();
        let chart = root.path().join("charts/web");
        std::fs::create_dir_all(chart.join("templates")).unwrap();
        std::fs::write(chart.join("Chart.yaml"), "name: web\nversion: 1.0.0\n").unwrap();
        std::fs::write(chart.join("templates/cm.yaml"), "kind: ConfigMap\n").unwrap();
        let first = dir_digest(root.path(), &chart).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(dir_digest(root.path(), &chart).unwrap(), first);
        std::fs::write(chart.join("templates/cm.yaml"), "kind: Secret\n").unwrap();
        let changed = dir_digest(root.path(), &chart).unwrap();
        assert_ne!(changed, first);
        std::fs::rename(
            chart.join("templates/cm.yaml"),
            chart.join("templates/x.yaml"),
        )
        .unwrap();
        assert_ne!(dir_digest(root.path(), &chart).unwrap(), changed);
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), chart.join("escape")).unwrap();
        assert!(
            dir_digest(root.path(), &chart)
                .unwrap_err()
                .contains("outside the repository")
        );
    }

    #[test]
    fn vendored_dependencies_as_directories_or_archives() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path();
        std::fs::create_dir_all(chart.join("charts/redis")).unwrap();
        std::fs::write(chart.join("charts/redis/Chart.yaml"), "name: redis\n").unwrap();
        std::fs::write(chart.join("charts/common-2.1.0.tgz"), b"x").unwrap();
        std::fs::write(
            chart.join("Chart.yaml"),
            "apiVersion: v2\nname: web\nversion: 1.0.0\ndependencies:\n- name: redis\n  version: 1.x\n  repository: https://charts.example.com\n- name: common\n  version: 2.1.0\n  repository: https://charts.example.com\n- name: common-lib\n  version: 1.0.0\n  repository: https://charts.example.com\n",
        )
        .unwrap();
        let deps = dependencies(chart).unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[0].1, "https://charts.example.com");
        assert!(vendored(chart, "redis"));
        assert!(vendored(chart, "common"));
        assert!(
            !vendored(chart, "common-lib"),
            "not mistaken for common's archive"
        );
    }
}
