//! Server-side apply of one desired object: a manifest in, what the API server
//! did with it out.

use std::fmt;
use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::{Cluster, FIELD_MANAGER, Resolved};
use crate::object::ObjectRef;
use crate::render::{Manifest, Origin};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const SYNC_SET_ANNOTATION: &str = "tidegate.dev/sync-set";
pub const CHECKSUM_ANNOTATION: &str = "tidegate.dev/checksum";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: {object}")]
    Resolve {
        origin: Origin,
        object: ObjectRef,
        #[source]
        source: super::Error,
    },
    #[error("{origin}: {object}: the API server refused it")]
    Apply {
        origin: Origin,
        object: ObjectRef,
        #[source]
        source: kube::Error,
    },
    #[error("{object}")]
    Discovery {
        object: ObjectRef,
        #[source]
        source: super::Error,
    },
    #[error("{object}: the CustomResourceDefinition did not become Established within {seconds}s")]
    NotEstablished { object: ObjectRef, seconds: u64 },
}

/// What tidegate stamps on every object it applies.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub sync_set: String,
}

/// Fills in the namespace the object will live in: the default for namespaced
/// kinds that name none; none at all for cluster-scoped kinds.
pub fn place(id: &ObjectRef, resolved: &Resolved, default_namespace: &str) -> ObjectRef {
    let mut placed = id.clone();
    placed.namespace = if resolved.namespaced() {
        Some(
            id.namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_string()),
        )
    } else {
        None
    };
    placed
}

/// The object as it is sent: namespace placed, ownership marks added.
fn desired_object(
    m: &Manifest,
    placed: &ObjectRef,
    ownership: &Ownership,
    checksum: &str,
) -> Value {
    let mut object = m.object.clone();
    let metadata = object
        .as_object_mut()
        .expect("manifests are objects")
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(meta) = metadata {
        match &placed.namespace {
            Some(ns) => meta.insert("namespace".into(), Value::String(ns.clone())),
            None => meta.remove("namespace"),
        };
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(labels) = labels {
            labels.insert(MANAGED_BY_LABEL.into(), "tidegate".into());
        }
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(annotations) = annotations {
            annotations.insert(
                SYNC_SET_ANNOTATION.into(),
                ownership.sync_set.clone().into(),
            );
            annotations.insert(CHECKSUM_ANNOTATION.into(), checksum.into());
        }
    }
    object
}

/// Applies one manifest with server-side apply and tells what changed, by
/// comparing the resourceVersion before and after.
pub async fn apply(
    cluster: &Cluster,
    m: &Manifest,
    default_namespace: &str,
    ownership: &Ownership,
) -> Result<(ObjectRef, Action), Error> {
    let resolved = cluster
        .resolve(&m.id)
        .await
        .map_err(|source| Error::Resolve {
            origin: m.origin(),
            object: m.id.clone(),
            source,
        })?;
    let placed = place(&m.id, &resolved, default_namespace);
    let api = cluster.api(&resolved, placed.namespace.as_deref());
    let checksum = crate::render::checksum(&m.object);
    let object = desired_object(m, &placed, ownership, &checksum);
    let apply_err = |source| Error::Apply {
        origin: m.origin(),
        object: placed.clone(),
        source,
    };
    let before = api
        .get_opt(&placed.name)
        .await
        .map_err(apply_err)?
        .and_then(|o| o.metadata.resource_version);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after: DynamicObject = api
        .patch(&placed.name, &params, &Patch::Apply(&object))
        .await
        .map_err(apply_err)?;
    let action = match before {
        None => Action::Created,
        Some(rv) if Some(&rv) == after.metadata.resource_version.as_ref() => Action::Unchanged,
        Some(_) => Action::Configured,
    };
    Ok((placed, action))
}

/// Waits until a CustomResourceDefinition is Established, so custom resources
/// of it can be applied in the same sync.
pub async fn wait_established(
    cluster: &Cluster,
    id: &ObjectRef,
    timeout: Duration,
) -> Result<(), Error> {
    let resolved = cluster
        .resolve(id)
        .await
        .map_err(|source| Error::Discovery {
            object: id.clone(),
            source,
        })?;
    let api = cluster.api(&resolved, None);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(crd) = api.get(&id.name).await {
            let established = crd.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotEstablished {
                object: id.clone(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
