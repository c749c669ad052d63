//! `tidegate list-workloads`: the workloads and HelmReleases a sync set
//! manages, as the cluster has them, with their containers, images and
//! automation policy (what fluxctl's `list-workloads` showed).

use std::process::ExitCode;

use anyhow::Context;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde::Serialize;

use super::Format;
use crate::automation::containers;
use crate::automation::policy::Policy;
use crate::cluster::Connection;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sync set whose workloads to list
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
    /// Only workloads in this namespace (default: all)
    #[arg(long)]
    workload_namespace: Option<String>,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Workload {
    /// `namespace:kind/name`, as fluxctl named them.
    workload: String,
    automated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    locked: Option<String>,
    containers: Vec<ContainerImage>,
}

#[derive(Debug, Serialize)]
struct ContainerImage {
    name: String,
    image: String,
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let selector = crate::model::marks::selector(&args.sync_set_name);
    let mut workloads = Vec::new();
    for (group, version, kind, plural) in containers::KINDS {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = match &args.workload_namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let listed = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list,
            // The HelmRelease CRD may not be installed (or not served yet).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 503 => continue,
            Err(e) if group == "helm.fluxcd.io" => {
                eprintln!("warning: cannot list {plural}.{group}: {e}; listed without them");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot list {plural}")),
        };
        for object in listed {
            // A list's items carry no apiVersion and kind of their own.
            let mut object = serde_json::to_value(&object)?;
            object["apiVersion"] = resource.api_version.clone().into();
            object["kind"] = kind.into();
            workloads.push(workload(kind, &object));
        }
    }
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&workloads)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&workloads)?),
        Format::Text => print!("{}", text(&workloads)),
    }
    Ok(ExitCode::SUCCESS)
}

fn workload(kind: &str, object: &serde_json::Value) -> Workload {
    let meta = &object["metadata"];
    let empty = serde_json::Map::new();
    let annotations = meta["annotations"].as_object().unwrap_or(&empty);
    let (policy, _) = Policy::from_annotations(annotations);
    let (found, _) = containers::containers(object);
    Workload {
        workload: format!(
            "{}:{}/{}",
            meta["namespace"].as_str().unwrap_or_default(),
            kind.to_ascii_lowercase(),
            meta["name"].as_str().unwrap_or_default()
        ),
        automated: policy.automated,
        locked: policy.locked.map(|l| match (l.user, l.message) {
            (Some(u), Some(m)) => format!("by {u}: {m}"),
            (None, Some(m)) => m,
            (Some(u), None) => format!("by {u}"),
            (None, None) => "locked".into(),
        }),
        containers: found
            .into_iter()
            .map(|c| ContainerImage {
                name: c.name,
                image: c.image.to_string(),
            })
            .collect(),
    }
}

fn text(workloads: &[Workload]) -> String {
    let mut out = String::from("WORKLOAD\tCONTAINER\tIMAGE\tPOLICY\n");
    for w in workloads {
        let policy = match (&w.locked, w.automated) {
            (Some(lock), _) => format!("locked {lock}"),
            (None, true) => "automated".to_string(),
            (None, false) => String::new(),
        };
        for (i, c) in w.containers.iter().enumerate() {
            let (name, policy) = match i {
                0 => (w.workload.as_str(), policy.as_str()),
                _ => ("", ""),
            };
            out.push_str(&format!("{name}\t{}\t{}\t{policy}\n", c.name, c.image));
        }
    }
    out
}

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// The sync set whose daemon to ask
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
    /// Only this workload (namespace:kind/name)
    #[arg(long, short = 'w')]
    workload: Option<String>,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Listed<'a> {
    workload: &'a str,
    container: &'a str,
    current: &'a str,
    /// What automation moves to.
    pick: Option<&'a str>,
    /// Best first.
    available: &'a [String],
}

/// `tidegate list-images`: each automated container's image and the tags
/// its filter allows, best first, as the daemon's last cycle read them.
pub async fn images(args: ImagesArgs, connection: Connection) -> anyhow::Result<ExitCode> {
    let (client, state) = connection
        .state(args.sync_set_name.clone())
        .await
        .context("cannot connect to the cluster")?;
    let record = crate::cluster::Cluster::new(client)
        .read_automation(&state)
        .await?;
    let Some(record) = record else {
        eprintln!(
            "error: no automation cycle is recorded for sync set {} in namespace {}: is the daemon running with automation on?",
            state.sync_set, state.namespace
        );
        return Ok(ExitCode::from(super::EXIT_ERROR));
    };
    let listed: Vec<Listed> = record
        .images
        .iter()
        .filter(|i| args.workload.as_ref().is_none_or(|w| *w == i.workload))
        .map(|i| Listed {
            workload: &i.workload,
            container: &i.container,
            current: &i.current,
            pick: i.available.first().map(String::as_str),
            available: &i.available,
        })
        .collect();
    match args.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&listed)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&listed)?),
        Format::Text => {
            println!("as of the automation cycle at {}", record.scanned);
            for l in &listed {
                println!("{}\t{}\t{}", l.workload, l.container, l.current);
                let tag = l.current.rsplit_once(':').map(|(_, t)| t);
                for (i, t) in l.available.iter().enumerate() {
                    let mark = if i == 0 { "->" } else { "  " };
                    let now = if Some(t.as_str()) == tag {
                        "  (running)"
                    } else {
                        ""
                    };
                    println!("  {mark} {t}{now}");
                }
                if l.available.is_empty() {
                    println!("     (no tag its filter allows)");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
