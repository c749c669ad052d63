//! What a sync would do, without doing it: per object, the change a
//! server-side apply dry-run decides and its diff against the live object;
//! per HelmRelease, the objects its chart would change; what would be
//! pruned. Data only: `tidegate diff` prints it.

use serde::Serialize;

use super::{GarbageCollection, Planned, Settings, plan, render_errors};
use crate::cluster::Cluster;
use crate::helm;
use crate::helm::chart::Sources;
use crate::model::{Inventory, ObjectRef};
use crate::plan::{Change, Seen, object_diff};
use crate::render::DesiredSet;

/// One object's entry in the preview.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(flatten)]
    pub change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub ignored: usize,
    pub prune: usize,
    pub invalid: usize,
}

#[derive(Debug, Serialize)]
pub struct Preview {
    pub objects: Vec<Entry>,
    pub prune: Vec<String>,
    /// False when garbage collection is off: the objects in `prune` would stay.
    pub prune_enabled: bool,
    pub summary: Summary,
}

/// How HelmReleases' charts are rendered for a preview.
pub struct Charts<'a> {
    pub settings: &'a helm::Settings,
    pub sources: &'a Sources,
}

/// Previews a sync of `set` against the cluster and the inventory.
pub async fn preview(
    cluster: &Cluster,
    set: &DesiredSet,
    settings: &Settings,
    inventory: &Inventory,
    charts: Charts<'_>,
) -> Preview {
    let plan = plan(cluster, set, settings, inventory).await;
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
        objects.push(object_entry(cluster, item, &new_namespaces, settings.force_conflicts).await);
    }
    for item in &plan.items {
        if !helm::is_release(&item.desired.id) || item.change == Change::Ignored {
            continue;
        }
        objects.extend(release_entries(cluster, &charts, item, settings.force_conflicts).await);
    }
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
    for e in render_errors(set).iter().chain(&plan.errors) {
        objects.push(Entry {
            object: e.object.clone(),
            origin: e.origin.clone(),
            change: Change::Invalid {
                reason: e.reason.clone(),
            },
            diff: None,
        });
    }
    let prune: Vec<String> = plan.prune.iter().map(ToString::to_string).collect();
    let summary = summarize(&objects, prune.len());
    Preview {
        objects,
        prune,
        prune_enabled: settings.gc == GarbageCollection::On,
        summary,
    }
}

fn summarize(objects: &[Entry], prune: usize) -> Summary {
    let mut summary = Summary {
        prune,
        ..Summary::default()
    };
    for o in objects {
        match o.change {
            Change::Create => summary.create += 1,
            Change::Update => summary.update += 1,
            Change::Unchanged => summary.unchanged += 1,
            Change::Ignored => summary.ignored += 1,
            Change::Invalid { .. } => summary.invalid += 1,
        }
    }
    summary
}

/// One planned object, its change decided by a dry-run apply.
async fn object_entry(
    cluster: &Cluster,
    item: &Planned,
    new_namespaces: &[&str],
    force: bool,
) -> Entry {
    let d = &item.desired;
    let (change, diff) = match &item.change {
        Change::Create | Change::Update => {
            match cluster
                .apply(&item.resolved, &d.id, &d.object, force, true)
                .await
            {
                Ok(after) => {
                    let after = serde_json::to_value(&after).expect("objects serialize");
                    match object_diff(&d.id, item.live.as_ref().and_then(Seen::object), &after) {
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
                    (Change::Create, object_diff(&d.id, None, &d.object.value()))
                }
                Err(e) => (Change::Invalid { reason: e.reason() }, None),
            }
        }
        other => (other.clone(), None),
    };
    Entry {
        object: d.id.to_string(),
        origin: Some(d.origin.to_string()),
        change,
        diff,
    }
}

/// For a release a sync would install or upgrade, one entry per object its
/// chart renders that would change, diffed by a server-side dry-run
/// against the live object.
async fn release_entries(
    cluster: &Cluster,
    charts: &Charts<'_>,
    item: &Planned,
    force: bool,
) -> Vec<Entry> {
    let d = &item.desired;
    let object = d.object.value();
    let preview = match helm::preview(
        Some(cluster),
        charts.settings,
        charts.sources,
        &d.id,
        &object,
    )
    .await
    {
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
    for object in preview.rendered {
        let entry = rendered_entry(cluster, object, &preview.namespace, force).await;
        entries.extend(entry.map(|mut e| {
            e.origin = Some(origin.clone());
            e
        }));
    }
    entries
}

/// One object a release renders: its change, if it would change.
async fn rendered_entry(
    cluster: &Cluster,
    mut object: serde_json::Value,
    namespace: &str,
    force: bool,
) -> Option<Entry> {
    let (Some(api_version), Some(kind), Some(name)) = (
        object["apiVersion"].as_str(),
        object["kind"].as_str(),
        object["metadata"]["name"].as_str(),
    ) else {
        return None;
    };
    let mut id = ObjectRef::new(api_version, kind, None, name);
    let entry = |id: &ObjectRef, change, diff| Entry {
        object: id.to_string(),
        origin: None,
        change,
        diff,
    };
    let Ok(resolved) = cluster.resolve(&id).await else {
        return Some(entry(&id, Change::Create, object_diff(&id, None, &object)));
    };
    if resolved.namespaced() {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or(namespace)
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
        Err(e) => return Some(entry(&id, Change::Invalid { reason: e.reason() }, None)),
    };
    let diff = object_diff(&id, live.as_ref(), &after)?;
    let change = match live {
        Some(_) => Change::Update,
        None => Change::Create,
    };
    Some(entry(&id, change, Some(diff)))
}
