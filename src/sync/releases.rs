//! The HelmReleases a sync applied, handed to helm, and what helm did
//! recorded in the report.

use super::*;

/// Reconciles the HelmReleases the plan applied (not those it failed to
/// apply or that are ignored) with helm.
pub(super) async fn reconcile_releases(
    cluster: &Cluster,
    helm: &helm::Settings,
    charts: &helm::chart::Sources,
    plan: &Plan,
    observed: helm::Observed,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) {
    let failed: HashSet<String> = report.errors.iter().map(|e| e.object.clone()).collect();
    let items: Vec<helm::AppliedRelease> = plan
        .items
        .iter()
        .filter(|i| helm::is_release(&i.desired.id) && i.change != Change::Ignored)
        .filter(|i| !failed.contains(&i.desired.id.to_string()))
        .map(|i| helm::AppliedRelease {
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
