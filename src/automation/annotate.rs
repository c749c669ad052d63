//! Setting and removing an object's annotations in its file as a person
//! would, for the workload commands (`automate`, `lock`, `policy`, …):
//! an annotation that is there has its value's bytes replaced; one that is
//! not is added as a line of its own beside the others (and `annotations:`
//! under `metadata:` when there are none); one removed loses its line.
//! Everything else stays byte for byte, and the document read again must
//! equal the old one with exactly those annotations changed. Pure.

use serde_json::Value;

use super::containers::{Path, Seg};
use super::edit::{self, Edit, scalars};
use crate::render::ParseLimits;
use crate::render::manifest::{document_ranges, parse_documents};

/// An annotation to set (`Some`) or remove (`None`).
pub type Change = (String, Option<String>);

/// The file's text with document `document`'s annotations changed.
pub fn annotate(text: &str, document: usize, changes: &[Change]) -> Result<String, String> {
    let ranges = document_ranges(text);
    let Some(range) = ranges.get(document) else {
        return Err(format!("the file has no document {document}"));
    };
    let mut doc = text[range.clone()].to_string();
    for change in changes {
        doc = one(&doc, change)?;
    }
    verify(&text[range.clone()], &doc, changes)?;
    Ok(format!(
        "{}{doc}{}",
        &text[..range.start],
        &text[range.end..]
    ))
}

fn path(parts: &[&str]) -> Path {
    parts.iter().map(|p| Seg::Key(p.to_string())).collect()
}

/// One change to one document's text.
fn one(doc: &str, (key, value): &Change) -> Result<String, String> {
    let found = scalars(doc)?;
    let at = path(&["metadata", "annotations", key]);
    let existing = found.iter().find(|s| s.path == at);
    match (existing, value) {
        (Some(_), Some(value)) => edit::apply(
            doc,
            &[Edit {
                document: 0,
                path: at,
                value: value.clone(),
            }],
        ),
        (Some(s), None) => {
            let (start, end) = line_of(doc, s.range.start);
            let line = &doc[start..end];
            if !line.trim_start().starts_with(key.as_str()) {
                return Err(format!(
                    "annotation {key} is not on a line of its own: remove it by hand"
                ));
            }
            Ok(format!("{}{}", &doc[..start], &doc[end..]))
        }
        (None, None) => Ok(doc.to_string()),
        (None, Some(value)) => insert(doc, &found, key, value),
    }
}

/// Adds `key: "value"` beside the other annotations, or an `annotations:`
/// block under `metadata:`.
fn insert(doc: &str, found: &[edit::Scalar], key: &str, value: &str) -> Result<String, String> {
    let entry = format!("{key}: {}", serde_json::to_string(value).expect("strings"));
    let under = |prefix: &Path| {
        found
            .iter()
            .filter(|s| s.path.len() == prefix.len() + 1 && s.path.starts_with(prefix))
            .min_by_key(|s| s.range.start)
    };
    let (sibling, lines) = match under(&path(&["metadata", "annotations"])) {
        Some(s) => (s, vec![entry]),
        None => match under(&path(&["metadata"])) {
            Some(s) => (s, vec!["annotations:".to_string(), format!("  {entry}")]),
            None => return Err("the object has no metadata to annotate".into()),
        },
    };
    let (start, _) = line_of(doc, sibling.range.start);
    let line = &doc[start..];
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = line.trim_start_matches(' ');
    // Only a block mapping (`key: value` lines) takes a line of its own.
    let Some(Seg::Key(sibling_key)) = sibling.path.last() else {
        return Err("the annotations are not a mapping".into());
    };
    if !rest.starts_with(sibling_key.as_str()) && !rest.starts_with(['"', '\'']) {
        return Err(
            "the metadata is written in flow style ({…}): write it as lines to let tidegate edit it"
                .into(),
        );
    }
    let mut added = String::new();
    for l in lines {
        added.push_str(&" ".repeat(indent));
        added.push_str(&l);
        added.push('\n');
    }
    Ok(format!("{}{added}{}", &doc[..start], &doc[start..]))
}

/// The line holding byte `at`: its start and its end (after the newline).
fn line_of(text: &str, at: usize) -> (usize, usize) {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
    (start, end)
}

/// The document read again equals the old one with exactly the changes.
fn verify(old: &str, new: &str, changes: &[Change]) -> Result<(), String> {
    let read = |text: &str| {
        parse_documents(text, &ParseLimits::default())
            .map(|mut docs| docs.pop().unwrap_or(Value::Null))
    };
    let mut expected = read(old)?;
    for (key, value) in changes {
        let metadata = expected
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or("the object has no metadata")?;
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(annotations) = annotations.as_object_mut() else {
            return Err("metadata.annotations is not a mapping".into());
        };
        match value {
            Some(v) => {
                annotations.insert(key.clone(), Value::String(v.clone()));
            }
            None => {
                annotations.remove(key);
            }
        }
    }
    let got = read(new).map_err(|e| format!("the edited document cannot be read: {e}"))?;
    // An annotations block emptied reads as null.
    let tidy = |mut v: Value| {
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
            && m.get("annotations")
                .is_some_and(|a| a.is_null() || a.as_object().is_some_and(|o| o.is_empty()))
        {
            m.remove("annotations");
        }
        v
    };
    if tidy(got) != tidy(expected) {
        return Err(
            "editing the annotations would change more than them (an anchor, alias or odd layout): not edited"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# The web tier.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # keep me
  namespace: shop
  annotations:
    team: web
    fluxcd.io/automated: \"false\"
spec: {replicas: 1}
---
apiVersion: v1
kind: ConfigMap
metadata:
    name: plain
data: {a: b}
";

    fn set(k: &str, v: &str) -> Change {
        (k.into(), Some(v.into()))
    }

    #[test]
    fn annotations_are_set_added_and_removed_byte_for_byte() {
        let out = annotate(
            FILE,
            0,
            &[
                set("fluxcd.io/automated", "true"),
                set("fluxcd.io/tag.web", "semver:~1"),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            FILE.replace(
                "    team: web\n    fluxcd.io/automated: \"false\"",
                "    fluxcd.io/tag.web: \"semver:~1\"\n    team: web\n    fluxcd.io/automated: \"true\""
            )
        );
        let out = annotate(FILE, 0, &[("team".into(), None)]).unwrap();
        assert_eq!(out, FILE.replace("    team: web\n", ""));
        // No annotations yet: a block of them, at metadata's indentation.
        let out = annotate(FILE, 1, &[set("fluxcd.io/locked", "true")]).unwrap();
        assert_eq!(
            out,
            FILE.replace(
                "    name: plain\n",
                "    annotations:\n      fluxcd.io/locked: \"true\"\n    name: plain\n"
            )
        );
    }

    #[test]
    fn what_cannot_be_edited_safely_is_refused() {
        let flow = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
        let e = annotate(flow, 0, &[set("x", "y")]).unwrap_err();
        assert!(e.contains("flow style"), "{e}");
        let e = annotate(FILE, 5, &[set("x", "y")]).unwrap_err();
        assert!(e.contains("no document 5"), "{e}");
    }
}
