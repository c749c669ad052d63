//! Webhook verification: a request's provider, headers and body in, whether
//! it is authentic and whether it asks for a sync of our branch out. Pure.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::model::checksum::hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    Gitea,
    GitLab,
    BitbucketServer,
    /// `X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, body `{"ref": "refs/heads/…"}`.
    Generic,
}

impl Provider {
    pub fn from_path(name: &str) -> Option<Provider> {
        Some(match name {
            "github" => Provider::GitHub,
            "gitea" => Provider::Gitea,
            "gitlab" => Provider::GitLab,
            "bitbucket-server" => Provider::BitbucketServer,
            "generic" => Provider::Generic,
            _ => return None,
        })
    }
}

/// What a verified webhook asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signature missing or wrong: 401, nothing triggered.
    Unauthorized,
    /// A ping or test event: answered, nothing triggered.
    Ping,
    /// A push to our branch: sync.
    Sync,
    /// Authentic, but not a push to our branch: answered, nothing triggered.
    Ignored(String),
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies a hex HMAC-SHA256 of the body in constant time.
fn hmac_ok(secret: &[u8], body: &[u8], signature_hex: Option<&str>) -> bool {
    let Some(expected) = signature_hex.and_then(unhex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Constant-time equality for shared tokens.
/// Whether `token` is the secret, compared in constant time.
pub fn token_matches(secret: &[u8], token: Option<&str>) -> bool {
    token_ok(secret, token)
}

fn token_ok(secret: &[u8], token: Option<&str>) -> bool {
    let Some(token) = token else {
        return false;
    };
    // Compare MACs of both, so neither length nor content leaks through timing.
    let mac = |data: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(b"tidegate token comparison").expect("any key");
        m.update(data);
        m.finalize().into_bytes()
    };
    let (a, b) = (mac(secret), mac(token.as_bytes()));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The signature a generic sender puts in `X-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Verifies and reads one webhook. `header` looks a header up by lower-case name.
pub fn verify(
    provider: Provider,
    secret: &[u8],
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    branch: &str,
) -> Verdict {
    if !authentic(provider, secret, &header, body) {
        return Verdict::Unauthorized;
    }
    let event = match provider {
        Provider::GitHub => header("x-github-event"),
        Provider::Gitea => header("x-gitea-event"),
        Provider::GitLab => header("x-gitlab-event"),
        Provider::BitbucketServer => header("x-event-key"),
        Provider::Generic => Some("push".into()),
    }
    .unwrap_or_default();
    let is_ping = match provider {
        Provider::GitHub | Provider::Gitea => event == "ping",
        Provider::BitbucketServer => event == "diagnostics:ping",
        Provider::GitLab | Provider::Generic => false,
    };
    if is_ping {
        return Verdict::Ping;
    }
    let is_push = match provider {
        Provider::GitHub | Provider::Gitea => event == "push",
        Provider::GitLab => event == "Push Hook",
        Provider::BitbucketServer => event == "repo:refs_changed",
        Provider::Generic => true,
    };
    if !is_push {
        return Verdict::Ignored(format!("event {event:?} is not a push"));
    }
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return match provider {
            // A generic sender may post no body at all: sync.
            Provider::Generic if body.is_empty() => Verdict::Sync,
            _ => Verdict::Ignored("the body is not JSON".into()),
        };
    };
    let wanted = format!("refs/heads/{branch}");
    let refs = pushed_refs(provider, &payload);
    if refs.contains(&wanted) || (provider == Provider::Generic && refs.is_empty()) {
        Verdict::Sync
    } else {
        Verdict::Ignored(format!("push to {} is not to {wanted}", refs.join(", ")))
    }
}

/// Whether the delivery carries the provider's signature (or token) made
/// with the secret.
fn authentic(
    provider: Provider,
    secret: &[u8],
    header: &impl Fn(&str) -> Option<String>,
    body: &[u8],
) -> bool {
    let sha256 =
        |name: &str| header(name).and_then(|s| s.strip_prefix("sha256=").map(str::to_string));
    match provider {
        Provider::GitHub => hmac_ok(secret, body, sha256("x-hub-signature-256").as_deref()),
        Provider::Gitea => hmac_ok(
            secret,
            body,
            header("x-gitea-signature")
                .or_else(|| {
                    header("x-hub-signature-256")
                        .map(|s| s.trim_start_matches("sha256=").to_string())
                })
                .as_deref(),
        ),
        Provider::GitLab => token_ok(secret, header("x-gitlab-token").as_deref()),
        Provider::BitbucketServer => hmac_ok(secret, body, sha256("x-hub-signature").as_deref()),
        Provider::Generic => hmac_ok(secret, body, sha256("x-signature-256").as_deref()),
    }
}

/// The refs a push delivery names.
fn pushed_refs(provider: Provider, payload: &Value) -> Vec<String> {
    match provider {
        Provider::BitbucketServer => payload["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                c["ref"]["id"]
                    .as_str()
                    .or(c["refId"].as_str())
                    .map(str::to_string)
            })
            .collect(),
        _ => payload["ref"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect(),
    }
}

/// The header naming a delivery, per provider (retries keep it).
pub fn delivery_header(provider: Provider) -> &'static str {
    match provider {
        Provider::GitHub => "x-github-delivery",
        Provider::Gitea => "x-gitea-delivery",
        Provider::GitLab => "x-gitlab-event-uuid",
        Provider::BitbucketServer => "x-request-id",
        Provider::Generic => "x-delivery-id",
    }
}

/// Most delivery IDs remembered, and the longest one remembered (the
/// providers' are UUIDs): at most 256 KiB however the header is padded.
const REMEMBERED: usize = 1024;
const MAX_ID_BYTES: usize = 256;
/// Least time between two fetches webhooks ask for.
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// What to do with an authentic push webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Fetch now.
    Now,
    /// A fetch was asked for less than [`MIN_INTERVAL`] ago: fetch once
    /// after this long (the deliveries in between share it).
    Later(std::time::Duration),
    /// One is already due after the interval.
    Queued,
    /// This delivery was seen before (a replay or a redelivery).
    Seen,
}

/// Verified deliveries: replays ignored, a flood turned into at most one
/// fetch per [`MIN_INTERVAL`]. Pure: the caller gives the time.
#[derive(Debug, Default)]
pub struct Deliveries {
    seen: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    last: Option<std::time::Instant>,
    queued: bool,
}

impl Deliveries {
    pub fn admit(&mut self, id: Option<&str>, now: std::time::Instant) -> Admit {
        if let Some(id) = id.filter(|id| !id.is_empty() && id.len() <= MAX_ID_BYTES) {
            if self.seen.contains(id) {
                return Admit::Seen;
            }
            if self.order.len() == REMEMBERED
                && let Some(old) = self.order.pop_front()
            {
                self.seen.remove(&old);
            }
            self.seen.insert(id.to_string());
            self.order.push_back(id.to_string());
        }
        match self.last {
            Some(last) if now.duration_since(last) < MIN_INTERVAL => {
                if self.queued {
                    Admit::Queued
                } else {
                    self.queued = true;
                    Admit::Later(MIN_INTERVAL - now.duration_since(last))
                }
            }
            _ => {
                self.last = Some(now);
                Admit::Now
            }
        }
    }

    /// The fetch put off by [`Admit::Later`] is asked for now.
    pub fn fired(&mut self, now: std::time::Instant) {
        self.queued = false;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {

    /// Issue 19, item 13: replays are ignored, a flood is one fetch per
    /// interval, and a push after a quiet interval fetches at once.
    #[test]
    fn deliveries_are_deduplicated_and_paced() {
        let start = std::time::Instant::now();
        let at = |ms: u64| start + std::time::Duration::from_millis(ms);
        let mut d = Deliveries::default();
        assert_eq!(d.admit(Some("a"), at(0)), Admit::Now);
        assert_eq!(d.admit(Some("a"), at(10)), Admit::Seen);
        assert_eq!(
            d.admit(Some("b"), at(50)),
            Admit::Later(std::time::Duration::from_millis(150))
        );
        assert_eq!(d.admit(Some("c"), at(60)), Admit::Queued);
        assert_eq!(d.admit(None, at(70)), Admit::Queued);
        d.fired(at(200));
        assert_eq!(
            d.admit(Some("d"), at(300)),
            Admit::Later(std::time::Duration::from_millis(100))
        );
        d.fired(at(400));
        assert_eq!(d.admit(Some("e"), at(700)), Admit::Now);
        for i in 0..REMEMBERED {
            d.admit(Some(&format!("x{i}")), at(10_000 + i as u64 * 2000));
        }
        assert_ne!(
            d.admit(Some("a"), at(100_000_000)),
            Admit::Seen,
            "old IDs are forgotten"
        );
        // An ID longer than any provider's is not kept: the memory stays bounded.
        let long = "x".repeat(MAX_ID_BYTES + 1);
        d.admit(Some(&long), at(200_000_000));
        assert_ne!(d.admit(Some(&long), at(300_000_000)), Admit::Seen);
        assert!(d.seen.iter().all(|id| id.len() <= MAX_ID_BYTES));
    }

    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn github_push_ping_forgery_and_other_branch() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = sign(SECRET, body);
        let h = headers(&[
            ("x-hub-signature-256", sig.clone()),
            ("x-github-event", "push".into()),
        ]);
        assert_eq!(
            verify(Provider::GitHub, SECRET, h, body, "main"),
            Verdict::Sync
        );
        let h = headers(&[
            ("x-hub-signature-256", sign(b"wrong", body)),
            ("x-github-event", "push".into()),
        ]);
        assert_eq!(
            verify(Provider::GitHub, SECRET, h, body, "main"),
            Verdict::Unauthorized
        );
        let h = headers(&[("x-github-event", "push".into())]);
        assert_eq!(
            verify(Provider::GitHub, SECRET, h, body, "main"),
            Verdict::Unauthorized
        );
        let h = headers(&[
            ("x-hub-signature-256", sig.clone()),
            ("x-github-event", "push".into()),
        ]);
        assert!(matches!(
            verify(Provider::GitHub, SECRET, h, body, "release"),
            Verdict::Ignored(_)
        ));
        let h = headers(&[
            ("x-hub-signature-256", sig),
            ("x-github-event", "ping".into()),
        ]);
        assert_eq!(
            verify(Provider::GitHub, SECRET, h, body, "main"),
            Verdict::Ping
        );
    }

    #[test]
    fn gitea_gitlab_bitbucket_and_generic() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let hex_sig = sign(SECRET, body).trim_start_matches("sha256=").to_string();
        let h = headers(&[
            ("x-gitea-signature", hex_sig),
            ("x-gitea-event", "push".into()),
        ]);
        assert_eq!(
            verify(Provider::Gitea, SECRET, h, body, "main"),
            Verdict::Sync
        );

        let h = headers(&[
            ("x-gitlab-token", "s3cret".into()),
            ("x-gitlab-event", "Push Hook".into()),
        ]);
        assert_eq!(
            verify(Provider::GitLab, SECRET, h, body, "main"),
            Verdict::Sync
        );
        let h = headers(&[
            ("x-gitlab-token", "nope".into()),
            ("x-gitlab-event", "Push Hook".into()),
        ]);
        assert_eq!(
            verify(Provider::GitLab, SECRET, h, body, "main"),
            Verdict::Unauthorized
        );

        let bb = br#"{"changes":[{"ref":{"id":"refs/heads/main"}}]}"#;
        let h = headers(&[
            ("x-hub-signature", sign(SECRET, bb)),
            ("x-event-key", "repo:refs_changed".into()),
        ]);
        assert_eq!(
            verify(Provider::BitbucketServer, SECRET, h, bb, "main"),
            Verdict::Sync
        );
        let h = headers(&[
            ("x-hub-signature", sign(SECRET, bb)),
            ("x-event-key", "diagnostics:ping".into()),
        ]);
        assert_eq!(
            verify(Provider::BitbucketServer, SECRET, h, bb, "main"),
            Verdict::Ping
        );

        let h = headers(&[("x-signature-256", sign(SECRET, b""))]);
        assert_eq!(
            verify(Provider::Generic, SECRET, h, b"", "main"),
            Verdict::Sync
        );
        let h = headers(&[("x-signature-256", "sha256=zz".into())]);
        assert_eq!(
            verify(Provider::Generic, SECRET, h, b"", "main"),
            Verdict::Unauthorized
        );
    }
}
