//! The marks tidegate leaves on what it applies, and reads back: the
//! ownership labels and annotations, the rules an annotation sets (ignore,
//! prune protection), and the kinds tidegate treats as its own.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use super::ObjectRef;

/// Ownership marks on every object tidegate applies.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tidegate";
pub const SYNC_SET_ANNOTATION: &str = "tidegate.dev/sync-set";
/// The sync set again, as a label: lists and watches select a set's own
/// objects by it. The annotation stays what ownership is decided by.
pub const SYNC_SET_LABEL: &str = "tidegate.dev/sync-set";
pub const CHECKSUM_ANNOTATION: &str = "tidegate.dev/checksum";
/// The instance that applied an object: `<state namespace>/<sync set>`.
/// Two instances with one sync-set name (in different namespaces) neither
/// take over nor prune each other's objects.
pub const OWNER_ANNOTATION: &str = "tidegate.dev/owner";
/// In Git, `"true"`: this instance may take the object over from another.
pub const ADOPT_ANNOTATION: &str = "tidegate.dev/adopt";
/// `"true"`: delete and recreate the object when a change cannot be applied in place.
pub const FORCE_ANNOTATION: &str = "tidegate.dev/force";
/// `disabled`: never prune the object; `force`: prune a Namespace or CRD
/// even while objects tidegate does not manage still live in it.
pub const PRUNE_ANNOTATION: &str = "tidegate.dev/prune";

/// Annotations that make tidegate leave an object alone, in Git or live.
pub const IGNORE_ANNOTATIONS: [&str; 2] = ["fluxcd.io/ignore", "tidegate.dev/ignore"];

fn ignore_value(object: &serde_json::Value) -> Option<&str> {
    IGNORE_ANNOTATIONS
        .iter()
        .find_map(|key| object["metadata"]["annotations"][key].as_str())
}

/// Flux v1's `"true"`: neither applied nor pruned.
pub fn is_ignored(object: &serde_json::Value) -> bool {
    IGNORE_ANNOTATIONS
        .iter()
        .any(|key| object["metadata"]["annotations"][key].as_str() == Some("true"))
}

/// `"true"` or Flux v1's `sync_only` (applied, never pruned): not to be pruned.
pub fn is_prune_protected(object: &serde_json::Value) -> bool {
    is_ignored(object) || ignore_value(object) == Some("sync_only")
}

/// The sync set's name as a label value, if it is a valid one (at most 63
/// letters, digits, `-`, `_`, `.`, starting and ending alphanumeric); a
/// longer name is recorded in the annotation only.
fn set_label(sync_set: &str) -> Option<&str> {
    let bytes = sync_set.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then_some(sync_set)
}

/// The label selector of the objects a sync set manages.
pub fn selector(sync_set: &str) -> String {
    match set_label(sync_set) {
        Some(set) => format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{SYNC_SET_LABEL}={set}"),
        None => format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"),
    }
}

/// The instance an object is marked for, as `mark` writes it.
pub fn owner(state_namespace: &str, sync_set: &str) -> String {
    format!("{state_namespace}/{sync_set}")
}

/// Adds the ownership marks: tidegate's label, the sync set, the checksum
/// of the object as written in Git. `marks` is the sync set's name, or the
/// instance (`<state namespace>/<sync set>`, see [`owner`]), which is then
/// recorded too.
pub fn mark(object: &mut Value, marks: &str, checksum: &str) {
    let (owner, sync_set) = match marks.split_once('/') {
        Some((_, set)) => (Some(marks), set),
        None => (None, marks),
    };
    let Some(root) = object.as_object_mut() else {
        return;
    };
    let meta = as_map(
        root.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new())),
    );
    let labels = as_map(
        meta.entry("labels")
            .or_insert_with(|| Value::Object(Map::new())),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    match set_label(sync_set) {
        Some(set) => labels.insert(SYNC_SET_LABEL.into(), set.into()),
        None => labels.remove(SYNC_SET_LABEL),
    };
    let annotations = as_map(
        meta.entry("annotations")
            .or_insert_with(|| Value::Object(Map::new())),
    );
    annotations.insert(SYNC_SET_ANNOTATION.into(), sync_set.into());
    annotations.insert(CHECKSUM_ANNOTATION.into(), checksum.into());
    if let Some(owner) = owner {
        annotations.insert(OWNER_ANNOTATION.into(), owner.into());
    }
}

/// The instance recorded on a live object, if an instance recorded one.
pub fn live_owner(live: &Value) -> Option<&str> {
    live["metadata"]["annotations"][OWNER_ANNOTATION].as_str()
}

/// The map inside `value`, replacing a non-map (e.g. `labels: null`) with an empty one.
fn as_map(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

/// Whether a live object carries this instance's marks (or, applied by an
/// earlier tidegate, this sync set's without an owner).
pub fn is_marked_for(live: &Value, sync_set: &str, owner: &str) -> bool {
    let meta = &live["metadata"];
    meta["labels"][MANAGED_BY_LABEL].as_str() == Some(MANAGED_BY_VALUE)
        && meta["annotations"][SYNC_SET_ANNOTATION].as_str() == Some(sync_set)
        && live_owner(live).is_none_or(|o| o == owner)
}

/// Metadata for the objects tidegate keeps for itself (state, deploy key).
pub fn own_metadata(name: String, namespace: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(
            [(
                "app.kubernetes.io/part-of".to_string(),
                "tidegate".to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    }
}

/// Flux v1's `HelmRelease`: `helm.fluxcd.io/v1`.
pub const HELM_RELEASE_GROUP: &str = "helm.fluxcd.io";
pub const HELM_RELEASE_KIND: &str = "HelmRelease";

pub fn is_helm_release(id: &ObjectRef) -> bool {
    is_helm_release_kind(&id.group, &id.kind)
}

pub fn is_helm_release_kind(group: &str, kind: &str) -> bool {
    group == HELM_RELEASE_GROUP && kind == HELM_RELEASE_KIND
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_sync_set_label_is_set_only_when_the_name_is_a_label_value() {
        assert_eq!(
            selector("prod"),
            "app.kubernetes.io/managed-by=tidegate,tidegate.dev/sync-set=prod"
        );
        let long = "a".repeat(64);
        for name in [long.as_str(), "-prod", "prod.", "a:b", ""] {
            assert_eq!(
                selector(name),
                "app.kubernetes.io/managed-by=tidegate",
                "{name}"
            );
            let mut object = json!({"metadata": {"name": "c"}});
            mark(&mut object, name, "abc");
            assert!(object["metadata"]["labels"].get(SYNC_SET_LABEL).is_none());
            assert_eq!(object["metadata"]["annotations"][SYNC_SET_ANNOTATION], name);
        }
        assert_eq!(set_label("team-a_1.prod"), Some("team-a_1.prod"));
    }
}
