//! The deploy key: an Ed25519 key pair tidegate fetches with over SSH, kept
//! in a Secret in the daemon's namespace (keys `identity`, `identity.pub`).
//! Generated on first use; read before every fetch, so a regenerated key is
//! used without a restart. The private key is never logged.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{PostParams, Resource};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

use crate::model::marks::own_metadata;

const PRIVATE_KEY: &str = "identity";
const PUBLIC_KEY: &str = "identity.pub";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the deploy key Secret {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot store the deploy key in the Secret {namespace}/{name}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the Secret {namespace}/{name} holds no usable deploy key in `identity`; run `tidegate identity --regenerate`"
    )]
    Unusable { namespace: String, name: String },
    #[error("cannot generate a key")]
    Generate(#[source] ssh_key::Error),
}

/// A deploy key: the private half in OpenSSH format, the public half in
/// authorized_keys format.
#[derive(Clone)]
pub struct DeployKey {
    pub private_openssh: String,
    pub public: String,
    pub fingerprint: String,
}

impl std::fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployKey")
            .field("public", &self.public)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl DeployKey {
    pub fn generate() -> Result<DeployKey, Error> {
        let mut rng = ssh_key::rand_core::OsRng;
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(Error::Generate)?;
        key.set_comment("tidegate");
        Self::from_private(&key).map_err(Error::Generate)
    }

    fn from_private(key: &PrivateKey) -> Result<DeployKey, ssh_key::Error> {
        Ok(DeployKey {
            private_openssh: key.to_openssh(LineEnding::LF)?.to_string(),
            public: key.public_key().to_openssh()?,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        })
    }

    fn parse(private_openssh: &str) -> Option<DeployKey> {
        let key = PrivateKey::from_openssh(private_openssh).ok()?;
        Self::from_private(&key).ok()
    }
}

/// Where the key lives.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub namespace: String,
    pub name: String,
}

fn secret(key_ref: &KeyRef, key: &DeployKey) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (
            PRIVATE_KEY.to_string(),
            ByteString(key.private_openssh.clone().into_bytes()),
        ),
        (
            PUBLIC_KEY.to_string(),
            ByteString(key.public.clone().into_bytes()),
        ),
    ]
    .into();
    Secret {
        metadata: own_metadata(key_ref.name.clone(), key_ref.namespace.clone()),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Reads the deploy key; `None` if the Secret does not exist.
pub async fn read(client: &kube::Client, key_ref: &KeyRef) -> Result<Option<DeployKey>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &key_ref.namespace);
    let found = api
        .get_opt(&key_ref.name)
        .await
        .map_err(|source| Error::Read {
            namespace: key_ref.namespace.clone(),
            name: key_ref.name.clone(),
            source,
        })?;
    let Some(found) = found else {
        return Ok(None);
    };
    let private = found
        .data
        .as_ref()
        .and_then(|d| d.get(PRIVATE_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok());
    match private.as_deref().and_then(DeployKey::parse) {
        Some(key) => Ok(Some(key)),
        None => Err(Error::Unusable {
            namespace: key_ref.namespace.clone(),
            name: key_ref.name.clone(),
        }),
    }
}

/// The deploy key, generated and stored first if there is none yet.
pub async fn ensure(client: &kube::Client, key_ref: &KeyRef) -> Result<DeployKey, Error> {
    if let Some(key) = read(client, key_ref).await? {
        return Ok(key);
    }
    let key = DeployKey::generate()?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &key_ref.namespace);
    match api
        .create(&PostParams::default(), &secret(key_ref, &key))
        .await
    {
        Ok(_) => {
            tracing::info!(fingerprint = %key.fingerprint, "generated a deploy key");
            Ok(key)
        }
        // Someone else (the daemon, or another CLI) stored one first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            read(client, key_ref).await?.ok_or(Error::Unusable {
                namespace: key_ref.namespace.clone(),
                name: key_ref.name.clone(),
            })
        }
        Err(source) => Err(Error::Write {
            namespace: key_ref.namespace.clone(),
            name: key_ref.name.clone(),
            source,
        }),
    }
}

/// Replaces the deploy key with a new one.
pub async fn regenerate(client: &kube::Client, key_ref: &KeyRef) -> Result<DeployKey, Error> {
    let key = DeployKey::generate()?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &key_ref.namespace);
    let write_err = |source| Error::Write {
        namespace: key_ref.namespace.clone(),
        name: key_ref.name.clone(),
        source,
    };
    let mut new = secret(key_ref, &key);
    match api.get_opt(&key_ref.name).await.map_err(write_err)? {
        Some(old) => {
            new.meta_mut().resource_version = old.metadata.resource_version;
            api.replace(&key_ref.name, &PostParams::default(), &new)
                .await
                .map_err(write_err)?;
        }
        None => {
            api.create(&PostParams::default(), &new)
                .await
                .map_err(write_err)?;
        }
    }
    tracing::info!(fingerprint = %key.fingerprint, "regenerated the deploy key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_debug_hides_the_private_half() {
        let key = DeployKey::generate().unwrap();
        assert!(key.public.starts_with("ssh-ed25519 "), "{}", key.public);
        assert!(key.fingerprint.starts_with("SHA256:"));
        assert!(
            key.private_openssh
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        let parsed = DeployKey::parse(&key.private_openssh).unwrap();
        assert_eq!(parsed.public, key.public);
        assert_eq!(parsed.fingerprint, key.fingerprint);
        let debug = format!("{key:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
