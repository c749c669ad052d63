//! What a sync records and reports: its outcome, the objects it could not
//! apply or prune, and what it did with each Helm release.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Errors (and warnings) recorded in full in the status; the rest are counted.
pub const MAX_RECORDED_ERRORS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Interrupted,
}

impl Outcome {
    /// The word users read: `succeeded`, `failed`, `interrupted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object that could not be applied or pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectError {
    /// Empty when the problem is a file's, before any object was read.
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub reason: String,
}

/// `file (document n): object: reason`, as the CLI prints failures.
impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.object.is_empty() {
            write!(f, "{}: ", self.object)?;
        }
        f.write_str(&self.reason)
    }
}

/// The record of one sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    #[serde(default)]
    pub revision: Option<String>,
    pub started: String,
    pub finished: String,
    pub result: Outcome,
    /// Why the whole sync failed (fetch or render), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Objects per action: created, configured, unchanged, recreated, pruned, failed, ignored.
    pub counts: BTreeMap<String, usize>,
    /// The first errors in full (at most [`MAX_RECORDED_ERRORS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ObjectError>,
    /// All errors, including those not recorded in full.
    #[serde(default)]
    pub errors_total: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Write requests sent for managed objects (applies, deletes).
    #[serde(default)]
    pub writes: usize,
    /// `tidegate sync` requests this sync answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
    /// What the sync did with each Helm release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<ReleaseStatus>,
    /// Whose signature the revision carries, when signatures are verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<Signer>,
    /// The commit that stopped the sync at the last verified revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<Unverified>,
    /// The revision last verified: where verification resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
}

/// The two signature formats git writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    #[serde(rename = "openpgp")]
    OpenPgp,
    Ssh,
}

/// Who signed a commit, by the key that verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    pub format: SignatureFormat,
    /// The OpenPGP primary key fingerprint, or the SSH key's `SHA256:…`.
    pub fingerprint: String,
    /// The key's user ID (OpenPGP), the allowed principal or key comment (SSH).
    pub name: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.format {
            SignatureFormat::OpenPgp => "OpenPGP",
            SignatureFormat::Ssh => "SSH",
        };
        if self.name.is_empty() {
            write!(f, "{format} key {}", self.fingerprint)
        } else {
            write!(f, "{} ({format} key {})", self.name, self.fingerprint)
        }
    }
}

/// A commit whose signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unverified {
    /// Full commit SHA.
    pub commit: String,
    /// `Name <email>` of its author.
    pub author: String,
    pub reason: String,
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "commit {} by {} is not verified: {}",
            &self.commit[..self.commit.len().min(12)],
            self.author,
            self.reason
        )
    }
}

impl SyncStatus {
    /// The counts that are not zero: `3 created, 1 pruned`.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        counts.join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseAction {
    Installed,
    Upgraded,
    Unchanged,
    RolledBack,
    Reinstalled,
    Uninstalled,
    Failed,
    /// helm is still at work on it, past the sync that started it.
    Running,
}

impl std::fmt::Display for ReleaseAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleaseAction::Installed => "installed",
            ReleaseAction::Upgraded => "upgraded",
            ReleaseAction::Unchanged => "unchanged",
            ReleaseAction::RolledBack => "rolled back",
            ReleaseAction::Reinstalled => "reinstalled",
            ReleaseAction::Uninstalled => "uninstalled",
            ReleaseAction::Failed => "failed",
            ReleaseAction::Running => "still running for",
        })
    }
}

/// What a sync did with one release, as recorded and printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// The HelmRelease object.
    pub object: String,
    /// `namespace/name` of the Helm release.
    pub release: String,
    pub action: ReleaseAction,
    /// Helm's revision after the sync, if the release exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Helm's status of that revision (`deployed`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed in a way only a change in Git can mend (the same chart and
    /// values failed before, or Git's spec is refused): trying again
    /// sooner helps nothing, so it is no reason to back off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waits_for_git: bool,
}

/// `installed release demo/demo-web revision 1 (helm.fluxcd.io/v1 HelmRelease demo/web)`.
impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} release {}", self.action, self.release)?;
        if let Some(r) = self.revision {
            write!(f, " revision {r}")?;
        }
        write!(f, " ({})", self.object)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// What the last image automation cycle did, as recorded and printed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutomationStatus {
    /// When the cycle ran.
    pub scanned: String,
    /// Containers automated, and the repositories their images are in.
    pub containers: usize,
    pub repositories: usize,
    /// The last commit automation pushed, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<String>,
    /// What kept an image, a registry or a file from being automated, at
    /// most [`MAX_RECORDED_ERRORS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Each automated container's image, and the tags it may move to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageStatus>,
}

/// One automated container as the last cycle saw its registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    /// `namespace:kind/name` (or the marker, for a setter).
    pub workload: String,
    pub container: String,
    /// The image as Git has it.
    pub current: String,
    /// The tags its filter passes, best first, at most [`MAX_LISTED_TAGS`];
    /// the first is what automation moves to.
    pub available: Vec<String>,
}

/// How many tags per container the record keeps.
pub const MAX_LISTED_TAGS: usize = 10;
/// How many containers the record lists (it lives in a ConfigMap).
pub const MAX_LISTED_IMAGES: usize = 500;
