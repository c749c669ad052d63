//! Registry push notifications, each format as its registry documents it,
//! checked with the webhook secret: the distribution registry's
//! `notifications` envelope and Harbor's `PUSH_ARTIFACT` (the secret as the
//! `Authorization` header, `Bearer` or bare), and Docker Hub's and Quay's
//! (which cannot set a header: a token of its own, the webhook Secret's
//! `registry-token`, is the last step of the URL). A
//! push of a tag wakes the automation at once instead of at its next
//! interval. Pure.

use serde_json::Value;

/// What a notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No or a wrong token: 401, nothing triggered.
    Unauthorized,
    /// Tags pushed (`repository:tag`): scan now.
    Pushed(Vec<String>),
    /// Authentic, but no tag was pushed (blob pushes, pulls, deletes).
    Ignored(String),
}

/// The registry formats, by the last step of their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Distribution,
    Harbor,
    DockerHub,
    Quay,
}

impl Format {
    pub fn from_path(name: &str) -> Option<Format> {
        Some(match name {
            "distribution" => Format::Distribution,
            "harbor" => Format::Harbor,
            "dockerhub" => Format::DockerHub,
            "quay" => Format::Quay,
            _ => return None,
        })
    }

    /// Whether the secret comes in the URL (the sender sets no header).
    pub fn token_in_path(self) -> bool {
        matches!(self, Format::DockerHub | Format::Quay)
    }
}

/// The verdict on one delivery: `token` is the `Authorization` header, or
/// the URL's last step for the formats that carry it there.
pub fn verify(format: Format, secret: &[u8], token: Option<&str>, body: &[u8]) -> Verdict {
    let token = match format {
        Format::DockerHub | Format::Quay => token,
        _ => token.map(|a| a.strip_prefix("Bearer ").unwrap_or(a).trim()),
    };
    if !super::webhook::token_matches(secret, token) {
        return Verdict::Unauthorized;
    }
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Ignored("the body is not JSON".into());
    };
    let pushed = match format {
        Format::Distribution => distribution(&payload),
        Format::Harbor => harbor(&payload),
        Format::DockerHub => {
            let repo = payload["repository"]["repo_name"].as_str();
            let tag = payload["push_data"]["tag"].as_str();
            repo.zip(tag)
                .map(|(r, t)| format!("{r}:{t}"))
                .into_iter()
                .collect()
        }
        Format::Quay => {
            let repo = payload["repository"].as_str().unwrap_or_default();
            payload["updated_tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| Some(format!("{repo}:{}", t.as_str()?)))
                .collect()
        }
    };
    if pushed.is_empty() {
        return Verdict::Ignored("no tag was pushed".into());
    }
    Verdict::Pushed(pushed)
}

/// Harbor: `PUSH_ARTIFACT`, its repository and each resource's tag.
fn harbor(payload: &Value) -> Vec<String> {
    if payload["type"] != "PUSH_ARTIFACT" {
        return Vec::new();
    }
    let repo = payload["event_data"]["repository"]["repo_full_name"]
        .as_str()
        .unwrap_or_default();
    payload["event_data"]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some(format!("{repo}:{}", r["tag"].as_str()?)))
        .collect()
}

/// The distribution registry: each `push` event of a tagged manifest.
fn distribution(envelope: &Value) -> Vec<String> {
    envelope["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "push")
        .filter_map(|e| {
            let target = &e["target"];
            let repository = target["repository"].as_str()?;
            let tag = target["tag"].as_str().filter(|t| !t.is_empty())?;
            Some(format!("{repository}:{tag}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_push_wakes_the_scan_and_anything_else_does_not() {
        let body = br#"{"events": [
            {"action": "push", "target": {"mediaType": "application/octet-stream", "repository": "team/web"}},
            {"action": "push", "target": {"repository": "team/web", "tag": "1.2.0"}},
            {"action": "pull", "target": {"repository": "team/web", "tag": "1.1.0"}}
        ]}"#;
        let d = Format::Distribution;
        assert_eq!(
            verify(d, b"s3cret", Some("Bearer s3cret"), body),
            Verdict::Pushed(vec!["team/web:1.2.0".into()])
        );
        assert_eq!(
            verify(d, b"s3cret", Some("Bearer wrong"), body),
            Verdict::Unauthorized
        );
        assert_eq!(verify(d, b"s3cret", None, body), Verdict::Unauthorized);
        assert!(matches!(
            verify(d, b"s3cret", Some("Bearer s3cret"), br#"{"events": []}"#),
            Verdict::Ignored(_)
        ));
    }

    #[test]
    fn harbor_docker_hub_and_quay_as_they_document_their_payloads() {
        let harbor = br#"{"type": "PUSH_ARTIFACT", "event_data": {
            "resources": [{"digest": "sha256:a", "tag": "2.0"}],
            "repository": {"name": "app", "namespace": "lib", "repo_full_name": "lib/app"}}}"#;
        assert_eq!(
            verify(Format::Harbor, b"k", Some("k"), harbor),
            Verdict::Pushed(vec!["lib/app:2.0".into()])
        );
        let pulled = br#"{"type": "PULL_ARTIFACT", "event_data": {}}"#;
        assert!(matches!(
            verify(Format::Harbor, b"k", Some("k"), pulled),
            Verdict::Ignored(_)
        ));
        let hub = br#"{"push_data": {"pushed_at": 1, "tag": "1.5"},
            "repository": {"repo_name": "org/tool", "namespace": "org", "name": "tool"}}"#;
        assert_eq!(
            verify(Format::DockerHub, b"k", Some("k"), hub),
            Verdict::Pushed(vec!["org/tool:1.5".into()])
        );
        assert_eq!(
            verify(Format::DockerHub, b"k", Some("x"), hub),
            Verdict::Unauthorized
        );
        let quay = br#"{"repository": "ns/repo", "docker_url": "quay.io/ns/repo",
            "updated_tags": ["v1", "v2"]}"#;
        assert_eq!(
            verify(Format::Quay, b"k", Some("k"), quay),
            Verdict::Pushed(vec!["ns/repo:v1".into(), "ns/repo:v2".into()])
        );
        assert_eq!(Format::from_path("quay"), Some(Format::Quay));
        assert_eq!(Format::from_path("gcr"), None);
    }
}
