//! Git access read from the cluster before every fetch: the deploy key,
//! known_hosts and HTTPS credentials, so a regenerated key or a rotated
//! password is used without a restart. Settings in, an [`Access`] out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::identity::{self, KeyRef};
use crate::source::Access;
use crate::source::remote::{self, Scheme};

/// Where the daemon finds what it needs to reach the Git host.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Secret holding the SSH deploy key; created if missing.
    pub deploy_key_secret: String,
    pub known_hosts_file: Option<PathBuf>,
    /// `configmap/NAME` or `secret/NAME`, key `known_hosts`.
    pub known_hosts_from: Option<String>,
    /// Secret with `username` and `password` (or `token`).
    pub https_secret: Option<String>,
    pub proxy: Option<String>,
    pub allow_insecure_http: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read Secret {namespace}/{name}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read ConfigMap {namespace}/{name}")]
    ConfigMap {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Secret {namespace}/{name} has {what}")]
    Incomplete {
        namespace: String,
        name: String,
        what: &'static str,
    },
    #[error("cannot read --ssh-known-hosts {path}")]
    KnownHostsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ssh-known-hosts-from {0}: write configmap/NAME or secret/NAME")]
    KnownHostsFrom(String),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("cannot read the keys in {path}")]
    KeyFiles {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    VerifyKeys(#[from] crate::source::verify::Error),
    #[error(transparent)]
    SopsKeys(#[from] crate::render::sops::KeyError),
}

/// Commit signature verification: the mode and where its keys are.
#[derive(Debug, Clone)]
pub struct Verify {
    pub mode: crate::source::verify::Mode,
    pub keys: KeySource,
}

/// Where the keys of signatures (or of decryption) are kept: a Secret in
/// the daemon's namespace, and a directory (or one file).
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    pub secret: Option<String>,
    pub path: Option<PathBuf>,
}

/// Entries past this size are not keys.
const MAX_KEY_BYTES: u64 = 1 << 20;

impl KeySource {
    /// Every entry, by name: the Secret's keys and the files.
    pub async fn entries(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut entries = Vec::new();
        if let Some(name) = &self.secret {
            let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
            let secret = api.get(name).await.map_err(|source| Error::Secret {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source,
            })?;
            entries.extend(
                secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
        }
        entries.extend(self.files()?);
        Ok(entries)
    }

    /// The entries of the files alone.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let Some(path) = &self.path else {
            return Ok(Vec::new());
        };
        key_files(path).map_err(|source| Error::KeyFiles {
            path: path.clone(),
            source,
        })
    }

    /// The keys `parse` reads from the entries (signature or SOPS keys).
    pub async fn read<K, E>(
        &self,
        client: &kube::Client,
        namespace: &str,
        parse: impl FnOnce(Vec<(&str, &[u8])>) -> Result<K, E>,
    ) -> Result<K, Error>
    where
        Error: From<E>,
    {
        let entries = self.entries(client, namespace).await?;
        Ok(parse(
            entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect(),
        )?)
    }
}

/// The files of a directory (a mounted Secret: its `..data` links are
/// skipped), or one file.
fn key_files(path: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let read = |file: &std::path::Path| -> std::io::Result<Vec<u8>> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(file)?
            .take(MAX_KEY_BYTES)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    if std::fs::metadata(path)?.is_file() {
        return Ok(vec![(name(path).unwrap_or_default(), read(path)?)]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        let Some(name) = name(&file).filter(|n| !n.starts_with('.')) else {
            continue;
        };
        if std::fs::metadata(&file)?.is_file() {
            files.push((name, read(&file)?));
        }
    }
    Ok(files)
}

impl AccessConfig {
    pub async fn access(
        &self,
        client: &kube::Client,
        namespace: &str,
        url: &str,
    ) -> Result<Access, Error> {
        let mut access = Access {
            proxy: self.proxy.clone(),
            allow_insecure_http: self.allow_insecure_http,
            ..Access::default()
        };
        match remote::parse(url).scheme {
            Scheme::Ssh => {
                let key_ref = KeyRef {
                    namespace: namespace.to_string(),
                    name: self.deploy_key_secret.clone(),
                };
                access.deploy_key = Some(identity::ensure(client, &key_ref).await?);
                access.known_hosts = self.known_hosts(client, namespace).await?;
            }
            Scheme::Https | Scheme::Http => {
                if let Some(name) = &self.https_secret {
                    let data = secret_data(client, namespace, name).await?;
                    let user = data
                        .get("username")
                        .cloned()
                        .unwrap_or_else(|| "git".into());
                    let password = data
                        .get("password")
                        .or_else(|| data.get("token"))
                        .cloned()
                        .ok_or_else(|| Error::Incomplete {
                            namespace: namespace.to_string(),
                            name: name.clone(),
                            what: "neither `password` nor `token`",
                        })?;
                    access.https = Some((user, password));
                }
            }
            Scheme::File => {}
        }
        Ok(access)
    }

    async fn known_hosts(&self, client: &kube::Client, namespace: &str) -> Result<String, Error> {
        let mut text = String::new();
        if let Some(path) = &self.known_hosts_file {
            text = std::fs::read_to_string(path).map_err(|source| Error::KnownHostsFile {
                path: path.clone(),
                source,
            })?;
        }
        if let Some(from) = &self.known_hosts_from {
            let data = match from.split_once('/') {
                Some(("configmap", name)) => {
                    let api: kube::Api<ConfigMap> =
                        kube::Api::namespaced(client.clone(), namespace);
                    api.get(name)
                        .await
                        .map_err(|source| Error::ConfigMap {
                            namespace: namespace.to_string(),
                            name: name.to_string(),
                            source,
                        })?
                        .data
                        .unwrap_or_default()
                }
                Some(("secret", name)) => secret_data(client, namespace, name).await?,
                _ => return Err(Error::KnownHostsFrom(from.clone())),
            };
            text.push('\n');
            text.push_str(
                data.get("known_hosts")
                    .map(String::as_str)
                    .unwrap_or_default(),
            );
        }
        Ok(text)
    }
}

/// A Secret's data as text, trailing whitespace trimmed.
pub async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = api.get(name).await.map_err(|source| Error::Secret {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim_end().to_string()))
        .collect())
}

/// The webhook secret, refused when missing or empty: an empty key would
/// let anyone sign a webhook.
pub async fn webhook_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<u8>, Error> {
    let incomplete = |what| Error::Incomplete {
        namespace: namespace.to_string(),
        name: name.to_string(),
        what,
    };
    let secret = secret_data(client, namespace, name)
        .await?
        .remove("webhook-secret")
        .ok_or_else(|| incomplete("no key `webhook-secret`"))?;
    if secret.trim().is_empty() {
        return Err(incomplete(
            "an empty `webhook-secret`; put a long random value in it",
        ));
    }
    Ok(secret.into_bytes())
}

/// The token Docker Hub's and Quay's webhooks carry in their URL (they set
/// no header): the key `registry-token` of the webhook Secret, kept apart
/// from `webhook-secret` so a URL seen by the registry's users signs
/// nothing else. `None` when the Secret has none (those webhooks are then
/// refused); an empty one is an error.
pub async fn registry_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(token) = secret_data(client, namespace, name)
        .await?
        .remove("registry-token")
    else {
        return Ok(None);
    };
    if token.trim().is_empty() {
        return Err(Error::Incomplete {
            namespace: namespace.to_string(),
            name: name.to_string(),
            what: "an empty `registry-token`; put a long random value in it",
        });
    }
    Ok(Some(token.into_bytes()))
}
