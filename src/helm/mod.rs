//! Helm releases: the HelmRelease objects a sync applied in; for each, the
//! chart located, the values merged, the operation decided from Helm's own
//! record, run with the real `helm` binary, and the outcome written to the
//! HelmRelease's status; one [`ReleaseStatus`] per release out.
//!
//! A release that fails fails only itself: the others, and the plain
//! manifests, go on.

pub mod allowed;
mod background;
pub mod binary;
pub mod chart;
pub mod decide;
pub mod drift;
pub mod external;
mod live;
mod operate;
mod preview;
pub mod release;
mod status;
pub mod storage;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Resolved};
use crate::model::ObjectRef;
use crate::model::record::{ReleaseAction, ReleaseStatus};
use crate::render::{ParseLimits, manifest::parse_documents};
use background::*;
pub use background::{Background, OPERATION_WAIT};
pub use binary::Helm;
use decide::{Digests, Operation, Retry};
use live::*;
pub use operate::uninstall;
use operate::*;
pub use preview::{Preview, preview};
use release::{ReleaseSpec, ValuesSource};
use status::*;
use values::*;

/// Releases reconciled at once.
pub const CONCURRENCY: usize = 4;

/// How a sync runs helm.
#[derive(Debug, Clone)]
pub struct Settings {
    pub binary: Helm,
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

/// One HelmRelease to reconcile, as applied, and as the plan found it live.
#[derive(Debug, Clone)]
pub struct AppliedRelease {
    pub id: ObjectRef,
    pub object: Value,
    pub resolved: Resolved,
    /// The live object the plan listed, status included.
    pub live: Option<Value>,
    /// Created or changed by this sync: its generation is read again.
    pub changed: bool,
}

/// Why one release failed, by helm-operator's phase name, with the message
/// for its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// Git's HelmRelease cannot be read.
    #[error("{0}")]
    Invalid(String),
    /// Git asks for what the allow-list refuses.
    #[error("{0}")]
    NotAllowed(String),
    /// Another HelmRelease in Git asks for the same release.
    #[error("{0}")]
    Duplicate(String),
    #[error("{0}")]
    ChartFetchFailed(String),
    #[error("{0}")]
    ValuesFailed(String),
    #[error("{0}")]
    DeployFailed(String),
    /// A deploy that failed before on the same chart and values.
    #[error("{0}")]
    DeployRefused(String),
    /// The upgrade failed and was rolled back.
    #[error("{0}")]
    RolledBack(String),
    #[error("{0}")]
    RollbackFailed(String),
}

impl ReleaseError {
    /// helm-operator's phase for it, as the HelmRelease's status shows.
    pub fn phase(&self) -> &'static str {
        match self {
            ReleaseError::Invalid(_) => "Invalid",
            ReleaseError::NotAllowed(_) => "NotAllowed",
            ReleaseError::Duplicate(_) => "Duplicate",
            ReleaseError::ChartFetchFailed(_) => "ChartFetchFailed",
            ReleaseError::ValuesFailed(_) => "ValuesFailed",
            ReleaseError::DeployFailed(_) | ReleaseError::DeployRefused(_) => "DeployFailed",
            ReleaseError::RolledBack(_) => "RolledBack",
            ReleaseError::RollbackFailed(_) => "RollbackFailed",
        }
    }

    /// Only a change in Git can mend it: trying again sooner helps nothing.
    pub fn waits_for_git(&self) -> bool {
        matches!(
            self,
            ReleaseError::Invalid(_)
                | ReleaseError::NotAllowed(_)
                | ReleaseError::Duplicate(_)
                | ReleaseError::DeployRefused(_)
        )
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
    items: &[AppliedRelease],
    observed: Observed,
) -> Vec<ReleaseStatus> {
    let phase = std::time::Instant::now();
    // A release helm is still at work on is neither decided nor touched:
    // its operation's end brings the next sync.
    let (running, items): (Vec<&AppliedRelease>, Vec<&AppliedRelease>) =
        items.iter().partition(|i| {
            ctx.settings.background.as_ref().is_some_and(|b| {
                b.is_running(&i.id)
                    || release::parse(&i.id, &i.object).is_ok_and(|spec| {
                        b.is_running_release(&(spec.target_namespace, spec.release_name))
                    })
            })
        });
    let items: Vec<AppliedRelease> = items.into_iter().cloned().collect();
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

/// Parses each release, locates its chart and merges its values (many at
/// once), reads every Helm record in one request, then decides.
async fn decide_all(
    ctx: &Context<'_>,
    items: &[AppliedRelease],
    mut observed: Observed,
) -> Vec<Decided> {
    let prepared = prepare_all(ctx, items).await;
    let keys: Vec<(String, String)> = prepared
        .iter()
        .flatten()
        .map(|(spec, _)| (spec.target_namespace.clone(), spec.release_name.clone()))
        .collect();
    let histories = match histories(ctx, &keys, &mut observed).await {
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

/// Each HelmRelease read, checked against the allow-list and resolved to
/// the chart and values Git wants; two asking for one release are refused.
async fn prepare_all(
    ctx: &Context<'_>,
    items: &[AppliedRelease],
) -> Vec<Result<(ReleaseSpec, Wanted), Refusal>> {
    let prepared: Vec<Result<(ReleaseSpec, Wanted), Refusal>> =
        stream::iter(items.iter().map(|item| async move {
            let spec = release::parse(&item.id, &item.object)
                .map_err(|e| Box::new((None, ReleaseError::Invalid(e.to_string()))))?;
            if let Some(why) = allowed::spec_refusal(&spec, &ctx.settings.allow_namespaces) {
                return Err(Box::new((Some(spec), ReleaseError::NotAllowed(why))));
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
    prepared
        .into_iter()
        .map(|p| match p {
            Ok((spec, _)) if duplicates.contains_key(&spec.id) => {
                let why = duplicates[&spec.id].clone();
                Err(Box::new((Some(spec), ReleaseError::Duplicate(why))))
            }
            other => other,
        })
        .collect()
}

/// Helm's history of each release (`namespace`, `name`): read while the
/// plan was made, or now for releases added since.
async fn histories(
    ctx: &Context<'_>,
    keys: &[(String, String)],
    observed: &mut Observed,
) -> Result<Vec<storage::History>, kube::Error> {
    let missing: Vec<(String, String)> = keys
        .iter()
        .filter(|k| !observed.histories.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let read = storage::histories(&ctx.cluster.client, &missing).await?;
        observed.histories.extend(missing.into_iter().zip(read));
    }
    Ok(keys
        .iter()
        .map(|k| observed.histories.remove(k).unwrap_or_default())
        .collect())
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
pub async fn read_records(cluster: &Cluster, releases: &[(String, String)]) -> Observed {
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
    crate::model::checksum::checksum(values)[..32].to_string()
}

/// What a helm operation that worked did.
struct Success {
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
type Refusal = Box<(Option<ReleaseSpec>, ReleaseError)>;

type Decided = Result<Decision, Refusal>;

/// Runs what a decided release needs, then records the outcome in its
/// status and in the report.
async fn finish(ctx: &Context<'_>, item: &AppliedRelease, decided: Decided) -> ReleaseStatus {
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
        status.message = outcome.as_ref().err().map(|f| f.to_string());
        status.waits_for_git = outcome.as_ref().is_err_and(|f| f.waits_for_git());
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
            status.message = Some(f.to_string());
            status.waits_for_git = f.waits_for_git();
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

/// The operation a release needs now (`None`: nothing), from Helm's record,
/// and for an unchanged release the live state of its objects.
async fn needed(
    cluster: &Cluster,
    spec: &ReleaseSpec,
    wanted: &Wanted,
) -> Result<(Option<Operation>, storage::History), ReleaseError> {
    let history = storage::history(&cluster.client, &spec.target_namespace, &spec.release_name)
        .await
        .map_err(history_failure)?;
    let mut decided = decide_many(cluster, vec![(spec, wanted, history)], HashMap::new()).await;
    Ok(decided.pop().expect("one release in, one out"))
}

fn history_failure(e: kube::Error) -> ReleaseError {
    ReleaseError::DeployFailed(format!("cannot read the release's Helm history: {e}"))
}

/// The HelmReleases a plan holds and may reconcile.
pub fn is_release(id: &ObjectRef) -> bool {
    release::is_helm_release(id)
}
