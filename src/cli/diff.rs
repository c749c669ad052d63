//! `tidegate diff [PATH]`: render a local checkout and show, per object, the
//! unified diff against the live cluster (decided by a server-side apply
//! dry-run), and what would be pruned.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::daemon::SyncArgs;
use super::{EXIT_ERROR, EXIT_FAILED, Format};
use crate::cluster::{Cluster, Connection};
use crate::plan::Change;
use crate::render;
use crate::sync::preview::{Charts, Preview, preview};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkout to compare with the cluster
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The repository the checkout is a clone of, for HelmRelease charts kept in it (default: its origin remote)
    #[arg(long, env = "TIDEGATE_GIT_URL")]
    git_url: Option<String>,
    #[command(flatten)]
    sync: SyncArgs,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    super::init_logging("warn");
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let mut settings = args.sync.settings(connection.namespace(&client));
    // The daemon's key, so Secrets' checksums compare; diff never makes one.
    match Cluster::new(client.clone())
        .checksum_key(&settings.state, false)
        .await
    {
        Ok(Some(key)) => settings.render.secret_key = Some(std::sync::Arc::new(key)),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: cannot read the daemon's key for Secrets' checksums ({e}); Secrets may show a changed tidegate.dev/checksum"
        ),
    }
    if let Some(keys) = args.sync.build.sops_keys()? {
        let keys = keys
            .read(&client, &settings.state.namespace, |e| {
                render::sops::Keys::from_entries(e)
            })
            .await
            .context("cannot read the SOPS decryption keys")?;
        settings.render.sops.keys = Some(std::sync::Arc::new(keys));
    }
    let set = render::render(&args.path, &settings.render);
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    let cluster = Cluster::new(client);
    let inventory = cluster
        .read_inventory(&settings.state)
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "warning: {}; pruning not shown",
                crate::model::error_chain(&e)
            );
            Default::default()
        });
    let scratch = tempfile::Builder::new()
        .prefix("tidegate-diff-")
        .tempdir()
        .context("cannot make a scratch directory")?;
    let helm = args.sync.helm_settings(&connection, scratch.path());
    let mut sources = crate::helm::chart::Sources::checkout(
        &args.path,
        args.git_url.as_deref(),
        helm.cache.clone(),
    );
    sources.proxy_settings = set.proxy.clone().filter(|p| !p.is_empty());
    sources.values.allow = helm.values_url_allow.clone();
    sources.allow_local = helm.allow_local_charts;
    let charts = Charts {
        settings: &helm,
        sources: &sources,
    };
    let output = preview(&cluster, &set, &settings, &inventory, charts).await;
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&output)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&output)?),
        Format::Text => print_text(&output, std::io::stdout().is_terminal()),
    }
    let s = &output.summary;
    Ok(if s.invalid > 0 {
        ExitCode::from(EXIT_ERROR)
    } else if s.create + s.update > 0 || (output.prune_enabled && s.prune > 0) {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn paint(line: &str, color: bool) -> String {
    if !color {
        return line.to_string();
    }
    let code = if line.starts_with("+++") || line.starts_with("---") {
        "1"
    } else if line.starts_with('+') {
        "32"
    } else if line.starts_with('-') {
        "31"
    } else if line.starts_with("@@") {
        "36"
    } else {
        return line.to_string();
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

fn print_text(output: &Preview, color: bool) {
    for o in &output.objects {
        let origin = o
            .origin
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        match &o.change {
            Change::Unchanged | Change::Ignored => continue,
            Change::Create => println!(
                "{}",
                paint(&format!("+ create {}{origin}", o.object), color)
            ),
            Change::Update => println!("~ update {}{origin}", o.object),
            Change::Invalid { reason } if o.object.is_empty() => {
                println!("{}", paint(&format!("! invalid {reason}"), color))
            }
            Change::Invalid { reason } => println!(
                "{}",
                paint(&format!("! invalid {}{origin}: {reason}", o.object), color)
            ),
        }
        if let Some(diff) = &o.diff {
            for line in diff.lines() {
                println!("{}", paint(line, color));
            }
        }
    }
    for p in &output.prune {
        let note = if output.prune_enabled {
            ""
        } else {
            " (garbage collection is off: kept)"
        };
        println!("{}", paint(&format!("- prune {p}{note}"), color));
    }
    let s = &output.summary;
    println!(
        "{} to create, {} to update, {} unchanged, {} to prune, {} invalid",
        s.create, s.update, s.unchanged, s.prune, s.invalid
    );
}
