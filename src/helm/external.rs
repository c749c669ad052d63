//! Values at a URL (`valuesFrom.externalSourceRef`): a URL in, its text out,
//! without letting a repository's author reach what only the daemon can.
//!
//! The host is resolved before anything is sent, and every address it
//! resolves to must be public — not loopback, link-local (cloud metadata),
//! private, shared or unspecified — unless `--values-url-allow` lists the
//! host or a network holding the address. A direct connection goes only to
//! the addresses checked; redirects are not followed; the body is bounded.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

use crate::model::address::{is_public, listed};

/// Most bytes of a values file read from a URL.
const MAX_EXTERNAL_VALUES: u64 = 4 * 1024 * 1024;

/// Whether and where values may be fetched from.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// False for offline checks (`validate` without `--fetch-values`).
    pub fetch: bool,
    /// `--values-url-allow`: host names or networks (CIDRs) allowed though
    /// they resolve to non-public addresses.
    pub allow: Vec<String>,
}

impl Access {
    /// Why `addr` of `host` may not be reached, if it may not.
    fn refusal(&self, host: &str, addr: IpAddr) -> Option<String> {
        if is_public(addr) || self.allows(host, addr) {
            return None;
        }
        Some(format!(
            "{host} resolves to {addr}, a loopback, link-local or private address; list the host or its network in --values-url-allow to reach it"
        ))
    }

    fn allows(&self, host: &str, addr: IpAddr) -> bool {
        listed(&self.allow, host, addr)
    }

    /// Resolves `host` and checks every address; the addresses.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (bare, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        match addrs.iter().find_map(|a| self.refusal(bare, a.ip())) {
            Some(why) => Err(why),
            None => Ok(addrs),
        }
    }
}

/// Answers a connection's lookups with the addresses checked beforehand.
#[derive(Debug)]
struct Pinned(Vec<SocketAddr>);

impl ureq::unversioned::resolver::Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        out.truncate(0);
        for addr in self.0.iter().take(16) {
            out.push(*addr);
        }
        Ok(out)
    }
}

/// A values file at a URL, through the proxy; `None` when the server
/// answers 404.
pub fn fetch(url: &str, proxy: Option<&str>, access: &Access) -> Result<Option<String>, String> {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if scheme != "http" && scheme != "https" {
        return Err(format!("only http and https URLs are read, not {scheme:?}"));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
    let host = uri.host().ok_or("the URL names no host")?.to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let addrs = access.resolve(&host, port)?;
    let proxy = match proxy {
        Some(p) => Some(
            ureq::Proxy::new(p)
                .map_err(|e| format!("proxy {}: {e}", crate::source::remote::redact(p)))?,
        ),
        None => ureq::Proxy::try_from_env(),
    };
    // Through a proxy the request goes where the proxy is: it is held to
    // the same rule (a proxy inside the network must be listed).
    if let Some(p) = &proxy {
        access
            .resolve(p.host(), p.port())
            .map_err(|why| format!("through the proxy: {why}"))?;
    }
    let direct = proxy.is_none();
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier)
        .build();
    let config = ureq::Agent::config_builder()
        .proxy(proxy)
        .tls_config(tls)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build();
    let agent = if direct {
        ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            Pinned(addrs),
        )
    } else {
        config.into()
    };
    let scrub = |e: ureq::Error| crate::source::remote::scrub(&e.to_string(), url);
    let mut response = agent.get(url).call().map_err(scrub)?;
    match response.status().as_u16() {
        200..=299 => response
            .body_mut()
            .with_config()
            .limit(MAX_EXTERNAL_VALUES)
            .read_to_string()
            .map(Some)
            .map_err(scrub),
        404 => Ok(None),
        code @ 300..=399 => Err(format!(
            "the server answered {code} (a redirect); redirects are not followed, name the final URL"
        )),
        code => Err(format!("the server answered {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "240.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let access = Access {
            fetch: true,
            allow: vec!["10.0.0.0/8".into(), "values.internal".into()],
        };
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let why = access.refusal("metadata", metadata).unwrap();
        assert!(why.contains("--values-url-allow"), "{why}");
        assert!(access.refusal("x", "10.9.8.7".parse().unwrap()).is_none());
        assert!(
            access
                .refusal("values.internal", "192.168.0.9".parse().unwrap())
                .is_none()
        );
        assert!(
            access
                .refusal("other", "192.168.0.9".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn loopback_is_refused_before_any_connection() {
        let why = fetch("http://127.0.0.1:9/values.yaml", None, &Access::default()).unwrap_err();
        assert!(why.contains("127.0.0.1 resolves to 127.0.0.1"), "{why}");
        let why = fetch("file:///etc/passwd", None, &Access::default()).unwrap_err();
        assert!(why.contains("only http and https"), "{why}");
        // A proxy inside the network is where the request would go.
        let why = fetch(
            "http://93.184.216.34/values.yaml",
            Some("http://10.0.0.1:3128"),
            &Access::default(),
        )
        .unwrap_err();
        assert!(
            why.starts_with("through the proxy: 10.0.0.1 resolves to 10.0.0.1"),
            "{why}"
        );
    }
}
