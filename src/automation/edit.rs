//! Editing a YAML file as a person would: only the bytes of the scalars
//! that change are replaced, in their own quoting; comments, key order,
//! blank lines and every other document stay byte for byte. Each edited
//! document is read again and must equal the old one with only those
//! fields changed, or nothing is written. Pure.

use std::ops::Range;

use serde_json::Value;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

use super::containers::{Path, Seg, shown};
use crate::render::ParseLimits;
use crate::render::manifest::{document_ranges, parse_documents};

/// One scalar to set: in document `document` of the file (as `render`
/// counts them), at `path`, to the string `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub document: usize,
    pub path: Path,
    pub value: String,
}

/// What an object is, whatever its API version: kind, namespace, name.
pub type Identity = (String, Option<String>, String);

/// The identity of an object as parsed.
pub fn identity_of(object: &Value) -> Option<Identity> {
    let meta = &object["metadata"];
    Some((
        object["kind"].as_str()?.to_string(),
        meta["namespace"].as_str().map(str::to_string),
        meta["name"].as_str()?.to_string(),
    ))
}

/// The identity of the object document `document` of `text` declares.
pub fn identity(text: &str, document: usize) -> Option<Identity> {
    let range = document_ranges(text).into_iter().nth(document)?;
    let mut docs = parse_documents(&text[range], &ParseLimits::default()).ok()?;
    identity_of(&docs.pop()?)
}

/// The file's text with the edits made, or why it cannot be edited safely.
pub fn apply(text: &str, edits: &[Edit]) -> Result<String, String> {
    let ranges = document_ranges(text);
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (index, range) in ranges.iter().enumerate() {
        let mine: Vec<&Edit> = edits.iter().filter(|e| e.document == index).collect();
        if mine.is_empty() {
            continue;
        }
        out.push_str(&text[done..range.start]);
        out.push_str(
            &edit_document(&text[range.clone()], &mine)
                .map_err(|e| format!("document {index}: {e}"))?,
        );
        done = range.end;
    }
    if let Some(missing) = edits.iter().find(|e| e.document >= ranges.len()) {
        return Err(format!("the file has no document {}", missing.document));
    }
    out.push_str(&text[done..]);
    Ok(out)
}

fn edit_document(text: &str, edits: &[&Edit]) -> Result<String, String> {
    let scalars = scalars(text)?;
    let mut replacements: Vec<(Range<usize>, String)> = Vec::new();
    for edit in edits {
        let Some(found) = scalars.iter().find(|s| s.path == edit.path) else {
            return Err(format!(
                "{} is not a plain value of the document (missing, or reached through an alias)",
                shown(&edit.path)
            ));
        };
        if found.anchored {
            return Err(format!(
                "{} is anchored (&) and may be used elsewhere: not edited",
                shown(&edit.path)
            ));
        }
        replacements.push((
            found.range.clone(),
            written(&edit.value, found.style, &edit.path)?,
        ));
    }
    replacements.sort_by_key(|(r, _)| r.start);
    // Two changes of one value (a workload automated both ways): one if
    // they agree, else neither.
    replacements.dedup();
    if replacements.windows(2).any(|w| w[1].0.start < w[0].0.end) {
        return Err("two changes of the same value disagree: not edited".into());
    }
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (range, with) in &replacements {
        out.push_str(&text[done..range.start]);
        out.push_str(with);
        done = range.end;
    }
    out.push_str(&text[done..]);
    verify(text, &out, edits)?;
    Ok(out)
}

/// A scalar value of the document, where it is.
pub(super) struct Scalar {
    pub(super) path: Path,
    pub(super) range: Range<usize>,
    style: ScalarStyle,
    /// It, or a collection above it, carries an anchor.
    anchored: bool,
}

/// Where the parser is: in a mapping (the key of the next value, if one is
/// read) or a sequence (the next index).
enum Frame {
    Map { key: Option<String>, anchored: bool },
    Seq { next: usize, anchored: bool },
}

/// Every scalar value of one document with its path.
pub(super) fn scalars(text: &str) -> Result<Vec<Scalar>, String> {
    let mut found = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Path = Vec::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| format!("cannot be parsed: {e}"))?;
        let inherited = stack.last().is_some_and(|f| match f {
            Frame::Map { anchored, .. } | Frame::Seq { anchored, .. } => *anchored,
        });
        match event {
            Event::Scalar(value, style, anchor, _) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = stack.last_mut()
                {
                    *key = Some(value.into_owned());
                    continue;
                }
                let Some(seg) = child(&mut stack) else {
                    continue;
                };
                let mut at = path.clone();
                at.push(seg);
                if let Some(range) = span.byte_range() {
                    found.push(Scalar {
                        path: at,
                        range,
                        style,
                        anchored: inherited || anchor != 0,
                    });
                }
            }
            Event::MappingStart(_, anchor, _) | Event::SequenceStart(_, anchor, _) => {
                let is_map = matches!(event, Event::MappingStart(..));
                if let Some(seg) = child(&mut stack) {
                    path.push(seg);
                } else if !stack.is_empty() {
                    // A collection as a key: its contents have no path.
                    path.push(Seg::Key("\u{0}".into()));
                }
                let anchored = inherited || anchor != 0;
                stack.push(match is_map {
                    true => Frame::Map {
                        key: None,
                        anchored,
                    },
                    false => Frame::Seq { next: 0, anchored },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                path.pop();
            }
            Event::Alias(_) => {
                child(&mut stack);
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The path step of the next value in the innermost collection, moving it
/// on; `None` at the top or for a key.
fn child(stack: &mut [Frame]) -> Option<Seg> {
    match stack.last_mut()? {
        Frame::Map { key, .. } => key.take().map(Seg::Key),
        Frame::Seq { next, .. } => {
            *next += 1;
            Some(Seg::Index(*next - 1))
        }
    }
}

/// `value` written in the scalar's own style, or double-quoted when plain
/// would read back as something else (a number, `true`, `null`, …).
fn written(value: &str, style: ScalarStyle, path: &Path) -> Result<String, String> {
    match style {
        ScalarStyle::Plain if reads_as_string(value) => Ok(value.to_string()),
        ScalarStyle::Plain | ScalarStyle::DoubleQuoted => {
            Ok(serde_json::to_string(value).expect("strings serialize"))
        }
        ScalarStyle::SingleQuoted => Ok(format!("'{}'", value.replace('\'', "''"))),
        _ => Err(format!(
            "{} is a block scalar (| or >): not edited",
            shown(path)
        )),
    }
}

/// Whether `value` as a plain scalar reads back as that very string.
fn reads_as_string(value: &str) -> bool {
    let safe = !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@' | b'+')
        })
        && !value.starts_with(['-', ':', '@'])
        && !value.contains(": ");
    safe && serde_saphyr::from_str::<Value>(value).is_ok_and(|v| v == Value::String(value.into()))
}

/// The document read again equals the old one with exactly the edits.
fn verify(old: &str, new: &str, edits: &[&Edit]) -> Result<(), String> {
    let read = |text: &str| {
        parse_documents(text, &ParseLimits::default())
            .map(|mut docs| docs.pop().unwrap_or(Value::Null))
    };
    let mut expected = read(old)?;
    for edit in edits {
        let Some(slot) = at_mut(&mut expected, &edit.path) else {
            return Err(format!("{} is not in the document", shown(&edit.path)));
        };
        *slot = Value::String(edit.value.clone());
    }
    let got = read(new).map_err(|e| format!("the edited document cannot be read: {e}"))?;
    if got != expected {
        return Err(
            "editing it would change more than the image (an anchor, alias or merge key shares the value): not edited"
                .into(),
        );
    }
    Ok(())
}

fn at_mut<'a>(value: &'a mut Value, path: &Path) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Path {
        text.split('.')
            .map(|p| match p.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(p.into()),
            })
            .collect()
    }

    fn edit(document: usize, at: &str, value: &str) -> Edit {
        Edit {
            document,
            path: path(at),
            value: value.into(),
        }
    }

    const FILE: &str = "\
# The shop's web tier.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # keep me
  annotations:
    fluxcd.io/automated: \"true\"
spec:
  template:
    spec:
      containers:
        - name: web
          image: nginx:1.25   # pinned by automation


        - name: side
          image: 'reg.io/side:1.0'
      initContainers:
      - {name: init, image: \"busybox:1.36\"}
---
# second document, untouched
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data:
  image: nginx:1.25
";

    #[test]
    fn two_changes_of_one_value_are_one_if_they_agree_and_none_if_not() {
        let text = "image: reg.io/web:1\n";
        let e = |v: &str| edit(0, "image", v);
        assert_eq!(
            apply(text, &[e("reg.io/web:2"), e("reg.io/web:2")]).unwrap(),
            "image: reg.io/web:2\n"
        );
        let err = apply(text, &[e("reg.io/web:2"), e("reg.io/web:3")]).unwrap_err();
        assert!(err.contains("disagree"), "{err}");
    }

    #[test]
    fn only_the_image_bytes_change_in_each_quoting() {
        let out = apply(
            FILE,
            &[
                edit(0, "spec.template.spec.containers.0.image", "nginx:1.26"),
                edit(
                    0,
                    "spec.template.spec.containers.1.image",
                    "reg.io/side:1.1",
                ),
                edit(
                    0,
                    "spec.template.spec.initContainers.0.image",
                    "busybox:1.37",
                ),
            ],
        )
        .unwrap();
        let expected = FILE
            .replacen("image: nginx:1.25   #", "image: nginx:1.26   #", 1)
            .replace("'reg.io/side:1.0'", "'reg.io/side:1.1'")
            .replace("\"busybox:1.36\"", "\"busybox:1.37\"");
        assert_eq!(out, expected);
        assert!(
            out.ends_with("data:\n  image: nginx:1.25\n"),
            "the other document is untouched"
        );
    }

    #[test]
    fn a_value_that_plain_would_misread_is_quoted() {
        let text = "values:\n  tag: v1.0\n";
        let out = apply(text, &[edit(0, "values.tag", "1.10")]).unwrap();
        assert_eq!(out, "values:\n  tag: \"1.10\"\n");
        let out = apply(text, &[edit(0, "values.tag", "1.2.3")]).unwrap();
        assert_eq!(out, "values:\n  tag: 1.2.3\n");
    }

    #[test]
    fn anchors_aliases_and_missing_paths_are_refused() {
        let anchored = "a: &img nginx:1.25\nb: *img\n";
        let err = apply(anchored, &[edit(0, "a", "nginx:1.26")]).unwrap_err();
        assert!(err.contains("anchored"), "{err}");
        let err = apply(anchored, &[edit(0, "b", "nginx:1.26")]).unwrap_err();
        assert!(err.contains("alias"), "{err}");
        let merged = "base: &base {image: nginx:1.25}\nweb:\n  <<: *base\n";
        assert!(apply(merged, &[edit(0, "base.image", "nginx:1.26")]).is_err());
        let err = apply("a: 1\n", &[edit(0, "b", "x")]).unwrap_err();
        assert!(err.contains("b is not"), "{err}");
        assert!(
            apply("a: |\n  text\n", &[edit(0, "a", "x")])
                .unwrap_err()
                .contains("block scalar")
        );
        assert!(
            apply("a: 1\n", &[edit(3, "a", "x")])
                .unwrap_err()
                .contains("no document 3")
        );
    }

    #[test]
    fn documents_are_counted_as_render_counts_them() {
        let text = "---\n---\na: x\n---\nb: y\n";
        let out = apply(text, &[edit(2, "a", "z")]).unwrap();
        assert_eq!(out, "---\n---\na: z\n---\nb: y\n");
    }
}
