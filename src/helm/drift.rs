//! Drift of a release's objects: the manifest Helm deployed and a live
//! object in, the first field where they differ out. Pure.
//!
//! The manifest is what the chart set; the API server adds defaults and
//! other controllers add fields, so a live object matches when it holds
//! every field the manifest sets, with the same value. Values the API
//! server writes differently (`80` and `"80"`, `1000m` and `1`, a Secret's
//! `stringData`) compare equal.

use base64::Engine;
use serde_json::Value;

/// The path of the first field the manifest sets that the live object
/// lacks or holds with another value (`spec.replicas`), if any.
pub fn first_difference(manifest: &Value, live: &Value) -> Option<String> {
    let mut desired = manifest.clone();
    if manifest["kind"] == "Secret" {
        desired = secret_as_data(desired);
    }
    let mut path = Vec::new();
    for key in [
        "metadata",
        "spec",
        "data",
        "binaryData",
        "rules",
        "subjects",
        "roleRef",
    ] {
        if let Some(d) = desired.get(key) {
            path.push(key.to_string());
            if differs(d, &live[key], &mut path) {
                return Some(path.join("."));
            }
            path.pop();
        }
    }
    None
}

/// `stringData` as the API server stores it: base64 under `data`.
fn secret_as_data(mut secret: Value) -> Value {
    if let Some(Value::Object(strings)) = secret.get("stringData").cloned() {
        let data = secret["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (k, v) in strings {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
        secret["data"] = Value::Object(data);
        secret.as_object_mut().map(|o| o.remove("stringData"));
    }
    secret
}

fn differs(desired: &Value, live: &Value, path: &mut Vec<String>) -> bool {
    match (desired, live) {
        (Value::Null, _) => false,
        (Value::Object(d), Value::Object(l)) => {
            for (key, value) in d {
                path.push(key.clone());
                let missing = Value::Null;
                let live_value = l.get(key).unwrap_or(&missing);
                let empty = match value {
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::String(s) => s.is_empty(),
                    _ => false,
                };
                // An empty value the API server drops is not a difference.
                if !(empty && live_value.is_null()) && differs(value, live_value, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        (Value::Array(d), Value::Array(l)) => {
            if l.len() < d.len() {
                return true;
            }
            for (i, item) in d.iter().enumerate() {
                path.push(i.to_string());
                if differs(item, &l[i], path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        (d, l) => !same_scalar(d, l),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn same_scalar(desired: &Value, live: &Value) -> bool {
    if desired == live {
        return true;
    }
    let (Some(d), Some(l)) = (scalar_text(desired), scalar_text(live)) else {
        return false;
    };
    d == l
        || matches!((quantity(&d), quantity(&l)), (Some(a), Some(b)) if (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0))
}

/// A Kubernetes quantity (`500m`, `1.5Gi`, `2e3`) as a number.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: Value, cpu: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                   {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                    "resources": {"requests": {"cpu": cpu}}}]}}}})
    }

    #[test]
    fn defaults_and_normalised_values_are_no_drift() {
        let manifest = deployment(json!(2), "1000m");
        let mut live = deployment(json!(2), "1");
        live["metadata"]["namespace"] = json!("demo");
        live["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        live["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"] = json!("TCP");
        live["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        live["status"] = json!({"replicas": 2});
        assert_eq!(first_difference(&manifest, &live), None);
    }

    #[test]
    fn a_hand_edit_is_drift_naming_the_field() {
        let manifest = deployment(json!(2), "1");
        assert_eq!(
            first_difference(&manifest, &deployment(json!(5), "1")).as_deref(),
            Some("spec.replicas")
        );
        let mut live = deployment(json!(2), "1");
        live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:latest");
        assert_eq!(
            first_difference(&manifest, &live).as_deref(),
            Some("spec.template.spec.containers.0.image")
        );
        let mut live = deployment(json!(2), "1");
        live["metadata"]["labels"] = json!({});
        assert_eq!(
            first_difference(&manifest, &live).as_deref(),
            Some("metadata.labels.app")
        );
    }

    #[test]
    fn secrets_compare_string_data_with_data() {
        let manifest = json!({"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        let live = json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "aHVudGVyMg=="}});
        assert_eq!(first_difference(&manifest, &live), None);
        let changed =
            json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "b3RoZXI="}});
        assert_eq!(
            first_difference(&manifest, &changed).as_deref(),
            Some("data.password")
        );
    }

    #[test]
    fn numbers_as_strings_and_quantities() {
        assert!(same_scalar(&json!(80), &json!("80")));
        assert!(same_scalar(&json!("0.5"), &json!("500m")));
        assert!(same_scalar(&json!("1Gi"), &json!("1024Mi")));
        assert!(!same_scalar(&json!("1Gi"), &json!("1G")));
        assert!(!same_scalar(&json!("web"), &json!("api")));
    }
}
