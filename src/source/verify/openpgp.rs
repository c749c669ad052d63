//! OpenPGP commit signatures: armored public keys in, a signer or the
//! reason a detached signature is refused out (as gpg judges it for git:
//! good only when the key is known, neither expired nor revoked now, and
//! the signature matches the commit).

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Tag};

use super::Signer;

/// The OpenPGP public keys a signature may be made with.
#[derive(Debug, Clone, Default)]
pub struct Keyring(Vec<SignedPublicKey>);

impl Keyring {
    /// Adds the armored keys (one or more) in `text`.
    pub fn add(&mut self, text: &str) -> Result<usize, String> {
        let (keys, _) = SignedPublicKey::from_string_many(text)
            .map_err(|e| format!("not an armored OpenPGP public key: {e}"))?;
        let mut added = 0;
        for key in keys {
            self.0
                .push(key.map_err(|e| format!("not an OpenPGP public key: {e}"))?);
            added += 1;
        }
        if added == 0 {
            return Err("holds no OpenPGP public key".into());
        }
        Ok(added)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Judges the armored detached signature `armored` of `data`, at `now`
    /// (seconds since the epoch).
    pub fn verify(&self, armored: &str, data: &[u8], now: u64) -> Result<Signer, String> {
        let (signature, _) = DetachedSignature::from_string(armored)
            .map_err(|e| format!("the OpenPGP signature cannot be read: {e}"))?;
        let signature = signature.signature;
        if !matches!(
            signature.typ(),
            Some(SignatureType::Binary | SignatureType::Text)
        ) {
            return Err("the OpenPGP signature is not a signature of data".into());
        }
        let Some((key, signing)) = self.find(&signature) else {
            return Err(format!(
                "signed with OpenPGP key {}, which is not among the trusted keys",
                issuer(&signature)
            ));
        };
        let fingerprint = format!("{:X}", key.primary_key.fingerprint());
        let refuse = |why: String| Err(format!("OpenPGP key {fingerprint}: {why}"));
        let checked = match signing {
            None => signature.verify(&key.primary_key, data),
            Some(i) => signature.verify(&key.public_subkeys[i].key, data),
        };
        if checked.is_err() {
            return refuse(
                "the signature does not match the commit (changed after signing?)".into(),
            );
        }
        let created = signature.created().map_or(0, |t| u64::from(t.as_secs()));
        if let Some(valid) = signature.signature_expiration_time()
            && valid.as_secs() > 0
            && created + u64::from(valid.as_secs()) <= now
        {
            return refuse("the signature has expired".into());
        }
        if let Err(why) = usable(key, signing, created, now) {
            return refuse(why);
        }
        Ok(Signer {
            format: super::Format::OpenPgp,
            fingerprint,
            name: user_id(key),
        })
    }

    /// The key holding the signature's issuer: the primary key (`None`) or
    /// the subkey of that index.
    fn find(&self, signature: &Signature) -> Option<(&SignedPublicKey, Option<usize>)> {
        let fingerprints = signature.issuer_fingerprint();
        let ids = signature.issuer_key_id();
        let matches = |k: &dyn KeyDetails| {
            let fingerprint = k.fingerprint();
            fingerprints.iter().any(|f| **f == fingerprint)
                || ids.iter().any(|id| **id == k.legacy_key_id())
        };
        self.0.iter().find_map(|key| {
            if matches(&key.primary_key) {
                return Some((key, None));
            }
            (key.public_subkeys.iter())
                .position(|s| matches(&s.key))
                .map(|i| (key, Some(i)))
        })
    }
}

fn issuer(signature: &Signature) -> String {
    if let Some(f) = signature.issuer_fingerprint().first() {
        return format!("{f:X}");
    }
    match signature.issuer_key_id().first() {
        Some(id) => crate::model::checksum::hex(id.as_ref()).to_uppercase(),
        None => "(no issuer given)".into(),
    }
}

/// Whether `key` (or its subkey `signing`) may have made a signature at
/// `created`, judged at `now`: its self-signatures hold, and it is neither
/// revoked nor expired.
fn usable(
    key: &SignedPublicKey,
    signing: Option<usize>,
    created: u64,
    now: u64,
) -> Result<(), String> {
    let primary = &key.primary_key;
    let revoked = key
        .details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(primary).is_ok());
    if revoked {
        return Err("the key is revoked".into());
    }
    // The newest self-signature of a user ID (or a direct one) says until
    // when the primary key is valid.
    let mut newest: Option<&Signature> = None;
    for user in &key.details.users {
        for s in &user.signatures {
            if s.verify_certification(primary, Tag::UserId, &user.id)
                .is_ok()
            {
                newest = newer(newest, s);
            }
        }
    }
    for s in &key.details.direct_signatures {
        if s.verify_key(primary).is_ok() {
            newest = newer(newest, s);
        }
    }
    let Some(binding) = newest else {
        return Err("the key carries no valid self-signature".into());
    };
    expired(u64::from(primary.created_at().as_secs()), binding, now)?;
    let Some(i) = signing else {
        return at_or_after(created, u64::from(primary.created_at().as_secs()));
    };
    let subkey = &key.public_subkeys[i];
    let mut newest: Option<&Signature> = None;
    for s in &subkey.signatures {
        if s.typ() == Some(SignatureType::SubkeyRevocation) {
            if s.verify_subkey_binding(primary, &subkey.key).is_ok() {
                return Err("the signing subkey is revoked".into());
            }
            continue;
        }
        if s.verify_subkey_binding(primary, &subkey.key).is_ok() {
            newest = newer(newest, s);
        }
    }
    // The newest binding says what the subkey may do now: signing, and
    // cross-signed by the subkey itself.
    let backed = |b: &Signature| {
        b.embedded_signature()
            .is_some_and(|e| e.verify_primary_key_binding(&subkey.key, primary).is_ok())
    };
    let Some(binding) = newest.filter(|b| b.key_flags().sign() && backed(b)) else {
        return Err("the subkey that signed is not bound to the key for signing".into());
    };
    let subkey_created = u64::from(subkey.key.created_at().as_secs());
    expired(subkey_created, binding, now)?;
    at_or_after(created, subkey_created)
}

fn newer<'a>(current: Option<&'a Signature>, candidate: &'a Signature) -> Option<&'a Signature> {
    match current {
        Some(c) if c.created() >= candidate.created() => Some(c),
        _ => Some(candidate),
    }
}

fn expired(key_created: u64, binding: &Signature, now: u64) -> Result<(), String> {
    match binding.key_expiration_time() {
        Some(valid) if valid.as_secs() > 0 && key_created + u64::from(valid.as_secs()) <= now => {
            Err(format!(
                "the key expired at {}",
                super::shown_time(key_created + u64::from(valid.as_secs()))
            ))
        }
        _ => Ok(()),
    }
}

fn at_or_after(signed: u64, key_created: u64) -> Result<(), String> {
    if signed < key_created {
        return Err("the signature is older than the key that made it".into());
    }
    Ok(())
}

/// The key's primary user ID (else its first), as people read it.
fn user_id(key: &SignedPublicKey) -> String {
    let users = &key.details.users;
    users
        .iter()
        .find(|u| u.is_primary())
        .or(users.first())
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .unwrap_or_default()
}
