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
        let pruning = Pruning {
            cluster,
            settings,
            claimed,
            id,
        };
        if pruning.run(report, on).await == Fate::Kept {
            keep.push(id.clone());
        }
    }
    report.writes += cluster.writes() - writes_before;
    keep
}

/// What became of one object the inventory has and Git no longer does.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Deleted, gone already, or not ours: out of the inventory.
    Dropped,
    /// Still there for a reason the next sync may see gone: kept in it.
    Kept,
}

/// The prune of one object.
struct Pruning<'a> {
    cluster: &'a Cluster,
    settings: &'a Settings,
    claimed: &'a [(String, String)],
    id: &'a ObjectRef,
}

impl Pruning<'_> {
    async fn run(&self, report: &mut SyncReport, on: OnProgress<'_>) -> Fate {
        let (cluster, settings, id) = (self.cluster, self.settings, self.id);
        // The inventory is only as trustworthy as whoever may edit the
        // state: the allow-list binds deletes as it binds applies.
        if let Some(why) = plan::namespace_refusal(id, &settings.allow_namespaces) {
            let warning = format!("{id}: not pruned: {why}");
            tracing::warn!("{warning}");
            warn(report, on, warning);
            return Fate::Kept;
        }
        let resolved = match cluster.resolve(id).await {
            Ok(r) => r,
            Err(e) => {
                // Discovery failed (an aggregated API down, a CRD being
                // removed): the objects may well exist; keep them and retry.
                let why = crate::model::error_chain(&e);
                return self.fail(
                    report,
                    on,
                    format!("not pruned, kept for the next sync: {why}"),
                );
            }
        };
        let live = match cluster.get(&resolved, id).await {
            Ok(Some(obj)) => serde_json::to_value(&obj).expect("objects serialize"),
            Ok(None) => return Fate::Dropped,
            Err(e) => {
                let why = reason(&e);
                return self.fail(report, on, format!("cannot read it to prune it: {why}"));
            }
        };
        let owner = settings.state.owner();
        let dry_run = settings.gc == GarbageCollection::Dry;
        let (check_holders, delete) =
            match plan::prune_step(&live, &settings.sync_set, &owner, dry_run) {
                plan::PruneStep::Leave(why) => {
                    tracing::info!(object = %id, "not pruned: {why}");
                    return Fate::Dropped;
                }
                plan::PruneStep::WouldPrune { check_holders } => (check_holders, false),
                plan::PruneStep::Delete { check_holders } => (check_holders, true),
            };
        if check_holders && let Some(fate) = self.held(&owner, report, on).await {
            return fate;
        }
        if !delete {
            tracing::info!(object = %id, "would prune (--sync-garbage-collection-dry)");
            on(Progress::WouldPrune(id));
            return Fate::Kept;
        }
        if let Some(fate) = self.uninstall(&live, report, on).await {
            return fate;
        }
        match cluster.delete(&resolved, id).await {
            Ok(_) => {
                tracing::info!(object = %id, "pruned");
                on(Progress::Object(id, Action::Pruned));
                report.actions.push((id.clone(), Action::Pruned));
                Fate::Dropped
            }
            Err(e) => {
                let why = e.reason();
                self.fail(
                    report,
                    on,
                    format!("prune failed, retried next sync: {why}"),
                )
            }
        }
    }

    /// `Some` when objects tidegate does not manage still depend on it (or
    /// that cannot be checked): then it is kept.
    async fn held(&self, owner: &str, report: &mut SyncReport, on: OnProgress<'_>) -> Option<Fate> {
        let id = self.id;
        match self
            .cluster
            .holders(id, &self.settings.sync_set, owner)
            .await
        {
            Ok(held) if held.is_empty() => None,
            Ok(held) => {
                let why = format!(
                    "not pruned: {} object(s) tidegate does not manage still depend on it ({}); \
                     remove them, or annotate it tidegate.dev/prune: force",
                    held.len(),
                    first_of(&held, 5),
                );
                tracing::warn!(object = %id, "{why}");
                warn(report, on, format!("{id}: {why}"));
                Some(Fate::Kept)
            }
            Err(e) => {
                let why = reason(&e);
                Some(self.fail(
                    report,
                    on,
                    format!("not pruned: cannot check what it still holds: {why}"),
                ))
            }
        }
    }

    /// A HelmRelease's release goes first: `Some` when it must stay (helm
    /// is still at work on it, or the uninstall failed).
    async fn uninstall(
        &self,
        live: &Value,
        report: &mut SyncReport,
        on: OnProgress<'_>,
    ) -> Option<Fate> {
        let id = self.id;
        let helm = self
            .settings
            .helm
            .as_ref()
            .filter(|_| helm::is_release(id))?;
        if helm.background.as_ref().is_some_and(|b| b.is_running(id)) {
            warn(
                report,
                on,
                format!("{id}: not pruned while helm is still at work on its release"),
            );
            return Some(Fate::Kept);
        }
        match helm::uninstall(self.cluster, helm, id, live, self.claimed).await {
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
                None
            }
            Ok(None) => None,
            Err(why) => Some(self.fail(
                report,
                on,
                format!("not pruned: its Helm release cannot be uninstalled: {why}"),
            )),
        }
    }

    fn fail(&self, report: &mut SyncReport, on: OnProgress<'_>, reason: String) -> Fate {
        failed(report, on, object_error(self.id, None, reason));
        Fate::Kept
    }
}

/// A warning the sync reports and records.
fn warn(report: &mut SyncReport, on: OnProgress<'_>, warning: String) {
    on(Progress::Warning(&warning));
    report.warnings.push(warning);
}

/// The first `n` of `items`, and how many more: `a, b, and 3 more`.
fn first_of(items: &[String], n: usize) -> String {
    let mut text = items
        .iter()
        .take(n)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > n {
        text.push_str(&format!(", and {} more", items.len() - n));
    }
    text
}

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
