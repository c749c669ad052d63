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
    /// `--git-signing-key deploy-key`: sign commits with the deploy key.
    pub sign: bool,
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
            let mut clients = lock(&self.clients);
            clients.credentials = credentials;
            clients.found = Found {
                errors: unread,
                ..Found::default()
            };
        }
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

/// Why a registry host may not be reached: an image in Git names it, and
/// it resolves to a loopback, link-local or private address nobody listed.
fn host_refusal(config: &Config, host: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    if config
        .insecure_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
    {
        return None;
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') => (name, port.parse().unwrap_or(443)),
        _ => (host, 443),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = match (name, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Some(format!("cannot resolve {name}: {e}")),
    };
    let allowed = |addr: std::net::IpAddr| {
        config.registry_allow.iter().any(|entry| {
            entry.eq_ignore_ascii_case(name)
                || entry.eq_ignore_ascii_case(host)
                || entry
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|net| net.contains(&addr))
                || entry.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == addr)
        })
    };
    addrs
        .iter()
        .map(|a| a.ip())
        .find(|ip| !crate::helm::external::is_public(*ip) && !allowed(*ip))
        .map(|ip| {
            format!(
                "{host} resolves to {ip}, a loopback, link-local or private address; list the host or its network in --registry-allow to reach it"
            )
        })
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
    /// This cycle's: `--docker-config`'s ("" ) and each namespace's own.
    credentials: HashMap<String, Credentials>,
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
            credentials: HashMap::new(),
            ca_pem,
            found: Found::default(),
        }
    }

    /// The client of `host` with `namespace`'s credentials for it (else
    /// `--docker-config`'s).
    fn get(
        &mut self,
        config: &Config,
        host: &str,
        namespace: &str,
    ) -> Result<&Registry, registry::Error> {
        let credentials = self
            .credentials
            .get(namespace)
            .and_then(|c| c.get(host))
            .or_else(|| self.credentials.get("").and_then(|c| c.get(host)))
            .cloned();
        let key = format!("{namespace} {host}");
        if self
            .registries
            .get(&key)
            .is_none_or(|(c, _)| *c != credentials)
        {
            if let Some(reason) = host_refusal(config, host) {
                return Err(registry::Error::Request {
                    host: host.to_string(),
                    reason,
                });
            }
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
            self.registries.insert(key.clone(), (credentials, client));
        }
        Ok(&self.registries[&key].1)
    }
}

/// A cycle, made again on a fresh fetch while the branch moved.
fn run_cycle(
    config: &Config,
    source: &GitSource,
    snapshot: Snapshot,
    options: &render::Options,
    clients: &mut Clients,
    fenced: &dyn Fn() -> bool,
) -> Result<Option<String>, String> {
    let (branch, base) = target(config, source, &snapshot)?;
    let change = cycle(config, source, &snapshot, &base, options, clients);
    keep_build_times(config, clients);
    let Some(change) = change? else {
        return Ok(None);
    };
    // The Lease may have gone while the registries were read.
    if fenced() {
        return Err("not pushed: this daemon no longer holds the leader Lease".into());
    }
    match source
        .push(&change, &branch)
        .map_err(|e| crate::model::error_chain(&e))?
    {
        Pushed::Commit(revision) => Ok(Some(revision)),
        // The sync loop fetches what moved it; the next cycle edits that.
        Pushed::Moved => Err(format!(
            "branch {branch} moved since {}; its new head is edited next cycle",
            short(&base)
        )),
    }
}

fn short(revision: &str) -> &str {
    &revision[..12.min(revision.len())]
}

/// Where a cycle commits, and on top of what: the synced branch's head,
/// or `--git-push-branch`'s while it holds the synced head (made from the
/// synced head when it does not exist yet).
fn target(
    config: &Config,
    source: &GitSource,
    snapshot: &Snapshot,
) -> Result<(String, String), String> {
    let Some(branch) = &config.push_branch else {
        return Ok((source.branch.clone(), snapshot.revision.clone()));
    };
    let head = source
        .fetch_head(branch)
        .map_err(|e| crate::model::error_chain(&e))?;
    match head {
        None => Ok((branch.clone(), snapshot.revision.clone())),
        Some(head) if source.contains(&head, &snapshot.revision)? => Ok((branch.clone(), head)),
        Some(head) => Err(format!(
            "branch {branch} ({}) does not hold {}, the head of {}: merge {} into it, or delete it, and automation commits there again",
            short(&head),
            short(&snapshot.revision),
            source.branch,
            source.branch
        )),
    }
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
    source: &GitSource,
    snapshot: &Snapshot,
    base: &str,
    options: &render::Options,
    clients: &mut Clients,
) -> Result<Option<Change>, String> {
    let set = render::render(&snapshot.tree, options);
    let (candidates, problems) = update::candidates(
        &set.manifests,
        &config.default_namespace,
        &config.allow_namespaces,
    );
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
        let shown = crate::model::shown(&file);
        // The file as the commit has it (not the checkout, which the sync
        // loop may be moving): a regular file, or it is not edited.
        let text = match source.read_file(base, &file) {
            Ok(text) => text,
            Err(e) => {
                problem(
                    &mut clients.found.errors,
                    format!("{shown}: {e}; not edited"),
                );
                continue;
            }
        };
        let edits: Vec<edit::Edit> = ups.iter().flat_map(|u| u.edits.clone()).collect();
        match edit::apply(&text, &edits) {
            Ok(new) if new == text => {}
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
        parent: base.to_string(),
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
            by_repo
                .entry(update::tags_key(&c.namespace, &canonical))
                .or_default()
                .push(c);
        } else {
            tracing::debug!(image = %canonical, "automation: not looked up (--registry-include-image / --registry-exclude-image)");
        }
    }
    let mut found = BTreeMap::new();
    // A registry that fails (down, stalling, rate limiting past its waits)
    // is given up on for this cycle: its other images wait for the next.
    let mut given_up: std::collections::HashSet<String> = Default::default();
    for (key, users) in by_repo {
        let image = &users[0].container.image;
        let (namespace, host) = (users[0].namespace.clone(), image.host().to_string());
        let canonical = image.canonical();
        if given_up.contains(&host) {
            continue;
        }
        let repository = image.repository();
        let tags = clients
            .get(config, &host, &namespace)
            .and_then(|client| client.tags(&repository));
        let tags = match tags {
            Ok(t) => t,
            Err(e) => {
                if e.registry_fails() {
                    given_up.insert(host);
                }
                problem(&mut clients.found.errors, format!("{canonical}: {e}"));
                continue;
            }
        };
        let timed: Vec<&Pattern> = users
            .iter()
            .map(|c| &c.pattern)
            .filter(|p| !p.by_version())
            .collect();
        let repo = Repo {
            canonical: &canonical,
            host: &host,
            namespace: &namespace,
            repository: &repository,
        };
        let listed = build_times(config, clients, &repo, &timed, tags, &mut given_up);
        found.insert(key, listed);
        clients.found.repositories += 1;
    }
    found
}

/// One repository as a cycle reads it.
struct Repo<'a> {
    canonical: &'a str,
    host: &'a str,
    namespace: &'a str,
    repository: &'a str,
}

/// Each tag with when its image was built, read only for a tag a
/// time-ordered filter passes, and only once while it is trusted.
fn build_times(
    config: &Config,
    clients: &mut Clients,
    repo: &Repo<'_>,
    timed: &[&Pattern],
    tags: Vec<String>,
    given_up: &mut std::collections::HashSet<String>,
) -> Vec<(String, Option<i64>)> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let expiry = config.cache_expiry.as_secs() as i64;
    let mut listed = Vec::new();
    for tag in tags {
        let created = if !timed.iter().any(|p| p.matches(&tag)) || given_up.contains(repo.host) {
            None
        } else if let Some(known) = clients.times.get(repo.canonical, &tag, now, expiry) {
            known
        } else {
            let read = clients
                .get(config, repo.host, repo.namespace)
                .and_then(|client| client.created(repo.repository, &tag));
            match read {
                Ok((created, _)) => {
                    clients.times.put(repo.canonical, &tag, created, now);
                    created
                }
                Err(e) => {
                    if e.registry_fails() {
                        given_up.insert(repo.host.to_string());
                    }
                    let canonical = repo.canonical;
                    problem(&mut clients.found.errors, format!("{canonical}:{tag}: {e}"));
                    None
                }
            }
        };
        listed.push((tag, created));
    }
    listed
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
) -> (HashMap<String, Credentials>, Vec<String>) {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let mut found: HashMap<String, Credentials> = HashMap::new();
    let mut errors = Vec::new();
    if let Some(file) = &config.docker_config {
        match std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| credentials::parse(&b))
        {
            Ok(c) => {
                found.insert(String::new(), c);
            }
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
    let (candidates, _) = update::candidates(
        &set.manifests,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    // Each namespace's automated workloads' pull secrets and their service
    // accounts', read in that namespace only, for its workloads only.
    let mut wanted: std::collections::BTreeSet<(String, String)> = Default::default();
    let mut accounts: std::collections::BTreeSet<(String, String)> = Default::default();
    for m in set.manifests.iter() {
        let Some(c) = candidates.iter().find(|c| c.object == m.id.to_string()) else {
            continue;
        };
        let (secrets, account) = credentials::pull_secret_refs(&m.object.value());
        wanted.extend(secrets.into_iter().map(|s| (c.namespace.clone(), s)));
        accounts.insert((c.namespace.clone(), account));
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
            Ok(c) => found.entry(ns).or_default().extend(c),
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
            sign: false,
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
        }
    }

    #[test]
    fn a_registry_on_a_private_address_must_be_listed() {
        let mut c = config(&[], &[]);
        assert!(host_refusal(&c, "127.0.0.1:5000").is_some_and(|r| r.contains("--registry-allow")));
        assert!(host_refusal(&c, "169.254.169.254").is_some());
        c.registry_allow = vec!["127.0.0.0/8".into()];
        assert_eq!(host_refusal(&c, "127.0.0.1:5000"), None);
        let mut c = config(&[], &[]);
        c.insecure_hosts = vec!["127.0.0.1:5000".into()];
        assert_eq!(
            host_refusal(&c, "127.0.0.1:5000"),
            None,
            "an insecure host is listed already"
        );
        assert!(host_refusal(&c, "[::1]:5000").is_some());
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
