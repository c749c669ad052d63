//! What the cluster holds of a desired set: from the daemon's watches where
//! they have listed, otherwise read (one list per resource, then single
//! reads), each object classified against Git's.

use super::*;

/// Classifies the objects of the resources the daemon's watches have listed,
/// from what they hold; returns the others, which are read.
pub(super) async fn from_watches(
    live: &std::sync::Arc<Live>,
    placed: Vec<(Desired, Resolved)>,
    owner: Option<&str>,
    plan: &mut Plan,
) -> Vec<(Desired, Resolved)> {
    let mut by_resource: BTreeMap<(String, String, String), Vec<(Desired, Resolved)>> =
        BTreeMap::new();
    for (d, r) in placed {
        let key = (
            r.resource.group.clone(),
            r.resource.version.clone(),
            r.resource.plural.clone(),
        );
        by_resource.entry(key).or_default().push((d, r));
    }
    // A resource not watched yet is watched from now on; its first list
    // serves this sync too, unless it takes long.
    let fresh: Vec<Resolved> = by_resource
        .values()
        .map(|group| group[0].1.clone())
        .filter(|r| live.lookup(r, &[]).is_none())
        .collect();
    for resolved in &fresh {
        live.watch(resolved);
    }
    futures::future::join_all(fresh.iter().map(|r| live.listed(r, WATCH_LIST_WAIT))).await;
    let mut rest = Vec::new();
    for group in by_resource.into_values() {
        let resolved = group[0].1.clone();
        let ids: Vec<&ObjectRef> = group.iter().map(|(d, _)| &d.id).collect();
        let Some(entries) = live.lookup(&resolved, &ids) else {
            rest.extend(group);
            continue;
        };
        for ((desired, resolved), entry) in group.into_iter().zip(entries) {
            let conflict = entry.as_ref().zip(owner).and_then(|(e, ours)| {
                plan::owner_conflict(e.owner.as_deref(), ours, &desired.object)
            });
            let change = match &entry {
                _ if conflict.is_some() => Change::Invalid {
                    reason: conflict.expect("just checked"),
                },
                Some(e) if e.ignored => Change::Ignored,
                Some(e)
                    if e.in_sync == Some(true) && live.expects(&desired.id, &desired.checksum) =>
                {
                    Change::Unchanged
                }
                Some(_) => Change::Update,
                // Applied before and gone now; unless it only left this
                // instance's watch (another took it over): read it.
                None if live.is_expected(&desired.id) && owner.is_none() => Change::Create,
                // Perhaps there without tidegate's label: read it.
                None => {
                    rest.push((desired, resolved));
                    continue;
                }
            };
            plan.items.push(Planned {
                live: entry.map(|e| e.as_live()),
                desired,
                resolved,
                change,
            });
        }
    }
    rest
}

/// Classifies each desired object against the live one: from the watches
/// where they have listed, otherwise by reading (one list per resource, then
/// single reads for objects that carry no tidegate label yet). A running
/// daemon's watches compare with these objects from now on.
pub(super) async fn observe(
    cluster: &Cluster,
    placed: Vec<(Desired, Resolved)>,
    settings: &Settings,
    plan: &mut Plan,
) {
    let first = plan.items.len();
    // With --adopt, objects of other instances are taken over.
    let owner = (!settings.adopt).then(|| settings.state.owner());
    let owner = owner.as_deref();
    let placed = match cluster.live() {
        Some(live) => from_watches(live, placed, owner, plan).await,
        None => placed,
    };
    read_live(cluster, placed, &settings.state.sync_set, owner, plan).await;
    if let Some(live) = cluster.live() {
        live.expect(
            plan.items[first..]
                .iter()
                .filter(|i| !matches!(i.change, Change::Ignored | Change::Invalid { .. }))
                .map(|i| {
                    (
                        &i.resolved,
                        &i.desired.id,
                        i.desired.checksum.as_str(),
                        &i.desired.object,
                    )
                }),
        );
    }
}

pub(super) async fn read_live(
    cluster: &Cluster,
    placed: Vec<(Desired, Resolved)>,
    sync_set: &str,
    owner: Option<&str>,
    plan: &mut Plan,
) {
    if placed.is_empty() {
        return;
    }
    let (mut live, unreadable) = list_live(cluster, &placed, sync_set).await;
    let missing = read_unlisted(cluster, &placed, &mut live, plan).await;
    for (desired, resolved) in placed {
        if let Some(reason) = unreadable.get(&resource_key(&resolved)) {
            tracing::debug!(object = %desired.id, "list failed ({reason}); read singly");
        }
        let live_object = live.remove(&desired.id);
        let known_absent = missing.contains(&desired.id);
        // None: a read error, reported already.
        let Some(change) = plan::decide(&desired, live_object.as_ref(), known_absent, owner) else {
            continue;
        };
        plan.items.push(Planned {
            desired,
            resolved,
            live: live_object.map(Seen::Object),
            change,
        });
    }
}

/// A served resource: group, version, plural.
type ResourceKey = (String, String, String);

fn resource_key(resolved: &Resolved) -> ResourceKey {
    (
        resolved.resource.group.clone(),
        resolved.resource.version.clone(),
        resolved.resource.plural.clone(),
    )
}

/// One list per resource, all at once, of the set's marked objects in the
/// namespaces Git has for it. Returns what was found, and the resources
/// that could not be listed (their objects are read one by one).
async fn list_live(
    cluster: &Cluster,
    placed: &[(Desired, Resolved)],
    sync_set: &str,
) -> (HashMap<ObjectRef, Value>, HashMap<ResourceKey, String>) {
    let mut by_resource: BTreeMap<ResourceKey, (Resolved, BTreeSet<String>)> = BTreeMap::new();
    for (d, r) in placed {
        let entry = by_resource
            .entry(resource_key(r))
            .or_insert_with(|| (r.clone(), BTreeSet::new()));
        if let Some(ns) = &d.id.namespace {
            entry.1.insert(ns.clone());
        }
    }
    let lists: Vec<_> = stream::iter(by_resource.into_iter().map(
        |(key, (resolved, namespaces))| async move {
            let namespaces: Vec<String> = namespaces.into_iter().collect();
            let result = cluster.list_managed(&resolved, &namespaces, sync_set).await;
            (key, resolved, result)
        },
    ))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    let mut live = HashMap::new();
    let mut unreadable = HashMap::new();
    for (key, resolved, result) in lists {
        match result {
            Ok(items) => {
                for value in items {
                    let meta = &value["metadata"];
                    let id = crate::cluster::object_id(
                        &resolved.resource,
                        meta["namespace"].as_str(),
                        meta["name"].as_str().unwrap_or_default(),
                    );
                    live.insert(id, value);
                }
            }
            Err(e) => {
                unreadable.insert(key, reason(&e));
            }
        }
    }
    (live, unreadable)
}

/// Reads the placed objects no list found (unmarked, or their resource not
/// listable) one by one, into `live`; returns those known not to exist. A
/// read that fails is the plan's error.
async fn read_unlisted(
    cluster: &Cluster,
    placed: &[(Desired, Resolved)],
    live: &mut HashMap<ObjectRef, Value>,
    plan: &mut Plan,
) -> HashSet<ObjectRef> {
    // Nothing can exist yet in a namespace that does not: skip reading those.
    let absent_namespaces = absent_namespaces(cluster, placed, live).await;
    let mut missing = HashSet::new();
    let mut unlisted: Vec<&(Desired, Resolved)> = Vec::new();
    for entry in placed {
        let id = &entry.0.id;
        if live.contains_key(id) {
            continue;
        }
        if id
            .namespace
            .as_ref()
            .is_some_and(|ns| absent_namespaces.contains(ns))
        {
            missing.insert(id.clone());
        } else {
            unlisted.push(entry);
        }
    }
    let fetched: Vec<(ObjectRef, Result<Option<Value>, String>)> =
        stream::iter(unlisted.into_iter().map(|(d, r)| async move {
            let found = cluster
                .get(r, &d.id)
                .await
                .map(|o| o.map(|o| serde_json::to_value(&o).expect("objects serialize")))
                .map_err(|e| reason(&e));
            (d.id.clone(), found)
        }))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (id, found) in fetched {
        match found {
            Ok(Some(v)) => {
                live.insert(id, v);
            }
            Ok(None) => {
                missing.insert(id);
            }
            Err(reason) => {
                plan.errors.push(object_error(
                    &id,
                    None,
                    format!("cannot read the live object: {reason}"),
                ));
            }
        }
    }
    missing
}

/// The namespaces that objects not yet listed live in and that do not exist.
pub(super) async fn absent_namespaces(
    cluster: &Cluster,
    placed: &[(Desired, Resolved)],
    live: &HashMap<ObjectRef, Value>,
) -> HashSet<String> {
    let wanted: BTreeSet<&String> = placed
        .iter()
        .filter(|(d, _)| !live.contains_key(&d.id))
        .filter_map(|(d, _)| d.id.namespace.as_ref())
        .collect();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client.clone());
    let found: Vec<Option<String>> = stream::iter(wanted.into_iter().map(|ns| {
        let namespaces = namespaces.clone();
        async move { matches!(namespaces.get_opt(ns).await, Ok(None)).then(|| ns.clone()) }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    found.into_iter().flatten().collect()
}
