//! The reconciler loop, and `--once` as its first turn: fetch, sync, record,
//! then wait for the next poll, webhook, `sync` request or local commit.
//! Failures back off (exponential with jitter, capped at the poll interval)
//! whatever triggered the next try.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio::time::Instant;

use super::access::{self, AccessConfig};
use super::http::{self, Shared};
use super::metrics::Metrics;
use super::tasks::{
    follow_health, follow_live, report_progress, watch_refs, watch_requests, watch_signals,
};
use super::{Triggers, lease, requests};
use crate::cluster::Cluster;
use crate::cluster::fence::Fence;
use crate::cluster::live::Live;
use crate::model::record::Outcome;
use crate::source::GitSource;
use crate::sync::{self, OnProgress, Settings, SyncReport};

/// Everything the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// URL, branch and cache; its access is filled in before every fetch.
    pub source: GitSource,
    pub access: AccessConfig,
    pub poll_interval: Duration,
    pub sync_interval: Duration,
    pub settings: Settings,
    /// Where the HTTP API listens; `None` for no HTTP server.
    pub listen: Option<SocketAddr>,
    /// Where only the webhooks are served (for the Service a Git host reaches).
    pub webhook_listen: Option<SocketAddr>,
    pub webhook_secret_name: Option<String>,
    /// Watch a local repository's refs.
    pub git_watch: bool,
    /// One sync, then return its report.
    pub once: bool,
    /// Sync only while holding the sync set's leader Lease.
    pub leader_elect: bool,
    /// Revert drift as soon as a watch sees it.
    pub self_heal: bool,
    /// Image automation, when on.
    pub automation: Option<super::automation::Config>,
    /// `--git-sync-tag`: a tag moved to each revision synced successfully.
    pub sync_tag: Option<String>,
    /// Commit signature verification, when on.
    pub verify: Option<access::Verify>,
    /// Where the SOPS decryption keys are, when decryption is on.
    pub sops: Option<access::KeySource>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use the webhook secret")]
    WebhookSecret(#[source] access::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The waits after failed syncs in a row: 5 s, 10 s, 20 s … each up to
/// twice that (jitter, so replicas and retries spread out), never longer
/// than `cap`.
fn failure_backoff(cap: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |wait| wait.min(cap))
}

/// Runs the daemon: with `config.once`, one sync whose report is returned;
/// otherwise until SIGTERM.
pub async fn run(
    config: Config,
    cluster: Cluster,
    on: OnProgress<'_>,
) -> Result<Option<SyncReport>, Error> {
    let mut daemon = start(config, cluster).await?;
    if daemon.config.once {
        return Ok(daemon.turn(on).await.report);
    }
    while !daemon.triggers.stop.is_cancelled() {
        if daemon.stand_by().await {
            continue;
        }
        let turn = daemon.turn(on).await;
        daemon.wait(turn.wait).await;
    }
    tracing::info!("stopped");
    Ok(None)
}

/// A daemon wired up: its cluster handle, triggers and edges, and what one
/// turn leaves for the next.
struct Daemon {
    config: Config,
    cluster: Cluster,
    triggers: Arc<Triggers>,
    fence: Option<Arc<Fence>>,
    /// Told when this daemon becomes or stops being the leader.
    leadership: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    /// What the HTTP endpoints read; `None` with `--once`.
    shared: Option<Arc<Shared>>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The source as last fetched, with its access.
    source: GitSource,
    /// The repository's proxy settings, once a sync has read them: for the
    /// next fetches and charts, unless --git-proxy or the environment say
    /// otherwise.
    repo_proxy: Option<crate::model::proxy::ProxySettings>,
    last_fetch: Option<Instant>,
    last_snapshot: Option<crate::source::Snapshot>,
    /// The revision last synced without a failure worth retrying, and when.
    last: Option<(String, Instant)>,
    failures: u32,
    backoff: Box<dyn Iterator<Item = Duration> + Send>,
    /// While backing off, triggers wait until this instant.
    not_before: Option<Instant>,
    /// What image automation works on: the revision last fetched.
    automated: Arc<Mutex<super::automation::Latest>>,
    /// The revision last verified: where the next verification starts;
    /// `None` until the last record could be read.
    verified: Option<Option<String>>,
    verify_cache: crate::source::verify::Cache,
}

/// What one turn leaves for the wait.
struct Turn {
    /// The sync's report, if the turn synced.
    report: Option<SyncReport>,
    /// How long to wait for a trigger before the next turn.
    wait: Duration,
}

/// Wires the daemon: the Lease, the watches, the HTTP endpoints, the
/// request and signal watches. With `--once`, only what one sync needs.
async fn start(mut config: Config, cluster: Cluster) -> Result<Daemon, Error> {
    let client = cluster.client.clone();
    let namespace = config.settings.state.namespace.clone();
    let triggers = Arc::new(Triggers::default());
    // A running daemon leaves a long helm operation to run on its own; its
    // end brings a sync of the same revision, which records it.
    if let (false, Some(helm)) = (config.once, &mut config.settings.helm) {
        let after = triggers.clone();
        helm.background = Some(Arc::new(crate::helm::Background::new(move || {
            after.heal_now()
        })));
    }
    let leadership = Arc::new(tokio::sync::Notify::new());
    let fence = config.leader_elect.then(|| {
        let fence = Arc::new(Fence::default());
        let elector = lease::Elector {
            api: kube::Api::namespaced(client.clone(), &namespace),
            name: format!("{}-leader", config.settings.state.sync_set),
            identity: lease_identity(),
        };
        tokio::spawn(elector.run(fence.clone(), leadership.clone()));
        fence
    });
    let cluster = match &fence {
        Some(fence) => cluster.with_fence(fence.clone()),
        None => cluster,
    };
    // A running daemon knows the live state from watches.
    let live = (!config.once).then(|| follow_live(&config, &client, &triggers));
    let cluster = match &live {
        Some(live) => cluster.with_live(live.clone()),
        None => cluster,
    };
    watch_signals(triggers.clone());
    let metrics = Arc::new(Metrics::default());
    let shared = match config.once {
        true => None,
        false => Some(serve(&config, &client, &triggers, &metrics, live.as_ref()).await?),
    };
    let _watcher = watch_refs(&config, &triggers);
    let automated = Arc::new(Mutex::new(super::automation::Latest::default()));
    if let Some(automation) = &config.automation {
        super::automation::start(
            automation.clone(),
            automated.clone(),
            triggers.clone(),
            cluster.detached(),
            config.settings.state.clone(),
            metrics.clone(),
        );
    }
    let source = config.source.clone();
    tracing::info!(url = %source.shown_url(), branch = %source.branch, "starting");
    let verified = match &config.verify {
        Some(_) => last_verified(&cluster, &config).await.ok(),
        None => Some(None),
    };
    let backoff = Box::new(failure_backoff(config.poll_interval));
    Ok(Daemon {
        config,
        cluster,
        triggers,
        fence,
        leadership,
        metrics,
        shared,
        _watcher,
        source,
        repo_proxy: None,
        last_fetch: None,
        last_snapshot: None,
        last: None,
        failures: 0,
        backoff,
        not_before: None,
        automated,
        verified,
        verify_cache: Default::default(),
    })
}

/// The running daemon's edges: the HTTP API and webhooks, the watch for
/// `tidegate sync` requests, the health metrics.
async fn serve(
    config: &Config,
    client: &kube::Client,
    triggers: &Arc<Triggers>,
    metrics: &Arc<Metrics>,
    live: Option<&Arc<Live>>,
) -> Result<Arc<Shared>, Error> {
    let namespace = &config.settings.state.namespace;
    let webhook_secret = match &config.webhook_secret_name {
        Some(name) => Some(
            access::webhook_secret(client, namespace, name)
                .await
                .map_err(Error::WebhookSecret)?,
        ),
        None => None,
    };
    let registry_token = match &config.webhook_secret_name {
        Some(name) => access::registry_token(client, namespace, name)
            .await
            .map_err(Error::WebhookSecret)?,
        None => None,
    };
    let state = Arc::new(Shared {
        triggers: triggers.clone(),
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        standby: AtomicBool::new(false),
        not_ready: Mutex::new(None),
        identity: Mutex::new(None),
        webhook_secret,
        registry_token,
        branch: config.source.branch.clone(),
        client: client.clone(),
        state: config.settings.state.clone(),
        deliveries: Default::default(),
    });
    for (addr, router, what) in [
        (config.listen, http::router(state.clone()), "HTTP API"),
        (
            config.webhook_listen,
            http::hooks_router(state.clone()),
            "webhooks",
        ),
    ] {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        http::serve(listener, router, state.clone());
        tracing::info!(%addr, "{what} listening");
    }
    watch_requests(client.clone(), config, triggers.clone());
    if let Some(live) = live {
        follow_health(live.clone(), metrics.clone());
    }
    Ok(state)
}

impl Daemon {
    /// A standby (leader election on, the Lease another's) waits, healthy
    /// and silent, until the Lease may be its own; true if it waited.
    async fn stand_by(&self) -> bool {
        let standby = self.fence.as_ref().is_some_and(|fence| !fence.holds());
        if let Some(shared) = &self.shared {
            shared.standby.store(standby, Ordering::SeqCst);
        }
        if standby {
            tokio::select! {
                _ = self.leadership.notified() => {}
                _ = tokio::time::sleep(lease::RENEW) => {}
                _ = self.triggers.stop.cancelled() => {}
            }
        }
        standby
    }

    /// One turn: fetch (unless drift alone is to be answered), sync if
    /// something is due, record; returns the report and how long to wait.
    async fn turn(&mut self, on: OnProgress<'_>) -> Turn {
        let triggers = self.triggers.clone();
        let forced = triggers.force.swap(false, Ordering::SeqCst);
        let fetch_asked = triggers.fetch.swap(false, Ordering::SeqCst);
        let healing = triggers.heal.swap(false, Ordering::SeqCst);
        let poll_due = self
            .last_fetch
            .is_none_or(|t: Instant| t.elapsed() >= self.config.poll_interval);
        // Drift alone is answered from the revision last synced, unfetched.
        let unfetched = self
            .last_snapshot
            .clone()
            .filter(|_| healing && !forced && !fetch_asked && !poll_due && !self.config.once);
        let taken: Vec<String> = triggers
            .requests
            .lock()
            .expect("requests")
            .iter()
            .cloned()
            .collect();
        let snapshot = match unfetched {
            Some(snapshot) => Ok(snapshot),
            None => {
                self.last_fetch = Some(Instant::now());
                self.fetch().await
            }
        };
        if let Ok(s) = &snapshot {
            self.last_snapshot = Some(s.clone());
            let first = self
                .automated
                .lock()
                .expect("automation")
                .current
                .replace((
                    self.source.clone(),
                    s.clone(),
                    self.config.settings.render.clone(),
                ))
                .is_none();
            // Images are looked up as soon as there is a revision, not an
            // interval after the daemon started.
            if first {
                self.triggers.automate.notify_one();
            }
        }
        let due = self.config.once
            || forced
            || healing
            || match (&snapshot, &self.last) {
                (Ok(s), Some((revision, at))) => {
                    *revision != s.revision || at.elapsed() >= self.config.sync_interval
                }
                _ => true,
            };
        let mut turn = Turn {
            report: None,
            wait: self.config.poll_interval,
        };
        if due {
            let revision = snapshot.as_ref().ok().map(|s| s.revision.clone());
            let report = self.sync(snapshot, &taken, on).await;
            turn.wait = self.after_sync(&report, revision);
            turn.report = Some(report);
        }
        if let Some((_, at)) = &self.last {
            turn.wait = turn
                .wait
                .min(self.config.sync_interval.saturating_sub(at.elapsed()));
        }
        turn
    }

    /// Fills in the Git access and the verification keys, then fetches.
    async fn fetch(&mut self) -> Result<crate::source::Snapshot, crate::source::Error> {
        if let (Some(_), None) = (&self.config.verify, &self.verified) {
            // Without the record, where verification resumes is unknown:
            // nothing is fetched until it can be read.
            let last = last_verified(&self.cluster, &self.config).await;
            self.verified = Some(last.map_err(|e| crate::source::Error::Access(e.into()))?);
        }
        let policy = match &self.config.verify {
            Some(verify) => {
                let namespace = &self.config.settings.state.namespace;
                let keys = verify
                    .keys
                    .read(&self.cluster.client, namespace, |e| {
                        crate::source::verify::Keys::from_entries(e)
                    })
                    .await
                    .map_err(|e| crate::source::Error::Access(Box::new(e)))?;
                Some(crate::source::verify::Policy {
                    mode: verify.mode,
                    keys: Arc::new(keys),
                    base: self.verified.clone().flatten(),
                    cache: self.verify_cache.clone(),
                })
            }
            None => None,
        };
        if let Some(keys) = &self.config.sops {
            let namespace = &self.config.settings.state.namespace;
            let keys = keys
                .read(&self.cluster.client, namespace, |e| {
                    crate::render::sops::Keys::from_entries(e)
                })
                .await
                .map_err(|e| crate::source::Error::Access(Box::new(e)))?;
            self.config.settings.render.sops.keys = Some(Arc::new(keys));
        }
        let verifying = policy.is_some();
        let snapshot = fetch_source(
            &self.config,
            &self.cluster.client,
            &mut self.source,
            &self.repo_proxy,
            &self.metrics,
            self.shared.as_ref(),
            policy,
        )
        .await;
        if let (true, Ok(s)) = (verifying, &snapshot) {
            self.verified = Some(Some(s.revision.clone()));
        }
        snapshot
    }

    /// Syncs a fetched snapshot (or its failure), answering the `tidegate
    /// sync` requests `taken`, and records it.
    async fn sync(
        &mut self,
        snapshot: Result<crate::source::Snapshot, crate::source::Error>,
        taken: &[String],
        on: OnProgress<'_>,
    ) -> SyncReport {
        let client = &self.cluster.client;
        let state = &self.config.settings.state;
        let revision = snapshot.as_ref().ok().map(|s| s.revision.clone());
        if let (Some(rev), false) = (&revision, taken.is_empty())
            && let Err(e) = requests::acknowledge(client, state, taken, rev).await
        {
            tracing::warn!("cannot acknowledge sync requests: {e}");
        }
        let started = Instant::now();
        // Charts in other repositories are fetched with this access.
        let mut settings = self.config.settings.clone();
        settings.verified = self.verified.clone().flatten();
        if let Some(helm) = &mut settings.helm {
            helm.git = Some(self.source.clone());
            if helm.binary.proxy.is_none() && !crate::model::proxy::in_environment() {
                helm.binary.proxy = self.repo_proxy.as_ref().and_then(|p| p.https_proxy.clone());
            }
        }
        // Whoever waits in `tidegate sync` sees the objects done so far.
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reporter = (!taken.is_empty()).then(|| {
            report_progress(
                client.clone(),
                &self.config,
                taken.to_vec(),
                done.clone(),
                self.fence.clone(),
            )
        });
        let counter = done.clone();
        let mut counting = |p: sync::Progress<'_>| {
            if matches!(p, sync::Progress::Object(..)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            on(p)
        };
        let (report, status) = sync::run(
            &self.cluster,
            snapshot,
            &settings,
            taken.to_vec(),
            &self.triggers.stop,
            &mut counting,
        )
        .await;
        if let Some(reporter) = reporter {
            reporter.abort();
        }
        self.metrics
            .observe(&status, started.elapsed().as_secs_f64());
        if !taken.is_empty() {
            let _ = requests::clear(client, state, taken).await;
            let mut known = self.triggers.requests.lock().expect("requests");
            for id in taken {
                known.remove(id);
            }
        }
        log_summary(&report);
        report
    }

    /// Takes in what a sync found (the repository's proxy settings, whether
    /// it may be retried); returns how long to wait before the next turn.
    fn after_sync(&mut self, report: &SyncReport, revision: Option<String>) -> Duration {
        if report.proxy.is_some() || report.outcome() == Outcome::Succeeded {
            self.repo_proxy = report.proxy.clone().filter(|p| !p.is_empty());
        }
        if let Some(shared) = &self.shared {
            *shared.not_ready.lock().expect("readiness") = report
                .record_failed
                .as_ref()
                .map(|why| format!("the last sync could not be recorded: {why}"));
        }
        // A release waiting for Git fails every sync until Git changes:
        // no reason to hold back pushes and self-heal.
        if report.retry_helps() {
            self.failures += 1;
            let wait = self.backoff.next().unwrap_or(self.config.poll_interval);
            self.not_before = Some(Instant::now() + wait);
            tracing::info!(
                seconds = wait.as_secs_f64(),
                failures = self.failures,
                "backing off before the next try"
            );
            self.last = None;
            return wait;
        }
        self.failures = 0;
        self.backoff = Box::new(failure_backoff(self.config.poll_interval));
        self.not_before = None;
        if let (Some(shared), Outcome::Succeeded) = (&self.shared, report.outcome()) {
            shared.ready.store(true, Ordering::SeqCst);
        }
        if let (Some(tag), Some(rev), Outcome::Succeeded) =
            (&self.config.sync_tag, &revision, report.outcome())
            && self.last.as_ref().is_none_or(|(last, _)| last != rev)
        {
            self.move_sync_tag(tag.clone(), rev.clone());
        }
        self.last = revision.map(|r| (r, Instant::now()));
        self.config.poll_interval
    }

    /// Moves `--git-sync-tag` to `revision`, off the loop (a push blocks).
    fn move_sync_tag(&self, tag: String, revision: String) {
        if self.cluster.fenced().is_err() {
            return;
        }
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || match source.push_tag(&revision, &tag) {
            Ok(()) => tracing::info!(%tag, revision = %revision, "sync tag moved"),
            Err(e) => tracing::warn!(
                "cannot move the sync tag: {}",
                crate::model::error_chain(&e)
            ),
        });
    }

    /// Waits up to `wait` for a trigger; while backing off, a trigger waits
    /// until the backoff is over.
    async fn wait(&self, wait: Duration) {
        let triggers = &self.triggers;
        let backing_off = self.not_before.is_some_and(|t| t > Instant::now());
        if !backing_off && triggers.force.load(Ordering::SeqCst) {
            // This turn answers every trigger so far.
            let _ = tokio::time::timeout(Duration::ZERO, triggers.wake.notified()).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = triggers.stop.cancelled() => {}
            _ = triggers.wake.notified() => {
                // The first trigger fetches at once; those that arrive while
                // it runs leave one wake-up, one follow-up. While backing
                // off, not before the backoff is over.
                if let Some(until) = self.not_before.filter(|t| *t > Instant::now()) {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = triggers.stop.cancelled() => {}
                    }
                }
            }
        }
    }
}

/// Fills in the Git access (the deploy key, shown by `identity`), then fetches.
async fn fetch_source(
    config: &Config,
    client: &kube::Client,
    source: &mut GitSource,
    repo_proxy: &Option<crate::model::proxy::ProxySettings>,
    metrics: &Metrics,
    shared: Option<&Arc<Shared>>,
    policy: Option<crate::source::verify::Policy>,
) -> Result<crate::source::Snapshot, crate::source::Error> {
    let namespace = &config.settings.state.namespace;
    match config.access.access(client, namespace, &source.url).await {
        Ok(access) => {
            if let (Some(key), Some(shared)) = (&access.deploy_key, shared) {
                *shared.identity.lock().expect("identity") = Some(key.public.clone());
            }
            source.access = access;
            source.access.repo_proxy = repo_proxy.clone();
            metrics.fetched();
            sync::fetch(source, policy).await
        }
        Err(e) => Err(crate::source::Error::Access(Box::new(e))),
    }
}

/// The revision the last recorded sync verified: where verification
/// starts after a restart. None when no sync verified signatures yet (the
/// head alone is then judged, as on a first start).
async fn last_verified(cluster: &Cluster, config: &Config) -> Result<Option<String>, String> {
    match cluster.read_status(&config.settings.state).await {
        Ok(Some(status)) => Ok(status.verified.or(match status.signed_by {
            Some(_) => status.revision,
            None => None,
        })),
        Ok(None) => Ok(None),
        Err(e) => {
            let why = format!(
                "cannot read the last sync's record, which says where signature verification resumes: {}",
                crate::model::error_chain(&e)
            );
            tracing::warn!("{why}");
            Err(why)
        }
    }
}

/// Who holds the Lease: the pod's name (or the host's) and the process.
fn lease_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "tidegate".into());
    format!("{host}-{}", std::process::id())
}

fn log_summary(report: &SyncReport) {
    match report.outcome() {
        Outcome::Succeeded => tracing::info!(
            revision = report.short_revision(),
            writes = report.writes,
            "sync succeeded: {}",
            report.counts()
        ),
        outcome => tracing::warn!(
            revision = report.short_revision(),
            message = report.message.as_deref().unwrap_or(""),
            "sync {outcome}: {}",
            report.counts()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let waits: Vec<Duration> = failure_backoff(Duration::from_secs(300)).take(9).collect();
        for (n, wait) in waits.iter().take(6).enumerate() {
            let base = Duration::from_secs(5 << n);
            assert!(
                *wait >= base && *wait <= (base * 2).min(Duration::from_secs(300)),
                "wait {n}: {wait:?}"
            );
        }
        assert_eq!(waits[8], Duration::from_secs(300));
        let short: Vec<Duration> = failure_backoff(Duration::from_secs(7)).take(3).collect();
        assert!(
            short.iter().all(|w| *w <= Duration::from_secs(7)),
            "{short:?}"
        );
        assert_eq!(short[2], Duration::from_secs(7));
    }
}
