//! The automation loop: every `--automation-interval`, the images of the
//! automated workloads in the revision last synced are looked up in their
//! registries; what moves is written to Git as one commit (only those bytes
//! of those files), pushed without force, and then fetched and synced like
//! any push. A branch that moved meanwhile is fetched, and the cycle made
//! again on its head, a few times at most.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod cycle;
mod pull_secrets;
mod registries;
pub mod requests;

use cycle::{Cycle, run_cycle};
use pull_secrets::pull_credentials;
use registries::Clients;

use super::Triggers;
use crate::automation::cache::BuildTimes;
use crate::automation::credentials::Credentials;
use crate::automation::edit;
use crate::automation::policy::Pattern;
use crate::automation::update::{self, Candidate, Update};
use crate::cluster::Cluster;
use crate::cluster::state::StateRef;
use crate::model::record::{AutomationStatus, MAX_RECORDED_ERRORS};
use crate::registry::{self, Registry};
use crate::render;
use crate::source::push::{Change, OpenPgpKey, Person, Pushed, Signing};
use crate::source::{GitSource, Snapshot};

/// How the daemon automates images.
#[derive(Debug, Clone)]
pub struct Config {
    pub interval: Duration,
    /// Author and committer of the commits.
    pub committer: Person,
    /// `--git-ci-skip`: `[ci skip]` after the message.
    pub ci_skip: bool,
    /// `--git-signing-key`: how commits are signed.
    pub signing: SignWith,
    /// `--git-push-branch`: commit there (on its head while it holds the
    /// synced head) instead of on the synced branch.
    pub push_branch: Option<String>,
    /// `--registry-insecure-host`: registries reached over plain HTTP.
    pub insecure_hosts: Vec<String>,
    /// `--registry-allow`: hosts or networks (CIDRs) a registry may be at
    /// though they are not public (insecure hosts are allowed too).
    pub registry_allow: Vec<String>,
    pub rps: f64,
    pub burst: u32,
    pub timeout: Duration,
    /// The platform of manifest lists (`linux/amd64`).
    pub platform: String,
    /// Where build times learnt are kept across restarts.
    pub cache_file: Option<PathBuf>,
    /// How long a build time learnt is trusted (`--registry-cache-expiry`).
    pub cache_expiry: Duration,
    /// `--docker-config`: credentials for registries, besides pull secrets.
    pub docker_config: Option<PathBuf>,
    /// `--registry-ca-file`: CA certificates (PEM) registries are checked against.
    pub ca_file: Option<PathBuf>,
    /// Where workloads that name no namespace live.
    pub default_namespace: String,
    /// `--k8s-allow-namespace`: automation reads and edits only workloads
    /// there, with their own namespace's pull secrets.
    pub allow_namespaces: Vec<String>,
    /// `--registry-include-image` / `--registry-exclude-image`: globs over
    /// image names (`docker.io/library/nginx`, `reg.io:5000/team/*`).
    pub include_images: Vec<String>,
    pub exclude_images: Vec<String>,
    /// Commit signatures are verified: commit only on the verified
    /// revision, never on a head that may hold unverified commits.
    pub verified_only: bool,
}

impl Config {
    /// Whether an image's repository may be looked up.
    fn looks_up(&self, canonical: &str) -> bool {
        use crate::automation::policy::glob_matches;
        let included = self.include_images.is_empty()
            || self
                .include_images
                .iter()
                .any(|g| glob_matches(g, canonical));
        included
            && !self
                .exclude_images
                .iter()
                .any(|g| glob_matches(g, canonical))
    }
}

/// `--git-signing-key`: none, `deploy-key`, or `secret/NAME` (a Secret in
/// the daemon's namespace with an armored OpenPGP secret key as
/// `signing.key`, and its `passphrase` if it has one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SignWith {
    #[default]
    None,
    DeployKey,
    Secret(String),
}

impl SignWith {
    pub fn parse(text: &str) -> Result<SignWith, String> {
        match text {
            "deploy-key" => Ok(SignWith::DeployKey),
            _ => match text.strip_prefix("secret/") {
                Some(name) if !name.is_empty() => Ok(SignWith::Secret(name.to_string())),
                _ => Err(format!(
                    "{text:?}: deploy-key, or secret/NAME (an OpenPGP key in a Secret)"
                )),
            },
        }
    }

    /// The signing of this cycle's commits: the Secret is read each time,
    /// so a rotated key is used at once.
    async fn signing(&self, client: &kube::Client, namespace: &str) -> Result<Signing, String> {
        let name = match self {
            SignWith::None => return Ok(Signing::None),
            SignWith::DeployKey => return Ok(Signing::DeployKey),
            SignWith::Secret(name) => name,
        };
        // Read as every Secret value is, trimmed: a key or a passphrase
        // written with `--from-file` ends in a newline.
        let mut data = crate::daemon::access::secret_data(client, namespace, name)
            .await
            .map_err(|e| format!("the signing key: {}", crate::model::error_chain(&e)))?;
        let armored = data.remove("signing.key").ok_or_else(|| {
            format!(
                "the Secret {namespace}/{name} has no signing.key (an armored OpenPGP secret key)"
            )
        })?;
        let passphrase = data.remove("passphrase").unwrap_or_default();
        let key = OpenPgpKey::parse(&armored, &passphrase)
            .map_err(|e| format!("Secret {namespace}/{name}: signing.key: {e}"))?;
        Ok(Signing::OpenPgp(Arc::new(key)))
    }
}

/// What the loop works on: the source as last fetched (with its access),
/// the snapshot last synced, and how it renders.
#[derive(Default)]
pub struct Latest {
    pub current: Option<(GitSource, Snapshot, render::Options)>,
}

/// Runs the loop until `stop`; a pushed commit asks the daemon to fetch.
pub fn start(
    config: Config,
    latest: Arc<Mutex<Latest>>,
    triggers: Arc<Triggers>,
    cluster: Cluster,
    state: StateRef,
    metrics: Arc<super::metrics::Metrics>,
) {
    tokio::spawn(async move {
        let stop = triggers.stop.clone();
        let mut scanner = Scanner {
            clients: Arc::new(Mutex::new(Clients::new(&config))),
            config,
            cluster,
            state,
            record: AutomationStatus::default(),
            answered: Default::default(),
            metrics,
        };
        let (asks, mut asked) = tokio::sync::mpsc::channel(16);
        requests::watch(scanner.cluster.client.clone(), &scanner.state, asks);
        let mut next = tokio::time::Instant::now() + scanner.config.interval;
        loop {
            let request = tokio::select! {
                _ = tokio::time::sleep_until(next) => None,
                _ = triggers.automate.notified() => None,
                Some(name) = asked.recv() => Some(name),
                _ = stop.cancelled() => return,
            };
            let current = latest.lock().expect("latest").current.clone();
            // Requests are answered one at a time, between cycles.
            if let Some(name) = request {
                if scanner.answer(&name, current).await {
                    triggers.fetch_now();
                }
                continue;
            }
            next = tokio::time::Instant::now() + scanner.config.interval;
            // With leader election, only the leader writes to Git.
            if scanner.cluster.fenced().is_err() {
                continue;
            }
            if let Some(current) = current {
                let scanned = current.1.revision.clone();
                let after = scanner.scan(current).await;
                if after.fetch {
                    triggers.fetch_now();
                }
                // Again only on a newer revision: never a loop on one whose
                // checkout is gone.
                let newer = latest
                    .lock()
                    .expect("latest")
                    .current
                    .as_ref()
                    .is_some_and(|(_, s, _)| s.revision != scanned);
                if after.again && newer {
                    triggers.automate.notify_one();
                }
            }
        }
    });
}

/// The loop's state between cycles.
struct Scanner {
    config: Config,
    clients: Arc<Mutex<Clients>>,
    cluster: Cluster,
    state: StateRef,
    /// What the last cycle recorded.
    record: AutomationStatus,
    /// The workload requests answered lately (their UIDs).
    answered: std::collections::VecDeque<String>,
    metrics: Arc<super::metrics::Metrics>,
}

impl Scanner {
    /// The cycle's registry credentials and signing, and a fresh record.
    async fn prepare(
        &mut self,
        source: &GitSource,
        snapshot: &Snapshot,
        options: &render::Options,
    ) {
        let kube = self.cluster.client.clone();
        let (credentials, mut unread) =
            pull_credentials(&kube, &self.config, (source, snapshot, options)).await;
        let signing = match self
            .config
            .signing
            .signing(&kube, &self.state.namespace)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // Never an unsigned commit where a signed one is asked for.
                problem(
                    &mut unread,
                    format!("{e}; nothing is committed until it can sign"),
                );
                Signing::Unavailable
            }
        };
        {
            let mut clients = lock(&self.clients);
            clients.credentials = credentials;
            clients.signing = signing;
            clients.found = Found {
                errors: unread,
                ..Found::default()
            };
        }
    }

    /// One cycle on the revision last fetched, recorded.
    async fn scan(
        &mut self,
        (source, snapshot, options): (GitSource, Snapshot, render::Options),
    ) -> After {
        self.prepare(&source, &snapshot, &options).await;
        let (config, clients) = (self.config.clone(), self.clients.clone());
        let cluster = self.cluster.detached();
        let done = tokio::task::spawn_blocking(move || {
            let fenced = || cluster.fenced().is_err();
            run_cycle(
                &config,
                &source,
                snapshot,
                &options,
                &mut lock(&clients),
                &fenced,
            )
        })
        .await;
        let mut found = std::mem::take(&mut lock(&self.clients).found);
        let now = crate::cluster::state::now();
        let mut pushed = false;
        match done {
            Ok(Ok(Cycle::Pushed(revision))) => {
                tracing::info!(revision = %revision, "automation: pushed; fetching it");
                self.record.commit = Some(revision);
                self.record.committed = Some(now.clone());
                pushed = true;
            }
            Ok(Ok(Cycle::Nothing)) => tracing::debug!("automation: no image moved"),
            Ok(Ok(Cycle::Replaced)) => {
                tracing::debug!(
                    "automation: a newer revision came meanwhile; the cycle is made on it"
                );
                return After {
                    fetch: false,
                    again: true,
                };
            }
            Ok(Err(e)) => problem(&mut found.errors, e),
            Err(e) => problem(
                &mut found.errors,
                format!("the cycle ended abnormally: {e}"),
            ),
        }
        self.record.scanned = now;
        self.record.containers = found.containers;
        self.record.repositories = found.repositories;
        self.record.errors = found.errors.into_iter().take(MAX_RECORDED_ERRORS).collect();
        self.record.images = found.images;
        report(&self.cluster, &self.state, &self.record).await;
        self.metrics.automated(&self.record, pushed);
        // A branch that moved under the cycle is fetched, so the next
        // cycle decides on what it holds.
        After {
            fetch: pushed || found.behind,
            again: false,
        }
    }
}

/// What the loop does after a cycle.
struct After {
    /// Fetch: a commit was pushed, or the branch moved.
    fetch: bool,
    /// Run the cycle again at once, on the newer revision.
    again: bool,
}

/// The clients, whole even if a cycle panicked while holding them.
fn lock(clients: &Mutex<Clients>) -> std::sync::MutexGuard<'_, Clients> {
    clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one cycle found, for the record.
#[derive(Debug, Default)]
struct Found {
    containers: usize,
    repositories: usize,
    /// What kept an image, registry or file from being automated.
    errors: Vec<String>,
    images: Vec<crate::model::record::ImageStatus>,
    /// The branch moved past the revision synced.
    behind: bool,
}

/// Logs a problem and keeps it for the record.
fn problem(errors: &mut Vec<String>, message: String) {
    tracing::warn!("automation: {message}");
    errors.push(message);
}

/// Records the cycle in the state ConfigMap, with a Warning Event when
/// something could not be automated.
async fn report(cluster: &Cluster, state: &StateRef, record: &AutomationStatus) {
    if let Err(e) = cluster.record_automation(state, record).await {
        tracing::warn!("automation: cannot record the cycle: {e}");
    }
    if record.errors.is_empty() {
        return;
    }
    let mut message = record.errors[..record.errors.len().min(3)].join("; ");
    if record.errors.len() > 3 {
        message.push_str(&format!("; and {} more", record.errors.len() - 3));
    }
    if let Err(e) = cluster
        .event(state, "Warning", "AutomationFailed", &message, "Automate")
        .await
    {
        tracing::warn!("automation: cannot write its Event: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(include: &[&str], exclude: &[&str]) -> Config {
        Config {
            interval: Duration::from_secs(1),
            committer: Person {
                name: "t".into(),
                email: "t@t".into(),
            },
            ci_skip: false,
            signing: SignWith::None,
            push_branch: None,
            insecure_hosts: Vec::new(),
            registry_allow: Vec::new(),
            rps: 1.0,
            burst: 1,
            timeout: Duration::from_secs(1),
            platform: "linux/amd64".into(),
            cache_file: None,
            cache_expiry: Duration::from_secs(1),
            docker_config: None,
            ca_file: None,
            default_namespace: "default".into(),
            allow_namespaces: Vec::new(),
            include_images: include.iter().map(|s| s.to_string()).collect(),
            exclude_images: exclude.iter().map(|s| s.to_string()).collect(),
            verified_only: false,
        }
    }

    #[test]
    fn images_are_looked_up_as_the_include_and_exclude_globs_say() {
        assert!(config(&[], &[]).looks_up("docker.io/library/nginx"));
        let only_ours = config(&["reg.io/team/*"], &["reg.io/team/secret*"]);
        assert!(only_ours.looks_up("reg.io/team/web"));
        assert!(!only_ours.looks_up("docker.io/library/nginx"));
        assert!(!only_ours.looks_up("reg.io/team/secret-tool"));
    }
}
