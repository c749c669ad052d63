//! Plan: desired objects and live state in, what a sync would do out. Pure: no
//! I/O, so every rule here is tested without a cluster.
//!
//! Also the comparison and diff helpers: normalizing objects (no server-owned
//! fields), masking Secret values, unified diffs.

use serde::Serialize;
use serde_json::Value;

use crate::model::marks::{
    ADOPT_ANNOTATION, FORCE_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PRUNE_ANNOTATION,
    SYNC_SET_ANNOTATION, is_prune_protected, live_owner, mark,
};
use crate::model::{Inventory, Json, ObjectRef};
use crate::render::{Manifest, Origin};

/// A desired object placed in the cluster: namespace resolved, marks added.
#[derive(Debug, Clone)]
pub struct Desired {
    pub id: ObjectRef,
    pub origin: Origin,
    /// The object as sent to the API server.
    pub object: Json,
    pub checksum: String,
    pub stage: Stage,
}

impl Desired {
    pub fn force_recreate(&self) -> bool {
        self.object.value()["metadata"]["annotations"][FORCE_ANNOTATION].as_str() == Some("true")
    }
}

/// What a plan knows of a live object.
#[derive(Debug, Clone)]
pub enum Seen {
    /// Read, or kept whole by the watches (a HelmRelease).
    Object(Value),
    /// Known from the watches by its resource version.
    Version(String),
}

impl Seen {
    pub fn object(&self) -> Option<&Value> {
        match self {
            Seen::Object(object) => Some(object),
            Seen::Version(_) => None,
        }
    }

    pub fn resource_version(&self) -> Option<&str> {
        match self {
            Seen::Object(object) => object["metadata"]["resourceVersion"].as_str(),
            Seen::Version(version) => Some(version),
        }
    }
}

/// Apply order; pruning runs in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Stage {
    CustomResourceDefinitions,
    Namespaces,
    ClusterScoped,
    ServiceAccounts,
    Rbac,
    Config,
    Services,
    Workloads,
    AdmissionWebhooks,
}

impl Stage {
    pub fn of(id: &ObjectRef, namespaced: bool) -> Stage {
        match (id.group.as_str(), id.kind.as_str()) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                Stage::CustomResourceDefinitions
            }
            ("", "Namespace") => Stage::Namespaces,
            ("admissionregistration.k8s.io", _) => Stage::AdmissionWebhooks,
            _ if !namespaced => Stage::ClusterScoped,
            ("", "ServiceAccount") => Stage::ServiceAccounts,
            ("rbac.authorization.k8s.io", _) => Stage::Rbac,
            (
                "",
                "ConfigMap" | "Secret" | "PersistentVolumeClaim" | "LimitRange" | "ResourceQuota",
            ) => Stage::Config,
            ("", "Service") => Stage::Services,
            _ => Stage::Workloads,
        }
    }
}

/// Adds the namespace and ownership marks to a rendered object. One marked
/// for `sync_set` when rendered (`marked_for`) whose namespace is as wanted
/// is shared, not copied: the desired set is held once.
pub fn place(m: &Manifest, marked_for: Option<&str>, id: &ObjectRef, sync_set: &str) -> Json {
    if marked_for == Some(sync_set) && m.id.namespace == id.namespace {
        return m.object.clone();
    }
    let mut object = m.object.value();
    mark(&mut object, sync_set, &m.checksum);
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        match &id.namespace {
            Some(ns) => meta.insert("namespace".into(), ns.clone().into()),
            None => meta.remove("namespace"),
        };
    }
    Json::new(&object)
}

/// Why an object may not be applied: another instance owns it and Git does
/// not ask to adopt it. Objects marked before owners were recorded have
/// none, and are taken as before.
pub fn owner_conflict(theirs: Option<&str>, ours: &str, desired: &Json) -> Option<String> {
    let theirs = theirs.filter(|t| *t != ours)?;
    let adopt =
        desired.value()["metadata"]["annotations"][ADOPT_ANNOTATION].as_str() == Some("true");
    (!adopt).then(|| {
        format!(
            "owned by another tidegate instance ({theirs}; this one is {ours}), so neither applied nor pruned; \
             to move it here, annotate it {ADOPT_ANNOTATION}: \"true\" in Git"
        )
    })
}

/// True when every field of `desired` is in `live` with the same value:
/// applying it would change nothing that tidegate sets.
///
/// Fields the server adds (defaults, status) are ignored; a field that tidegate
/// set and someone changed is drift. A false "no" only costs an apply that
/// the server turns into a no-op.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            // Empty values in Git are dropped by the server.
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::Number(d), Value::Number(l)) => d.as_f64() == l.as_f64(),
        (Value::Null, _) => true,
        _ => desired == live,
    }
}

/// True when applying `desired` would change nothing in `live`. Like
/// [`is_subset`], and a Secret's `stringData` is compared with the `data` the
/// server keeps it in.
pub fn is_unchanged(id: &ObjectRef, desired: &Value, live: &Value) -> bool {
    let Some(string_data) = desired.get("stringData").and_then(Value::as_object) else {
        return is_subset(desired, live);
    };
    if !(id.group.is_empty() && id.kind == "Secret") {
        return is_subset(desired, live);
    }
    use base64::Engine as _;
    let encoded_matches = string_data.iter().all(|(k, v)| {
        let encoded = v
            .as_str()
            .map(|s| base64::engine::general_purpose::STANDARD.encode(s));
        encoded.is_some() && live["data"][k].as_str() == encoded.as_deref()
    });
    let mut rest = desired.clone();
    rest.as_object_mut()
        .expect("an object")
        .remove("stringData");
    encoded_matches && is_subset(&rest, live)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Strips what the server owns and what changes on every write, so two
/// objects compare (and diff) on what a user wrote.
pub fn normalize(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(root) = object.as_object_mut() {
        root.remove("status");
        if let Some(Value::Object(meta)) = root.get_mut("metadata") {
            for key in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.remove(key);
            }
            if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
                annotations.remove("deployment.kubernetes.io/revision");
                if annotations.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    object
}

/// Replaces Secret values so a diff shows which keys changed, never what
/// they hold: `data` and `stringData`, and annotations that carry a copy of
/// the object (`kubectl.kubernetes.io/last-applied-configuration`).
pub fn mask_secrets(id: &ObjectRef, live: &mut Value, desired: &mut Value) {
    if !(id.group.is_empty() && id.kind == "Secret") {
        return;
    }
    fn mask(values: &mut Value, other: &Value, changed_mark: &str, is_copy: fn(&Value) -> bool) {
        let Some(values) = values.as_object_mut() else {
            return;
        };
        for (k, v) in values.iter_mut() {
            if !is_copy(v) {
                continue;
            }
            *v = Value::String(if other.get(k) == Some(v) {
                "(masked)".to_string()
            } else {
                format!("(masked, {changed_mark})")
            });
        }
    }
    let every = |_: &Value| true;
    let embedded = |v: &Value| v.as_str().is_some_and(|t| t.trim_start().starts_with('{'));
    for (path, is_copy) in [
        ("/data", every as fn(&Value) -> bool),
        ("/stringData", every),
        ("/metadata/annotations", embedded),
    ] {
        let old = live.pointer(path).cloned().unwrap_or(Value::Null);
        let new = desired.pointer(path).cloned().unwrap_or(Value::Null);
        if let Some(values) = live.pointer_mut(path) {
            mask(values, &new, "old value", is_copy);
        }
        if let Some(values) = desired.pointer_mut(path) {
            mask(values, &old, "new value", is_copy);
        }
    }
}

/// YAML text of an object, its keys in the object's order, for diffs.
pub fn to_yaml(object: &Value) -> String {
    serde_saphyr::to_string(object)
        .unwrap_or_else(|_| serde_json::to_string_pretty(object).unwrap_or_default())
}

/// Unified diff of two texts, or `None` if they are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let diff = similar::TextDiff::from_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(old_name, new_name)
            .to_string(),
    )
}

/// The diff between a live object and what applying the desired one gives,
/// both normalized, Secret values masked.
pub fn object_diff(id: &ObjectRef, live: Option<&Value>, after: &Value) -> Option<String> {
    let mut after = normalize(after);
    let mut live = live.map(normalize).unwrap_or(Value::Null);
    // Git's order and the server's differ; a diff shows values, not order.
    after.sort_all_objects();
    live.sort_all_objects();
    mask_secrets(id, &mut live, &mut after);
    let old = if live.is_null() {
        String::new()
    } else {
        to_yaml(&live)
    };
    unified_diff(
        &old,
        &to_yaml(&after),
        &format!("live/{id}"),
        &format!("desired/{id}"),
    )
}

/// Why a Secret may not come from Git: Helm's own release records (type
/// `helm.sh/release.v1`, or labelled `owner: helm`) would let a push forge
/// a release's history, which helm then upgrades, rolls back or uninstalls
/// with tidegate's credentials.
pub fn helm_record_refusal(id: &ObjectRef, object: &Value) -> Option<&'static str> {
    let secret = id.group.is_empty() && id.kind == "Secret";
    let record = object["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("helm.sh/release"))
        || object["metadata"]["labels"]["owner"].as_str() == Some("helm");
    (secret && record).then_some(
        "a Helm release record (type helm.sh/release.v1 or label owner=helm) may not come from Git: only helm writes them",
    )
}

/// Why an object may not be applied under `--k8s-allow-namespace`, if it
/// may not. An empty list allows every namespace and cluster-scoped objects.
pub fn namespace_refusal(id: &ObjectRef, allowed: &[String]) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    match &id.namespace {
        None => Some(
            "it is cluster-scoped, and --k8s-allow-namespace limits tidegate to namespaced objects"
                .to_string(),
        ),
        Some(ns) if !allowed.contains(ns) => Some(format!(
            "namespace {ns} is not allowed (--k8s-allow-namespace: {})",
            allowed.join(", ")
        )),
        Some(_) => None,
    }
}

/// The change for one placed object: refused when another instance owns
/// the live object (and Git does not ask to adopt it), else as
/// [`classify`] says. `owner` is this instance, when it records one.
pub fn decide(
    desired: &Desired,
    live: Option<&Value>,
    known_absent: bool,
    owner: Option<&str>,
) -> Option<Change> {
    let conflict = live
        .zip(owner)
        .and_then(|(l, ours)| owner_conflict(live_owner(l), ours, &desired.object));
    match conflict {
        Some(reason) => Some(Change::Invalid { reason }),
        None => classify(desired, live, known_absent),
    }
}

/// What to do with one placed object given what the cluster holds: `None`
/// when the live object could not be read (and is not known to be absent).
/// An object annotated `ignore: "true"` in the cluster is left alone;
/// `sync_only` is applied like any other.
pub fn classify(desired: &Desired, live: Option<&Value>, known_absent: bool) -> Option<Change> {
    Some(match live {
        None if known_absent => Change::Create,
        None => return None,
        Some(l) if crate::model::marks::is_ignored(l) => Change::Ignored,
        Some(l) if is_unchanged(&desired.id, &desired.object.value(), l) => Change::Unchanged,
        Some(_) => Change::Update,
    })
}

/// What a sync would do to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum Change {
    Create,
    Update,
    Unchanged,
    /// Annotated to be left alone in the cluster.
    Ignored,
    Invalid {
        reason: String,
    },
}

/// What the prune decision needs to know about one sync. Plain data, so
/// every guard is tested without a cluster.
#[derive(Debug, Clone, Copy)]
pub struct PruneInput<'a> {
    /// What the last successful syncs applied.
    pub inventory: &'a Inventory,
    /// Every object the render produced, as written in Git (a namespaced
    /// object may have no namespace yet), ignored ones and ones that failed
    /// to place included.
    pub in_git: &'a [&'a ObjectRef],
    /// Where namespaced objects without a namespace are placed.
    pub default_namespace: &'a str,
    /// False when any file or document failed to render.
    pub clean_render: bool,
    /// `--sync-garbage-collection-allow-empty`.
    pub allow_empty: bool,
}

/// Which inventory entries a sync may prune, in prune order, or why it may
/// prune none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrunePlan {
    pub prune: Vec<ObjectRef>,
    /// Set when nothing may be pruned at all; the sync fails with it.
    pub blocked: Option<String>,
}

/// Whether a Git object `written` (namespace as written) is the inventory
/// entry `id`. A namespaced object without a namespace is placed in the
/// default namespace, so it stands for exactly that object, not for
/// same-named objects in every namespace.
fn same_object(written: &ObjectRef, id: &ObjectRef, default_namespace: &str) -> bool {
    written.group == id.group
        && written.kind == id.kind
        && written.name == id.name
        && match (&written.namespace, &id.namespace) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            (None, Some(b)) => b == default_namespace,
            (Some(_), None) => false,
        }
}

/// Decides what to prune: inventory entries that Git no longer has, in the
/// reverse of apply order (namespaced objects first, CRDs last). Nothing at
/// all after an unclean render (the broken file may hold objects that are
/// still wanted) or when Git renders nothing while the inventory holds
/// objects (an emptied repository or a wrong path), unless allowed.
pub fn prune_plan(input: PruneInput<'_>) -> PrunePlan {
    if input.inventory.is_empty() {
        return PrunePlan::default();
    }
    if !input.clean_render {
        return PrunePlan {
            prune: Vec::new(),
            blocked: Some(
                "some manifests could not be rendered, so nothing was pruned: \
                 they may hold objects that are still wanted; fix them and the next sync prunes"
                    .into(),
            ),
        };
    }
    if input.in_git.is_empty() && !input.allow_empty {
        return PrunePlan {
            prune: Vec::new(),
            blocked: Some(format!(
                "the repository rendered no objects while the inventory holds {}, so nothing was pruned: \
                 check --git-path and that the branch has the manifests (a Chart.yaml at a path's root \
                 makes it a chart); to delete everything tidegate applied, \
                 pass --sync-garbage-collection-allow-empty",
                input.inventory.len()
            )),
        };
    }
    let mut by_name: std::collections::HashMap<&str, Vec<&ObjectRef>> =
        std::collections::HashMap::new();
    for w in input.in_git {
        by_name.entry(w.name.as_str()).or_default().push(w);
    }
    let mut gone: Vec<(Stage, ObjectRef)> = input
        .inventory
        .iter()
        .filter(|id| {
            !by_name.get(id.name.as_str()).is_some_and(|ws| {
                ws.iter()
                    .any(|w| same_object(w, id, input.default_namespace))
            })
        })
        .map(|id| (Stage::of(id, id.namespace.is_some()), id.clone()))
        .collect();
    gone.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    PrunePlan {
        prune: gone.into_iter().map(|(_, id)| id).collect(),
        blocked: None,
    }
}

/// Objects that keep a Namespace or CustomResourceDefinition from being
/// pruned: the ones tidegate does not manage in this sync set. `live` holds
/// what lives in the namespace (or what the CRD defines); objects owned by
/// another object and what Kubernetes creates in every namespace count as
/// their owner's.
pub fn holders<'a>(live: &'a [Value], sync_set: &str, owner: &str) -> Vec<&'a Value> {
    live.iter()
        .filter(|o| {
            let meta = &o["metadata"];
            let ours = meta["labels"][MANAGED_BY_LABEL].as_str() == Some(MANAGED_BY_VALUE)
                && meta["annotations"][SYNC_SET_ANNOTATION].as_str() == Some(sync_set)
                && live_owner(o).is_none_or(|o| o == owner);
            let owned = meta["ownerReferences"]
                .as_array()
                .is_some_and(|refs| !refs.is_empty());
            let automatic = matches!(
                (o["kind"].as_str(), meta["name"].as_str()),
                (Some("ServiceAccount"), Some("default"))
                    | (Some("ConfigMap"), Some("kube-root-ca.crt"))
                    | (Some("Event"), _)
            );
            !(ours || owned || automatic)
        })
        .collect()
}

/// Why a live object must not be pruned even though Git no longer has it:
/// `None` if it may be deleted.
pub fn prune_refusal(live: &Value, sync_set: &str, owner: &str) -> Option<&'static str> {
    let meta = &live["metadata"];
    if meta["labels"][MANAGED_BY_LABEL].as_str() != Some(MANAGED_BY_VALUE) {
        return Some("it no longer carries the label app.kubernetes.io/managed-by=tidegate");
    }
    if meta["annotations"][SYNC_SET_ANNOTATION].as_str() != Some(sync_set) {
        return Some("it belongs to another sync set");
    }
    if live_owner(live).is_some_and(|o| o != owner) {
        return Some("it belongs to another tidegate instance (see its tidegate.dev/owner)");
    }
    if meta["annotations"][PRUNE_ANNOTATION].as_str() == Some("disabled") {
        return Some("it is annotated tidegate.dev/prune: disabled");
    }
    if is_prune_protected(live) {
        return Some("it is annotated to be ignored (or sync_only)");
    }
    None
}

/// The inventory a sync records once it has applied: what it had, less the
/// prune candidates (Git no longer has them), plus every object the plan
/// applied or tried. The candidates a prune keeps are added back after it.
pub fn next_inventory<'a>(
    previous: &Inventory,
    candidates: &[ObjectRef],
    planned: impl Iterator<Item = &'a ObjectRef>,
) -> Inventory {
    let mut next: Inventory = previous
        .iter()
        .filter(|id| !candidates.contains(id))
        .cloned()
        .collect();
    next.extend(planned.cloned());
    next
}

/// What a sync does with one live object the inventory has and Git no
/// longer does, once it has read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneStep {
    /// Not this instance's to delete: left alone, and out of the inventory.
    Leave(&'static str),
    /// `--sync-garbage-collection-dry`: reported, and kept in the inventory.
    WouldPrune {
        check_holders: bool,
    },
    Delete {
        check_holders: bool,
    },
}

/// The prune decision for one object: refused (see [`prune_refusal`]), or
/// deleted (or, in a dry run, reported) after asking what still depends on
/// it, unless it is annotated `tidegate.dev/prune: force`.
pub fn prune_step(live: &Value, sync_set: &str, owner: &str, dry_run: bool) -> PruneStep {
    if let Some(why) = prune_refusal(live, sync_set, owner) {
        return PruneStep::Leave(why);
    }
    let check_holders = live["metadata"]["annotations"][PRUNE_ANNOTATION].as_str() != Some("force");
    match dry_run {
        true => PruneStep::WouldPrune { check_holders },
        false => PruneStep::Delete { check_holders },
    }
}

#[cfg(test)]
mod tests {
    use crate::model::marks::*;
    use serde_json::json;

    use super::*;

    fn id(kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef::new(
            if kind == "Deployment" {
                "apps/v1"
            } else {
                "v1"
            },
            kind,
            ns,
            name,
        )
    }

    #[test]
    fn the_next_inventory_drops_the_candidates_and_adds_what_was_planned() {
        let (a, b, c) = (
            id("ConfigMap", Some("ns"), "a"),
            id("ConfigMap", Some("ns"), "b"),
            id("ConfigMap", Some("ns"), "c"),
        );
        let previous: Inventory = [a.clone(), b.clone()].into();
        let next = next_inventory(&previous, std::slice::from_ref(&b), [&c, &a].into_iter());
        assert_eq!(next, [a, c].into());
    }

    #[test]
    fn another_instances_object_is_refused_unless_git_adopts_it() {
        let desired = |annotations: Value| {
            let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns", "annotations": annotations}});
            mk_desired(id("ConfigMap", Some("ns"), "c"), object)
        };
        let mut theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}});
        mark(&mut theirs, "other/prod", "abc");
        let plain = desired(json!({}));
        assert!(matches!(
            decide(&plain, Some(&theirs), false, Some("team/prod")),
            Some(Change::Invalid { reason }) if reason.contains("other/prod") && reason.contains("team/prod")
        ));
        let adopting = desired(json!({ADOPT_ANNOTATION: "true"}));
        assert_eq!(
            decide(&adopting, Some(&theirs), false, Some("team/prod")),
            Some(Change::Update)
        );
        assert_eq!(
            decide(&plain, Some(&theirs), false, None),
            Some(Change::Unchanged),
            "this instance records no owner: the live object is as Git has it"
        );
        assert_eq!(
            decide(&plain, None, true, Some("team/prod")),
            Some(Change::Create)
        );
        assert_eq!(
            decide(&plain, None, false, Some("team/prod")),
            None,
            "unread"
        );
    }

    #[test]
    fn a_prune_leaves_what_is_not_ours_and_asks_about_holders_unless_forced() {
        let live = |annotations: Value| {
            let mut object =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
            mark(&mut object, "team/prod", "abc");
            for (k, v) in annotations.as_object().unwrap() {
                object["metadata"]["annotations"][k] = v.clone();
            }
            object
        };
        assert_eq!(
            prune_step(&live(json!({})), "prod", "team/prod", false),
            PruneStep::Delete {
                check_holders: true
            }
        );
        assert_eq!(
            prune_step(
                &live(json!({PRUNE_ANNOTATION: "force"})),
                "prod",
                "team/prod",
                false
            ),
            PruneStep::Delete {
                check_holders: false
            }
        );
        assert_eq!(
            prune_step(&live(json!({})), "prod", "team/prod", true),
            PruneStep::WouldPrune {
                check_holders: true
            }
        );
        assert_eq!(
            prune_step(
                &live(json!({PRUNE_ANNOTATION: "disabled"})),
                "prod",
                "team/prod",
                false
            ),
            PruneStep::Leave("it is annotated tidegate.dev/prune: disabled")
        );
        assert!(matches!(
            prune_step(&live(json!({})), "prod", "other/prod", false),
            PruneStep::Leave(why) if why.contains("another tidegate instance")
        ));
        assert!(matches!(
            prune_step(
                &live(json!({"fluxcd.io/ignore": "sync_only"})),
                "prod",
                "team/prod",
                true
            ),
            PruneStep::Leave(_)
        ));
    }

    #[test]
    fn subset_ignores_server_defaults_and_catches_drift() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        let live = json!({"spec": {"replicas": 2, "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "IfNotPresent"}]}},
            "status": {"replicas": 2}});
        assert!(is_subset(&desired, &live));
        let drifted = json!({"spec": {"replicas": 5, "template": {"containers": [{"name": "a", "image": "x"}]}}});
        assert!(!is_subset(&desired, &drifted));
        let extra_container = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}});
        assert!(!is_subset(&desired, &extra_container));
        assert!(is_subset(&json!({"data": {}, "x": null}), &json!({})));
        assert!(is_subset(&json!({"port": 80}), &json!({"port": 80.0})));
    }

    #[test]
    fn secret_string_data_compares_with_data() {
        let secret = ObjectRef::new("v1", "Secret", Some("ns"), "s");
        let desired = json!({"kind": "Secret", "stringData": {"password": "hunter2"}});
        let live = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}});
        assert!(is_unchanged(&secret, &desired, &live));
        let changed = json!({"kind": "Secret", "data": {"password": "b2xk"}});
        assert!(!is_unchanged(&secret, &desired, &changed));
    }

    #[test]
    fn stages_order_crds_namespaces_cluster_then_namespaced_and_webhooks_last() {
        let crd = ObjectRef::new(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "x",
        );
        let hook = ObjectRef::new(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            None,
            "h",
        );
        let sc = ObjectRef::new("storage.k8s.io/v1", "StorageClass", None, "fast");
        let mut stages = [
            Stage::of(&hook, false),
            Stage::of(&id("Deployment", Some("a"), "d"), true),
            Stage::of(&id("Service", Some("a"), "s"), true),
            Stage::of(&id("ConfigMap", Some("a"), "c"), true),
            Stage::of(&sc, false),
            Stage::of(&id("Namespace", None, "a"), false),
            Stage::of(&crd, false),
            Stage::of(&id("ServiceAccount", Some("a"), "sa"), true),
        ];
        stages.sort();
        assert_eq!(
            stages,
            [
                Stage::CustomResourceDefinitions,
                Stage::Namespaces,
                Stage::ClusterScoped,
                Stage::ServiceAccounts,
                Stage::Config,
                Stage::Services,
                Stage::Workloads,
                Stage::AdmissionWebhooks,
            ]
        );
    }

    fn rendered(object: Value) -> Manifest {
        let meta = &object["metadata"];
        Manifest {
            file: "c.yaml".into(),
            index: 0,
            id: id(
                "ConfigMap",
                meta["namespace"].as_str(),
                meta["name"].as_str().unwrap(),
            ),
            object: Json::new(&object),
            checksum: "abc".into(),
            built: None,
        }
    }

    #[test]
    fn place_sets_namespace_and_marks() {
        let m = rendered(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": null}}),
        );
        let placed = place(&m, None, &id("ConfigMap", Some("ns"), "c"), "prod");
        assert!(
            !Json::ptr_eq(&m.object, &placed),
            "Git's object is left as it is"
        );
        let placed = placed.value();
        assert_eq!(placed["metadata"]["namespace"], "ns");
        assert_eq!(placed["metadata"]["labels"][MANAGED_BY_LABEL], "tidegate");
        assert_eq!(
            placed["metadata"]["annotations"][SYNC_SET_ANNOTATION],
            "prod"
        );
        assert_eq!(
            placed["metadata"]["annotations"][CHECKSUM_ANNOTATION],
            "abc"
        );
        assert_eq!(placed["metadata"]["labels"][SYNC_SET_LABEL], "prod");
    }

    #[test]
    fn helm_release_records_never_come_from_git() {
        let secret = id("Secret", Some("team"), "sh.helm.release.v1.web.v9");
        let forged = json!({"type": "helm.sh/release.v1", "data": {"release": "x"}});
        assert!(helm_record_refusal(&secret, &forged).is_some());
        let labelled = json!({"metadata": {"labels": {"owner": "helm"}}});
        assert!(helm_record_refusal(&secret, &labelled).is_some());
        assert!(helm_record_refusal(&secret, &json!({"type": "Opaque"})).is_none());
        let cm = id("ConfigMap", Some("team"), "c");
        assert!(helm_record_refusal(&cm, &forged).is_none());
    }

    #[test]
    fn an_instance_owns_what_it_marks_and_nothing_another_marked() {
        let mut object = json!({"metadata": {"name": "c"}});
        mark(&mut object, &owner("team-a", "tidegate"), "abc");
        let annotations = &object["metadata"]["annotations"];
        assert_eq!(annotations[SYNC_SET_ANNOTATION], "tidegate");
        assert_eq!(annotations[OWNER_ANNOTATION], "team-a/tidegate");
        assert_eq!(object["metadata"]["labels"][SYNC_SET_LABEL], "tidegate");
        let ours = "team-a/tidegate";
        assert_eq!(prune_refusal(&object, "tidegate", ours), None);
        let why = prune_refusal(&object, "tidegate", "team-b/tidegate").unwrap();
        assert!(why.contains("another tidegate instance"), "{why}");
        let desired = Json::new(&json!({"metadata": {"name": "c"}}));
        assert_eq!(owner_conflict(Some(ours), ours, &desired), None);
        assert_eq!(
            owner_conflict(None, ours, &desired),
            None,
            "marked before owners"
        );
        let why = owner_conflict(Some("team-b/tidegate"), ours, &desired).unwrap();
        assert!(
            why.contains("team-b/tidegate; this one is team-a/tidegate"),
            "{why}"
        );
        let adopt = Json::new(&json!({"metadata": {"annotations": {ADOPT_ANNOTATION: "true"}}}));
        assert_eq!(owner_conflict(Some("team-b/tidegate"), ours, &adopt), None);
        let live = [object];
        assert!(holders(&live, "tidegate", ours).is_empty());
        assert_eq!(holders(&live, "tidegate", "team-b/tidegate").len(), 1);
    }

    #[test]
    fn an_object_marked_when_rendered_is_shared_unless_its_namespace_changes() {
        let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ns"}});
        mark(&mut object, "prod", "abc");
        let m = rendered(object);
        let ns = id("ConfigMap", Some("ns"), "c");
        assert!(Json::ptr_eq(
            &m.object,
            &place(&m, Some("prod"), &ns, "prod")
        ));
        // Marked for another sync set, or not at all, or another namespace: a copy.
        let other = place(&m, Some("prod"), &ns, "staging");
        assert!(!Json::ptr_eq(&m.object, &other));
        let other = other.value();
        assert_eq!(
            other["metadata"]["annotations"][SYNC_SET_ANNOTATION],
            "staging"
        );
        assert_eq!(other["metadata"]["labels"][SYNC_SET_LABEL], "staging");
        assert!(!Json::ptr_eq(&m.object, &place(&m, None, &ns, "prod")));
        let moved = place(
            &m,
            Some("prod"),
            &id("ConfigMap", Some("apps"), "c"),
            "prod",
        );
        assert_eq!(moved.value()["metadata"]["namespace"], "apps");
        let cluster_scoped = place(&m, Some("prod"), &id("ConfigMap", None, "c"), "prod").value();
        assert!(cluster_scoped["metadata"].get("namespace").is_none());
        assert_eq!(m.object.value()["metadata"]["namespace"], "ns");
    }

    #[test]
    fn normalize_drops_server_fields() {
        let live = json!({"metadata": {"name": "x", "uid": "u", "resourceVersion": "1", "generation": 3,
            "creationTimestamp": "t", "managedFields": []}, "spec": {"a": 1}, "status": {"b": 2}});
        assert_eq!(
            normalize(&live),
            json!({"metadata": {"name": "x"}, "spec": {"a": 1}})
        );
    }

    #[test]
    fn secret_values_are_masked_but_changes_show() {
        let secret = ObjectRef::new("v1", "Secret", Some("ns"), "s");
        let live = json!({"kind": "Secret", "data": {"same": "c2FtZQ==", "changed": "b2xk"}});
        let desired = json!({"kind": "Secret", "data": {"same": "c2FtZQ==", "changed": "bmV3"}});
        let diff = object_diff(&secret, Some(&live), &desired).expect("a change");
        assert!(
            !diff.contains("b2xk") && !diff.contains("bmV3") && !diff.contains("c2FtZQ=="),
            "{diff}"
        );
        assert!(diff.contains("-  changed: (masked, old value)"), "{diff}");
        assert!(diff.contains("+  changed: (masked, new value)"), "{diff}");
        assert!(diff.contains("   same: (masked)"), "{diff}");
    }

    #[test]
    fn secret_copies_in_annotations_are_masked() {
        let secret = ObjectRef::new("v1", "Secret", Some("ns"), "s");
        let copy = r#"{"apiVersion":"v1","kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;
        let live = json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": copy, "team": "db"}},
            "data": {"password": "aHVudGVyMg=="}});
        let desired = json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {"team": "web"}},
            "stringData": {"password": "hunter3"}});
        let diff = object_diff(&secret, Some(&live), &desired).expect("a change");
        assert!(
            !diff.contains("aHVudGVy") && !diff.contains("hunter"),
            "{diff}"
        );
        assert!(
            diff.contains("last-applied-configuration: (masked, old value)"),
            "{diff}"
        );
        assert!(
            diff.contains("team: db") && diff.contains("team: web"),
            "{diff}"
        );
    }

    #[test]
    fn configmap_diff_is_unified_and_equal_objects_have_none() {
        let cm = id("ConfigMap", Some("ns"), "c");
        let live = json!({"metadata": {"name": "c", "resourceVersion": "7"}, "data": {"a": "1"}});
        let desired = json!({"metadata": {"name": "c"}, "data": {"a": "2"}});
        let diff = object_diff(&cm, Some(&live), &desired).unwrap();
        assert!(
            diff.starts_with("--- live/v1 ConfigMap ns/c\n+++ desired/v1 ConfigMap ns/c\n"),
            "{diff}"
        );
        assert!(
            diff.contains("-  a: '1'") || diff.contains("-  a: \"1\""),
            "{diff}"
        );
        assert!(object_diff(&cm, Some(&live), &live).is_none());
    }

    fn mk_desired(id: ObjectRef, object: Value) -> Desired {
        Desired {
            stage: Stage::of(&id, id.namespace.is_some()),
            checksum: crate::model::checksum::checksum(&object),
            origin: Origin {
                file: "f.yaml".into(),
                index: 0,
                built: None,
            },
            id,
            object: Json::new(&object),
        }
    }

    #[test]
    fn classify_creates_updates_leaves_and_ignores() {
        let cm = id("ConfigMap", Some("a"), "c");
        let desired = mk_desired(cm.clone(), json!({"data": {"k": "1"}}));
        assert_eq!(classify(&desired, None, true), Some(Change::Create));
        assert_eq!(
            classify(&desired, None, false),
            None,
            "unreadable, not absent"
        );
        let same = json!({"metadata": {"resourceVersion": "3"}, "data": {"k": "1"}});
        assert_eq!(
            classify(&desired, Some(&same), false),
            Some(Change::Unchanged)
        );
        let drifted = json!({"data": {"k": "2"}});
        assert_eq!(
            classify(&desired, Some(&drifted), false),
            Some(Change::Update)
        );
        let ignored =
            json!({"metadata": {"annotations": {"fluxcd.io/ignore": "true"}}, "data": {"k": "2"}});
        assert_eq!(
            classify(&desired, Some(&ignored), false),
            Some(Change::Ignored)
        );
        let sync_only = json!({"metadata": {"annotations": {"fluxcd.io/ignore": "sync_only"}}, "data": {"k": "2"}});
        assert_eq!(
            classify(&desired, Some(&sync_only), false),
            Some(Change::Update)
        );
    }

    #[test]
    fn allowed_namespaces_refuse_others_and_cluster_scoped() {
        let allowed = vec!["team".to_string()];
        assert_eq!(
            namespace_refusal(&id("ConfigMap", Some("team"), "c"), &allowed),
            None
        );
        let other =
            namespace_refusal(&id("ConfigMap", Some("kube-system"), "c"), &allowed).unwrap();
        assert!(
            other.contains("namespace kube-system is not allowed"),
            "{other}"
        );
        let cluster = namespace_refusal(&id("Namespace", None, "x"), &allowed).unwrap();
        assert!(cluster.contains("cluster-scoped"), "{cluster}");
        assert_eq!(namespace_refusal(&id("Namespace", None, "x"), &[]), None);
    }

    fn mk_input<'a>(inventory: &'a Inventory, in_git: &'a [&'a ObjectRef]) -> PruneInput<'a> {
        PruneInput {
            inventory,
            in_git,
            default_namespace: "default",
            clean_render: true,
            allow_empty: false,
        }
    }

    #[test]
    fn prune_order_is_reverse_of_apply_and_skips_desired() {
        let ns = id("Namespace", None, "gone");
        let cm = id("ConfigMap", Some("gone"), "c");
        let kept = id("ConfigMap", Some("a"), "kept");
        let inventory: Inventory = [ns.clone(), cm.clone(), kept.clone()].into();
        let plan = prune_plan(mk_input(&inventory, &[&kept]));
        assert_eq!(
            plan,
            PrunePlan {
                prune: vec![cm, ns],
                blocked: None
            }
        );
    }

    #[test]
    fn an_unclean_render_prunes_nothing() {
        let inventory: Inventory = [id("ConfigMap", Some("a"), "gone")].into();
        let kept = id("ConfigMap", Some("a"), "kept");
        let plan = prune_plan(PruneInput {
            clean_render: false,
            ..mk_input(&inventory, &[&kept])
        });
        assert!(plan.prune.is_empty());
        assert!(plan.blocked.unwrap().contains("could not be rendered"));
    }

    #[test]
    fn an_empty_render_prunes_nothing_unless_allowed() {
        let gone = id("ConfigMap", Some("a"), "gone");
        let inventory: Inventory = [gone.clone()].into();
        let plan = prune_plan(mk_input(&inventory, &[]));
        assert!(plan.prune.is_empty());
        let why = plan.blocked.unwrap();
        assert!(
            why.contains("rendered no objects while the inventory holds 1"),
            "{why}"
        );
        assert!(
            why.contains("--sync-garbage-collection-allow-empty"),
            "{why}"
        );
        let plan = prune_plan(PruneInput {
            allow_empty: true,
            ..mk_input(&inventory, &[])
        });
        assert_eq!(plan.prune, [gone]);
        // Nothing in the inventory: an empty repository is fine.
        assert_eq!(
            prune_plan(mk_input(&Inventory::new(), &[])),
            PrunePlan::default()
        );
    }

    #[test]
    fn a_manifest_without_namespace_protects_only_its_default_namespace_object() {
        let in_default = id("ConfigMap", Some("default"), "web");
        let elsewhere = id("ConfigMap", Some("shop"), "web");
        let cluster = ObjectRef::new("storage.k8s.io/v1", "StorageClass", None, "fast");
        let inventory: Inventory = [in_default.clone(), elsewhere.clone(), cluster.clone()].into();
        let web = id("ConfigMap", None, "web");
        let fast = ObjectRef::new("storage.k8s.io/v1", "StorageClass", None, "fast");
        let plan = prune_plan(mk_input(&inventory, &[&web, &fast]));
        assert_eq!(plan.prune, [elsewhere]);
    }

    #[test]
    fn ignored_in_git_is_kept() {
        // An object annotated ignore in Git is in `in_git` (render lists it
        // as ignored): it is not pruned and stays in the inventory.
        let ignored = id("ConfigMap", Some("a"), "hands-off");
        let inventory: Inventory = [ignored.clone()].into();
        let plan = prune_plan(mk_input(&inventory, &[&ignored]));
        assert!(plan.prune.is_empty() && plan.blocked.is_none());
    }

    #[test]
    fn holders_are_objects_we_do_not_manage() {
        let ours = json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": {MANAGED_BY_LABEL: "tidegate"}, "annotations": {SYNC_SET_ANNOTATION: "s"}}});
        let other_set = json!({"kind": "ConfigMap", "metadata": {"name": "b", "labels": {MANAGED_BY_LABEL: "tidegate"}, "annotations": {SYNC_SET_ANNOTATION: "t"}}});
        let by_hand = json!({"kind": "Secret", "metadata": {"name": "c"}});
        let owned = json!({"kind": "Pod", "metadata": {"name": "p", "ownerReferences": [{"kind": "ReplicaSet"}]}});
        let automatic = json!({"kind": "ServiceAccount", "metadata": {"name": "default"}});
        let root_ca = json!({"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}});
        let live = [
            ours,
            other_set.clone(),
            by_hand.clone(),
            owned,
            automatic,
            root_ca,
        ];
        let found: Vec<&Value> = holders(&live, "s", "ns/s");
        assert_eq!(found, [&other_set, &by_hand]);
    }

    #[test]
    fn prune_needs_our_marks() {
        let ours = json!({"metadata": {"labels": {MANAGED_BY_LABEL: "tidegate"}, "annotations": {SYNC_SET_ANNOTATION: "s"}}});
        assert_eq!(prune_refusal(&ours, "s", "ns/s"), None);
        assert!(prune_refusal(&ours, "other", "ns/other").is_some());
        assert!(prune_refusal(&json!({"metadata": {}}), "s", "ns/s").is_some());
        let mut disabled = ours.clone();
        disabled["metadata"]["annotations"][PRUNE_ANNOTATION] = "disabled".into();
        assert!(prune_refusal(&disabled, "s", "ns/s").is_some());
        let mut ignored = ours;
        ignored["metadata"]["annotations"]["fluxcd.io/ignore"] = "true".into();
        assert!(prune_refusal(&ignored, "s", "ns/s").is_some());
    }
}
