//! Cluster: the Kubernetes API edge. A kubeconfig in; a client, a discovery
//! cache (kind → resource and scope) and server-side apply out.

pub mod apply;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};

use crate::object::ObjectRef;

pub const FIELD_MANAGER: &str = "tidegate";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error(
        "cannot find a Kubernetes cluster to talk to: set KUBECONFIG, pass --kubeconfig, or run in a pod"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot create a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(
        "the cluster does not serve {api_version} {kind}: is its CRD installed, or is the apiVersion right?"
    )]
    UnknownKind {
        api_version: String,
        kind: String,
        #[source]
        source: kube::Error,
    },
}

/// How to reach the cluster, as kubectl takes it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl Connection {
    pub async fn client(&self) -> Result<Client, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(Error::Kubeconfig)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(Error::Kubeconfig)?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(Error::Kubeconfig)?,
            (None, None) => kube::Config::infer().await.map_err(Error::Infer)?,
        };
        Client::try_from(config).map_err(Error::Client)
    }
}

/// A resolved kind: the resource to call and whether it is namespaced.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: ApiResource,
    pub capabilities: ApiCapabilities,
}

impl Resolved {
    pub fn namespaced(&self) -> bool {
        self.capabilities.scope == Scope::Namespaced
    }
}

/// The client plus a discovery cache, shared by every stage of a sync.
pub struct Cluster {
    pub client: Client,
    kinds: Mutex<HashMap<GroupVersionKind, Resolved>>,
}

impl Cluster {
    pub fn new(client: Client) -> Self {
        Cluster {
            client,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves a kind through discovery, once per kind.
    pub async fn resolve(&self, id: &ObjectRef) -> Result<Resolved, Error> {
        let gvk = GroupVersionKind::gvk(&id.group, &id.version, &id.kind);
        if let Some(found) = self.kinds.lock().expect("discovery cache").get(&gvk) {
            return Ok(found.clone());
        }
        let (resource, capabilities) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|source| Error::UnknownKind {
                api_version: id.api_version(),
                kind: id.kind.clone(),
                source,
            })?;
        let resolved = Resolved {
            resource,
            capabilities,
        };
        self.kinds
            .lock()
            .expect("discovery cache")
            .insert(gvk, resolved.clone());
        Ok(resolved)
    }

    /// Forgets discovered kinds, e.g. after CRDs were applied.
    pub fn forget_kinds(&self) {
        self.kinds.lock().expect("discovery cache").clear();
    }

    /// The dynamic API for one object, namespaced or cluster-wide per its scope.
    pub fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resolved.namespaced() => {
                Api::namespaced_with(self.client.clone(), ns, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }
}
