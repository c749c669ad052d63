//! Proxy settings: the variables a repository's `ProxySettings` document
//! sets, for its workloads and for tidegate's own fetches.

use serde_json::Value;

/// The variables to set, upper- and lower-case, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// Reads a ProxySettings document's `spec`.
    pub fn from_object(object: &Value) -> ProxySettings {
        let field = |k: &str| {
            object["spec"][k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        ProxySettings {
            http_proxy: field("httpProxy"),
            https_proxy: field("httpsProxy"),
            no_proxy: field("noProxy"),
        }
    }

    /// `(NAME, value)` for each variable set, upper-case first.
    pub fn variables(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        for (name, value) in [
            ("HTTP_PROXY", &self.http_proxy),
            ("HTTPS_PROXY", &self.https_proxy),
            ("NO_PROXY", &self.no_proxy),
        ] {
            if let Some(v) = value {
                vars.push((name.to_string(), v.clone()));
                vars.push((name.to_ascii_lowercase(), v.clone()));
            }
        }
        vars
    }

    pub fn is_empty(&self) -> bool {
        self.variables().is_empty()
    }

    /// The value of a proxy variable, by name in either case.
    pub fn var(&self, name: &str) -> Option<String> {
        match name.to_ascii_lowercase().as_str() {
            "http_proxy" => self.http_proxy.clone(),
            "https_proxy" => self.https_proxy.clone(),
            "no_proxy" => self.no_proxy.clone(),
            _ => None,
        }
    }
}

/// Whether the daemon's own environment names a proxy (which then wins
/// over the repository's settings).
pub fn in_environment() -> bool {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}
