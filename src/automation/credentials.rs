//! Registry credentials as Docker and Kubernetes keep them: a
//! `config.json` (`{"auths": {host: {auth | username, password}}}`, the
//! `.dockerconfigjson` of a pull secret) or the older `.dockercfg` (the
//! `auths` map alone). Pure. Passwords are never shown.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

/// User name and password per registry host.
pub type Credentials = BTreeMap<String, (String, String)>;

/// The credentials a config names, by host (`docker.io` for Docker Hub's
/// many names); entries that hold none are skipped.
pub fn parse(text: &[u8]) -> Result<Credentials, String> {
    let value: Value =
        serde_json::from_slice(text).map_err(|e| format!("not a Docker config (JSON): {e}"))?;
    let auths = match value.get("auths") {
        Some(auths) => auths,
        None => &value,
    };
    let Some(auths) = auths.as_object() else {
        return Err("its auths is not a map of registries".into());
    };
    let mut found = Credentials::new();
    for (server, entry) in auths {
        let pair = match (entry["username"].as_str(), entry["password"].as_str()) {
            (Some(user), Some(password)) => Some((user.to_string(), password.to_string())),
            _ => entry["auth"].as_str().and_then(|auth| {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                let (user, password) = text.split_once(':')?;
                Some((user.to_string(), password.to_string()))
            }),
        };
        if let Some(pair) = pair {
            found.insert(host(server), pair);
        }
    }
    Ok(found)
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://reg.io:5000/x` →
/// `reg.io:5000`.
pub fn host(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// What a workload's pods pull with: its `imagePullSecrets` and its
/// service account (`default` when it names none).
pub fn pull_secret_refs(object: &Value) -> (Vec<String>, String) {
    let spec = match object["kind"].as_str() {
        Some("CronJob") => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &object["spec"]["template"]["spec"],
    };
    let secrets = spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    let account = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    (secrets, account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_docker_hubs_names() {
        let auth = base64::engine::general_purpose::STANDARD.encode("jane:s3cret");
        let config = format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}},
                "reg.io:5000": {{"username": "bot", "password": "p"}},
                "empty.io": {{}}}}}}"#
        );
        let found = parse(config.as_bytes()).unwrap();
        assert_eq!(found["docker.io"], ("jane".into(), "s3cret".into()));
        assert_eq!(found["reg.io:5000"], ("bot".into(), "p".into()));
        assert!(!found.contains_key("empty.io"));
        let legacy = format!(r#"{{"https://ghcr.io": {{"auth": "{auth}"}}}}"#);
        assert_eq!(parse(legacy.as_bytes()).unwrap()["ghcr.io"].0, "jane");
        assert!(parse(b"[1]").is_err());
        let deployment = serde_json::json!({"kind": "Deployment", "spec": {"template": {"spec": {
            "imagePullSecrets": [{"name": "reg"}], "serviceAccountName": "web"}}}});
        assert_eq!(
            pull_secret_refs(&deployment),
            (vec!["reg".to_string()], "web".to_string())
        );
        let cron = serde_json::json!({"kind": "CronJob", "spec": {}});
        assert_eq!(pull_secret_refs(&cron), (Vec::new(), "default".to_string()));
        assert!(parse(b"not json").is_err());
    }
}
