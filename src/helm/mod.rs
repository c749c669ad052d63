//! Helm releases: the HelmRelease objects a sync applied in; for each, the
//! chart located, the values merged, the operation decided from Helm's own
//! record, run with the real `helm` binary, and the outcome written to the
//! HelmRelease's status; one [`ReleaseStatus`] per release out.
//!
//! A release that fails fails only itself: the others, and the plain
//! manifests, go on.

pub mod allowed;
pub mod binary;
pub mod chart;
pub mod decide;
pub mod drift;
pub mod external;
pub mod release;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Resolved};
use crate::object::ObjectRef;
use crate::render::{ParseLimits, manifest::parse_documents};
pub use binary::Helm;
use decide::{Digests, Operation, Retry};
use release::{ReleaseSpec, ValuesSource};

/// Releases reconciled at once.
pub const CONCURRENCY: usize = 4;

/// How a sync runs helm.
#[derive(Debug, Clone)]
pub struct Settings {
    pub helm: Helm,
    /// Fetched chart repositories, pulled charts, values files.
    pub cache: PathBuf,
    /// The synced source, for charts in other Git repositories (same access).
    pub git: Option<crate::source::GitSource>,
    /// `--k8s-allow-namespace`: what a release may touch (empty: anything).
    pub allow_namespaces: Vec<String>,
    /// `--allow-local-chart-repositories`.
    pub allow_local_charts: bool,
    /// `--values-url-allow`: hosts and networks values may be fetched
    /// from though they are not public.
    pub values_url_allow: Vec<String>,
    /// In a running daemon: helm operations that may outlive their sync.
    pub background: Option<std::sync::Arc<Background>>,
}

/// How long a sync waits for a helm operation before it leaves it to run on
/// its own: a hook that never completes must not hold back the plain
/// objects, pushes and self-heal for its whole timeout.
pub const OPERATION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Helm operations that run past the sync that started them, by HelmRelease.
/// When one ends, `done` asks for a sync, which records how it ended.
pub struct Background {
    /// HelmRelease → the Helm release (namespace, name) helm is at work on.
    running: std::sync::Mutex<HashMap<ObjectRef, (String, String)>>,
    done: Box<dyn Fn() + Send + Sync>,
}

/// Ends a background operation's entry however its task ends (a panic
/// included), so no release stays "running" for ever.
struct Running {
    background: std::sync::Arc<Background>,
    id: ObjectRef,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.background
            .running
            .lock()
            .expect("running")
            .remove(&self.id);
    }
}

/// Where a background operation and the sync that started it stand.
const WAITED: u8 = 0;
const LEFT: u8 = 1;
const ENDED: u8 = 2;

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.running.lock().expect("running").len())
            .finish()
    }
}

impl Background {
    pub fn new(done: impl Fn() + Send + Sync + 'static) -> Background {
        Background {
            running: Default::default(),
            done: Box::new(done),
        }
    }

    /// Whether helm is still at work on this HelmRelease's release.
    pub fn is_running(&self, id: &ObjectRef) -> bool {
        self.running.lock().expect("running").contains_key(id)
    }

    /// Whether helm is at work on this Helm release, for any HelmRelease.
    fn is_running_release(&self, key: &(String, String)) -> bool {
        self.running
            .lock()
            .expect("running")
            .values()
            .any(|k| k == key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseAction {
    Installed,
    Upgraded,
    Unchanged,
    RolledBack,
    Reinstalled,
    Uninstalled,
    Failed,
    /// helm is still at work on it, past the sync that started it.
    Running,
}

impl std::fmt::Display for ReleaseAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleaseAction::Installed => "installed",
            ReleaseAction::Upgraded => "upgraded",
            ReleaseAction::Unchanged => "unchanged",
            ReleaseAction::RolledBack => "rolled back",
            ReleaseAction::Reinstalled => "reinstalled",
            ReleaseAction::Uninstalled => "uninstalled",
            ReleaseAction::Failed => "failed",
            ReleaseAction::Running => "still running for",
        })
    }
}

/// What a sync did with one release, as recorded and printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// The HelmRelease object.
    pub object: String,
    /// `namespace/name` of the Helm release.
    pub release: String,
    pub action: ReleaseAction,
    /// Helm's revision after the sync, if the release exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Helm's status of that revision (`deployed`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed in a way only a change in Git can mend (the same chart and
    /// values failed before, or Git's spec is refused): trying again
    /// sooner helps nothing, so it is no reason to back off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waits_for_git: bool,
}

/// `installed release demo/demo-web revision 1 (helm.fluxcd.io/v1 HelmRelease demo/web)`.
impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} release {}", self.action, self.release)?;
        if let Some(r) = self.revision {
            write!(f, " revision {r}")?;
        }
        write!(f, " ({})", self.object)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// One HelmRelease to reconcile, as applied, and as the plan found it live.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: ObjectRef,
    pub object: Value,
    pub resolved: Resolved,
    /// The live object the plan listed, status included.
    pub live: Option<Value>,
    /// Created or changed by this sync: its generation is read again.
    pub changed: bool,
}

/// A failure of one release, with the message for its status.
#[derive(Debug, Clone)]
struct Failure {
    phase: &'static str,
    message: String,
    /// Only a change in Git can mend it.
    waits_for_git: bool,
}

fn fail(phase: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        phase,
        message: message.into(),
        waits_for_git: false,
    }
}

/// A failure the same Git will always give.
fn refuse(phase: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        waits_for_git: true,
        ..fail(phase, message)
    }
}

/// Everything one reconcile needs besides the release.
pub struct Context<'a> {
    pub cluster: &'a Cluster,
    pub settings: &'a Settings,
    pub sources: &'a chart::Sources,
}

/// Releases decided at once: deciding only reads from the API server.
const DECIDE_CONCURRENCY: usize = 16;

/// Reconciles the releases in the order given: each decided from Helm's
/// record and the live objects (many at once), then those that need helm
/// run ([`CONCURRENCY`] at once).
pub async fn reconcile_all(
    ctx: &Context<'_>,
    items: &[Item],
    observed: Observed,
) -> Vec<ReleaseStatus> {
    let phase = std::time::Instant::now();
    // A release helm is still at work on is neither decided nor touched:
    // its operation's end brings the next sync.
    let (running, items): (Vec<&Item>, Vec<&Item>) = items.iter().partition(|i| {
        ctx.settings.background.as_ref().is_some_and(|b| {
            b.is_running(&i.id)
                || release::parse(&i.id, &i.object).is_ok_and(|spec| {
                    b.is_running_release(&(spec.target_namespace, spec.release_name))
                })
        })
    });
    let items: Vec<Item> = items.into_iter().cloned().collect();
    let decided = decide_all(ctx, &items, observed).await;
    tracing::debug!(ms = phase.elapsed().as_millis() as u64, "releases decided");
    let mut statuses: Vec<ReleaseStatus> = stream::iter(
        items
            .iter()
            .zip(decided)
            .map(|(item, decided)| finish_or_leave(ctx, item, decided)),
    )
    .buffered(CONCURRENCY)
    .collect()
    .await;
    statuses.extend(running.into_iter().map(still_running));
    statuses
}

/// The status of a release helm is still at work on.
fn still_running(item: &Item) -> ReleaseStatus {
    ReleaseStatus {
        object: item.id.to_string(),
        release: String::new(),
        action: ReleaseAction::Running,
        revision: None,
        status: None,
        message: Some(format!(
            "helm is still at work on it (longer than {}s); the sync after it ends records how",
            OPERATION_WAIT.as_secs()
        )),
        waits_for_git: false,
    }
}

/// Finishes a decided release: in a running daemon, an operation that
/// takes longer than [`OPERATION_WAIT`] goes on without this sync.
async fn finish_or_leave(ctx: &Context<'_>, item: &Item, decided: Decided) -> ReleaseStatus {
    use std::sync::atomic::{AtomicU8, Ordering};
    let (background, key) = match (&ctx.settings.background, &decided) {
        (Some(b), Ok(d)) if d.operation.is_some() => (
            b.clone(),
            (d.spec.target_namespace.clone(), d.spec.release_name.clone()),
        ),
        _ => return finish(ctx, item, decided).await,
    };
    let (cluster, settings, sources, owned) = (
        ctx.cluster.detached(),
        ctx.settings.clone(),
        ctx.sources.clone(),
        item.clone(),
    );
    background
        .running
        .lock()
        .expect("running")
        .insert(item.id.clone(), key);
    let running = Running {
        background: background.clone(),
        id: item.id.clone(),
    };
    let stage = std::sync::Arc::new(AtomicU8::new(WAITED));
    let task_stage = stage.clone();
    let mut task = tokio::spawn(async move {
        let ctx = Context {
            cluster: &cluster,
            settings: &settings,
            sources: &sources,
        };
        let status = finish(&ctx, &owned, decided).await;
        drop(running);
        // The sync that started it went on: this end brings another.
        if task_stage.swap(ENDED, Ordering::SeqCst) == LEFT {
            tracing::info!(object = %owned.id, "{status}");
            (background.done)();
        }
        status
    });
    let ended = |e: tokio::task::JoinError| {
        let mut status = still_running(item);
        status.action = ReleaseAction::Failed;
        status.message = Some(format!("the helm operation ended abnormally: {e}"));
        status
    };
    match tokio::time::timeout(OPERATION_WAIT, &mut task).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => ended(e),
        // It ended just as the wait did: its status is this sync's.
        Err(_) if stage.swap(LEFT, Ordering::SeqCst) == ENDED => task.await.unwrap_or_else(ended),
        Err(_) => {
            tracing::info!(
                object = %item.id,
                "helm takes longer than {}s; the sync goes on without it",
                OPERATION_WAIT.as_secs()
            );
            still_running(item)
        }
    }
}

/// Parses each release, locates its chart and merges its values (many at
/// once), reads every Helm record in one request, then decides.
async fn decide_all(ctx: &Context<'_>, items: &[Item], mut observed: Observed) -> Vec<Decided> {
    let prepared: Vec<Result<(ReleaseSpec, Wanted), Refusal>> =
        stream::iter(items.iter().map(|item| async move {
            let spec = release::parse(&item.id, &item.object)
                .map_err(|e| Box::new((None, refuse("Invalid", e.to_string()))))?;
            if let Some(why) = allowed::spec_refusal(&spec, &ctx.settings.allow_namespaces) {
                return Err(Box::new((Some(spec), refuse("NotAllowed", why))));
            }
            match wanted(Some(ctx.cluster), ctx.sources, &spec).await {
                Ok(w) => Ok((spec, w)),
                Err(f) => Err(Box::new((Some(spec), f))),
            }
        }))
        .buffered(DECIDE_CONCURRENCY)
        .collect()
        .await;
    let duplicates = release::duplicates(prepared.iter().flatten().map(|(spec, _)| {
        (
            &spec.id,
            (spec.target_namespace.as_str(), spec.release_name.as_str()),
        )
    }));
    let prepared: Vec<Result<(ReleaseSpec, Wanted), Refusal>> = prepared
        .into_iter()
        .map(|p| match p {
            Ok((spec, _)) if duplicates.contains_key(&spec.id) => {
                let why = duplicates[&spec.id].clone();
                Err(Box::new((Some(spec), refuse("Duplicate", why))))
            }
            other => other,
        })
        .collect();
    let keys: Vec<(String, String)> = prepared
        .iter()
        .flatten()
        .map(|(spec, _)| (spec.target_namespace.clone(), spec.release_name.clone()))
        .collect();
    // Read while the plan was made, or now for releases added since.
    let missing: Vec<(String, String)> = keys
        .iter()
        .filter(|k| !observed.histories.contains_key(*k))
        .cloned()
        .collect();
    let read = if missing.is_empty() {
        Ok(Vec::new())
    } else {
        storage::histories(&ctx.cluster.client, &missing).await
    };
    let histories = match read.map(|read| {
        observed.histories.extend(missing.into_iter().zip(read));
        keys.iter()
            .map(|k| observed.histories.remove(k).unwrap_or_default())
            .collect::<Vec<_>>()
    }) {
        Ok(h) => h,
        Err(e) => {
            let f = history_failure(e);
            return prepared
                .into_iter()
                .map(|p| match p {
                    Ok((spec, _)) => Err(Box::new((Some(spec), f.clone()))),
                    Err(e) => Err(e),
                })
                .collect();
        }
    };
    let ready: Vec<(&ReleaseSpec, &Wanted, storage::History)> = prepared
        .iter()
        .flatten()
        .zip(histories)
        .map(|((spec, w), h)| (spec, w, h))
        .collect();
    let mut decided = decide_many(ctx.cluster, ready, observed.live)
        .await
        .into_iter();
    prepared
        .into_iter()
        .map(|p| {
            let (spec, wanted) = p?;
            let (operation, history) = decided.next().expect("one decision per release");
            Ok(Decision {
                spec,
                wanted,
                operation,
                history,
            })
        })
        .collect()
}

/// Helm's records of a sync's releases and the live objects of their
/// deployed revisions, read while the plan is made so that a sync with
/// nothing to do for its releases waits for almost nothing more.
#[derive(Debug, Default)]
pub struct Observed {
    histories: HashMap<(String, String), storage::History>,
    live: HashMap<ObjectRef, Option<Value>>,
}

/// The `(namespace, name)` of the Helm release each HelmRelease of a
/// desired set asks for (HelmReleases without a namespace placed in
/// `default_namespace`); unreadable ones are left out.
pub fn release_keys(
    set: &crate::render::DesiredSet,
    default_namespace: &str,
) -> Vec<(String, String)> {
    set.manifests
        .iter()
        .filter(|m| is_release(&m.id))
        .filter_map(|m| {
            let mut id = m.id.clone();
            id.namespace
                .get_or_insert_with(|| default_namespace.to_string());
            let spec = release::parse(&id, &m.object.value()).ok()?;
            Some((spec.target_namespace, spec.release_name))
        })
        .collect()
}

/// Reads what [`Observed`] holds; a failure leaves it to the releases'
/// own reads later.
pub async fn observe(cluster: &Cluster, releases: &[(String, String)]) -> Observed {
    if releases.is_empty() {
        return Observed::default();
    }
    let Ok(histories) = storage::histories(&cluster.client, releases).await else {
        return Observed::default();
    };
    let refs: Vec<ObjectRef> = releases
        .iter()
        .zip(&histories)
        .filter_map(|((namespace, _), h)| deployed_objects(h, namespace).ok())
        .flatten()
        .map(|(id, _)| id)
        .collect();
    Observed {
        live: live_objects(cluster, &refs).await,
        histories: releases.iter().cloned().zip(histories).collect(),
    }
}

/// The digest of merged values: sha256 of their canonical JSON, cut to 32.
pub fn values_digest(values: &Value) -> String {
    crate::render::checksum(values)[..32].to_string()
}

struct Outcome {
    action: ReleaseAction,
    message: Option<String>,
    rolled_back: bool,
}

/// A release decided: what it asks for, Helm's record of it, and the
/// operation it needs (`None`: nothing); or why it cannot be decided.
struct Decision {
    spec: ReleaseSpec,
    wanted: Wanted,
    operation: Option<Operation>,
    history: storage::History,
}

/// A release that could not be decided, and its spec if it could be read.
type Refusal = Box<(Option<ReleaseSpec>, Failure)>;

type Decided = Result<Decision, Refusal>;

/// Runs what a decided release needs, then records the outcome in its
/// status and in the report.
async fn finish(ctx: &Context<'_>, item: &Item, decided: Decided) -> ReleaseStatus {
    let mut status = ReleaseStatus {
        object: item.id.to_string(),
        release: String::new(),
        action: ReleaseAction::Failed,
        revision: None,
        status: None,
        message: None,
        waits_for_git: false,
    };
    let (spec, outcome, chart_revision, history) = match decided {
        Err(refusal) => {
            let (spec, f) = *refusal;
            (spec, Err(f), None, None)
        }
        Ok(d) => {
            let ran = d.operation.is_some();
            let outcome = run(ctx, item, &d.spec, &d.wanted, d.operation, d.history).await;
            let revision = Some(d.wanted.located.revision.clone());
            (
                Some(d.spec),
                outcome.0,
                revision,
                outcome.1.filter(|_| !ran),
            )
        }
    };
    let Some(spec) = spec else {
        status.message = outcome.as_ref().err().map(|f| f.message.clone());
        status.waits_for_git = outcome.as_ref().is_err_and(|f| f.waits_for_git);
        write_status(ctx, item, None, None, &outcome, None).await;
        return status;
    };
    status.release = format!("{}/{}", spec.target_namespace, spec.release_name);
    // After helm ran, its record is read again.
    let history = match history {
        Some(h) => Some(h),
        None => storage::history(
            &ctx.cluster.client,
            &spec.target_namespace,
            &spec.release_name,
        )
        .await
        .ok(),
    };
    let latest = history.as_ref().and_then(|h| h.latest()).cloned();
    status.revision = latest.as_ref().map(|r| r.version);
    status.status = latest.as_ref().map(|r| r.status.clone());
    match &outcome {
        Ok(o) => {
            status.action = o.action;
            status.message = o.message.clone();
        }
        Err(f) => {
            status.message = Some(f.message.clone());
            status.waits_for_git = f.waits_for_git;
        }
    }
    write_status(
        ctx,
        item,
        Some(&spec),
        latest.as_ref(),
        &outcome,
        chart_revision,
    )
    .await;
    status
}

/// A release's chart located and its values merged: what Git asks for.
pub struct Wanted {
    pub located: chart::Located,
    /// The chart's directory, for a chart from Git.
    pub chart_dir: Option<PathBuf>,
    pub values: Value,
    pub digests: Digests,
}

/// Locates the chart and merges the values; without a cluster (offline
/// checks) values from ConfigMaps and Secrets are left out.
async fn wanted(
    cluster: Option<&Cluster>,
    sources: &chart::Sources,
    spec: &ReleaseSpec,
) -> Result<Wanted, Failure> {
    let located = {
        let (source, sources) = (spec.chart.clone(), sources.clone());
        tokio::task::spawn_blocking(move || chart::locate(&source, &sources))
            .await
            .expect("chart task")
            .map_err(|e| fail("ChartFetchFailed", crate::error_chain(&e)))?
    };
    let chart_dir = match &located.kind {
        chart::Kind::Dir(d) => Some(d.clone()),
        chart::Kind::Repository { .. } => None,
    };
    let values = merged_values(
        cluster,
        spec,
        chart_dir.as_deref(),
        sources.proxy.as_deref(),
        &sources.values,
    )
    .await
    .map_err(|m| fail("ValuesFailed", m))?;
    // The proxy settings injected into the release's workloads count as
    // values: changing them upgrades the release.
    let digested = match &sources.proxy_settings {
        Some(p) => json!({"values": values, "proxy": p.variables()}),
        None => values.clone(),
    };
    let digests = Digests {
        chart: located.digest.clone(),
        values: values_digest(&digested),
    };
    Ok(Wanted {
        located,
        chart_dir,
        values,
        digests,
    })
}

/// The operation a release needs now (`None`: nothing), from Helm's record,
/// and for an unchanged release the live state of its objects.
async fn needed(
    cluster: &Cluster,
    spec: &ReleaseSpec,
    wanted: &Wanted,
) -> Result<(Option<Operation>, storage::History), Failure> {
    let history = storage::history(&cluster.client, &spec.target_namespace, &spec.release_name)
        .await
        .map_err(history_failure)?;
    let mut decided = decide_many(cluster, vec![(spec, wanted, history)], HashMap::new()).await;
    Ok(decided.pop().expect("one release in, one out"))
}

fn history_failure(e: kube::Error) -> Failure {
    fail(
        "DeployFailed",
        format!("cannot read the release's Helm history: {e}"),
    )
}

/// Decides many releases from their Helm records; the live objects of
/// those unchanged in Git are read together, in one list per resource.
async fn decide_many(
    cluster: &Cluster,
    releases: Vec<(&ReleaseSpec, &Wanted, storage::History)>,
    mut live: HashMap<ObjectRef, Option<Value>>,
) -> Vec<(Option<Operation>, storage::History)> {
    let mut operations = Vec::new();
    let mut checks: Vec<(usize, Vec<(ObjectRef, crate::object::Json)>)> = Vec::new();
    for (i, (spec, wanted, history)) in releases.iter().enumerate() {
        let retry = Retry {
            enabled: spec.rollback.retry,
            max: spec.rollback.max_retries,
        };
        let mut operation = decide::decide(&history.records, &wanted.digests, retry);
        if operation == Operation::CompareAdopted {
            operation = compare_adopted(
                history,
                &wanted.located,
                wanted.chart_dir.as_deref(),
                &wanted.values,
            );
        }
        if operation == Operation::CheckLive {
            match deployed_objects(history, &spec.target_namespace) {
                Ok(objects) => checks.push((i, objects)),
                Err(why) => operation = Operation::Upgrade(why),
            }
        }
        operations.push(Some(operation));
    }
    // Those not read while the plan was made are read now.
    let refs: Vec<ObjectRef> = checks
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|(id, _)| id.clone()))
        .filter(|id| !live.contains_key(id))
        .collect();
    if !refs.is_empty() {
        live.extend(live_objects(cluster, &refs).await);
    }
    for (i, objects) in checks {
        operations[i] = drift_of(&objects, &live).map(Operation::Upgrade);
    }
    operations
        .into_iter()
        .zip(releases)
        .map(|(operation, (_, _, history))| (operation, history))
        .collect()
}

/// The objects of a release's deployed revision, with the namespace each
/// lives in (the release's, unless the chart names one).
fn deployed_objects(
    history: &storage::History,
    namespace: &str,
) -> Result<Vec<(ObjectRef, crate::object::Json)>, String> {
    let Some(deployed) = history.deployed() else {
        return Ok(Vec::new());
    };
    let content = history
        .content(deployed.version)
        .map_err(|e| format!("its deployed record cannot be read ({e})"))?;
    // Each object is kept as its compact text as it is parsed: the release
    // is never held parsed whole beside its manifest.
    let mut objects = Vec::new();
    crate::render::manifest::each_document(&content.manifest, &ParseLimits::default(), |object| {
        let id = (|| {
            Some(ObjectRef::new(
                object["apiVersion"].as_str()?,
                object["kind"].as_str()?,
                Some(
                    object["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(namespace),
                ),
                object["metadata"]["name"].as_str()?,
            ))
        })();
        if let Some(id) = id {
            objects.push((id, crate::object::Json::new(&object)));
        }
    })
    .map_err(|e| format!("its deployed manifest cannot be read ({e})"))?;
    Ok(objects)
}

/// The live objects of these refs: `None` for one that is gone; absent
/// for one that could not be read (no verdict). One list per resource of
/// the objects tidegate's post-renderer labelled, then single reads for
/// the rest (releases made before, or by helm-operator).
async fn live_objects(cluster: &Cluster, refs: &[ObjectRef]) -> HashMap<ObjectRef, Option<Value>> {
    // Owned refs: the futures below may run on a task of their own.
    let mut by_resource: BTreeMap<String, (Resolved, Vec<ObjectRef>)> = BTreeMap::new();
    for id in refs {
        // Kinds that cannot be resolved give no verdict.
        if let Ok(resolved) = cluster.resolve(id).await {
            let key = format!(
                "{}/{}",
                resolved.resource.api_version, resolved.resource.plural
            );
            by_resource
                .entry(key)
                .or_insert_with(|| (resolved, Vec::new()))
                .1
                .push(id.clone());
        }
    }
    let lists: Vec<_> = stream::iter(by_resource.into_values().map(|(resolved, ids)| async move {
        let listed = cluster
            .list_labelled(&resolved, binary::RELEASE_LABEL)
            .await
            .ok();
        (resolved, ids, listed)
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    let mut live = HashMap::new();
    let mut unlisted = Vec::new();
    for (resolved, ids, listed) in lists {
        let mut index: HashMap<(Option<String>, String), Value> = HashMap::new();
        for object in listed.unwrap_or_default() {
            let meta = &object["metadata"];
            let key = (
                meta["namespace"].as_str().map(str::to_string),
                meta["name"].as_str().unwrap_or_default().to_string(),
            );
            index.insert(key, object);
        }
        for id in ids {
            let namespace = id.namespace.clone().filter(|_| resolved.namespaced());
            match index.remove(&(namespace.clone(), id.name.clone())) {
                Some(object) => {
                    live.insert(id.clone(), Some(object));
                }
                None => unlisted.push((resolved.clone(), id, namespace)),
            }
        }
    }
    let read: Vec<(ObjectRef, Option<Option<Value>>)> = stream::iter(unlisted.into_iter().map(
        |(resolved, id, namespace)| async move {
            let mut placed = id.clone();
            placed.namespace = namespace;
            let found = match cluster.get(&resolved, &placed).await {
                Ok(o) => Some(o.and_then(|o| serde_json::to_value(o).ok())),
                Err(_) => None,
            };
            (id, found)
        },
    ))
    .buffer_unordered(16)
    .collect()
    .await;
    for (id, found) in read {
        if let Some(found) = found {
            live.insert(id, found);
        }
    }
    live
}

/// The first of a release's objects that is gone or differs live.
fn drift_of(
    objects: &[(ObjectRef, crate::object::Json)],
    live: &HashMap<ObjectRef, Option<Value>>,
) -> Option<String> {
    objects.iter().find_map(|(id, object)| match live.get(id)? {
        None => Some(format!("{id} was deleted")),
        Some(l) => drift::first_difference(&object.value(), l)
            .map(|field| format!("{id} was changed in the cluster ({field})")),
    })
}

/// Runs the operation a release needs; after a recovery, decides again
/// and runs what it then needs. Returns the outcome, and Helm's record when
/// helm ran nothing.
async fn run(
    ctx: &Context<'_>,
    item: &Item,
    spec: &ReleaseSpec,
    w: &Wanted,
    mut operation: Option<Operation>,
    mut history: storage::History,
) -> (Result<Outcome, Failure>, Option<storage::History>) {
    let (located, values, digests) = (&w.located, &w.values, &w.digests);
    let mut recovered: Option<String> = None;
    for _ in 0..2 {
        let Some(op) = operation.take() else {
            let outcome = Outcome {
                action: recovered
                    .as_ref()
                    .map_or(ReleaseAction::Unchanged, |_| ReleaseAction::RolledBack),
                rolled_back: recovered.is_some(),
                message: recovered,
            };
            return (Ok(outcome), Some(history));
        };
        let deployed = history.deployed().map(|r| r.version);
        let result = match op {
            Operation::Install | Operation::Upgrade(_) => {
                let why = match &op {
                    Operation::Upgrade(why) => why.clone(),
                    _ => String::new(),
                };
                install_or_upgrade(ctx, item, spec, located, values, digests, deployed, &why)
                    .await
                    .map(|mut outcome| {
                        if let Some(r) = &recovered {
                            outcome.message =
                                Some(format!("{r}; then {}", outcome.message.unwrap_or_default()));
                        }
                        outcome
                    })
            }
            Operation::RecoverRollback { from, to, status } => {
                let message = format!(
                    "revision {from} was left {status} by an operation that is no longer running; rolled back to revision {to}"
                );
                if let Err(e) = rollback(ctx, spec, to).await {
                    let f = fail("RollbackFailed", format!("recovering from {status}: {e}"));
                    return (Err(f), None);
                }
                announce_recovery(ctx.cluster, item, spec, &message).await;
                recovered = Some(message);
                match needed(ctx.cluster, spec, w).await {
                    Ok((next, h)) => {
                        operation = next;
                        history = h;
                        continue;
                    }
                    Err(f) => Err(f),
                }
            }
            Operation::Reinstall { status } => {
                let message = format!(
                    "the release never deployed (revision left {status}); uninstalled to install it again"
                );
                if let Err(e) = ctx.cluster.fenced() {
                    return (Err(fail("DeployFailed", e.to_string())), None);
                }
                let uninstalled = ctx
                    .settings
                    .helm
                    .uninstall(&spec.release_name, &spec.target_namespace, spec.timeout)
                    .await;
                if let Err(e) = uninstalled {
                    let f = fail("DeployFailed", format!("recovering from {status}: {e}"));
                    return (Err(f), None);
                }
                announce_recovery(ctx.cluster, item, spec, &message).await;
                install_or_upgrade(ctx, item, spec, located, values, digests, None, &message)
                    .await
                    .map(|outcome| Outcome {
                        action: if outcome.action == ReleaseAction::Installed {
                            ReleaseAction::Reinstalled
                        } else {
                            outcome.action
                        },
                        ..outcome
                    })
            }
            Operation::Blocked(why) => {
                // Helm's reason stays in the status until the release works.
                let said = history
                    .records
                    .iter()
                    .rev()
                    .find(|r| r.status == "failed")
                    .and_then(|r| history.content(r.version).ok())
                    .map(|c| c.description.chars().take(2000).collect::<String>())
                    .filter(|d| !d.is_empty());
                let why = match said {
                    Some(said) => format!("{why}; helm said: {said}"),
                    None => why,
                };
                return (Err(refuse("DeployFailed", why)), Some(history));
            }
            Operation::CheckLive | Operation::CompareAdopted => unreachable!("resolved by needed"),
        };
        return (result, None);
    }
    let why = recovered.unwrap_or_else(|| "the release is still pending after recovery".into());
    (Err(fail("DeployFailed", why)), None)
}

/// Says in the log and in a Warning Event that a release was recovered.
async fn announce_recovery(cluster: &Cluster, item: &Item, spec: &ReleaseSpec, message: &str) {
    tracing::warn!(release = %spec.release_name, "{message}");
    event(cluster, &item.id, "Warning", "ReleaseRecovered", message).await;
}

/// A release tidegate did not make: unchanged when it runs the same chart
/// version with the same values, so adopting it adds no Helm revision.
fn compare_adopted(
    history: &storage::History,
    located: &chart::Located,
    chart_dir: Option<&std::path::Path>,
    values: &Value,
) -> Operation {
    let Some(deployed) = history.deployed() else {
        return Operation::Upgrade("adopting the release".into());
    };
    let Ok(content) = history.content(deployed.version) else {
        return Operation::Upgrade("adopting the release (its record cannot be read)".into());
    };
    let (name, version, app_version) = match (chart_dir, &located.kind) {
        (Some(dir), _) => chart_metadata(dir),
        (None, chart::Kind::Repository { name, version, .. }) => {
            (name.clone(), version.clone(), content.app_version.clone())
        }
        _ => Default::default(),
    };
    if content.chart_name == name
        && content.chart_version == version
        && content.app_version == app_version
        && content.config == *values
    {
        Operation::CheckLive
    } else {
        Operation::Upgrade("adopting the release: its chart or values differ from Git".into())
    }
}

/// `name`, `version` and `appVersion` from a chart's Chart.yaml.
fn chart_metadata(dir: &std::path::Path) -> (String, String, String) {
    let text = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap_or_default();
    let chart = parse_documents(&text, &ParseLimits::default())
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or(Value::Null);
    let field = |k: &str| match &chart[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    (field("name"), field("version"), field("appVersion"))
}

/// The values helm is given: `valuesFrom` in order, then `spec.values`.
/// Errors name the source, never what it holds.
async fn merged_values(
    cluster: Option<&Cluster>,
    spec: &ReleaseSpec,
    chart_dir: Option<&std::path::Path>,
    proxy: Option<&str>,
    access: &external::Access,
) -> Result<Value, String> {
    let mut merged = json!({});
    for source in &spec.values_from {
        let text = match read_source(cluster, source, chart_dir, proxy, access).await? {
            Some(t) if t.is_empty() => continue,
            Some(t) => t,
            None if source.optional() => continue,
            None => {
                return Err(format!(
                    "valuesFrom {source} not found (mark it optional: true if it may be missing)"
                ));
            }
        };
        let docs = parse_documents(&text, &ParseLimits::default())
            .map_err(|e| format!("valuesFrom {source} is not YAML: {e}"))?;
        for doc in docs {
            if !doc.is_object() {
                return Err(format!("valuesFrom {source} is not a mapping of values"));
            }
            release::merge_values(&mut merged, &doc);
        }
    }
    release::merge_values(&mut merged, &spec.values);
    Ok(merged)
}

/// The text of one values source; `Some("")` for a source in the cluster
/// when there is no cluster to read it from (offline checks).
async fn read_source(
    cluster: Option<&Cluster>,
    source: &ValuesSource,
    chart_dir: Option<&std::path::Path>,
    proxy: Option<&str>,
    access: &external::Access,
) -> Result<Option<String>, String> {
    if let ValuesSource::External { url, .. } = source {
        if !access.fetch {
            return Ok(Some(String::new()));
        }
        let (url, proxy, access) = (url.clone(), proxy.map(str::to_string), access.clone());
        return tokio::task::spawn_blocking(move || {
            external::fetch(&url, proxy.as_deref(), &access)
        })
        .await
        .expect("fetch task")
        .map_err(|e| format!("cannot read valuesFrom {source}: {e}"));
    }
    let in_cluster = matches!(
        source,
        ValuesSource::ConfigMap { .. } | ValuesSource::Secret { .. }
    );
    let Some(cluster) = cluster.filter(|_| in_cluster) else {
        if in_cluster {
            return Ok(Some(String::new()));
        }
        return read_file_source(source, chart_dir);
    };
    let read_err = |e: kube::Error| format!("cannot read valuesFrom {source}: {e}");
    match source {
        ValuesSource::ConfigMap {
            name,
            namespace,
            key,
            ..
        } => {
            let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
            let cm = api.get_opt(name).await.map_err(read_err)?;
            Ok(cm.and_then(|c| c.data).and_then(|mut d| d.remove(key)))
        }
        ValuesSource::Secret {
            name,
            namespace,
            key,
            ..
        } => {
            let api: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
            let secret = api.get_opt(name).await.map_err(read_err)?;
            let Some(bytes) = secret.and_then(|s| s.data).and_then(|mut d| d.remove(key)) else {
                return Ok(None);
            };
            String::from_utf8(bytes.0)
                .map(Some)
                .map_err(|_| format!("valuesFrom {source} is not UTF-8 text"))
        }
        _ => read_file_source(source, chart_dir),
    }
}

fn read_file_source(
    source: &ValuesSource,
    chart_dir: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    match source {
        ValuesSource::ChartFile { path, .. } => {
            let Some(dir) = chart_dir else {
                return Err(format!(
                    "valuesFrom {source}: chartFileRef needs a chart from Git; for a chart from a Helm repository put the values in a ConfigMap"
                ));
            };
            match std::fs::read_to_string(dir.join(path)) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read valuesFrom {source}: {e}")),
            }
        }
        ValuesSource::External { .. }
        | ValuesSource::ConfigMap { .. }
        | ValuesSource::Secret { .. } => unreachable!("read by read_source"),
    }
}

/// A directory of this operation's own for the values file and any copy of
/// the chart; only the daemon's user can read it.
fn work_dir(settings: &Settings, spec: &ReleaseSpec) -> Result<scratch::Dir, Failure> {
    scratch::Dir::new(&settings.cache.join("work"), &spec.release_name).map_err(|e| {
        fail(
            "DeployFailed",
            format!("cannot prepare a work directory: {e}"),
        )
    })
}

/// Private scratch directories, removed when dropped.
mod scratch {
    use std::os::unix::fs::DirBuilderExt;
    use std::path::{Path, PathBuf};

    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(parent: &Path, name: &str) -> std::io::Result<Dir> {
            std::fs::create_dir_all(parent)?;
            static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = parent.join(format!("{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            Ok(Dir(dir))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Credentials for a chart repository from `chartPullSecret`.
async fn pull_credentials(
    cluster: &Cluster,
    located: &chart::Located,
    namespace: &str,
) -> Result<Option<(String, String)>, Failure> {
    let chart::Kind::Repository {
        pull_secret: Some(name),
        ..
    } = &located.kind
    else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|e| {
        fail(
            "ChartFetchFailed",
            format!("cannot read chartPullSecret {namespace}/{name}: {e}"),
        )
    })?;
    let data = secret.and_then(|s| s.data).ok_or_else(|| {
        fail(
            "ChartFetchFailed",
            format!("chartPullSecret {namespace}/{name} not found"),
        )
    })?;
    let field = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    if let (Some(u), Some(p)) = (field("username"), field("password")) {
        return Ok(Some((u, p)));
    }
    // helm's own repositories.yaml: the entry for this repository's URL.
    let chart::Kind::Repository { url, .. } = &located.kind else {
        return Ok(None);
    };
    let entry = field("repositories.yaml")
        .and_then(|text| parse_documents(&text, &ParseLimits::default()).ok())
        .and_then(|docs| docs.into_iter().next())
        .and_then(|file| {
            file["repositories"].as_array()?.iter().find_map(|r| {
                let same = r["url"].as_str()?.trim_end_matches('/') == url.trim_end_matches('/');
                same.then(|| {
                    Some((
                        r["username"].as_str()?.to_string(),
                        r["password"].as_str()?.to_string(),
                    ))
                })?
            })
        });
    entry.map(Some).ok_or_else(|| {
        fail(
            "ChartFetchFailed",
            format!(
                "chartPullSecret {namespace}/{name} needs the keys username and password, \
                 or a repositories.yaml with an entry for {}",
                crate::source::remote::redact(url)
            ),
        )
    })
}

/// Makes the chart ready and writes the values where only helm reads them.
/// Without a cluster (offline checks) no chartPullSecret is read.
async fn prepare(
    cluster: Option<&Cluster>,
    settings: &Settings,
    spec: &ReleaseSpec,
    located: &chart::Located,
    values: &Value,
    work: &std::path::Path,
) -> Result<(PathBuf, PathBuf), Failure> {
    let namespace = spec.id.namespace.clone().unwrap_or_default();
    let credentials = match cluster {
        Some(cluster) => pull_credentials(cluster, located, &namespace).await?,
        None => None,
    };
    let chart = chart::prepare(located, &settings.helm, &settings.cache, work, credentials)
        .await
        .map_err(|e| fail("ChartFetchFailed", crate::error_chain(&e)))?;
    let values_file = work.join("values.json");
    std::fs::write(
        &values_file,
        serde_json::to_vec(values).expect("values serialize"),
    )
    .map_err(|e| fail("DeployFailed", format!("cannot write the values file: {e}")))?;
    Ok((chart, values_file))
}

#[allow(clippy::too_many_arguments)]
async fn install_or_upgrade(
    ctx: &Context<'_>,
    item: &Item,
    spec: &ReleaseSpec,
    located: &chart::Located,
    values: &Value,
    digests: &Digests,
    deployed: Option<u32>,
    why: &str,
) -> Result<Outcome, Failure> {
    ctx.cluster
        .fenced()
        .map_err(|e| fail("DeployFailed", e.to_string()))?;
    let work = work_dir(ctx.settings, spec)?;
    let (chart, values_file) = prepare(
        Some(ctx.cluster),
        ctx.settings,
        spec,
        located,
        values,
        &work.0,
    )
    .await?;
    let labels = digests.labels();
    let verb = if deployed.is_some() {
        "upgrading"
    } else {
        "installing"
    };
    tracing::info!(release = %spec.release_name, namespace = %spec.target_namespace, "{verb}: {why}");
    let mut args = binary::UpgradeArgs {
        release: &spec.release_name,
        namespace: &spec.target_namespace,
        chart: &chart,
        values_file: &values_file,
        timeout: spec.timeout,
        wait: spec.wait,
        force: spec.force_upgrade,
        skip_crds: spec.skip_crds,
        max_history: spec.max_history,
        disable_openapi_validation: spec.disable_openapi_validation,
        reset_values: spec.reset_values,
        labels: &labels,
        proxy: ctx.sources.proxy_settings.as_ref(),
        allowed: None,
    };
    let namespaced_kinds = match ctx.settings.allow_namespaces.is_empty() {
        true => Vec::new(),
        false => check_chart(ctx, spec, &args).await?,
    };
    if !ctx.settings.allow_namespaces.is_empty() {
        args.allowed = Some(binary::Allowed {
            namespaces: &ctx.settings.allow_namespaces,
            kinds: &namespaced_kinds,
        });
    }
    let result = ctx.settings.helm.upgrade(&args).await;
    drop(work);
    match result {
        Ok(()) => {
            let (action, reason) = match deployed {
                Some(_) => (ReleaseAction::Upgraded, "ReleaseUpgraded"),
                None => (ReleaseAction::Installed, "ReleaseInstalled"),
            };
            let message = (!why.is_empty()).then(|| why.to_string());
            let text = message.clone().unwrap_or_else(|| action.to_string());
            event(ctx.cluster, &item.id, "Normal", reason, &text).await;
            Ok(Outcome {
                action,
                message,
                rolled_back: false,
            })
        }
        Err(e) => {
            let failed = e.to_string();
            event(ctx.cluster, &item.id, "Warning", "ReleaseFailed", &failed).await;
            match deployed {
                Some(to) if spec.rollback.enable => {
                    tracing::warn!(release = %spec.release_name, "{failed}; rolling back to revision {to}");
                    match rollback(ctx, spec, to).await {
                        Ok(()) => {
                            let message = format!("{failed}; rolled back to revision {to}");
                            event(
                                ctx.cluster,
                                &item.id,
                                "Warning",
                                "ReleaseRolledBack",
                                &message,
                            )
                            .await;
                            Err(fail("RolledBack", message))
                        }
                        Err(r) => Err(fail(
                            "RollbackFailed",
                            format!("{failed}; the rollback failed too: {r}"),
                        )),
                    }
                }
                _ => Err(fail("DeployFailed", failed)),
            }
        }
    }
}

/// Under the allow-list: renders the chart with the values helm will be
/// given (hooks and CRDs included) and checks every object as a plain
/// manifest is checked; the namespaced kinds it found, for the
/// post-renderer to hold the install to.
async fn check_chart(
    ctx: &Context<'_>,
    spec: &ReleaseSpec,
    args: &binary::UpgradeArgs<'_>,
) -> Result<Vec<String>, Failure> {
    let refused = |why: String| refuse("NotAllowed", why);
    let render_failed = |e: binary::Error| fail("DeployFailed", e.to_string());
    // The post-renderer is the allow-list's last check at install.
    if ctx.settings.helm.post_renderer.is_none() {
        return Err(fail(
            "DeployFailed",
            "under --k8s-allow-namespace helm needs tidegate as its post-renderer, and tidegate cannot name its own binary",
        ));
    }
    // Offline, CRDs and hooks included; then as the install would render
    // it against the cluster (`lookup`, capabilities), hooks included.
    let helm = &ctx.settings.helm;
    let offline = helm
        .template(
            &spec.release_name,
            &spec.target_namespace,
            args.chart,
            args.values_file,
            spec.skip_crds,
            None,
        )
        .await
        .map_err(render_failed)?;
    let release: Value = serde_json::from_str(
        &helm.upgrade_dry_run(args).await.map_err(render_failed)?,
    )
    .map_err(|e| {
        fail(
            "DeployFailed",
            format!("helm's dry run printed no release: {e}"),
        )
    })?;
    let mut texts = vec![
        offline,
        release["manifest"].as_str().unwrap_or_default().to_string(),
    ];
    texts.extend(
        release["hooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["manifest"].as_str().map(str::to_string)),
    );
    let mut docs = Vec::new();
    for text in &texts {
        docs.extend(parse_documents(text, &ParseLimits::default()).map_err(|e| {
            fail(
                "DeployFailed",
                format!("the chart renders YAML that cannot be read: {e}"),
            )
        })?);
    }
    let mut rendered = Vec::new();
    for doc in docs.iter().filter(|d| !d.is_null()) {
        let Some(mut id) = allowed::rendered_ref(doc) else {
            return Err(refused(
                "the chart renders a document without apiVersion and kind".to_string(),
            ));
        };
        let namespaced = ctx.cluster.resolve(&id).await.ok().map(|r| r.namespaced());
        match namespaced {
            Some(true) => {
                id.namespace
                    .get_or_insert_with(|| spec.target_namespace.clone());
            }
            Some(false) => id.namespace = None,
            None => {}
        }
        rendered.push(allowed::Rendered { id, namespaced });
    }
    if let Some(why) = allowed::objects_refusal(&rendered, &ctx.settings.allow_namespaces) {
        return Err(refused(why));
    }
    let mut kinds: Vec<String> = rendered.iter().map(|r| allowed::kind_key(&r.id)).collect();
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

async fn rollback(ctx: &Context<'_>, spec: &ReleaseSpec, to: u32) -> Result<(), binary::Error> {
    ctx.cluster.fenced().map_err(|e| binary::Error::Failed {
        command: "rollback".into(),
        message: e.to_string(),
    })?;
    let r = &spec.rollback;
    ctx.settings
        .helm
        .rollback(&binary::RollbackArgs {
            release: &spec.release_name,
            namespace: &spec.target_namespace,
            revision: to,
            timeout: r.timeout.unwrap_or(spec.timeout),
            wait: r.wait,
            force: r.force,
            recreate: r.recreate,
            disable_hooks: r.disable_hooks,
            max_history: spec.max_history,
        })
        .await
}

/// Uninstalls the release a HelmRelease (as it is live) made, if Helm has
/// it. Called before the HelmRelease is pruned.
pub async fn uninstall(
    cluster: &Cluster,
    settings: &Settings,
    id: &ObjectRef,
    live: &Value,
    claimed: &[(String, String)],
) -> Result<Option<String>, String> {
    let spec = release::parse(id, live).map_err(|e| e.to_string())?;
    // What the live HelmRelease names is bound by the allow-list too, and a
    // release another HelmRelease in Git asks for is not this one's to end.
    if let Some(why) = allowed::spec_refusal(&spec, &settings.allow_namespaces) {
        return Err(why);
    }
    let key = (spec.target_namespace.clone(), spec.release_name.clone());
    if claimed.contains(&key) {
        return Ok(None);
    }
    let history = storage::history(&cluster.client, &spec.target_namespace, &spec.release_name)
        .await
        .map_err(|e| format!("cannot read the release's Helm history: {e}"))?;
    if history.records.is_empty() {
        return Ok(None);
    }
    cluster.fenced().map_err(|e| e.to_string())?;
    settings
        .helm
        .uninstall(&spec.release_name, &spec.target_namespace, spec.timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(format!(
        "{}/{}",
        spec.target_namespace, spec.release_name
    )))
}

/// helm-operator's phase names.
fn phase(outcome: &Result<Outcome, Failure>) -> &'static str {
    match outcome {
        Ok(o) if o.rolled_back => "RolledBack",
        Ok(_) => "Succeeded",
        Err(f) => f.phase,
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    previous: &Value,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let before = previous["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind));
    let since = before
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({"type": kind, "status": status, "reason": reason,
           "message": message.chars().take(1000).collect::<String>(),
           "lastTransitionTime": since, "lastUpdateTime": now})
}

/// Writes the outcome to the HelmRelease's status subresource, only when
/// it says something new (a no-op sync writes nothing).
async fn write_status(
    ctx: &Context<'_>,
    item: &Item,
    spec: Option<&ReleaseSpec>,
    latest: Option<&storage::Record>,
    outcome: &Result<Outcome, Failure>,
    chart_revision: Option<String>,
) {
    let api = ctx
        .cluster
        .api(&item.resolved, item.id.namespace.as_deref());
    // As the plan listed it (status included), unless this sync applied it
    // and so may have moved its generation.
    let live = match (&item.live, item.changed) {
        (Some(live), false) => Some(live.clone()),
        _ => api
            .get_opt(&item.id.name)
            .await
            .ok()
            .flatten()
            .and_then(|o| serde_json::to_value(o).ok()),
    };
    let Some(live) = live else { return };
    let previous = live["status"].clone();
    let now = crate::cluster::state::now();
    let mut status = previous.as_object().cloned().unwrap_or_default();
    status.insert(
        "observedGeneration".into(),
        live["metadata"]["generation"].clone(),
    );
    status.insert("phase".into(), phase(outcome).into());
    if let Some(spec) = spec {
        status.insert("releaseName".into(), spec.release_name.clone().into());
    }
    if let Some(latest) = latest {
        status.insert("releaseStatus".into(), latest.status.clone().into());
    }
    let mut conditions: Vec<Value> = previous["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut set = |c: Value| {
        conditions.retain(|old| old["type"] != c["type"]);
        conditions.push(c);
    };
    let unchanged = matches!(outcome, Ok(o) if o.action == ReleaseAction::Unchanged);
    match outcome {
        Ok(o) => {
            if let Some(rev) = &chart_revision {
                status.insert("revision".into(), rev.clone().into());
                status.insert("lastAttemptedRevision".into(), rev.clone().into());
            }
            let released_before = previous["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Released" && c["status"] == "True")
            });
            if !(unchanged && released_before) {
                let message = o.message.clone().unwrap_or_else(|| o.action.to_string());
                set(condition(
                    "Released",
                    true,
                    &format!("{:?}", o.action),
                    &message,
                    &previous,
                    &now,
                ));
                if o.action != ReleaseAction::RolledBack {
                    set(condition(
                        "RolledBack",
                        false,
                        "Released",
                        "",
                        &previous,
                        &now,
                    ));
                }
            }
        }
        Err(f) => {
            if let Some(rev) = &chart_revision {
                status.insert("lastAttemptedRevision".into(), rev.clone().into());
            }
            set(condition(
                "Released", false, f.phase, &f.message, &previous, &now,
            ));
            if f.phase == "RolledBack" {
                set(condition(
                    "RolledBack",
                    true,
                    "RolledBack",
                    &f.message,
                    &previous,
                    &now,
                ));
            }
        }
    }
    status.insert("conditions".into(), Value::Array(conditions));
    let status = Value::Object(status);
    if without_update_times(&status) == without_update_times(&previous) {
        return;
    }
    if ctx.cluster.fenced().is_err() {
        return;
    }
    let patch = json!({"status": status});
    if let Err(e) = api
        .patch_status(
            &item.id.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(object = %item.id, "cannot write the HelmRelease status: {e}");
    }
}

fn without_update_times(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conditions) = s["conditions"].as_array_mut() {
        for c in conditions {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastUpdateTime");
            }
        }
    }
    s
}

/// An Event on the HelmRelease, where `kubectl describe` shows it.
async fn event(cluster: &Cluster, id: &ObjectRef, kind: &str, reason: &str, message: &str) {
    let Some(namespace) = id.namespace.clone() else {
        return;
    };
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", id.name)),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(id.api_version()),
            kind: Some(id.kind.clone()),
            name: Some(id.name.clone()),
            namespace: Some(namespace.clone()),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(message.chars().take(1000).collect()),
        type_: Some(kind.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some("tidegate".into()),
        reporting_instance: Some("tidegate".into()),
        action: Some("Reconcile".into()),
        count: Some(1),
        ..Event::default()
    };
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), &namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(object = %id, "cannot emit an Event: {e}");
    }
}

/// The HelmReleases a plan holds and may reconcile.
pub fn is_release(id: &ObjectRef) -> bool {
    release::is_helm_release(id)
}

/// What `diff` and `validate` show of one release.
#[derive(Debug)]
pub struct Preview {
    /// `namespace/name` of the Helm release.
    pub release: String,
    pub namespace: String,
    /// Why it would be installed or upgraded; `None` when unchanged.
    pub change: Option<String>,
    /// The objects the chart renders to, when it would change.
    pub rendered: Vec<Value>,
}

/// Renders a HelmRelease's chart with `helm template`, when a sync would
/// install or upgrade it (with a cluster) or always (offline, without one).
pub async fn preview(
    cluster: Option<&Cluster>,
    settings: &Settings,
    sources: &chart::Sources,
    id: &ObjectRef,
    object: &Value,
) -> Result<Preview, String> {
    let spec = release::parse(id, object).map_err(|e| e.to_string())?;
    let w = wanted(cluster, sources, &spec)
        .await
        .map_err(|f| f.message)?;
    let change = match cluster {
        Some(cluster) => match needed(cluster, &spec, &w).await.map_err(|f| f.message)?.0 {
            None => None,
            Some(Operation::Install) => Some("would be installed".to_string()),
            Some(Operation::Upgrade(why)) => Some(format!("would be upgraded: {why}")),
            Some(Operation::Blocked(why)) => return Err(why),
            Some(op) => Some(format!("would be recovered first: {op:?}")),
        },
        None => Some("rendered offline".to_string()),
    };
    let mut preview = Preview {
        release: format!("{}/{}", spec.target_namespace, spec.release_name),
        namespace: spec.target_namespace.clone(),
        change,
        rendered: Vec::new(),
    };
    if preview.change.is_none() {
        return Ok(preview);
    }
    let work = work_dir(settings, &spec).map_err(|f| f.message)?;
    let (chart, values_file) = prepare(cluster, settings, &spec, &w.located, &w.values, &work.0)
        .await
        .map_err(|f| f.message)?;
    let manifest = settings
        .helm
        .template(
            &spec.release_name,
            &spec.target_namespace,
            &chart,
            &values_file,
            spec.skip_crds,
            sources.proxy_settings.as_ref(),
        )
        .await
        .map_err(|e| e.to_string())?;
    preview.rendered = parse_documents(&manifest, &ParseLimits::default())
        .map_err(|e| format!("the chart renders YAML that cannot be read: {e}"))?;
    Ok(preview)
}
