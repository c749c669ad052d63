//! `tidegate status`: the last sync as the daemon recorded it in the cluster.

use std::process::ExitCode;

use anyhow::Context;

use super::{EXIT_ERROR, EXIT_FAILED, Format};
use std::collections::BTreeMap;

use crate::cluster::state::StateRef;
use crate::cluster::{Cluster, Connection};
use crate::health::Status;
use crate::model::record::{AutomationStatus, Outcome, SyncStatus};

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
    let cluster = Cluster::new(client.clone());
    let Some(status) = cluster.read_status(&state).await? else {
        eprintln!(
            "no sync recorded for sync set {} in namespace {} (ConfigMap {} not found); is the daemon running there? Pass --namespace.",
            state.sync_set,
            state.namespace,
            state.name()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    };
    let health = health(&client, &state).await?;
    let automation = cluster.read_automation(&state).await?;
    match args.output {
        Format::Json | Format::Yaml => {
            let mut shown = serde_json::to_value(&status)?;
            shown["health"] = serde_json::to_value(&health)?;
            if let Some(automation) = &automation {
                shown["automation"] = serde_json::to_value(automation)?;
            }
            if args.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", serde_saphyr::to_string(&shown)?);
            }
        }
        Format::Text => print!(
            "{}{}{}",
            text(&status),
            health_text(&health),
            automation.as_ref().map(automation_text).unwrap_or_default()
        ),
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
    if let Some(signer) = &status.signed_by {
        out.push_str(&format!("signed by: {signer}\n"));
    }
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

/// The managed objects' health now, as their watches list them.
#[derive(Debug, serde::Serialize)]
struct HealthReport {
    /// Objects per status.
    summary: BTreeMap<Status, usize>,
    /// The objects that are not current, and why.
    objects: Vec<ObjectHealth>,
}

#[derive(Debug, serde::Serialize)]
struct ObjectHealth {
    object: String,
    status: Status,
    message: String,
}

async fn health(client: &kube::Client, state: &StateRef) -> anyhow::Result<HealthReport> {
    let live = super::sync::follow_inventory(client, state).await?;
    let mut changes = live.subscribe();
    let listed = async {
        while !live.synced() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), listed).await;
    let all = live.health();
    let objects = crate::cluster::live::not_current(&all)
        .into_iter()
        .map(|(id, h)| ObjectHealth {
            object: id.to_string(),
            status: h.status,
            message: h.message,
        })
        .collect();
    Ok(HealthReport {
        summary: crate::cluster::live::summary(&all),
        objects,
    })
}

fn health_text(health: &HealthReport) -> String {
    let counts: Vec<String> = health
        .summary
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let mut out = format!(
        "health:    {}\n",
        if counts.is_empty() {
            "no objects".to_string()
        } else {
            counts.join(", ")
        }
    );
    for o in &health.objects {
        out.push_str(&format!(
            "unhealthy: {} {}: {}\n",
            o.object, o.status, o.message
        ));
    }
    out
}

fn automation_text(a: &AutomationStatus) -> String {
    let mut out = format!(
        "automation: {} containers in {} repositories, scanned {}\n",
        a.containers, a.repositories, a.scanned
    );
    if let (Some(commit), Some(at)) = (&a.commit, &a.committed) {
        out.push_str(&format!("committed: {commit} at {at}\n"));
    }
    for e in &a.errors {
        out.push_str(&format!("automation error: {e}\n"));
    }
    out
}
