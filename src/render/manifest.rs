//! Manifest parsing: the text of one YAML file in, its Kubernetes objects out.
//!
//! This is the only place that knows the YAML library. It is serde-saphyr:
//! serde_yaml is deprecated and unmaintained, and kube moved to serde-saphyr.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::object::ObjectRef;

/// One object as written in Git.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it came from, relative to the repository root.
    pub file: PathBuf,
    /// Its position among the documents of that file, from 0.
    pub index: usize,
    pub id: ObjectRef,
    pub object: Value,
}

impl Manifest {
    pub fn origin(&self) -> Origin {
        Origin {
            file: self.file.clone(),
            index: self.index,
        }
    }
}

/// Where in Git an object is written: `apps/web.yaml (document 2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub index: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.index)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("{file}: document {index} (line {line}) is not valid YAML: {reason}")]
    Yaml {
        file: PathBuf,
        index: usize,
        line: usize,
        reason: String,
    },
    #[error(
        "{file}: document {index} (line {line}) looks like a Kubernetes object but has no {field}"
    )]
    MissingField {
        file: PathBuf,
        index: usize,
        line: usize,
        field: &'static str,
    },
}

/// One YAML document of a file, with the line it starts on (from 1).
struct Document<'a> {
    line: usize,
    text: &'a str,
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

/// Returns the Kubernetes objects in one file, expanding `kind: List`.
///
/// Documents that are empty or are not Kubernetes objects at all (no
/// `apiVersion` and no `kind`) are skipped; a document that has one of them but
/// lacks the other, or lacks a name, is an error.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Manifest>, ParseError> {
    let mut manifests = Vec::new();
    for (index, doc) in documents(text).into_iter().enumerate() {
        if doc.text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc.text).map_err(|e| ParseError::Yaml {
            file: file.to_path_buf(),
            index,
            line: doc.line,
            reason: e.to_string(),
        })?;
        collect(file, index, doc.line, value, &mut manifests)?;
    }
    Ok(manifests)
}

fn collect(
    file: &Path,
    index: usize,
    line: usize,
    value: Value,
    out: &mut Vec<Manifest>,
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
    if kind == "List" || (kind.ends_with("List") && map.get("items").is_some_and(Value::is_array)) {
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
    let id = ObjectRef::new(api_version, kind, namespace, name);
    out.push(Manifest {
        file: file.to_path_buf(),
        index,
        id,
        object: value,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Manifest>, ParseError> {
        parse_file(Path::new("dir/file.yaml"), text)
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
            ParseError::Yaml { index, line, .. } => assert_eq!((index, line), (1, 5)),
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
}
