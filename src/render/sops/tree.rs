//! The SOPS tree: documents with their `sops` metadata in, the same
//! documents decrypted out, once the MAC over every value holds.
//!
//! Follows sops 3's rules: a value's additional data is its path of map
//! keys (`data:password:`), the encryption rule is matched against every
//! key on the path, and the MAC is SHA-512 over every value in document
//! order (only the encrypted ones under `mac_only_encrypted`).

use serde_json::{Map, Value};
use sha2::Digest as _;

/// Which values the file's rule says are encrypted.
#[derive(Debug, Clone)]
pub enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
    /// The comment rules: which values are encrypted follows comments,
    /// which are not kept; a value is taken as encrypted when it is
    /// written so (the MAC still covers every value).
    AsWritten,
}

impl Rule {
    fn encrypted(&self, path: &[&str]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
            Rule::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
            Rule::AsWritten => true,
        }
    }
}

/// SHA-256("sops"): what the MAC starts with under `mac_only_encrypted`.
const MAC_ONLY_ENCRYPTED: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Walks documents, decrypting in place and hashing for the MAC; without
/// a key, only checking that each value is encrypted as the rule says.
pub struct Walk<'a> {
    pub key: Option<&'a [u8; 32]>,
    pub rule: &'a Rule,
    pub mac_only_encrypted: bool,
    hash: sha2::Sha512,
}

impl<'a> Walk<'a> {
    pub fn new(key: Option<&'a [u8; 32]>, rule: &'a Rule, mac_only_encrypted: bool) -> Walk<'a> {
        let mut hash = sha2::Sha512::new();
        if mac_only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED);
        }
        Walk {
            key,
            rule,
            mac_only_encrypted,
            hash,
        }
    }

    /// Decrypts one document (its `sops` entry already taken out).
    pub fn document(&mut self, doc: &mut Value) -> Result<(), String> {
        match doc {
            Value::Object(map) => self.map(map, &mut Vec::new()),
            Value::Null => Ok(()),
            _ => Err("the document is not a mapping".into()),
        }
    }

    /// The MAC of everything walked: uppercase hex, as sops writes it.
    pub fn mac(self) -> String {
        crate::model::checksum::hex(&self.hash.finalize()).to_uppercase()
    }

    fn map<'k>(
        &mut self,
        map: &'k mut Map<String, Value>,
        path: &mut Vec<&'k str>,
    ) -> Result<(), String> {
        for (key, value) in map.iter_mut() {
            path.push(key.as_str());
            let result = self.value(value, path);
            path.pop();
            result?;
        }
        Ok(())
    }

    fn value<'k>(&mut self, value: &'k mut Value, path: &mut Vec<&'k str>) -> Result<(), String> {
        match value {
            Value::Object(map) => self.map(map, path),
            // List items take the path of the key that holds the list.
            Value::Array(items) => items.iter_mut().try_for_each(|v| self.value(v, path)),
            Value::Null => Ok(()),
            leaf => self.leaf(leaf, path),
        }
    }

    fn leaf(&mut self, leaf: &mut Value, path: &[&str]) -> Result<(), String> {
        let written = matches!(leaf, Value::String(s) if s.starts_with("ENC["));
        let encrypted = match self.rule {
            Rule::AsWritten => written,
            rule => rule.encrypted(path),
        };
        let shown = || path.join(".");
        if encrypted {
            match leaf {
                Value::String(s) if s.is_empty() => {}
                Value::String(s) => {
                    let aad = format!("{}:", path.join(":"));
                    let opened = match self.key {
                        Some(key) => decrypt_value(s, key, aad.as_bytes()).map(|v| *leaf = v),
                        None => parse_encrypted(s).map(drop),
                    };
                    opened.map_err(|why| format!("the value at {}: {why}", shown()))?;
                }
                _ => {
                    return Err(format!(
                        "the value at {} is not encrypted, though the file's rule says it is (changed after encryption?)",
                        shown()
                    ));
                }
            }
        } else if written {
            return Err(format!(
                "the value at {} is encrypted, though the file's rule says it is not",
                shown()
            ));
        }
        if encrypted || !self.mac_only_encrypted {
            self.hash.update(mac_bytes(leaf));
        }
        Ok(())
    }
}

/// A value as sops hashes it: Go's formatting of the parsed value.
fn mac_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bool(true) => b"True".to_vec(),
        Value::Bool(false) => b"False".to_vec(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string().into_bytes(),
            (None, Some(u), _) => u.to_string().into_bytes(),
            (None, None, Some(f)) => format!("{f}").into_bytes(),
            _ => n.to_string().into_bytes(),
        },
        _ => Vec::new(),
    }
}

/// The parts of `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`.
struct Encrypted<'a> {
    data: &'a str,
    iv: &'a str,
    tag: &'a str,
    kind: &'a str,
}

fn parse_encrypted(text: &str) -> Result<Encrypted<'_>, String> {
    let Some(inner) = text
        .strip_prefix("ENC[")
        .and_then(|t| t.rfind(']').map(|end| &t[..end]))
    else {
        return Err("not a SOPS encrypted value".into());
    };
    let mut fields = inner.split(',');
    let cipher = fields.next().unwrap_or_default();
    if cipher != "AES256_GCM" {
        return Err(format!(
            "the cipher {cipher:?} is not supported (only AES256_GCM)"
        ));
    }
    let (mut data, mut iv, mut tag, mut kind) = (None, None, None, None);
    for field in fields {
        match field.split_once(':') {
            Some(("data", v)) => data = Some(v),
            Some(("iv", v)) => iv = Some(v),
            Some(("tag", v)) => tag = Some(v),
            Some(("type", v)) => kind = Some(v),
            _ => return Err("the encrypted value is malformed".into()),
        }
    }
    match (data, iv, tag, kind) {
        (Some(data), Some(iv), Some(tag), Some(kind)) => Ok(Encrypted {
            data,
            iv,
            tag,
            kind,
        }),
        _ => Err("the encrypted value lacks data, iv, tag or type".into()),
    }
}

/// Decrypts one `ENC[…]` value with the data key and its additional data.
pub fn decrypt_value(text: &str, key: &[u8; 32], aad: &[u8]) -> Result<Value, String> {
    let (plain, kind) = decrypt_raw(text, key, aad)?;
    let plain =
        String::from_utf8(plain).map_err(|_| "the decrypted value is not text".to_string())?;
    let wrong = |kind: &str| format!("the decrypted value is not a valid {kind}");
    Ok(match kind {
        "str" | "time" | "bytes" => Value::String(plain),
        "int" => Value::from(plain.parse::<i64>().map_err(|_| wrong("int"))?),
        "float" => {
            let f: f64 = plain.parse().map_err(|_| wrong("float"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| wrong("float"))?
        }
        "bool" => Value::Bool(match plain.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return Err(wrong("bool")),
        }),
        other => return Err(format!("the value type {other:?} is not supported")),
    })
}

/// The SHA-512 MAC of raw values, as [`Walk::mac`] computes it.
pub fn mac_of(values: &[&[u8]], mac_only_encrypted: bool) -> String {
    let mut hash = sha2::Sha512::new();
    if mac_only_encrypted {
        hash.update(MAC_ONLY_ENCRYPTED);
    }
    for v in values {
        hash.update(v);
    }
    crate::model::checksum::hex(&hash.finalize()).to_uppercase()
}

/// Decrypts one `ENC[…]` value to its bytes and its type.
pub fn decrypt_raw<'t>(
    text: &'t str,
    key: &[u8; 32],
    aad: &[u8],
) -> Result<(Vec<u8>, &'t str), String> {
    use base64::Engine as _;
    let parts = parse_encrypted(text)?;
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| "the encrypted value is not base64".to_string())
    };
    let (data, iv, tag) = (b64(parts.data)?, b64(parts.iv)?, b64(parts.tag)?);
    if tag.len() != 16 {
        return Err("the encrypted value has a malformed iv or tag".into());
    }
    // sops writes 32-byte IVs; GCM takes any length.
    use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
    let cipher =
        aes_gcm::AesGcm::<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U32>::new(key.into());
    if iv.len() != 32 {
        return Err("the encrypted value's iv is not the 32 bytes sops writes".into());
    }
    let sealed = [data.as_slice(), tag.as_slice()].concat();
    let plain = cipher
        .decrypt(
            aes_gcm::aead::generic_array::GenericArray::from_slice(&iv),
            Payload { msg: &sealed, aad },
        )
        .map_err(|_| {
            "it does not decrypt: the file was changed after encryption, or it belongs elsewhere"
                .to_string()
        })?;
    Ok((plain, parts.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sops 3's format, worked by hand from its rules: data key 00..1f,
    /// fixed IVs, `encrypted_regex: ^(data|stringData)$`.
    const PASSWORD: &str = "ENC[AES256_GCM,data:0k2IB7y9W8jFPlYc,iv:ERERERERERERERERERERERERERERERERERERERERERE=,tag:0XZukhPbWGfsdoSg5kpanw==,type:str]";
    const MAC: &str = "89B6892BD94333A2E1407CA6DA9F39FF304E143E17E43BD09088F09EDEC0A41747AB2480A99C47A20CC845BEBD9F7F806F3A5491913E2D62E71FA1EB453E8616";

    fn key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    fn secret(password: &str) -> Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mysecret"},
            "type": "Opaque", "data": {"password": password}
        })
    }

    #[test]
    fn values_decrypt_under_their_path_and_the_mac_covers_every_value() {
        let rule = Rule::EncryptedRegex(regex::Regex::new("^(data|stringData)$").unwrap());
        let key = key();
        let mut doc = secret(PASSWORD);
        let mut walk = Walk::new(Some(&key), &rule, false);
        walk.document(&mut doc).unwrap();
        assert_eq!(doc["data"]["password"], "cGFzc3dvcmQ=");
        assert_eq!(walk.mac(), MAC);
        // The same value under another path does not decrypt.
        let mut moved = serde_json::json!({"data": {"token": PASSWORD}});
        let err = Walk::new(Some(&key), &rule, false)
            .document(&mut moved)
            .unwrap_err();
        assert!(
            err.contains("data.token") && err.contains("does not decrypt"),
            "{err}"
        );
        // A plain value where the rule wants an encrypted one is refused.
        let err = Walk::new(Some(&key), &rule, false)
            .document(&mut secret("cGxhaW4="))
            .unwrap_err();
        assert!(err.contains("not a SOPS encrypted value"), "{err}");
        // A changed plain value changes the MAC.
        let mut renamed = secret(PASSWORD);
        renamed["metadata"]["name"] = "other".into();
        let mut walk = Walk::new(Some(&key), &rule, false);
        walk.document(&mut renamed).unwrap();
        assert_ne!(walk.mac(), MAC);
    }

    #[test]
    fn the_rule_is_matched_against_every_key_on_the_path() {
        let suffix = Rule::UnencryptedSuffix("_unencrypted".into());
        assert!(suffix.encrypted(&["data", "password"]));
        assert!(!suffix.encrypted(&["note_unencrypted", "a"]));
        let regex = Rule::EncryptedRegex(regex::Regex::new("^(data|stringData)$").unwrap());
        assert!(!regex.encrypted(&["metadata", "name"]));
        assert!(regex.encrypted(&["stringData", "x"]));
    }

    #[test]
    fn values_hash_as_go_formats_them() {
        assert_eq!(mac_bytes(&Value::Bool(true)), b"True");
        assert_eq!(mac_bytes(&serde_json::json!(1.0)), b"1");
        assert_eq!(mac_bytes(&serde_json::json!(25.4)), b"25.4");
        assert_eq!(mac_bytes(&serde_json::json!(-3)), b"-3");
    }
}
