//! Sync state kept in the cluster, in the daemon's namespace: the inventory
//! and the last sync's status, in one ConfigMap per sync set, plus an Event
//! per sync.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde::Deserialize;

use super::Cluster;
use super::fence::WriteError;
use crate::model::inventory::{self, Inventory, split_shards};
use crate::model::marks::own_metadata;
use crate::model::record::{AutomationStatus, Outcome, SyncStatus};

const INVENTORY_KEY: &str = "inventory";
/// `<generation>/<count>` when the inventory is kept in shard ConfigMaps.
const SHARDS_KEY: &str = "inventory-shards";
/// The `inventory` value that asks the next sync to rebuild it.
pub const REBUILD: &str = "rebuild";
/// Label on shard ConfigMaps naming the state ConfigMap they belong to.
const SHARD_LABEL: &str = "tidegate.dev/inventory-of";
/// Inventory text kept in the state ConfigMap itself; larger inventories go
/// to shards of this size, so any repository fits the 1 MiB object limit.
pub const SHARD_BYTES: usize = 512 * 1024;

const STATUS_KEY: &str = "status";
/// What image automation did last.
const AUTOMATION_KEY: &str = "automation";
/// The instance's key for Secrets' checksums (base64), written once by a
/// field manager of its own so that the record never removes it.
const CHECKSUM_KEY: &str = "checksum-key";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the sync state {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot record the sync state {namespace}/{name}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: WriteError,
    },
    #[error("the sync state {namespace}/{name} asks for its inventory to be rebuilt")]
    Rebuild { namespace: String, name: String },
    #[error("the sync state {namespace}/{name} holds an unreadable {key}")]
    Corrupt {
        namespace: String,
        name: String,
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Where the state of one sync set lives.
#[derive(Debug, Clone)]
pub struct StateRef {
    pub namespace: String,
    pub sync_set: String,
}

impl StateRef {
    /// This instance, as its objects record it (`tidegate.dev/owner`).
    pub fn owner(&self) -> String {
        crate::model::marks::owner(&self.namespace, &self.sync_set)
    }

    pub fn name(&self) -> String {
        format!("{}-state", self.sync_set)
    }
}

pub fn now() -> String {
    Timestamp::now().to_string()
}

fn shard_name(state: &StateRef, generation: &str, index: usize) -> String {
    format!("{}-inv-{generation}-{index}", state.name())
}

impl Cluster {
    async fn state_map(&self, state: &StateRef) -> Result<Option<ConfigMap>, Error> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace)
            .get_opt(&state.name())
            .await
            .map_err(|source| Error::Read {
                namespace: state.namespace.clone(),
                name: state.name(),
                source,
            })
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        state: &StateRef,
        map: &ConfigMap,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, serde_json::Error>,
    ) -> Result<Option<T>, Error> {
        let Some(text) = map.data.as_ref().and_then(|d| d.get(key)) else {
            return Ok(None);
        };
        parse(text).map(Some).map_err(|source| Error::Corrupt {
            namespace: state.namespace.clone(),
            name: state.name(),
            key,
            source,
        })
    }

    /// The inventory of the last sync; empty if there was none.
    pub async fn read_inventory(&self, state: &StateRef) -> Result<Inventory, Error> {
        let Some(map) = self.state_map(state).await? else {
            return Ok(Inventory::new());
        };
        let asked = map.data.as_ref().and_then(|d| d.get(INVENTORY_KEY));
        if asked.is_some_and(|v| v.trim() == REBUILD) {
            self.rebuilding
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(Error::Rebuild {
                namespace: state.namespace.clone(),
                name: state.name(),
            });
        }
        let shards = map.data.as_ref().and_then(|d| d.get(SHARDS_KEY)).cloned();
        let Some(shards) = shards else {
            return Ok(
                Self::decode(state, &map, INVENTORY_KEY, inventory::decode)?.unwrap_or_default()
            );
        };
        let corrupt = |source| Error::Corrupt {
            namespace: state.namespace.clone(),
            name: state.name(),
            key: SHARDS_KEY,
            source,
        };
        let (generation, count) = shards
            .split_once('/')
            .and_then(|(g, n)| Some((g.to_string(), n.parse::<usize>().ok()?)))
            .ok_or_else(|| corrupt(serde::de::Error::custom("not <generation>/<count>")))?;
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let mut text = String::new();
        for i in 0..count {
            let name = shard_name(state, &generation, i);
            let piece = api
                .get_opt(&name)
                .await
                .map_err(|source| Error::Read {
                    namespace: state.namespace.clone(),
                    name: name.clone(),
                    source,
                })?
                .and_then(|m| m.data?.remove(INVENTORY_KEY))
                .ok_or_else(|| {
                    corrupt(serde::de::Error::custom(format!("shard {name} is missing")))
                })?;
            text.push_str(&piece);
        }
        *self.shard_generation.lock().expect("shards") = Some(generation);
        inventory::decode(&text).map_err(corrupt)
    }

    /// Writes the inventory's shards when it is too large to keep inline;
    /// returns the `inventory-shards` value naming them.
    async fn write_shards(&self, state: &StateRef, text: &str) -> Result<String, kube::Error> {
        let generation = crate::model::checksum::sha256_hex(text.as_bytes())[..12].to_string();
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let pieces = split_shards(text, SHARD_BYTES);
        for (i, piece) in pieces.iter().enumerate() {
            let mut metadata =
                own_metadata(shard_name(state, &generation, i), state.namespace.clone());
            metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(SHARD_LABEL.to_string(), state.name());
            let shard = ConfigMap {
                metadata,
                data: Some([(INVENTORY_KEY.to_string(), piece.to_string())].into()),
                ..ConfigMap::default()
            };
            api.patch(
                &shard_name(state, &generation, i),
                &PatchParams::apply("tidegate-state").force(),
                &Patch::Apply(&shard),
            )
            .await?;
        }
        Ok(format!("{generation}/{}", pieces.len()))
    }

    /// Deletes the shards of generations other than `keep`, once the state
    /// ConfigMap no longer names them.
    async fn delete_old_shards(
        &self,
        state: &StateRef,
        keep: Option<&str>,
    ) -> Result<(), kube::Error> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let selector = format!("{SHARD_LABEL}={}", state.name());
        let keep_prefix = keep.map(|g| format!("{}-inv-{g}-", state.name()));
        for old in api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
        {
            let name = old.metadata.name.unwrap_or_default();
            if keep_prefix.as_ref().is_some_and(|p| name.starts_with(p)) {
                continue;
            }
            api.delete(&name, &Default::default()).await?;
        }
        Ok(())
    }

    /// The status of the last sync, if one was recorded.
    /// The status a state ConfigMap holds (as a watch delivers it).
    pub fn status_in(state: &StateRef, map: &ConfigMap) -> Result<Option<SyncStatus>, Error> {
        Self::decode(state, map, STATUS_KEY, |t| serde_json::from_str(t))
    }

    /// What image automation recorded last, if it ran.
    pub async fn read_automation(
        &self,
        state: &StateRef,
    ) -> Result<Option<AutomationStatus>, Error> {
        let Some(map) = self.state_map(state).await? else {
            return Ok(None);
        };
        Self::decode(state, &map, AUTOMATION_KEY, |t| serde_json::from_str(t))
    }

    /// Records what an automation cycle did, in the state ConfigMap a sync
    /// made (none yet: not recorded).
    pub async fn record_automation(
        &self,
        state: &StateRef,
        status: &AutomationStatus,
    ) -> Result<(), WriteError> {
        self.fenced()?;
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let text = serde_json::to_string(status).expect("status serializes");
        let patch = serde_json::json!({"data": {AUTOMATION_KEY: text}});
        match api
            .patch(
                &state.name(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn read_status(&self, state: &StateRef) -> Result<Option<SyncStatus>, Error> {
        let Some(map) = self.state_map(state).await? else {
            return Ok(None);
        };
        Self::decode(state, &map, STATUS_KEY, |t| serde_json::from_str(t))
    }

    /// Records a sync's status, and its inventory when it has one (a sync that
    /// failed before rendering leaves the inventory as it was).
    /// The instance's key for Secrets' checksums, kept in its state
    /// ConfigMap; made (32 random bytes) when missing and `create`.
    pub async fn checksum_key(
        &self,
        state: &StateRef,
        create: bool,
    ) -> Result<Option<Vec<u8>>, kube::Error> {
        use base64::Engine as _;
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let read = || async {
            Ok::<_, kube::Error>(
                api.get_opt(&state.name())
                    .await?
                    .and_then(|m| m.data?.remove(CHECKSUM_KEY))
                    .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                    .filter(|k| k.len() >= 16),
            )
        };
        let stored = read().await?;
        if stored.is_some() || !create {
            return Ok(stored);
        }
        let mut key = vec![0u8; 32];
        ssh_key::rand_core::RngCore::fill_bytes(&mut ssh_key::rand_core::OsRng, &mut key);
        let map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": state.name(), "namespace": state.namespace},
            "data": {CHECKSUM_KEY: base64::engine::general_purpose::STANDARD.encode(&key)},
        });
        api.patch(
            &state.name(),
            &PatchParams::apply("tidegate-checksum-key"),
            &Patch::Apply(&map),
        )
        .await?;
        // Replicas starting together: whichever key was written last is
        // the one every replica reads from now on.
        Ok(read().await?.or(Some(key)))
    }

    pub async fn record(
        &self,
        state: &StateRef,
        status: &SyncStatus,
        inventory: Option<&Inventory>,
    ) -> Result<(), Error> {
        let write_err = |source: WriteError| Error::Write {
            namespace: state.namespace.clone(),
            name: state.name(),
            source,
        };
        self.fenced().map_err(|e| write_err(e.into()))?;
        let mut data = BTreeMap::new();
        data.insert(
            STATUS_KEY.to_string(),
            serde_json::to_string(status).expect("status serializes"),
        );
        let written = match inventory {
            Some(inventory) => self.record_with_inventory(state, data, inventory).await,
            None => self.record_status(state, data).await,
        };
        written.map_err(|e| write_err(e.into()))?;
        self.emit_event(state, status).await.map_err(write_err)
    }

    /// Applies the state ConfigMap whole: the status, and the inventory
    /// inline or in shards; then removes the shards no longer named.
    async fn record_with_inventory(
        &self,
        state: &StateRef,
        mut data: BTreeMap<String, String>,
        inventory: &Inventory,
    ) -> Result<(), kube::Error> {
        let text = inventory::encode(inventory);
        let mut generation = None;
        if text.len() <= SHARD_BYTES {
            data.insert(INVENTORY_KEY.to_string(), text);
        } else {
            let shards = self.write_shards(state, &text).await?;
            generation = shards.split_once('/').map(|(g, _)| g.to_string());
            data.insert(SHARDS_KEY.to_string(), shards);
        }
        let map = ConfigMap {
            metadata: own_metadata(state.name(), state.namespace.clone()),
            data: Some(data),
            ..ConfigMap::default()
        };
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let apply = PatchParams::apply("tidegate-state").force();
        api.patch(&state.name(), &apply, &Patch::Apply(&map))
            .await?;
        let asked = self
            .rebuilding
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if generation.is_some() && asked {
            // An inline inventory another writer left (a `rebuild`
            // request written by hand) would shadow the shards.
            let clear = serde_json::json!({"data": {INVENTORY_KEY: null}});
            api.patch(
                &state.name(),
                &PatchParams::default(),
                &Patch::Merge(&clear),
            )
            .await?;
        }
        // Shards of an older generation are no longer named: remove them
        // (only when shards were written or read, so small inventories
        // cost no list).
        let previous = self.shard_generation.lock().expect("shards").take();
        if previous.is_some() || generation.is_some() {
            self.delete_old_shards(state, generation.as_deref()).await?;
        }
        *self.shard_generation.lock().expect("shards") = generation;
        Ok(())
    }

    /// Updates the status alone: an apply that leaves the inventory out
    /// would remove it.
    async fn record_status(
        &self,
        state: &StateRef,
        data: BTreeMap<String, String>,
    ) -> Result<(), kube::Error> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &state.namespace);
        let merge = serde_json::json!({ "data": data });
        match api
            .patch(
                &state.name(),
                &PatchParams::default(),
                &Patch::Merge(&merge),
            )
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                let map = ConfigMap {
                    metadata: own_metadata(state.name(), state.namespace.clone()),
                    data: Some(data),
                    ..ConfigMap::default()
                };
                let apply = PatchParams::apply("tidegate-state").force();
                api.patch(&state.name(), &apply, &Patch::Apply(&map))
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// An Event on the state ConfigMap for one sync: Normal when it
    /// succeeded, Warning otherwise.
    pub async fn emit_event(
        &self,
        state: &StateRef,
        status: &SyncStatus,
    ) -> Result<(), WriteError> {
        self.fenced()?;
        let (kind, reason) = match status.result {
            Outcome::Succeeded => ("Normal", "SyncSucceeded"),
            Outcome::Failed => ("Warning", "SyncFailed"),
            Outcome::Interrupted => ("Warning", "SyncInterrupted"),
        };
        let revision = status.revision.as_deref().unwrap_or("(none)");
        let mut message = format!("revision {revision}: {}", status.summary());
        if let Some(m) = &status.message {
            message = format!("{message}; {m}");
        }
        self.event(state, kind, reason, &message, "Sync").await
    }

    /// An Event on the state ConfigMap; the same warning again is counted
    /// on the Event already there.
    pub async fn event(
        &self,
        state: &StateRef,
        kind: &str,
        reason: &str,
        message: &str,
        action: &str,
    ) -> Result<(), WriteError> {
        self.fenced()?;
        let message: String = message.chars().take(1000).collect();
        let now = Timestamp::now();
        let api = Api::<Event>::namespaced(self.client.clone(), &state.namespace);
        // The same warning again (a fetch failing every retry) is counted on
        // the Event already there, as kubelet's recorder does, not repeated.
        let repeat = self
            .last_event
            .lock()
            .expect("last event")
            .clone()
            .filter(|last| kind == "Warning" && last.1 == reason && last.2 == message);
        if let Some((name, _, _, count)) = repeat {
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": Time(now),
            });
            if api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                if let Some(last) = self.last_event.lock().expect("last event").as_mut() {
                    last.3 = count + 1;
                }
                return Ok(());
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", state.name())),
                namespace: Some(state.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: Some(state.name()),
                namespace: Some(state.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.clone()),
            type_: Some(kind.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some("tidegate".into()),
            reporting_instance: Some(state.sync_set.clone()),
            action: Some(action.into()),
            count: Some(1),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        *self.last_event.lock().expect("last event") = created
            .metadata
            .name
            .map(|name| (name, reason.to_string(), message, 1));
        Ok(())
    }
}
