//! Object refs (the group/version/kind/namespace/name that identify one
//! object), and objects held as compact JSON text.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A path as printed: escaped, so a name holding a newline or a control
/// character cannot forge a line of a log or of `tidegate status`.
pub fn shown(path: &std::path::Path) -> String {
    String::from_utf8_lossy(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects, and for namespaced objects before
    /// the default namespace is filled in.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        ObjectRef {
            group,
            version,
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// `apps/v1 Deployment demo/web`, or `v1 Namespace demo` when cluster-scoped.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.api_version(), self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// An object held as its compact JSON text, shared: a fraction of the
/// memory of a parsed value (whose every map and string is an allocation of
/// its own). A desired set of thousands of objects is held so between syncs,
/// and parsed one object at a time where a field is read; an apply sends the
/// text as it is.
#[derive(Clone)]
pub struct Json(Arc<RawValue>);

impl Json {
    pub fn new(value: &Value) -> Json {
        Json(Arc::from(
            serde_json::value::to_raw_value(value).expect("values serialize"),
        ))
    }

    /// The object parsed.
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("the text of a value parses")
    }

    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// Whether both are the same shared text, not a copy.
    pub fn ptr_eq(a: &Json, b: &Json) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.text() == other.text()
    }
}

/// Its size only: an object may be a Secret.
impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({} bytes)", self.text().len())
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_the_object_and_serializes_as_it() {
        let value = serde_json::json!({"kind": "ConfigMap", "data": {"b": "2", "a": "1"}});
        let json = Json::new(&value);
        assert_eq!(json.value(), value);
        assert_eq!(
            json.text(),
            r#"{"kind":"ConfigMap","data":{"b":"2","a":"1"}}"#
        );
        assert_eq!(serde_json::to_string(&json).unwrap(), json.text());
        assert_eq!(
            format!("{json:?}"),
            format!("Json({} bytes)", json.text().len())
        );
        let shared = json.clone();
        assert!(Json::ptr_eq(&json, &shared));
        assert!(!Json::ptr_eq(&json, &Json::new(&value)));
    }

    #[test]
    fn display_core_and_grouped() {
        let cm = ObjectRef::new("v1", "ConfigMap", Some("demo"), "settings");
        assert_eq!(cm.to_string(), "v1 ConfigMap demo/settings");
        assert_eq!(cm.group, "");
        let ns = ObjectRef::new(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "reader",
        );
        assert_eq!(
            ns.to_string(),
            "rbac.authorization.k8s.io/v1 ClusterRole reader"
        );
        assert_eq!(ns.group, "rbac.authorization.k8s.io");
    }

    #[test]
    fn shown_paths_cannot_forge_a_line() {
        assert_eq!(
            shown(std::path::Path::new("a\nresult: succeeded.yaml")),
            "a\\nresult: succeeded.yaml"
        );
        assert_eq!(shown(std::path::Path::new("ok/ü.yaml")), "ok/ü.yaml");
    }
}
