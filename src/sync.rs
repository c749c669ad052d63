//! One sync: source → render → apply, with a report of what happened to every
//! object.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;

use crate::cluster::Cluster;
use crate::cluster::apply::{self, Action, Ownership};
use crate::object::ObjectRef;
use crate::render::{self, DesiredSet, Manifest};
use crate::source::{self, GitSource, Snapshot};

/// Objects applied at once within a stage.
const CONCURRENCY: usize = 16;
const CRD_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Vec<PathBuf>,
    pub default_namespace: String,
    pub sync_set: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetch failed")]
    Source(#[from] source::Error),
    #[error("render of revision {revision} failed: {errors}")]
    Render {
        revision: String,
        errors: render::Errors,
    },
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub revision: String,
    pub applied: Vec<(ObjectRef, Action)>,
    pub failed: Vec<apply::Error>,
}

impl SyncReport {
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty()
    }

    pub fn count(&self, action: Action) -> usize {
        self.applied.iter().filter(|(_, a)| *a == action).count()
    }
}

/// Apply order: CRDs first (and wait for them), then Namespaces, then
/// everything else. Kinds are resolved only after the CRDs exist.
fn early_stage(m: &Manifest) -> Option<u8> {
    match (m.id.group.as_str(), m.id.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => Some(0),
        ("", "Namespace") => Some(1),
        _ => None,
    }
}

/// Where a namespaced kind goes among the namespaced objects: what others
/// refer to first, workloads after, admission webhooks last.
fn kind_rank(id: &ObjectRef) -> u8 {
    match id.kind.as_str() {
        "ServiceAccount" => 0,
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => 1,
        "ConfigMap" | "Secret" | "PersistentVolumeClaim" | "LimitRange" | "ResourceQuota" => 2,
        "Service" => 3,
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => 9,
        _ => 5,
    }
}

/// Fetches, renders and applies one revision.
pub async fn run_once(
    cluster: &Cluster,
    source: &GitSource,
    settings: &Settings,
    on_object: &mut dyn FnMut(&ObjectRef, &Result<Action, &apply::Error>),
) -> Result<SyncReport, Error> {
    let snapshot: Snapshot = source.fetch()?;
    let span = tracing::info_span!("sync", revision = %snapshot.revision);
    let _enter = span.enter();
    let desired =
        render::render(&snapshot.tree, &settings.paths).map_err(|errors| Error::Render {
            revision: snapshot.revision.clone(),
            errors,
        })?;
    drop(_enter);
    let mut report = apply_set(cluster, &desired, settings, on_object).await;
    report.revision = snapshot.revision;
    Ok(report)
}

/// Applies a desired set in stages.
pub async fn apply_set(
    cluster: &Cluster,
    desired: &DesiredSet,
    settings: &Settings,
    on_object: &mut dyn FnMut(&ObjectRef, &Result<Action, &apply::Error>),
) -> SyncReport {
    let ownership = Ownership {
        sync_set: settings.sync_set.clone(),
    };
    let mut report = SyncReport::default();
    let mut stages: Vec<Vec<&Manifest>> = vec![Vec::new(); 3];
    for m in &desired.manifests {
        stages[early_stage(m).map_or(2, usize::from)].push(m);
    }

    for (n, stage) in stages.iter_mut().enumerate() {
        if n == 2 {
            // Cluster-scoped kinds before namespaced ones; then by kind rank.
            let mut keyed = Vec::new();
            for m in stage.drain(..) {
                let cluster_scoped = match cluster.resolve(&m.id).await {
                    Ok(r) => !r.namespaced(),
                    Err(_) => false, // reported when applied
                };
                keyed.push(((!cluster_scoped, kind_rank(&m.id)), m));
            }
            keyed.sort_by_key(|(k, _)| *k);
            let mut groups: Vec<Vec<&Manifest>> = Vec::new();
            let mut last = None;
            for (key, m) in keyed {
                if last != Some(key) {
                    groups.push(Vec::new());
                    last = Some(key);
                }
                groups.last_mut().expect("pushed").push(m);
            }
            for group in groups {
                apply_group(
                    cluster,
                    &group,
                    settings,
                    &ownership,
                    &mut report,
                    on_object,
                )
                .await;
            }
        } else {
            apply_group(cluster, stage, settings, &ownership, &mut report, on_object).await;
        }
        if n == 0 && !stage.is_empty() {
            for m in stage.iter() {
                if let Err(e) = apply::wait_established(cluster, &m.id, CRD_ESTABLISH_TIMEOUT).await
                {
                    report.failed.push(e);
                }
            }
            cluster.forget_kinds();
        }
    }
    report
}

async fn apply_group(
    cluster: &Cluster,
    group: &[&Manifest],
    settings: &Settings,
    ownership: &Ownership,
    report: &mut SyncReport,
    on_object: &mut dyn FnMut(&ObjectRef, &Result<Action, &apply::Error>),
) {
    let mut results = stream::iter(group.iter().map(|m| async move {
        (
            m.id.clone(),
            apply::apply(cluster, m, &settings.default_namespace, ownership).await,
        )
    }))
    .buffered(CONCURRENCY);
    while let Some((id, result)) = results.next().await {
        match result {
            Ok((placed, action)) => {
                tracing::info!(object = %placed, "{action}");
                on_object(&placed, &Ok(action));
                report.applied.push((placed, action));
            }
            Err(e) => {
                tracing::warn!(object = %id, error = %crate::error_chain(&e), "apply failed");
                on_object(&id, &Err(&e));
                report.failed.push(e);
            }
        }
    }
}
