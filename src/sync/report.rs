//! What one sync did: actions, errors, warnings and releases, and the
//! status recorded from them.

use super::*;

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub revision: Option<String>,
    pub actions: Vec<(ObjectRef, Action)>,
    pub errors: Vec<ObjectError>,
    pub warnings: Vec<String>,
    /// Why the sync stopped before applying anything (fetch or render).
    pub message: Option<String>,
    pub interrupted: bool,
    /// Write requests sent for objects (applies and deletes).
    pub writes: usize,
    /// `tidegate sync` requests this sync answers.
    pub requests: Vec<String>,
    /// Why the sync's status could not be recorded: the sync failed.
    pub record_failed: Option<String>,
    /// What happened to each Helm release.
    pub releases: Vec<ReleaseStatus>,
    /// The repository's proxy settings, as this revision declares them.
    pub proxy: Option<render::proxy::ProxySettings>,
    /// Whose signature the revision carries, when signatures are verified.
    pub signed_by: Option<crate::model::record::Signer>,
    /// The commit that held the sync back at this revision: the sync fails.
    pub unverified: Option<crate::model::record::Unverified>,
}

impl SyncReport {
    pub fn count(&self, action: Action) -> usize {
        self.actions.iter().filter(|(_, a)| *a == action).count()
    }

    /// `3 created, 0 configured, 5 unchanged, 1 pruned, 0 failed (4 object writes)`.
    pub fn counts(&self) -> String {
        use Action::*;
        let mut parts = vec![
            format!("{} created", self.count(Created)),
            format!("{} configured", self.count(Configured)),
            format!("{} unchanged", self.count(Unchanged)),
        ];
        for action in [Recreated, Pruned, Ignored] {
            let n = self.count(action);
            if n > 0 {
                parts.push(format!("{n} {action}"));
            }
        }
        parts.push(format!("{} failed", self.errors.len()));
        let mut releases: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.releases {
            *releases.entry(r.action.to_string()).or_default() += 1;
        }
        let releases: Vec<String> = releases
            .into_iter()
            .map(|(action, n)| format!("{n} {action}"))
            .collect();
        let releases = if releases.is_empty() {
            String::new()
        } else {
            format!("; releases: {}", releases.join(", "))
        };
        format!(
            "{} ({} object writes){releases}",
            parts.join(", "),
            self.writes
        )
    }

    /// The first 12 characters of the revision, or `(none)`.
    pub fn short_revision(&self) -> &str {
        self.revision
            .as_deref()
            .map_or("(none)", |r| &r[..r.len().min(12)])
    }

    pub fn outcome(&self) -> Outcome {
        if self.interrupted {
            Outcome::Interrupted
        } else if self.message.is_some()
            || !self.errors.is_empty()
            || self.record_failed.is_some()
            || self.unverified.is_some()
        {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        }
    }

    /// Whether trying the same revision again soon could go otherwise:
    /// not when the only failures are releases waiting for a change in Git.
    pub fn retry_helps(&self) -> bool {
        let waiting: HashSet<&str> = self
            .releases
            .iter()
            .filter(|r| r.action == ReleaseAction::Failed && r.waits_for_git)
            .map(|r| r.object.as_str())
            .collect();
        self.outcome() == Outcome::Failed
            && (self.message.is_some()
                || self.record_failed.is_some()
                || self
                    .errors
                    .iter()
                    .any(|e| !waiting.contains(e.object.as_str())))
    }

    pub fn status(&self, started: String) -> SyncStatus {
        let mut counts = BTreeMap::new();
        for action in [
            Action::Created,
            Action::Configured,
            Action::Unchanged,
            Action::Recreated,
            Action::Ignored,
            Action::Pruned,
        ] {
            counts.insert(action.to_string(), self.count(action));
        }
        counts.insert("failed".to_string(), self.errors.len());
        // The record must fit one object whatever the repository: the first
        // errors in full, the rest counted.
        SyncStatus {
            revision: self.revision.clone(),
            started,
            finished: now(),
            result: self.outcome(),
            message: self
                .message
                .clone()
                .or_else(|| self.held_back())
                .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect()),
            counts,
            errors: self
                .errors
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
            errors_total: self.errors.len(),
            warnings: self
                .warnings
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
            writes: self.writes,
            requests: self.requests.clone(),
            releases: self
                .releases
                .iter()
                .take(MAX_RECORDED_ERRORS)
                .cloned()
                .collect(),
            signed_by: self.signed_by.clone(),
            unverified: self.unverified.clone(),
            verified: None,
        }
    }

    /// Why the sync stayed at the last verified revision.
    pub fn held_back(&self) -> Option<String> {
        let unverified = self.unverified.as_ref()?;
        Some(format!(
            "{unverified}; synced {}, the last verified revision, and nothing after it",
            self.short_revision()
        ))
    }
}
