//! Proxy settings as Git state: a `tidegate.dev/v1` `ProxySettings`
//! document in the repository (consumed by the render, never applied) in;
//! its variables injected into every container of every workload out.
//! Pure.
//!
//! ```yaml
//! apiVersion: tidegate.dev/v1
//! kind: ProxySettings
//! metadata: {name: proxy}
//! spec:
//!   httpProxy: http://proxy.internal:3128
//!   httpsProxy: http://proxy.internal:3128
//!   noProxy: .cluster.local,10.0.0.0/8
//! ```

use serde_json::{Value, json};

pub use crate::model::proxy::ProxySettings;

pub const GROUP: &str = "tidegate.dev";
pub const KIND: &str = "ProxySettings";
/// `disabled` on a workload leaves its containers as they are.
pub const OPT_OUT_ANNOTATION: &str = "tidegate.dev/proxy";

pub fn is_proxy_settings(api_version: &str, kind: &str) -> bool {
    api_version.split('/').next() == Some(GROUP) && kind == KIND
}

/// Where a workload kind keeps its pod spec.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
            &["spec", "template", "spec"]
        }
        _ => return None,
    })
}

/// Adds the proxy variables to every container and init container of a
/// workload that does not set them itself, unless the workload opts out.
/// Returns whether anything was added.
pub fn inject(object: &mut Value, settings: &ProxySettings) -> bool {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(path) = pod_spec_path(&kind) else {
        return false;
    };
    if object["metadata"]["annotations"][OPT_OUT_ANNOTATION].as_str() == Some("disabled") {
        return false;
    }
    let mut spec = &mut *object;
    for key in path {
        match spec.get_mut(*key) {
            Some(next) => spec = next,
            None => return false,
        }
    }
    let variables = settings.variables();
    let mut changed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            changed |= inject_container(container, &variables);
        }
    }
    changed
}

fn inject_container(container: &mut Value, variables: &[(String, String)]) -> bool {
    let Some(object) = container.as_object_mut() else {
        return false;
    };
    let env = object.entry("env").or_insert_with(|| json!([]));
    let Some(env) = env.as_array_mut() else {
        return false;
    };
    // A variable the container sets in either case is its own, both cases.
    let set: Vec<String> = env
        .iter()
        .filter_map(|e| e["name"].as_str())
        .map(str::to_ascii_uppercase)
        .collect();
    let mut changed = false;
    for (name, value) in variables {
        if !set.contains(&name.to_ascii_uppercase()) {
            env.push(json!({"name": name, "value": value}));
            changed = true;
        }
    }
    if env.is_empty() {
        object.remove("env");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProxySettings {
        ProxySettings::from_object(&json!({"spec": {
            "httpProxy": "http://proxy:3128", "httpsProxy": "http://proxy:3128", "noProxy": ".local"
        }}))
    }

    fn env_names(container: &Value) -> Vec<&str> {
        container["env"]
            .as_array()
            .map(|e| e.iter().map(|v| v["name"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_container_of_every_workload_kind() {
        for (kind, path) in [
            ("Deployment", "/spec/template/spec"),
            ("StatefulSet", "/spec/template/spec"),
            ("DaemonSet", "/spec/template/spec"),
            ("Job", "/spec/template/spec"),
            ("CronJob", "/spec/jobTemplate/spec/template/spec"),
            ("Pod", "/spec"),
        ] {
            let mut pod =
                json!({"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]});
            let mut object = json!({"kind": kind, "metadata": {"name": "x"}});
            // Build the path down to the pod spec.
            let keys: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            for key in keys.iter().rev() {
                pod = json!({ *key: pod });
            }
            object
                .as_object_mut()
                .unwrap()
                .extend(pod.as_object().unwrap().clone());
            assert!(inject(&mut object, &settings()), "{kind}");
            let spec = object.pointer(path).unwrap();
            for list in ["containers", "initContainers"] {
                assert_eq!(
                    env_names(&spec[list][0]),
                    [
                        "HTTP_PROXY",
                        "http_proxy",
                        "HTTPS_PROXY",
                        "https_proxy",
                        "NO_PROXY",
                        "no_proxy"
                    ],
                    "{kind} {list}"
                );
            }
        }
    }

    #[test]
    fn what_a_container_sets_stays_and_opting_out_works() {
        let mut deployment = json!({"kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "own", "env": [{"name": "https_proxy", "value": "http://mine"}]}]}}}});
        assert!(inject(&mut deployment, &settings()));
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        let names = env_names(&deployment["spec"]["template"]["spec"]["containers"][0]);
        assert_eq!(
            names,
            [
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "NO_PROXY",
                "no_proxy"
            ]
        );
        assert_eq!(env[0]["value"], "http://mine");
        // Injecting again adds nothing.
        assert!(!inject(&mut deployment, &settings()));

        let mut opted_out = json!({"kind": "Deployment",
            "metadata": {"name": "x", "annotations": {OPT_OUT_ANNOTATION: "disabled"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}});
        assert!(!inject(&mut opted_out, &settings()));
        assert!(
            opted_out["spec"]["template"]["spec"]["containers"][0]
                .get("env")
                .is_none()
        );

        let mut config = json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}});
        assert!(!inject(&mut config, &settings()));
    }

    #[test]
    fn only_the_variables_given() {
        let s = ProxySettings::from_object(
            &json!({"spec": {"httpsProxy": "http://p:1", "noProxy": ""}}),
        );
        assert_eq!(
            s.variables(),
            [
                ("HTTPS_PROXY".to_string(), "http://p:1".to_string()),
                ("https_proxy".to_string(), "http://p:1".to_string())
            ]
        );
        assert!(is_proxy_settings("tidegate.dev/v1", "ProxySettings"));
        assert!(!is_proxy_settings("v1", "ProxySettings"));
    }
}
