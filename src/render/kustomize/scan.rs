//! What a kustomize root loads, read before kustomize runs: every
//! kustomization of its graph, each path resolved as kustomize resolves it
//! (joined to the directory's real path, `..` removed as text, then links
//! followed), and refused when it leaves the repository or, unless remote
//! loading is allowed, when it is remote. Field names are matched as
//! kustomize matches them (case-insensitively): a known field spelled
//! another way is refused rather than left unread.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::super::manifest;

/// Most bytes of one kustomization file read here.
const MAX_KUSTOMIZATION_BYTES: u64 = 1024 * 1024;

/// Most kustomizations one root may load (bases of bases included).
const MAX_KUSTOMIZATIONS: usize = 1000;

/// The names kustomize reads a kustomization from, in its order.
pub const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The fields read here, at the top of a kustomization and in the items
/// of its lists.
const FIELDS: &[&str] = &[
    "resources",
    "bases",
    "components",
    "patches",
    "patchesJson6902",
    "patchesStrategicMerge",
    "replacements",
    "configMapGenerator",
    "secretGenerator",
    "helmCharts",
    "helmChartInflationGenerator",
    "helmGlobals",
    "openapi",
    "crds",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "path",
    "paths",
    "files",
    "envs",
    "env",
    "valuesFile",
    "additionalValuesFiles",
    "chartHome",
    "repo",
    "chartRepoUrl",
    "chartName",
    "name",
];

/// The kustomization file of `dir`, if it is a kustomize root.
pub fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|f| f.is_file())
}

/// What one kustomization graph reads, repository-relative: the
/// kustomization directories it loads (the root first), other
/// directories it reads whole (a helm chart home), and whether it loads
/// anything remote (allowed), which no cache can vouch for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Graph {
    pub dirs: BTreeSet<PathBuf>,
    pub inputs: BTreeSet<PathBuf>,
    pub remote: bool,
}

/// Reads the kustomization graph of `dir` (repository-relative) of the
/// repository at its real path `repo`, refusing what would leave it.
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
        let mut one = Kustomization {
            repo,
            dir: &next,
            allow_remote,
            graph: &mut graph,
            todo: &mut todo,
        };
        one.read(&k).map_err(|e| format!("{shown}: {e}"))?;
    }
    Ok(graph)
}

/// One kustomization being read, and where what it loads goes.
struct Kustomization<'a> {
    repo: &'a Path,
    dir: &'a Path,
    allow_remote: bool,
    graph: &'a mut Graph,
    todo: &'a mut Vec<PathBuf>,
}

impl Kustomization<'_> {
    fn read(&mut self, k: &Value) -> Result<(), String> {
        spelled(k)?;
        for entry in entries(k, &["resources", "bases", "components"]) {
            if let Some(at) = self.load(&entry, "bases and resources")?
                && self.repo.join(&at).is_dir()
            {
                self.todo.push(at);
            }
        }
        // Plugin configurations: a path (a file, or a kustomization that
        // makes them), or inline YAML read for its paths.
        for entry in entries(k, &["generators", "transformers", "validators"]) {
            let text = if entry.contains('\n') {
                entry
            } else {
                match self.load(&entry, "plugin configurations")? {
                    Some(at) if self.repo.join(&at).is_dir() => {
                        self.todo.push(at);
                        continue;
                    }
                    Some(at) => read_bounded(&self.repo.join(&at))
                        .map_err(|e| format!("{}: {e}", crate::model::shown(&at)))?,
                    None => continue,
                }
            };
            let docs = manifest::parse_documents(&text, &manifest::ParseLimits::default())?;
            for doc in docs {
                spelled(&doc)?;
                self.files(&doc)?;
            }
        }
        self.files(k)?;
        for chart in items(k, "helmCharts").chain(items(k, "helmChartInflationGenerator")) {
            self.chart(chart)?;
        }
        // A chart home is read whole (by helm): an input of the build.
        let homes = items(k, "helmCharts")
            .chain(items(k, "helmChartInflationGenerator"))
            .chain(k.get("helmGlobals"))
            .filter_map(|v| v.get("chartHome").and_then(Value::as_str));
        for home in homes {
            if let Some(at) = resolve(self.repo, self.dir, home)? {
                self.graph.inputs.insert(at);
            }
        }
        Ok(())
    }

    /// Where an entry that kustomize may fetch is in the repository; `None`
    /// for a remote one that is allowed.
    fn load(&mut self, entry: &str, what: &str) -> Result<Option<PathBuf>, String> {
        let at = resolve(self.repo, self.dir, entry)?;
        match at {
            Some(at) if !is_remote(entry) => Ok(Some(at)),
            _ if self.allow_remote => {
                self.graph.remote = true;
                Ok(None)
            }
            _ if is_remote(entry) => Err(format!(
                "{} is remote: remote {what} are refused (--kustomize-allow-remote allows them)",
                shown_entry(entry)
            )),
            _ => Err(format!(
                "{} does not exist in the repository (a path kustomize cannot find it fetches as a remote base, which is refused)",
                shown_entry(entry)
            )),
        }
    }

    /// Every file a kustomization (or an inline plugin configuration)
    /// names outside `resources`: inside the repository, and not remote
    /// unless allowed.
    fn files(&mut self, k: &Value) -> Result<(), String> {
        for entry in file_fields(k) {
            if is_remote(&entry) {
                if !self.allow_remote {
                    return Err(format!(
                        "{} is remote: remote files are refused (--kustomize-allow-remote allows them)",
                        shown_entry(&entry)
                    ));
                }
                self.graph.remote = true;
                continue;
            }
            resolve(self.repo, self.dir, &entry)?;
        }
        Ok(())
    }

    /// A `helmCharts` entry: its repository remote (allowed or refused),
    /// its name no path, its chart home inside and read whole.
    fn chart(&mut self, chart: &Value) -> Result<(), String> {
        spelled(chart)?;
        // `helmChartInflationGenerator` (deprecated) names them otherwise.
        let repo = ["repo", "chartRepoUrl"]
            .iter()
            .find_map(|k| chart.get(*k).and_then(Value::as_str));
        if let Some(repo) = repo
            && !repo.is_empty()
        {
            if !self.allow_remote {
                return Err(format!(
                    "helm chart repository {} is remote: refused (--kustomize-allow-remote allows it)",
                    shown_entry(repo)
                ));
            }
            self.graph.remote = true;
        }
        let name = ["name", "chartName"]
            .iter()
            .find_map(|k| chart.get(*k).and_then(Value::as_str))
            .unwrap_or("");
        if name.contains('/') || name.contains("..") {
            return Err(format!(
                "helm chart name {} is a path: name the chart, and its directory with helmGlobals.chartHome",
                shown_entry(name)
            ));
        }
        Ok(())
    }
}

/// Refuses a known field written in another case: kustomize would read
/// it (Go's JSON matching ignores case), this scan would not.
fn spelled(k: &Value) -> Result<(), String> {
    let fold = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '\u{212A}' => 'k',
                '\u{17F}' => 's',
                c => c,
            })
            .flat_map(char::to_lowercase)
            .collect()
    };
    // The top, and where this scan reads below it (not label or
    // annotation maps, whose keys are the user's).
    let mut maps: Vec<&serde_json::Map<String, Value>> = k.as_object().into_iter().collect();
    for key in ["helmGlobals", "openapi"] {
        maps.extend(k.get(key).and_then(Value::as_object));
    }
    let lists = [
        "patches",
        "patchesJson6902",
        "replacements",
        "configMapGenerator",
        "secretGenerator",
        "helmCharts",
        "helmChartInflationGenerator",
    ];
    for key in lists {
        maps.extend(items(k, key).filter_map(Value::as_object));
    }
    for key in maps.into_iter().flat_map(|m| m.keys()) {
        if let Some(known) = FIELDS.iter().find(|f| fold(f) == fold(key))
            && known != key
        {
            return Err(format!(
                "field {key:?} is read by kustomize as {known:?}: write it so"
            ));
        }
    }
    Ok(())
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
pub(super) fn entries(k: &Value, fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        .filter_map(|f| k.get(*f).and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn items<'a>(k: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    k.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Every file a kustomization names outside `resources`: patches,
/// generators' files and env files, CRDs, configurations, OpenAPI schema,
/// replacements, values files and chart homes; an inline plugin
/// configuration's `path`, `paths`, `files` and `envs`.
fn file_fields(k: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let list = |v: &Value, key: &str| entries(v, &[key]);
    let generated = |item: &Value, found: &mut Vec<String>| {
        for file in list(item, "files") {
            let path = file.split_once('=').map_or(file.as_str(), |(_, p)| p);
            found.push(path.to_string());
        }
        found.extend(list(item, "envs"));
        found.extend(str_of(item, "env"));
    };
    for key in ["patches", "patchesJson6902", "replacements"] {
        found.extend(items(k, key).filter_map(|item| str_of(item, "path")));
    }
    for key in ["configMapGenerator", "secretGenerator"] {
        for item in items(k, key) {
            generated(item, &mut found);
        }
    }
    for item in items(k, "helmCharts").chain(items(k, "helmChartInflationGenerator")) {
        found.extend(str_of(item, "valuesFile"));
        found.extend(list(item, "additionalValuesFiles"));
        found.extend(str_of(item, "chartHome"));
    }
    for key in ["helmGlobals", "openapi"] {
        if let Some(v) = k.get(key) {
            found.extend(str_of(v, "chartHome"));
            found.extend(str_of(v, "path"));
        }
    }
    // A plugin configuration inline: its own paths.
    found.extend(str_of(k, "path"));
    found.extend(list(k, "paths"));
    generated(k, &mut found);
    // A one-line entry is a file; a multi-line one is an inline patch.
    let one_line = |s: &String| !s.contains('\n');
    found.extend(
        list(k, "patchesStrategicMerge")
            .into_iter()
            .filter(one_line),
    );
    found.extend(list(k, "crds"));
    found.extend(list(k, "configurations"));
    found
}

/// A path or URL kustomize (or helm) would fetch.
pub(super) fn is_remote(entry: &str) -> bool {
    entry.contains("://") || entry.starts_with("git@") || entry.contains("?ref=")
}

/// An entry as it may be shown: a URL's user and password left out.
pub(super) fn shown_entry(entry: &str) -> String {
    if let Some((scheme, rest)) = entry.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{:?}", format!("{scheme}://***@{}", &rest[at + 1..]));
        }
    }
    format!("{entry:?}")
}

/// Where kustomize finds `entry` of kustomization directory `dir`, as
/// kustomize resolves it: joined to the directory's real path, `..`
/// removed as text, then links followed. `None` when nothing is there;
/// an error when it is outside the repository.
pub(super) fn resolve(repo: &Path, dir: &Path, entry: &str) -> Result<Option<PathBuf>, String> {
    if is_remote(entry) {
        return Ok(None);
    }
    let real_dir = repo
        .join(dir)
        .canonicalize()
        .map_err(|e| format!("{}: cannot be resolved ({e})", crate::model::shown(dir)))?;
    let mut at = PathBuf::new();
    for c in real_dir.join(entry).components() {
        match c {
            Component::ParentDir => {
                at.pop();
            }
            Component::CurDir => {}
            other => at.push(other),
        }
    }
    if !at.starts_with(repo) {
        return Err(format!(
            "{} points outside the repository",
            shown_entry(entry)
        ));
    }
    if std::fs::symlink_metadata(&at).is_err() {
        return Ok(None);
    }
    inside(repo, &at)
        .map(Some)
        .map_err(|e| format!("{} {e}", shown_entry(entry)))
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
