//! One sync: source → render → plan → apply → prune → record.
//!
//! The plan is computed from the desired set and the live objects (one list
//! per resource, no per-object reads for objects tidegate already manages), so
//! a sync of an unchanged revision sends no writes for the objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::apply::{is_immutable_error, reason};
use crate::cluster::live::Live;
use crate::cluster::state::{ObjectError, Outcome, StateRef, SyncStatus, now};
use crate::cluster::{Cluster, Resolved};
use crate::helm::{self, ReleaseAction, ReleaseStatus};
use crate::object::ObjectRef;
use crate::plan::{self, Change, Desired, Inventory, Seen, Stage};
use crate::render::{self, DesiredSet, Manifest};
use crate::source::{GitSource, Snapshot};

/// Errors (and warnings) recorded in full in the status; the rest are counted.
pub const MAX_RECORDED_ERRORS: usize = 100;
const MAX_MESSAGE_CHARS: usize = 4000;

/// Objects applied at once within a stage.
const CONCURRENCY: usize = 16;
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the kinds of an established CRD may take to be served.
const DISCOVERY_WAIT: Duration = Duration::from_secs(10);
/// How long a sync waits for a new watch's first list before reading itself.
const WATCH_LIST_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GarbageCollection {
    Off,
    /// Log what would be deleted, delete nothing.
    Dry,
    On,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub render: render::Options,
    pub default_namespace: String,
    /// When not empty, objects may live only in these namespaces.
    pub allow_namespaces: Vec<String>,
    pub sync_set: String,
    /// Take over fields other managers own (server-side apply `force`).
    pub force_conflicts: bool,
    pub gc: GarbageCollection,
    /// Prune even when Git renders no objects at all.
    pub allow_empty: bool,
    /// `--adopt`: take over objects another tidegate instance owns.
    pub adopt: bool,
    pub state: StateRef,
    /// How to run helm for HelmRelease objects; `None` where no release is
    /// reconciled (`diff`).
    pub helm: Option<crate::helm::Settings>,
    /// The last render, by the Git tree hashes of the configured paths.
    pub render_cache: RenderCache,
}

/// A rendered desired set, kept while the trees it was read from are the
/// same: an unchanged tree is not parsed again.
type Rendered = Option<(Vec<String>, std::sync::Arc<DesiredSet>)>;

#[derive(Clone, Default)]
pub struct RenderCache(std::sync::Arc<std::sync::Mutex<Rendered>>);

impl fmt::Debug for RenderCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RenderCache")
    }
}

impl RenderCache {
    /// The set `snapshot` renders to with `options` (its objects marked for
    /// `options.sync_set`, so that the placed objects of every sync share
    /// them): from the cache if the trees are the ones last rendered, else
    /// rendered (off the async workers: parsing is CPU-bound) and kept.
    pub async fn render(
        &self,
        snapshot: &Snapshot,
        options: &render::Options,
    ) -> std::sync::Arc<DesiredSet> {
        let (snap, options) = (snapshot.clone(), options.clone());
        let cache = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let key = snap.tree_ids(&options.paths);
            {
                let mut cached = cache.lock().expect("render cache");
                if let (Some(key), Some((cached_key, set))) = (&key, &*cached)
                    && key == cached_key
                {
                    tracing::debug!("the trees did not change: not rendered again");
                    return set.clone();
                }
                // The old set goes before the new one is parsed, not after.
                *cached = None;
            }
            let set = render::render(&snap.tree, &options);
            let set = std::sync::Arc::new(set);
            *cache.lock().expect("render cache") = key.map(|k| (k, set.clone()));
            set
        })
        .await
        .expect("render task")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Recreated,
    Ignored,
    Pruned,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Recreated => "recreated",
            Action::Ignored => "ignored",
            Action::Pruned => "pruned",
        })
    }
}

/// What a sync reports as it goes, for the CLI to print.
pub enum Progress<'a> {
    Object(&'a ObjectRef, Action),
    Failed(&'a ObjectError),
    WouldPrune(&'a ObjectRef),
    Warning(&'a str),
    Release(&'a ReleaseStatus),
}

pub type OnProgress<'a> = &'a mut (dyn FnMut(Progress<'_>) + Send);

/// One object of a plan, with the live state it was compared to.
#[derive(Debug, Clone)]
pub struct Item {
    pub desired: Desired,
    pub resolved: Resolved,
    pub live: Option<Seen>,
    pub change: Change,
}

/// A desired set placed and compared with the cluster.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Item>,
    /// Custom resources whose CRD is in the same desired set but not yet served.
    pub deferred: Vec<Manifest>,
    pub errors: Vec<ObjectError>,
    pub prune: Vec<ObjectRef>,
    /// Why nothing may be pruned, when nothing may.
    pub prune_blocked: Option<String>,
}

fn object_error(id: &ObjectRef, origin: Option<String>, reason: String) -> ObjectError {
    ObjectError {
        object: id.to_string(),
        origin,
        reason,
    }
}

/// Kinds that custom resource definitions in the desired set will define.
fn kinds_defined(set: &DesiredSet) -> HashSet<(String, String)> {
    set.manifests
        .iter()
        .filter(|m| m.id.group == "apiextensions.k8s.io" && m.id.kind == "CustomResourceDefinition")
        .filter_map(|m| {
            let object = m.object.value();
            let spec = &object["spec"];
            Some((
                spec["group"].as_str()?.to_string(),
                spec["names"]["kind"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Resolves kinds, places namespaces, checks allowed namespaces, adds marks.
async fn place(
    cluster: &Cluster,
    manifests: &[Manifest],
    marked_for: Option<&str>,
    settings: &Settings,
    crd_kinds: &HashSet<(String, String)>,
    plan: &mut Plan,
) -> Vec<(Desired, Resolved)> {
    let mut placed = Vec::new();
    for m in manifests {
        let resolved = match cluster.resolve(&m.id).await {
            Ok(r) => r,
            Err(e) => {
                if crd_kinds.contains(&(m.id.group.clone(), m.id.kind.clone())) {
                    plan.deferred.push(m.clone());
                } else {
                    plan.errors.push(object_error(
                        &m.id,
                        Some(m.origin().to_string()),
                        crate::error_chain(&e),
                    ));
                }
                continue;
            }
        };
        let mut id = m.id.clone();
        id.namespace = if resolved.namespaced() {
            Some(
                m.id.namespace
                    .clone()
                    .unwrap_or_else(|| settings.default_namespace.clone()),
            )
        } else {
            None
        };
        if let Some(reason) = plan::namespace_refusal(&id, &settings.allow_namespaces) {
            plan.errors
                .push(object_error(&id, Some(m.origin().to_string()), reason));
            continue;
        }
        if id.kind == "Secret"
            && let Some(reason) = plan::helm_record_refusal(&id, &m.object.value())
        {
            plan.errors.push(object_error(
                &id,
                Some(m.origin().to_string()),
                reason.to_string(),
            ));
            continue;
        }
        let checksum = m.checksum.clone();
        let object = plan::place(m, marked_for, &id, &settings.state.owner());
        let stage = Stage::of(&id, resolved.namespaced());
        placed.push((
            Desired {
                id,
                origin: m.origin(),
                object,
                checksum,
                stage,
            },
            resolved,
        ));
    }
    placed
}

/// Classifies the objects of the resources the daemon's watches have listed,
/// from what they hold; returns the others, which are read.
async fn from_watches(
    live: &std::sync::Arc<Live>,
    placed: Vec<(Desired, Resolved)>,
    owner: Option<&str>,
    plan: &mut Plan,
) -> Vec<(Desired, Resolved)> {
    let mut by_resource: BTreeMap<(String, String, String), Vec<(Desired, Resolved)>> =
        BTreeMap::new();
    for (d, r) in placed {
        let key = (
            r.resource.group.clone(),
            r.resource.version.clone(),
            r.resource.plural.clone(),
        );
        by_resource.entry(key).or_default().push((d, r));
    }
    // A resource not watched yet is watched from now on; its first list
    // serves this sync too, unless it takes long.
    let fresh: Vec<Resolved> = by_resource
        .values()
        .map(|group| group[0].1.clone())
        .filter(|r| live.lookup(r, &[]).is_none())
        .collect();
    for resolved in &fresh {
        live.watch(resolved);
    }
    futures::future::join_all(fresh.iter().map(|r| live.listed(r, WATCH_LIST_WAIT))).await;
    let mut rest = Vec::new();
    for group in by_resource.into_values() {
        let resolved = group[0].1.clone();
        let ids: Vec<&ObjectRef> = group.iter().map(|(d, _)| &d.id).collect();
        let Some(entries) = live.lookup(&resolved, &ids) else {
            rest.extend(group);
            continue;
        };
        for ((desired, resolved), entry) in group.into_iter().zip(entries) {
            let conflict = entry.as_ref().zip(owner).and_then(|(e, ours)| {
                plan::owner_conflict(e.owner.as_deref(), ours, &desired.object)
            });
            let change = match &entry {
                _ if conflict.is_some() => Change::Invalid {
                    reason: conflict.expect("just checked"),
                },
                Some(e) if e.ignored => Change::Ignored,
                Some(e)
                    if e.in_sync == Some(true) && live.expects(&desired.id, &desired.checksum) =>
                {
                    Change::Unchanged
                }
                Some(_) => Change::Update,
                // Applied before and gone now; unless it only left this
                // instance's watch (another took it over): read it.
                None if live.is_expected(&desired.id) && owner.is_none() => Change::Create,
                // Perhaps there without tidegate's label: read it.
                None => {
                    rest.push((desired, resolved));
                    continue;
                }
            };
            plan.items.push(Item {
                live: entry.map(|e| e.as_live()),
                desired,
                resolved,
                change,
            });
        }
    }
    rest
}

/// Classifies each desired object against the live one: from the watches
/// where they have listed, otherwise by reading (one list per resource, then
/// single reads for objects that carry no tidegate label yet). A running
/// daemon's watches compare with these objects from now on.
async fn observe(
    cluster: &Cluster,
    placed: Vec<(Desired, Resolved)>,
    settings: &Settings,
    plan: &mut Plan,
) {
    let first = plan.items.len();
    // With --adopt, objects of other instances are taken over.
    let owner = (!settings.adopt).then(|| settings.state.owner());
    let owner = owner.as_deref();
    let placed = match cluster.live() {
        Some(live) => from_watches(live, placed, owner, plan).await,
        None => placed,
    };
    read_live(cluster, placed, &settings.state.sync_set, owner, plan).await;
    if let Some(live) = cluster.live() {
        live.expect(
            plan.items[first..]
                .iter()
                .filter(|i| !matches!(i.change, Change::Ignored | Change::Invalid { .. }))
                .map(|i| {
                    (
                        &i.resolved,
                        &i.desired.id,
                        i.desired.checksum.as_str(),
                        &i.desired.object,
                    )
                }),
        );
    }
}

async fn read_live(
    cluster: &Cluster,
    placed: Vec<(Desired, Resolved)>,
    sync_set: &str,
    owner: Option<&str>,
    plan: &mut Plan,
) {
    if placed.is_empty() {
        return;
    }
    let mut by_resource: BTreeMap<(String, String, String), (Resolved, BTreeSet<String>)> =
        BTreeMap::new();
    for (d, r) in &placed {
        let key = (
            r.resource.group.clone(),
            r.resource.version.clone(),
            r.resource.plural.clone(),
        );
        let entry = by_resource
            .entry(key)
            .or_insert_with(|| (r.clone(), BTreeSet::new()));
        if let Some(ns) = &d.id.namespace {
            entry.1.insert(ns.clone());
        }
    }
    let mut live: HashMap<ObjectRef, Value> = HashMap::new();
    let mut unreadable: HashMap<(String, String, String), String> = HashMap::new();
    // One list per resource, all at once.
    let lists: Vec<_> = stream::iter(by_resource.into_iter().map(
        |(key, (resolved, namespaces))| async move {
            let namespaces: Vec<String> = namespaces.into_iter().collect();
            let result = cluster.list_managed(&resolved, &namespaces, sync_set).await;
            (key, resolved, result)
        },
    ))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    for (key, resolved, result) in lists {
        match result {
            Ok(items) => {
                for value in items {
                    let meta = &value["metadata"];
                    let id = crate::cluster::object_id(
                        &resolved.resource,
                        meta["namespace"].as_str(),
                        meta["name"].as_str().unwrap_or_default(),
                    );
                    live.insert(id, value);
                }
            }
            Err(e) => {
                unreadable.insert(key, reason(&e));
            }
        }
    }
    // Nothing can exist yet in a namespace that does not: skip reading those.
    let absent_namespaces = absent_namespaces(cluster, &placed, &live).await;
    let mut missing = HashSet::new();
    let mut unlisted: Vec<&(Desired, Resolved)> = Vec::new();
    for entry in &placed {
        let id = &entry.0.id;
        if live.contains_key(id) {
            continue;
        }
        if id
            .namespace
            .as_ref()
            .is_some_and(|ns| absent_namespaces.contains(ns))
        {
            missing.insert(id.clone());
        } else {
            unlisted.push(entry);
        }
    }
    let fetched: Vec<(ObjectRef, Result<Option<Value>, String>)> =
        stream::iter(unlisted.into_iter().map(|(d, r)| async move {
            let found = cluster
                .get(r, &d.id)
                .await
                .map(|o| o.map(|o| serde_json::to_value(&o).expect("objects serialize")))
                .map_err(|e| reason(&e));
            (d.id.clone(), found)
        }))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (id, found) in fetched {
        match found {
            Ok(Some(v)) => {
                live.insert(id, v);
            }
            Ok(None) => {
                missing.insert(id);
            }
            Err(reason) => {
                plan.errors.push(object_error(
                    &id,
                    None,
                    format!("cannot read the live object: {reason}"),
                ));
            }
        }
    }
    for (desired, resolved) in placed {
        let key = (
            resolved.resource.group.clone(),
            resolved.resource.version.clone(),
            resolved.resource.plural.clone(),
        );
        if let Some(reason) = unreadable.get(&key) {
            tracing::debug!(object = %desired.id, "list failed ({reason}); read singly");
        }
        let live_object = live.remove(&desired.id);
        let known_absent = missing.contains(&desired.id);
        // None: a read error, reported above.
        let conflict = live_object
            .as_ref()
            .zip(owner)
            .and_then(|(l, ours)| plan::owner_conflict(plan::live_owner(l), ours, &desired.object));
        let change = match conflict {
            Some(reason) => Change::Invalid { reason },
            None => match plan::classify(&desired, live_object.as_ref(), known_absent) {
                Some(change) => change,
                None => continue,
            },
        };
        plan.items.push(Item {
            desired,
            resolved,
            live: live_object.map(Seen::Object),
            change,
        });
    }
}

/// The namespaces that objects not yet listed live in and that do not exist.
async fn absent_namespaces(
    cluster: &Cluster,
    placed: &[(Desired, Resolved)],
    live: &HashMap<ObjectRef, Value>,
) -> HashSet<String> {
    let wanted: BTreeSet<&String> = placed
        .iter()
        .filter(|(d, _)| !live.contains_key(&d.id))
        .filter_map(|(d, _)| d.id.namespace.as_ref())
        .collect();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    let found: Vec<Option<String>> = stream::iter(wanted.into_iter().map(|ns| {
        let namespaces = namespaces.clone();
        async move { matches!(namespaces.get_opt(ns).await, Ok(None)).then(|| ns.clone()) }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    found.into_iter().flatten().collect()
}

/// Places and compares a desired set, and works out what to prune.
pub async fn plan(
    cluster: &Cluster,
    set: &DesiredSet,
    settings: &Settings,
    inventory: &Inventory,
) -> Plan {
    let mut plan = Plan::default();
    let crd_kinds = kinds_defined(set);
    let placed = place(
        cluster,
        &set.manifests,
        set.marked_for.as_deref(),
        settings,
        &crd_kinds,
        &mut plan,
    )
    .await;
    observe(cluster, placed, settings, &mut plan).await;
    let decided = prune_decision(set, inventory, settings);
    plan.prune = decided.prune;
    plan.prune_blocked = decided.blocked;
    plan
}

/// What the inventory lets a sync of this desired set prune. Whatever Git
/// still has is not pruned, even if it is ignored, failed to place, waits
/// for its CRD, or moved to another API version.
fn prune_decision(set: &DesiredSet, inventory: &Inventory, settings: &Settings) -> plan::PrunePlan {
    let in_git: Vec<&ObjectRef> = set
        .manifests
        .iter()
        .map(|m| &m.id)
        .chain(&set.ignored)
        .collect();
    plan::prune_plan(plan::PruneInput {
        inventory,
        in_git: &in_git,
        default_namespace: &settings.default_namespace,
        clean_render: set.is_clean(),
        allow_empty: settings.allow_empty,
    })
}

/// Render errors as the per-object errors a sync reports.
pub fn render_errors(set: &DesiredSet) -> Vec<ObjectError> {
    set.errors
        .iter()
        .map(|e| match e.split() {
            Some((origin, reason)) => ObjectError {
                object: e.object().unwrap_or_default(),
                origin: Some(origin),
                reason,
            },
            None => ObjectError {
                object: e.object().unwrap_or_default(),
                origin: None,
                reason: crate::error_chain(e),
            },
        })
        .collect()
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub revision: Option<String>,
    pub actions: Vec<(ObjectRef, Action)>,
    pub errors: Vec<ObjectError>,
    pub warnings: Vec<String>,
    /// Why the sync stopped before applying anything (fetch or render).
    pub message: Option<String>,
    pub interrupted: bool,
    /// Write requests sent for objects (applies and deletes).
    pub writes: usize,
    /// `tidegate sync` requests this sync answers.
    pub requests: Vec<String>,
    /// Why the sync's status could not be recorded: the sync failed.
    pub record_failed: Option<String>,
    /// What happened to each Helm release.
    pub releases: Vec<ReleaseStatus>,
    /// The repository's proxy settings, as this revision declares them.
    pub proxy: Option<render::proxy::ProxySettings>,
}

impl SyncReport {
    pub fn count(&self, action: Action) -> usize {
        self.actions.iter().filter(|(_, a)| *a == action).count()
    }

    /// `3 created, 0 configured, 5 unchanged, 1 pruned, 0 failed (4 object writes)`.
    pub fn counts(&self) -> String {
        use Action::*;
        let mut parts = vec![
            format!("{} created", self.count(Created)),
            format!("{} configured", self.count(Configured)),
            format!("{} unchanged", self.count(Unchanged)),
        ];
        for action in [Recreated, Pruned, Ignored] {
            let n = self.count(action);
            if n > 0 {
                parts.push(format!("{n} {action}"));
            }
        }
        parts.push(format!("{} failed", self.errors.len()));
        let mut releases: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.releases {
            *releases.entry(r.action.to_string()).or_default() += 1;
        }
        let releases: Vec<String> = releases
            .into_iter()
            .map(|(action, n)| format!("{n} {action}"))
            .collect();
        let releases = if releases.is_empty() {
            String::new()
        } else {
            format!("; releases: {}", releases.join(", "))
        };
        format!(
            "{} ({} object writes){releases}",
            parts.join(", "),
            self.writes
        )
    }

    /// The first 12 characters of the revision, or `(none)`.
    pub fn short_revision(&self) -> &str {
        self.revision
            .as_deref()
            .map_or("(none)", |r| &r[..r.len().min(12)])
    }

    pub fn outcome(&self) -> Outcome {
        if self.interrupted {
            Outcome::Interrupted
        } else if self.message.is_some() || !self.errors.is_empty() || self.record_failed.is_some()
        {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        }
    }

    /// Whether trying the same revision again soon could go otherwise:
    /// not when the only failures are releases waiting for a change in Git.
    pub fn retry_helps(&self) -> bool {
        let waiting: HashSet<&str> = self
            .releases
            .iter()
            .filter(|r| r.action == ReleaseAction::Failed && r.waits_for_git)
            .map(|r| r.object.as_str())
            .collect();
        self.outcome() == Outcome::Failed
            && (self.message.is_some()
                || self.record_failed.is_some()
                || self
                    .errors
                    .iter()
                    .any(|e| !waiting.contains(e.object.as_str())))
    }

    pub fn status(&self, started: String) -> SyncStatus {
        let mut counts = BTreeMap::new();
        for action in [
            Action::Created,
            Action::Configured,
            Action::Unchanged,
            Action::Recreated,
            Action::Ignored,
            Action::Pruned,
        ] {
            counts.insert(action.to_string(), self.count(action));
        }
        counts.insert("failed".to_string(), self.errors.len());
        // The record must fit one object whatever the repository: the first
        // errors in full, the rest counted.
        SyncStatus {
            revision: self.revision.clone(),
            started,
            finished: now(),
            result: self.outcome(),
            message: self
                .message
                .as_ref()
                .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect()),
            counts,
            errors: self
                .errors
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
            errors_total: self.errors.len(),
            warnings: self
                .warnings
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
            writes: self.writes,
            requests: self.requests.clone(),
            releases: self
                .releases
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
        }
    }
}

/// Applies one object as planned.
async fn apply_item(
    cluster: &Cluster,
    item: &Item,
    settings: &Settings,
) -> Result<Action, ObjectError> {
    let d = &item.desired;
    let fail = |reason: String| object_error(&d.id, Some(d.origin.to_string()), reason);
    let before = item
        .live
        .as_ref()
        .and_then(Seen::resource_version)
        .map(str::to_string);
    match cluster
        .apply(
            &item.resolved,
            &d.id,
            &d.object,
            settings.force_conflicts,
            false,
        )
        .await
    {
        Ok(after) => {
            if let Some(live) = cluster.live() {
                live.applied(
                    &item.resolved,
                    &serde_json::to_value(&after).expect("objects serialize"),
                );
            }
            Ok(match before {
                None => Action::Created,
                Some(rv) if after.metadata.resource_version.as_deref() == Some(rv.as_str()) => {
                    Action::Unchanged
                }
                Some(_) => Action::Configured,
            })
        }
        Err(e) if is_immutable_error(&e) && d.force_recreate() => {
            tracing::info!(object = %d.id, "deleting and recreating: a change to an immutable field");
            cluster
                .recreate(&item.resolved, &d.id, &d.object, settings.force_conflicts)
                .await
                .map(|_| Action::Recreated)
                .map_err(|e| fail(format!("recreate failed: {}", reason(&e))))
        }
        Err(e) if is_immutable_error(&e) => Err(fail(format!(
            "{}; to delete and recreate the object, annotate it tidegate.dev/force: \"true\"",
            reason(&e)
        ))),
        Err(e) => Err(fail(reason(&e))),
    }
}

async fn apply_stage(
    cluster: &Cluster,
    items: &[Item],
    settings: &Settings,
    stop: &AtomicBool,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) {
    let writes_before = cluster.writes();
    let mut results = stream::iter(items.iter().filter(|_| !stop.load(Ordering::SeqCst)).map(
        |item| async move {
            let result = match item.change {
                Change::Unchanged => Ok(Action::Unchanged),
                Change::Ignored => Ok(Action::Ignored),
                Change::Create | Change::Update => apply_item(cluster, item, settings).await,
                Change::Invalid { ref reason } => Err(object_error(
                    &item.desired.id,
                    Some(item.desired.origin.to_string()),
                    reason.clone(),
                )),
            };
            (&item.desired.id, result)
        },
    ))
    // In the order they finish: one slow object holds up no other.
    .buffer_unordered(CONCURRENCY);
    while let Some((id, result)) = results.next().await {
        match result {
            Ok(action) => {
                if matches!(
                    action,
                    Action::Created | Action::Configured | Action::Recreated
                ) {
                    tracing::info!(object = %id, "{action}");
                } else {
                    tracing::debug!(object = %id, "{action}");
                }
                on(Progress::Object(id, action));
                report.actions.push((id.clone(), action));
            }
            Err(e) => {
                tracing::warn!(object = %id, reason = %e.reason, "apply failed");
                on(Progress::Failed(&e));
                report.errors.push(e);
            }
        }
    }
    report.writes += cluster.writes() - writes_before;
}

/// Applies a plan stage by stage; returns the refs of every object the
/// desired set holds (applied or not) for the next inventory.
async fn apply_plan(
    cluster: &Cluster,
    mut plan: Plan,
    settings: &Settings,
    stop: &AtomicBool,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) -> Plan {
    report.errors.append(&mut plan.errors);
    for e in &report.errors {
        on(Progress::Failed(e));
    }
    let mut stages: BTreeMap<Stage, Vec<Item>> = BTreeMap::new();
    for item in std::mem::take(&mut plan.items) {
        stages.entry(item.desired.stage).or_default().push(item);
    }
    let mut done: Vec<Item> = Vec::new();
    while let Some((stage, items)) = stages.pop_first() {
        if stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            done.extend(items);
            continue;
        }
        apply_stage(cluster, &items, settings, stop, report, on).await;
        if stop.load(Ordering::SeqCst) {
            report.interrupted = true;
        }
        if stage == Stage::CustomResourceDefinitions {
            for item in &items {
                if !cluster
                    .wait_established(&item.desired.id.name, CRD_ESTABLISH_TIMEOUT)
                    .await
                {
                    let e = object_error(
                        &item.desired.id,
                        Some(item.desired.origin.to_string()),
                        format!(
                            "not Established within {}s",
                            CRD_ESTABLISH_TIMEOUT.as_secs()
                        ),
                    );
                    on(Progress::Failed(&e));
                    report.errors.push(e);
                }
            }
            // New or changed definitions may serve new kinds; unchanged
            // ones serve what discovery already found.
            if items.iter().any(|i| i.change != Change::Unchanged) || !plan.deferred.is_empty() {
                cluster.forget_kinds();
            }
            if !plan.deferred.is_empty() {
                let mut later = Plan::default();
                let deferred = std::mem::take(&mut plan.deferred);
                wait_served(cluster, &deferred).await;
                let placed = place(
                    cluster,
                    &deferred,
                    None,
                    settings,
                    &HashSet::new(),
                    &mut later,
                )
                .await;
                observe(cluster, placed, settings, &mut later).await;
                for e in later.errors {
                    on(Progress::Failed(&e));
                    report.errors.push(e);
                }
                for item in later.items {
                    stages.entry(item.desired.stage).or_default().push(item);
                }
            }
        }
        done.extend(items);
    }
    plan.items = done;
    plan
}

/// The kinds of a CRD just established reach discovery a moment later (and
/// discovery has no watch): asks again, briefly, until they are served.
async fn wait_served(cluster: &Cluster, deferred: &[Manifest]) {
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    for m in deferred {
        while cluster.resolve(&m.id).await.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cluster.forget_kinds();
        }
    }
}

fn failed(report: &mut SyncReport, on: OnProgress<'_>, e: ObjectError) {
    on(Progress::Failed(&e));
    report.errors.push(e);
}

/// Deletes what Git no longer has, if it still carries our marks and holds
/// nothing tidegate does not manage. Returns the refs that stay in the
/// inventory (kinds discovery cannot resolve, failed deletes, dry runs).
async fn prune(
    cluster: &Cluster,
    candidates: &[ObjectRef],
    settings: &Settings,
    claimed: &[(String, String)],
    report: &mut SyncReport,
    on: OnProgress<'_>,
) -> Vec<ObjectRef> {
    let mut keep = Vec::new();
    if settings.gc == GarbageCollection::Off {
        return keep;
    }
    let writes_before = cluster.writes();
    for id in candidates {
        // The inventory is only as trustworthy as whoever may edit the
        // state: the allow-list binds deletes as it binds applies.
        if let Some(why) = plan::namespace_refusal(id, &settings.allow_namespaces) {
            keep.push(id.clone());
            let warning = format!("{id}: not pruned: {why}");
            tracing::warn!("{warning}");
            on(Progress::Warning(&warning));
            report.warnings.push(warning);
            continue;
        }
        let resolved = match cluster.resolve(id).await {
            Ok(r) => r,
            Err(e) => {
                // Discovery failed (an aggregated API down, a CRD being
                // removed): the objects may well exist; keep them and retry.
                keep.push(id.clone());
                let reason = format!(
                    "not pruned, kept for the next sync: {}",
                    crate::error_chain(&e)
                );
                failed(report, on, object_error(id, None, reason));
                continue;
            }
        };
        let live = match cluster.get(&resolved, id).await {
            Ok(Some(obj)) => serde_json::to_value(&obj).expect("objects serialize"),
            Ok(None) => continue,
            Err(e) => {
                keep.push(id.clone());
                let reason = format!("cannot read it to prune it: {}", reason(&e));
                failed(report, on, object_error(id, None, reason));
                continue;
            }
        };
        let owner = settings.state.owner();
        if let Some(why) = plan::prune_refusal(&live, &settings.sync_set, &owner) {
            tracing::info!(object = %id, "not pruned: {why}");
            continue;
        }
        let forced =
            live["metadata"]["annotations"][plan::PRUNE_ANNOTATION].as_str() == Some("force");
        if !forced {
            match cluster.holders(id, &settings.sync_set, &owner).await {
                Ok(held) if held.is_empty() => {}
                Ok(held) => {
                    keep.push(id.clone());
                    let shown: Vec<&str> = held.iter().take(5).map(String::as_str).collect();
                    let more = held.len().saturating_sub(shown.len());
                    let why = format!(
                        "not pruned: {} object(s) tidegate does not manage still depend on it ({}{}); \
                         remove them, or annotate it tidegate.dev/prune: force",
                        held.len(),
                        shown.join(", "),
                        if more > 0 {
                            format!(", and {more} more")
                        } else {
                            String::new()
                        }
                    );
                    tracing::warn!(object = %id, "{why}");
                    let warning = format!("{id}: {why}");
                    on(Progress::Warning(&warning));
                    report.warnings.push(warning);
                    continue;
                }
                Err(e) => {
                    keep.push(id.clone());
                    let reason = format!(
                        "not pruned: cannot check what it still holds: {}",
                        reason(&e)
                    );
                    failed(report, on, object_error(id, None, reason));
                    continue;
                }
            }
        }
        if settings.gc == GarbageCollection::Dry {
            tracing::info!(object = %id, "would prune (--sync-garbage-collection-dry)");
            on(Progress::WouldPrune(id));
            keep.push(id.clone());
            continue;
        }
        if helm::is_release(id)
            && let Some(helm) = &settings.helm
            && helm.background.as_ref().is_some_and(|b| b.is_running(id))
        {
            keep.push(id.clone());
            let warning = format!("{id}: not pruned while helm is still at work on its release");
            on(Progress::Warning(&warning));
            report.warnings.push(warning);
            continue;
        }
        if helm::is_release(id)
            && let Some(helm) = &settings.helm
        {
            match helm::uninstall(cluster, helm, id, &live, claimed).await {
                Ok(Some(release)) => {
                    let status = ReleaseStatus {
                        object: id.to_string(),
                        release,
                        action: ReleaseAction::Uninstalled,
                        revision: None,
                        status: None,
                        message: None,
                        waits_for_git: false,
                    };
                    tracing::info!(object = %id, "{status}");
                    on(Progress::Release(&status));
                    report.releases.push(status);
                }
                Ok(None) => {}
                Err(why) => {
                    keep.push(id.clone());
                    let reason =
                        format!("not pruned: its Helm release cannot be uninstalled: {why}");
                    failed(report, on, object_error(id, None, reason));
                    continue;
                }
            }
        }
        match cluster.delete(&resolved, id).await {
            Ok(_) => {
                tracing::info!(object = %id, "pruned");
                on(Progress::Object(id, Action::Pruned));
                report.actions.push((id.clone(), Action::Pruned));
            }
            Err(e) => {
                keep.push(id.clone());
                let reason = format!("prune failed, retried next sync: {}", reason(&e));
                failed(report, on, object_error(id, None, reason));
            }
        }
    }
    report.writes += cluster.writes() - writes_before;
    keep
}

/// Applies a rendered desired set: plan, apply, prune. Returns the report and
/// the new inventory.
pub async fn apply_set(
    cluster: &Cluster,
    set: &DesiredSet,
    settings: &Settings,
    inventory: &Inventory,
    charts: Option<&helm::chart::Sources>,
    stop: &AtomicBool,
    on: OnProgress<'_>,
) -> (SyncReport, Inventory) {
    let mut report = SyncReport::default();
    for w in &set.warnings {
        on(Progress::Warning(w));
        report.warnings.push(w.clone());
    }
    for e in render_errors(set) {
        tracing::warn!("{e}");
        report.errors.push(e);
    }
    let phase = std::time::Instant::now();
    // Helm's records of the releases are read while the plan is made.
    let releases = match (&settings.helm, charts) {
        (Some(_), Some(_)) => helm::release_keys(set, &settings.default_namespace),
        _ => Vec::new(),
    };
    let (plan, observed) = tokio::join!(
        plan(cluster, set, settings, inventory),
        helm::observe(cluster, &releases)
    );
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "planned");
    let phase = std::time::Instant::now();
    let candidates = plan.prune.clone();
    if let Some(why) = &plan.prune_blocked {
        tracing::warn!("{why}");
        report.message = Some(why.clone());
    }
    let mut next: Inventory = inventory
        .iter()
        .filter(|id| !candidates.contains(id))
        .cloned()
        .collect();
    let plan = apply_plan(cluster, plan, settings, stop, &mut report, on).await;
    next.extend(plan.items.iter().map(|i| i.desired.id.clone()));
    // What is pruned now is no longer the watches' to heal.
    if let Some(live) = cluster.live() {
        live.keep_only(&next);
    }
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "applied");
    if let (Some(helm), Some(charts), false) = (&settings.helm, charts, report.interrupted) {
        reconcile_releases(cluster, helm, charts, &plan, observed, &mut report, on).await;
    }
    if !report.interrupted {
        next.extend(prune(cluster, &candidates, settings, &releases, &mut report, on).await);
    } else {
        next.extend(candidates);
    }
    (report, next)
}

/// Reconciles the HelmReleases the plan applied (not those it failed to
/// apply or that are ignored) with helm.
async fn reconcile_releases(
    cluster: &Cluster,
    helm: &helm::Settings,
    charts: &helm::chart::Sources,
    plan: &Plan,
    observed: helm::Observed,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) {
    let failed: HashSet<String> = report.errors.iter().map(|e| e.object.clone()).collect();
    let items: Vec<helm::Item> = plan
        .items
        .iter()
        .filter(|i| helm::is_release(&i.desired.id) && i.change != Change::Ignored)
        .filter(|i| !failed.contains(&i.desired.id.to_string()))
        .map(|i| helm::Item {
            id: i.desired.id.clone(),
            object: i.desired.object.value(),
            resolved: i.resolved.clone(),
            live: i.live.as_ref().and_then(Seen::object).cloned(),
            changed: i.change != Change::Unchanged,
        })
        .collect();
    if items.is_empty() {
        return;
    }
    let phase = std::time::Instant::now();
    let ctx = helm::Context {
        cluster,
        settings: helm,
        sources: charts,
    };
    for status in helm::reconcile_all(&ctx, &items, observed).await {
        if status.action == ReleaseAction::Unchanged {
            tracing::debug!(object = %status.object, "{status}");
        } else {
            tracing::info!(object = %status.object, "{status}");
        }
        if status.action == ReleaseAction::Failed {
            let e = ObjectError {
                object: status.object.clone(),
                origin: None,
                // A spec that cannot be read names no release.
                reason: match (
                    status.release.as_str(),
                    status.message.clone().unwrap_or_default(),
                ) {
                    ("", message) => message,
                    (release, message) => format!("release {release}: {message}"),
                },
            };
            on(Progress::Failed(&e));
            report.errors.push(e);
        } else {
            on(Progress::Release(&status));
        }
        report.releases.push(status);
    }
    tracing::debug!(
        ms = phase.elapsed().as_millis() as u64,
        "releases reconciled"
    );
}

/// What a rebuilt inventory means: the objects it found that Git no longer
/// has, which the next sync prunes (this one only says so).
fn rebuilt_warning(set: &DesiredSet, inventory: &Inventory, settings: &Settings) -> String {
    let gone = prune_decision(set, inventory, settings).prune;
    let shown: Vec<String> = gone.iter().take(20).map(ObjectRef::to_string).collect();
    let more = gone.len().saturating_sub(shown.len());
    let then = match settings.gc {
        GarbageCollection::Off => "are left alone: garbage collection is off",
        _ => "are pruned by the next sync unless Git has them again",
    };
    format!(
        "the inventory was rebuilt from the sync set's label: {} objects; {} of them Git no longer has, and they {then}{}{}",
        inventory.len(),
        gone.len(),
        if shown.is_empty() {
            String::new()
        } else {
            format!(": {}", shown.join(", "))
        },
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}

/// Fetches a Git source (off the async threads: libgit2 blocks).
pub async fn fetch(source: &GitSource) -> Result<Snapshot, crate::source::Error> {
    let phase = std::time::Instant::now();
    let source = source.clone();
    let snapshot = tokio::task::spawn_blocking(move || source.fetch())
        .await
        .expect("fetch task");
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "fetched");
    snapshot
}

/// One whole sync of a fetched revision (or of a failed fetch), recorded in
/// the cluster.
pub async fn run(
    cluster: &Cluster,
    snapshot: Result<Snapshot, crate::source::Error>,
    settings: &Settings,
    requests: Vec<String>,
    stop: &AtomicBool,
    on: OnProgress<'_>,
) -> (SyncReport, SyncStatus) {
    let started = now();
    let (mut report, inventory) = sync_snapshot(cluster, snapshot, settings, stop, on).await;
    report.requests = requests;
    let mut status = report.status(started);
    let phase = std::time::Instant::now();
    if let Err(e) = cluster
        .record(&settings.state, &status, inventory.as_ref())
        .await
    {
        // The record never lies: a sync whose record is lost failed.
        let why = crate::error_chain(&e);
        tracing::error!("{why}");
        report.record_failed = Some(why.clone());
        status.result = Outcome::Failed;
        status.message = Some(format!("the sync could not be recorded: {why}"));
        // Say it where people look, if the API server takes that at least.
        if let Err(e) = cluster.emit_event(&settings.state, &status).await {
            tracing::warn!("cannot emit an Event either: {e}");
        }
    }
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "recorded");
    (report, status)
}

async fn sync_snapshot(
    cluster: &Cluster,
    snapshot: Result<Snapshot, crate::source::Error>,
    settings: &Settings,
    stop: &AtomicBool,
    on: OnProgress<'_>,
) -> (SyncReport, Option<Inventory>) {
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            let report = SyncReport {
                message: Some(crate::error_chain(&e)),
                ..SyncReport::default()
            };
            return (report, None);
        }
    };
    // Every line the sync logs carries its revision.
    let span = tracing::info_span!("sync", revision = %snapshot.revision);
    use tracing::Instrument as _;
    sync_revision(cluster, snapshot, settings, stop, on)
        .instrument(span)
        .await
}

async fn sync_revision(
    cluster: &Cluster,
    snapshot: Snapshot,
    settings: &Settings,
    stop: &AtomicBool,
    on: OnProgress<'_>,
) -> (SyncReport, Option<Inventory>) {
    let phase = std::time::Instant::now();
    let set = settings
        .render_cache
        .render(&snapshot, &settings.render)
        .await;
    tracing::debug!(
        objects = set.manifests.len(),
        ms = phase.elapsed().as_millis() as u64,
        "rendered"
    );
    // An unreadable inventory blocks the prune, not the apply: with none,
    // nothing is a prune candidate, and the record is left as it is. Asked
    // to, it is rebuilt from the sync set's label, this sync a dry run.
    let (inventory, unreadable, rebuilt) = match cluster.read_inventory(&settings.state).await {
        Ok(i) => (i, None, false),
        Err(crate::cluster::state::Error::Rebuild { .. }) => {
            let owner = settings.state.owner();
            match cluster
                .marked(&settings.sync_set, &owner, &settings.allow_namespaces)
                .await
            {
                Ok(found) => (found, None, true),
                Err(e) => (
                    Inventory::new(),
                    Some(format!(
                        "the inventory cannot be rebuilt from the sync set's label: {}",
                        crate::error_chain(&e)
                    )),
                    false,
                ),
            }
        }
        Err(e) => (Inventory::new(), Some(crate::error_chain(&e)), false),
    };
    let dry_run;
    let settings = if rebuilt {
        dry_run = Settings {
            gc: match settings.gc {
                GarbageCollection::Off => GarbageCollection::Off,
                _ => GarbageCollection::Dry,
            },
            ..settings.clone()
        };
        &dry_run
    } else {
        settings
    };
    let charts = settings.helm.as_ref().map(|h| helm::chart::Sources {
        url: h.git.as_ref().map(|g| g.url.clone()).unwrap_or_default(),
        revision: snapshot.revision.clone(),
        tree: snapshot.tree.clone(),
        git: h.git.clone(),
        cache: h.cache.clone(),
        proxy: h.helm.proxy.clone(),
        proxy_settings: set.proxy.clone().filter(|p| !p.is_empty()),
        digests: Default::default(),
        allow_local: h.allow_local_charts,
        values: helm::external::Access {
            fetch: true,
            allow: h.values_url_allow.clone(),
        },
    });
    let (mut report, next) = apply_set(
        cluster,
        &set,
        settings,
        &inventory,
        charts.as_ref(),
        stop,
        on,
    )
    .await;
    for w in snapshot.skipped.warnings() {
        on(Progress::Warning(&w));
        report.warnings.push(w);
    }
    report.revision = Some(snapshot.revision);
    report.proxy = set.proxy.clone();
    if rebuilt {
        let warning = rebuilt_warning(&set, &inventory, settings);
        tracing::warn!("{warning}");
        on(Progress::Warning(&warning));
        report.warnings.push(warning);
    }
    if let Some(why) = unreadable {
        let message = format!(
            "{why}; everything was applied, nothing was pruned, and the inventory is kept as it is. \
             To rebuild it from the objects that carry this sync set's label, set the key inventory of \
             ConfigMap {}/{} to rebuild: the next sync lists what it would prune and the one after prunes it",
            settings.state.namespace,
            settings.state.name()
        );
        tracing::error!("{message}");
        report.message = Some(message);
        return (report, None);
    }
    // Fights over a field are the sync's warnings until they stop.
    for c in cluster.live().map(|l| l.conflicts()).unwrap_or_default() {
        report.warnings.push(format!(
            "{}: field manager {} keeps changing it ({} reverts within {}s); self-heal is paused for it, each periodic sync still reverts it",
            c.object,
            c.manager,
            c.reverts,
            crate::cluster::live::FIGHT_WINDOW.as_secs()
        ));
    }
    (report, Some(next))
}
