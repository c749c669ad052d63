//! `tidegate daemon`: the reconciler. With `--once`, one sync and exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{EXIT_FAILED, init_logging};
use crate::cluster::apply::Action;
use crate::cluster::{Cluster, Connection};
use crate::source::GitSource;
use crate::sync::{self, Settings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the Git repository (ssh://, https://, file:// or a local path)
    #[arg(long, env = "TIDEGATE_GIT_URL")]
    git_url: String,
    /// Branch to sync
    #[arg(long, env = "TIDEGATE_GIT_BRANCH", default_value = "master")]
    git_branch: String,
    /// Directory in the repository to sync (repeatable; default the whole repository)
    #[arg(long, env = "TIDEGATE_GIT_PATH", value_delimiter = ',')]
    git_path: Vec<PathBuf>,
    /// How often to fetch the repository
    #[arg(long, env = "TIDEGATE_GIT_POLL_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    git_poll_interval: Duration,
    /// Where to keep the fetched repository (default: a directory under the system temp dir)
    #[arg(long, env = "TIDEGATE_GIT_CACHE_DIR")]
    git_cache_dir: Option<PathBuf>,
    /// Namespace for namespaced objects that name none
    #[arg(
        long,
        env = "TIDEGATE_K8S_DEFAULT_NAMESPACE",
        default_value = "default"
    )]
    k8s_default_namespace: String,
    /// Name of this sync set, recorded on every applied object
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
    /// Sync once, print what was applied and exit
    #[arg(long)]
    once: bool,
}

/// `30s`, `5m`, `1h`, or plain seconds.
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
    let key = crate::render::checksum(&serde_json::json!([url, branch]));
    std::env::temp_dir().join(format!("tidegate-git-{}", &key[..12]))
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    init_logging(if args.once { "warn" } else { "info" });
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let cluster = Cluster::new(client);
    let source = GitSource {
        cache_dir: args
            .git_cache_dir
            .clone()
            .unwrap_or_else(|| default_cache_dir(&args.git_url, &args.git_branch)),
        url: args.git_url.clone(),
        branch: args.git_branch.clone(),
    };
    let settings = Settings {
        paths: args.git_path.clone(),
        default_namespace: args.k8s_default_namespace.clone(),
        sync_set: args.sync_set_name.clone(),
    };

    if args.once {
        return Ok(sync_and_print(&cluster, &source, &settings).await);
    }
    loop {
        sync_and_print(&cluster, &source, &settings).await;
        tokio::select! {
            _ = tokio::time::sleep(args.git_poll_interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One sync, printing a line per object on stdout and each failure on stderr.
async fn sync_and_print(cluster: &Cluster, source: &GitSource, settings: &Settings) -> ExitCode {
    let mut print = |id: &crate::object::ObjectRef,
                     result: &Result<Action, &crate::cluster::apply::Error>| {
        match result {
            Ok(action) => println!("{action} {id}"),
            Err(e) => eprintln!("error: {}", crate::error_chain(*e)),
        }
    };
    match sync::run_once(cluster, source, settings, &mut print).await {
        Ok(report) => {
            let short = &report.revision[..report.revision.len().min(12)];
            let counts = format!(
                "{} created, {} configured, {} unchanged, {} failed",
                report.count(Action::Created),
                report.count(Action::Configured),
                report.count(Action::Unchanged),
                report.failed.len()
            );
            if report.succeeded() {
                eprintln!("synced revision {short}: {counts}");
                ExitCode::SUCCESS
            } else {
                for e in report
                    .failed
                    .iter()
                    .filter(|e| matches!(e, crate::cluster::apply::Error::NotEstablished { .. }))
                {
                    eprintln!("error: {}", crate::error_chain(e));
                }
                eprintln!("sync of revision {short} failed: {counts}");
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            eprintln!("error: {}", crate::error_chain(&e));
            ExitCode::from(EXIT_FAILED)
        }
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
