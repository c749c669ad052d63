//! `tidegate diff [PATH]`: render a local checkout and show, per object, the
//! unified diff against the live cluster (decided by a server-side apply
//! dry-run), and what would be pruned.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use super::daemon::SyncArgs;
use super::{EXIT_ERROR, EXIT_FAILED, Format};
use crate::cluster::{Cluster, Connection};
use crate::plan::{self, Change, Seen};
use crate::render;
use crate::sync::{self, GarbageCollection};

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

/// One object's entry in the printed plan.
#[derive(Debug, Serialize)]
struct Entry {
    object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(flatten)]
    change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    create: usize,
    update: usize,
    unchanged: usize,
    ignored: usize,
    prune: usize,
    invalid: usize,
}

#[derive(Debug, Serialize)]
struct Output {
    objects: Vec<Entry>,
    prune: Vec<String>,
    /// False when garbage collection is off: the objects in `prune` would stay.
    prune_enabled: bool,
    summary: Summary,
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
    let plan = sync::plan(&cluster, &set, &settings, &inventory).await;

    // Namespaces this plan creates: objects in them cannot be dry-run yet.
    let new_namespaces: Vec<&str> = plan
        .items
        .iter()
        .filter(|i| {
            i.change == Change::Create
                && i.desired.id.group.is_empty()
                && i.desired.id.kind == "Namespace"
        })
        .map(|i| i.desired.id.name.as_str())
        .collect();
    let mut objects = Vec::new();
    for item in &plan.items {
        let d = &item.desired;
        let (change, diff) = match &item.change {
            Change::Create | Change::Update => {
                match cluster
                    .apply(
                        &item.resolved,
                        &d.id,
                        &d.object,
                        settings.force_conflicts,
                        true,
                    )
                    .await
                {
                    Ok(after) => {
                        let after = serde_json::to_value(&after).expect("objects serialize");
                        match plan::object_diff(
                            &d.id,
                            item.live.as_ref().and_then(Seen::object),
                            &after,
                        ) {
                            None => (Change::Unchanged, None),
                            Some(diff) => (item.change.clone(), Some(diff)),
                        }
                    }
                    Err(_)
                        if d.id
                            .namespace
                            .as_deref()
                            .is_some_and(|ns| new_namespaces.contains(&ns)) =>
                    {
                        (
                            Change::Create,
                            plan::object_diff(&d.id, None, &d.object.value()),
                        )
                    }
                    Err(e) => (Change::Invalid { reason: e.reason() }, None),
                }
            }
            other => (other.clone(), None),
        };
        objects.push(Entry {
            object: d.id.to_string(),
            origin: Some(d.origin.to_string()),
            change,
            diff,
        });
    }
    let scratch = std::env::temp_dir().join(format!("tidegate-diff-{}", std::process::id()));
    let helm = args.sync.helm_settings(&connection, &scratch);
    let mut sources = crate::helm::chart::Sources::checkout(
        &args.path,
        args.git_url.as_deref(),
        helm.cache.clone(),
    );
    sources.proxy_settings = set.proxy.clone().filter(|p| !p.is_empty());
    sources.values.allow = helm.values_url_allow.clone();
    sources.allow_local = helm.allow_local_charts;
    for item in &plan.items {
        if !crate::helm::is_release(&item.desired.id) || item.change == Change::Ignored {
            continue;
        }
        objects.extend(
            release_entries(&cluster, &helm, &sources, item, settings.force_conflicts).await,
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    for m in &plan.deferred {
        objects.push(Entry {
            object: m.id.to_string(),
            origin: Some(m.origin().to_string()),
            change: Change::Create,
            diff: Some(String::from(
                "(its CustomResourceDefinition is created by the same sync; no dry-run possible)\n",
            )),
        });
    }
    for e in sync::render_errors(&set).iter().chain(&plan.errors) {
        objects.push(Entry {
            object: e.object.clone(),
            origin: e.origin.clone(),
            change: Change::Invalid {
                reason: e.reason.clone(),
            },
            diff: None,
        });
    }
    let mut summary = Summary::default();
    for o in &objects {
        match o.change {
            Change::Create => summary.create += 1,
            Change::Update => summary.update += 1,
            Change::Unchanged => summary.unchanged += 1,
            Change::Ignored => summary.ignored += 1,
            Change::Invalid { .. } => summary.invalid += 1,
        }
    }
    let prune: Vec<String> = plan.prune.iter().map(ToString::to_string).collect();
    summary.prune = prune.len();
    let output = Output {
        objects,
        prune,
        prune_enabled: settings.gc == GarbageCollection::On,
        summary,
    };
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

/// For a release a sync would install or upgrade, one entry per object its
/// chart renders that would change, diffed by a server-side dry-run
/// against the live object.
async fn release_entries(
    cluster: &Cluster,
    helm: &crate::helm::Settings,
    sources: &crate::helm::chart::Sources,
    item: &sync::Item,
    force: bool,
) -> Vec<Entry> {
    let d = &item.desired;
    let preview =
        match crate::helm::preview(Some(cluster), helm, sources, &d.id, &d.object.value()).await {
            Ok(p) => p,
            Err(reason) => {
                return vec![Entry {
                    object: d.id.to_string(),
                    origin: Some(d.origin.to_string()),
                    change: Change::Invalid {
                        reason: format!("its release cannot be rendered: {reason}"),
                    },
                    diff: None,
                }];
            }
        };
    let Some(why) = &preview.change else {
        return Vec::new();
    };
    let origin = format!("release {} of {}: {why}", preview.release, d.id);
    let mut entries = Vec::new();
    for mut object in preview.rendered {
        let (Some(api_version), Some(kind), Some(name)) = (
            object["apiVersion"].as_str(),
            object["kind"].as_str(),
            object["metadata"]["name"].as_str(),
        ) else {
            continue;
        };
        let mut id = crate::model::ObjectRef::new(api_version, kind, None, name);
        let resolved = match cluster.resolve(&id).await {
            Ok(r) => r,
            Err(_) => {
                entries.push(Entry {
                    object: id.to_string(),
                    origin: Some(origin.clone()),
                    change: Change::Create,
                    diff: plan::object_diff(&id, None, &object),
                });
                continue;
            }
        };
        if resolved.namespaced() {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&preview.namespace)
                .to_string();
            object["metadata"]["namespace"] = ns.clone().into();
            id.namespace = Some(ns);
        }
        let live = cluster
            .get(&resolved, &id)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        let after = match cluster.apply(&resolved, &id, &object, force, true).await {
            Ok(after) => serde_json::to_value(&after).expect("objects serialize"),
            // A namespace the release would create first, or the like.
            Err(_) if live.is_none() => object.clone(),
            Err(e) => {
                entries.push(Entry {
                    object: id.to_string(),
                    origin: Some(origin.clone()),
                    change: Change::Invalid { reason: e.reason() },
                    diff: None,
                });
                continue;
            }
        };
        if let Some(diff) = plan::object_diff(&id, live.as_ref(), &after) {
            entries.push(Entry {
                object: id.to_string(),
                origin: Some(origin.clone()),
                change: if live.is_some() {
                    Change::Update
                } else {
                    Change::Create
                },
                diff: Some(diff),
            });
        }
    }
    entries
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

fn print_text(output: &Output, color: bool) {
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
