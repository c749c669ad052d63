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

use super::Triggers;
use crate::automation::cache::BuildTimes;
use crate::automation::credentials::{self, Credentials};
use crate::automation::edit;
use crate::automation::policy::Pattern;
use crate::automation::update::{self, Candidate, Update};
use crate::cluster::Cluster;
use crate::cluster::state::StateRef;
use crate::model::record::{AutomationStatus, MAX_RECORDED_ERRORS};
use crate::registry::{self, Registry};
use crate::render;
use crate::source::push::{Change, Person, Pushed};
use crate::source::{GitSource, Snapshot};

/// How the daemon automates images.
#[derive(Debug, Clone)]
pub struct Config {
    pub interval: Duration,
    /// Author and committer of the commits.
    pub committer: Person,
    /// `--git-ci-skip`: `[ci skip]` after the message.
    pub ci_skip: bool,
    /// `--git-push-branch`: push there instead of the synced branch.
    pub push_branch: Option<String>,
    /// `--git-signing-key deploy-key`: sign commits with the deploy key.
    pub sign: bool,
    /// `--registry-insecure-host`: registries reached over plain HTTP.
    pub insecure_hosts: Vec<String>,
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
    /// `--registry-include-image` / `--registry-exclude-image`: globs over
    /// image names (`docker.io/library/nginx`, `reg.io:5000/team/*`).
    pub include_images: Vec<String>,
    pub exclude_images: Vec<String>,
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

/// What the loop works on: the source as last fetched (with its access),
/// the snapshot last synced, and how it renders.
#[derive(Default)]
pub struct Latest {
    pub current: Option<(GitSource, Snapshot, render::Options)>,
}

/// Pushes a branch that moved is tried on a fresh fetch, at most.
const TRIES: usize = 3;

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
            metrics,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(scanner.config.interval) => {}
                _ = triggers.automate.notified() => {}
                _ = stop.cancelled() => return,
            }
            // With leader election, only the leader writes to Git.
            if scanner.cluster.fenced().is_err() {
                continue;
            }
            let current = latest.lock().expect("latest").current.clone();
            if let Some(current) = current
                && scanner.scan(current).await
            {
                triggers.fetch_now();
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
    metrics: Arc<super::metrics::Metrics>,
}

impl Scanner {
    /// One cycle on the revision last fetched, recorded; true when it
    /// pushed a commit.
    async fn scan(
        &mut self,
        (source, snapshot, options): (GitSource, Snapshot, render::Options),
    ) -> bool {
        let kube = self.cluster.client.clone();
        let (credentials, unread) =
            pull_credentials(&kube, &self.config, &snapshot, &options).await;
        {
            let mut clients = self.clients.lock().expect("clients");
            clients.credentials = credentials;
            clients.found = Found {
                errors: unread,
                ..Found::default()
            };
        }
        let (config, clients) = (self.config.clone(), self.clients.clone());
        let done = tokio::task::spawn_blocking(move || {
            run_cycle(
                &config,
                &source,
                snapshot,
                &options,
                &mut clients.lock().expect("clients"),
            )
        })
        .await;
        let mut found = std::mem::take(&mut self.clients.lock().expect("clients").found);
        let now = crate::cluster::state::now();
        let mut pushed = false;
        match done {
            Ok(Ok(Some(revision))) => {
                tracing::info!(revision = %revision, "automation: pushed; fetching it");
                self.record.commit = Some(revision);
                self.record.committed = Some(now.clone());
                pushed = true;
            }
            Ok(Ok(None)) => tracing::debug!("automation: no image moved"),
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
        report(&self.cluster, &self.state, &self.record).await;
        self.metrics.automated(&self.record, pushed);
        pushed
    }
}

/// What one cycle found, for the record.
#[derive(Debug, Default)]
struct Found {
    containers: usize,
    repositories: usize,
    /// What kept an image, registry or file from being automated.
    errors: Vec<String>,
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

/// One client per registry, and the build times learnt, kept between cycles.
struct Clients {
    registries: HashMap<String, (Option<(String, String)>, Registry)>,
    times: BuildTimes,
    /// This cycle's, by host.
    credentials: Credentials,
    ca_pem: Option<Vec<u8>>,
    /// This cycle's findings.
    found: Found,
}

impl Clients {
    /// The clients' shared parts: the CA to trust, the build times kept.
    fn new(config: &Config) -> Clients {
        let ca_pem = config
            .ca_file
            .as_ref()
            .and_then(|f| match std::fs::read(f) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    tracing::error!(
                        "automation: cannot read --registry-ca-file {}: {e}",
                        f.display()
                    );
                    None
                }
            });
        let times = config
            .cache_file
            .as_deref()
            .map(BuildTimes::load)
            .unwrap_or_default();
        tracing::debug!(entries = times.len(), "automation: build times read");
        Clients {
            registries: HashMap::new(),
            times,
            credentials: Credentials::new(),
            ca_pem,
            found: Found::default(),
        }
    }

    fn get(&mut self, config: &Config, host: &str) -> Result<&Registry, registry::Error> {
        let credentials = self.credentials.get(host).cloned();
        if self
            .registries
            .get(host)
            .is_none_or(|(c, _)| *c != credentials)
        {
            let client = Registry::new(registry::Settings {
                host: host.to_string(),
                credentials: credentials.clone(),
                ca_pem: self.ca_pem.clone(),
                insecure: config.insecure_hosts.iter().any(|h| h == host),
                rps: config.rps,
                burst: config.burst,
                timeout: config.timeout,
                platform: config.platform.clone(),
                ..registry::Settings::default()
            })?;
            self.registries
                .insert(host.to_string(), (credentials, client));
        }
        Ok(&self.registries[host].1)
    }
}

/// A cycle, made again on a fresh fetch while the branch moved.
fn run_cycle(
    config: &Config,
    source: &GitSource,
    mut snapshot: Snapshot,
    options: &render::Options,
    clients: &mut Clients,
) -> Result<Option<String>, String> {
    let branch = config
        .push_branch
        .clone()
        .unwrap_or_else(|| source.branch.clone());
    for _ in 0..TRIES {
        let change = cycle(config, &snapshot, options, clients);
        keep_build_times(config, clients);
        let Some(change) = change? else {
            return Ok(None);
        };
        match source
            .push(&change, &branch)
            .map_err(|e| crate::model::error_chain(&e))?
        {
            Pushed::Commit(revision) => return Ok(Some(revision)),
            Pushed::Moved => {
                tracing::info!(%branch, "automation: the branch moved; fetching and trying again");
                snapshot = source.fetch().map_err(|e| crate::model::error_chain(&e))?;
            }
        }
    }
    Err(format!(
        "branch {branch} kept moving; tried {TRIES} times, trying again next cycle"
    ))
}

/// Writes the build times learnt to `--registry-cache-file`, the expired
/// left out.
fn keep_build_times(config: &Config, clients: &mut Clients) {
    let Some(file) = &config.cache_file else {
        return;
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    clients
        .times
        .expire(now, config.cache_expiry.as_secs() as i64);
    if let Err(e) = clients.times.save(file) {
        tracing::warn!(
            "automation: cannot keep build times in {}: {e}",
            file.display()
        );
    }
}

/// The commit one cycle makes on `snapshot`, if any image moves.
fn cycle(
    config: &Config,
    snapshot: &Snapshot,
    options: &render::Options,
    clients: &mut Clients,
) -> Result<Option<Change>, String> {
    let set = render::render(&snapshot.tree, options);
    let (candidates, problems) = update::candidates(&set.manifests);
    for p in &problems {
        problem(&mut clients.found.errors, p.to_string());
    }
    clients.found.containers = candidates.len();
    let tags = look_up(config, &candidates, clients);
    let objects: BTreeMap<(PathBuf, usize), serde_json::Value> = set
        .manifests
        .iter()
        .map(|m| ((m.file.clone(), m.index), m.object.value()))
        .collect();
    let updates = update::updates(&candidates, &tags, &objects);
    let mut by_file: BTreeMap<PathBuf, Vec<&Update>> = BTreeMap::new();
    for u in &updates {
        by_file.entry(u.file.clone()).or_default().push(u);
    }
    let mut files = Vec::new();
    let mut applied: Vec<Update> = Vec::new();
    for (file, ups) in by_file {
        let path = snapshot.tree.join(&file);
        let shown = crate::model::shown(&file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            problem(
                &mut clients.found.errors,
                format!("{shown}: cannot be read; not edited"),
            );
            continue;
        };
        let edits: Vec<edit::Edit> = ups.iter().flat_map(|u| u.edits.clone()).collect();
        match edit::apply(&text, &edits) {
            Ok(new) => {
                files.push((file.clone(), new.into_bytes()));
                applied.extend(ups.into_iter().cloned());
            }
            Err(e) => {
                let objects: Vec<&str> = ups.iter().map(|u| u.object.as_str()).collect();
                problem(
                    &mut clients.found.errors,
                    format!("{shown}: {}: {e}", objects.join(", ")),
                );
            }
        }
    }
    if files.is_empty() {
        return Ok(None);
    }
    for u in &applied {
        tracing::info!(object = %u.object, container = %u.container, "automation: {} → {}", u.from, u.to);
    }
    Ok(Some(Change {
        parent: snapshot.revision.clone(),
        files,
        message: update::commit_message(&applied, config.ci_skip),
        author: config.committer.clone(),
        committer: config.committer.clone(),
        sign: config.sign,
    }))
}

/// The tags of each candidate's repository (by canonical name), with build
/// times for the tags a time-ordered filter passes; a registry that fails
/// is named, and its images are left as they are.
fn look_up(
    config: &Config,
    candidates: &[Candidate],
    clients: &mut Clients,
) -> BTreeMap<String, Vec<(String, Option<i64>)>> {
    let mut by_repo: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        let canonical = c.container.image.canonical();
        if config.looks_up(&canonical) {
            by_repo.entry(canonical).or_default().push(c);
        } else {
            tracing::debug!(image = %canonical, "automation: not looked up (--registry-include-image / --registry-exclude-image)");
        }
    }
    let mut found = BTreeMap::new();
    for (canonical, users) in by_repo {
        let image = &users[0].container.image;
        let tags = clients
            .get(config, image.host())
            .and_then(|client| client.tags(&image.repository()));
        let repository = image.repository();
        let tags = match tags {
            Ok(t) => t,
            Err(e) => {
                problem(&mut clients.found.errors, format!("{canonical}: {e}"));
                continue;
            }
        };
        let timed: Vec<&Pattern> = users
            .iter()
            .map(|c| &c.pattern)
            .filter(|p| !p.by_version())
            .collect();
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let expiry = config.cache_expiry.as_secs() as i64;
        let mut listed = Vec::new();
        for tag in tags {
            // A build time is read only for a tag a time-ordered filter
            // passes, and only once while it is trusted.
            let created = if !timed.iter().any(|p| p.matches(&tag)) {
                None
            } else if let Some(known) = clients.times.get(&canonical, &tag, now, expiry) {
                known
            } else {
                let client = clients.get(config, image.host()).expect("made above");
                match client.created(&repository, &tag) {
                    Ok((created, _)) => {
                        clients.times.put(&canonical, &tag, created, now);
                        created
                    }
                    Err(e) => {
                        problem(&mut clients.found.errors, format!("{canonical}:{tag}: {e}"));
                        None
                    }
                }
            };
            listed.push((tag, created));
        }
        found.insert(canonical, listed);
        clients.found.repositories += 1;
    }
    found
}

/// The registry credentials of this cycle: `--docker-config`, then the
/// pull secrets of the automated workloads and of their service accounts
/// (which win for their registries). What cannot be read is said and
/// skipped; no password is logged.
async fn pull_credentials(
    kube: &kube::Client,
    config: &Config,
    snapshot: &Snapshot,
    options: &render::Options,
) -> (Credentials, Vec<String>) {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let mut found = Credentials::new();
    let mut errors = Vec::new();
    if let Some(file) = &config.docker_config {
        match std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| credentials::parse(&b))
        {
            Ok(c) => found.extend(c),
            Err(e) => problem(
                &mut errors,
                format!("--docker-config {}: {e}", file.display()),
            ),
        }
    }
    let (tree, options) = (snapshot.tree.clone(), options.clone());
    let Ok(set) = tokio::task::spawn_blocking(move || render::render(&tree, &options)).await else {
        return (found, errors);
    };
    let (candidates, _) = update::candidates(&set.manifests);
    let mut wanted: std::collections::BTreeSet<(String, String)> = Default::default();
    let mut accounts: std::collections::BTreeSet<(String, String)> = Default::default();
    for m in set
        .manifests
        .iter()
        .filter(|m| candidates.iter().any(|c| c.object == m.id.to_string()))
    {
        let ns =
            m.id.namespace
                .clone()
                .unwrap_or_else(|| config.default_namespace.clone());
        let (secrets, account) = credentials::pull_secret_refs(&m.object.value());
        wanted.extend(secrets.into_iter().map(|s| (ns.clone(), s)));
        accounts.insert((ns, account));
    }
    for (ns, account) in accounts {
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(kube.clone(), &ns);
        if let Ok(Some(sa)) = api.get_opt(&account).await {
            for s in sa.image_pull_secrets.unwrap_or_default() {
                wanted.insert((ns.clone(), s.name));
            }
        }
    }
    for (ns, name) in wanted {
        let api: kube::Api<Secret> = kube::Api::namespaced(kube.clone(), &ns);
        let secret = match api.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                problem(&mut errors, format!("pull secret {ns}/{name} not found"));
                continue;
            }
            Err(e) => {
                problem(
                    &mut errors,
                    format!("cannot read pull secret {ns}/{name}: {e}"),
                );
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        let Some(config) = data.get(".dockerconfigjson").or(data.get(".dockercfg")) else {
            continue;
        };
        match credentials::parse(&config.0) {
            Ok(c) => found.extend(c),
            Err(e) => problem(&mut errors, format!("pull secret {ns}/{name}: {e}")),
        }
    }
    (found, errors)
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
            push_branch: None,
            sign: false,
            insecure_hosts: Vec::new(),
            rps: 1.0,
            burst: 1,
            timeout: Duration::from_secs(1),
            platform: "linux/amd64".into(),
            cache_file: None,
            cache_expiry: Duration::from_secs(1),
            docker_config: None,
            ca_file: None,
            default_namespace: "default".into(),
            include_images: include.iter().map(|s| s.to_string()).collect(),
            exclude_images: exclude.iter().map(|s| s.to_string()).collect(),
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
