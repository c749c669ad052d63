//! SOPS: files encrypted by sops (YAML and JSON manifests; dotenv, binary
//! and the rest as a Secret's data) and the keys to them in, the decrypted
//! documents out, in memory only, once the file's MAC holds.
//!
//! The data key is recovered with an age identity or an OpenPGP secret key;
//! a file for which no key is held, a tampered file, or one whose format
//! is not supported is an error naming the file; nothing of it is applied.

mod tree;

use std::sync::Arc;

use serde_json::Value;

/// The annotation that opts a document out of decryption.
pub const DECRYPT_ANNOTATION: &str = "tidegate.dev/decrypt";

/// Decryption, when on: the keys it may use.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub keys: Option<Arc<Keys>>,
    /// Without keys, check encrypted files' structure and leave their
    /// documents out, instead of refusing them (`validate`).
    pub structure_only: bool,
}

impl Settings {
    /// Identifies the keys, for caches of what they decrypted.
    pub fn digest(&self) -> Option<&str> {
        self.keys.as_deref().map(|k| k.digest.as_str())
    }
}

/// age identities and OpenPGP secret keys.
#[derive(Clone, Default)]
pub struct Keys {
    age: Vec<age::x25519::Identity>,
    openpgp: Vec<pgp::composed::SignedSecretKey>,
    digest: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys({} age, {} OpenPGP)",
            self.age.len(),
            self.openpgp.len()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("decryption key {entry}: {reason}")]
    Entry { entry: String, reason: String },
    #[error(
        "no decryption keys: give age identities (`*.agekey`) or OpenPGP secret keys (`*.asc`)"
    )]
    None,
}

impl Keys {
    /// Reads named entries as Flux does: `*.agekey` age identities (one a
    /// line), `*.asc` armored OpenPGP secret keys. Other entries are not keys.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Keys, KeyError> {
        use pgp::composed::Deserializable as _;
        let mut keys = Keys::default();
        let mut entries: Vec<(&str, &[u8])> = entries.into_iter().collect();
        entries.sort();
        for &(entry, bytes) in &entries {
            let bad = |reason: String| KeyError::Entry {
                entry: entry.to_string(),
                reason,
            };
            let text = || std::str::from_utf8(bytes).map_err(|_| bad("is not text".into()));
            if entry.ends_with(".agekey") {
                for line in text()?.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    // The parse error could quote the key: say only what it is.
                    let identity = line.parse::<age::x25519::Identity>().map_err(|_| {
                        bad("a line is not an age identity (AGE-SECRET-KEY-1…)".into())
                    })?;
                    keys.age.push(identity);
                }
            } else if entry.ends_with(".asc") {
                let (found, _) = pgp::composed::SignedSecretKey::from_string_many(text()?)
                    .map_err(|e| bad(format!("not an armored OpenPGP secret key: {e}")))?;
                for key in found {
                    keys.openpgp
                        .push(key.map_err(|e| bad(format!("not an OpenPGP secret key: {e}")))?);
                }
            } else {
                continue;
            }
        }
        if keys.age.is_empty() && keys.openpgp.is_empty() {
            return Err(KeyError::None);
        }
        keys.digest = crate::model::checksum::entries_sha256(&entries);
        Ok(keys)
    }
}

/// Whether a document carries SOPS metadata (a top-level `sops` with a MAC).
pub fn is_encrypted(doc: &Value) -> bool {
    doc.get("sops")
        .and_then(|s| s.get("mac"))
        .is_some_and(|m| m.as_str().is_some_and(|m| !m.is_empty()))
}

/// Whether a document opts out of decryption.
pub fn opted_out(doc: &Value) -> bool {
    doc.pointer("/metadata/annotations")
        .and_then(|a| a.get(DECRYPT_ANNOTATION))
        .is_some_and(|v| v == "disabled")
}

/// What decrypting one file came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decrypted {
    Done,
    /// Without keys, under `structure_only`: the structure holds, and the
    /// documents cannot be read.
    Checked,
}

/// Decrypts the documents of one file in place: the first holds the
/// metadata, which covers them all. Without keys (decryption off), the
/// error says how to turn it on.
pub fn decrypt_documents(docs: &mut [Value], settings: &Settings) -> Result<Decrypted, String> {
    let Some(first) = docs.first() else {
        return Ok(Decrypted::Done);
    };
    let metadata = Metadata::read(first.get("sops").unwrap_or(&Value::Null))?;
    let Some(keys) = &settings.keys else {
        if settings.structure_only {
            let mut walk = tree::Walk::new(None, &metadata.rule, metadata.mac_only_encrypted);
            for doc in docs.iter_mut() {
                let mut doc = doc.clone();
                if let Value::Object(map) = &mut doc {
                    map.shift_remove("sops");
                }
                walk.document(&mut doc)?;
            }
            return Ok(Decrypted::Checked);
        }
        return Err(format!(
            "encrypted with SOPS for {}; decryption is off: give tidegate a key with --sops-secret",
            metadata.recipients()
        ));
    };
    let key = metadata.data_key(keys)?;
    let mut walk = tree::Walk::new(Some(&key), &metadata.rule, metadata.mac_only_encrypted);
    for doc in docs.iter_mut() {
        if let Value::Object(map) = doc {
            map.shift_remove("sops");
        }
        walk.document(doc)?;
    }
    metadata.check_mac(&key, walk.mac())?;
    Ok(Decrypted::Done)
}

/// The formats sops writes besides YAML documents, by file name as sops
/// and Flux choose them: `.yaml`/`.yml`, `.json`, `.env`, else binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Dotenv,
    Binary,
}

impl Format {
    pub fn for_name(name: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".env") {
            Format::Dotenv
        } else {
            Format::Binary
        }
    }
}

/// Whether `bytes` (a file, or a Secret's data value) look encrypted by
/// sops: its MAC as each format writes it.
pub fn looks_encrypted(bytes: &[u8]) -> bool {
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    has(b"mac: ENC[") || has(b"\"mac\": \"ENC[") || has(b"sops_mac=ENC[")
}

/// Decrypts a whole file of `format` (sops writes a binary file as JSON
/// with the contents under `data`); the plain file's bytes.
pub fn decrypt_file(bytes: &[u8], format: Format, settings: &Settings) -> Result<Vec<u8>, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "the encrypted file is not text".to_string())?;
    match format {
        Format::Dotenv => {
            let (mut doc, metadata) = dotenv_tree(text)?;
            let mut docs = [serde_json::json!({})];
            docs[0] = std::mem::take(&mut doc);
            docs[0]["sops"] = metadata;
            needs_keys(decrypt_documents(&mut docs, settings)?)?;
            let mut out = String::new();
            for (k, v) in docs[0].as_object().into_iter().flatten() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                out.push_str(&format!("{k}={}\n", v.replace('\n', "\\n")));
            }
            Ok(out.into_bytes())
        }
        // The contents are bytes, not text: one value under `data`.
        Format::Binary => {
            let doc: Value =
                serde_json::from_str(text).map_err(|e| format!("not a SOPS binary file: {e}"))?;
            let metadata = Metadata::read(doc.get("sops").unwrap_or(&Value::Null))?;
            let Some(Value::String(data)) = doc.get("data") else {
                return Err("a SOPS binary file holds its contents under `data`".into());
            };
            let Some(keys) = &settings.keys else {
                return Err(format!(
                    "encrypted with SOPS for {}; give the keys to read it",
                    metadata.recipients()
                ));
            };
            let key = metadata.data_key(keys)?;
            let (plain, _) = tree::decrypt_raw(data, &key, b"data:")
                .map_err(|why| format!("the value at data: {why}"))?;
            metadata.check_mac(&key, tree::mac_of(&[&plain], metadata.mac_only_encrypted))?;
            Ok(plain)
        }
        Format::Yaml | Format::Json => {
            let mut docs: Vec<Value> = match format {
                Format::Yaml => {
                    crate::render::manifest::parse_documents(text, &Default::default())?
                }
                _ => vec![
                    serde_json::from_str(text).map_err(|e| format!("not a SOPS JSON file: {e}"))?,
                ],
            };
            needs_keys(decrypt_documents(&mut docs, settings)?)?;
            match format {
                Format::Json => serde_json::to_vec_pretty(&docs[0]).map_err(|e| e.to_string()),
                _ => {
                    let mut out = String::new();
                    for doc in &docs {
                        out.push_str("---\n");
                        out.push_str(&serde_saphyr::to_string(doc).map_err(|e| e.to_string())?);
                    }
                    Ok(out.into_bytes())
                }
            }
        }
    }
}

fn needs_keys(decrypted: Decrypted) -> Result<(), String> {
    match decrypted {
        Decrypted::Done => Ok(()),
        Decrypted::Checked => Err("encrypted with SOPS: give the keys to read it".into()),
    }
}

/// A dotenv file as sops reads it: `key=value` lines (`\n` escaped in
/// values), `#` comments; the `sops_*` keys are its flattened metadata.
fn dotenv_tree(text: &str) -> Result<(Value, Value), String> {
    let mut doc = serde_json::Map::new();
    let mut flat = serde_json::Map::new();
    for line in text.split('\n') {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err("a line of the dotenv file has no `=`".into());
        };
        let value = Value::String(value.replace("\\n", "\n"));
        match key.strip_prefix("sops_") {
            Some(meta) => {
                flat.insert(meta.to_string(), value);
            }
            None => {
                doc.insert(key.to_string(), value);
            }
        }
    }
    Ok((Value::Object(doc), unflatten(&flat)))
}

/// sops' flattened metadata (`age__list_0__map_enc`) back into a tree.
fn unflatten(flat: &serde_json::Map<String, Value>) -> Value {
    let mut root = Value::Object(Default::default());
    for (key, value) in flat {
        let mut at = &mut root;
        let mut rest = key.as_str();
        loop {
            let (name, next) = match rest.find("__") {
                Some(i) => (&rest[..i], Some(&rest[i + 2..])),
                None => (rest, None),
            };
            let Some(next) = next else {
                if let Value::Object(m) = at {
                    m.insert(name.to_string(), value.clone());
                }
                break;
            };
            // `name__list_N__map_x` or `name__map_x`.
            let (index, after) = match next.strip_prefix("list_") {
                Some(l) => {
                    let end = l.find("__").unwrap_or(l.len());
                    (
                        l[..end].parse::<usize>().ok(),
                        l.get(end + 2..).unwrap_or(""),
                    )
                }
                None => (None, next),
            };
            let after = after.strip_prefix("map_").unwrap_or(after);
            let Value::Object(m) = at else { break };
            let child = m.entry(name.to_string()).or_insert_with(|| match index {
                Some(_) => Value::Array(Vec::new()),
                None => Value::Object(Default::default()),
            });
            at = match (index, child) {
                (Some(i), Value::Array(items)) => {
                    // Items come in order: an index past the next is not sops'.
                    if i > items.len() {
                        break;
                    }
                    if i == items.len() {
                        items.push(Value::Object(Default::default()));
                    }
                    &mut items[i]
                }
                (Some(_), _) => break,
                (None, child) => child,
            };
            rest = after;
            if rest.is_empty() {
                break;
            }
        }
    }
    root
}

/// What the `sops` entry says.
struct Metadata {
    age: Vec<(String, String)>,
    pgp: Vec<(String, String)>,
    /// Master keys tidegate cannot use (KMS and vaults), for the error.
    others: Vec<String>,
    lastmodified: String,
    mac: String,
    rule: tree::Rule,
    mac_only_encrypted: bool,
}

impl Metadata {
    fn read(sops: &Value) -> Result<Metadata, String> {
        let Value::Object(sops) = sops else {
            return Err("the `sops` entry is not a mapping".into());
        };
        let text = |name: &str| sops.get(name).and_then(Value::as_str).map(str::to_string);
        let mut metadata = Metadata {
            age: Vec::new(),
            pgp: Vec::new(),
            others: Vec::new(),
            lastmodified: text("lastmodified").ok_or("the SOPS metadata has no `lastmodified`")?,
            mac: text("mac").ok_or("the SOPS metadata has no `mac`")?,
            rule: rule(sops)?,
            mac_only_encrypted: sops
                .get("mac_only_encrypted")
                .is_some_and(|v| v == true || v == "true"),
        };
        let groups = sops.get("key_groups").and_then(Value::as_array);
        match groups.map(Vec::len) {
            Some(n) if n > 1 && !has_keys(sops) => {
                return Err("the file is encrypted for several key groups (Shamir's secret sharing), which tidegate does not support".into());
            }
            Some(1) if !has_keys(sops) => metadata.master_keys(groups.unwrap()[0].as_object()),
            _ => metadata.master_keys(Some(sops)),
        }
        Ok(metadata)
    }

    fn master_keys(&mut self, group: Option<&serde_json::Map<String, Value>>) {
        let Some(group) = group else { return };
        let entries = |name: &str| {
            group
                .get(name)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let field = |v: &Value, f: &str| {
            v.get(f)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        for key in entries("age") {
            self.age
                .push((field(&key, "recipient"), field(&key, "enc")));
        }
        for key in entries("pgp") {
            self.pgp.push((field(&key, "fp"), field(&key, "enc")));
        }
        for kind in ["kms", "gcp_kms", "azure_kv", "hc_vault", "hckms"] {
            if !entries(kind).is_empty() {
                self.others.push(kind.to_string());
            }
        }
    }

    /// `age age1…, OpenPGP 0123…` as the error names them.
    fn recipients(&self) -> String {
        let mut named: Vec<String> = self.age.iter().map(|(r, _)| format!("age {r}")).collect();
        named.extend(self.pgp.iter().map(|(fp, _)| format!("OpenPGP {fp}")));
        named.extend(self.others.iter().map(|k| format!("{k} (not supported)")));
        if named.is_empty() {
            return "no recipient".into();
        }
        named.join(", ")
    }

    /// The data key, from the first master key a held key opens: age first.
    fn data_key(&self, keys: &Keys) -> Result<[u8; 32], String> {
        for (_, enc) in &self.age {
            if let Some(key) = open_age(enc, &keys.age) {
                return key;
            }
        }
        for (_, enc) in &self.pgp {
            if let Some(key) = open_openpgp(enc, &keys.openpgp) {
                return key;
            }
        }
        Err(format!(
            "no key held opens this file: it is encrypted for {}",
            self.recipients()
        ))
    }

    fn check_mac(&self, key: &[u8; 32], computed: String) -> Result<(), String> {
        let aad = rfc3339(&self.lastmodified);
        let stored = tree::decrypt_value(&self.mac, key, aad.as_bytes())
            .map_err(|why| format!("the MAC does not open ({why})"))?;
        if stored.as_str() != Some(computed.as_str()) {
            return Err(
                "the MAC does not match the values: the file was changed after encryption".into(),
            );
        }
        Ok(())
    }
}

fn has_keys(sops: &serde_json::Map<String, Value>) -> bool {
    [
        "age", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms",
    ]
    .iter()
    .any(|k| {
        sops.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    })
}

/// The file's encryption rule: at most one may be set; none is
/// `unencrypted_suffix: _unencrypted`.
fn rule(sops: &serde_json::Map<String, Value>) -> Result<tree::Rule, String> {
    let set: Vec<(&str, &str)> = [
        "unencrypted_suffix",
        "encrypted_suffix",
        "unencrypted_regex",
        "encrypted_regex",
        "unencrypted_comment_regex",
        "encrypted_comment_regex",
    ]
    .into_iter()
    .filter_map(|k| {
        sops.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(|v| (k, v))
    })
    .collect();
    let regex = compiled;
    Ok(match set.as_slice() {
        [] => tree::Rule::UnencryptedSuffix("_unencrypted".into()),
        [("unencrypted_suffix", s)] => tree::Rule::UnencryptedSuffix(s.to_string()),
        [("encrypted_suffix", s)] => tree::Rule::EncryptedSuffix(s.to_string()),
        [("unencrypted_regex", r)] => tree::Rule::UnencryptedRegex(regex(r)?),
        [("encrypted_regex", r)] => tree::Rule::EncryptedRegex(regex(r)?),
        [(_, _)] => tree::Rule::AsWritten,
        _ => return Err("the SOPS metadata sets more than one encryption rule".into()),
    })
}

/// A rule's regex, compiled once per pattern: files share their rule.
fn compiled(pattern: &str) -> Result<regex::Regex, String> {
    static SEEN: std::sync::Mutex<Vec<(String, regex::Regex)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().expect("sops regexes");
    if let Some((_, r)) = seen.iter().find(|(p, _)| p == pattern) {
        return Ok(r.clone());
    }
    let r = regex::Regex::new(pattern)
        .map_err(|e| format!("the SOPS rule's regex does not compile: {e}"))?;
    if seen.len() < 64 {
        seen.push((pattern.to_string(), r.clone()));
    }
    Ok(r)
}

fn open_age(enc: &str, identities: &[age::x25519::Identity]) -> Option<Result<[u8; 32], String>> {
    use std::io::Read as _;
    if identities.is_empty() {
        return None;
    }
    let armored = age::armor::ArmoredReader::new(enc.trim().as_bytes());
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::new(armored)).ok()?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .ok()?;
    let mut key = Vec::new();
    if reader.by_ref().take(64).read_to_end(&mut key).is_err() {
        return Some(Err("the age-encrypted data key is damaged".into()));
    }
    Some(data_key(key))
}

fn open_openpgp(
    enc: &str,
    keys: &[pgp::composed::SignedSecretKey],
) -> Option<Result<[u8; 32], String>> {
    let password = pgp::types::Password::empty();
    for key in keys {
        let Ok((message, _)) = pgp::composed::Message::from_string(enc.trim()) else {
            return Some(Err(
                "the OpenPGP-encrypted data key is not an armored message".into(),
            ));
        };
        let Ok(mut message) = message.decrypt(&password, key) else {
            continue;
        };
        if message.is_compressed() {
            message = match message.decompress() {
                Ok(m) => m,
                Err(_) => return Some(Err("the OpenPGP-encrypted data key is damaged".into())),
            };
        }
        // A data key is 32 bytes: more is not read (a compressed message
        // could expand without end).
        use std::io::Read as _;
        let mut bytes = Vec::new();
        return Some(match message.by_ref().take(64).read_to_end(&mut bytes) {
            Ok(_) => data_key(bytes),
            Err(_) => Err("the OpenPGP-encrypted data key is damaged".into()),
        });
    }
    None
}

fn data_key(bytes: Vec<u8>) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| "the data key is not 32 bytes long".to_string())
}

/// `lastmodified` as Go's RFC3339 writes it: no fractional seconds, `Z`
/// for a zero offset.
fn rfc3339(text: &str) -> String {
    let (main, offset) = match text
        .rfind(['Z', 'z', '+'])
        .or_else(|| text.get(19..).and_then(|t| t.find('-')).map(|i| i + 19))
    {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    let main = main.split('.').next().unwrap_or(main);
    let offset = match offset {
        "Z" | "z" | "+00:00" | "-00:00" => "Z",
        other => other,
    };
    format!("{main}{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lastmodified_is_read_as_go_writes_rfc3339() {
        assert_eq!(rfc3339("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
        assert_eq!(
            rfc3339("2024-01-01T00:00:00.123456Z"),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339("2024-01-01T00:00:00+00:00"), "2024-01-01T00:00:00Z");
        assert_eq!(
            rfc3339("2024-01-01T00:00:00.5-05:00"),
            "2024-01-01T00:00:00-05:00"
        );
    }

    #[test]
    fn flattened_dotenv_metadata_unflattens() {
        let text = "A=1\nsops_age__list_0__map_recipient=age1x\nsops_age__list_0__map_enc=E\\nF\nsops_mac=ENC[x]\nsops_lastmodified=T\n";
        let (doc, meta) = dotenv_tree(text).unwrap();
        assert_eq!(doc, serde_json::json!({"A": "1"}));
        assert_eq!(meta["age"][0]["recipient"], "age1x");
        assert_eq!(meta["age"][0]["enc"], "E\nF");
        assert_eq!(meta["mac"], "ENC[x]");
    }

    /// Flattened metadata is attacker text: an index past the next item
    /// makes nothing (no allocation to that index).
    #[test]
    fn flattened_list_indexes_are_bounded() {
        let text =
            "A=1\nsops_age__list_18446744073709551615__map_enc=x\nsops_pgp__list_3__map_fp=y\n";
        let (_, meta) = dotenv_tree(text).unwrap();
        assert_eq!(meta["age"], serde_json::json!([]));
        assert_eq!(meta["pgp"], serde_json::json!([]));
    }

    #[test]
    fn a_data_key_is_32_bytes() {
        assert!(data_key(vec![0; 32]).is_ok());
        assert!(data_key(vec![0; 64]).is_err());
    }

    #[test]
    fn formats_follow_the_name() {
        assert_eq!(Format::for_name("secret.yaml"), Format::Yaml);
        assert_eq!(Format::for_name("app.env"), Format::Dotenv);
        assert_eq!(Format::for_name("token"), Format::Binary);
        assert!(looks_encrypted(b"x\nsops_mac=ENC[AES256_GCM,data:x"));
        assert!(!looks_encrypted(b"plain: text"));
    }
}
