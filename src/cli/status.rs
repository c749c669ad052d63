//! `tidegate status`: the last sync as the daemon recorded it in the cluster.

use std::process::ExitCode;

use anyhow::Context;

use super::{EXIT_ERROR, EXIT_FAILED, Format};
use crate::cluster::state::{Outcome, SyncStatus};
use crate::cluster::{Cluster, Connection};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sync set whose status to show
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let (client, state) = connection
        .state(args.sync_set_name)
        .await
        .context("cannot connect to the cluster")?;
    let cluster = Cluster::new(client);
    let Some(status) = cluster.read_status(&state).await? else {
        eprintln!(
            "no sync recorded for sync set {} in namespace {} (ConfigMap {} not found); is the daemon running there? Pass --namespace.",
            state.sync_set,
            state.namespace,
            state.name()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    };
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&status)?),
        Format::Text => print!("{}", text(&status)),
    }
    Ok(match status.result {
        Outcome::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_FAILED),
    })
}

fn text(status: &SyncStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "revision:  {}\n",
        status.revision.as_deref().unwrap_or("(none)")
    ));
    out.push_str(&format!("result:    {}\n", status.result));
    out.push_str(&format!("started:   {}\n", status.started));
    out.push_str(&format!("finished:  {}\n", status.finished));
    let counts: Vec<String> = status
        .counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    out.push_str(&format!("objects:   {}\n", counts.join(", ")));
    if let Some(message) = &status.message {
        out.push_str(&format!("error:     {message}\n"));
    }
    for e in &status.errors {
        let origin = e
            .origin
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        if e.object.is_empty() {
            out.push_str(&format!("failed:    {}\n", e.reason));
        } else {
            out.push_str(&format!("failed:    {}{origin}: {}\n", e.object, e.reason));
        }
    }
    if status.errors_total > status.errors.len() {
        out.push_str(&format!(
            "failed:    … and {} more (counted, not recorded)\n",
            status.errors_total - status.errors.len()
        ));
    }
    for r in &status.releases {
        let helm_status = r
            .status
            .as_deref()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        out.push_str(&format!("release:   {r}{helm_status}\n"));
    }
    for w in &status.warnings {
        out.push_str(&format!("warning:   {w}\n"));
    }
    out
}
