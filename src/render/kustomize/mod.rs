//! Kustomize roots: which directories are built, what each build reads,
//! and the build itself, by the real `kustomize` binary, closed and bounded
//! and cached by the content of its inputs.
//!
//! Before kustomize runs, every kustomization it would load is read here:
//! a base, resource or component that is not a path inside the repository
//! (a URL, a Git repository, or a path out of it) is refused unless remote
//! ones are allowed, and no file a kustomization names may point out of the
//! repository. kustomize itself refuses plugins (tidegate never passes
//! `--enable-alpha-plugins`), `helmCharts` without `--enable-helm`, and
//! files out of a kustomization's own directory.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::process::{self, Failure, Run};
use super::{Limits, manifest};

mod scan;

use scan::entries;
pub use scan::{Graph, KUSTOMIZATION_FILES, inside, kustomization_file, scan};

/// How kustomize is run, and the builds already made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `kustomize` binary (found on PATH when named without a directory).
    pub binary: PathBuf,
    /// Let kustomizations load remote bases and resources (URLs, Git).
    pub allow_remote: bool,
    /// Inflate `helmCharts` with this helm binary; none refuses them.
    pub helm: Option<PathBuf>,
    pub timeout: Duration,
    pub cache: std::sync::Arc<Cache>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            binary: PathBuf::from("kustomize"),
            allow_remote: false,
            helm: None,
            timeout: Duration::from_secs(60),
            cache: Default::default(),
        }
    }
}

/// Builds by the content of their inputs, and how many kustomize
/// processes were run. Holds the builds of the latest render only.
#[derive(Debug, Default)]
pub struct Cache {
    /// Each build's output and when it was last used.
    builds: Mutex<HashMap<[u8; 32], (Output, u64)>>,
    uses: AtomicU64,
    runs: AtomicU64,
}

type Output = std::sync::Arc<Result<String, String>>;

/// Most builds a cache holds, and most bytes of output together (256
/// builds of the largest output allowed would be a gigabyte); the least
/// recently used go first.
const MAX_CACHED: usize = 256;
const MAX_CACHED_BYTES: usize = 128 * 1024 * 1024;

fn size(output: &Output) -> usize {
    match output.as_ref() {
        Ok(text) | Err(text) => text.len(),
    }
}

impl Cache {
    /// How many kustomize processes this cache's renders have run.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    fn get(&self, key: &[u8; 32]) -> Option<Output> {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut builds = self.builds.lock().expect("the build cache lock");
        builds.get_mut(key).map(|(output, used)| {
            *used = now;
            output.clone()
        })
    }

    fn put(&self, key: [u8; 32], output: Output) {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut builds = self.builds.lock().expect("the build cache lock");
        builds.insert(key, (output, now));
        let total =
            |b: &HashMap<[u8; 32], (Output, u64)>| b.values().map(|(o, _)| size(o)).sum::<usize>();
        while builds.len() > 1 && (builds.len() > MAX_CACHED || total(&builds) > MAX_CACHED_BYTES) {
            let oldest = builds
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            let Some(oldest) = oldest else { break };
            builds.remove(&oldest);
        }
    }
}

/// One kustomize root's build: its output, or why there is none; the
/// files it read (where automation looks for markers); the build's key.
#[derive(Debug)]
pub struct Built {
    pub root: PathBuf,
    pub output: Result<String, String>,
    pub files: Vec<PathBuf>,
    pub key: Option<[u8; 32]>,
}

/// The files below the graph's directories (hidden ones too, but not
/// `.git`), in order: what the build may read.
fn input_files(repo: &Path, graph: &Graph, limits: &Limits) -> Result<Vec<PathBuf>, String> {
    let mut files = BTreeSet::new();
    let mut total = 0u64;
    let mut visited = std::collections::HashSet::new();
    for dir in graph.dirs.iter().chain(&graph.inputs) {
        let mut todo = vec![(dir.clone(), 0usize)];
        while let Some((rel, depth)) = todo.pop() {
            if depth > super::files::MAX_DEPTH {
                return Err(format!("{}: too deep", crate::model::shown(&rel)));
            }
            // A directory reached again (through a link) is read once.
            if !visited.insert(inside(repo, &repo.join(&rel))?) {
                continue;
            }
            let entries = std::fs::read_dir(repo.join(&rel))
                .map_err(|e| format!("{}: cannot be read ({e})", crate::model::shown(&rel)))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name == ".git" {
                    continue;
                }
                let child = rel.join(&name);
                let Ok(mut kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_symlink() {
                    // Followed as kustomize follows it, if it stays inside.
                    let shown = crate::model::shown(&child);
                    inside(repo, &repo.join(&child))
                        .map_err(|e| format!("{shown}: symlink {e}"))?;
                    let Ok(meta) = std::fs::metadata(repo.join(&child)) else {
                        continue;
                    };
                    kind = meta.file_type();
                }
                if kind.is_dir() {
                    todo.push((child, depth + 1));
                } else if kind.is_file() {
                    total += std::fs::metadata(repo.join(&child)).map_or(0, |m| m.len());
                    files.insert(child);
                }
            }
        }
    }
    if total > limits.max_total_bytes {
        return Err(format!(
            "its inputs are more than {} bytes (--max-total-bytes)",
            limits.max_total_bytes
        ));
    }
    Ok(files.into_iter().collect())
}

/// The key of a build: what kustomize is and is told, and every input's
/// path and content.
fn key(
    repo: &Path,
    root: &Path,
    files: &[PathBuf],
    settings: &Settings,
) -> Result<[u8; 32], String> {
    let mut h = Sha256::new();
    let program = |p: &Path| {
        let binary = process::on_path(p);
        let meta = std::fs::metadata(&binary).ok();
        format!(
            "{}\0{:?}\0{:?}",
            binary.display(),
            meta.as_ref().map(|m| m.len()),
            meta.and_then(|m| m.modified().ok())
        )
    };
    h.update(format!(
        "{}\0{}\0{:?}\0{}\0",
        program(&settings.binary),
        settings.allow_remote,
        settings.helm.as_deref().map(program),
        root.display()
    ));
    for file in files {
        let bytes = std::fs::read(repo.join(file))
            .map_err(|e| format!("{}: cannot be read ({e})", crate::model::shown(file)))?;
        h.update(file.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().into())
}

/// Builds each root (repository-relative, its graph read), from the cache
/// where its inputs did not change. `repo` is the repository's real path.
pub fn build(
    repo: &Path,
    roots: &[(PathBuf, Graph)],
    settings: &Settings,
    limits: &Limits,
) -> Vec<Built> {
    let one = |(root, graph): &(PathBuf, Graph)| {
        let files = match input_files(repo, graph, limits) {
            Ok(files) => files,
            Err(e) => {
                return Built {
                    root: root.clone(),
                    output: Err(e),
                    files: Vec::new(),
                    key: None,
                };
            }
        };
        let key = match key(repo, root, &files, settings) {
            Ok(key) => key,
            Err(e) => {
                return Built {
                    root: root.clone(),
                    output: Err(e),
                    files,
                    key: None,
                };
            }
        };
        // What a remote base holds is no input here: never kept.
        let cached = (!graph.remote).then(|| settings.cache.get(&key)).flatten();
        let output = match cached {
            Some(output) => (*output).clone(),
            None => {
                settings.cache.runs.fetch_add(1, Ordering::Relaxed);
                let (output, lasting) = run(repo, root, &files, settings, limits);
                if lasting && !graph.remote {
                    settings.cache.put(key, std::sync::Arc::new(output.clone()));
                }
                output
            }
        };
        Built {
            root: root.clone(),
            output,
            files,
            key: Some(key),
        }
    };
    super::on_every_core(roots, 2, one)
}

/// The environment kustomize gets: nothing of tidegate's (no credentials,
/// no service-account token path); with remote loading refused, no PATH
/// (so no `git`) and a proxy that answers nothing.
pub fn environment(allow_remote: bool) -> Vec<(String, String)> {
    let mut env = vec![(
        "HOME".to_string(),
        std::env::temp_dir().display().to_string(),
    )];
    if allow_remote {
        for key in [
            "PATH",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "NO_PROXY",
            "https_proxy",
            "http_proxy",
            "no_proxy",
        ] {
            if let Ok(value) = std::env::var(key) {
                env.push((key.to_string(), value));
            }
        }
    } else {
        for key in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            env.push((key.to_string(), "http://127.0.0.1:9".to_string()));
        }
    }
    env
}

/// Runs kustomize for one root: its output, and whether the same inputs
/// would give it again (not so for a deadline, or a binary missing now).
fn run(
    repo: &Path,
    root: &Path,
    files: &[PathBuf],
    settings: &Settings,
    limits: &Limits,
) -> (Result<String, String>, bool) {
    let mut args = vec![
        "build".to_string(),
        repo.join(root).display().to_string(),
        "--load-restrictor=LoadRestrictionsRootOnly".to_string(),
    ];
    if let Some(helm) = &settings.helm {
        args.push("--enable-helm".into());
        args.push(format!(
            "--helm-command={}",
            process::on_path(helm).display()
        ));
    }
    let run = Run {
        program: process::on_path(&settings.binary),
        args,
        dir: repo.join(root),
        env: environment(settings.allow_remote),
        timeout: settings.timeout,
        max_output: limits.max_file_bytes,
    };
    let failure = match process::run(&run) {
        Ok(out) => {
            let text = String::from_utf8(out)
                .map_err(|_| "kustomize wrote output that is not UTF-8".into());
            return (text, true);
        }
        Err(failure) => failure,
    };
    let lasting = matches!(failure, Failure::Failed { .. });
    let shown = match failure {
        Failure::Missing(e) => {
            format!("{e} (install kustomize, or name it with --kustomize-binary)")
        }
        Failure::TimedOut(t) => format!(
            "kustomize build did not finish in {}; stopped (--kustomize-timeout)",
            humantime::format_duration(t)
        ),
        Failure::TooLarge(n) => {
            format!("kustomize build wrote more than {n} bytes (--max-file-bytes)")
        }
        Failure::Failed { stderr, .. } => {
            let secrets = secret_values(repo, files);
            shown_error(&stderr, repo, &secrets)
        }
    };
    (Err(shown), lasting)
}

/// The secret values of the files below `dir` of `tree` (what a command
/// run there may print).
pub fn secrets_below(tree: &Path, dir: &Path) -> Vec<String> {
    let graph = Graph {
        inputs: [dir.to_path_buf()].into_iter().collect(),
        ..Graph::default()
    };
    let Ok(real) = tree.canonicalize() else {
        return Vec::new();
    };
    let files = input_files(&real, &graph, &Limits::default()).unwrap_or_default();
    secret_values(&real, &files)
}

/// Values in a build's inputs that must never be shown: those of Secret
/// documents and of `secretGenerator` literals, env files and files.
fn secret_values(repo: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut found = Secrets::default();
    let limits = manifest::ParseLimits::default();
    for file in files {
        let Ok(text) = std::fs::read_to_string(repo.join(file)) else {
            continue;
        };
        let Ok(docs) = manifest::parse_documents(&text, &limits) else {
            continue;
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        for doc in &docs {
            found.collect(doc, dir, 0);
        }
    }
    for file in std::mem::take(&mut found.generated) {
        let Ok(text) = std::fs::read_to_string(repo.join(&file)) else {
            continue;
        };
        found.value(&text);
        for line in text.lines() {
            found.value(line.split_once('=').map_or(line, |(_, v)| v));
        }
    }
    let mut values: Vec<String> = found.values.into_iter().collect();
    // Longest first, so a value is never left half shown.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
}

/// Secret values found in a build's inputs, and the files of secret
/// generators to read for more.
#[derive(Default)]
struct Secrets {
    values: BTreeSet<String>,
    generated: BTreeSet<PathBuf>,
}

impl Secrets {
    /// A value, and each of its lines (a key's one line shown is too much).
    fn value(&mut self, v: &str) {
        for part in std::iter::once(v).chain(v.lines()) {
            let part = part.trim();
            if part.len() >= 3 {
                self.values.insert(part.to_string());
            }
        }
    }

    /// Secrets (also in a `List`), secret generators (in a kustomization
    /// or as a plugin configuration), and what inline patches and plugin
    /// configurations hold, of one document.
    fn collect(&mut self, doc: &Value, dir: &Path, depth: usize) {
        if depth > 4 {
            return;
        }
        if doc["kind"] == "Secret" {
            for key in ["data", "stringData"] {
                for v in doc[key].as_object().into_iter().flat_map(|m| m.values()) {
                    let Some(v) = v.as_str() else { continue };
                    self.value(v);
                    if key == "data" {
                        use base64::Engine as _;
                        if let Ok(plain) = base64::engine::general_purpose::STANDARD.decode(v) {
                            self.value(&String::from_utf8_lossy(&plain));
                        }
                    }
                }
            }
        }
        for item in doc["items"].as_array().into_iter().flatten() {
            self.collect(item, dir, depth + 1);
        }
        let generators = doc["secretGenerator"].as_array().into_iter().flatten();
        let own = (doc["kind"] == "SecretGenerator").then_some(doc);
        for g in generators.chain(own) {
            for literal in entries(g, &["literals"]) {
                self.value(literal.split_once('=').map_or("", |(_, v)| v));
            }
            let named = entries(g, &["files", "envs"])
                .into_iter()
                .chain(g["env"].as_str().map(str::to_string));
            for f in named {
                let path = f.split_once('=').map_or(f.as_str(), |(_, p)| p);
                self.generated.insert(dir.join(path));
            }
        }
        // Inline YAML: patches, and plugin configurations.
        let inline = doc["patches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["patch"].as_str())
            .chain(
                ["patchesStrategicMerge", "generators", "transformers"]
                    .iter()
                    .flat_map(|k| doc[*k].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .filter(|s| s.contains('\n')),
            );
        let limits = manifest::ParseLimits::default();
        for text in inline.map(str::to_string).collect::<Vec<_>>() {
            for inner in manifest::parse_documents(&text, &limits).unwrap_or_default() {
                self.collect(&inner, dir, depth + 1);
            }
        }
    }
}

/// kustomize's error as it may be shown: its first line, nothing it quotes
/// between backticks, the repository's path and every secret value taken
/// out, at most 400 characters.
pub fn shown_error(stderr: &str, repo: &Path, secrets: &[String]) -> String {
    // Values first: one holding a backtick must not upset the quoting.
    let mut stderr = stderr.to_string();
    for secret in secrets {
        stderr = stderr.replace(secret.as_str(), "***");
    }
    let mut text = String::new();
    let mut quoted = false;
    for c in stderr.chars() {
        if c == '`' {
            quoted = !quoted;
            if quoted {
                text.push_str("`…`");
            }
        } else if !quoted {
            text.push(c);
        }
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("kustomize build failed and said nothing");
    let mut line = line.strip_prefix("Error: ").unwrap_or(line).to_string();
    let prefix = format!("{}/", repo.display());
    line = line
        .replace(&prefix, "")
        .replace(&repo.display().to_string(), ".");
    if line.chars().count() > 400 {
        line = line.chars().take(400).collect::<String>() + "…";
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::write;

    #[test]
    fn the_graph_follows_bases_and_refuses_what_leaves_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().canonicalize().unwrap();
        write(&repo, "base/kustomization.yaml", "resources: [cm.yaml]\n");
        write(&repo, "base/cm.yaml", "kind: ConfigMap\n");
        write(&repo, "comp/kustomization.yaml", "kind: Component\n");
        write(
            &repo,
            "prod/kustomization.yaml",
            "resources: [../base]\ncomponents: [../comp]\npatches: [{path: p.yaml}]\n",
        );
        let graph = scan(&repo, Path::new("prod"), false).unwrap();
        let dirs: Vec<_> = graph.dirs.iter().map(|d| d.display().to_string()).collect();
        assert_eq!(dirs, ["base", "comp", "prod"]);

        let refused = |text: &str| {
            write(&repo, "bad/kustomization.yaml", text);
            scan(&repo, Path::new("bad"), false).unwrap_err()
        };
        let e = refused("resources: [github.com/org/repo//base?ref=v1]\n");
        assert!(
            e.contains("is remote") && e.contains("--kustomize-allow-remote"),
            "{e}"
        );
        let e = refused("resources: [https://example.com/all.yaml]\n");
        assert!(e.contains("is remote"), "{e}");
        let e = refused("resources: [example.com/org/base]\n");
        assert!(e.contains("does not exist in the repository"), "{e}");
        let e = refused("patches: [{path: 'http://127.0.0.1:8080/metrics'}]\n");
        assert!(e.contains("remote files are refused"), "{e}");
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "kustomization.yaml", "resources: []\n");
        std::os::unix::fs::symlink(outside.path(), repo.join("bad/out")).unwrap();
        let e = refused("resources: [out]\n");
        assert!(e.contains("points outside the repository"), "{e}");
        assert!(e.starts_with("bad/kustomization.yaml: "), "{e}");
        // Spelled as kustomize reads it (case-insensitively), still read.
        let e = refused("Resources: ['http://127.0.0.1:3030/metrics']\n");
        assert!(
            e.contains("field \"Resources\" is read by kustomize as \"resources\""),
            "{e}"
        );
        let e = refused("configMapGenerator: [{name: x, Files: [a]}]\n");
        assert!(e.contains("\"Files\""), "{e}");
        let e = refused(
            "transformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {name: p}\n  path: http://127.0.0.1/x\n",
        );
        assert!(e.contains("is remote"), "{e}");
        let e = refused("resources: ['https://user:s3cret@example.com/all.yaml']\n");
        assert!(
            e.contains("https://***@example.com/all.yaml") && !e.contains("s3cret"),
            "{e}"
        );
        let e = refused("helmCharts: [{name: web, repo: 'http://127.0.0.1:8879'}]\n");
        assert!(e.contains("helm chart repository"), "{e}");
        let e = refused("helmCharts: [{name: ../web}]\n");
        assert!(e.contains("is a path"), "{e}");
        // `..` is taken away as text before links are followed, as
        // kustomize does: through a link, that can still leave.
        write(&repo, "x/kustomization.yaml", "resources: []\n");
        std::fs::create_dir_all(repo.join("deep/a/b")).unwrap();
        std::os::unix::fs::symlink(repo.join("deep/a/b"), repo.join("bad/d")).unwrap();
        // The kernel finds x in the repository; kustomize looks beside it.
        assert!(repo.join("bad/d/../../../x").is_dir());
        let e = refused("resources: [d/../../../x]\n");
        assert!(e.contains("points outside the repository"), "{e}");
        // Label and annotation keys are the user's, whatever their case.
        write(
            &repo,
            "bad/kustomization.yaml",
            "commonLabels: {Name: web, Path: x}\n",
        );
        assert!(
            scan(&repo, Path::new("bad"), false).is_ok(),
            "labels are the user's"
        );
        // With remote allowed, a remote base is kustomize's to load.
        write(
            &repo,
            "bad/kustomization.yaml",
            "resources: [https://example.com/all.yaml]\n",
        );
        assert!(scan(&repo, Path::new("bad"), true).is_ok());
    }

    /// However many builds, the cache holds at most its bytes; the one
    /// just used stays.
    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let cache = Cache::default();
        let big = std::sync::Arc::new(Ok("x".repeat(MAX_CACHED_BYTES / 3)));
        for i in 0..10u8 {
            cache.put([i; 32], big.clone());
            assert!(cache.get(&[i; 32]).is_some(), "the newest is kept");
        }
        let held = cache.builds.lock().unwrap();
        let total: usize = held.values().map(|(o, _)| size(o)).sum();
        assert!(total <= MAX_CACHED_BYTES, "{total}");
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn errors_are_shown_without_what_they_quote() {
        let repo = Path::new("/srv/checkout");
        let stderr = "Error: trouble configuring builtin PatchTransformer with config: `\npatch: |-\n  stringData: {password: hunter2}\n`: unable to parse SM or JSON patch from [/srv/checkout/prod/p.yaml hunter2]\nmore\n";
        let shown = shown_error(stderr, repo, &["hunter2".to_string()]);
        assert_eq!(
            shown,
            "trouble configuring builtin PatchTransformer with config: `…`: unable to parse SM or JSON patch from [prod/p.yaml ***]"
        );
    }

    #[test]
    fn secret_values_are_gathered_from_secrets_and_generators() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        write(
            repo,
            "k/kustomization.yaml",
            "secretGenerator:\n- name: s\n  literals: [password=lit-value]\n  envs: [s.env]\n",
        );
        write(repo, "k/s.env", "TOKEN=env-value\n");
        write(
            repo,
            "k/secret.yaml",
            "kind: Secret\nstringData: {a: doc-value}\n",
        );
        let files = vec![
            PathBuf::from("k/kustomization.yaml"),
            PathBuf::from("k/s.env"),
            PathBuf::from("k/secret.yaml"),
        ];
        let values = secret_values(repo, &files);
        for v in ["lit-value", "env-value", "doc-value"] {
            assert!(values.iter().any(|x| x == v), "{v} in {values:?}");
        }
    }
}
