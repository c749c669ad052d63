//! Health of a live object, with kstatus semantics: a workload is current
//! once its controller has observed the latest spec and rolled it out, a Job
//! once complete, a PersistentVolumeClaim once bound, a CRD once
//! established; any other object is current once applied.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Rolled out, complete, bound or established.
    Current,
    /// On its way there.
    InProgress,
    /// It will not get there without a change (a rollout past its deadline,
    /// a failed Job).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Current => "current",
            Status::InProgress => "inprogress",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object's health and, unless current, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: Status,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Health {
    fn current() -> Self {
        Health {
            status: Status::Current,
            message: String::new(),
        }
    }

    fn in_progress(message: impl Into<String>) -> Self {
        Health {
            status: Status::InProgress,
            message: message.into(),
        }
    }

    fn failed(message: impl Into<String>) -> Self {
        Health {
            status: Status::Failed,
            message: message.into(),
        }
    }

    pub fn is_current(&self) -> bool {
        self.status == Status::Current
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_true(object: &Value, kind: &str) -> bool {
    condition(object, kind).is_some_and(|c| c["status"] == "True")
}

fn message_of(c: &Value) -> String {
    let reason = c["reason"].as_str().unwrap_or_default();
    match c["message"].as_str() {
        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
        _ => reason.to_string(),
    }
}

/// The controller has not seen the latest spec yet.
fn not_observed(object: &Value) -> Option<Health> {
    let generation = object["metadata"]["generation"].as_i64()?;
    let observed = object["status"]["observedGeneration"].as_i64().unwrap_or(0);
    (observed < generation)
        .then(|| Health::in_progress("the controller has not observed the latest spec yet"))
}

/// The health of a live object of `group`/`kind` (as the API server returns
/// it, with its status).
pub fn of(group: &str, kind: &str, object: &Value) -> Health {
    match (group, kind) {
        ("apps", "Deployment") => deployment(object),
        ("apps", "StatefulSet") => stateful_set(object),
        ("apps", "DaemonSet") => daemon_set(object),
        ("batch", "Job") => job(object),
        ("", "PersistentVolumeClaim") => match object["status"]["phase"].as_str() {
            Some("Bound") => Health::current(),
            Some("Lost") => Health::failed("the claim lost its volume"),
            phase => {
                Health::in_progress(format!("not bound yet ({})", phase.unwrap_or("no phase")))
            }
        },
        ("", "Pod") => match object["status"]["phase"].as_str() {
            Some("Succeeded") => Health::current(),
            Some("Running") if condition_true(object, "Ready") => Health::current(),
            Some("Failed") => Health::failed(
                object["status"]["message"]
                    .as_str()
                    .unwrap_or("the pod failed")
                    .to_string(),
            ),
            phase => Health::in_progress(format!("pod {}, not ready", phase.unwrap_or("pending"))),
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if condition_true(object, "Established") {
                Health::current()
            } else if let Some(c) =
                condition(object, "NamesAccepted").filter(|c| c["status"] == "False")
            {
                Health::failed(message_of(c))
            } else {
                Health::in_progress("not established yet")
            }
        }
        _ => Health::current(),
    }
}

fn deployment(d: &Value) -> Health {
    if let Some(h) = not_observed(d) {
        return h;
    }
    if let Some(c) = condition(d, "Progressing")
        && c["reason"] == "ProgressDeadlineExceeded"
    {
        return Health::failed(message_of(c));
    }
    let spec = &d["spec"];
    let status = &d["status"];
    let wanted = spec["replicas"].as_i64().unwrap_or(1);
    let updated = int(&status["updatedReplicas"]);
    let replicas = int(&status["replicas"]);
    let available = int(&status["availableReplicas"]);
    let rolling = || {
        condition(d, "Progressing")
            .filter(|c| c["status"] == "True")
            .map(|c| format!(" ({})", message_of(c)))
            .unwrap_or_default()
    };
    if updated < wanted {
        return Health::in_progress(format!(
            "{updated} of {wanted} replicas updated{}",
            rolling()
        ));
    }
    if replicas > updated {
        return Health::in_progress(format!(
            "{} old replicas pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return Health::in_progress(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Health::current()
}

fn stateful_set(s: &Value) -> Health {
    if let Some(h) = not_observed(s) {
        return h;
    }
    let wanted = s["spec"]["replicas"].as_i64().unwrap_or(1);
    let status = &s["status"];
    let ready = int(&status["readyReplicas"]);
    if ready < wanted {
        return Health::in_progress(format!("{ready} of {wanted} replicas ready"));
    }
    if s["spec"]["updateStrategy"]["type"] == "OnDelete" {
        return Health::current();
    }
    let partition = s["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0);
    let updated = int(&status["updatedReplicas"]);
    if partition == 0 && status["currentRevision"] != status["updateRevision"] {
        return Health::in_progress(format!("{updated} of {wanted} replicas updated"));
    }
    if updated < wanted - partition {
        return Health::in_progress(format!(
            "{updated} of {} replicas updated",
            wanted - partition
        ));
    }
    Health::current()
}

fn daemon_set(d: &Value) -> Health {
    if let Some(h) = not_observed(d) {
        return h;
    }
    let status = &d["status"];
    let wanted = int(&status["desiredNumberScheduled"]);
    let updated = int(&status["updatedNumberScheduled"]);
    let available = int(&status["numberAvailable"]);
    if updated < wanted {
        return Health::in_progress(format!("{updated} of {wanted} pods updated"));
    }
    if available < wanted {
        return Health::in_progress(format!("{available} of {wanted} pods available"));
    }
    Health::current()
}

fn job(j: &Value) -> Health {
    if condition_true(j, "Complete") {
        return Health::current();
    }
    if let Some(c) = condition(j, "Failed").filter(|c| c["status"] == "True") {
        return Health::failed(message_of(c));
    }
    Health::in_progress(format!(
        "running: {} active, {} succeeded",
        int(&j["status"]["active"]),
        int(&j["status"]["succeeded"])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_is_current_once_rolled_out() {
        let mut d = json!({
            "metadata": {"generation": 2},
            "spec": {"replicas": 3},
            "status": {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}
        });
        assert_eq!(of("apps", "Deployment", &d).status, Status::InProgress);
        d["status"]["observedGeneration"] = json!(2);
        d["status"]["updatedReplicas"] = json!(1);
        let h = of("apps", "Deployment", &d);
        assert_eq!(h.status, Status::InProgress);
        assert!(
            h.message.starts_with("1 of 3 replicas updated"),
            "{}",
            h.message
        );
        d["status"]["updatedReplicas"] = json!(3);
        d["status"]["availableReplicas"] = json!(2);
        assert_eq!(
            of("apps", "Deployment", &d).message,
            "2 of 3 updated replicas available"
        );
        d["status"]["availableReplicas"] = json!(3);
        assert_eq!(of("apps", "Deployment", &d), Health::current());
    }

    #[test]
    fn a_rollout_past_its_deadline_failed_with_the_controllers_message() {
        let d = json!({
            "metadata": {"generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"web-1\" has timed out progressing."}]}
        });
        let h = of("apps", "Deployment", &d);
        assert_eq!(h.status, Status::Failed);
        assert_eq!(
            h.message,
            "ProgressDeadlineExceeded: ReplicaSet \"web-1\" has timed out progressing."
        );
    }

    #[test]
    fn statefulsets_daemonsets_jobs_claims_and_crds() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 1,
                "currentRevision": "a", "updateRevision": "b"}});
        assert_eq!(of("apps", "StatefulSet", &sts).status, Status::InProgress);
        let mut done = sts.clone();
        done["status"]["currentRevision"] = json!("b");
        done["status"]["updatedReplicas"] = json!(2);
        assert!(of("apps", "StatefulSet", &done).is_current());

        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 1}});
        assert_eq!(
            of("apps", "DaemonSet", &ds).message,
            "1 of 3 pods available"
        );

        let running = json!({"status": {"active": 1}});
        assert_eq!(of("batch", "Job", &running).status, Status::InProgress);
        let complete = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert!(of("batch", "Job", &complete).is_current());
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert_eq!(
            of("batch", "Job", &failed),
            Health::failed("BackoffLimitExceeded: Job has reached the specified backoff limit")
        );

        let pending = json!({"status": {"phase": "Pending"}});
        assert_eq!(
            of("", "PersistentVolumeClaim", &pending).status,
            Status::InProgress
        );
        let bound = json!({"status": {"phase": "Bound"}});
        assert!(of("", "PersistentVolumeClaim", &bound).is_current());

        let crd = json!({"status": {"conditions": [{"type": "Established", "status": "False"}]}});
        assert_eq!(
            of("apiextensions.k8s.io", "CustomResourceDefinition", &crd).status,
            Status::InProgress
        );
        let cm = json!({"data": {}});
        assert!(of("", "ConfigMap", &cm).is_current());
    }
}
