//! The namespace allow-list over Helm: a release in, whether it may run out.
//!
//! helm runs with tidegate's credentials, so under `--k8s-allow-namespace`
//! a release is held to the same rule as a plain manifest: its target
//! namespace, every namespace its values are read from, and every object
//! its chart renders (hooks and CRDs included) must be allowed, and no
//! rendered object may be cluster-scoped. The post-renderer checks the
//! objects helm installs once more, against the kinds checked here.

use serde_json::Value;

use super::release::{ReleaseSpec, ValuesSource};
use crate::model::ObjectRef;
use crate::plan::namespace_refusal;

/// Why the release may not run under the allow-list, naming the field.
pub fn spec_refusal(spec: &ReleaseSpec, allowed: &[String]) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let listed = || allowed.join(", ");
    if !allowed.contains(&spec.target_namespace) {
        return Some(format!(
            "spec.targetNamespace {} is not allowed (--k8s-allow-namespace: {})",
            spec.target_namespace,
            listed()
        ));
    }
    spec.values_from.iter().enumerate().find_map(|(i, source)| {
        let (field, namespace) = match source {
            ValuesSource::ConfigMap { namespace, .. } => ("configMapKeyRef", namespace),
            ValuesSource::Secret { namespace, .. } => ("secretKeyRef", namespace),
            _ => return None,
        };
        (!allowed.contains(namespace)).then(|| {
            format!(
                "spec.valuesFrom[{i}].{field} reads from namespace {namespace}, which is not allowed (--k8s-allow-namespace: {})",
                listed()
            )
        })
    })
}

/// One object a chart renders: its ref (namespace filled in with the
/// release's for a namespaced kind) and the kind's scope.
pub struct Rendered {
    pub id: ObjectRef,
    pub namespaced: Option<bool>,
}

/// Why a chart's rendered objects may not be installed: the first object
/// that breaks the rule, and the rule.
pub fn objects_refusal(objects: &[Rendered], allowed: &[String]) -> Option<String> {
    objects.iter().find_map(|o| match o.namespaced {
        None => Some(format!(
            "the chart renders {}, whose kind the API server does not serve, so its scope cannot be checked against --k8s-allow-namespace",
            o.id
        )),
        Some(_) => namespace_refusal(&o.id, allowed)
            .map(|why| format!("the chart renders {}: {why}", o.id)),
    })
}

/// The object ref of a rendered document (`None` namespace as written).
pub fn rendered_ref(doc: &Value) -> Option<ObjectRef> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    let api_version = text(&doc["apiVersion"])?;
    let kind = text(&doc["kind"])?;
    let name = text(&doc["metadata"]["name"]).unwrap_or_default();
    let namespace = text(&doc["metadata"]["namespace"]);
    Some(ObjectRef::new(
        &api_version,
        &kind,
        namespace.as_deref(),
        &name,
    ))
}

/// `group/Kind` as the post-renderer is told the checked namespaced kinds.
pub fn kind_key(id: &ObjectRef) -> String {
    format!("{}/{}", id.group, id.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(target: &str, values_from: Vec<ValuesSource>) -> ReleaseSpec {
        let object = json!({
            "apiVersion": "helm.fluxcd.io/v1",
            "kind": "HelmRelease",
            "metadata": {"name": "r", "namespace": "team"},
            "spec": {
                "targetNamespace": target,
                "chart": {"git": "https://example.com/r.git", "path": "charts/r"}
            }
        });
        let id = ObjectRef::new("helm.fluxcd.io/v1", "HelmRelease", Some("team"), "r");
        let mut spec = super::super::release::parse(&id, &object).unwrap();
        spec.values_from = values_from;
        spec
    }

    #[test]
    fn a_release_is_bound_by_the_allow_list() {
        let allowed = vec!["team".to_string()];
        assert_eq!(spec_refusal(&spec("team", vec![]), &allowed), None);
        assert_eq!(spec_refusal(&spec("kube-system", vec![]), &[]), None);
        let why = spec_refusal(&spec("kube-system", vec![]), &allowed).unwrap();
        assert!(
            why.starts_with("spec.targetNamespace kube-system is not allowed"),
            "{why}"
        );
        let secret = ValuesSource::Secret {
            name: "admin".into(),
            namespace: "kube-system".into(),
            key: "values.yaml".into(),
            optional: false,
        };
        let why = spec_refusal(&spec("team", vec![secret]), &allowed).unwrap();
        assert!(
            why.starts_with("spec.valuesFrom[0].secretKeyRef reads from namespace kube-system"),
            "{why}"
        );
    }

    #[test]
    fn rendered_objects_must_be_namespaced_and_allowed() {
        let allowed = vec!["team".to_string()];
        let mk = |api: &str, kind: &str, ns: Option<&str>, namespaced| Rendered {
            id: ObjectRef::new(api, kind, ns, "x"),
            namespaced,
        };
        let fine = [mk("v1", "ConfigMap", Some("team"), Some(true))];
        assert_eq!(objects_refusal(&fine, &allowed), None);
        let binding = [
            mk("v1", "ConfigMap", Some("team"), Some(true)),
            mk(
                "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding",
                None,
                Some(false),
            ),
        ];
        let why = objects_refusal(&binding, &allowed).unwrap();
        assert!(
            why.contains("ClusterRoleBinding x: it is cluster-scoped"),
            "{why}"
        );
        let elsewhere = [mk("v1", "Secret", Some("kube-system"), Some(true))];
        assert!(
            objects_refusal(&elsewhere, &allowed)
                .unwrap()
                .contains("kube-system")
        );
        let unknown = [mk("example.com/v1", "Widget", Some("team"), None)];
        assert!(
            objects_refusal(&unknown, &allowed)
                .unwrap()
                .contains("does not serve")
        );
    }
}
