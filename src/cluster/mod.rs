//! Cluster: the Kubernetes API edge. A kubeconfig in; a client, a discovery
//! cache (kind → resource and scope) and server-side apply out.

pub mod apply;
pub mod fence;
pub mod live;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;

use crate::model::ObjectRef;
use fence::NotLeader;

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
    #[error("kind {kind} ({api_version}) is not served by the cluster: {advice}")]
    UnknownKind {
        api_version: String,
        kind: String,
        advice: &'static str,
    },
    #[error(
        "cannot discover kind {kind} ({api_version}): {reason}; if an aggregated API serves it, it may be down"
    )]
    Discovery {
        api_version: String,
        kind: String,
        reason: String,
    },
}

/// What to do about a kind the cluster does not serve.
fn unserved_advice(id: &ObjectRef) -> &'static str {
    if id.group == "helm.fluxcd.io" && id.kind == "HelmRelease" {
        "install its CustomResourceDefinition from tidegate's deploy/crds/ \
         (kubectl apply -f deploy/crds/helmreleases.helm.fluxcd.io.yaml)"
    } else {
        "install its CustomResourceDefinition, or check the apiVersion"
    }
}

/// How to reach the cluster, as kubectl takes it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// The daemon's namespace; default the context's (or the pod's) namespace.
    pub namespace: Option<String>,
}

impl Connection {
    pub async fn client(&self) -> Result<Client, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let mut config = match (&self.kubeconfig, &self.context) {
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
        // kube retries 429/503/504 for up to 15 tries with delays growing to
        // minutes: a sync would hang on an aggregated API that is down. A
        // sync reports the failure and the next sync retries instead.
        config.default_retry = false;
        if config.proxy_url.is_some() {
            return Client::try_from(config).map_err(Error::Client);
        }
        nodelay_client(config).map_err(Error::Client)
    }

    /// A client, and where the daemon of `sync_set` keeps its state.
    pub async fn state(&self, sync_set: String) -> Result<(Client, state::StateRef), Error> {
        let client = self.client().await?;
        let state = state::StateRef {
            namespace: self.namespace(&client),
            sync_set,
        };
        Ok((client, state))
    }

    pub fn namespace(&self, client: &Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string())
    }
}

/// kube's client stack (TLS, timeouts, base URI, auth, impersonation
/// headers) on sockets with TCP_NODELAY. kube leaves Nagle's algorithm on,
/// so a request larger than one TLS record (16 KiB: a large object, the
/// sync's own record) waits for the API server's delayed ACK, 40 ms each.
/// Through a proxy, kube's own stack is used as it is.
fn nodelay_client(config: kube::Config) -> Result<Client, kube::Error> {
    use kube::client::ConfigExt;
    use tower::ServiceExt as _;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.openssl_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .service(http_client.map_err(tower::BoxError::from));
    Ok(Client::new(service, config.default_namespace))
}

/// The object of `resource` with this namespace and name.
pub fn object_id(resource: &ApiResource, namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        group: resource.group.clone(),
        version: resource.version.clone(),
        kind: resource.kind.clone(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    }
}

/// A resolved kind: the resource to call and whether it is namespaced.
/// Every planned object holds one: the resource is shared, not copied.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub resource: std::sync::Arc<ApiResource>,
    namespaced: bool,
}

impl Resolved {
    pub fn namespaced(&self) -> bool {
        self.namespaced
    }
}

/// The client plus a discovery cache, shared by every stage of a sync.
pub struct Cluster {
    pub client: Client,
    kinds: Mutex<HashMap<GroupVersionKind, Resolved>>,
    /// Held while a kind is discovered, so that many callers asking for the
    /// same new kind at once send one discovery request, not one each.
    discovering: tokio::sync::Mutex<()>,
    writes: AtomicUsize,
    /// The last sync Event: name, reason, message and count, so a repeated
    /// warning is counted on it instead of repeated.
    last_event: Mutex<Option<(String, String, String, i32)>>,
    /// The generation of inventory shards last read or written, if any.
    shard_generation: Mutex<Option<String>>,
    /// The inventory was asked to be rebuilt: the next record of shards
    /// also clears the inline request.
    rebuilding: std::sync::atomic::AtomicBool,
    /// With leader election: writes only while this daemon holds the Lease.
    fence: Option<std::sync::Arc<fence::Fence>>,
    /// In a running daemon: the live state from watches.
    live: Option<std::sync::Arc<live::Live>>,
}

impl Cluster {
    pub fn new(client: Client) -> Self {
        Cluster {
            client,
            kinds: Mutex::new(HashMap::new()),
            discovering: tokio::sync::Mutex::new(()),
            writes: AtomicUsize::new(0),
            last_event: Mutex::new(None),
            shard_generation: Mutex::new(None),
            rebuilding: Default::default(),
            fence: None,
            live: None,
        }
    }

    /// Writes from now on only while `fence` holds.
    pub fn with_fence(mut self, fence: std::sync::Arc<fence::Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Syncs compare with the live state `live` keeps from watches, for the
    /// resources it has listed, instead of listing them.
    pub fn with_live(mut self, live: std::sync::Arc<live::Live>) -> Self {
        self.live = Some(live);
        self
    }

    /// A handle for work that outlives a sync (a helm operation left to run):
    /// the same client, Lease fence and watches, a discovery cache and write
    /// count of its own.
    pub fn detached(&self) -> Cluster {
        let mut cluster = Cluster::new(self.client.clone());
        cluster.fence = self.fence.clone();
        cluster.live = self.live.clone();
        cluster
    }

    pub fn live(&self) -> Option<&std::sync::Arc<live::Live>> {
        self.live.as_ref()
    }

    /// An error instead of a write when this daemon no longer surely holds
    /// the Lease: another may be the leader now.
    pub fn fenced(&self) -> Result<(), NotLeader> {
        match &self.fence {
            Some(fence) if !fence.holds() => Err(NotLeader),
            _ => Ok(()),
        }
    }

    /// Write requests (apply, delete, create) sent so far.
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }

    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Every object of one resource that carries the labels of `sync_set`,
    /// in all namespaces (or, if RBAC allows less, in the given ones), as
    /// JSON with `apiVersion` and `kind` set and `managedFields` and
    /// `status` dropped: the plan compares what tidegate sets, and large
    /// lists stay small.
    pub async fn list_managed(
        &self,
        resolved: &Resolved,
        namespaces: &[String],
        sync_set: &str,
    ) -> Result<Vec<Value>, kube::Error> {
        let selector = crate::model::marks::selector(sync_set);
        match self.list_json(&resolved.resource, None, &selector).await {
            Err(kube::Error::Api(status)) if status.code == 403 && resolved.namespaced() => {
                let mut items = Vec::new();
                for ns in namespaces {
                    let part = self.list_json(&resolved.resource, Some(ns), &selector);
                    items.extend(part.await?);
                }
                Ok(items)
            }
            other => other,
        }
    }

    /// Every object of one resource, in all namespaces, that matches a
    /// label selector, as [`Self::list_json`] returns them; served from the
    /// API server's cache, so possibly a moment old.
    pub async fn list_labelled(
        &self,
        resolved: &Resolved,
        selector: &str,
    ) -> Result<Vec<Value>, kube::Error> {
        let params = ListParams::default().labels(selector).match_any();
        let path = <DynamicObject as kube::Resource>::url_path(&resolved.resource, None);
        let request = kube::core::Request::new(&path)
            .list(&params)
            .map_err(kube::Error::BuildRequest)?;
        let list: Value = self.client.request(request).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Lists one resource in pages as JSON values with `apiVersion` and
    /// `kind` set and `managedFields` and `status` dropped (but for
    /// HelmReleases, whose status tidegate writes).
    async fn list_json(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<Vec<Value>, kube::Error> {
        const PAGE: u32 = 500;
        let path = <DynamicObject as kube::Resource>::url_path(resource, namespace);
        let mut items = Vec::new();
        let mut continue_token: Option<String> = None;
        loop {
            let mut params = ListParams::default().labels(selector).limit(PAGE);
            params.continue_token = continue_token.take();
            let request = kube::core::Request::new(&path)
                .list(&params)
                .map_err(kube::Error::BuildRequest)?;
            let mut page: Value = self.client.request(request).await?;
            for mut item in page["items"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default()
            {
                if let Some(object) = item.as_object_mut() {
                    // A HelmRelease's status is tidegate's own record of it.
                    if !crate::model::marks::is_helm_release_kind(&resource.group, &resource.kind) {
                        object.remove("status");
                    }
                    object.insert("apiVersion".into(), resource.api_version.clone().into());
                    object.insert("kind".into(), resource.kind.clone().into());
                    if let Some(Value::Object(meta)) = object.get_mut("metadata") {
                        meta.remove("managedFields");
                    }
                }
                items.push(item);
            }
            match page["metadata"]["continue"].as_str() {
                Some(token) if !token.is_empty() => continue_token = Some(token.to_string()),
                _ => return Ok(items),
            }
        }
    }

    /// What keeps a Namespace or CustomResourceDefinition from being pruned:
    /// the objects in the namespace (or of the CRD's kind) that this sync set
    /// does not manage, as `Kind namespace/name`. Any other kind holds
    /// nothing. A resource that cannot be listed is an error, so the object
    /// is kept rather than pruned blind.
    pub async fn holders(
        &self,
        id: &ObjectRef,
        sync_set: &str,
        owner: &str,
    ) -> Result<Vec<String>, kube::Error> {
        let live = match (id.group.as_str(), id.kind.as_str()) {
            ("", "Namespace") => self.namespace_contents(&id.name).await?,
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                self.custom_resources(&id.name).await?
            }
            _ => return Ok(Vec::new()),
        };
        Ok(crate::plan::holders(&live, sync_set, owner)
            .into_iter()
            .map(|o| {
                let meta = &o["metadata"];
                let ns = meta["namespace"]
                    .as_str()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default();
                format!(
                    "{} {ns}{}",
                    o["kind"].as_str().unwrap_or_default(),
                    meta["name"].as_str().unwrap_or_default()
                )
            })
            .collect())
    }

    /// Every object in one namespace, across every namespaced resource that
    /// can be listed (each group at its preferred version).
    async fn namespace_contents(&self, namespace: &str) -> Result<Vec<Value>, kube::Error> {
        let mut versions: Vec<String> = self
            .client
            .list_core_api_versions()
            .await?
            .versions
            .into_iter()
            .take(1)
            .collect();
        for group in self.client.list_api_groups().await?.groups {
            if let Some(v) = group
                .preferred_version
                .or_else(|| group.versions.into_iter().next())
            {
                versions.push(v.group_version);
            }
        }
        let mut live = Vec::new();
        for gv in versions {
            let list = if gv.contains('/') {
                self.client.list_api_group_resources(&gv).await?
            } else {
                self.client.list_core_api_resources(&gv).await?
            };
            for r in list.resources {
                let listable = r.verbs.iter().any(|v| v == "list");
                if !r.namespaced || !listable || r.name.contains('/') {
                    continue;
                }
                if matches!(r.kind.as_str(), "Event" | "Binding") {
                    continue;
                }
                let Ok(group_version) = gv.parse::<kube::core::GroupVersion>() else {
                    continue;
                };
                let resource =
                    ApiResource::from_gvk_with_plural(&group_version.with_kind(&r.kind), &r.name);
                live.extend(self.list_json(&resource, Some(namespace), "").await?);
            }
        }
        Ok(live)
    }

    /// Every custom resource of one CRD, in all namespaces, at its storage version.
    async fn custom_resources(&self, crd: &str) -> Result<Vec<Value>, kube::Error> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let Some(live) = Api::<CustomResourceDefinition>::all(self.client.clone())
            .get_opt(crd)
            .await?
        else {
            return Ok(Vec::new());
        };
        let live = serde_json::to_value(&live).expect("objects serialize");
        let spec = &live["spec"];
        let version = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["storage"] == true)
            .and_then(|v| v["name"].as_str())
            .unwrap_or_default();
        let gvk = GroupVersionKind::gvk(
            spec["group"].as_str().unwrap_or_default(),
            version,
            spec["names"]["kind"].as_str().unwrap_or_default(),
        );
        let resource = ApiResource::from_gvk_with_plural(
            &gvk,
            spec["names"]["plural"].as_str().unwrap_or_default(),
        );
        self.list_json(&resource, None, "").await
    }

    pub async fn get(
        &self,
        resolved: &Resolved,
        id: &ObjectRef,
    ) -> Result<Option<DynamicObject>, kube::Error> {
        self.api(resolved, id.namespace.as_deref())
            .get_opt(&id.name)
            .await
    }

    /// Every object in the cluster marked for this sync set and instance,
    /// found by its label in every listable resource (within the allowed
    /// namespaces, when there is a list): what the inventory is rebuilt
    /// from. A resource that cannot be listed is an error, so a rebuild
    /// never believes in less than there is.
    pub async fn marked(
        &self,
        sync_set: &str,
        owner: &str,
        allow_namespaces: &[String],
    ) -> Result<crate::model::Inventory, kube::Error> {
        let discovery = kube::discovery::Discovery::new(self.client.clone())
            .run()
            .await?;
        let selector = crate::model::marks::selector(sync_set);
        let mut found = crate::model::Inventory::new();
        for group in discovery.groups() {
            // The preferred version only: the same objects are served under each.
            for (resource, capabilities) in group.recommended_resources() {
                if !capabilities.supports_operation(kube::discovery::verbs::LIST) {
                    continue;
                }
                let namespaced = capabilities.scope == Scope::Namespaced;
                let apis: Vec<Api<DynamicObject>> = match (namespaced, allow_namespaces.is_empty())
                {
                    (_, true) => vec![Api::all_with(self.client.clone(), &resource)],
                    (true, false) => allow_namespaces
                        .iter()
                        .map(|ns| Api::namespaced_with(self.client.clone(), ns, &resource))
                        .collect(),
                    (false, false) => continue,
                };
                for api in apis {
                    let list = match api.list(&ListParams::default().labels(&selector)).await {
                        Ok(list) => list,
                        // What this instance may not list it cannot have
                        // applied: fewer candidates, never more.
                        Err(kube::Error::Api(e)) if e.code == 403 => continue,
                        Err(e) => return Err(e),
                    };
                    for object in list.items {
                        let value = serde_json::to_value(&object).expect("objects serialize");
                        // Only what this instance recorded itself: an object
                        // without an owner may be another instance's.
                        if !crate::model::marks::is_marked_for(&value, sync_set, owner)
                            || crate::model::marks::live_owner(&value) != Some(owner)
                        {
                            continue;
                        }
                        let name = object.metadata.name.clone().unwrap_or_default();
                        found.insert(ObjectRef::new(
                            &resource.api_version,
                            &resource.kind,
                            object.metadata.namespace.as_deref().filter(|_| namespaced),
                            &name,
                        ));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Resolves a kind through discovery, once per kind.
    pub async fn resolve(&self, id: &ObjectRef) -> Result<Resolved, Error> {
        let gvk = GroupVersionKind::gvk(&id.group, &id.version, &id.kind);
        if let Some(found) = self.kinds.lock().expect("discovery cache").get(&gvk) {
            return Ok(found.clone());
        }
        let _discovering = self.discovering.lock().await;
        if let Some(found) = self.kinds.lock().expect("discovery cache").get(&gvk) {
            return Ok(found.clone());
        }
        let (resource, capabilities) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| {
                let (api_version, kind) = (id.api_version(), id.kind.clone());
                // 404 for the group version, or a served version without the kind.
                let unserved = matches!(&e, kube::Error::Discovery(_))
                    || matches!(&e, kube::Error::Api(status) if status.code == 404);
                if unserved {
                    return Error::UnknownKind {
                        api_version,
                        kind,
                        advice: unserved_advice(id),
                    };
                }
                let reason = match e {
                    kube::Error::Api(status) => {
                        format!("the API server answered {} {}", status.code, status.message)
                    }
                    other => crate::model::error_chain(&other),
                };
                Error::Discovery {
                    api_version,
                    kind,
                    reason,
                }
            })?;
        let resolved = Resolved {
            resource: std::sync::Arc::new(resource),
            namespaced: capabilities.scope == Scope::Namespaced,
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
                Api::namespaced_with(self.client.clone(), ns, &*resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &*resolved.resource),
        }
    }
}
