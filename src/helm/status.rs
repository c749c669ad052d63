//! The record of a release on its HelmRelease: the status subresource
//! (phase, conditions, revisions) and Events.

use super::*;

/// helm-operator's phase names.
pub(super) fn phase(outcome: &Result<Success, ReleaseError>) -> &'static str {
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
    item: &AppliedRelease,
    spec: Option<&ReleaseSpec>,
    latest: Option<&storage::Record>,
    outcome: &Result<Success, ReleaseError>,
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
    let record = Record {
        release_name: spec.map(|s| s.release_name.as_str()),
        release_status: latest.map(|l| l.status.as_str()),
        outcome,
        chart_revision: chart_revision.as_deref(),
    };
    let Some(status) = next_status(&live, &record, &crate::cluster::state::now()) else {
        return;
    };
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

/// What a reconcile tells the HelmRelease's status.
pub(super) struct Record<'a> {
    pub release_name: Option<&'a str>,
    /// Helm's status of the latest revision.
    pub release_status: Option<&'a str>,
    pub outcome: &'a Result<Success, ReleaseError>,
    /// The chart's Git revision or version, when known.
    pub chart_revision: Option<&'a str>,
}

/// The HelmRelease's next status (phase, conditions, revisions) after
/// `record`, at `now`; `None` when it would say nothing new.
pub(super) fn next_status(live: &Value, record: &Record<'_>, now: &str) -> Option<Value> {
    let previous = live["status"].clone();
    let mut status = previous.as_object().cloned().unwrap_or_default();
    status.insert(
        "observedGeneration".into(),
        live["metadata"]["generation"].clone(),
    );
    status.insert("phase".into(), phase(record.outcome).into());
    if let Some(name) = record.release_name {
        status.insert("releaseName".into(), name.into());
    }
    if let Some(latest) = record.release_status {
        status.insert("releaseStatus".into(), latest.into());
    }
    if let Some(rev) = record.chart_revision {
        if record.outcome.is_ok() {
            status.insert("revision".into(), rev.into());
        }
        status.insert("lastAttemptedRevision".into(), rev.into());
    }
    let conditions = next_conditions(&previous, record.outcome, now);
    status.insert("conditions".into(), Value::Array(conditions));
    let status = Value::Object(status);
    (without_update_times(&status) != without_update_times(&previous)).then_some(status)
}

/// The conditions `Released` and `RolledBack` after an outcome; an
/// unchanged release that was released before keeps them as they were.
fn next_conditions(
    previous: &Value,
    outcome: &Result<Success, ReleaseError>,
    now: &str,
) -> Vec<Value> {
    let mut conditions: Vec<Value> = previous["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut set = |c: Value| {
        conditions.retain(|old| old["type"] != c["type"]);
        conditions.push(c);
    };
    match outcome {
        Ok(o) => {
            let unchanged = o.action == ReleaseAction::Unchanged;
            let released_before = previous["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Released" && c["status"] == "True")
            });
            if !(unchanged && released_before) {
                let message = o.message.clone().unwrap_or_else(|| o.action.to_string());
                let reason = format!("{:?}", o.action);
                set(condition(
                    "Released", true, &reason, &message, previous, now,
                ));
                if o.action != ReleaseAction::RolledBack {
                    set(condition(
                        "RolledBack",
                        false,
                        "Released",
                        "",
                        previous,
                        now,
                    ));
                }
            }
        }
        Err(f) => {
            let message = f.to_string();
            set(condition(
                "Released",
                false,
                f.phase(),
                &message,
                previous,
                now,
            ));
            if matches!(f, ReleaseError::RolledBack(_)) {
                set(condition(
                    "RolledBack",
                    true,
                    "RolledBack",
                    &message,
                    previous,
                    now,
                ));
            }
        }
    }
    conditions
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_live(status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": 3}, "status": status})
    }

    fn mk_ok(action: ReleaseAction) -> Result<Success, ReleaseError> {
        Ok(Success {
            action,
            message: None,
            rolled_back: action == ReleaseAction::RolledBack,
        })
    }

    fn mk_record<'a>(outcome: &'a Result<Success, ReleaseError>) -> Record<'a> {
        Record {
            release_name: Some("demo-web"),
            release_status: Some("deployed"),
            outcome,
            chart_revision: Some("abc"),
        }
    }

    fn released(status: &Value) -> &Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Released")
            .unwrap()
    }

    #[test]
    fn an_install_is_released_and_an_unchanged_sync_after_it_writes_nothing() {
        let installed = mk_ok(ReleaseAction::Installed);
        let status = next_status(&mk_live(json!({})), &mk_record(&installed), "t1").unwrap();
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["revision"], "abc");
        assert_eq!(status["releaseName"], "demo-web");
        assert_eq!(released(&status)["status"], "True");
        assert_eq!(released(&status)["reason"], "Installed");

        let unchanged = mk_ok(ReleaseAction::Unchanged);
        assert_eq!(
            next_status(&mk_live(status.clone()), &mk_record(&unchanged), "t2"),
            None,
            "nothing new: no write"
        );
    }

    #[test]
    fn a_failure_keeps_the_last_good_revision_and_a_rollback_says_so() {
        let before = next_status(
            &mk_live(json!({})),
            &mk_record(&mk_ok(ReleaseAction::Installed)),
            "t1",
        )
        .unwrap();
        let failed: Result<Success, ReleaseError> =
            Err(ReleaseError::DeployFailed("the hook failed".into()));
        let mut record = mk_record(&failed);
        record.chart_revision = Some("def");
        let status = next_status(&mk_live(before.clone()), &record, "t2").unwrap();
        assert_eq!(status["phase"], "DeployFailed");
        assert_eq!(status["revision"], "abc", "the last revision that worked");
        assert_eq!(status["lastAttemptedRevision"], "def");
        assert_eq!(released(&status)["status"], "False");
        assert_eq!(released(&status)["lastTransitionTime"], "t2");

        let rolled: Result<Success, ReleaseError> =
            Err(ReleaseError::RolledBack("rolled back to revision 1".into()));
        let status = next_status(&mk_live(before), &mk_record(&rolled), "t3").unwrap();
        assert_eq!(status["phase"], "RolledBack");
        let rolled_back = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "RolledBack")
            .unwrap();
        assert_eq!(rolled_back["status"], "True");
    }
}
