//! The registries a cycle reads: one client per registry and namespace,
//! reached only where allowed, and the tags and build times it learns.

use super::*;

/// One client per registry, and the build times learnt, kept between cycles.
pub(super) struct Clients {
    pub(super) registries: HashMap<String, (Option<(String, String)>, Registry)>,
    pub(super) times: BuildTimes,
    /// This cycle's: `--docker-config`'s ("" ) and each namespace's own.
    pub(super) credentials: HashMap<String, Credentials>,
    pub(super) ca_pem: Option<Vec<u8>>,
    /// This cycle's findings.
    pub(super) found: Found,
    /// How this cycle's commits are signed.
    pub(super) signing: crate::source::push::Signing,
}

impl Clients {
    /// The clients' shared parts: the CA to trust, the build times kept.
    pub(super) fn new(config: &Config) -> Clients {
        let ca_pem = config
            .ca_file
            .as_ref()
            .and_then(|f| match std::fs::read(f) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    tracing::error!(
                        "automation: cannot read --registry-ca-file {}: {e}",
                        f.display()
                    );
                    None
                }
            });
        let times = config
            .cache_file
            .as_deref()
            .map(BuildTimes::load)
            .unwrap_or_default();
        tracing::debug!(entries = times.len(), "automation: build times read");
        Clients {
            registries: HashMap::new(),
            times,
            credentials: HashMap::new(),
            ca_pem,
            found: Found::default(),
            signing: Default::default(),
        }
    }

    /// The client of `host` with `namespace`'s credentials for it (else
    /// `--docker-config`'s).
    pub(super) fn get(
        &mut self,
        config: &Config,
        host: &str,
        namespace: &str,
    ) -> Result<&Registry, registry::Error> {
        let credentials = self
            .credentials
            .get(namespace)
            .and_then(|c| c.get(host))
            .or_else(|| self.credentials.get("").and_then(|c| c.get(host)))
            .cloned();
        let key = format!("{namespace} {host}");
        if self
            .registries
            .get(&key)
            .is_none_or(|(c, _)| *c != credentials)
        {
            let client = Registry::new(registry::Settings {
                host: host.to_string(),
                credentials: credentials.clone(),
                ca_pem: self.ca_pem.clone(),
                insecure: config.insecure_hosts.iter().any(|h| h == host),
                rps: config.rps,
                burst: config.burst,
                timeout: config.timeout,
                platform: config.platform.clone(),
                allow: config.registry_allow.clone(),
                ..registry::Settings::default()
            })?;
            self.registries.insert(key.clone(), (credentials, client));
        }
        Ok(&self.registries[&key].1)
    }
}

/// The tags of each candidate's repository (by canonical name), with build
/// times for the tags a time-ordered filter passes; a registry that fails
/// is named, and its images are left as they are.
pub(super) fn look_up(
    config: &Config,
    candidates: &[Candidate],
    clients: &mut Clients,
) -> BTreeMap<String, Vec<(String, Option<i64>)>> {
    let mut by_repo: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        let canonical = c.container.image.canonical();
        if config.looks_up(&canonical) {
            by_repo
                .entry(update::tags_key(&c.namespace, &canonical))
                .or_default()
                .push(c);
        } else {
            tracing::debug!(image = %canonical, "automation: not looked up (--registry-include-image / --registry-exclude-image)");
        }
    }
    let mut found = BTreeMap::new();
    // A registry that fails (down, stalling, rate limiting past its waits)
    // is given up on for this cycle: its other images wait for the next.
    let mut given_up: std::collections::HashSet<String> = Default::default();
    for (key, users) in by_repo {
        let image = &users[0].container.image;
        let (namespace, host) = (users[0].namespace.clone(), image.host().to_string());
        let canonical = image.canonical();
        if given_up.contains(&host) {
            continue;
        }
        let repository = image.repository();
        let tags = clients
            .get(config, &host, &namespace)
            .and_then(|client| client.tags(&repository));
        let tags = match tags {
            Ok(t) => t,
            Err(e) => {
                if e.registry_fails() {
                    given_up.insert(host);
                }
                problem(&mut clients.found.errors, format!("{canonical}: {e}"));
                continue;
            }
        };
        let timed: Vec<&Pattern> = users
            .iter()
            .map(|c| &c.pattern)
            .filter(|p| !p.by_version())
            .collect();
        let repo = Repo {
            canonical: &canonical,
            host: &host,
            namespace: &namespace,
            repository: &repository,
        };
        let listed = build_times(config, clients, &repo, &timed, tags, &mut given_up);
        found.insert(key, listed);
        clients.found.repositories += 1;
    }
    found
}

/// One repository as a cycle reads it.
pub(super) struct Repo<'a> {
    canonical: &'a str,
    host: &'a str,
    namespace: &'a str,
    repository: &'a str,
}

/// Each tag with when its image was built, read only for a tag a
/// time-ordered filter passes, and only once while it is trusted.
pub(super) fn build_times(
    config: &Config,
    clients: &mut Clients,
    repo: &Repo<'_>,
    timed: &[&Pattern],
    tags: Vec<String>,
    given_up: &mut std::collections::HashSet<String>,
) -> Vec<(String, Option<i64>)> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let expiry = config.cache_expiry.as_secs() as i64;
    let mut listed = Vec::new();
    for tag in tags {
        let created = if !timed.iter().any(|p| p.matches(&tag)) || given_up.contains(repo.host) {
            None
        } else if let Some(known) = clients.times.get(repo.canonical, &tag, now, expiry) {
            known
        } else {
            let read = clients
                .get(config, repo.host, repo.namespace)
                .and_then(|client| client.created(repo.repository, &tag));
            match read {
                Ok((created, _)) => {
                    clients.times.put(repo.canonical, &tag, created, now);
                    created
                }
                Err(e) => {
                    if e.registry_fails() {
                        given_up.insert(repo.host.to_string());
                    }
                    let canonical = repo.canonical;
                    problem(&mut clients.found.errors, format!("{canonical}:{tag}: {e}"));
                    None
                }
            }
        };
        listed.push((tag, created));
    }
    listed
}
