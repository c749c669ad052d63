//! `tidegate sync`: ask the daemon to fetch and sync now, and wait for the
//! result. Goes through the Kubernetes API only (see `daemon::requests`).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use super::daemon::parse_duration;
use super::{EXIT_ERROR, EXIT_FAILED};
use crate::cluster::state::Outcome;
use crate::cluster::{Cluster, Connection};
use crate::daemon::requests::{self, PROGRESS_PREFIX, REVISION_PREFIX};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to wait for the sync to finish
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// The sync set of the daemon to ask
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let (client, state) = connection
        .state(args.sync_set_name)
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
    let cluster = Cluster::new(client.clone());
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut announced = false;
    loop {
        if let Some(status) = cluster
            .read_status(&state)
            .await?
            .filter(|s| s.requests.contains(&id))
        {
            if tty {
                eprint!("\r\x1b[K");
            }
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
            return Ok(if status.result == Outcome::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            });
        }
        let mut done = None;
        if !announced || tty {
            let annotations = requests::annotations(&client, &state)
                .await
                .unwrap_or_default();
            if !announced && let Some(revision) = annotations.get(&format!("{REVISION_PREFIX}{id}"))
            {
                if tty {
                    eprint!("\r\x1b[K");
                }
                println!("syncing revision {revision}");
                announced = true;
            }
            done = annotations.get(&format!("{PROGRESS_PREFIX}{id}")).cloned();
        }
        if started.elapsed() > args.timeout {
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!(
                "error: the daemon did not finish a sync within {:?}",
                args.timeout
            );
            return Ok(ExitCode::from(EXIT_ERROR));
        }
        if tty {
            let seconds = started.elapsed().as_secs();
            match &done {
                Some(n) => eprint!("\r\x1b[K{n} objects synced so far… {seconds}s"),
                None => eprint!("\r\x1b[Kwaiting for the daemon… {seconds}s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
