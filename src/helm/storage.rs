//! Helm's own record of a release, read where Helm 3 keeps it: one Secret
//! per revision (`sh.helm.release.v1.<name>.v<n>`, labels `owner=helm`,
//! `name`, `status`, `version`, plus the release's own labels). Reading them
//! costs one list request and no helm process, so a sync with nothing to do
//! stays fast.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

/// Labels Helm sets itself; the rest are the release's labels.
const HELM_LABELS: [&str; 5] = ["name", "owner", "status", "version", "modifiedAt"];

/// One revision of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u32,
    /// `deployed`, `failed`, `pending-upgrade`, `superseded`, …
    pub status: String,
    /// The labels given with `--labels` (tidegate's digests among them).
    pub labels: BTreeMap<String, String>,
}

/// A revision's content, decoded.
#[derive(Debug, Clone, Default)]
pub struct Content {
    pub manifest: String,
    /// The values the release was given (not the chart's defaults).
    pub config: Value,
    pub chart_name: String,
    pub chart_version: String,
    pub app_version: String,
    /// Helm's own account of the revision (its failure reason, for one
    /// that failed).
    pub description: String,
}

/// Every revision of a release, oldest first, and the Secrets holding them.
#[derive(Debug, Default)]
pub struct History {
    pub records: Vec<Record>,
    secrets: BTreeMap<u32, Secret>,
}

impl History {
    pub fn latest(&self) -> Option<&Record> {
        self.records.last()
    }

    /// The revision Helm counts as deployed, if any.
    pub fn deployed(&self) -> Option<&Record> {
        self.records.iter().rev().find(|r| r.status == "deployed")
    }

    /// Decodes a revision: base64 of gzip of the release JSON, inside the
    /// Secret's own base64.
    pub fn content(&self, version: u32) -> Result<Content, String> {
        let secret = self
            .secrets
            .get(&version)
            .ok_or_else(|| format!("revision {version} is not stored"))?;
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get("release"))
            .ok_or("the release Secret has no release key")?;
        let inner = base64::engine::general_purpose::STANDARD
            .decode(&data.0)
            .map_err(|e| format!("the release record is not base64: {e}"))?;
        let mut json = Vec::new();
        if inner.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(&inner[..])
                .take(64 * 1024 * 1024)
                .read_to_end(&mut json)
                .map_err(|e| format!("the release record cannot be unzipped: {e}"))?;
        } else {
            json = inner;
        }
        let release: Value = serde_json::from_slice(&json)
            .map_err(|e| format!("the release record is not JSON: {e}"))?;
        let metadata = &release["chart"]["metadata"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(Content {
            manifest: text(&release["manifest"]),
            config: match &release["config"] {
                Value::Null => Value::Object(Default::default()),
                v => v.clone(),
            },
            chart_name: text(&metadata["name"]),
            chart_version: text(&metadata["version"]),
            app_version: text(&metadata["appVersion"]),
            description: text(&release["info"]["description"]),
        })
    }
}

/// Reads the revisions of `release` in `namespace`.
pub async fn history(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> Result<History, kube::Error> {
    let wanted = [(namespace.to_string(), release.to_string())];
    Ok(histories(client, &wanted).await?.pop().unwrap_or_default())
}

/// Release names per list request (they go into the label selector).
const NAMES_PER_LIST: usize = 100;

/// Reads the revisions of many releases, in the order given: one list of
/// Helm's Secrets across namespaces per hundred names, or one per
/// namespace where RBAC allows no more.
pub async fn histories(
    client: &kube::Client,
    releases: &[(String, String)],
) -> Result<Vec<History>, kube::Error> {
    let mut found: BTreeMap<(String, String), History> = BTreeMap::new();
    let names: std::collections::BTreeSet<&str> =
        releases.iter().map(|(_, n)| n.as_str()).collect();
    let names: Vec<&str> = names.into_iter().collect();
    for chunk in names.chunks(NAMES_PER_LIST) {
        let selector = format!("owner=helm,name in ({})", chunk.join(","));
        let params = ListParams::default().labels(&selector);
        let all: Api<Secret> = Api::all(client.clone());
        let secrets = match all.list(&params).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(status)) if status.code == 403 => {
                let namespaces: std::collections::BTreeSet<&str> =
                    releases.iter().map(|(ns, _)| ns.as_str()).collect();
                let mut items = Vec::new();
                for ns in namespaces {
                    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
                    items.extend(api.list(&params).await?.items);
                }
                items
            }
            Err(e) => return Err(e),
        };
        for secret in secrets {
            let namespace = secret.metadata.namespace.clone().unwrap_or_default();
            let Some(name) = secret.metadata.labels.as_ref().and_then(|l| l.get("name")) else {
                continue;
            };
            let key = (namespace, name.clone());
            found.entry(key).or_default().add(secret);
        }
    }
    Ok(releases
        .iter()
        .map(|key| {
            let mut history = found.remove(key).unwrap_or_default();
            history.records.sort_by_key(|r| r.version);
            history
        })
        .collect())
}

impl History {
    /// Adds one stored revision.
    fn add(&mut self, secret: Secret) {
        if secret.type_.as_deref() != Some("helm.sh/release.v1") {
            return;
        }
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let Some(version) = labels.get("version").and_then(|v| v.parse().ok()) else {
            return;
        };
        self.records.push(Record {
            version,
            status: labels.get("status").cloned().unwrap_or_default(),
            labels: labels
                .iter()
                .filter(|(k, _)| !HELM_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
        self.secrets.insert(version, secret);
    }
}
