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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::process::{self, Failure, Run};
use super::{Limits, manifest};

/// The names kustomize reads a kustomization from, in its order.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Most bytes of one kustomization file read here.
const MAX_KUSTOMIZATION_BYTES: u64 = 1024 * 1024;

/// Most kustomizations one root may load (bases of bases included).
const MAX_KUSTOMIZATIONS: usize = 1000;

/// The kustomization file of `dir`, if it is a kustomize root.
pub fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|f| f.is_file())
}

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

/// Most builds a cache holds; the least recently used go first.
const MAX_CACHED: usize = 256;

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
        if builds.len() > MAX_CACHED {
            let oldest = builds
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                builds.remove(&oldest);
            }
        }
    }
}

/// What one kustomization graph reads: the kustomization directories it
/// loads (the root first), repository-relative.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Graph {
    pub dirs: BTreeSet<PathBuf>,
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

/// Reads the kustomization graph of `dir` (repository-relative), refusing
/// what would leave the repository.
pub fn scan(repo: &Path, dir: &Path, allow_remote: bool) -> Result<Graph, String> {
    let mut graph = Graph::default();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        if !graph.dirs.insert(next.clone()) {
            continue;
        }
        if graph.dirs.len() > MAX_KUSTOMIZATIONS {
            return Err(format!(
                "loads more than {MAX_KUSTOMIZATIONS} kustomizations"
            ));
        }
        let Some(file) = kustomization_file(&repo.join(&next)) else {
            return Err(format!(
                "{}: no kustomization.yaml in it",
                crate::model::shown(&next)
            ));
        };
        let rel_file = next.join(file.file_name().expect("a file name"));
        let shown = crate::model::shown(&rel_file);
        let text = read_bounded(&file).map_err(|e| format!("{shown}: {e}"))?;
        let k = parse_kustomization(&text).map_err(|e| format!("{shown}: {e}"))?;
        for entry in entries(&k, &["resources", "bases", "components"]) {
            let at =
                local(repo, &next, &entry, allow_remote).map_err(|e| format!("{shown}: {e}"))?;
            if let Some(at) = at.filter(|at| repo.join(at).is_dir()) {
                todo.push(at);
            }
        }
        for entry in file_fields(&k) {
            if is_remote(&entry) && !allow_remote {
                return Err(format!(
                    "{shown}: {entry:?} is remote: remote files are refused (--kustomize-allow-remote allows them)"
                ));
            }
            let path = repo.join(&next).join(&entry);
            if std::fs::symlink_metadata(&path).is_ok() {
                inside(repo, &path).map_err(|e| format!("{shown}: {entry:?} {e}"))?;
            }
        }
    }
    Ok(graph)
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_KUSTOMIZATION_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_KUSTOMIZATION_BYTES {
        return Err(format!("more than {MAX_KUSTOMIZATION_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

fn parse_kustomization(text: &str) -> Result<Value, String> {
    let limits = manifest::ParseLimits::default();
    let mut docs = manifest::parse_documents(text, &limits)?;
    match docs.len() {
        0 => Ok(Value::Object(Default::default())),
        1 if docs[0].is_object() || docs[0].is_null() => Ok(docs.remove(0)),
        1 => Err("not a mapping".into()),
        _ => Err("more than one YAML document".into()),
    }
}

/// The string entries of these list fields.
fn entries(k: &Value, fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        .filter_map(|f| k.get(*f).and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Every file a kustomization names outside `resources`: patches,
/// generators' files and env files, CRDs, configurations, OpenAPI schema,
/// replacements, values files, plugin configurations.
fn file_fields(k: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let list = |v: &Value, key: &str| entries(v, &[key]);
    for key in ["patches", "patchesJson6902", "replacements"] {
        for item in k.get(key).and_then(Value::as_array).into_iter().flatten() {
            found.extend(str_of(item, "path"));
        }
    }
    for key in ["configMapGenerator", "secretGenerator"] {
        for item in k.get(key).and_then(Value::as_array).into_iter().flatten() {
            for file in list(item, "files") {
                let path = file.split_once('=').map_or(file.as_str(), |(_, p)| p);
                found.push(path.to_string());
            }
            found.extend(list(item, "envs"));
            found.extend(str_of(item, "env"));
        }
    }
    for item in k
        .get("helmCharts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        found.extend(str_of(item, "valuesFile"));
        found.extend(list(item, "additionalValuesFiles"));
    }
    if let Some(globals) = k.get("helmGlobals") {
        found.extend(str_of(globals, "chartHome"));
    }
    if let Some(openapi) = k.get("openapi") {
        found.extend(str_of(openapi, "path"));
    }
    // A one-line entry is a file; a multi-line one is inline YAML.
    let one_line = |s: &String| !s.contains('\n');
    for key in [
        "patchesStrategicMerge",
        "generators",
        "transformers",
        "validators",
    ] {
        found.extend(list(k, key).into_iter().filter(one_line));
    }
    found.extend(list(k, "crds"));
    found.extend(list(k, "configurations"));
    found
}

fn is_remote(entry: &str) -> bool {
    entry.contains("://") || entry.starts_with("git@") || entry.contains("?ref=")
}

/// Where a resource entry of kustomization directory `dir` is inside the
/// repository; `None` for a remote one that is allowed.
fn local(
    repo: &Path,
    dir: &Path,
    entry: &str,
    allow_remote: bool,
) -> Result<Option<PathBuf>, String> {
    let path = repo.join(dir).join(entry);
    if is_remote(entry) || std::fs::symlink_metadata(&path).is_err() {
        if allow_remote {
            return Ok(None);
        }
        return Err(if is_remote(entry) {
            format!(
                "{entry:?} is remote: remote bases and resources are refused (--kustomize-allow-remote allows them)"
            )
        } else {
            format!(
                "{entry:?} does not exist in the repository (a path kustomize cannot find it fetches as a remote base, which is refused)"
            )
        });
    }
    inside(repo, &path)
        .map(Some)
        .map_err(|e| format!("{entry:?} {e}"))
}

/// `path`'s place in the repository, if it is in it once links are followed.
pub fn inside(repo: &Path, path: &Path) -> Result<PathBuf, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot be resolved ({e})"))?;
    real.strip_prefix(repo)
        .map(Path::to_path_buf)
        .map_err(|_| "points outside the repository".to_string())
}

/// The files below the graph's directories (hidden ones too, but not
/// `.git`), in order: what the build may read.
fn input_files(repo: &Path, graph: &Graph, limits: &Limits) -> Result<Vec<PathBuf>, String> {
    let mut files = BTreeSet::new();
    let mut total = 0u64;
    let mut visited = std::collections::HashSet::new();
    for dir in &graph.dirs {
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
    let binary = process::on_path(&settings.binary);
    let meta = std::fs::metadata(&binary).ok();
    h.update(format!(
        "{}\0{:?}\0{:?}\0{}\0{:?}\0{}\0",
        binary.display(),
        meta.as_ref().map(|m| m.len()),
        meta.and_then(|m| m.modified().ok()),
        settings.allow_remote,
        settings.helm,
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
        let output = match settings.cache.get(&key) {
            Some(output) => (*output).clone(),
            None => {
                settings.cache.runs.fetch_add(1, Ordering::Relaxed);
                let output = run(repo, root, &files, settings, limits);
                settings.cache.put(key, std::sync::Arc::new(output.clone()));
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

/// Runs kustomize for one root.
fn run(
    repo: &Path,
    root: &Path,
    files: &[PathBuf],
    settings: &Settings,
    limits: &Limits,
) -> Result<String, String> {
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
            return String::from_utf8(out)
                .map_err(|_| "kustomize wrote output that is not UTF-8".into());
        }
        Err(failure) => failure,
    };
    Err(match failure {
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
    })
}

/// Values in a build's inputs that must never be shown: those of Secret
/// documents and of `secretGenerator` literals, env files and files.
fn secret_values(repo: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut values = BTreeSet::new();
    let limits = manifest::ParseLimits::default();
    let mut generated: BTreeMap<PathBuf, ()> = BTreeMap::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(repo.join(file)) else {
            continue;
        };
        let Ok(docs) = manifest::parse_documents(&text, &limits) else {
            continue;
        };
        for doc in &docs {
            if doc["kind"] == "Secret" {
                for key in ["data", "stringData"] {
                    for v in doc[key].as_object().into_iter().flat_map(|m| m.values()) {
                        values.extend(v.as_str().map(str::to_string));
                    }
                }
            }
            for g in doc["secretGenerator"].as_array().into_iter().flatten() {
                for literal in entries(g, &["literals"]) {
                    if let Some((_, v)) = literal.split_once('=') {
                        values.insert(v.to_string());
                    }
                }
                let dir = file.parent().unwrap_or(Path::new(""));
                for f in entries(g, &["files", "envs"])
                    .into_iter()
                    .chain(g["env"].as_str().map(str::to_string))
                {
                    let path = f.split_once('=').map_or(f.as_str(), |(_, p)| p);
                    generated.insert(dir.join(path), ());
                }
            }
        }
    }
    for file in generated.keys() {
        let Ok(text) = std::fs::read_to_string(repo.join(file)) else {
            continue;
        };
        for line in text.lines() {
            values.insert(line.split_once('=').map_or(line, |(_, v)| v).to_string());
            values.insert(line.to_string());
        }
    }
    let mut values: Vec<String> = values
        .into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| v.len() >= 3)
        .collect();
    // Longest first, so a value is never left half shown.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
}

/// kustomize's error as it may be shown: its first line, nothing it quotes
/// between backticks, the repository's path and every secret value taken
/// out, at most 400 characters.
pub fn shown_error(stderr: &str, repo: &Path, secrets: &[String]) -> String {
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
    for secret in secrets {
        line = line.replace(secret.as_str(), "***");
    }
    if line.chars().count() > 400 {
        line = line.chars().take(400).collect::<String>() + "…";
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

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
        // With remote allowed, a remote base is kustomize's to load.
        write(
            &repo,
            "bad/kustomization.yaml",
            "resources: [https://example.com/all.yaml]\n",
        );
        assert!(scan(&repo, Path::new("bad"), true).is_ok());
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
