//! Prometheus metrics: sync duration and results, objects per action, and the
//! time of the last successful sync.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::health::{Health, Status};
use crate::model::ObjectRef;
use crate::model::record::{AutomationStatus, Outcome, SyncStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectHealthLabel {
    object: String,
    status: &'static str,
    message: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnverifiedLabel {
    commit: String,
    author: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabel {
    revision: String,
}

pub struct Metrics {
    registry: Registry,
    fetches: Counter,
    duration: Histogram,
    results: Family<ResultLabel, Counter>,
    objects: Family<ActionLabel, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    last_revision: Family<RevisionLabel, Gauge>,
    unverified: Family<UnverifiedLabel, Gauge>,
    health: Family<HealthLabel, Gauge>,
    unhealthy: Family<ObjectHealthLabel, Gauge>,
    healthy: Gauge,
    conflicts: Gauge,
    last_duration: Gauge<f64, AtomicU64>,
    automation: AutomationMetrics,
}

/// What image automation did.
struct AutomationMetrics {
    cycles: Counter,
    commits: Counter,
    containers: Gauge,
    errors: Gauge,
    last_scan: Gauge<f64, AtomicU64>,
}

impl AutomationMetrics {
    fn register(registry: &mut Registry) -> AutomationMetrics {
        let metrics = AutomationMetrics {
            cycles: Counter::default(),
            commits: Counter::default(),
            containers: Gauge::default(),
            errors: Gauge::default(),
            last_scan: Gauge::default(),
        };
        registry.register(
            "automation_cycles",
            "Image automation cycles run",
            metrics.cycles.clone(),
        );
        registry.register(
            "automation_commits",
            "Commits image automation pushed",
            metrics.commits.clone(),
        );
        registry.register(
            "automation_containers",
            "Containers the last automation cycle watched",
            metrics.containers.clone(),
        );
        registry.register(
            "automation_errors",
            "Images, registries and files the last automation cycle could not automate",
            metrics.errors.clone(),
        );
        registry.register(
            "automation_last_scan_timestamp_seconds",
            "Unix time of the last automation cycle",
            metrics.last_scan.clone(),
        );
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tidegate");
        let fetches = Counter::default();
        registry.register("fetches", "Fetches of the Git repository", fetches.clone());
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "sync_duration_seconds",
            "Duration of syncs",
            duration.clone(),
        );
        let results = Family::<ResultLabel, Counter>::default();
        registry.register("syncs", "Syncs by result", results.clone());
        let objects = Family::<ActionLabel, Counter>::default();
        registry.register(
            "objects",
            "Objects handled by syncs, by action",
            objects.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            last_success.clone(),
        );
        let last_revision = Family::<RevisionLabel, Gauge>::default();
        registry.register(
            "last_successful_revision",
            "The revision the last successful sync applied (value 1)",
            last_revision.clone(),
        );
        let unverified = register_unverified(&mut registry);
        let health = Family::<HealthLabel, Gauge>::default();
        registry.register(
            "managed_objects",
            "Managed objects by health (current, inprogress, failed)",
            health.clone(),
        );
        let unhealthy = Family::<ObjectHealthLabel, Gauge>::default();
        registry.register(
            "object_not_current",
            "Managed objects that are not current, with why (value 1; at most 100)",
            unhealthy.clone(),
        );
        let healthy = Gauge::default();
        registry.register(
            "healthy",
            "1 when every managed object is current",
            healthy.clone(),
        );
        let conflicts = Gauge::default();
        registry.register(
            "self_heal_conflicts",
            "Objects another field manager keeps changing, for which self-heal is paused",
            conflicts.clone(),
        );
        let last_duration = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_sync_duration_seconds",
            "Duration of the last sync",
            last_duration.clone(),
        );
        let automation = AutomationMetrics::register(&mut registry);
        Metrics {
            automation,
            last_duration,
            health,
            unhealthy,
            healthy,
            conflicts,
            registry,
            fetches,
            duration,
            results,
            objects,
            last_success,
            last_revision,
            unverified,
        }
    }
}

fn register_unverified(registry: &mut Registry) -> Family<UnverifiedLabel, Gauge> {
    let unverified = Family::<UnverifiedLabel, Gauge>::default();
    registry.register(
        "git_unverified_commit",
        "The commit whose signature was refused, holding syncs at the last verified revision (value 1)",
        unverified.clone(),
    );
    unverified
}

impl Metrics {
    /// An automation cycle: what it watched, what it could not, whether it pushed.
    pub fn automated(&self, record: &AutomationStatus, pushed: bool) {
        let a = &self.automation;
        a.cycles.inc();
        if pushed {
            a.commits.inc();
        }
        a.containers.set(record.containers as i64);
        a.errors.set(record.errors.len() as i64);
        a.last_scan
            .set(k8s_openapi::jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
    }

    pub fn fetched(&self) {
        self.fetches.inc();
    }

    pub fn observe(&self, status: &SyncStatus, seconds: f64) {
        self.duration.observe(seconds);
        self.last_duration.set(seconds);
        self.results
            .get_or_create(&ResultLabel {
                result: status.result.as_str(),
            })
            .inc();
        for (action, n) in &status.counts {
            self.objects
                .get_or_create(&ActionLabel {
                    action: action.clone(),
                })
                .inc_by(*n as u64);
        }
        self.unverified.clear();
        if let Some(u) = &status.unverified {
            self.unverified
                .get_or_create(&UnverifiedLabel {
                    commit: u.commit.clone(),
                    author: u.author.clone(),
                    reason: u.reason.clone(),
                })
                .set(1);
        }
        if status.result == Outcome::Succeeded {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
            self.last_revision.clear();
            if let Some(revision) = &status.revision {
                self.last_revision
                    .get_or_create(&RevisionLabel {
                        revision: revision.clone(),
                    })
                    .set(1);
            }
        }
    }

    /// The health of the managed objects, as the watches see them.
    pub fn health(&self, objects: &[(ObjectRef, Option<Health>)], conflicts: usize) {
        let counts = crate::cluster::live::summary(objects);
        for status in [Status::Current, Status::InProgress, Status::Failed] {
            self.health
                .get_or_create(&HealthLabel {
                    status: status.as_str(),
                })
                .set(counts.get(&status).copied().unwrap_or(0) as i64);
        }
        self.unhealthy.clear();
        for (id, h) in crate::cluster::live::not_current(objects)
            .into_iter()
            .take(100)
        {
            self.unhealthy
                .get_or_create(&ObjectHealthLabel {
                    object: id.to_string(),
                    status: h.status.as_str(),
                    message: h.message,
                })
                .set(1);
        }
        let all_current = counts.keys().all(|s| *s == Status::Current);
        self.healthy.set(i64::from(all_current));
        self.conflicts.set(conflicts as i64);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("metrics encode");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::Unverified;

    fn status(unverified: Option<Unverified>) -> SyncStatus {
        SyncStatus {
            revision: Some("a".repeat(40)),
            started: String::new(),
            finished: String::new(),
            result: Outcome::Failed,
            message: None,
            counts: Default::default(),
            errors: Vec::new(),
            errors_total: 0,
            warnings: Vec::new(),
            writes: 0,
            requests: Vec::new(),
            releases: Vec::new(),
            signed_by: None,
            unverified,
            verified: None,
        }
    }

    #[test]
    fn an_unverified_commit_is_named_until_a_sync_has_none() {
        let metrics = Metrics::default();
        metrics.observe(
            &status(Some(Unverified {
                commit: "b".repeat(40),
                author: "Mallory <m@example.com>".into(),
                reason: "the commit is not signed".into(),
            })),
            1.0,
        );
        let text = metrics.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("tidegate_git_unverified_commit{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains(&format!("commit=\"{}\"", "b".repeat(40))),
            "{line}"
        );
        assert!(
            line.contains("author=\"Mallory <m@example.com>\""),
            "{line}"
        );
        assert!(
            line.contains("reason=\"the commit is not signed\""),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
        metrics.observe(&status(None), 1.0);
        assert!(
            !metrics.render().contains("tidegate_git_unverified_commit{"),
            "cleared once a sync has no unverified commit"
        );
    }
}
