//! Checksums of objects and bytes, in hex.

use super::ObjectRef;

/// The sha256 of an object's canonical JSON form (keys sorted), in hex.
pub fn checksum(object: &serde_json::Value) -> String {
    sha256_hex(&serde_json::to_vec(&Sorted(object)).expect("JSON values serialize"))
}

/// The checksum of an object as Git has it: for a Secret, with a key, an
/// HMAC-SHA256 that nobody without the key can test a guessed value with.
pub fn object_checksum(id: &ObjectRef, object: &serde_json::Value, key: Option<&[u8]>) -> String {
    let secret = id.group.is_empty() && id.kind == "Secret";
    match key.filter(|_| secret) {
        Some(key) => {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
            mac.update(&serde_json::to_vec(&Sorted(object)).expect("JSON values serialize"));
            hex(&mac.finalize().into_bytes())
        }
        None => checksum(object),
    }
}

/// A value serialized with the keys of every map sorted: objects keep the
/// order they were written in, and a checksum must not depend on it.
struct Sorted<'a>(&'a serde_json::Value);

impl serde::Serialize for Sorted<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Sorted(value))?;
                }
                out.end()
            }
            serde_json::Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

/// The sha256 of some bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// The SHA-256 of named entries (a Secret's keys, or files), whatever
/// their order: what identifies a set of keys.
pub fn entries_sha256(entries: &[(&str, &[u8])]) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted = entries.to_vec();
    sorted.sort();
    let mut hash = Sha256::new();
    for (name, bytes) in sorted {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(bytes);
        hash.update([0]);
    }
    hex(&hash.finalize())
}

/// Bytes in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}
