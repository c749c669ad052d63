//! A client of the distribution API (Docker Registry v2, OCI): the tags of
//! a repository (every page), and when the image of a tag was built (its
//! config's `created`, or the `org.opencontainers.image.created` /
//! `org.label-schema.build-date` labels; a manifest list's platform
//! chosen). Bearer-token challenges and basic auth; `429` with
//! `Retry-After` waited out; requests paced per registry.
//!
//! Over ureq, which tidegate already uses: the clients of the ecosystem
//! (oci-client) keep the `Link` and `Retry-After` headers from their
//! callers, and both are what politeness to a registry needs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Media types asked for, manifest lists first.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Tags asked for per page.
const PAGE: usize = 1000;
/// Pages followed at most, and tags kept per repository at most.
const MAX_PAGES: usize = 20;
const MAX_TAGS: usize = 10_000;
/// Redirects followed at most (blob stores, CDNs).
const MAX_REDIRECTS: usize = 3;
/// Manifests, configs and token answers read at most.
const MAX_BODY: u64 = 4 * 1024 * 1024;
/// How often a `429` is waited out before the request fails.
const MAX_RETRIES: u32 = 2;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry {host}: {reason}")]
    Request { host: String, reason: String },
    #[error("registry {host}: {what}: the registry answered {code}{hint}")]
    Status {
        host: String,
        what: String,
        code: u16,
        hint: &'static str,
    },
    #[error("registry {host}: {what}: {reason}")]
    Content {
        host: String,
        what: String,
        reason: String,
    },
}

impl Error {
    /// The registry itself is failing (unreachable, stalling, rate
    /// limiting, erring): not worth asking again this cycle. A refusal or
    /// a missing repository is one image's problem.
    pub fn registry_fails(&self) -> bool {
        match self {
            Error::Request { .. } => true,
            Error::Status { code, .. } => *code == 429 || *code >= 500,
            Error::Content { .. } => false,
        }
    }
}

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `host[:port]`.
    pub host: String,
    /// Plain HTTP (`--registry-insecure-host`).
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_pem: Option<Vec<u8>>,
    /// User name and password (or token), from a pull secret or a config file.
    pub credentials: Option<(String, String)>,
    /// Requests per second at most, and how many may go at once above it.
    pub rps: f64,
    pub burst: u32,
    pub timeout: Duration,
    /// The platform of manifest lists: `linux/amd64`.
    pub platform: String,
    /// Tags asked for per page; 0 for 1,000.
    pub page: usize,
    /// Tags kept per repository at most; 0 for 10,000.
    pub max_tags: usize,
    /// Host names or networks (CIDRs) a registry, or a redirect, may be at
    /// though they are not public (`--registry-allow`).
    pub allow: Vec<String>,
}

/// A client of one registry.
pub struct Registry {
    settings: Settings,
    agent: ureq::Agent,
    /// The `Authorization` to send, per repository (a bearer token is for
    /// one), learnt from the registry's challenges.
    auth: Mutex<std::collections::HashMap<String, String>>,
    pace: Mutex<Pace>,
    /// Requests sent, for the metrics and the tests.
    requests: std::sync::atomic::AtomicUsize,
}

/// A token bucket.
struct Pace {
    tokens: f64,
    at: Instant,
}

impl Registry {
    pub fn new(settings: Settings) -> Result<Registry, Error> {
        // An image in Git names the host: only a public one, unless listed.
        let allowed = settings.insecure || settings.host == "docker.io";
        if let Some(reason) = refusal(&settings.host, &settings.allow).filter(|_| !allowed) {
            return Err(Error::Request {
                host: settings.host.clone(),
                reason,
            });
        }
        use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
        let roots = match &settings.ca_pem {
            Some(pem) => {
                let cert = Certificate::from_pem(pem).map_err(|e| Error::Request {
                    host: settings.host.clone(),
                    reason: format!("the CA certificate cannot be read: {e}"),
                })?;
                RootCerts::Specific(std::sync::Arc::new(vec![cert]))
            }
            None => RootCerts::PlatformVerifier,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(roots)
            .build();
        let proxy = ureq::Proxy::try_from_env();
        // The proxy is the operator's: dialled wherever it is.
        let proxy_host = proxy.as_ref().map(|p| p.host().to_string());
        let config = ureq::Agent::config_builder()
            .proxy(proxy)
            .tls_config(tls)
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            // Redirects are followed here, each hop checked (see `get`).
            .max_redirects(0)
            .build();
        let guarded = Guarded {
            allow: settings.allow.clone(),
            own: allowed.then(|| settings.host.clone()),
            proxy: proxy_host,
        };
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            guarded,
        );
        let burst = f64::from(settings.burst.max(1));
        Ok(Registry {
            agent,
            auth: Mutex::default(),
            pace: Mutex::new(Pace {
                tokens: burst,
                at: Instant::now(),
            }),
            requests: Default::default(),
            settings,
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn base(&self) -> String {
        let scheme = if self.settings.insecure {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.settings.host)
    }

    /// Every tag of `repository`, page by page.
    pub fn tags(&self, repository: &str) -> Result<Vec<String>, Error> {
        let page_size = match self.settings.page {
            0 => PAGE,
            n => n,
        };
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next = Some(format!("/v2/{repository}/tags/list?n={page_size}"));
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(self.content("the tag list", format!("more than {MAX_PAGES} pages")));
            }
            let (body, link) = self.get(repository, &path, "application/json", "the tag list")?;
            let page: Value = serde_json::from_slice(&body)
                .map_err(|e| self.content("the tag list", format!("not JSON: {e}")))?;
            let listed: Vec<String> = page["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            // A registry that ignores `n` (distribution 2.x) answers all at
            // once: only a page of exactly `n` may have a next one.
            let full = listed.len() == page_size;
            let last = listed.last().cloned();
            let before = tags.len();
            // Only what can be a tag is one: a registry's list is input.
            for tag in listed
                .into_iter()
                .filter(|t| crate::automation::image::valid_tag(t))
            {
                let max = match self.settings.max_tags {
                    0 => MAX_TAGS,
                    n => n,
                };
                if tags.len() >= max {
                    return Err(self.content(
                        "the tag list",
                        format!("more than {max} tags; narrow it with --registry-exclude-image"),
                    ));
                }
                if seen.insert(tag.clone()) {
                    tags.push(tag);
                }
            }
            if tags.len() == before {
                break;
            }
            next = match link {
                Some(link) => next_page(&link),
                None if full => {
                    last.map(|l| format!("/v2/{repository}/tags/list?n={page_size}&last={l}"))
                }
                None => None,
            };
        }
        Ok(tags)
    }

    /// When the image of `reference` (a tag or digest) was built, in
    /// seconds since the epoch, and the digest of its config (what the
    /// answer may be cached under); `None` when it does not say.
    pub fn created(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Option<i64>, String), Error> {
        let what = format!("{repository}:{reference}");
        let (body, _) = self.get(
            repository,
            &format!("/v2/{repository}/manifests/{reference}"),
            ACCEPT,
            &what,
        )?;
        let mut manifest: Value = serde_json::from_slice(&body)
            .map_err(|e| self.content(&what, format!("the manifest is not JSON: {e}")))?;
        if manifest["manifests"].is_array() {
            let digest = platform_digest(&manifest, &self.settings.platform).ok_or_else(|| {
                self.content(
                    &what,
                    format!("the manifest list has no {} image", self.settings.platform),
                )
            })?;
            let (body, _) = self.get(
                repository,
                &format!("/v2/{repository}/manifests/{digest}"),
                ACCEPT,
                &what,
            )?;
            manifest = serde_json::from_slice(&body)
                .map_err(|e| self.content(&what, format!("the manifest is not JSON: {e}")))?;
        }
        let Some(config) = manifest["config"]["digest"].as_str() else {
            return Err(self.content(
                &what,
                format!(
                    "a manifest of media type {} has no config",
                    manifest["mediaType"].as_str().unwrap_or("(none)")
                ),
            ));
        };
        let (body, _) = self.get(
            repository,
            &format!("/v2/{repository}/blobs/{config}"),
            "*/*",
            &what,
        )?;
        let config_json: Value = serde_json::from_slice(&body)
            .map_err(|e| self.content(&what, format!("the image config is not JSON: {e}")))?;
        Ok((built(&config_json), config.to_string()))
    }

    fn content(&self, what: &str, reason: String) -> Error {
        Error::Content {
            host: self.settings.host.clone(),
            what: what.to_string(),
            reason,
        }
    }

    /// Waits for the pace's next token.
    fn paced(&self) {
        if self.settings.rps <= 0.0 {
            return;
        }
        loop {
            let wait = {
                let mut pace = self.pace.lock().expect("pace");
                let now = Instant::now();
                let burst = f64::from(self.settings.burst.max(1));
                pace.tokens = (pace.tokens
                    + now.duration_since(pace.at).as_secs_f64() * self.settings.rps)
                    .min(burst);
                pace.at = now;
                if pace.tokens >= 1.0 {
                    pace.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - pace.tokens) / self.settings.rps)
            };
            std::thread::sleep(wait);
        }
    }

    /// GET `path` of the registry for `repository`: paced, authenticated on
    /// a challenge, a `429` waited out. Returns the body and the `Link`.
    fn get(
        &self,
        repository: &str,
        path: &str,
        accept: &str,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), Error> {
        let mut url = format!("{}{path}", self.base());
        let mut retries = 0;
        let mut authenticated = false;
        let mut hops = 0;
        // Credentials go to the registry itself, never to where it redirects.
        let mut own = true;
        loop {
            self.paced();
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut request = self.agent.get(&url).header("Accept", accept);
            if let Some(auth) = self.authorization(repository).filter(|_| own) {
                request = request.header("Authorization", auth);
            }
            let mut response = request.call().map_err(|e| Error::Request {
                host: self.settings.host.clone(),
                reason: format!("{what}: {e}"),
            })?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let status = response.status().as_u16();
            match status {
                200..=299 => {
                    let link = header("link");
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_BODY)
                        .read_to_vec()
                        .map_err(|e| self.content(what, format!("cannot read the answer: {e}")))?;
                    return Ok((body, link));
                }
                301 | 302 | 303 | 307 | 308 if hops < MAX_REDIRECTS => {
                    hops += 1;
                    (url, own) = self.redirected(&header("location").unwrap_or_default(), what)?;
                }
                401 if !authenticated && own => {
                    let challenge = header("www-authenticate").unwrap_or_default();
                    self.authenticate(&challenge, repository, what)?;
                    authenticated = true;
                }
                429 if retries < MAX_RETRIES => {
                    retries += 1;
                    let wait = header("retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(Duration::from_secs(1 << retries))
                        .min(MAX_RETRY_AFTER);
                    tracing::info!(registry = %self.settings.host, seconds = wait.as_secs(), "rate limited: waiting as the registry asks");
                    std::thread::sleep(wait);
                }
                code => return Err(self.status(what, code)),
            }
        }
    }

    /// Where a redirect goes, checked like the registry itself was, and
    /// whether that is still the registry (which alone gets credentials).
    fn redirected(&self, location: &str, what: &str) -> Result<(String, bool), Error> {
        let (next, host) =
            redirect_target(&self.base(), location).map_err(|reason| self.content(what, reason))?;
        let own = host == self.settings.host || next.starts_with(&self.base());
        if !own && let Some(reason) = refusal(&host, &self.settings.allow) {
            return Err(self.content(what, format!("redirected: {reason}")));
        }
        Ok((next, own))
    }

    /// The token server is where the registry says: held to the same
    /// address rule as the registry (one more host an image names).
    fn realm_allowed(&self, realm: &str, what: &str) -> Result<(), Error> {
        let host = realm
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(self.content(
                what,
                format!("a challenge whose realm names no host: {realm:?}"),
            ));
        }
        match refusal(host, &self.settings.allow).filter(|_| host != self.settings.host) {
            Some(reason) => Err(self.content(what, format!("the token server: {reason}"))),
            None => Ok(()),
        }
    }

    fn status(&self, what: &str, code: u16) -> Error {
        let hint = match code {
            401 | 403 => ": check the pull secret or --docker-config for this registry",
            404 => ": no such repository or tag",
            429 => ": rate limited, still after waiting",
            _ => "",
        };
        Error::Status {
            host: self.settings.host.clone(),
            what: what.to_string(),
            code,
            hint,
        }
    }

    /// What a challenge for `repository` asked for, once answered.
    fn authorization(&self, repository: &str) -> Option<String> {
        let auth = self.auth.lock().expect("auth");
        auth.get(repository).or_else(|| auth.get("")).cloned()
    }

    /// Answers a challenge: a bearer token from its realm (with the
    /// credentials, if any), or basic auth.
    fn authenticate(&self, challenge: &str, repository: &str, what: &str) -> Result<(), Error> {
        use base64::Engine as _;
        let params = challenge_params(challenge);
        let scheme = challenge.split_whitespace().next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("basic") {
            let Some((user, password)) = &self.settings.credentials else {
                return Err(Error::Status {
                    host: self.settings.host.clone(),
                    what: what.to_string(),
                    code: 401,
                    hint: ": the registry asks for credentials; add a pull secret or --docker-config",
                });
            };
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            // Basic auth is the registry's, for every repository.
            self.auth
                .lock()
                .expect("auth")
                .insert(String::new(), format!("Basic {basic}"));
            return Ok(());
        }
        let realm = params.get("realm").ok_or_else(|| {
            self.content(what, format!("a challenge without a realm: {challenge:?}"))
        })?;
        self.realm_allowed(realm, what)?;
        let mut url = format!("{realm}?scope=repository:{repository}:pull");
        if let Some(service) = params.get("service") {
            url.push_str(&format!("&service={service}"));
        }
        self.paced();
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = self.agent.get(&url);
        // Credentials go to a token server only over TLS (or to one the
        // registry's own plain-HTTP setting covers).
        let secure = realm.starts_with("https://") || self.settings.insecure;
        if let Some((user, password)) = self.settings.credentials.as_ref().filter(|_| secure) {
            request = request.header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
                ),
            );
        }
        let mut response = request.call().map_err(|e| Error::Request {
            host: self.settings.host.clone(),
            reason: format!("the token for {repository}: {e}"),
        })?;
        if !response.status().is_success() {
            return Err(Error::Status {
                host: self.settings.host.clone(),
                what: format!("the token for {repository}"),
                code: response.status().as_u16(),
                hint: ": check the pull secret or --docker-config for this registry",
            });
        }
        let body: Value = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| self.content(what, "the token answer is not JSON".into()))?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| self.content(what, "the token answer holds no token".into()))?;
        self.auth
            .lock()
            .expect("auth")
            .insert(repository.to_string(), format!("Bearer {token}"));
        Ok(())
    }
}

/// The address rule again where a connection is made: of what a name
/// resolves to then, only the addresses the rule allows are dialled, so a
/// name that resolved to a public address when it was checked cannot point
/// at a private one when connected to (with a proxy, the proxy resolves).
#[derive(Debug)]
struct Guarded {
    allow: Vec<String>,
    /// The registry's own host, when listed as insecure (or Docker Hub).
    own: Option<String>,
    /// The proxy's host, from the environment.
    proxy: Option<String>,
}

impl ureq::unversioned::resolver::Resolver for Guarded {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let resolved = ureq::unversioned::resolver::DefaultResolver::default()
            .resolve(uri, config, timeout)?;
        let name = uri.host().unwrap_or_default();
        let host = uri.authority().map(|a| a.as_str()).unwrap_or(name);
        let mut kept = self.empty();
        for addr in self.dialled(name, host, &resolved) {
            kept.push(addr);
        }
        if kept.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(kept)
    }
}

impl Guarded {
    /// The addresses of `host` (`name[:port]`) that may be dialled.
    fn dialled(
        &self,
        name: &str,
        host: &str,
        resolved: &[std::net::SocketAddr],
    ) -> Vec<std::net::SocketAddr> {
        let own = self.own.as_deref().is_some_and(|o| o == host || o == name)
            || self.proxy.as_deref() == Some(name);
        resolved
            .iter()
            .filter(|addr| {
                let ip = addr.ip();
                let ok = own || reachable(&self.allow, name, host, ip);
                if !ok {
                    tracing::warn!(host, %ip, "registry: not dialled: a loopback, link-local or private address");
                }
                ok
            })
            .copied()
            .collect()
    }
}

/// The address rule: `ip`, what `host` (`name[:port]`) resolved to, is
/// public, or listed in `--registry-allow` (by address, network or name).
fn reachable(allow: &[String], name: &str, host: &str, ip: std::net::IpAddr) -> bool {
    use crate::model::address::{is_public, listed};
    is_public(ip) || listed(allow, name, ip) || listed(allow, host, ip)
}

/// Why `host` (`name[:port]`) may not be reached: it resolves to a
/// loopback, link-local or private address that `allow` does not list.
pub fn refusal(host: &str, allow: &[String]) -> Option<String> {
    use std::net::ToSocketAddrs;
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') => (name, port.parse().unwrap_or(443)),
        _ => (host, 443),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = match (name, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Some(format!("cannot resolve {name}: {e}")),
    };
    addrs
        .iter()
        .map(|a| a.ip())
        .find(|ip| !reachable(allow, name, host, *ip))
        .map(|ip| {
            format!(
                "{host} resolves to {ip}, a loopback, link-local or private address; list the host or its network in --registry-allow to reach it"
            )
        })
}

/// Where a redirect from the registry at `base` goes, and that host: an
/// `https://` URL, or a path of the registry itself; nothing with user
/// information, and no plain HTTP elsewhere.
fn redirect_target(base: &str, location: &str) -> Result<(String, String), String> {
    let own_host = base.split_once("://").map_or(base, |(_, h)| h).to_string();
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok((format!("{base}{location}"), own_host));
    }
    let Some(rest) = location.strip_prefix("https://") else {
        return Err(format!(
            "a redirect to {location:?}: only https:// or the registry's own paths are followed"
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(format!(
            "a redirect to {location:?}: no host, or user information in it"
        ));
    }
    Ok((location.to_string(), host.to_string()))
}

/// `Bearer realm="…",service="…"` → its parameters.
fn challenge_params(challenge: &str) -> std::collections::BTreeMap<String, String> {
    let rest = challenge.split_once(' ').map_or("", |(_, r)| r);
    let mut params = std::collections::BTreeMap::new();
    for part in rest.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            params.insert(
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            );
        }
    }
    params
}

/// The next page a `Link: </v2/…?last=…>; rel="next"` names: a path of
/// this registry's API, never another host.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        (params.contains("rel=\"next\"") && target.starts_with("/v2/") && !target.contains("//"))
            .then(|| target.to_string())
    })
}

/// The digest of a manifest list's image for `platform` (`os/arch`).
fn platform_digest(list: &Value, platform: &str) -> Option<String> {
    let (os, arch) = platform.split_once('/')?;
    list["manifests"].as_array()?.iter().find_map(|m| {
        let p = &m["platform"];
        (p["os"] == os && p["architecture"] == arch)
            .then(|| m["digest"].as_str().map(str::to_string))
            .flatten()
    })
}

/// When an image config says it was built: `created`, else the labels.
fn built(config: &Value) -> Option<i64> {
    let labels = &config["config"]["Labels"];
    [
        &config["created"],
        &labels["org.opencontainers.image.created"],
        &labels["org.label-schema.build-date"],
    ]
    .into_iter()
    .filter_map(|v| v.as_str())
    .find_map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    .map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_registry_or_a_redirect_on_a_private_address_must_be_listed() {
        // Where the connection is made, the rule holds again: a name that
        // now resolves to a private address is not dialled.
        let at = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), 443);
        let resolved = [at("10.0.0.7"), at("93.184.216.34"), at("169.254.169.254")];
        let guard = Guarded {
            allow: vec![],
            own: None,
            proxy: Some("proxy.internal".into()),
        };
        assert_eq!(
            guard.dialled("reg.example", "reg.example", &resolved),
            [resolved[1]]
        );
        assert_eq!(
            guard
                .dialled("proxy.internal", "proxy.internal:3128", &resolved)
                .len(),
            3,
            "the proxy is dialled wherever it is"
        );
        let listed = Guarded {
            allow: vec!["10.0.0.0/8".into()],
            own: None,
            proxy: None,
        };
        assert_eq!(
            listed.dialled("reg.example", "reg.example", &resolved),
            [resolved[0], resolved[1]]
        );
        let own = Guarded {
            allow: vec![],
            own: Some("mirror.local:5000".into()),
            proxy: None,
        };
        assert_eq!(
            own.dialled("mirror.local", "mirror.local:5000", &resolved)
                .len(),
            3
        );
        assert_eq!(
            own.dialled("other.local", "other.local:5000", &resolved)
                .len(),
            1
        );
        assert!(refusal("127.0.0.1:5000", &[]).is_some_and(|r| r.contains("--registry-allow")));
        assert!(refusal("169.254.169.254", &[]).is_some());
        assert!(refusal("[::1]:5000", &[]).is_some());
        assert_eq!(refusal("127.0.0.1:5000", &["127.0.0.0/8".into()]), None);
        assert_eq!(refusal("127.0.0.1:5000", &["127.0.0.1".into()]), None);
        assert!(
            Registry::new(Settings {
                host: "127.0.0.1:5000".into(),
                ..Settings::default()
            })
            .is_err()
        );
        assert!(
            Registry::new(Settings {
                host: "127.0.0.1:5000".into(),
                insecure: true,
                ..Settings::default()
            })
            .is_ok(),
            "an insecure host is listed already"
        );
        let base = "https://reg.io";
        assert_eq!(
            redirect_target(base, "/v2/a/blobs/x").unwrap(),
            ("https://reg.io/v2/a/blobs/x".into(), "reg.io".into())
        );
        assert_eq!(
            redirect_target(base, "https://cdn.example/b?sig=1")
                .unwrap()
                .1,
            "cdn.example"
        );
        assert!(
            redirect_target(base, "http://169.254.169.254/latest").is_err(),
            "plain HTTP elsewhere"
        );
        assert!(redirect_target(base, "https://u:p@cdn.example/b").is_err());
        assert!(redirect_target(base, "//cdn.example/b").is_err());
        assert!(redirect_target(base, "file:///etc/passwd").is_err());
        // A token realm on a private address is refused as a registry is.
        let client = Registry::new(Settings {
            host: "127.0.0.1:1".into(),
            insecure: true,
            ..Settings::default()
        })
        .unwrap();
        let err = client
            .authenticate(
                r#"Bearer realm="http://169.254.169.254/token""#,
                "team/app",
                "the tag list",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the token server") && err.contains("--registry-allow"),
            "{err}"
        );
    }

    #[test]
    fn links_challenges_platforms_and_build_times() {
        assert_eq!(
            next_page(r#"</v2/app/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/app/tags/list?last=b&n=2")
        );
        assert_eq!(next_page(r#"</x>; rel="prev""#), None);
        assert_eq!(
            next_page(r#"<@evil.example/v2/x>; rel="next""#),
            None,
            "another host"
        );
        assert_eq!(
            next_page(r#"<https://evil.example/v2/x>; rel="next""#),
            None
        );
        let params = challenge_params(
            r#"Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a:pull""#,
        );
        assert_eq!(params["realm"], "https://auth.io/token");
        assert_eq!(params["service"], "registry.io");
        let list = json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(
            platform_digest(&list, "linux/amd64").as_deref(),
            Some("sha256:amd")
        );
        assert_eq!(platform_digest(&list, "windows/amd64"), None);
        assert_eq!(
            built(&json!({"created": "2026-01-02T03:04:05Z"})),
            Some(1767323045)
        );
        assert_eq!(
            built(
                &json!({"config": {"Labels": {"org.label-schema.build-date": "2026-01-02T03:04:05Z"}}})
            ),
            Some(1767323045)
        );
        assert_eq!(built(&json!({"created": "yesterday"})), None);
    }
}
