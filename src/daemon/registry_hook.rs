//! Registry push notifications: the distribution registry's `notifications`
//! endpoint format (an envelope of events, each a `push` of a repository's
//! manifest), checked by a bearer token (the webhook secret, sent as the
//! endpoint's `Authorization` header). A push of a tag wakes the automation
//! at once instead of at its next interval. Pure.

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

/// The verdict on one delivery of the `distribution` format.
pub fn verify(secret: &[u8], authorization: Option<&str>, body: &[u8]) -> Verdict {
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    if !super::webhook::token_matches(secret, token) {
        return Verdict::Unauthorized;
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Ignored("the body is not JSON".into());
    };
    let pushed: Vec<String> = envelope["events"]
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
        .collect();
    if pushed.is_empty() {
        return Verdict::Ignored("no tag was pushed".into());
    }
    Verdict::Pushed(pushed)
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
        assert_eq!(
            verify(b"s3cret", Some("Bearer s3cret"), body),
            Verdict::Pushed(vec!["team/web:1.2.0".into()])
        );
        assert_eq!(
            verify(b"s3cret", Some("Bearer wrong"), body),
            Verdict::Unauthorized
        );
        assert_eq!(verify(b"s3cret", None, body), Verdict::Unauthorized);
        assert!(matches!(
            verify(b"s3cret", Some("Bearer s3cret"), br#"{"events": []}"#),
            Verdict::Ignored(_)
        ));
    }
}
