//! `tidegate sync`: ask the daemon to fetch and sync now, and wait for the
//! result (and, with `--wait-healthy`, for the objects' health). Goes through
//! the Kubernetes API only (see `daemon::requests`), and waits on watches.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use super::daemon::parse_duration;
use super::{EXIT_ERROR, EXIT_FAILED};
use crate::cluster::live::Live;
use crate::cluster::state::StateRef;
use crate::cluster::{Cluster, Connection};
use crate::daemon::requests::{self, PROGRESS_PREFIX, REVISION_PREFIX};
use crate::health::Status;
use crate::model::record::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to wait for the sync (and, with --wait-healthy, for health)
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// After the sync, wait until every managed object is healthy (rolled out, complete, bound)
    #[arg(long)]
    wait_healthy: bool,
    /// The sync set of the daemon to ask
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
}

/// Clears the progress line on a terminal.
fn clear(tty: bool) {
    if tty {
        eprint!("\r\x1b[K");
    }
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let (client, state) = connection
        .state(args.sync_set_name.clone())
        .await
        .context("cannot connect to the cluster")?;
    let id = requests::new_id();
    if let Err(e) = requests::post(&client, &state, &id).await {
        eprintln!(
            "error: cannot ask the daemon to sync: {e}. Is tidegate running in namespace {} with sync set {}? (ConfigMap {})",
            state.namespace,
            state.sync_set,
            state.name()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut maps = requests::follow(&client, &state);
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let mut announced = false;
    let mut done: Option<String> = None;
    loop {
        let map = tokio::select! {
            map = maps.recv() => map,
            _ = tokio::time::sleep_until(deadline) => {
                clear(tty);
                eprintln!(
                    "error: the daemon did not finish a sync within {}",
                    humantime::format_duration(args.timeout)
                );
                return Ok(ExitCode::from(EXIT_ERROR));
            }
            _ = redraw.tick(), if tty => None,
        };
        if let Some(map) = map {
            if let Some(status) =
                Cluster::status_in(&state, &map)?.filter(|s| s.requests.contains(&id))
            {
                clear(tty);
                print_result(&status, announced);
                if status.result != Outcome::Succeeded {
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                if args.wait_healthy {
                    return wait_healthy(&client, &state, deadline, tty).await;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let annotations = map.metadata.annotations.unwrap_or_default();
            if !announced && let Some(revision) = annotations.get(&format!("{REVISION_PREFIX}{id}"))
            {
                clear(tty);
                println!("syncing revision {revision}");
                announced = true;
            }
            done = annotations.get(&format!("{PROGRESS_PREFIX}{id}")).cloned();
        }
        if tty {
            let seconds = started.elapsed().as_secs();
            match &done {
                Some(n) => eprint!("\r\x1b[K{n} objects synced so far… {seconds}s"),
                None => eprint!("\r\x1b[Kwaiting for the daemon… {seconds}s"),
            }
        }
    }
}

/// The sync that answered the request: its revision (unless announced
/// already), result, releases and errors.
fn print_result(status: &crate::model::record::SyncStatus, announced: bool) {
    if !announced {
        println!(
            "synced revision {}",
            status.revision.as_deref().unwrap_or("(none)")
        );
    }
    println!("result: {}: {}", status.result, status.summary());
    for r in &status.releases {
        println!("{r}");
    }
    if let Some(m) = &status.message {
        eprintln!("error: {m}");
    }
    for e in &status.errors {
        eprintln!("error: {e}");
    }
}

/// Watches every object the sync set manages, for its health.
pub async fn follow_inventory(
    client: &kube::Client,
    state: &StateRef,
) -> anyhow::Result<std::sync::Arc<Live>> {
    let cluster = Cluster::new(client.clone());
    let inventory = cluster.read_inventory(state).await?;
    let live = Live::new(client.clone(), &state.sync_set, Vec::new(), None);
    for id in &inventory {
        match cluster.resolve(id).await {
            Ok(resolved) => {
                live.track(&resolved, id);
                live.watch(&resolved);
            }
            Err(e) => eprintln!(
                "warning: {id}: health not followed: {}",
                crate::model::error_chain(&e)
            ),
        }
    }
    Ok(live)
}

/// Follows the health of every object the sync set manages, from watches,
/// until all are current (success), one failed, or the deadline passes.
async fn wait_healthy(
    client: &kube::Client,
    state: &StateRef,
    deadline: Instant,
    tty: bool,
) -> anyhow::Result<ExitCode> {
    let live = follow_inventory(client, state).await?;
    let mut changes = live.subscribe();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    loop {
        let health = live.health();
        let summary = crate::cluster::live::summary(&health);
        let current = summary.get(&Status::Current).copied().unwrap_or(0);
        let failed: Vec<String> = health
            .iter()
            .filter_map(|(id, h)| {
                h.as_ref()
                    .filter(|h| h.status == Status::Failed)
                    .map(|h| format!("{id}: {}", h.message))
            })
            .collect();
        if live.synced() && current == health.len() {
            clear(tty);
            println!("healthy: {current} objects current");
            return Ok(ExitCode::SUCCESS);
        }
        if live.synced() && !failed.is_empty() {
            clear(tty);
            println!(
                "unhealthy: {} of {} objects failed",
                failed.len(),
                health.len()
            );
            for f in &failed {
                eprintln!("error: {f}");
            }
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        if tty {
            eprint!("\r\x1b[K{current} of {} objects healthy…", health.len());
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = redraw.tick(), if tty => {}
            _ = tokio::time::sleep_until(deadline) => {
                clear(tty);
                println!("unhealthy: {} of {} objects not healthy in time", health.len() - current, health.len());
                for (id, h) in crate::cluster::live::not_current(&health) {
                    eprintln!("error: {id}: {}: {}", h.status, h.message);
                }
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
    }
}
