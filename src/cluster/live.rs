//! The live state of the objects tidegate manages, kept from watches: one
//! watch per resource (kube's runtime watcher: it lists once, then follows,
//! and resumes with a fresh list after a 410 Gone or a broken connection).
//!
//! For each object it holds what a sync compares, not the object: whether
//! the fields Git sets hold live, whether it is marked ignore, its health,
//! and who changed it last. A change that makes a managed object differ
//! from Git (an edit, a delete, a scale by hand) is drift: it calls the
//! drift callback at once, so the daemon reverts it (self-heal), unless the
//! object is being fought over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use super::{FIELD_MANAGER, Resolved};
use crate::health::{self, Health, Status};
use crate::model::{Json, ObjectRef};

/// More reverts of one object than this within [`FIGHT_WINDOW`] is a fight
/// with another controller: self-heal pauses for that object.
pub const MAX_HEALS: usize = 3;
pub const FIGHT_WINDOW: Duration = Duration::from_secs(60);

type Key = (String, String, String);

fn key(resource: &ApiResource) -> Key {
    (
        resource.group.clone(),
        resource.version.clone(),
        resource.plural.clone(),
    )
}

/// What the cache holds of one live object.
#[derive(Debug, Clone)]
pub struct Entry {
    pub resource_version: String,
    /// Whether every field Git sets holds live; `None` when Git changed
    /// since the object was last seen.
    pub in_sync: Option<bool>,
    pub ignored: bool,
    pub health: Health,
    /// The field manager of the latest change tidegate did not make.
    pub changed_by: Option<String>,
    /// HelmReleases are kept whole: their status is tidegate's record.
    pub whole: Option<Value>,
    /// The instance that marked it (`tidegate.dev/owner`).
    pub owner: Option<String>,
}

impl Entry {
    /// What a sync needs of the live object: its resource version (or all
    /// of it, for a HelmRelease).
    pub fn as_live(&self) -> crate::plan::Seen {
        match &self.whole {
            Some(whole) => crate::plan::Seen::Object(whole.clone()),
            None => crate::plan::Seen::Version(self.resource_version.clone()),
        }
    }
}

struct Expected {
    key: Key,
    checksum: Option<String>,
    /// Git's object (shared with the desired set), parsed when an event
    /// for it comes.
    object: Option<Json>,
}

/// The watches of one resource: one over all namespaces, or one per
/// allowed namespace (a part each).
#[derive(Default)]
struct Watched {
    synced: bool,
    /// A watch failed before its first list (RBAC, say): syncs read.
    failing: bool,
    objects: HashMap<ObjectRef, Entry>,
    /// How many watches make it up, and those that have listed.
    parts: usize,
    listed: std::collections::HashSet<Part>,
    /// Filled while a part's watch (re)lists; replaces that part of
    /// `objects` when done.
    listing: HashMap<Part, HashMap<ObjectRef, Entry>>,
}

/// The namespace one watch of a resource covers; `None` for all.
type Part = Option<String>;

fn in_part(id: &ObjectRef, part: &Part) -> bool {
    part.is_none() || id.namespace == *part
}

/// A fight: an object reverted too often, and who keeps changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub object: ObjectRef,
    pub manager: String,
    pub reverts: usize,
}

#[derive(Default)]
struct State {
    resources: HashMap<Key, Watched>,
    expected: HashMap<ObjectRef, Expected>,
    heals: HashMap<ObjectRef, VecDeque<Instant>>,
    conflicts: BTreeMap<ObjectRef, Conflict>,
}

fn object_ref(resource: &ApiResource, object: &Value) -> ObjectRef {
    let meta = &object["metadata"];
    super::object_id(
        resource,
        meta["namespace"].as_str(),
        meta["name"].as_str().unwrap_or_default(),
    )
}

fn entry(state: &State, resource: &ApiResource, id: &ObjectRef, object: &Value) -> Entry {
    let expected: Option<Value> = state
        .expected
        .get(id)
        .and_then(|e| e.object.as_ref())
        .map(Json::value);
    let whole =
        crate::model::marks::is_helm_release_kind(&resource.group, &resource.kind).then(|| {
            let mut whole = object.clone();
            if let Some(meta) = whole["metadata"].as_object_mut() {
                meta.remove("managedFields");
            }
            whole
        });
    Entry {
        resource_version: object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        in_sync: expected.map(|e| crate::plan::is_unchanged(id, &e, object)),
        ignored: crate::model::marks::is_ignored(object),
        health: health::of(&resource.group, &resource.kind, object),
        changed_by: other_manager(object),
        whole,
        owner: crate::model::marks::live_owner(object).map(str::to_string),
    }
}

impl State {
    /// The watch cache's transition on one event of one watch (`part` of
    /// `resource`'s): returns the objects Git has that it shows drifted.
    fn on_event(
        &mut self,
        resource: &ApiResource,
        part: &Part,
        event: Event<DynamicObject>,
    ) -> Vec<ObjectRef> {
        let k = key(resource);
        match event {
            Event::Init => {
                if let Some(w) = self.resources.get_mut(&k) {
                    w.listing.insert(part.clone(), HashMap::new());
                }
                Vec::new()
            }
            Event::InitApply(object) => {
                let value = serde_json::to_value(&object).expect("objects serialize");
                let id = object_ref(resource, &value);
                let entry = entry(self, resource, &id, &value);
                if let Some(listing) = self
                    .resources
                    .get_mut(&k)
                    .and_then(|w| w.listing.get_mut(part))
                {
                    listing.insert(id, entry);
                }
                Vec::new()
            }
            Event::InitDone => self.listed(&k, part),
            Event::Apply(object) => self.applied(resource, object),
            Event::Delete(object) => {
                let value = serde_json::to_value(&object).expect("objects serialize");
                let id = object_ref(resource, &value);
                let gone = self
                    .resources
                    .get_mut(&k)
                    .and_then(|w| w.objects.remove(&id))
                    .is_some_and(|was| !was.ignored);
                match gone && self.is_expected(&id) {
                    true => vec![id],
                    false => Vec::new(),
                }
            }
        }
    }

    /// Whether a sync applied `id` (it is Git's and was there).
    fn is_expected(&self, id: &ObjectRef) -> bool {
        self.expected.get(id).is_some_and(|e| e.object.is_some())
    }

    /// A part's (re)list is done: it replaces that part of the objects.
    /// What changed while nobody watched is drift too.
    fn listed(&mut self, k: &Key, part: &Part) -> Vec<ObjectRef> {
        let Some(w) = self.resources.get_mut(k) else {
            return Vec::new();
        };
        let listed = w.listing.remove(part).unwrap_or_default();
        let relisted = w.listed.contains(part);
        let mut drifted = Vec::new();
        for (id, expected) in &self.expected {
            if expected.key != *k || expected.object.is_none() || !in_part(id, part) {
                continue;
            }
            let was = w.objects.get(id);
            match listed.get(id) {
                None if relisted && was.is_some() => drifted.push(id.clone()),
                Some(now)
                    if now.in_sync == Some(false)
                        && !now.ignored
                        && was.is_none_or(|was| was.resource_version != now.resource_version) =>
                {
                    drifted.push(id.clone())
                }
                _ => {}
            }
        }
        w.objects.retain(|id, _| !in_part(id, part));
        w.objects.extend(listed);
        w.listed.insert(part.clone());
        w.synced = w.listed.len() == w.parts;
        w.failing = false;
        drifted
    }

    /// An object changed (or appeared). Drift is the change that makes it
    /// differ from Git, not every status update after it.
    fn applied(&mut self, resource: &ApiResource, object: DynamicObject) -> Vec<ObjectRef> {
        let k = key(resource);
        let id = super::object_id(
            resource,
            object.metadata.namespace.as_deref(),
            object.metadata.name.as_deref().unwrap_or_default(),
        );
        let version = object
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default();
        // Known already (an apply's own answer), or older.
        if self
            .resources
            .get(&k)
            .and_then(|w| w.objects.get(&id))
            .is_some_and(|was| {
                was.resource_version == version || older(version, &was.resource_version)
            })
        {
            return Vec::new();
        }
        let value = serde_json::to_value(&object).expect("objects serialize");
        let entry = entry(self, resource, &id, &value);
        let expected = self.is_expected(&id);
        let Some(w) = self.resources.get_mut(&k) else {
            return Vec::new();
        };
        let was_drifted = w
            .objects
            .get(&id)
            .is_some_and(|was| was.in_sync == Some(false));
        let drifted = expected && entry.in_sync == Some(false) && !entry.ignored && !was_drifted;
        w.objects.insert(id.clone(), entry);
        match drifted {
            true => vec![id],
            false => Vec::new(),
        }
    }
}

/// Called with each object that drifted.
pub type OnDrift = Box<dyn Fn(&ObjectRef) + Send + Sync>;

pub struct Live {
    client: kube::Client,
    /// The labels of the sync set's objects: what is watched.
    selector: String,
    /// With `--k8s-allow-namespace`: namespaced resources are watched in
    /// these namespaces only, one watch each (RBAC may allow no more).
    namespaces: Vec<String>,
    state: Mutex<State>,
    on_drift: Option<OnDrift>,
    /// Bumped on every change, for whoever waits for health.
    changes: tokio::sync::watch::Sender<u64>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }
}

/// Whether resource version `a` is older than `b` (both etcd revisions;
/// anything else is never called older).
fn older(a: &str, b: &str) -> bool {
    matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if a < b)
}

/// The manager of the newest managed-fields entry that is not tidegate's.
fn other_manager(object: &Value) -> Option<String> {
    object["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .filter(|f| f["manager"].as_str().is_some_and(|m| m != FIELD_MANAGER))
        .filter(|f| f["subresource"].as_str().is_none_or(str::is_empty))
        .max_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()))
        .and_then(|f| f["manager"].as_str().map(str::to_string))
}

impl Live {
    /// A cache whose drift (if `on_drift` is given) calls `on_drift`.
    pub fn new(
        client: kube::Client,
        sync_set: &str,
        namespaces: Vec<String>,
        on_drift: Option<OnDrift>,
    ) -> Arc<Self> {
        Arc::new(Live {
            client,
            selector: crate::model::marks::selector(sync_set),
            namespaces,
            state: Mutex::default(),
            on_drift,
            changes: tokio::sync::watch::channel(0).0,
            tasks: Mutex::default(),
        })
    }

    /// Changes of the cache, to wait on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Starts watching a resource's managed objects, unless already watched.
    pub fn watch(self: &Arc<Self>, resolved: &Resolved) {
        let resource = resolved.resource.clone();
        let parts: Vec<Part> = if resolved.namespaced() && !self.namespaces.is_empty() {
            self.namespaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        {
            let mut state = self.state.lock().expect("live state");
            if state.resources.contains_key(&key(&resource)) {
                return;
            }
            state.resources.insert(
                key(&resource),
                Watched {
                    parts: parts.len(),
                    ..Watched::default()
                },
            );
        }
        for part in parts {
            self.watch_part(&resource, part);
        }
    }

    fn watch_part(self: &Arc<Self>, resource: &ApiResource, part: Part) {
        let resource = resource.clone();
        let api: kube::Api<DynamicObject> = match &part {
            Some(ns) => kube::Api::namespaced_with(self.client.clone(), ns, &resource),
            None => kube::Api::all_with(self.client.clone(), &resource),
        };
        // Small pages: a resource's first list never holds much at once.
        let config = watcher::Config::default()
            .labels(&self.selector)
            .page_size(100);
        let live = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Some(live) = live.upgrade() else { return };
                match event {
                    Ok(event) => live.on_event(&resource, &part, event),
                    // The watcher resumes by itself, with backoff, from
                    // where it was (or with a fresh list after 410 Gone).
                    Err(e) => {
                        tracing::debug!(resource = %resource.plural, "watch interrupted: {e}");
                        if let Some(w) = live
                            .state
                            .lock()
                            .expect("live state")
                            .resources
                            .get_mut(&key(&resource))
                        {
                            w.failing = !w.listed.contains(&part);
                        }
                        live.changes.send_modify(|n| *n += 1);
                    }
                }
            }
        });
        self.tasks.lock().expect("tasks").push(task.abort_handle());
    }

    fn on_event(&self, resource: &ApiResource, part: &Part, event: Event<DynamicObject>) {
        let drifted = {
            let mut state = self.state.lock().expect("live state");
            let mut drifted = state.on_event(resource, part, event);
            drifted.retain(|id| Self::may_heal(&mut state, id));
            drifted
        };
        self.changes.send_modify(|n| *n += 1);
        if let Some(on_drift) = &self.on_drift {
            for id in &drifted {
                tracing::info!(object = %id, "changed in the cluster: reverting it to Git");
                on_drift(id);
            }
        }
    }

    /// Counts a revert; false (and a conflict) once the object is fought over.
    fn may_heal(state: &mut State, id: &ObjectRef) -> bool {
        let now = Instant::now();
        let heals = state.heals.entry(id.clone()).or_default();
        while heals
            .front()
            .is_some_and(|t| now.duration_since(*t) > FIGHT_WINDOW)
        {
            heals.pop_front();
        }
        if heals.len() >= MAX_HEALS {
            let manager = state
                .resources
                .values()
                .find_map(|w| w.objects.get(id))
                .and_then(|e| e.changed_by.clone())
                .unwrap_or_else(|| "an unknown field manager".into());
            let fresh = !state.conflicts.contains_key(id);
            state.conflicts.insert(
                id.clone(),
                Conflict {
                    object: id.clone(),
                    manager: manager.clone(),
                    reverts: heals.len(),
                },
            );
            if fresh {
                tracing::warn!(
                    object = %id,
                    manager = %manager,
                    "{} keeps changing it: reverted {} times within {}s; self-heal paused for it, the periodic sync still reverts it",
                    manager,
                    heals.len(),
                    FIGHT_WINDOW.as_secs()
                );
            }
            return false;
        }
        state.conflicts.remove(id);
        heals.push_back(now);
        true
    }

    /// The objects being fought over, and by whom.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.state
            .lock()
            .expect("live state")
            .conflicts
            .values()
            .cloned()
            .collect()
    }

    /// The live entries of `ids` (of one resource), or `None` while the
    /// resource is not watched or its watch has not listed yet.
    pub fn lookup(&self, resolved: &Resolved, ids: &[&ObjectRef]) -> Option<Vec<Option<Entry>>> {
        let state = self.state.lock().expect("live state");
        let w = state
            .resources
            .get(&key(&resolved.resource))
            .filter(|w| w.synced)?;
        Some(ids.iter().map(|id| w.objects.get(*id).cloned()).collect())
    }

    /// Whether Git's `checksum` for `id` is the one the cache compares with.
    pub fn expects(&self, id: &ObjectRef, checksum: &str) -> bool {
        self.state
            .lock()
            .expect("live state")
            .expected
            .get(id)
            .is_some_and(|e| e.checksum.as_deref() == Some(checksum))
    }

    /// Whether a sync applied `id` (it is Git's and was there).
    pub fn is_expected(&self, id: &ObjectRef) -> bool {
        self.state.lock().expect("live state").is_expected(id)
    }

    /// Git's objects, as a sync is about to apply them: the cache compares
    /// the live ones with these from now on.
    pub fn expect<'a>(
        &self,
        desired: impl IntoIterator<Item = (&'a Resolved, &'a ObjectRef, &'a str, &'a Json)>,
    ) {
        let mut state = self.state.lock().expect("live state");
        for (resolved, id, checksum, object) in desired {
            let k = key(&resolved.resource);
            let same = state
                .expected
                .get(id)
                .is_some_and(|e| e.checksum.as_deref() == Some(checksum));
            if !same {
                if let Some(entry) = state
                    .resources
                    .get_mut(&k)
                    .and_then(|w| w.objects.get_mut(id))
                {
                    entry.in_sync = None;
                }
                state.expected.insert(
                    id.clone(),
                    Expected {
                        key: k,
                        checksum: Some(checksum.to_string()),
                        object: Some(object.clone()),
                    },
                );
            }
        }
    }

    /// Follows the health of objects Git does not describe here (the CLI's
    /// view of an inventory).
    pub fn track(&self, resolved: &Resolved, id: &ObjectRef) {
        self.state
            .lock()
            .expect("live state")
            .expected
            .entry(id.clone())
            .or_insert(Expected {
                key: key(&resolved.resource),
                checksum: None,
                object: None,
            });
    }

    /// Stops expecting what is no longer managed.
    pub fn keep_only(&self, managed: &crate::model::Inventory) {
        let mut state = self.state.lock().expect("live state");
        state.expected.retain(|id, _| managed.contains(id));
        state.heals.retain(|id, _| managed.contains(id));
        state.conflicts.retain(|id, _| managed.contains(id));
    }

    /// What an apply returned: the object as it now is.
    pub fn applied(&self, resolved: &Resolved, object: &Value) {
        let mut guard = self.state.lock().expect("live state");
        let state = &mut *guard;
        let id = object_ref(&resolved.resource, object);
        let entry = entry(state, &resolved.resource, &id, object);
        if let Some(w) = state.resources.get_mut(&key(&resolved.resource))
            && !w
                .objects
                .get(&id)
                .is_some_and(|was| older(&entry.resource_version, &was.resource_version))
        {
            w.objects.insert(id, entry);
        }
    }

    /// The health of every tracked object; `None` for one the cache has not
    /// seen (not watched yet, or absent).
    pub fn health(&self) -> Vec<(ObjectRef, Option<Health>)> {
        let state = self.state.lock().expect("live state");
        let mut all: Vec<(ObjectRef, Option<Health>)> = state
            .expected
            .iter()
            .map(|(id, e)| {
                let entry = state
                    .resources
                    .get(&e.key)
                    .filter(|w| w.synced)
                    .and_then(|w| w.objects.get(id));
                (id.clone(), entry.map(|e| e.health.clone()))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Waits until the watch of `resolved` has listed (false after `timeout`).
    pub async fn listed(&self, resolved: &Resolved, timeout: Duration) -> bool {
        let mut changes = self.subscribe();
        let k = key(&resolved.resource);
        let state = || {
            self.state
                .lock()
                .expect("live state")
                .resources
                .get(&k)
                .map(|w| (w.synced, w.failing))
        };
        tokio::time::timeout(timeout, async {
            while !state().is_some_and(|(synced, _)| synced) {
                if state().is_some_and(|(_, failing)| failing) {
                    return false;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Whether every watched resource has listed.
    pub fn synced(&self) -> bool {
        let state = self.state.lock().expect("live state");
        state.resources.values().all(|w| w.synced)
    }
}

/// The objects that are not current, and why; one the watches have not seen
/// is in progress.
pub fn not_current(health: &[(ObjectRef, Option<Health>)]) -> Vec<(&ObjectRef, Health)> {
    health
        .iter()
        .filter(|(_, h)| !h.as_ref().is_some_and(Health::is_current))
        .map(|(id, h)| {
            let h = h.clone().unwrap_or(Health {
                status: Status::InProgress,
                message: "not seen in the cluster yet".into(),
            });
            (id, h)
        })
        .collect()
}

/// Objects per health, for the sync as a whole.
pub fn summary(health: &[(ObjectRef, Option<Health>)]) -> BTreeMap<Status, usize> {
    let mut counts = BTreeMap::new();
    for (_, h) in health {
        let status = h.as_ref().map_or(Status::InProgress, |h| h.status);
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_other_manager_is_the_newest_that_is_not_tidegate() {
        let object = json!({"metadata": {"managedFields": [
            {"manager": "tidegate", "operation": "Apply", "time": "2026-01-01T00:00:03Z"},
            {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-01T00:00:02Z"},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-01T00:00:04Z"},
            {"manager": "kubectl-scale", "operation": "Update", "time": "2026-01-01T00:00:01Z"},
        ]}});
        assert_eq!(other_manager(&object).as_deref(), Some("kubectl-edit"));
        assert_eq!(other_manager(&json!({"metadata": {}})), None);
    }

    fn mk_resource() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
    }

    fn mk_live(name: &str, version: &str, value: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": version},
            "data": {"key": value},
        }))
        .unwrap()
    }

    /// A cache watching ConfigMaps in one part, Git having `shop/a` with `key: git`.
    fn mk_state() -> (State, ApiResource, ObjectRef) {
        let resource = mk_resource();
        let id = ObjectRef::new("v1", "ConfigMap", Some("shop"), "a");
        let mut state = State::default();
        state.resources.insert(
            key(&resource),
            Watched {
                parts: 1,
                ..Watched::default()
            },
        );
        let git = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "shop"}, "data": {"key": "git"}});
        state.expected.insert(
            id.clone(),
            Expected {
                key: key(&resource),
                checksum: Some("c".into()),
                object: Some(Json::new(&git)),
            },
        );
        (state, resource, id)
    }

    #[test]
    fn a_list_then_changes_drift_once_and_a_delete_drifts() {
        let (mut state, resource, id) = mk_state();
        let all: Part = None;
        assert!(state.on_event(&resource, &all, Event::Init).is_empty());
        assert!(
            state
                .on_event(&resource, &all, Event::InitApply(mk_live("a", "1", "git")))
                .is_empty()
        );
        assert!(
            state
                .on_event(
                    &resource,
                    &all,
                    Event::InitApply(mk_live("other", "2", "x"))
                )
                .is_empty(),
            "Git does not have it"
        );
        assert!(state.on_event(&resource, &all, Event::InitDone).is_empty());
        let watched = &state.resources[&key(&resource)];
        assert!(watched.synced, "its one part has listed");
        assert_eq!(watched.objects[&id].in_sync, Some(true));

        let drifted = state.on_event(&resource, &all, Event::Apply(mk_live("a", "3", "edited")));
        assert_eq!(drifted, vec![id.clone()], "the change that makes it differ");
        let again = state.on_event(
            &resource,
            &all,
            Event::Apply(mk_live("a", "4", "edited again")),
        );
        assert!(
            again.is_empty(),
            "already drifted: not every update after it"
        );
        let stale = state.on_event(&resource, &all, Event::Apply(mk_live("a", "2", "old")));
        assert!(stale.is_empty(), "an older version is ignored");
        assert_eq!(
            state.resources[&key(&resource)].objects[&id].resource_version,
            "4"
        );

        assert!(
            state
                .on_event(&resource, &all, Event::Apply(mk_live("a", "5", "git")))
                .is_empty(),
            "back as Git has it"
        );
        let gone = state.on_event(&resource, &all, Event::Delete(mk_live("a", "6", "git")));
        assert_eq!(gone, vec![id.clone()]);
        let unknown = state.on_event(&resource, &all, Event::Delete(mk_live("other", "7", "x")));
        assert!(unknown.is_empty(), "Git does not have it");
    }

    #[test]
    fn a_relist_finds_what_changed_or_went_while_nobody_watched() {
        let (mut state, resource, id) = mk_state();
        let all: Part = None;
        for event in [
            Event::Init,
            Event::InitApply(mk_live("a", "1", "git")),
            Event::InitDone,
        ] {
            state.on_event(&resource, &all, event);
        }
        // The watch restarts: the object changed meanwhile.
        state.on_event(&resource, &all, Event::Init);
        state.on_event(
            &resource,
            &all,
            Event::InitApply(mk_live("a", "9", "edited")),
        );
        assert_eq!(
            state.on_event(&resource, &all, Event::InitDone),
            vec![id.clone()]
        );
        // Again: now it is gone.
        state.on_event(&resource, &all, Event::Init);
        assert_eq!(
            state.on_event(&resource, &all, Event::InitDone),
            vec![id.clone()]
        );
        assert!(!state.resources[&key(&resource)].objects.contains_key(&id));
    }

    #[test]
    fn resource_versions_compare_as_numbers() {
        assert!(older("99", "100"));
        assert!(!older("100", "100"));
        assert!(!older("abc", "100"));
    }
}
