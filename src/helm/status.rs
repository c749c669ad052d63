//! The record of a release on its HelmRelease: the status subresource
//! (phase, conditions, revisions) and Events.

use super::*;

/// helm-operator's phase names.
pub(super) fn phase(outcome: &Result<Outcome, ReleaseError>) -> &'static str {
    match outcome {
        Ok(o) if o.rolled_back => "RolledBack",
        Ok(_) => "Succeeded",
        Err(f) => f.phase(),
    }
}

pub(super) fn condition(
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
pub(super) async fn write_status(
    ctx: &Context<'_>,
    item: &Item,
    spec: Option<&ReleaseSpec>,
    latest: Option<&storage::Record>,
    outcome: &Result<Outcome, ReleaseError>,
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
                "Released",
                false,
                f.phase(),
                &f.to_string(),
                &previous,
                &now,
            ));
            if f.phase() == "RolledBack" {
                set(condition(
                    "RolledBack",
                    true,
                    "RolledBack",
                    &f.to_string(),
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

pub(super) fn without_update_times(status: &Value) -> Value {
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
pub(super) async fn event(
    cluster: &Cluster,
    id: &ObjectRef,
    kind: &str,
    reason: &str,
    message: &str,
) {
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
