//! Applying a plan: staged server-side apply (CRDs first, waiting until
//! they are served), concurrently within a stage.

use super::*;

/// Applies one object as planned.
pub(super) async fn apply_item(
    cluster: &Cluster,
    item: &Planned,
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
                .map_err(|e| fail(format!("recreate failed: {}", e.reason())))
        }
        Err(e) if is_immutable_error(&e) => Err(fail(format!(
            "{}; to delete and recreate the object, annotate it tidegate.dev/force: \"true\"",
            e.reason()
        ))),
        Err(e) => Err(fail(e.reason())),
    }
}

pub(super) async fn apply_stage(
    cluster: &Cluster,
    items: &[Planned],
    settings: &Settings,
    stop: &CancellationToken,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) {
    let writes_before = cluster.writes();
    let mut results = stream::iter(items.iter().filter(|_| !stop.is_cancelled()).map(
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
pub(super) async fn apply_plan(
    cluster: &Cluster,
    mut plan: Plan,
    settings: &Settings,
    stop: &CancellationToken,
    report: &mut SyncReport,
    on: OnProgress<'_>,
) -> Plan {
    report.errors.append(&mut plan.errors);
    for e in &report.errors {
        on(Progress::Failed(e));
    }
    let mut stages: BTreeMap<Stage, Vec<Planned>> = BTreeMap::new();
    for item in std::mem::take(&mut plan.items) {
        stages.entry(item.desired.stage).or_default().push(item);
    }
    let mut done: Vec<Planned> = Vec::new();
    while let Some((stage, items)) = stages.pop_first() {
        if stop.is_cancelled() {
            report.interrupted = true;
            done.extend(items);
            continue;
        }
        apply_stage(cluster, &items, settings, stop, report, on).await;
        if stop.is_cancelled() {
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
pub(super) async fn wait_served(cluster: &Cluster, deferred: &[Manifest]) {
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    for m in deferred {
        while cluster.resolve(&m.id).await.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cluster.forget_kinds();
        }
    }
}

pub(super) fn failed(report: &mut SyncReport, on: OnProgress<'_>, e: ObjectError) {
    on(Progress::Failed(&e));
    report.errors.push(e);
}
