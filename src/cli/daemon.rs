//! `tidegate daemon`: the reconciler. Polls Git, syncs new revisions, re-applies
//! the current one every `--sync-interval`, backs off on errors, and on SIGTERM
//! finishes the objects in flight, records status and exits. With `--once`,
//! one sync and exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{EXIT_FAILED, init_logging};
use crate::cluster::state::{Outcome, StateRef};
use crate::cluster::{Cluster, Connection};
use crate::render;
use crate::source::GitSource;
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
}

impl SyncArgs {
    pub fn settings(&self, namespace: String) -> Settings {
        Settings {
            render: render::Options {
                paths: self.git_path.clone(),
                upgrade_removed_apis: self.upgrade_removed_apis,
            },
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
            state: StateRef {
                namespace,
                sync_set: self.sync_set_name.clone(),
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the Git repository (ssh://, https://, file:// or a local path)
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
    sync: SyncArgs,
    /// Sync once, print what was done and exit
    #[arg(long)]
    once: bool,
}

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
fn watch_signals(stop: Arc<AtomicBool>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: finishing the objects in flight");
        stop.store(true, Ordering::SeqCst);
        wake.notify_waiters();
    });
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    init_logging(if args.once { "warn" } else { "info" });
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let namespace = connection.namespace(&client);
    let cluster = Cluster::new(client);
    let source = GitSource {
        cache_dir: args
            .git_cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(&args.git_url, &args.git_branch)),
        url: args.git_url.clone(),
        branch: args.git_branch.clone(),
    };
    let settings = args.sync.settings(namespace);
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    watch_signals(stop.clone(), wake.clone());

    if args.once {
        let report = sync::run(
            &cluster,
            sync::fetch(&source).await,
            &settings,
            &stop,
            &mut print_progress,
        )
        .await;
        print_summary(&report);
        return Ok(match report.outcome() {
            Outcome::Succeeded => ExitCode::SUCCESS,
            _ => ExitCode::from(EXIT_FAILED),
        });
    }

    tracing::info!(url = %source.url, branch = %source.branch, "starting");
    let mut last: Option<(String, Instant)> = None;
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let snapshot = sync::fetch(&source).await;
        let due = match (&snapshot, &last) {
            (Ok(s), Some((revision, at))) => {
                *revision != s.revision || at.elapsed() >= args.sync_interval
            }
            _ => true,
        };
        let mut wait = args.git_poll_interval;
        if due {
            let revision = snapshot.as_ref().ok().map(|s| s.revision.clone());
            let report = sync::run(&cluster, snapshot, &settings, &stop, &mut |_| {}).await;
            log_summary(&report);
            if report.outcome() == Outcome::Failed {
                failures += 1;
                // 5s, 10s, 20s … never longer than the poll interval.
                let backoff = Duration::from_secs(5) * 2u32.saturating_pow(failures.min(10) - 1);
                wait = backoff.min(args.git_poll_interval);
                last = None;
            } else {
                failures = 0;
                last = revision.map(|r| (r, Instant::now()));
            }
            if let Some((_, at)) = &last {
                wait = wait.min(args.sync_interval.saturating_sub(at.elapsed()));
            }
        } else if let Some((_, at)) = &last {
            wait = wait.min(args.sync_interval.saturating_sub(at.elapsed()));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
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
        Progress::Failed(e) => match &e.origin {
            Some(origin) => eprintln!("error: {origin}: {}: {}", e.object, e.reason),
            None => eprintln!("error: {}: {}", e.object, e.reason),
        },
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
