//! A HelmRelease (helm.fluxcd.io/v1) object in, the release it asks for out:
//! its Helm name and namespace, where the chart comes from, where the values
//! come from, and how to run helm. Pure: no I/O.

use std::time::Duration;

use serde_json::Value;

use crate::model::ObjectRef;

pub const GROUP: &str = "helm.fluxcd.io";
pub const KIND: &str = "HelmRelease";

/// helm-operator's default for `spec.timeout`, in seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// helm-operator's default for `spec.maxHistory`.
const DEFAULT_MAX_HISTORY: u64 = 10;

pub fn is_helm_release(id: &ObjectRef) -> bool {
    is_helm_release_kind(&id.group, &id.kind)
}

pub fn is_helm_release_kind(group: &str, kind: &str) -> bool {
    group == GROUP && kind == KIND
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartSource {
    /// `chart: {git, ref, path}`: a chart directory in a Git repository.
    Git {
        url: String,
        git_ref: String,
        path: String,
    },
    /// `chart: {repository, name, version}`: a chart from a Helm repository.
    Repository {
        url: String,
        name: String,
        version: String,
        /// Secret with `username` and `password` for the repository.
        pull_secret: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuesSource {
    ConfigMap {
        name: String,
        namespace: String,
        key: String,
        optional: bool,
    },
    Secret {
        name: String,
        namespace: String,
        key: String,
        optional: bool,
    },
    /// A values file inside the chart.
    ChartFile { path: String, optional: bool },
    /// A values file at a URL.
    External { url: String, optional: bool },
}

impl ValuesSource {
    pub fn optional(&self) -> bool {
        match self {
            ValuesSource::ConfigMap { optional, .. }
            | ValuesSource::Secret { optional, .. }
            | ValuesSource::ChartFile { optional, .. }
            | ValuesSource::External { optional, .. } => *optional,
        }
    }
}

impl std::fmt::Display for ValuesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValuesSource::ConfigMap {
                name,
                namespace,
                key,
                ..
            } => write!(f, "ConfigMap {namespace}/{name} key {key}"),
            ValuesSource::Secret {
                name,
                namespace,
                key,
                ..
            } => write!(f, "Secret {namespace}/{name} key {key}"),
            ValuesSource::ChartFile { path, .. } => write!(f, "chart file {path}"),
            ValuesSource::External { url, .. } => {
                write!(f, "{}", crate::source::remote::redact(url))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rollback {
    pub enable: bool,
    pub force: bool,
    pub recreate: bool,
    pub disable_hooks: bool,
    pub wait: bool,
    pub timeout: Option<Duration>,
    /// Try a failed upgrade again, up to `max_retries` times.
    pub retry: bool,
    pub max_retries: u64,
}

/// What one HelmRelease asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSpec {
    /// The HelmRelease object.
    pub id: ObjectRef,
    pub generation: i64,
    pub release_name: String,
    pub target_namespace: String,
    pub chart: ChartSource,
    pub values_from: Vec<ValuesSource>,
    /// `spec.values`, always a mapping.
    pub values: Value,
    pub timeout: Duration,
    pub wait: bool,
    pub rollback: Rollback,
    pub force_upgrade: bool,
    pub skip_crds: bool,
    pub max_history: u64,
    /// `disableOpenAPIValidation`: helm does not validate the rendered
    /// objects against the cluster's OpenAPI schema.
    pub disable_openapi_validation: bool,
    /// `resetValues` (default true): `--reset-values`; false: `--reuse-values`.
    pub reset_values: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "helmVersion v2 is not supported: tidegate runs Helm 3; migrate the release with helm-2to3 and set helmVersion: v3"
    )]
    HelmV2,
    #[error("spec.chart needs either git and path, or repository, name and version")]
    NoChart,
    #[error("spec.chart.{field} is missing")]
    ChartField { field: &'static str },
    #[error(
        "spec.chart.path {path:?} must stay inside the repository (a relative path without ..)"
    )]
    ChartPath { path: String },
    #[error(
        "spec.valuesFrom[{index}].chartFileRef.path {path:?} must stay inside the chart (a relative path without ..)"
    )]
    ChartFilePath { index: usize, path: String },
    #[error("spec.values must be a mapping")]
    Values,
    #[error(
        "spec.valuesFrom[{index}] names no configMapKeyRef, secretKeyRef, chartFileRef or externalSourceRef"
    )]
    ValuesFrom { index: usize },
    #[error("spec.valuesFrom[{index}].{what}.{field} is missing")]
    ValuesFromField {
        index: usize,
        what: &'static str,
        field: &'static str,
    },
    #[error(
        "release name {name:?} is not valid for Helm (at most 53 lowercase letters, digits, '-' and '.'); set spec.releaseName"
    )]
    ReleaseName { name: String },
}

/// The Helm release name helm-operator chose: `spec.releaseName`, else
/// `<targetNamespace>-<name>`, or `<namespace>-<targetNamespace>-<name>`
/// when the HelmRelease lives in another namespace than its release.
pub fn release_name(
    namespace: &str,
    name: &str,
    target_namespace: Option<&str>,
    release_name: Option<&str>,
) -> String {
    if let Some(given) = release_name.filter(|n| !n.is_empty()) {
        return given.to_string();
    }
    match target_namespace.filter(|t| !t.is_empty() && *t != namespace) {
        Some(target) => format!("{namespace}-{target}-{name}"),
        None => format!("{namespace}-{name}"),
    }
}

fn valid_release_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 53
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Longest a helm operation may be given (`timeout`, `rollback.timeout`):
/// Git chooses it, and an operation holds its release until it ends.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

fn seconds(value: &Value) -> Option<Duration> {
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .map(|s| Duration::from_secs(s.min(MAX_TIMEOUT_SECS)))
}

fn text(value: &Value) -> Option<String> {
    value.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// A relative path that cannot leave the repository.
fn inside(path: &str) -> bool {
    let p = std::path::Path::new(path);
    !p.is_absolute()
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

fn chart(spec: &Value) -> Result<ChartSource, SpecError> {
    let chart = &spec["chart"];
    if let Some(url) = text(&chart["git"]) {
        let path = text(&chart["path"]).ok_or(SpecError::ChartField { field: "path" })?;
        if !inside(&path) {
            return Err(SpecError::ChartPath { path });
        }
        return Ok(ChartSource::Git {
            url,
            git_ref: text(&chart["ref"]).unwrap_or_else(|| "master".into()),
            path,
        });
    }
    if let Some(url) = text(&chart["repository"]) {
        return Ok(ChartSource::Repository {
            url,
            name: text(&chart["name"]).ok_or(SpecError::ChartField { field: "name" })?,
            version: text(&chart["version"]).ok_or(SpecError::ChartField { field: "version" })?,
            pull_secret: text(&chart["chartPullSecret"]["name"]),
        });
    }
    Err(SpecError::NoChart)
}

fn values_from(spec: &Value, namespace: &str) -> Result<Vec<ValuesSource>, SpecError> {
    // helm-operator's deprecated valueFileSecrets come first: key
    // values.yaml of each Secret, in the HelmRelease's namespace.
    let mut sources: Vec<ValuesSource> = spec["valueFileSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| text(&s["name"]))
        .map(|name| ValuesSource::Secret {
            name,
            namespace: namespace.to_string(),
            key: "values.yaml".into(),
            optional: false,
        })
        .collect();
    let Some(entries) = spec["valuesFrom"].as_array() else {
        return Ok(sources);
    };
    for (index, entry) in entries.iter().enumerate() {
        let missing = |what, field| SpecError::ValuesFromField { index, what, field };
        let optional = |r: &Value| r["optional"].as_bool().unwrap_or(false);
        let key_ref = |what: &'static str| -> Result<(String, String, String, bool), SpecError> {
            let r = &entry[what];
            Ok((
                text(&r["name"]).ok_or(missing(what, "name"))?,
                text(&r["namespace"]).unwrap_or_else(|| namespace.to_string()),
                text(&r["key"]).unwrap_or_else(|| "values.yaml".into()),
                optional(r),
            ))
        };
        let source = if entry["configMapKeyRef"].is_object() {
            let (name, namespace, key, optional) = key_ref("configMapKeyRef")?;
            ValuesSource::ConfigMap {
                name,
                namespace,
                key,
                optional,
            }
        } else if entry["secretKeyRef"].is_object() {
            let (name, namespace, key, optional) = key_ref("secretKeyRef")?;
            ValuesSource::Secret {
                name,
                namespace,
                key,
                optional,
            }
        } else if entry["chartFileRef"].is_object() {
            let r = &entry["chartFileRef"];
            let path = text(&r["path"]).ok_or(missing("chartFileRef", "path"))?;
            if !inside(&path) {
                return Err(SpecError::ChartFilePath { index, path });
            }
            ValuesSource::ChartFile {
                path,
                optional: optional(r),
            }
        } else if entry["externalSourceRef"].is_object() {
            let r = &entry["externalSourceRef"];
            ValuesSource::External {
                url: text(&r["url"]).ok_or(missing("externalSourceRef", "url"))?,
                optional: optional(r),
            }
        } else {
            return Err(SpecError::ValuesFrom { index });
        };
        sources.push(source);
    }
    Ok(sources)
}

/// HelmReleases that ask for a Helm release another one asks for too (same
/// release name in the same namespace): each with why it is refused, naming
/// the others. Neither may run: each sync would make a new revision.
pub fn duplicates<'a>(
    releases: impl IntoIterator<Item = (&'a ObjectRef, (&'a str, &'a str))>,
) -> std::collections::HashMap<ObjectRef, String> {
    let mut by_release: std::collections::BTreeMap<(&str, &str), Vec<&ObjectRef>> =
        Default::default();
    for (id, key) in releases {
        by_release.entry(key).or_default().push(id);
    }
    let mut refused = std::collections::HashMap::new();
    for ((namespace, name), ids) in by_release.into_iter().filter(|(_, ids)| ids.len() > 1) {
        for id in &ids {
            let others: Vec<String> = ids
                .iter()
                .filter(|o| o != &id)
                .map(|o| o.to_string())
                .collect();
            refused.insert(
                (*id).clone(),
                format!(
                    "Helm release {namespace}/{name} is also asked for by {}; give one another spec.releaseName",
                    others.join(", ")
                ),
            );
        }
    }
    refused
}

/// Reads a placed HelmRelease (its namespace filled in).
pub fn parse(id: &ObjectRef, object: &Value) -> Result<ReleaseSpec, SpecError> {
    let spec = &object["spec"];
    if spec["helmVersion"].as_str() == Some("v2") {
        return Err(SpecError::HelmV2);
    }
    let namespace = id.namespace.clone().unwrap_or_else(|| "default".into());
    let target_namespace = text(&spec["targetNamespace"]).unwrap_or_else(|| namespace.clone());
    let release_name = release_name(
        &namespace,
        &id.name,
        Some(&target_namespace),
        spec["releaseName"].as_str(),
    );
    if !valid_release_name(&release_name) {
        return Err(SpecError::ReleaseName { name: release_name });
    }
    let values = match &spec["values"] {
        Value::Null => Value::Object(Default::default()),
        v @ Value::Object(_) => v.clone(),
        _ => return Err(SpecError::Values),
    };
    let rollback = &spec["rollback"];
    Ok(ReleaseSpec {
        id: id.clone(),
        generation: object["metadata"]["generation"].as_i64().unwrap_or(0),
        release_name,
        target_namespace,
        chart: chart(spec)?,
        values_from: values_from(spec, &namespace)?,
        values,
        timeout: seconds(&spec["timeout"]).unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
        wait: spec["wait"].as_bool().unwrap_or(false),
        rollback: Rollback {
            enable: rollback["enable"].as_bool().unwrap_or(false),
            force: rollback["force"].as_bool().unwrap_or(false),
            recreate: rollback["recreate"].as_bool().unwrap_or(false),
            disable_hooks: rollback["disableHooks"].as_bool().unwrap_or(false),
            wait: rollback["wait"].as_bool().unwrap_or(false),
            timeout: seconds(&rollback["timeout"]),
            retry: rollback["retry"].as_bool().unwrap_or(false),
            max_retries: rollback["maxRetries"].as_u64().unwrap_or(5),
        },
        force_upgrade: spec["forceUpgrade"].as_bool().unwrap_or(false),
        skip_crds: spec["skipCRDs"].as_bool().unwrap_or(false),
        max_history: spec["maxHistory"].as_u64().unwrap_or(DEFAULT_MAX_HISTORY),
        disable_openapi_validation: spec["disableOpenAPIValidation"].as_bool().unwrap_or(false),
        reset_values: spec["resetValues"].as_bool().unwrap_or(true),
    })
}

/// Merges `over` into `base`: mappings key by key, recursively; anything
/// else in `over` replaces what `base` has, as Helm merges values files.
pub fn merge_values(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (key, value) in o {
                match b.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge_values(existing, value)
                    }
                    _ => {
                        b.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

#[cfg(test)]
mod tests {

    /// Issue 19: a timeout from Git is bounded, so no operation holds its
    /// release (and the daemon's helm process) for longer than an hour.
    #[test]
    fn timeouts_from_git_are_bounded() {
        let id = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "r");
        let object = serde_json::json!({"spec": {
            "chart": {"git": "g", "path": "p"},
            "timeout": 315_360_000u64,
            "rollback": {"timeout": "99999999"}
        }});
        let spec = parse(&id, &object).unwrap();
        assert_eq!(spec.timeout, Duration::from_secs(MAX_TIMEOUT_SECS));
        assert_eq!(
            spec.rollback.timeout,
            Some(Duration::from_secs(MAX_TIMEOUT_SECS))
        );
    }

    /// Issue 19: helm-operator's fields, with helm-operator's meaning.
    #[test]
    fn helm_operator_fields_mean_what_they_meant() {
        let id = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "r");
        let object = serde_json::json!({"spec": {
            "chart": {"git": "https://example.com/r.git", "path": "charts/r"},
            "valueFileSecrets": [{"name": "old-style"}],
            "valuesFrom": [{"configMapKeyRef": {"name": "cm"}}],
            "disableOpenAPIValidation": true,
            "resetValues": false,
            "test": {"enable": true}
        }});
        let spec = parse(&id, &object).unwrap();
        assert_eq!(
            spec.values_from[0],
            ValuesSource::Secret {
                name: "old-style".into(),
                namespace: "team".into(),
                key: "values.yaml".into(),
                optional: false
            },
            "valueFileSecrets come first"
        );
        assert!(matches!(
            spec.values_from[1],
            ValuesSource::ConfigMap { .. }
        ));
        assert!(spec.disable_openapi_validation);
        assert!(!spec.reset_values);
        let plain = serde_json::json!({"spec": {"chart": {"git": "g", "path": "p"}}});
        assert!(parse(&id, &plain).unwrap().reset_values, "reset by default");
    }

    /// Issue 19, item 14: the field that is wrong is the one named.
    #[test]
    fn a_values_file_out_of_the_chart_names_chart_file_ref() {
        let id = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "r");
        let object = serde_json::json!({"spec": {
            "chart": {"git": "https://example.com/r.git", "path": "charts/r"},
            "valuesFrom": [{"chartFileRef": {"path": "../../secrets.yaml"}}]
        }});
        let err = parse(&id, &object).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.valuesFrom[0].chartFileRef.path"),
            "{err}"
        );
        assert!(!err.contains("spec.chart.path"), "{err}");
    }

    #[test]
    fn two_helm_releases_of_one_release_are_both_refused() {
        let a = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "a");
        let b = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("other"), "b");
        let c = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "c");
        let refused = duplicates([
            (&a, ("team", "web")),
            (&b, ("team", "web")),
            (&c, ("team", "api")),
        ]);
        assert_eq!(refused.len(), 2);
        assert!(
            refused[&a]
                .contains("team/web is also asked for by helm.fluxcd.io/v1 HelmRelease other/b"),
            "{}",
            refused[&a]
        );
        assert!(
            refused[&b].contains("HelmRelease team/a"),
            "{}",
            refused[&b]
        );
        assert!(!refused.contains_key(&c));
    }

    use super::*;
    use serde_json::json;

    fn hr(namespace: &str, spec: Value) -> (ObjectRef, Value) {
        let id = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some(namespace), "web");
        let object = json!({"metadata": {"name": "web", "namespace": namespace, "generation": 3}, "spec": spec});
        (id, object)
    }

    #[test]
    fn release_names_as_helm_operator_chose_them() {
        assert_eq!(release_name("demo", "web", None, None), "demo-web");
        assert_eq!(release_name("demo", "web", Some("demo"), None), "demo-web");
        assert_eq!(
            release_name("flux", "web", Some("shop"), None),
            "flux-shop-web"
        );
        assert_eq!(
            release_name("flux", "web", Some("shop"), Some("web")),
            "web"
        );
    }

    #[test]
    fn git_chart_with_defaults() {
        let (id, object) = hr(
            "demo",
            json!({"chart": {"git": "git@github.com:example/cluster-state", "path": "charts/web"}}),
        );
        let spec = parse(&id, &object).unwrap();
        assert_eq!(spec.release_name, "demo-web");
        assert_eq!(spec.target_namespace, "demo");
        assert_eq!(spec.generation, 3);
        assert_eq!(spec.timeout, Duration::from_secs(300));
        assert_eq!(spec.max_history, 10);
        assert_eq!(
            spec.chart,
            ChartSource::Git {
                url: "git@github.com:example/cluster-state".into(),
                git_ref: "master".into(),
                path: "charts/web".into()
            }
        );
        assert_eq!(spec.values, json!({}));
    }

    #[test]
    fn repository_chart_values_from_and_rollback() {
        let (id, object) = hr(
            "flux",
            json!({
                "targetNamespace": "shop",
                "timeout": 60,
                "wait": true,
                "rollback": {"enable": true, "timeout": 120},
                "chart": {"repository": "https://charts.example.com/", "name": "web", "version": "1.2.3",
                          "chartPullSecret": {"name": "repo-auth"}},
                "valuesFrom": [
                    {"configMapKeyRef": {"name": "cm", "optional": true}},
                    {"secretKeyRef": {"name": "s", "namespace": "other", "key": "v.yaml"}},
                    {"chartFileRef": {"path": "values-prod.yaml"}},
                    {"externalSourceRef": {"url": "https://example.com/values.yaml"}}
                ],
                "values": {"replicaCount": 2}
            }),
        );
        let spec = parse(&id, &object).unwrap();
        assert_eq!(spec.release_name, "flux-shop-web");
        assert_eq!(spec.target_namespace, "shop");
        assert!(spec.wait && spec.rollback.enable);
        assert_eq!(spec.rollback.timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            spec.values_from[0],
            ValuesSource::ConfigMap {
                name: "cm".into(),
                namespace: "flux".into(),
                key: "values.yaml".into(),
                optional: true
            }
        );
        assert_eq!(spec.values_from[1].to_string(), "Secret other/s key v.yaml");
        assert_eq!(spec.values_from.len(), 4);
        assert!(matches!(
            spec.chart,
            ChartSource::Repository { ref pull_secret, .. } if pull_secret.as_deref() == Some("repo-auth")
        ));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            (
                json!({"helmVersion": "v2", "chart": {"git": "x", "path": "c"}}),
                "helmVersion v2",
            ),
            (json!({"chart": {}}), "either git and path"),
            (json!({"chart": {"git": "x"}}), "spec.chart.path is missing"),
            (
                json!({"chart": {"git": "x", "path": "../../etc"}}),
                "inside the repository",
            ),
            (
                json!({"chart": {"repository": "https://c", "name": "web"}}),
                "spec.chart.version",
            ),
            (
                json!({"chart": {"git": "x", "path": "c"}, "valuesFrom": [{"bogus": {}}]}),
                "spec.valuesFrom[0] names no",
            ),
            (
                json!({"chart": {"git": "x", "path": "c"}, "releaseName": "Has_Upper"}),
                "not valid for Helm",
            ),
            (
                json!({"chart": {"git": "x", "path": "c"}, "values": [1]}),
                "must be a mapping",
            ),
        ];
        for (spec, expected) in cases {
            let (id, object) = hr("demo", spec.clone());
            let e = parse(&id, &object).unwrap_err().to_string();
            assert!(e.contains(expected), "{spec}: {e}");
        }
    }

    #[test]
    fn values_merge_deeply_later_wins() {
        let mut merged =
            json!({"image": {"repository": "nginx", "tag": "1.0"}, "ports": [80], "keep": 1});
        merge_values(
            &mut merged,
            &json!({"image": {"tag": "2.0"}, "ports": [8080], "new": true}),
        );
        assert_eq!(
            merged,
            json!({"image": {"repository": "nginx", "tag": "2.0"}, "ports": [8080], "keep": 1, "new": true})
        );
    }
}
