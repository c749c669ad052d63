//! `tidegate sync` requests, carried by annotations on the sync state
//! ConfigMap, so the CLI needs nothing but Kubernetes API access:
//!
//! 1. the CLI adds `sync-request.tidegate.dev/<id>`;
//! 2. the daemon takes it, fetches, and replaces it with
//!    `sync-revision.tidegate.dev/<id>: <revision>` (the CLI prints it);
//! 3. the daemon records the sync with `<id>` in the status's `requests`, and
//!    removes the annotation. Several requests are answered by one sync.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::cluster::state::StateRef;

pub const REQUEST_PREFIX: &str = "sync-request.tidegate.dev/";
pub const REVISION_PREFIX: &str = "sync-revision.tidegate.dev/";
/// How many objects the sync answering a request has done so far.
pub const PROGRESS_PREFIX: &str = "sync-progress.tidegate.dev/";

fn api(client: &kube::Client, state: &StateRef) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), &state.namespace)
}

/// Merges annotations into the state ConfigMap (`null` removes one).
async fn annotate(
    client: &kube::Client,
    state: &StateRef,
    annotations: serde_json::Map<String, Value>,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": annotations}});
    api(client, state)
        .patch(
            &state.name(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

/// A request id unique enough for concurrent CLIs: time and process.
pub fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("r{nanos}-{}", std::process::id())
}

/// Adds a request; fails if the state ConfigMap does not exist (no daemon).
pub async fn post(client: &kube::Client, state: &StateRef, id: &str) -> Result<(), kube::Error> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        format!("{REQUEST_PREFIX}{id}"),
        crate::cluster::state::now().into(),
    );
    annotate(client, state, annotations).await
}

/// The annotations of the state ConfigMap.
pub async fn annotations(
    client: &kube::Client,
    state: &StateRef,
) -> Result<BTreeMap<String, String>, kube::Error> {
    Ok(api(client, state)
        .get_opt(&state.name())
        .await?
        .and_then(|cm| cm.metadata.annotations)
        .unwrap_or_default())
}

/// Ids of the requests waiting for the daemon.
pub fn pending(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .keys()
        .filter_map(|k| k.strip_prefix(REQUEST_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Marks requests as taken, naming the revision being synced.
pub async fn acknowledge(
    client: &kube::Client,
    state: &StateRef,
    ids: &[String],
    revision: &str,
) -> Result<(), kube::Error> {
    let mut annotations = serde_json::Map::new();
    for id in ids {
        annotations.insert(format!("{REQUEST_PREFIX}{id}"), Value::Null);
        annotations.insert(format!("{REVISION_PREFIX}{id}"), revision.into());
    }
    annotate(client, state, annotations).await
}

/// Says how many objects the sync answering these requests has done.
pub async fn progress(
    client: &kube::Client,
    state: &StateRef,
    ids: &[String],
    done: usize,
) -> Result<(), kube::Error> {
    let annotations = ids
        .iter()
        .map(|id| (format!("{PROGRESS_PREFIX}{id}"), done.to_string().into()))
        .collect();
    annotate(client, state, annotations).await
}

/// Removes the revision and progress annotations once the sync is recorded.
pub async fn clear(
    client: &kube::Client,
    state: &StateRef,
    ids: &[String],
) -> Result<(), kube::Error> {
    let annotations: serde_json::Map<String, Value> = ids
        .iter()
        .flat_map(|id| {
            [
                (format!("{REVISION_PREFIX}{id}"), Value::Null),
                (format!("{PROGRESS_PREFIX}{id}"), Value::Null),
            ]
        })
        .collect();
    annotate(client, state, annotations).await
}

/// The state ConfigMap, now and at each change: a read, then a watch from
/// its resource version (read again when a watch ends), so waiting costs
/// no list request. Ends when the receiver is dropped.
pub fn follow(client: &kube::Client, state: &StateRef) -> tokio::sync::mpsc::Receiver<ConfigMap> {
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let api = api(client, state);
    let name = state.name();
    tokio::spawn(async move {
        loop {
            let Ok(Some(map)) = api.get_opt(&name).await else {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            };
            let version = map.metadata.resource_version.clone().unwrap_or_default();
            if tx.send(map).await.is_err() {
                return;
            }
            let params = kube::api::WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290);
            let Ok(events) = api.watch(&params, &version).await else {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            };
            let mut events = events.boxed();
            while let Some(Ok(event)) = events.next().await {
                if let kube::api::WatchEvent::Added(map) | kube::api::WatchEvent::Modified(map) =
                    event
                    && tx.send(map).await.is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}
