//! Pruning: what the inventory lets a sync delete, and the deletes, each
//! only while the object is still ours, allowed and holds nothing else.

use super::*;

/// Deletes what Git no longer has, if it still carries our marks and holds
/// nothing tidegate does not manage. Returns the refs that stay in the
/// inventory (kinds discovery cannot resolve, failed deletes, dry runs).
pub(super) async fn prune(
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
                    crate::model::error_chain(&e)
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
        let forced = live["metadata"]["annotations"][crate::model::marks::PRUNE_ANNOTATION]
            .as_str()
            == Some("force");
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
                let reason = format!("prune failed, retried next sync: {}", e.reason());
                failed(report, on, object_error(id, None, reason));
            }
        }
    }
    report.writes += cluster.writes() - writes_before;
    keep
}

/// What the inventory lets a sync of this desired set prune. Whatever Git
/// still has is not pruned, even if it is ignored, failed to place, waits
/// for its CRD, or moved to another API version.
pub(super) fn prune_decision(
    set: &DesiredSet,
    inventory: &Inventory,
    settings: &Settings,
) -> plan::PrunePlan {
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

/// What a rebuilt inventory means: the objects it found that Git no longer
/// has, which the next sync prunes (this one only says so).
pub(super) fn rebuilt_warning(
    set: &DesiredSet,
    inventory: &Inventory,
    settings: &Settings,
) -> String {
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
