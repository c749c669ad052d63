//! The live side of releases: the objects of a release's deployed revision,
//! read from the cluster (one list per resource), and the first that drifted;
//! with Helm's record, what each release needs.

use super::*;

/// Decides many releases from their Helm records; the live objects of
/// those unchanged in Git are read together, in one list per resource.
pub(super) async fn decide_many(
    cluster: &Cluster,
    releases: Vec<(&ReleaseSpec, &Wanted, storage::History)>,
    mut live: HashMap<ObjectRef, Option<Value>>,
) -> Vec<(Option<Operation>, storage::History)> {
    let mut operations = Vec::new();
    let mut checks: Vec<(usize, Vec<(ObjectRef, crate::model::Json)>)> = Vec::new();
    for (i, (spec, wanted, history)) in releases.iter().enumerate() {
        let retry = Retry {
            enabled: spec.rollback.retry,
            max: spec.rollback.max_retries,
        };
        let mut operation = decide::decide(&history.records, &wanted.digests, retry);
        if operation == Operation::CompareAdopted {
            operation = compare_adopted(
                history,
                &wanted.located,
                wanted.chart_dir.as_deref(),
                &wanted.values,
            );
        }
        if operation == Operation::CheckLive {
            match deployed_objects(history, &spec.target_namespace) {
                Ok(objects) => checks.push((i, objects)),
                Err(why) => operation = Operation::Upgrade(why),
            }
        }
        operations.push(Some(operation));
    }
    // Those not read while the plan was made are read now.
    let refs: Vec<ObjectRef> = checks
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|(id, _)| id.clone()))
        .filter(|id| !live.contains_key(id))
        .collect();
    if !refs.is_empty() {
        live.extend(live_objects(cluster, &refs).await);
    }
    for (i, objects) in checks {
        operations[i] = drift_of(&objects, &live).map(Operation::Upgrade);
    }
    operations
        .into_iter()
        .zip(releases)
        .map(|(operation, (_, _, history))| (operation, history))
        .collect()
}

/// The objects of a release's deployed revision, with the namespace each
/// lives in (the release's, unless the chart names one).
pub(super) fn deployed_objects(
    history: &storage::History,
    namespace: &str,
) -> Result<Vec<(ObjectRef, crate::model::Json)>, String> {
    let Some(deployed) = history.deployed() else {
        return Ok(Vec::new());
    };
    let content = history
        .content(deployed.version)
        .map_err(|e| format!("its deployed record cannot be read ({e})"))?;
    // Each object is kept as its compact text as it is parsed: the release
    // is never held parsed whole beside its manifest.
    let mut objects = Vec::new();
    crate::render::manifest::each_document(&content.manifest, &ParseLimits::default(), |object| {
        let id = (|| {
            Some(ObjectRef::new(
                object["apiVersion"].as_str()?,
                object["kind"].as_str()?,
                Some(
                    object["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(namespace),
                ),
                object["metadata"]["name"].as_str()?,
            ))
        })();
        if let Some(id) = id {
            objects.push((id, crate::model::Json::new(&object)));
        }
    })
    .map_err(|e| format!("its deployed manifest cannot be read ({e})"))?;
    Ok(objects)
}

/// The live objects of these refs: `None` for one that is gone; absent
/// for one that could not be read (no verdict). One list per resource of
/// the objects tidegate's post-renderer labelled, then single reads for
/// the rest (releases made before, or by helm-operator).
pub(super) async fn live_objects(
    cluster: &Cluster,
    refs: &[ObjectRef],
) -> HashMap<ObjectRef, Option<Value>> {
    // Owned refs: the futures below may run on a task of their own.
    let mut by_resource: BTreeMap<String, (Resolved, Vec<ObjectRef>)> = BTreeMap::new();
    for id in refs {
        // Kinds that cannot be resolved give no verdict.
        if let Ok(resolved) = cluster.resolve(id).await {
            let key = format!(
                "{}/{}",
                resolved.resource.api_version, resolved.resource.plural
            );
            by_resource
                .entry(key)
                .or_insert_with(|| (resolved, Vec::new()))
                .1
                .push(id.clone());
        }
    }
    let lists: Vec<_> = stream::iter(by_resource.into_values().map(|(resolved, ids)| async move {
        let listed = cluster
            .list_labelled(&resolved, binary::RELEASE_LABEL)
            .await
            .ok();
        (resolved, ids, listed)
    }))
    .buffer_unordered(8)
    .collect()
    .await;
    let mut live = HashMap::new();
    let mut unlisted = Vec::new();
    for (resolved, ids, listed) in lists {
        let mut index: HashMap<(Option<String>, String), Value> = HashMap::new();
        for object in listed.unwrap_or_default() {
            let meta = &object["metadata"];
            let key = (
                meta["namespace"].as_str().map(str::to_string),
                meta["name"].as_str().unwrap_or_default().to_string(),
            );
            index.insert(key, object);
        }
        for id in ids {
            let namespace = id.namespace.clone().filter(|_| resolved.namespaced());
            match index.remove(&(namespace.clone(), id.name.clone())) {
                Some(object) => {
                    live.insert(id.clone(), Some(object));
                }
                None => unlisted.push((resolved.clone(), id, namespace)),
            }
        }
    }
    let read: Vec<(ObjectRef, Option<Option<Value>>)> = stream::iter(unlisted.into_iter().map(
        |(resolved, id, namespace)| async move {
            let mut placed = id.clone();
            placed.namespace = namespace;
            let found = match cluster.get(&resolved, &placed).await {
                Ok(o) => Some(o.and_then(|o| serde_json::to_value(o).ok())),
                Err(_) => None,
            };
            (id, found)
        },
    ))
    .buffer_unordered(16)
    .collect()
    .await;
    for (id, found) in read {
        if let Some(found) = found {
            live.insert(id, found);
        }
    }
    live
}

/// The first of a release's objects that is gone or differs live.
pub(super) fn drift_of(
    objects: &[(ObjectRef, crate::model::Json)],
    live: &HashMap<ObjectRef, Option<Value>>,
) -> Option<String> {
    objects.iter().find_map(|(id, object)| match live.get(id)? {
        None => Some(format!("{id} was deleted")),
        Some(l) => drift::first_difference(&object.value(), l)
            .map(|field| format!("{id} was changed in the cluster ({field})")),
    })
}
