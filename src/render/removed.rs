//! API versions that Kubernetes no longer serves: which version replaces each,
//! and whether an object can move to it unchanged.

/// A removed `group/version` of one kind and what to use instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub replacement: &'static str,
    /// The schema did not change: the object is valid under the replacement
    /// as written, so `--upgrade-removed-apis` may move it.
    pub same_schema: bool,
}

const fn r(replacement: &'static str, same_schema: bool) -> Option<Removed> {
    Some(Removed {
        replacement,
        same_schema,
    })
}

/// Looks up `api_version` + `kind`; `None` when that version is still served.
pub fn lookup(api_version: &str, kind: &str) -> Option<Removed> {
    match (api_version, kind) {
        // Removed in 1.16: selector became required and defaults changed.
        ("extensions/v1beta1", "Deployment" | "DaemonSet" | "ReplicaSet") => r("apps/v1", false),
        (
            "apps/v1beta1" | "apps/v1beta2",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet",
        ) => r("apps/v1", false),
        ("extensions/v1beta1", "NetworkPolicy") => r("networking.k8s.io/v1", true),
        ("extensions/v1beta1", "PodSecurityPolicy") | ("policy/v1beta1", "PodSecurityPolicy") => {
            None
        }
        // Ingress moved twice; v1 renamed the backend fields.
        ("extensions/v1beta1" | "networking.k8s.io/v1beta1", "Ingress") => {
            r("networking.k8s.io/v1", false)
        }
        ("networking.k8s.io/v1beta1", "IngressClass") => r("networking.k8s.io/v1", true),
        ("batch/v1beta1", "CronJob") => r("batch/v1", true),
        ("policy/v1beta1", "PodDisruptionBudget") => r("policy/v1", false),
        (
            "storage.k8s.io/v1beta1",
            "StorageClass" | "VolumeAttachment" | "CSIDriver" | "CSINode",
        ) => r("storage.k8s.io/v1", true),
        ("storage.k8s.io/v1beta1", "CSIStorageCapacity") => r("storage.k8s.io/v1", true),
        (
            "rbac.authorization.k8s.io/v1beta1" | "rbac.authorization.k8s.io/v1alpha1",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding",
        ) => r("rbac.authorization.k8s.io/v1", true),
        ("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition") => {
            r("apiextensions.k8s.io/v1", false)
        }
        (
            "admissionregistration.k8s.io/v1beta1",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => r("admissionregistration.k8s.io/v1", false),
        ("scheduling.k8s.io/v1beta1" | "scheduling.k8s.io/v1alpha1", "PriorityClass") => {
            r("scheduling.k8s.io/v1", true)
        }
        ("coordination.k8s.io/v1beta1", "Lease") => r("coordination.k8s.io/v1", true),
        ("autoscaling/v2beta2", "HorizontalPodAutoscaler") => r("autoscaling/v2", true),
        ("autoscaling/v2beta1", "HorizontalPodAutoscaler") => r("autoscaling/v2", false),
        ("node.k8s.io/v1beta1", "RuntimeClass") => r("node.k8s.io/v1", true),
        ("events.k8s.io/v1beta1", "Event") => r("events.k8s.io/v1", false),
        ("discovery.k8s.io/v1beta1", "EndpointSlice") => r("discovery.k8s.io/v1", false),
        ("certificates.k8s.io/v1beta1", "CertificateSigningRequest") => {
            r("certificates.k8s.io/v1", false)
        }
        ("apiregistration.k8s.io/v1beta1", "APIService") => r("apiregistration.k8s.io/v1", true),
        _ => None,
    }
}

/// PodSecurityPolicy was removed in 1.25 with nothing to replace it.
pub fn removed_without_replacement(api_version: &str, kind: &str) -> bool {
    kind == "PodSecurityPolicy" && matches!(api_version, "extensions/v1beta1" | "policy/v1beta1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_removals() {
        assert_eq!(lookup("batch/v1beta1", "CronJob"), r("batch/v1", true));
        assert_eq!(
            lookup("extensions/v1beta1", "Deployment"),
            r("apps/v1", false)
        );
        assert_eq!(lookup("apps/v1beta1", "Deployment"), r("apps/v1", false));
        assert_eq!(
            lookup("storage.k8s.io/v1beta1", "StorageClass"),
            r("storage.k8s.io/v1", true)
        );
        assert_eq!(
            lookup("policy/v1beta1", "PodDisruptionBudget"),
            r("policy/v1", false)
        );
        assert_eq!(
            lookup("networking.k8s.io/v1beta1", "Ingress"),
            r("networking.k8s.io/v1", false)
        );
        assert_eq!(
            lookup("rbac.authorization.k8s.io/v1beta1", "ClusterRoleBinding"),
            r("rbac.authorization.k8s.io/v1", true)
        );
        assert!(removed_without_replacement(
            "policy/v1beta1",
            "PodSecurityPolicy"
        ));
    }

    #[test]
    fn served_versions_are_not_removed() {
        assert_eq!(lookup("apps/v1", "Deployment"), None);
        assert_eq!(lookup("batch/v1", "CronJob"), None);
        assert_eq!(lookup("v1", "ConfigMap"), None);
        assert_eq!(lookup("example.com/v1beta1", "CronJob"), None);
    }
}
