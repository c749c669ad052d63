//! `tidegate daemon`: the reconciler. Polls Git, syncs new revisions, re-applies
//! the current one every `--sync-interval`, backs off on errors, and on SIGTERM
//! finishes the objects in flight, records status and exits. With `--once`,
//! one sync and exit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use tokio::time::Instant;

use super::{EXIT_FAILED, init_logging};
use crate::cluster::state::{Outcome, StateRef};
use crate::cluster::{Cluster, Connection};
use crate::daemon::http::{self, Shared};
use crate::daemon::metrics::Metrics;
use crate::daemon::{Triggers, requests, watch};
use crate::identity::{self, KeyRef};
use crate::render;
use crate::source::remote::{self, Scheme};
use crate::source::{Access, GitSource};
use crate::sync::{self, GarbageCollection, Progress, Settings, SyncReport};

/// Flags shared by the commands that render and plan (`daemon`, `diff`).
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Directory in the repository to sync (repeatable; default the whole repository)
    #[arg(long, env = "TIDEGATE_GIT_PATH", value_delimiter = ',')]
    pub git_path: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none
    #[arg(
        long,
        env = "TIDEGATE_K8S_DEFAULT_NAMESPACE",
        default_value = "default"
    )]
    pub k8s_default_namespace: String,
    /// Only allow objects in this namespace (repeatable); refuses cluster-scoped objects
    #[arg(long, env = "TIDEGATE_K8S_ALLOW_NAMESPACE", value_delimiter = ',')]
    pub k8s_allow_namespace: Vec<String>,
    /// Name of this sync set, recorded on every applied object; pruning only touches its own
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    pub sync_set_name: String,
    /// Apply objects of removed API versions under their replacement where the schema is unchanged
    #[arg(long, env = "TIDEGATE_UPGRADE_REMOVED_APIS")]
    pub upgrade_removed_apis: bool,
    /// Take over fields that other field managers own (server-side apply force)
    #[arg(long, env = "TIDEGATE_FORCE_CONFLICTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub force_conflicts: bool,
    /// Delete objects that were removed from Git
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION")]
    pub sync_garbage_collection: bool,
    /// Only log what garbage collection would delete
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION_DRY")]
    pub sync_garbage_collection_dry: bool,
    /// Prune even when the repository renders no objects at all (otherwise such a sync fails and deletes nothing)
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION_ALLOW_EMPTY")]
    pub sync_garbage_collection_allow_empty: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Bounds on what a render reads; a file past one is an error naming it.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest manifest file read, in bytes
    #[arg(long, env = "TIDEGATE_MAX_FILE_BYTES", default_value_t = render::Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
    /// Most bytes read from all manifest files of one revision together
    #[arg(long, env = "TIDEGATE_MAX_TOTAL_BYTES", default_value_t = render::Limits::default().max_total_bytes)]
    pub max_total_bytes: u64,
    /// Most YAML documents in one file
    #[arg(long, env = "TIDEGATE_MAX_DOCUMENTS_PER_FILE", default_value_t = render::ParseLimits::default().max_documents)]
    pub max_documents_per_file: usize,
    /// Deepest nesting of YAML mappings and sequences
    #[arg(long, env = "TIDEGATE_MAX_YAML_DEPTH", default_value_t = render::ParseLimits::default().max_depth)]
    pub max_yaml_depth: usize,
    /// Most bytes the documents of one file may expand to once parsed (YAML aliases included)
    #[arg(long, env = "TIDEGATE_MAX_EXPANDED_BYTES", default_value_t = render::ParseLimits::default().max_expanded_bytes)]
    pub max_expanded_bytes: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> render::Limits {
        render::Limits {
            max_file_bytes: self.max_file_bytes,
            max_total_bytes: self.max_total_bytes,
            parse: render::ParseLimits {
                max_documents: self.max_documents_per_file,
                max_depth: self.max_yaml_depth,
                max_expanded_bytes: self.max_expanded_bytes,
            },
        }
    }
}

impl SyncArgs {
    pub fn render_options(&self) -> render::Options {
        render::Options {
            paths: self.git_path.clone(),
            upgrade_removed_apis: self.upgrade_removed_apis,
            limits: self.limits.limits(),
        }
    }

    pub fn settings(&self, namespace: String) -> Settings {
        Settings {
            render: self.render_options(),
            default_namespace: self.k8s_default_namespace.clone(),
            allow_namespaces: self.k8s_allow_namespace.clone(),
            sync_set: self.sync_set_name.clone(),
            force_conflicts: self.force_conflicts,
            gc: if self.sync_garbage_collection_dry {
                GarbageCollection::Dry
            } else if self.sync_garbage_collection {
                GarbageCollection::On
            } else {
                GarbageCollection::Off
            },
            allow_empty: self.sync_garbage_collection_allow_empty,
            state: StateRef {
                namespace,
                sync_set: self.sync_set_name.clone(),
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the Git repository (ssh://, git@host:path, https://, file:// or a local path)
    #[arg(long, env = "TIDEGATE_GIT_URL")]
    git_url: String,
    /// Branch to sync
    #[arg(long, env = "TIDEGATE_GIT_BRANCH", default_value = "master")]
    git_branch: String,
    /// How often to fetch the repository
    #[arg(long, env = "TIDEGATE_GIT_POLL_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    git_poll_interval: Duration,
    /// How often to re-apply the current revision even if Git did not move (reverts drift)
    #[arg(long, env = "TIDEGATE_SYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    sync_interval: Duration,
    /// Where to keep the fetched repository (default: a directory under the system temp dir)
    #[arg(long, env = "TIDEGATE_GIT_CACHE_DIR")]
    git_cache_dir: Option<PathBuf>,
    #[command(flatten)]
    git: GitAccessArgs,
    #[command(flatten)]
    sync: SyncArgs,
    /// Address of the HTTP API, health, metrics and webhooks ("off" for none)
    #[arg(long, env = "TIDEGATE_LISTEN", default_value = "0.0.0.0:3030")]
    listen: String,
    /// Secret (in the daemon's namespace) whose key `webhook-secret` signs webhooks
    #[arg(long, env = "TIDEGATE_WEBHOOK_SECRET_NAME")]
    webhook_secret_name: Option<String>,
    /// For a local repository, watch its refs and fetch as soon as they change
    #[arg(long, env = "TIDEGATE_GIT_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    git_watch: bool,
    /// Sync once, print what was done and exit
    #[arg(long)]
    once: bool,
}

/// How to reach and authenticate to the Git host.
#[derive(Debug, Clone, clap::Args)]
pub struct GitAccessArgs {
    /// Secret holding the SSH deploy key (keys `identity`, `identity.pub`); created if missing
    #[arg(
        long,
        env = "TIDEGATE_K8S_SECRET_NAME",
        default_value = "tidegate-git-deploy"
    )]
    pub k8s_secret_name: String,
    /// known_hosts file that SSH host keys are checked against
    #[arg(long, env = "TIDEGATE_SSH_KNOWN_HOSTS")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// ConfigMap or Secret (`configmap/NAME` or `secret/NAME`, key `known_hosts`) holding known_hosts
    #[arg(long, env = "TIDEGATE_SSH_KNOWN_HOSTS_FROM")]
    pub ssh_known_hosts_from: Option<String>,
    /// Secret with HTTPS credentials: keys `username` and `password`, or `token`
    #[arg(long, env = "TIDEGATE_GIT_HTTPS_SECRET")]
    pub git_https_secret: Option<String>,
    /// CA certificates (PEM) to trust for HTTPS Git hosts
    #[arg(long, env = "TIDEGATE_GIT_CA_FILE")]
    pub git_ca_file: Option<PathBuf>,
    /// Proxy for Git over HTTP(S); default HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY
    #[arg(long, env = "TIDEGATE_GIT_PROXY")]
    pub git_proxy: Option<String>,
}

impl GitAccessArgs {
    /// Reads keys and credentials fresh, so a regenerated key or a rotated
    /// password is used for the next fetch without a restart.
    pub async fn access(
        &self,
        client: &kube::Client,
        namespace: &str,
        url: &str,
    ) -> anyhow::Result<Access> {
        let mut access = Access {
            proxy: self.git_proxy.clone(),
            ..Access::default()
        };
        match remote::parse(url).scheme {
            Scheme::Ssh => {
                let key_ref = KeyRef {
                    namespace: namespace.to_string(),
                    name: self.k8s_secret_name.clone(),
                };
                access.deploy_key = Some(identity::ensure(client, &key_ref).await?);
                access.known_hosts = self.known_hosts(client, namespace).await?;
            }
            Scheme::Https | Scheme::Http => {
                if let Some(name) = &self.git_https_secret {
                    let data = secret_data(client, namespace, name).await?;
                    let user = data
                        .get("username")
                        .cloned()
                        .unwrap_or_else(|| "git".into());
                    let password = data
                        .get("password")
                        .or_else(|| data.get("token"))
                        .cloned()
                        .with_context(|| {
                            format!(
                                "the Secret {namespace}/{name} has neither `password` nor `token`"
                            )
                        })?;
                    access.https = Some((user, password));
                }
            }
            Scheme::File => {}
        }
        Ok(access)
    }

    async fn known_hosts(&self, client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
        let mut text = String::new();
        if let Some(path) = &self.ssh_known_hosts {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ssh-known-hosts {}", path.display()))?;
        }
        if let Some(from) = &self.ssh_known_hosts_from {
            let (kind, name) = from.split_once('/').with_context(|| {
                format!("--ssh-known-hosts-from {from}: write configmap/NAME or secret/NAME")
            })?;
            let data = match kind {
                "configmap" => {
                    let api: kube::Api<ConfigMap> =
                        kube::Api::namespaced(client.clone(), namespace);
                    api.get(name)
                        .await
                        .with_context(|| format!("cannot read ConfigMap {namespace}/{name}"))?
                        .data
                        .unwrap_or_default()
                }
                "secret" => secret_data(client, namespace, name).await?,
                _ => anyhow::bail!(
                    "--ssh-known-hosts-from {from}: write configmap/NAME or secret/NAME"
                ),
            };
            text.push('\n');
            text.push_str(
                data.get("known_hosts")
                    .map(String::as_str)
                    .unwrap_or_default(),
            );
        }
        Ok(text)
    }
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .with_context(|| format!("cannot read Secret {namespace}/{name}"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim_end().to_string()))
        .collect())
}

/// How long triggers are gathered before one fetch answers them all.
const COALESCE: Duration = Duration::from_millis(200);

/// `30s`, `5m`, `1h`, `250ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("{text:?} has an unknown unit; use ms, s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

fn default_cache_dir(url: &str, branch: &str) -> PathBuf {
    let key = render::checksum(&serde_json::json!([url, branch]));
    std::env::temp_dir().join(format!("tidegate-git-{}", &key[..12]))
}

/// Sets `stop` on SIGTERM or SIGINT and wakes the loop.
fn watch_signals(triggers: Arc<Triggers>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: finishing the objects in flight");
        triggers.stop.store(true, Ordering::SeqCst);
        triggers.wake.notify_one();
    });
}

/// Looks for `tidegate sync` requests on the state ConfigMap.
fn watch_requests(client: kube::Client, state: StateRef, triggers: Arc<Triggers>) {
    tokio::spawn(async move {
        loop {
            if let Ok(annotations) = requests::annotations(&client, &state).await {
                let pending = requests::pending(&annotations);
                if !pending.is_empty() {
                    let mut known = triggers.requests.lock().expect("requests");
                    let new: Vec<String> = pending
                        .into_iter()
                        .filter(|id| !known.contains(id))
                        .collect();
                    if !new.is_empty() {
                        known.extend(new);
                        drop(known);
                        triggers.sync_now();
                    }
                }
            }
            tokio::time::sleep(requests::POLL).await;
        }
    });
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    init_logging(if args.once { "warn" } else { "info" });
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let namespace = connection.namespace(&client);
    let cluster = Cluster::new(client.clone());
    if let Some(ca) = &args.git.git_ca_file {
        // SAFETY: set once, before any fetch runs on another thread.
        unsafe { git2::opts::set_ssl_cert_file(ca) }
            .with_context(|| format!("cannot use --git-ca-file {}", ca.display()))?;
    }
    let mut source = GitSource {
        cache_dir: args
            .git_cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(&args.git_url, &args.git_branch)),
        url: args.git_url.clone(),
        branch: args.git_branch.clone(),
        access: Access::default(),
    };
    let settings = args.sync.settings(namespace.clone());
    let triggers = Arc::new(Triggers::default());
    watch_signals(triggers.clone());

    if args.once {
        let snapshot = match args.git.access(&client, &namespace, &source.url).await {
            Ok(access) => {
                source.access = access;
                sync::fetch(&source).await
            }
            Err(e) => return Err(e),
        };
        let (report, _) = sync::run(
            &cluster,
            snapshot,
            &settings,
            Vec::new(),
            &triggers.stop,
            &mut print_progress,
        )
        .await;
        print_summary(&report);
        return Ok(match report.outcome() {
            Outcome::Succeeded => ExitCode::SUCCESS,
            _ => ExitCode::from(EXIT_FAILED),
        });
    }

    let webhook_secret = match &args.webhook_secret_name {
        Some(name) => Some(
            secret_data(&client, &namespace, name)
                .await?
                .get("webhook-secret")
                .with_context(|| {
                    format!("the Secret {namespace}/{name} has no key `webhook-secret`")
                })?
                .clone()
                .into_bytes(),
        ),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        triggers: triggers.clone(),
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
        identity: Mutex::new(None),
        webhook_secret,
        branch: args.git_branch.clone(),
    });
    if args.listen != "off" {
        let addr: SocketAddr = args.listen.parse().with_context(|| {
            format!("--listen {}: not an address like 0.0.0.0:3030", args.listen)
        })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let router = http::router(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        tracing::info!(%addr, "HTTP API listening");
    }
    watch_requests(client.clone(), settings.state.clone(), triggers.clone());
    let _watcher = match watch::refs_dir(&source.url).filter(|_| args.git_watch) {
        Some(dir) => match watch::start(&dir, triggers.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("cannot watch {}: {e}; polling only", dir.display());
                None
            }
        },
        None => None,
    };

    tracing::info!(url = %source.url, branch = %source.branch, "starting");
    let mut last: Option<(String, Instant)> = None;
    let mut failures = 0u32;
    while !triggers.stop.load(Ordering::SeqCst) {
        let forced = triggers.force.swap(false, Ordering::SeqCst);
        let taken: Vec<String> = triggers
            .requests
            .lock()
            .expect("requests")
            .iter()
            .cloned()
            .collect();
        let snapshot = match args.git.access(&client, &namespace, &source.url).await {
            Ok(access) => {
                if let Some(key) = &access.deploy_key {
                    *shared.identity.lock().expect("identity") = Some(key.public.clone());
                }
                source.access = access;
                metrics.fetched();
                sync::fetch(&source).await
            }
            Err(e) => Err(crate::source::Error::Access(crate::error_chain(e.as_ref()))),
        };
        let due = forced
            || match (&snapshot, &last) {
                (Ok(s), Some((revision, at))) => {
                    *revision != s.revision || at.elapsed() >= args.sync_interval
                }
                _ => true,
            };
        let mut wait = args.git_poll_interval;
        if due {
            let revision = snapshot.as_ref().ok().map(|s| s.revision.clone());
            if let (Some(rev), false) = (&revision, taken.is_empty())
                && let Err(e) = requests::acknowledge(&client, &settings.state, &taken, rev).await
            {
                tracing::warn!("cannot acknowledge sync requests: {e}");
            }
            let started = Instant::now();
            let (report, status) = sync::run(
                &cluster,
                snapshot,
                &settings,
                taken.clone(),
                &triggers.stop,
                &mut |_| {},
            )
            .await;
            metrics.observe(&status, started.elapsed().as_secs_f64());
            if !taken.is_empty() {
                let _ = requests::clear(&client, &settings.state, &taken).await;
                let mut known = triggers.requests.lock().expect("requests");
                for id in &taken {
                    known.remove(id);
                }
            }
            log_summary(&report);
            if report.outcome() == Outcome::Failed {
                failures += 1;
                // 5s, 10s, 20s … never longer than the poll interval.
                let backoff = Duration::from_secs(5) * 2u32.saturating_pow(failures.min(10) - 1);
                wait = backoff.min(args.git_poll_interval);
                last = None;
            } else {
                failures = 0;
                shared.ready.store(true, Ordering::SeqCst);
                last = revision.map(|r| (r, Instant::now()));
            }
        }
        if let Some((_, at)) = &last {
            wait = wait.min(args.sync_interval.saturating_sub(at.elapsed()));
        }
        if triggers.force.load(Ordering::SeqCst) {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = triggers.wake.notified() => {
                // Let a burst of triggers (webhooks, ref changes) arrive, then
                // fetch once for all of them.
                tokio::time::sleep(COALESCE).await;
                let _ = tokio::time::timeout(Duration::ZERO, triggers.wake.notified()).await;
            }
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// One line per object on stdout; failures and warnings on stderr.
fn print_progress(progress: Progress<'_>) {
    match progress {
        Progress::Object(id, action) => println!("{action} {id}"),
        Progress::WouldPrune(id) => println!("would prune {id}"),
        Progress::Failed(e) => eprintln!("error: {e}"),
        Progress::Warning(w) => eprintln!("warning: {w}"),
    }
}

fn counts(report: &SyncReport) -> String {
    use crate::sync::Action::*;
    let mut parts = vec![
        format!("{} created", report.count(Created)),
        format!("{} configured", report.count(Configured)),
        format!("{} unchanged", report.count(Unchanged)),
    ];
    for (action, n) in [
        (Recreated, report.count(Recreated)),
        (Pruned, report.count(Pruned)),
        (Ignored, report.count(Ignored)),
    ] {
        if n > 0 {
            parts.push(format!("{n} {action}"));
        }
    }
    parts.push(format!("{} failed", report.errors.len()));
    format!("{} ({} object writes)", parts.join(", "), report.writes)
}

fn short(report: &SyncReport) -> &str {
    report
        .revision
        .as_deref()
        .map_or("(none)", |r| &r[..r.len().min(12)])
}

fn print_summary(report: &SyncReport) {
    if let Some(message) = &report.message {
        eprintln!("error: {message}");
    }
    match report.outcome() {
        Outcome::Succeeded => eprintln!("synced revision {}: {}", short(report), counts(report)),
        Outcome::Failed => eprintln!(
            "sync of revision {} failed: {}",
            short(report),
            counts(report)
        ),
        Outcome::Interrupted => eprintln!(
            "sync of revision {} interrupted: {}",
            short(report),
            counts(report)
        ),
    }
}

fn log_summary(report: &SyncReport) {
    match report.outcome() {
        Outcome::Succeeded => tracing::info!(
            revision = short(report),
            writes = report.writes,
            "sync succeeded: {}",
            counts(report)
        ),
        outcome => tracing::warn!(
            revision = short(report),
            message = report.message.as_deref().unwrap_or(""),
            "sync {outcome:?}: {}",
            counts(report)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
