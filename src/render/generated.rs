//! The objects of directories that are built rather than read: kustomize
//! roots and paths governed by a `.flux.yaml`. Each build's output is
//! parsed and finished as a file's documents are, its objects named by the
//! root (or the `.flux.yaml`) and their place in the output.

use std::path::{Path, PathBuf};

use super::flux_yaml::{self, Config};
use super::kustomize::{self, Graph};
use super::manifest::{self, Builder};
use super::{Error, Finished, Options, finish};

/// What the builds gave: objects, problems (each naming its root), and
/// the files they read (where automation looks for markers).
#[derive(Default)]
pub(super) struct Generated {
    pub finished: Vec<Finished>,
    pub errors: Vec<Error>,
    pub files: Vec<PathBuf>,
    /// Patch files of `patchUpdated` paths, by the path's `.flux.yaml`.
    pub patch_files: Vec<(PathBuf, PathBuf)>,
}

impl Generated {
    fn failed(&mut self, origin: &Path, builder: Builder, reason: String) {
        self.errors.push(Error::Build {
            origin: origin.to_path_buf(),
            builder,
            reason,
        });
    }

    /// Parses a build's output and finishes its documents.
    fn output(&mut self, origin: &Path, builder: Builder, text: &str, options: &Options) {
        let what = match builder {
            Builder::Kustomize => "kustomize build",
            Builder::FluxYaml => "generated",
        };
        let shown = PathBuf::from(format!("{} ({what})", crate::model::shown(origin)));
        let (parsed, errors) =
            manifest::parse_file(&shown, text, &options.limits.parse, &options.sops);
        self.errors.extend(errors.into_iter().map(Error::from));
        for mut d in parsed {
            d.file = origin.to_path_buf();
            d.built = Some(builder);
            self.finished.push(finish(d, options));
        }
    }
}

/// Builds the kustomize roots found below the synced paths. A root that
/// another root loads (a base of an overlay) is that root's input, not
/// built by itself.
pub(super) fn kustomize_roots(repo: &Path, roots: &[PathBuf], options: &Options) -> Generated {
    let mut out = Generated::default();
    if roots.is_empty() {
        return out;
    }
    let real = match repo.canonicalize() {
        Ok(real) => real,
        Err(e) => {
            for root in roots {
                out.failed(
                    root,
                    Builder::Kustomize,
                    format!("the checkout cannot be resolved ({e})"),
                );
            }
            return out;
        }
    };
    let mut scanned: Vec<(PathBuf, Graph)> = Vec::new();
    for root in roots {
        match kustomize::scan(&real, root, options.kustomize.allow_remote) {
            Ok(graph) => scanned.push((root.clone(), graph)),
            Err(e) => out.failed(root, Builder::Kustomize, e),
        }
    }
    let loaded_by_other = |root: &Path, me: &Path| {
        scanned
            .iter()
            .any(|(other, g)| other != me && other != root && g.dirs.contains(root))
    };
    let kept: Vec<(PathBuf, Graph)> = scanned
        .iter()
        .filter(|(root, _)| !loaded_by_other(root, root))
        .cloned()
        .collect();
    for (root, _) in &scanned {
        let covered = kept.iter().any(|(k, g)| k == root || g.dirs.contains(root));
        if !covered {
            out.failed(
                root,
                Builder::Kustomize,
                "its kustomizations load each other in a cycle".into(),
            );
        }
    }
    // Logged, not only done: a root that starts loading another takes
    // the other's objects as it transforms them.
    for (root, _) in scanned.iter().filter(|s| !kept.contains(s)) {
        let by: Vec<String> = kept
            .iter()
            .filter(|(_, g)| g.dirs.contains(root))
            .map(|(k, _)| crate::model::shown(k))
            .collect();
        tracing::info!(
            dir = %crate::model::shown(root),
            by = %by.join(", "),
            "a kustomization another root loads: built as part of that, not by itself"
        );
    }
    let built = kustomize::build(&real, &kept, &options.kustomize, &options.limits);
    for b in built {
        out.files.extend(b.files.into_iter().filter(|f| is_yaml(f)));
        match b.output {
            Ok(text) => out.output(&b.root, Builder::Kustomize, &text, options),
            Err(e) => out.failed(&b.root, Builder::Kustomize, e),
        }
    }
    out
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    ) || path
        .file_name()
        .is_some_and(|n| kustomize::KUSTOMIZATION_FILES.iter().any(|k| n == *k))
}

/// Generates the objects of synced path `path` as its `.flux.yaml` (at
/// `config`) says; `None` when it says to read the path as plain files.
pub(super) fn flux_yaml(
    repo: &Path,
    path: &Path,
    config: &Path,
    options: &Options,
) -> Option<Generated> {
    let mut out = Generated::default();
    let real = match repo.canonicalize() {
        Ok(real) => real,
        Err(e) => {
            out.failed(
                config,
                Builder::FluxYaml,
                format!("the checkout cannot be resolved ({e})"),
            );
            return Some(out);
        }
    };
    let parsed = match read_config(&real, config, options) {
        Ok(Config::ScanForFiles) => return None,
        Ok(parsed) => parsed,
        Err(e) => {
            out.errors.push(e);
            return Some(out);
        }
    };
    let workdir = if repo.join(path).is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new("")).to_path_buf()
    };
    let (generators, patch_file) = match parsed {
        Config::CommandUpdated { generators, .. } => (generators, None),
        Config::PatchUpdated {
            generators,
            patch_file,
        } => (generators, Some(patch_file)),
        Config::ScanForFiles => unreachable!("returned above"),
    };
    let mut stream = match generate_all(&real, &workdir, &generators, options, &mut out) {
        Ok(stream) => stream,
        Err(e) => {
            out.failed(config, Builder::FluxYaml, e);
            return Some(out);
        }
    };
    if let Some(patch_file) = patch_file {
        let Some(at) = flux_yaml::within(&workdir, &patch_file) else {
            out.failed(
                config,
                Builder::FluxYaml,
                format!("patchFile {patch_file:?} is outside the repository"),
            );
            return Some(out);
        };
        match patch(&real, &at, &stream, options) {
            Ok(patched) => stream = patched,
            Err(e) => {
                out.failed(
                    config,
                    Builder::FluxYaml,
                    format!("patchFile {}: {e}", crate::model::shown(&at)),
                );
                return Some(out);
            }
        }
        out.files.push(at.clone());
        out.patch_files.push((config.to_path_buf(), at));
    }
    out.output(config, Builder::FluxYaml, &stream, options);
    Some(out)
}

/// The generators' outputs, one YAML stream, in their order; the first
/// that fails is the error.
fn generate_all(
    repo: &Path,
    workdir: &Path,
    generators: &[flux_yaml::Command],
    options: &Options,
    out: &mut Generated,
) -> Result<String, String> {
    let mut stream = String::new();
    for g in generators {
        let text = generate(repo, workdir, g, options, out)
            .map_err(|e| format!("generator {:?}: {e}", g.command))?;
        if !stream.is_empty() {
            if !stream.ends_with('\n') {
                stream.push('\n');
            }
            stream.push_str("---\n");
        }
        stream.push_str(&text);
    }
    Ok(stream)
}

/// A `.flux.yaml`, read from inside the repository.
fn read_config(repo: &Path, config: &Path, options: &Options) -> Result<Config, Error> {
    let failed = |reason| Error::Build {
        origin: config.to_path_buf(),
        builder: Builder::FluxYaml,
        reason,
    };
    kustomize::inside(repo, &repo.join(config)).map_err(failed)?;
    let text = super::files::read(repo, config, &options.limits)?;
    flux_yaml::parse(&text).map_err(failed)
}

/// A generator's own timeout, never longer than `--kustomize-timeout`.
fn deadline(g: &flux_yaml::Command, options: &Options) -> std::time::Duration {
    let most = options.kustomize.timeout;
    g.timeout.map_or(most, |t| t.min(most))
}

/// One generator's output.
fn generate(
    repo: &Path,
    workdir: &Path,
    g: &flux_yaml::Command,
    options: &Options,
    out: &mut Generated,
) -> Result<String, String> {
    let words = flux_yaml::words(&g.command)?;
    if let Some(dir) = flux_yaml::kustomize_dir(&words) {
        let root =
            flux_yaml::within(workdir, &dir).ok_or("its directory is outside the repository")?;
        let graph = kustomize::scan(repo, &root, options.kustomize.allow_remote)?;
        let settings = kustomize::Settings {
            timeout: deadline(g, options),
            ..options.kustomize.clone()
        };
        let built = kustomize::build(repo, &[(root, graph)], &settings, &options.limits);
        let b = built.into_iter().next().ok_or("no build")?;
        out.files.extend(b.files.into_iter().filter(|f| is_yaml(f)));
        return b.output;
    }
    if !options.generation.allow_commands {
        return Err(
            "only kustomize builds run; other commands run only with --manifest-generation-allow-commands"
                .into(),
        );
    }
    flux_yaml::run_command(repo, workdir, &words, deadline(g, options), &options.limits)
}

/// The generated objects with the patch file merged over them; a patch
/// file that does not exist is empty, but its directory must.
fn patch(repo: &Path, at: &Path, generated: &str, options: &Options) -> Result<String, String> {
    let parent = at.parent().unwrap_or(Path::new(""));
    if !repo.join(parent).is_dir() {
        return Err(format!(
            "its directory {} does not exist",
            crate::model::shown(parent)
        ));
    }
    let text = match std::fs::symlink_metadata(repo.join(at)) {
        Err(_) => return Ok(generated.to_string()),
        Ok(_) => kustomize::inside(repo, &repo.join(at)).and_then(|_| {
            super::files::read(repo, at, &options.limits).map_err(|e| crate::model::error_chain(&e))
        })?,
    };
    if text.trim().is_empty() {
        return Ok(generated.to_string());
    }
    flux_yaml::merge_patch(generated, &text, &options.kustomize, &options.limits)
}
