//! The inventory: the objects a sync set manages, as the last sync left
//! them, and its encoding in the state ConfigMap.

use std::collections::{BTreeMap, BTreeSet};

use super::ObjectRef;

/// The inventory: what the last successful sync applied, by object ref.
pub type Inventory = BTreeSet<ObjectRef>;

/// Inventory as stored: `apiVersion` → `Kind` → `namespace` ("" when
/// cluster-scoped) → names. Grouped, so 10,000 objects stay far below the
/// ConfigMap size limit.
type StoredInventory = BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>>;

pub fn encode(inventory: &Inventory) -> String {
    let mut stored: StoredInventory = BTreeMap::new();
    for id in inventory {
        stored
            .entry(id.api_version())
            .or_default()
            .entry(id.kind.clone())
            .or_default()
            .entry(id.namespace.clone().unwrap_or_default())
            .or_default()
            .push(id.name.clone());
    }
    serde_json::to_string(&stored).expect("inventory serializes")
}

pub fn decode(text: &str) -> Result<Inventory, serde_json::Error> {
    let stored: StoredInventory = serde_json::from_str(text)?;
    let mut inventory = Inventory::new();
    for (api_version, kinds) in stored {
        for (kind, namespaces) in kinds {
            for (ns, names) in namespaces {
                let ns = (!ns.is_empty()).then_some(ns.as_str());
                for name in names {
                    inventory.insert(ObjectRef::new(&api_version, &kind, ns, &name));
                }
            }
        }
    }
    Ok(inventory)
}

/// Splits text into pieces of at most `size` bytes, at character boundaries.
pub fn split_shards(text: &str, size: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(size);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_round_trips() {
        let inventory: Inventory = [
            ObjectRef::new("v1", "Namespace", None, "shop"),
            ObjectRef::new("v1", "ConfigMap", Some("shop"), "a"),
            ObjectRef::new("v1", "ConfigMap", Some("shop"), "b"),
            ObjectRef::new("apps/v1", "Deployment", Some("shop"), "web"),
        ]
        .into();
        let text = encode(&inventory);
        assert_eq!(decode(&text).unwrap(), inventory);
        assert!(text.contains(r#""ConfigMap":{"shop":["a","b"]}"#), "{text}");
    }

    #[test]
    fn shards_split_at_character_boundaries() {
        let text = "aé".repeat(10);
        let pieces = split_shards(&text, 4);
        assert!(pieces.iter().all(|p| p.len() <= 4 && !p.is_empty()));
        assert_eq!(pieces.concat(), text);
        assert!(split_shards("", 4).is_empty());
    }
}
