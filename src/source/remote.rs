//! Pure rules about a remote: what its URL says, which proxy reaches it, and
//! whether the host key it presents is the one known_hosts expects.

use ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use ssh_key::{HashAlg, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ssh,
    Https,
    Http,
    File,
}

/// The parts of a Git URL that authentication and proxies depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// Parses `ssh://user@host:port/path`, `user@host:path` (scp-like),
/// `http(s)://…`, `file://…` and plain paths.
pub fn parse(url: &str) -> Remote {
    let local = Remote {
        scheme: Scheme::File,
        user: None,
        host: String::new(),
        port: None,
    };
    let (scheme, rest) = match url.split_once("://") {
        Some(("ssh" | "git+ssh" | "ssh+git", rest)) => (Scheme::Ssh, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(_) => return local,
        None => {
            // scp-like `user@host:path`; a path with a colon before any slash.
            match url.split_once(':') {
                Some((authority, _)) if !authority.contains('/') && !authority.is_empty() => {
                    let (user, host) = match authority.rsplit_once('@') {
                        Some((u, h)) => (Some(u.to_string()), h),
                        None => (None, authority),
                    };
                    return Remote {
                        scheme: Scheme::Ssh,
                        user,
                        host: host.to_string(),
                        port: None,
                    };
                }
                _ => return local,
            }
        }
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next().unwrap_or(u).to_string()), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // [::1]:2222
        let (h, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
        (
            h.to_string(),
            after.strip_prefix(':').and_then(|p| p.parse().ok()),
        )
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()),
            None => (host_port.to_string(), None),
        }
    };
    Remote {
        scheme,
        user,
        host,
        port,
    }
}

/// `scheme://userinfo@host…` split into the scheme, the user info and what
/// follows the `@`, for URLs that carry user info.
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

/// The `user:password` written into a URL's authority, if any.
pub fn credentials_in(url: &str) -> Option<(String, String)> {
    let (_, userinfo, _) = split_userinfo(url)?;
    let (user, password) = userinfo.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The URL with any password or token in it replaced by `***`, for logs,
/// errors, status records and Events.
pub fn redact(url: &str) -> String {
    let Some((scheme, userinfo, rest)) = split_userinfo(url) else {
        return url.to_string();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        // A lone token in the user part is a secret too.
        None if scheme.starts_with("http") => "***".to_string(),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{user}@{rest}")
}

/// Replaces every secret of `url` that appears in `text` (libgit2 quotes URLs
/// in its messages).
pub fn scrub(text: &str, url: &str) -> String {
    let mut text = text.replace(url, &redact(url));
    if let Some((_, password)) = credentials_in(url).filter(|(_, p)| !p.is_empty()) {
        text = text.replace(&password, "***");
    }
    text
}

/// The proxy for a URL: the explicit one, else `HTTPS_PROXY` (either case)
/// unless `NO_PROXY` exempts the host.
///
/// Only HTTPS remotes go through a proxy (with CONNECT): libgit2 sends plain
/// `http://` requests straight to the server even when a proxy is set
/// (libgit2 issue 5650), so tidegate does not pretend to proxy them. SSH and
/// local repositories use none.
pub fn proxy_for(
    remote: &Remote,
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if remote.scheme != Scheme::Https {
        return None;
    }
    if let Some(p) = explicit {
        return Some(p.to_string());
    }
    let var = |name: &str| {
        env(name)
            .or_else(|| env(&name.to_uppercase()))
            .filter(|v| !v.is_empty())
    };
    let proxy = var("https_proxy")?;
    let exempt = var("no_proxy").is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .any(|entry| {
                let entry = entry.split(':').next().unwrap_or(entry);
                entry == "*"
                    || remote.host == entry.trim_start_matches('.')
                    || remote
                        .host
                        .ends_with(&format!(".{}", entry.trim_start_matches('.')))
            })
    });
    (!exempt).then_some(proxy)
}

/// `*` and `?` glob match, as in known_hosts patterns.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Whether a known_hosts host field names `host` on `port`: a pattern list,
/// or a hashed name (`|1|salt|hash`, HMAC-SHA1 of the name as ssh writes it).
fn names_host(patterns: &HostPatterns, host: &str, port: u16) -> bool {
    let target = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let patterns = match patterns {
        HostPatterns::Patterns(patterns) => patterns,
        HostPatterns::HashedName { salt, hash } => {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).expect("HMAC takes any key");
            mac.update(target.as_bytes());
            return mac.verify_slice(hash).is_ok();
        }
    };
    let mut matched = false;
    for p in patterns {
        if let Some(negated) = p.strip_prefix('!') {
            if glob(negated, &target) {
                return false;
            }
        } else if glob(p, &target) {
            matched = true;
        }
    }
    matched
}

/// Checks the key a server presented against known_hosts text. The error
/// names the host and the key's fingerprint.
pub fn check_host_key(
    known_hosts: &str,
    host: &str,
    port: u16,
    presented: &[u8],
) -> Result<(), String> {
    let shown = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let key = PublicKey::from_bytes(presented)
        .map_err(|e| format!("{shown} presented an unreadable host key: {e}"))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    let algorithm = key.algorithm();
    let mut known_for_host = false;
    let entries: Vec<_> = KnownHosts::new(known_hosts)
        .flatten()
        .filter(|e| names_host(e.host_patterns(), host, port))
        .collect();
    let revoked = entries.iter().any(|e| {
        e.marker() == Some(&Marker::Revoked) && e.public_key().key_data() == key.key_data()
    });
    if revoked {
        return Err(format!(
            "{shown} presented {algorithm} {fingerprint}, which known_hosts marks @revoked; refusing it"
        ));
    }
    for entry in entries {
        if entry.marker().is_some() {
            continue;
        }
        known_for_host = true;
        if entry.public_key().key_data() == key.key_data() {
            return Ok(());
        }
    }
    if known_for_host {
        Err(format!(
            "host key mismatch for {shown}: it presented {algorithm} {fingerprint}, which known_hosts does not list for it; \
             if the server's key really changed, update known_hosts"
        ))
    } else {
        Err(format!(
            "unknown host {shown}: its {algorithm} key {fingerprint} is not in known_hosts; add it with `ssh-keyscan{} {host}` after checking the fingerprint",
            if port == 22 {
                String::new()
            } else {
                format!(" -p {port}")
            }
        ))
    }
}

/// A URL reduced to what names the repository, so that `git@host:org/repo`,
/// `ssh://git@host/org/repo.git` and `https://host/org/repo` compare equal:
/// `host[:port]/path` without user, scheme, `.git` or a trailing slash; local
/// paths as `file:` and the path.
/// Whether two URLs name the same server: scheme, host and port (with the
/// scheme's default port). Credentials for one go to the other only then.
pub fn same_server(a: &str, b: &str) -> bool {
    let (a, b) = (parse(a), parse(b));
    let port = |r: &Remote| {
        r.port.unwrap_or(match r.scheme {
            Scheme::Ssh => 22,
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::File => 0,
        })
    };
    a.scheme == b.scheme
        && a.scheme != Scheme::File
        && a.host.eq_ignore_ascii_case(&b.host)
        && port(&a) == port(&b)
}

pub fn normalize(url: &str) -> String {
    let remote = parse(url);
    let trim = |path: &str| {
        let path = path.trim_end_matches('/');
        path.strip_suffix(".git").unwrap_or(path).to_string()
    };
    if remote.scheme == Scheme::File {
        let path = url.strip_prefix("file://").unwrap_or(url);
        return format!("file:{}", trim(path));
    }
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i + 1..]),
        None => url.split_once(':').map_or("", |(_, p)| p),
    };
    let port = remote.port.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}{port}/{}",
        remote.host.to_ascii_lowercase(),
        trim(path.trim_start_matches('/'))
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn credentials_go_only_to_the_same_server() {
        assert!(same_server(
            "https://git.example.com/team/repo.git",
            "https://GIT.example.com:443/other/charts.git"
        ));
        assert!(same_server(
            "git@git.example.com:team/a.git",
            "ssh://git@git.example.com:22/b.git"
        ));
        assert!(!same_server(
            "https://git.example.com/a.git",
            "https://evil.example.net/a.git"
        ));
        assert!(!same_server(
            "https://git.example.com/a.git",
            "https://git.example.com:8443/a.git"
        ));
        assert!(!same_server(
            "https://git.example.com/a.git",
            "http://git.example.com/a.git"
        ));
        assert!(!same_server(
            "ssh://git@git.example.com/a.git",
            "ssh://git@git.example.com:2222/a.git"
        ));
        assert!(!same_server("file:///srv/a.git", "file:///srv/b.git"));
    }

    use super::*;

    #[test]
    fn credentials_are_redacted() {
        let url = "https://bot:s3cr3t-token@git.example.com/org/repo.git";
        assert_eq!(redact(url), "https://bot:***@git.example.com/org/repo.git");
        assert_eq!(
            credentials_in(url),
            Some(("bot".to_string(), "s3cr3t-token".to_string()))
        );
        assert_eq!(
            redact("https://ghp_token@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(redact("ssh://git@host:22/r.git"), "ssh://git@host:22/r.git");
        assert_eq!(redact("git@github.com:o/r.git"), "git@github.com:o/r.git");
        let message = format!("failed to connect to {url}: s3cr3t-token rejected");
        let clean = scrub(&message, url);
        assert!(!clean.contains("s3cr3t"), "{clean}");
        assert!(clean.contains("bot:***@git.example.com"), "{clean}");
    }

    #[test]
    fn parses_git_urls() {
        let r = parse("ssh://git@example.com:2222/org/repo.git");
        assert_eq!(
            (r.scheme, r.user.as_deref(), r.host.as_str(), r.port),
            (Scheme::Ssh, Some("git"), "example.com", Some(2222))
        );
        let r = parse("git@github.com:org/repo.git");
        assert_eq!(
            (r.scheme, r.user.as_deref(), r.host.as_str(), r.port),
            (Scheme::Ssh, Some("git"), "github.com", None)
        );
        let r = parse("https://token@git.example.com/org/repo.git");
        assert_eq!(
            (r.scheme, r.host.as_str()),
            (Scheme::Https, "git.example.com")
        );
        assert_eq!(parse("http://127.0.0.1:8080/repo.git").port, Some(8080));
        assert_eq!(parse("file:///srv/repo.git").scheme, Scheme::File);
        assert_eq!(parse("/srv/repo.git").scheme, Scheme::File);
        assert_eq!(parse("./relative/repo").scheme, Scheme::File);
    }

    #[test]
    fn proxy_from_environment_and_no_proxy() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let https = parse("https://git.example.com/r.git");
        let internal = parse("https://git.internal/r.git");
        let vars: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", ".internal,localhost"),
        ];
        assert_eq!(
            proxy_for(&https, None, env(vars)).as_deref(),
            Some("http://proxy:3128")
        );
        assert_eq!(
            proxy_for(&internal, None, env(vars)),
            None,
            "NO_PROXY exempts git.internal"
        );
        let lower: &[(&str, &str)] = &[("https_proxy", "http://lower:1")];
        assert_eq!(
            proxy_for(&https, None, env(lower)).as_deref(),
            Some("http://lower:1")
        );
        let plain = parse("http://other/r.git");
        assert_eq!(
            proxy_for(&plain, Some("http://p:1"), env(vars)),
            None,
            "plain HTTP is never proxied"
        );
        assert_eq!(
            proxy_for(&https, Some("http://explicit:1"), env(vars)).as_deref(),
            Some("http://explicit:1")
        );
        assert_eq!(
            proxy_for(
                &parse("git@host:r.git"),
                Some("http://explicit:1"),
                env(vars)
            ),
            None
        );
        let star: &[(&str, &str)] = &[("https_proxy", "http://p:1"), ("no_proxy", "*")];
        assert_eq!(proxy_for(&https, None, env(star)), None);
    }

    fn blob(openssh: &str) -> Vec<u8> {
        PublicKey::from_openssh(openssh)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn new_key() -> String {
        crate::identity::DeployKey::generate().unwrap().public
    }

    #[test]
    fn host_keys_are_checked_with_ports() {
        let (key_a, key_b) = (new_key(), new_key());
        let known = format!("example.com {key_a}\n[127.0.0.1]:2222 {key_b}\n");
        assert!(check_host_key(&known, "example.com", 22, &blob(&key_a)).is_ok());
        assert!(check_host_key(&known, "127.0.0.1", 2222, &blob(&key_b)).is_ok());
        let err = check_host_key(&known, "example.com", 22, &blob(&key_b)).unwrap_err();
        assert!(
            err.starts_with("host key mismatch for example.com"),
            "{err}"
        );
        assert!(err.contains("SHA256:"), "{err}");
        let err = check_host_key(&known, "127.0.0.1", 22, &blob(&key_b)).unwrap_err();
        assert!(err.starts_with("unknown host 127.0.0.1"), "{err}");
        let err = check_host_key(&known, "other", 2200, &blob(&key_a)).unwrap_err();
        assert!(err.contains("ssh-keyscan -p 2200 other"), "{err}");
    }

    #[test]
    fn hashed_names_match_and_revoked_keys_are_refused() {
        use base64::Engine as _;
        use hmac::{Hmac, KeyInit, Mac};
        let (key_a, key_b) = (new_key(), new_key());
        let hashed = |name: &str| {
            let salt = b"0123456789abcdefghij";
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
            mac.update(name.as_bytes());
            let b64 = base64::engine::general_purpose::STANDARD;
            format!(
                "|1|{}|{}",
                b64.encode(salt),
                b64.encode(mac.finalize().into_bytes())
            )
        };
        let known = format!(
            "{} {key_a}\n{} {key_a}\n@revoked * {key_b}\n[127.0.0.1]:2222 {key_b}\n",
            hashed("git.example.com"),
            hashed("[127.0.0.1]:2200")
        );
        assert!(check_host_key(&known, "git.example.com", 22, &blob(&key_a)).is_ok());
        assert!(check_host_key(&known, "127.0.0.1", 2200, &blob(&key_a)).is_ok());
        assert!(check_host_key(&known, "other.example.com", 22, &blob(&key_a)).is_err());
        let err = check_host_key(&known, "127.0.0.1", 2222, &blob(&key_b)).unwrap_err();
        assert!(err.contains("@revoked"), "{err}");
    }

    #[test]
    fn host_patterns_glob_and_negate() {
        let key_a = new_key();
        let known = format!("*.example.com,!bad.example.com {key_a}\n");
        assert!(check_host_key(&known, "git.example.com", 22, &blob(&key_a)).is_ok());
        assert!(check_host_key(&known, "bad.example.com", 22, &blob(&key_a)).is_err());
    }

    #[test]
    fn normalized_urls_name_the_repository() {
        let same = [
            "git@github.com:example/cluster-state",
            "ssh://git@github.com/example/cluster-state.git",
            "https://github.com/example/cluster-state/",
            "https://user:token@GitHub.com/example/cluster-state.git",
        ];
        for url in same {
            assert_eq!(normalize(url), "github.com/example/cluster-state", "{url}");
        }
        assert_ne!(
            normalize("ssh://git@github.com:2222/example/cluster-state"),
            normalize("git@github.com:example/cluster-state")
        );
        assert_eq!(normalize("file:///srv/repo.git"), "file:/srv/repo");
        assert_eq!(normalize("/srv/repo.git/"), "file:/srv/repo");
    }
}
