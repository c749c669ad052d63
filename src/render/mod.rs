//! Render: a checked-out tree and the configured paths in, the desired set out.
//!
//! Walks every `*.yaml` / `*.yml` below each path in a stable order and parses
//! its documents. Pure apart from reading files.

pub mod files;
pub mod flux_yaml;
mod generated;
pub mod kustomize;
pub mod manifest;
pub mod process;
pub mod proxy;
pub mod removed;
pub mod sops;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use manifest::{Builder, Manifest, Origin, ParseError, ParseLimits};

use crate::model::checksum::{checksum, object_checksum};
use crate::model::marks::is_ignored;
use crate::model::{Json, ObjectRef};

/// The objects rendered from one revision, in file order, and what could not
/// be rendered. Everything in `manifests` is usable even when `errors` is not
/// empty: one bad file never blocks the rest.
#[derive(Debug, Default)]
pub struct DesiredSet {
    pub manifests: Vec<Manifest>,
    /// Objects annotated in Git to be left alone: neither applied nor pruned.
    pub ignored: Vec<ObjectRef>,
    /// Things the user should fix that did not stop the render.
    pub warnings: Vec<String>,
    /// Files and documents that could not be used. Any of these means the
    /// render is not clean, and a sync must prune nothing.
    pub errors: Vec<Error>,
    /// The repository's proxy settings, injected into its workloads (and
    /// into those its Helm releases render).
    pub proxy: Option<proxy::ProxySettings>,
    /// The sync set the objects are marked for, if they are.
    pub marked_for: Option<String>,
    /// The repository's `tidegate.dev/v1 ImagePolicy` documents: read by
    /// image automation, never applied.
    pub image_policies: Vec<Manifest>,
    /// The files read, in order (where automation looks for markers),
    /// those kustomize builds read included.
    pub files: Vec<PathBuf>,
    /// The patch files of `.flux.yaml` `patchUpdated` paths, by the
    /// `.flux.yaml`: where automation writes for the objects built there.
    pub patch_files: Vec<(PathBuf, PathBuf)>,
}

/// The kind of the image policies a repository declares for automation.
pub const IMAGE_POLICY_KIND: &str = "ImagePolicy";

pub fn is_image_policy(api_version: &str, kind: &str) -> bool {
    api_version.split('/').next() == Some(proxy::GROUP) && kind == IMAGE_POLICY_KIND
}

impl DesiredSet {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// Keeps what finished documents became: objects into `manifests`,
    /// the rest into the set.
    fn take(&mut self, documents: Vec<Finished>, manifests: &mut Vec<Manifest>) {
        for document in documents {
            match document {
                Finished::Manifest(m, warning) => {
                    self.warnings.extend(warning);
                    manifests.push(m);
                }
                Finished::Ignored(id) => self.ignored.push(id),
                Finished::Failed(e) => self.errors.push(e),
            }
        }
    }
}

/// Bounds on the input a render reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_file_bytes: u64,
    /// All files of one render together.
    pub max_total_bytes: u64,
    pub parse: ParseLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 4 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            parse: ParseLimits::default(),
        }
    }
}

/// What to render and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directories (or files) relative to the root; empty means the whole tree.
    pub paths: Vec<PathBuf>,
    /// Apply objects of removed API versions under their replacement, where
    /// the schema did not change.
    pub upgrade_removed_apis: bool,
    pub limits: Limits,
    /// Marks the objects for this sync set (see `plan::mark`) as they are
    /// rendered, so that every sync of the set shares them.
    pub sync_set: Option<String>,
    /// The instance's key for Secrets' checksums: an HMAC, so that the
    /// `tidegate.dev/checksum` a diff prints is no oracle for their data.
    pub secret_key: Option<std::sync::Arc<Vec<u8>>>,
    /// How kustomize roots are built (and the builds kept).
    pub kustomize: kustomize::Settings,
    /// Whether `.flux.yaml` files generate their paths' objects.
    pub generation: flux_yaml::Generation,
    /// The keys SOPS-encrypted files are decrypted with, when on.
    pub sops: sops::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("path {path_shown} does not exist in the repository", path_shown = crate::model::shown(.path))]
    MissingPath { path: PathBuf },
    #[error("{path_shown}: outside the repository; --git-path names a directory inside it", path_shown = crate::model::shown(.path))]
    OutsidePath { path: PathBuf },
    #[error("{path_shown}: more than {limit} directory levels deep; not read", path_shown = crate::model::shown(.path))]
    TooDeep { path: PathBuf, limit: usize },
    #[error("cannot read {path_shown}", path_shown = crate::model::shown(.path))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path_shown}: symlink {reason}; not read", path_shown = crate::model::shown(.path))]
    Symlink { path: PathBuf, reason: String },
    #[error("{path_shown}: more than {limit} {what} ({flag})", path_shown = crate::model::shown(.path))]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: u64,
        flag: &'static str,
    },
    #[error("{path_shown}: not UTF-8 text (invalid byte at offset {offset})", path_shown = crate::model::shown(.path))]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{origin}: {id}: {api_version} was removed from Kubernetes; {advice}")]
    RemovedApi {
        origin: Origin,
        id: Box<ObjectRef>,
        api_version: String,
        kind: String,
        advice: String,
    },
    #[error(
        "proxy settings are defined twice: in {first} and in {second}; none are injected until one is left"
    )]
    ProxySettingsTwice { first: Origin, second: Origin },
    #[error("{}", build_error(.origin, *.builder, .reason))]
    Build {
        /// The kustomize root, or the `.flux.yaml`.
        origin: PathBuf,
        builder: Builder,
        reason: String,
    },
    #[error("{id} is defined twice: in {first} and in {second}; neither is applied")]
    Duplicate {
        id: Box<ObjectRef>,
        first: Origin,
        second: Origin,
    },
}

fn build_error(origin: &Path, builder: Builder, reason: &str) -> String {
    let origin = crate::model::shown(origin);
    match builder {
        Builder::Kustomize => {
            format!("{origin} (kustomize build): {reason}; nothing of it is applied")
        }
        Builder::FluxYaml => format!("{origin}: {reason}; nothing of its path is applied"),
    }
}

impl Error {
    /// The object the problem concerns, where it is known.
    /// For an error about one object: where it is written and the reason
    /// alone, so a report names the file, the document and the object once.
    pub fn split(&self) -> Option<(String, String)> {
        match self {
            Error::RemovedApi {
                origin,
                api_version,
                advice,
                ..
            } => Some((
                origin.to_string(),
                format!("{api_version} was removed from Kubernetes; {advice}"),
            )),
            Error::Parse(ParseError::BadName {
                file,
                index,
                line,
                reason,
                ..
            }) => Some((
                format!(
                    "{}: document {index} (line {line})",
                    crate::model::shown(file)
                ),
                reason.clone(),
            )),
            _ => None,
        }
    }

    pub fn object(&self) -> Option<String> {
        match self {
            Error::RemovedApi { id, .. } | Error::Duplicate { id, .. } => Some(id.to_string()),
            Error::Parse(ParseError::BadName { object, .. }) => Some(object.clone()),
            _ => None,
        }
    }
}

/// Everything wrong with one render, so a user can fix it all in one go.
#[derive(Debug)]
pub struct Errors<'a>(pub &'a [Error]);

impl fmt::Display for Errors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the manifests", self.0.len())?;
        for e in self.0 {
            write!(f, "\n  - {}", crate::model::error_chain(e))?;
        }
        Ok(())
    }
}

/// Renders the desired set from `root`: every usable object, and an error
/// for each file or document that is not.
pub fn render(root: &Path, options: &Options) -> DesiredSet {
    let mut set = DesiredSet::default();
    let (mut found, built) = find_paths(root, options, &mut set);
    set.errors.append(&mut found.errors);
    set.warnings.append(&mut found.warnings);
    let mut files = found.files;
    files.sort();
    files.dedup();

    // The total is checked before reading, from the sizes on disk.
    let mut total: u64 = 0;
    let mut within = Vec::new();
    for file in files {
        // JSON that does not look like a manifest (package.json) is not
        // one: never read, counted or reported.
        if is_json(&file) && !looks_like_a_manifest(&root.join(&file)) {
            continue;
        }
        let size = std::fs::metadata(root.join(&file)).map_or(0, |m| m.len());
        total = total.saturating_add(size.min(options.limits.max_file_bytes + 1));
        if total > options.limits.max_total_bytes {
            set.errors.push(Error::TooLarge {
                path: file,
                what: "bytes in all files together (this file is past it)",
                limit: options.limits.max_total_bytes,
                flag: "--max-total-bytes",
            });
        } else {
            within.push(file);
        }
    }

    let mut manifests = Vec::new();
    for (file, (found, errors)) in within.iter().zip(read_and_parse(root, &within, options)) {
        if found.is_empty() && errors.is_empty() {
            tracing::debug!(file = %file.display(), "skipped: no Kubernetes objects in it");
        }
        set.errors.extend(errors);
        set.take(found, &mut manifests);
    }
    let mut built_files = Vec::new();
    for g in built {
        set.errors.extend(g.errors);
        built_files.extend(g.files);
        set.patch_files.extend(g.patch_files);
        set.take(g.finished, &mut manifests);
    }
    set.manifests = reject_duplicates(manifests, &mut set.errors);
    set.marked_for = options.sync_set.clone();
    let (policies, rest) = std::mem::take(&mut set.manifests)
        .into_iter()
        .partition(|m| is_image_policy(&m.id.api_version(), &m.id.kind));
    (set.image_policies, set.manifests) = (policies, rest);
    set.files = within;
    set.files.extend(built_files);
    set.files.sort();
    set.files.dedup();
    inject_proxy(&mut set);
    set
}

/// Walks the configured paths: the plain files found, and what the paths'
/// `.flux.yaml` files and the kustomize roots below them build.
fn find_paths(
    root: &Path,
    options: &Options,
    set: &mut DesiredSet,
) -> (files::Found, Vec<generated::Generated>) {
    let mut found = files::Found::default();
    // `.` is the root, and `./apps` is `apps`: one spelling per path, or
    // a path would not be known for the same one.
    let roots: Vec<PathBuf> = if options.paths.is_empty() {
        vec![PathBuf::new()]
    } else {
        options
            .paths
            .iter()
            .map(|p| {
                p.components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect()
            })
            .collect()
    };
    let mut built = Vec::new();
    for rel in &roots {
        if std::fs::symlink_metadata(root.join(rel)).is_err() {
            set.errors.push(Error::MissingPath { path: rel.clone() });
            continue;
        }
        let config = options
            .generation
            .enabled
            .then(|| flux_yaml::find(root, rel))
            .flatten();
        if let Some(g) = config.and_then(|c| generated::flux_yaml(root, rel, &c, options)) {
            built.push(g);
            continue;
        }
        files::find(root, rel, &mut found);
    }
    found.kustomize_roots.sort();
    found.kustomize_roots.dedup();
    built.push(generated::kustomize_roots(
        root,
        &found.kustomize_roots,
        options,
    ));
    (found, built)
}

/// What a parsed document becomes.
enum Finished {
    /// With the warning to show for it, if any.
    Manifest(Manifest, Option<String>),
    Ignored(ObjectRef),
    Failed(Error),
}

/// Checks one parsed document, sums it and marks it; what is kept of it is
/// its text, not the parsed value.
fn finish(mut d: manifest::Parsed, options: &Options) -> Finished {
    if is_ignored(&d.object) {
        tracing::debug!(object = %d.id, "ignored: annotated in Git");
        return Finished::Ignored(d.id);
    }
    let warning = match upgrade_removed(&mut d, options.upgrade_removed_apis) {
        Ok(warning) => warning,
        Err(e) => return Finished::Failed(e),
    };
    let checksum = object_checksum(
        &d.id,
        &d.object,
        options.secret_key.as_deref().map(Vec::as_slice),
    );
    if let Some(sync_set) = &options.sync_set {
        crate::model::marks::mark(&mut d.object, sync_set, &checksum);
    }
    Finished::Manifest(
        Manifest {
            file: d.file,
            index: d.index,
            id: d.id,
            object: Json::new(&d.object),
            checksum,
            built: d.built,
        },
        warning,
    )
}

/// Takes the repository's ProxySettings out of the objects to apply and
/// injects them into every workload. The checksum of an object injected
/// into is that of the object with its proxy settings (and its marks).
fn inject_proxy(set: &mut DesiredSet) {
    let (settings, rest): (Vec<Manifest>, Vec<Manifest>) = std::mem::take(&mut set.manifests)
        .into_iter()
        .partition(|m| proxy::is_proxy_settings(&m.id.api_version(), &m.id.kind));
    set.manifests = rest;
    match settings.as_slice() {
        [] => {}
        [one] => set.proxy = Some(proxy::ProxySettings::from_object(&one.object.value())),
        [first, second, ..] => {
            set.errors.push(Error::ProxySettingsTwice {
                first: first.origin(),
                second: second.origin(),
            });
            return;
        }
    }
    let Some(settings) = set.proxy.clone().filter(|s| !s.is_empty()) else {
        return;
    };
    for m in &mut set.manifests {
        let mut object = m.object.value();
        if proxy::inject(&mut object, &settings) {
            tracing::debug!(object = %m.id, "proxy settings injected");
            m.checksum = checksum(&object);
            if let Some(sync_set) = &set.marked_for {
                crate::model::marks::mark(&mut object, sync_set, &m.checksum);
            }
            m.object = Json::new(&object);
        }
    }
}

type Parsed = (Vec<Finished>, Vec<Error>);

/// Reads, parses and finishes files on every core, keeping their order.
fn read_and_parse(root: &Path, files: &[PathBuf], options: &Options) -> Vec<Parsed> {
    let limits = &options.limits;
    let one = |rel: &PathBuf| match files::read(root, rel, limits) {
        Ok(text) if is_json(rel) => match json_manifest(rel, &text) {
            Some(Ok(text)) => {
                let (found, errors) =
                    manifest::parse_file(rel, &text, &limits.parse, &options.sops);
                (
                    found.into_iter().map(|d| finish(d, options)).collect(),
                    errors.into_iter().map(Error::from).collect(),
                )
            }
            Some(Err(e)) => (Vec::new(), vec![e]),
            None => (Vec::new(), Vec::new()),
        },
        Ok(text) => {
            let (found, errors) = manifest::parse_file(rel, &text, &limits.parse, &options.sops);
            (
                found.into_iter().map(|d| finish(d, options)).collect(),
                errors.into_iter().map(Error::from).collect(),
            )
        }
        Err(e) => (Vec::new(), vec![e]),
    };
    on_every_core(files, 64, one)
}

fn is_json(rel: &Path) -> bool {
    rel.extension().is_some_and(|e| e == "json")
}

/// Whether a JSON file's start names an `apiVersion` or SOPS metadata: such
/// a file is read, and any problem with it is an error like a YAML file's.
fn looks_like_a_manifest(path: &Path) -> bool {
    use std::io::Read as _;
    let mut start = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_end(&mut start));
    let has = |needle: &[u8]| start.windows(needle.len()).any(|w| w == needle);
    read.is_ok() && (has(b"\"apiVersion\"") || has(b"\"sops\""))
}

/// A JSON file as a manifest: one object with `apiVersion` and `kind`, or
/// SOPS metadata (compact, for the YAML parser). Other JSON that parses
/// (a dashboard that mentions an apiVersion) is not one: `None`. One that
/// does not parse is an error.
fn json_manifest(rel: &Path, text: &str) -> Option<Result<String, Error>> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => {
            let object = value.get("apiVersion").is_some() && value.get("kind").is_some();
            (object || sops::is_encrypted(&value)).then(|| Ok(value.to_string()))
        }
        Err(e) => Some(Err(Error::Parse(ParseError::Yaml {
            file: rel.to_path_buf(),
            index: 0,
            line: e.line(),
            column: e.column(),
            reason: "not valid JSON".into(),
        }))),
    }
}

/// `one` of each item, in their order, on every core once there are at
/// least `at_least` of them.
fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    at_least: usize,
    one: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || items.len() < at_least {
        return items.iter().map(one).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let one = &one;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a render thread panicked"))
            .collect()
    })
}

/// Refuses an object of a removed API version, or moves it to the
/// replacement when allowed; returns the warning to show for a move.
fn upgrade_removed(m: &mut manifest::Parsed, allowed: bool) -> Result<Option<String>, Error> {
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
    use crate::model::marks::is_prune_protected;

    /// Writes `text` at `rel` below `root`, making its directories.
    pub(super) fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// JSON files are read as manifests when they are one (an object with
    /// apiVersion and kind, or SOPS metadata); other JSON is left alone,
    /// and one that looks like a manifest but does not parse is an error.
    #[test]
    fn json_files_are_manifests_only_when_they_look_like_one() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "package.json",
            r#"{"name": "app", "version": "1.0.0"}"#,
        );
        write(dir.path(), "list.json", "[1, 2, 3]");
        write(dir.path(), "notes.json", "{ not json");
        write(
            dir.path(),
            "cm.json",
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-json"}}"#,
        );
        write(
            dir.path(),
            "broken.json",
            r#"{"apiVersion": "v1", "kind": "#,
        );
        let set = render(dir.path(), &Options::default());
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["from-json"]);
        let text = Errors(&set.errors).to_string();
        assert!(
            text.contains("broken.json") && text.contains("not valid JSON"),
            "{text}"
        );
        assert_eq!(set.errors.len(), 1, "{text}");
    }

    /// Issue 19, items 11 and 14: a deep tree is walked in time linear in
    /// its depth and refused past the limit, naming the path; a --git-path
    /// out of the repository says so.
    #[test]
    fn depth_is_bounded_and_paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let deep: PathBuf = (0..files::MAX_DEPTH + 5).map(|_| "d").collect();
        write(
            dir.path(),
            &deep.join("cm.yaml").to_string_lossy(),
            &cm("deep"),
        );
        write(dir.path(), "top.yaml", &cm("top"));
        let set = render(dir.path(), &Options::default());
        let text = Errors(&set.errors).to_string();
        assert!(text.contains("directory levels deep"), "{text}");
        assert_eq!(set.manifests.len(), 1, "the rest is rendered");
        for outside in ["../..", "/etc"] {
            let options = Options {
                paths: vec![PathBuf::from(outside)],
                ..Options::default()
            };
            let text = Errors(&render(dir.path(), &options).errors).to_string();
            assert!(
                text.contains(&format!("{outside}: outside the repository")),
                "{text}"
            );
        }
    }

    /// Renders and insists on a clean render.
    fn clean(root: &Path, options: &Options) -> DesiredSet {
        let set = render(root, options);
        assert!(set.is_clean(), "{}", Errors(&set.errors));
        set
    }

    /// Renders and returns the set and its error text.
    fn failing(root: &Path, options: &Options) -> (DesiredSet, String) {
        let set = render(root, options);
        assert!(!set.is_clean(), "expected render errors");
        let text = Errors(&set.errors).to_string();
        (set, text)
    }

    fn cm(name: &str) -> String {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: demo\n")
    }

    /// A stand-in for kustomize: prints the root's `out.yaml`.
    fn fake_kustomize(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("fake-kustomize");
        std::fs::write(&script, "#!/bin/sh\ncat \"$2/out.yaml\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// Issue 22: the topmost kustomization of a branch is built, a base
    /// goes with the overlay that loads it, nothing below a root is read
    /// loose; a build runs again only when an input changed (a file
    /// reached through a link included); an object built and written
    /// plainly is refused, naming the root.
    #[test]
    fn kustomize_roots_are_built_once_per_content_of_their_inputs() {
        let tools = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "base/kustomization.yaml", "resources: [cm.yaml]\n");
        write(root, "base/cm.yaml", &cm("loose"));
        write(root, "base/out.yaml", &cm("base-alone"));
        write(root, "prod/kustomization.yaml", "resources: [../base]\n");
        write(root, "prod/out.yaml", &cm("prod-built"));
        write(root, "prod/nested/kustomization.yaml", "resources: []\n");
        write(root, "plain/cm.yaml", &cm("plain"));
        write(root, "shared/values.txt", "one\n");
        let options = Options {
            kustomize: kustomize::Settings {
                binary: fake_kustomize(tools.path()),
                ..Default::default()
            },
            ..Options::default()
        };
        let runs = || options.kustomize.cache.runs();
        let set = clean(root, &options);
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["plain", "prod-built"]);
        let built = &set.manifests[1];
        assert_eq!(
            (built.file.as_path(), built.built),
            (Path::new("prod"), Some(Builder::Kustomize))
        );
        assert_eq!(
            built.origin().to_string(),
            "prod (kustomize build, object 0)"
        );
        assert!(
            set.files
                .contains(&PathBuf::from("base/kustomization.yaml")),
            "{:?}",
            set.files
        );
        assert_eq!(runs(), 1);
        clean(root, &options);
        assert_eq!(runs(), 1, "nothing changed: no build");
        write(
            root,
            "plain/cm.yaml",
            &format!("{}data: {{a: b}}\n", cm("plain")),
        );
        clean(root, &options);
        assert_eq!(runs(), 1, "a plain file is no input");
        write(
            root,
            "base/cm.yaml",
            &format!("{}data: {{a: b}}\n", cm("loose")),
        );
        clean(root, &options);
        assert_eq!(runs(), 2, "the base is the overlay's input");
        std::os::unix::fs::symlink("../shared/values.txt", root.join("prod/values.txt")).unwrap();
        clean(root, &options);
        assert_eq!(runs(), 3);
        write(root, "shared/values.txt", "two\n");
        clean(root, &options);
        assert_eq!(runs(), 4, "what a link reaches is an input");

        write(root, "plain/dup.yaml", &cm("prod-built"));
        let (set, msg) = failing(root, &options);
        assert!(msg.contains("in prod (kustomize build, object 0)"), "{msg}");
        assert!(set.manifests.iter().all(|m| m.id.name != "prod-built"));
        std::fs::remove_file(root.join("plain/dup.yaml")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("prod/etc")).unwrap();
        let (_, msg) = failing(root, &options);
        assert!(
            msg.contains("prod (kustomize build): prod/etc: symlink points outside the repository"),
            "{msg}"
        );
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

    /// Issue 19: a Secret's checksum is keyed, so a diff printed in a CI log
    /// is no offline oracle for its values; other objects' are plain.
    #[test]
    fn secret_checksums_are_keyed() {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        let id = ObjectRef::new("v1", "Secret", None, "s");
        let plain = checksum(&secret);
        let keyed = object_checksum(&id, &secret, Some(b"instance key"));
        assert_ne!(keyed, plain, "not the sha256 anyone can compute");
        assert_eq!(keyed.len(), 64);
        assert_eq!(keyed, object_checksum(&id, &secret, Some(b"instance key")));
        assert_ne!(keyed, object_checksum(&id, &secret, Some(b"another key")));
        assert_eq!(object_checksum(&id, &secret, None), plain);
        let cm = ObjectRef::new("v1", "ConfigMap", None, "s");
        assert_eq!(object_checksum(&cm, &secret, Some(b"instance key")), plain);
    }

    #[test]
    fn objects_are_marked_for_the_sync_set_as_rendered_and_summed_as_written() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cm.yaml", &cm("plain"));
        write(
            dir.path(),
            "web.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n\
             spec: {template: {spec: {containers: [{name: web, image: web}]}}}\n",
        );
        let unmarked = clean(dir.path(), &Options::default());
        let prod = Options {
            sync_set: Some("prod".into()),
            ..Options::default()
        };
        let marked = clean(dir.path(), &prod);
        assert_eq!(unmarked.marked_for, None);
        assert_eq!(marked.marked_for.as_deref(), Some("prod"));
        for (u, m) in unmarked.manifests.iter().zip(&marked.manifests) {
            assert_eq!(u.checksum, m.checksum, "{}: the marks are not summed", m.id);
            let object = m.object.value();
            let annotations = &object["metadata"]["annotations"];
            assert_eq!(
                annotations[crate::model::marks::SYNC_SET_ANNOTATION],
                "prod"
            );
            assert_eq!(
                annotations[crate::model::marks::CHECKSUM_ANNOTATION],
                m.checksum
            );
            assert!(u.object.value()["metadata"].get("annotations").is_none());
        }

        // Proxy settings change the checksum of the workloads they go into,
        // and the marks follow.
        write(
            dir.path(),
            "proxy.yaml",
            "apiVersion: tidegate.dev/v1\nkind: ProxySettings\nmetadata: {name: proxy}\n\
             spec: {httpsProxy: 'http://proxy:3128'}\n",
        );
        let proxied = clean(dir.path(), &prod);
        let web = |set: &DesiredSet| {
            set.manifests
                .iter()
                .find(|m| m.id.kind == "Deployment")
                .cloned()
                .unwrap()
        };
        let (before, after) = (web(&marked), web(&proxied));
        assert_ne!(before.checksum, after.checksum);
        let object = after.object.value();
        assert_eq!(
            object["metadata"]["annotations"][crate::model::marks::CHECKSUM_ANNOTATION],
            after.checksum
        );
        let env = object["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains("http://proxy:3128"), "{env}");
        // Summed again, the same: the checksum does not change from one
        // render to the next.
        assert_eq!(web(&clean(dir.path(), &prod)).checksum, after.checksum);
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
        let set = clean(dir.path(), &Options::default());
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
        let set = clean(dir.path(), &options);
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
        let (set, msg) = failing(dir.path(), &Options::default());
        assert_eq!(set.errors.len(), 1);
        assert_eq!(set.manifests.len(), 1, "the other object is kept");
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
        let (set, msg) = failing(dir.path(), &options);
        assert_eq!(set.errors.len(), 2, "{msg}");
    }

    const CRONJOB_V1BETA1: &str = "apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: nightly, namespace: demo}\nspec: {schedule: '@daily'}\n";

    #[test]
    fn removed_api_version_names_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cron.yaml", CRONJOB_V1BETA1);
        let (_, msg) = failing(dir.path(), &Options::default());
        assert!(msg.contains("cron.yaml (document 0)"), "{msg}");
        assert!(
            msg.contains(
                "batch/v1beta1 CronJob demo/nightly: batch/v1beta1 was removed from Kubernetes; use apiVersion batch/v1"
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
        let (set, msg) = failing(dir.path(), &options);
        assert_eq!(set.errors.len(), 1);
        assert!(msg.contains("update the object to its schema"), "{msg}");
        assert_eq!(set.manifests.len(), 1, "the CronJob is still rendered");
        std::fs::remove_file(dir.path().join("deploy.yaml")).unwrap();
        let set = clean(dir.path(), &options);
        assert_eq!(set.manifests[0].id.api_version(), "batch/v1");
        assert_eq!(set.manifests[0].object.value()["apiVersion"], "batch/v1");
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
        let set = clean(dir.path(), &Options::default());
        let kept: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        // sync_only is applied (and never pruned), as in Flux v1.
        assert_eq!(kept, ["synconly", "kept"]);
        assert_eq!(set.ignored.len(), 2);
        assert!(is_prune_protected(&set.manifests[0].object.value()));
        assert!(!is_ignored(&set.manifests[0].object.value()));
    }

    #[test]
    fn one_bad_file_does_not_block_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &cm("a"));
        write(
            dir.path(),
            "b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [\n",
        );
        write(dir.path(), "c.yaml", &cm("c"));
        let (set, msg) = failing(dir.path(), &Options::default());
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(msg.contains("b.yaml: document 0 (line"), "{msg}");
    }

    #[test]
    fn symlinks_outside_the_repository_and_loops_are_errors() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.yaml", &cm("outside"));
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.yaml", &cm("ok"));
        std::os::unix::fs::symlink(
            outside.path().join("secret.yaml"),
            dir.path().join("escape.yaml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("loop-b.yaml"),
            dir.path().join("loop-a.yaml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("loop-a.yaml"),
            dir.path().join("loop-b.yaml"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/up")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("ok.yaml"),
            dir.path().join("sub/inside.yaml"),
        )
        .unwrap();
        let (set, msg) = failing(dir.path(), &Options::default());
        assert!(
            msg.contains("escape.yaml: symlink points outside the repository"),
            "{msg}"
        );
        assert!(
            msg.contains("loop-a.yaml: symlink cannot be resolved"),
            "{msg}"
        );
        assert!(!msg.contains("outside\n"), "{msg}");
        // The symlink inside the repository is read, once per path: ok.yaml
        // and sub/inside.yaml define the same object, so both are reported.
        assert!(msg.contains("defined twice"), "{msg}");
        assert!(set.manifests.iter().all(|m| m.id.name != "outside"));
    }

    #[test]
    fn fifos_are_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.yaml", &cm("ok"));
        let fifo = dir.path().join("pipe.yaml");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // Opening the FIFO would block this test forever.
        let set = clean(dir.path(), &Options::default());
        assert_eq!(set.manifests.len(), 1);
        assert!(
            set.warnings
                .iter()
                .any(|w| w.contains("pipe.yaml: not a regular file")),
            "{:?}",
            set.warnings
        );
    }

    #[test]
    fn limits_name_the_file_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.yaml", &cm("ok"));
        write(
            dir.path(),
            "big.yaml",
            &format!("{}data:\n  x: \"{}\"\n", cm("big"), "a".repeat(5000)),
        );
        std::fs::write(
            dir.path().join("latin1.yaml"),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caf\xe9}\n",
        )
        .unwrap();
        let many: String = (0..20)
            .map(|i| format!("---\n{}", cm(&format!("m{i}"))))
            .collect();
        write(dir.path(), "many.yaml", &many);
        let mut options = Options::default();
        options.limits.max_file_bytes = 4096;
        options.limits.parse.max_documents = 10;
        let (set, msg) = failing(dir.path(), &options);
        assert!(
            msg.contains("big.yaml: more than 4096 bytes (--max-file-bytes)"),
            "{msg}"
        );
        assert!(msg.contains("latin1.yaml: not UTF-8 text"), "{msg}");
        assert!(msg.contains("many.yaml: more than 10 documents"), "{msg}");
        assert_eq!(set.manifests.len(), 1);
        options.limits.max_total_bytes = 10;
        let (_, msg) = failing(dir.path(), &options);
        assert!(msg.contains("--max-total-bytes"), "{msg}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_per_file() {
        let dir = tempfile::tempdir().unwrap();
        // Billion laughs: each level doubles what the one before expands to.
        let mut bomb = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\nx0: &a0 \"0123456789012345678901234567890123456789\"\n",
        );
        for i in 1..40 {
            bomb.push_str(&format!("x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        write(dir.path(), "bomb.yaml", &bomb);
        // Ten documents, each within a per-document budget, together past the file's.
        let big = "b".repeat(200_000);
        let mut docs = String::new();
        for i in 0..10 {
            docs.push_str(&format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: d{i}}}\ns: &s \"{big}\"\nv: [*s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s, *s]\n"));
        }
        write(dir.path(), "wide.yaml", &docs);
        let deep = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep}}\ndata: {}{}\n",
            "[".repeat(500),
            "]".repeat(500)
        );
        write(dir.path(), "deep.yaml", &deep);
        write(dir.path(), "ok.yaml", &cm("ok"));
        let mut options = Options::default();
        options.limits.parse.max_expanded_bytes = 16 * 1024 * 1024;
        let (set, msg) = failing(dir.path(), &options);
        assert!(msg.contains("bomb.yaml: document 0"), "{msg}");
        assert!(msg.contains("wide.yaml: document"), "{msg}");
        assert!(msg.contains("deep.yaml: document 0"), "{msg}");
        let names: Vec<&str> = set.manifests.iter().map(|m| m.id.name.as_str()).collect();
        assert!(names.contains(&"ok"), "{names:?}");
        assert!(
            !names.contains(&"lol") && !names.contains(&"deep"),
            "{names:?}"
        );
    }
}
