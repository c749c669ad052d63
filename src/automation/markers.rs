//! Flux v2's setter markers: a comment after a value on its line,
//! `# {"$imagepolicy": "<namespace>:<name>"}`, says the value is the image
//! an `ImagePolicy` chooses; `…:tag` sets the tag alone, `…:name` the
//! repository alone. Found in any YAML file, in any document, by the
//! line the value is on (kustomize `images:` entries included). Pure.

use super::containers::Path;
use super::edit;
use crate::render::manifest::{document_ranges, is_dns_label};

const KEY: &str = "$imagepolicy";

/// What of the image a marked value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `repository:tag`
    Whole,
    Tag,
    Name,
}

/// One marked value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setter {
    pub document: usize,
    /// 1-based, in the file.
    pub line: usize,
    pub path: Path,
    pub namespace: String,
    pub name: String,
    pub field: Field,
}

/// A marker that cannot be used, by the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The setters of a file, and the markers that cannot be read.
pub fn setters(text: &str) -> (Vec<Setter>, Vec<MarkerError>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    if !text.contains(KEY) {
        return (found, errors);
    }
    for (document, range) in document_ranges(text).into_iter().enumerate() {
        let doc = &text[range.clone()];
        if !doc.contains(KEY) {
            continue;
        }
        let first_line = text[..range.start].matches('\n').count() + 1;
        let scalars = match edit::scalars(doc) {
            Ok(s) => s,
            Err(reason) => {
                errors.push(MarkerError {
                    line: first_line,
                    reason: format!("the document with $imagepolicy markers {reason}"),
                });
                continue;
            }
        };
        let mut start = 0;
        for (n, line) in doc.split_inclusive('\n').enumerate() {
            let line_start = start;
            start += line.len();
            let Some(comment) = marker_comment(line) else {
                continue;
            };
            // A `#` inside a value (a quoted or block string) is no comment.
            let comment_at = line_start + comment;
            if scalars.iter().any(|s| s.range.contains(&comment_at)) {
                continue;
            }
            let at = first_line + n;
            let marker = match parse_marker(&line[comment + 1..]) {
                Ok(m) => m,
                Err(reason) => {
                    errors.push(MarkerError { line: at, reason });
                    continue;
                }
            };
            // The value the comment follows: a scalar that ends on this
            // line before the comment.
            let value = scalars
                .iter()
                .filter(|s| s.range.end <= comment_at && s.range.end >= line_start)
                .filter(|s| !doc[s.range.start..s.range.end].contains('\n'))
                .max_by_key(|s| s.range.end);
            let Some(value) = value else {
                errors.push(MarkerError {
                    line: at,
                    reason: format!(
                        "the {KEY} marker follows no value on its line: write it after the image it sets"
                    ),
                });
                continue;
            };
            found.push(Setter {
                document,
                line: at,
                path: value.path.clone(),
                namespace: marker.0,
                name: marker.1,
                field: marker.2,
            });
        }
    }
    (found, errors)
}

/// Where the marker's `#` is on a line, if the line carries one (a line
/// that is all comment, something commented out, carries none).
fn marker_comment(line: &str) -> Option<usize> {
    if !line.contains(KEY) || line.trim_start().starts_with('#') {
        return None;
    }
    line.match_indices('#')
        .map(|(i, _)| i)
        .find(|&i| line[i + 1..].trim_start().starts_with('{') && line[i..].contains(KEY))
}

fn parse_marker(comment: &str) -> Result<(String, String, Field), String> {
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(comment.trim())
        .map_err(|e| format!("the {KEY} marker is not a JSON object ({e})"))?;
    let Some(value) = json.get(KEY).and_then(|v| v.as_str()) else {
        return Err(format!(
            "the marker has no string {KEY:?}: write {{\"{KEY}\": \"<namespace>:<name>\"}}"
        ));
    };
    let parts: Vec<&str> = value.split(':').collect();
    let field = match parts.get(2).copied() {
        None => Field::Whole,
        Some("tag") => Field::Tag,
        Some("name") => Field::Name,
        Some(other) => {
            return Err(format!(
                "{KEY} {value:?}: {other:?} is not a field; write :tag, :name or nothing"
            ));
        }
    };
    // Names as Kubernetes has them: nothing else is shown or looked up.
    let named = |ns: &str, name: &str| {
        is_dns_label(ns) && name.len() <= 253 && name.split('.').all(is_dns_label)
    };
    match parts.as_slice() {
        [ns, name, ..] if parts.len() <= 3 && named(ns, name) => {
            Ok((ns.to_string(), name.to_string(), field))
        }
        _ => Err(format!(
            "{KEY} {value:?} is not <namespace>:<name>[:tag|:name]"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automation::containers::Seg;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    #[test]
    fn markers_set_the_value_on_their_line_in_any_document() {
        let text = r#"# {"$imagepolicy": "shop:commented"} is no marker here
apiVersion: v1
kind: ConfigMap
---
apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      containers:
      - name: web
        image: "reg.io/web:1.0" # {"$imagepolicy": "shop:web"}
      # image: reg.io/old:1 # {"$imagepolicy": "shop:old"}
---
images:
- name: api
  newName: reg.io/api # {"$imagepolicy": "shop:api:name"}
  newTag: 1.2.0   #   {"$imagepolicy": "shop:api:tag"}
"#;
        let (found, errors) = setters(text);
        assert!(errors.is_empty(), "{errors:?}");
        let shown: Vec<(usize, usize, &str, Field)> = found
            .iter()
            .map(|s| (s.document, s.line, s.name.as_str(), s.field))
            .collect();
        assert_eq!(
            shown,
            [
                (1, 12, "web", Field::Whole),
                (2, 17, "api", Field::Name),
                (2, 18, "api", Field::Tag)
            ]
        );
        assert_eq!(
            found[0].path,
            [
                key("spec"),
                key("template"),
                key("spec"),
                key("containers"),
                Seg::Index(0),
                key("image")
            ]
        );
        assert_eq!(found[2].path, [key("images"), Seg::Index(0), key("newTag")]);
    }

    #[test]
    fn a_marker_that_cannot_be_used_is_named_by_its_line() {
        let text = r#"a: 1 # {"$imagepolicy": shop:web}
b: 2 # {"$imagepolicy": "shop"}
c: 3 # {"$imagepolicy": "shop:web:digest"}
d:   # {"$imagepolicy": "shop:web"}
  e: 4
f: 5 # {"$imagepolicy": "shop:web"}
g: 'a string
  with # {"$imagepolicy": "shop:web"} in it'
h: 6 # {"$imagepolicy": "shop:we\u001b[31mb"}
"#;
        let (found, errors) = setters(text);
        let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(reasons[0].starts_with("line 1: the $imagepolicy marker is not a JSON object"));
        assert!(reasons[1].contains("line 2") && reasons[1].contains("<namespace>:<name>"));
        assert!(reasons[2].contains("\"digest\" is not a field"));
        assert!(reasons[3].starts_with("line 4: the $imagepolicy marker follows no value"));
        // Names as Kubernetes has them: no escape sequence reaches a log.
        assert!(
            reasons[4].starts_with("line 9: ") && reasons[4].contains("<namespace>:<name>"),
            "{reasons:?}"
        );
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].line, &found[0].path), (6, &vec![key("f")]));
    }
}
