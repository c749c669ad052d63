//! Manifest parsing: the text of one YAML file in, its Kubernetes objects out.
//!
//! This is the only place that knows the YAML library. It is serde-saphyr:
//! serde_yaml is deprecated and unmaintained, and kube moved to serde-saphyr.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::{Json, ObjectRef};

/// One object as parsed from Git.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The file it came from, relative to the repository root.
    pub file: PathBuf,
    /// Its position among the documents of that file, from 0.
    pub index: usize,
    pub id: ObjectRef,
    pub object: Value,
    /// As in [`Manifest`].
    pub built: Option<Builder>,
}

/// One object of a rendered desired set.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Where it is written, as in [`Parsed`].
    pub file: PathBuf,
    pub index: usize,
    pub id: ObjectRef,
    /// As rendered (and marked, see `render::Options::sync_set`); shared
    /// with the placed object when that is the same (see `plan::place`).
    pub object: Json,
    /// The sha256 of the object as Git has it (its proxy settings injected).
    pub checksum: String,
    /// What made it, when it is not written as it is: `file` is then the
    /// kustomize root (or the `.flux.yaml`) and `index` its place in the
    /// output.
    pub built: Option<Builder>,
}

/// What builds objects from the files of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    Kustomize,
    /// A `.flux.yaml`'s generators (and its patch file, if it has one).
    FluxYaml,
}

impl Parsed {
    pub fn origin(&self) -> Origin {
        Origin {
            file: self.file.clone(),
            index: self.index,
            built: self.built,
        }
    }
}

impl Manifest {
    pub fn origin(&self) -> Origin {
        Origin {
            file: self.file.clone(),
            index: self.index,
            built: self.built,
        }
    }
}

/// Where in Git an object is written: `apps/web.yaml (document 2)`, or
/// what built it: `overlays/prod (kustomize build, object 2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub index: usize,
    pub built: Option<Builder>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = crate::model::shown(&self.file);
        match self.built {
            None => write!(f, "{file} (document {})", self.index),
            Some(Builder::Kustomize) => {
                write!(f, "{file} (kustomize build, object {})", self.index)
            }
            Some(Builder::FluxYaml) => write!(f, "{file} (generated, object {})", self.index),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// The reason never quotes the document: a Secret with a typo must not
    /// put its values in a log line or a status record.
    #[error("{file_shown}: document {index} (line {line}, column {column}) is not valid YAML: {reason}", file_shown = crate::model::shown(.file))]
    Yaml {
        file: PathBuf,
        index: usize,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error(
        "{file_shown}: document {index} (line {line}) looks like a Kubernetes object but has no {field}", file_shown = crate::model::shown(.file))]
    MissingField {
        file: PathBuf,
        index: usize,
        line: usize,
        field: &'static str,
    },
    #[error("{file_shown}: document {index} (line {line}): {object}: {reason}", file_shown = crate::model::shown(.file))]
    BadName {
        file: PathBuf,
        index: usize,
        line: usize,
        object: String,
        reason: String,
    },
    #[error(
        "{file_shown}: more than {limit} documents (raise --max-documents-per-file if this is intended)", file_shown = crate::model::shown(.file))]
    TooManyDocuments { file: PathBuf, limit: usize },
    #[error(
        "{file_shown}: document {index} (line {line}) expands to more than the {limit} bytes allowed per file \
         (YAML aliases or sheer size; raise --max-expanded-bytes if this is intended)", file_shown = crate::model::shown(.file))]
    TooExpanded {
        file: PathBuf,
        index: usize,
        line: usize,
        limit: usize,
    },
    #[error(
        "{file_shown}: document {index} (line {line}) is larger than the 3 MiB the Kubernetes API accepts for one object", file_shown = crate::model::shown(.file))]
    TooLargeObject {
        file: PathBuf,
        index: usize,
        line: usize,
    },
    /// The reason never quotes a value, encrypted or not.
    #[error("{file_shown}: document {index} (line {line}): cannot decrypt with SOPS: {reason}", file_shown = crate::model::shown(.file))]
    Decrypt {
        file: PathBuf,
        index: usize,
        line: usize,
        reason: String,
    },
}

/// The API server refuses request bodies past 3 MiB: a document that parses
/// to more is refused before anything copies it further.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024;

/// Bounds on what one file may make the parser allocate. Each holds for the
/// whole file, not per document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub max_documents: usize,
    /// Nesting depth of mappings and sequences.
    pub max_depth: usize,
    /// Bytes of parsed objects (strings and nodes, aliases expanded).
    pub max_expanded_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_documents: 1000,
            max_depth: 64,
            max_expanded_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One YAML document of a file, with the line it starts on (from 1).
struct Document<'a> {
    line: usize,
    text: &'a str,
}

/// Where each document of a multi-document stream is, as the render counts
/// them (empty ones included), by byte range.
pub fn document_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let base = text.as_ptr() as usize;
    documents(text)
        .iter()
        .map(|d| {
            let start = d.text.as_ptr() as usize - base;
            start..start + d.text.len()
        })
        .collect()
}

/// Splits a multi-document stream at its `---` separators.
///
/// Done here rather than by the YAML library so that every document keeps its
/// index and first line for error messages, even when another one is empty.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "...";
        if is_separator || is_end {
            docs.push(Document {
                line: start_line,
                text: &text[start..offset],
            });
            start = offset + line.len();
            start_line = n + 2;
            if is_separator && bare.len() > 3 {
                // `--- {inline: document}`: the content follows the marker.
                start = offset + 4;
                start_line = n + 1;
            }
        }
        offset += line.len();
    }
    docs.push(Document {
        line: start_line,
        text: &text[start..],
    });
    docs
}

/// The documents that hold something: the empty ones a leading `---`, a
/// trailing one or `...` then `---` make do not count toward the limit.
fn counted(docs: &[Document<'_>]) -> usize {
    docs.iter().filter(|d| !is_blank(d.text)).count()
}

/// Whitespace and comments only.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

/// Returns the Kubernetes objects in one file, expanding `v1 List` and the
/// `…List` kinds of built-in groups, and the problems of the documents that
/// could not be used (the other documents are still returned).
///
/// Documents that are empty or are not Kubernetes objects at all (no
/// `apiVersion` and no `kind`) are skipped; a document that has one of them but
/// lacks the other, or lacks a name, is an error.
pub fn parse_file(
    file: &Path,
    text: &str,
    limits: &ParseLimits,
    sops: &super::sops::Settings,
) -> (Vec<Parsed>, Vec<ParseError>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    let mut values = Vec::new();
    let docs = documents(text);
    if counted(&docs) > limits.max_documents {
        errors.push(ParseError::TooManyDocuments {
            file: file.to_path_buf(),
            limit: limits.max_documents,
        });
        return (manifests, errors);
    }
    let mut remaining = limits.max_expanded_bytes;
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.text.trim().is_empty() {
            continue;
        }
        let too_expanded = || ParseError::TooExpanded {
            file: file.to_path_buf(),
            index,
            line: doc.line,
            limit: limits.max_expanded_bytes,
        };
        if doc.text.len() > remaining {
            errors.push(too_expanded());
            break;
        }
        let value: Value = match serde_saphyr::from_str_with_options(
            doc.text,
            parse_options(limits, doc.text.len(), remaining),
        ) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
                errors.push(ParseError::Yaml {
                    file: file.to_path_buf(),
                    index,
                    line: doc.line + line.saturating_sub(1),
                    column,
                    reason: without_quotes(&e.to_string()),
                });
                continue;
            }
        };
        let size = expanded_size(&value);
        if size > remaining {
            errors.push(too_expanded());
            break;
        }
        remaining -= size;
        if size > MAX_OBJECT_BYTES {
            errors.push(ParseError::TooLargeObject {
                file: file.to_path_buf(),
                index,
                line: doc.line,
            });
            continue;
        }
        values.push((index, doc.line, value));
    }
    if let Err(e) = decrypt(file, &mut values, sops) {
        errors.push(e);
        return (manifests, errors);
    }
    for (index, line, value) in values {
        if let Err(e) = collect(file, index, line, value, &mut manifests) {
            errors.push(e);
        }
    }
    (manifests, errors)
}

/// Decrypts what SOPS encrypted: the whole file when its first document
/// holds the metadata (one MAC covers every document), else each document
/// that holds its own (a build's output); and the Secret data values that
/// are encrypted files (a generator's `files`). Any error refuses the file.
fn decrypt(
    file: &Path,
    values: &mut [(usize, usize, Value)],
    sops: &super::sops::Settings,
) -> Result<(), ParseError> {
    use super::sops as s;
    let failed = |(index, line): (usize, usize), reason: String| ParseError::Decrypt {
        file: file.to_path_buf(),
        index,
        line,
        reason,
    };
    let Some(first) = values.first() else {
        return Ok(());
    };
    if s::is_encrypted(&first.2) && !s::opted_out(&first.2) {
        let at = (first.0, first.1);
        let mut docs: Vec<Value> = values
            .iter_mut()
            .map(|v| std::mem::take(&mut v.2))
            .collect();
        let decrypted = s::decrypt_documents(&mut docs, sops);
        for (v, doc) in values.iter_mut().zip(docs) {
            v.2 = doc;
        }
        if decrypted.map_err(|why| failed(at, why))? == s::Decrypted::Checked {
            for v in values.iter_mut() {
                v.2 = Value::Null;
            }
            return Ok(());
        }
    }
    for (index, line, value) in values.iter_mut() {
        let at = (*index, *line);
        if s::is_encrypted(value) && !s::opted_out(value) {
            let decrypted = s::decrypt_documents(std::slice::from_mut(value), sops);
            if decrypted.map_err(|why| failed(at, why))? == s::Decrypted::Checked {
                *value = Value::Null;
                continue;
            }
        }
        if value.get("kind").and_then(Value::as_str) == Some("Secret") && !s::opted_out(value) {
            decrypt_secret_files(value, sops).map_err(|why| failed(at, why))?;
        }
    }
    Ok(())
}

/// A Secret's data values that are files SOPS encrypted, decrypted as the
/// format their key names.
fn decrypt_secret_files(secret: &mut Value, sops: &super::sops::Settings) -> Result<(), String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let Some(Value::Object(data)) = secret.get_mut("data") else {
        return Ok(());
    };
    if sops.keys.is_none() && sops.structure_only {
        return Ok(());
    }
    if data.contains_key("sops_mac") && data.contains_key("sops_lastmodified") {
        return Err("it is generated from a SOPS-encrypted env file (`envs:`), which is not supported: list the file under `files:` instead".into());
    }
    for (key, value) in data.iter_mut() {
        // kustomize folds long values over lines, as Go's decoder allows.
        let unfolded = |v: &str| v.split_ascii_whitespace().collect::<String>();
        let Some(bytes) = value.as_str().and_then(|v| engine.decode(unfolded(v)).ok()) else {
            continue;
        };
        if !super::sops::looks_encrypted(&bytes) {
            continue;
        }
        let format = super::sops::Format::for_name(key);
        let plain = super::sops::decrypt_file(&bytes, format, sops)
            .map_err(|why| format!("data {key}: {why}"))?;
        *value = Value::String(engine.encode(plain));
    }
    Ok(())
}

/// Parses YAML that is not a manifest file (Helm values, a rendered chart)
/// into its non-empty documents, within the same limits. The error names
/// the document and line and never quotes the text: values may be secret.
pub fn parse_documents(text: &str, limits: &ParseLimits) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    each_document(text, limits, |value| values.push(value))?;
    Ok(values)
}

/// [`parse_documents`], handing each document to `each` as it is parsed,
/// so that a caller keeping less than the parsed value holds less.
pub fn each_document(
    text: &str,
    limits: &ParseLimits,
    mut each: impl FnMut(Value),
) -> Result<(), String> {
    let docs = documents(text);
    if counted(&docs) > limits.max_documents {
        return Err(format!("more than {} YAML documents", limits.max_documents));
    }
    let mut remaining = limits.max_expanded_bytes;
    for (index, doc) in docs.into_iter().enumerate() {
        if doc.text.trim().is_empty() {
            continue;
        }
        let too_large = || {
            format!(
                "document {index} expands past {} bytes",
                limits.max_expanded_bytes
            )
        };
        if doc.text.len() > remaining {
            return Err(too_large());
        }
        let value: Value = serde_saphyr::from_str_with_options(
            doc.text,
            parse_options(limits, doc.text.len(), remaining),
        )
        .map_err(|e| {
            let line = e.location().map_or(0, |l| l.line() as usize);
            format!(
                "document {index} (line {}): {}",
                doc.line + line.saturating_sub(1),
                without_quotes(&e.to_string())
            )
        })?;
        remaining = remaining
            .checked_sub(expanded_size(&value))
            .ok_or_else(too_large)?;
        if !value.is_null() {
            each(value);
        }
    }
    Ok(())
}

/// Parser options for one document of `len` bytes with `remaining` bytes of
/// the file's expansion budget left.
///
/// An alias replays at most one document's worth of text, so capping the
/// replayed events at `remaining / len` keeps what aliases can allocate
/// within what is left, before anything is allocated.
fn parse_options(limits: &ParseLimits, len: usize, remaining: usize) -> serde_saphyr::Options {
    let replays = (remaining / len.max(1)).min(1_000_000);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: limits.max_depth,
            flow_nesting_limit: limits.max_depth,
            max_documents: 1,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: replays,
        },
        with_snippet: false,
        crop_radius: 0,
    }
}

/// Roughly the bytes a parsed value holds: its strings and a node's overhead.
fn expanded_size(value: &Value) -> usize {
    const NODE: usize = 32;
    match value {
        Value::String(s) => NODE + s.len(),
        Value::Array(items) => NODE + items.iter().map(expanded_size).sum::<usize>(),
        Value::Object(map) => {
            NODE + map
                .iter()
                .map(|(k, v)| k.len() + expanded_size(v))
                .sum::<usize>()
        }
        _ => NODE,
    }
}

/// The parser's reason with anything it quotes from the document removed.
fn without_quotes(reason: &str) -> String {
    let first_line = reason.lines().next().unwrap_or_default();
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in first_line.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                out.push('…');
                out.push(c);
            }
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                out.push(c);
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out.chars().take(300).collect()
}

/// `v1 List`, and `…List` kinds of built-in groups (`RoleBindingList`), hold
/// objects; a custom resource whose kind ends in `List` (`IPAllowList`) is
/// one object.
fn is_list(api_version: &str, kind: &str) -> bool {
    if kind == "List" {
        return api_version == "v1";
    }
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let built_in = !group.contains('.') || group.ends_with(".k8s.io");
    kind.ends_with("List") && built_in
}

/// DNS-1123 label: what every namespace name (and container name) must be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Why a name cannot be used in a request path, if it cannot. The API server
/// applies each kind's own rules; this keeps every name one path segment.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        Some("its name is longer than 253 characters")
    } else if name == "." || name == ".." {
        Some("its name may not be . or ..")
    } else if name.contains(['/', '%']) {
        Some("its name may not contain / or %")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("its name may not contain spaces or control characters")
    } else {
        None
    }
}

fn collect(
    file: &Path,
    index: usize,
    line: usize,
    value: Value,
    out: &mut Vec<Parsed>,
) -> Result<(), ParseError> {
    let Value::Object(map) = &value else {
        return Ok(());
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    let kind = map.get("kind").and_then(Value::as_str);
    let missing = |field| ParseError::MissingField {
        file: file.to_path_buf(),
        index,
        line,
        field,
    };
    let (api_version, kind) = match (api_version, kind) {
        (None, None) => return Ok(()),
        (None, Some(_)) => return Err(missing("apiVersion")),
        (Some(_), None) => return Err(missing("kind")),
        (Some(a), Some(k)) => (a, k),
    };
    if is_list(api_version, kind) && map.get("items").is_some_and(Value::is_array) {
        let items = map
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items {
            collect(file, index, line, item, out)?;
        }
        return Ok(());
    }
    let metadata = map.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| missing("metadata.name"))?;
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let bad = |object: String, reason: &str| ParseError::BadName {
        file: file.to_path_buf(),
        index,
        line,
        object,
        reason: reason.to_string(),
    };
    if let Some(why) = name_problem(name) {
        return Err(bad(format!("{api_version} {kind} {name}"), why));
    }
    let id = ObjectRef::new(api_version, kind, namespace, name);
    if let Some(ns) = namespace
        && !is_dns_label(ns)
    {
        return Err(bad(
            id.to_string(),
            "its namespace is not a DNS label (lower-case letters, digits and -, at most 63)",
        ));
    }
    out.push(Parsed {
        file: file.to_path_buf(),
        index,
        id,
        object: value,
        built: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {

    /// Issue 19, item 16: the limit counts documents, not separators.
    #[test]
    fn exactly_the_document_limit_is_accepted_however_separated() {
        let limits = ParseLimits::default();
        let doc = |i: usize| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n");
        let docs = |n: usize| (0..n).map(doc).collect::<Vec<_>>();
        let file = Path::new("many.yaml");
        for (how, text) in [
            ("separated", docs(1000).join("---\n")),
            (
                "each opened",
                docs(1000).iter().map(|d| format!("---\n{d}")).collect(),
            ),
            ("ended then opened", docs(1000).join("...\n---\n")),
            (
                "a trailing marker",
                format!("{}---\n", docs(1000).join("---\n")),
            ),
        ] {
            let (objects, errors) = parse_file(file, &text, &limits, &Default::default());
            assert!(errors.is_empty(), "{how}: {errors:?}");
            assert_eq!(objects.len(), 1000, "{how}");
            assert_eq!(
                parse_documents(&text, &limits).unwrap().len(),
                1000,
                "{how}"
            );
        }
        let (_, errors) = parse_file(
            file,
            &docs(1001).join("---\n"),
            &limits,
            &Default::default(),
        );
        assert!(
            matches!(errors[..], [ParseError::TooManyDocuments { .. }]),
            "{errors:?}"
        );
    }

    use super::*;

    fn parse(text: &str) -> Result<Vec<Parsed>, ParseError> {
        let (manifests, mut errors) = parse_file(
            Path::new("dir/file.yaml"),
            text,
            &ParseLimits::default(),
            &Default::default(),
        );
        if errors.is_empty() {
            Ok(manifests)
        } else {
            Err(errors.remove(0))
        }
    }

    #[test]
    fn multi_document_file_keeps_indices() {
        let text = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: one
  namespace: demo
---
# only a comment
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: two
";
        let manifests = parse(text).unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0].id.to_string(), "v1 ConfigMap demo/one");
        assert_eq!(manifests[0].index, 0);
        assert_eq!(manifests[1].id.to_string(), "apps/v1 Deployment two");
        assert_eq!(manifests[1].index, 2);
    }

    #[test]
    fn list_kinds_are_expanded() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: a, namespace: x}
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: b, namespace: x}
";
        let names: Vec<String> = parse(text)
            .unwrap()
            .iter()
            .map(|m| m.id.name.clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn non_kubernetes_yaml_is_skipped() {
        assert!(
            parse("name: my-chart\nversion: 1.0.0\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse("- a\n- b\n").unwrap().is_empty());
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn missing_name_names_file_and_document() {
        let text =
            "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nkind: Secret\nmetadata: {}\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dir/file.yaml: document 0 (line 1) looks like a Kubernetes object but has no metadata.name"
        );
    }

    #[test]
    fn missing_kind_is_an_error() {
        let err = parse("apiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(
            err,
            ParseError::MissingField { field: "kind", .. }
        ));
    }

    #[test]
    fn malformed_yaml_names_document_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: [unclosed\n";
        let err = parse(text).unwrap_err();
        match err {
            ParseError::Yaml { index, line, .. } => assert_eq!((index, line), (1, 6)),
            other => panic!("expected a YAML error, got {other}"),
        }
    }

    #[test]
    fn scalars_keep_their_yaml_types() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\ndata:\n  port: \"8080\"\n  flag: \"true\"\n";
        let m = &parse(text).unwrap()[0];
        assert_eq!(m.object["data"]["port"], Value::String("8080".into()));
        assert_eq!(m.object["data"]["flag"], Value::String("true".into()));
    }

    #[test]
    fn only_built_in_lists_are_expanded() {
        let text = "apiVersion: networking.example.com/v1\nkind: IPAllowList\nmetadata: {name: office}\nitems: [10.0.0.0/8]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBindingList\nitems:\n- apiVersion: rbac.authorization.k8s.io/v1\n  kind: RoleBinding\n  metadata: {name: rb, namespace: x}\n---\napiVersion: example.com/v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n";
        let (found, errors) = parse_file(
            Path::new("l.yaml"),
            text,
            &ParseLimits::default(),
            &Default::default(),
        );
        let ids: Vec<String> = found.iter().map(|m| m.id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "networking.example.com/v1 IPAllowList office",
                "rbac.authorization.k8s.io/v1 RoleBinding x/rb",
            ]
        );
        // `kind: List` of another apiVersion is no list and has no name.
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn names_that_would_change_the_request_path_are_refused() {
        for (name, ns) in [
            ("web/status", "demo"),
            ("..", "demo"),
            ("a%2Fb", "demo"),
            ("ok", "Not_A_Label"),
            ("ok", "../kube-system"),
        ] {
            let text = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: \"{name}\", namespace: \"{ns}\"}}\n"
            );
            let err = parse(&text).unwrap_err();
            assert!(
                matches!(err, ParseError::BadName { .. }),
                "{name} {ns}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with("dir/file.yaml: document 0 (line 1): v1 ConfigMap"),
                "{err}"
            );
        }
        // RBAC names with colons are fine.
        assert!(parse("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"system:reader\"}\n").is_ok());
    }

    #[test]
    fn yaml_errors_never_quote_the_document() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData:\n  password: \"hunter2-s3cret\n  other: x: y: \"hunter2-s3cret\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.starts_with("dir/file.yaml: document 0 (line"), "{err}");
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata:\n  password: aHVudGVy\n  password: c2VjcmV0\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            !err.contains("aHVudGVy") && !err.contains("c2VjcmV0"),
            "{err}"
        );
    }

    #[test]
    fn unquoting_keeps_the_reason() {
        assert_eq!(
            without_quotes("duplicate key \"password\" at line 3"),
            "duplicate key \"…\" at line 3"
        );
        assert_eq!(without_quotes("found `abc"), "found `…");
    }
}
