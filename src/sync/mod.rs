//! One sync: source → render → plan → apply → prune → record.
//!
//! The plan is computed from the desired set and the live objects (one list
//! per resource, no per-object reads for objects tidegate already manages), so
//! a sync of an unchanged revision sends no writes for the objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use futures::{StreamExt, stream};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::apply::{is_immutable_error, reason};
use crate::cluster::live::Live;
use crate::cluster::state::{StateRef, now};
use crate::cluster::{Cluster, Resolved};
use crate::helm;
use crate::model::Inventory;
use crate::model::ObjectRef;
use crate::model::record::{
    MAX_RECORDED_ERRORS, ObjectError, Outcome, ReleaseAction, ReleaseStatus, SyncStatus,
};
use crate::plan::{self, Change, Desired, Seen, Stage};
use crate::render::{self, DesiredSet, Manifest};
use crate::source::{GitSource, Snapshot};

mod apply;
mod cache;
mod observe;
pub mod preview;
mod prune;
mod releases;
mod report;

use apply::*;
pub use cache::RenderCache;
use observe::*;
use prune::*;
use releases::reconcile_releases;
pub use report::SyncReport;

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
    /// The revision last verified, when signatures are: recorded with
    /// every sync (a failed fetch too), so a restart resumes from it.
    pub verified: Option<String>,
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
pub struct Planned {
    pub desired: Desired,
    pub resolved: Resolved,
    pub live: Option<Seen>,
    pub change: Change,
}

/// A desired set placed and compared with the cluster.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Planned>,
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
                        crate::model::error_chain(&e),
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
                reason: crate::model::error_chain(e),
            },
        })
        .collect()
}

/// Applies a rendered desired set: plan, apply, prune. Returns the report and
/// the new inventory.
pub async fn apply_set(
    cluster: &Cluster,
    set: &DesiredSet,
    settings: &Settings,
    inventory: &Inventory,
    charts: Option<&helm::chart::Sources>,
    stop: &CancellationToken,
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
        helm::read_records(cluster, &releases)
    );
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "planned");
    let phase = std::time::Instant::now();
    let candidates = plan.prune.clone();
    if let Some(why) = &plan.prune_blocked {
        tracing::warn!("{why}");
        report.message = Some(why.clone());
    }
    let plan = apply_plan(cluster, plan, settings, stop, &mut report, on).await;
    let mut next = plan::next_inventory(
        inventory,
        &candidates,
        plan.items.iter().map(|i| &i.desired.id),
    );
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

/// Fetches a Git source (off the async threads: libgit2 blocks), and
/// checks out the newest commit `policy` trusts.
pub async fn fetch(
    source: &GitSource,
    policy: Option<crate::source::verify::Policy>,
) -> Result<Snapshot, crate::source::Error> {
    let phase = std::time::Instant::now();
    let source = source.clone();
    let snapshot = tokio::task::spawn_blocking(move || source.fetch_verified(policy.as_ref()))
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
    stop: &CancellationToken,
    on: OnProgress<'_>,
) -> (SyncReport, SyncStatus) {
    let started = now();
    let (mut report, inventory) = sync_snapshot(cluster, snapshot, settings, stop, on).await;
    report.requests = requests;
    let mut status = report.status(started);
    status.verified = settings.verified.clone();
    let phase = std::time::Instant::now();
    if let Err(e) = cluster
        .record(&settings.state, &status, inventory.as_ref())
        .await
    {
        // The record never lies: a sync whose record is lost failed.
        let why = crate::model::error_chain(&e);
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
    stop: &CancellationToken,
    on: OnProgress<'_>,
) -> (SyncReport, Option<Inventory>) {
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(e) => {
            let unverified = match &e {
                crate::source::Error::Unverified(u) => Some(u.clone()),
                _ => None,
            };
            let report = SyncReport {
                message: Some(crate::model::error_chain(&e)),
                unverified,
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
    stop: &CancellationToken,
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
    let (inventory, unreadable, rebuilt) = read_inventory(cluster, settings).await;
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
    let charts = settings
        .helm
        .as_ref()
        .map(|h| chart_sources(h, &snapshot, &set));
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
    report.signed_by = snapshot.signed_by;
    report.unverified = snapshot.unverified;
    if let Some(why) = report.held_back() {
        tracing::error!("{why}");
    }
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
    report.warnings.extend(field_fights(cluster));
    (report, Some(next))
}

/// The inventory to prune against, why it cannot be trusted (then nothing
/// is pruned and the record keeps it as it is), and whether it was rebuilt
/// from the sync set's label (then this sync is a dry run of its prune).
async fn read_inventory(
    cluster: &Cluster,
    settings: &Settings,
) -> (Inventory, Option<String>, bool) {
    match cluster.read_inventory(&settings.state).await {
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
                        crate::model::error_chain(&e)
                    )),
                    false,
                ),
            }
        }
        Err(e) => (Inventory::new(), Some(crate::model::error_chain(&e)), false),
    }
}

/// Where a sync's HelmReleases find their charts: the synced revision, the
/// repository's proxy settings, the access helm runs with.
fn chart_sources(
    h: &helm::Settings,
    snapshot: &Snapshot,
    set: &DesiredSet,
) -> helm::chart::Sources {
    helm::chart::Sources {
        url: h.git.as_ref().map(|g| g.url.clone()).unwrap_or_default(),
        revision: snapshot.revision.clone(),
        tree: snapshot.tree.clone(),
        git: h.git.clone(),
        cache: h.cache.clone(),
        proxy: h.binary.proxy.clone(),
        proxy_settings: set.proxy.clone().filter(|p| !p.is_empty()),
        digests: Default::default(),
        allow_local: h.allow_local_charts,
        values: helm::external::Access {
            fetch: true,
            allow: h.values_url_allow.clone(),
        },
    }
}

/// Fights over a field are the sync's warnings until they stop.
fn field_fights(cluster: &Cluster) -> Vec<String> {
    let conflicts = cluster.live().map(|l| l.conflicts()).unwrap_or_default();
    conflicts
        .into_iter()
        .map(|c| {
            format!(
                "{}: field manager {} keeps changing it ({} reverts within {}s); self-heal is paused for it, each periodic sync still reverts it",
                c.object,
                c.manager,
                c.reverts,
                crate::cluster::live::FIGHT_WINDOW.as_secs()
            )
        })
        .collect()
}
