//! Registry credentials for a cycle, each namespace's own.

use super::*;
use crate::automation::credentials;

/// The registry credentials of this cycle: `--docker-config`, then the
/// pull secrets of the automated workloads and of their service accounts
/// (which win for their registries). What cannot be read is said and
/// skipped; no password is logged.
pub(super) async fn pull_credentials(
    kube: &kube::Client,
    config: &Config,
    (source, snapshot, options): (&GitSource, &Snapshot, &render::Options),
) -> (HashMap<String, Credentials>, Vec<String>) {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let mut found: HashMap<String, Credentials> = HashMap::new();
    let mut errors = Vec::new();
    if let Some(file) = &config.docker_config {
        match std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| credentials::parse(&b))
        {
            Ok(c) => {
                found.insert(String::new(), c);
            }
            Err(e) => problem(
                &mut errors,
                format!("--docker-config {}: {e}", file.display()),
            ),
        }
    }
    let read = {
        let (config, source, snapshot, options) = (
            config.clone(),
            source.clone(),
            snapshot.clone(),
            options.clone(),
        );
        tokio::task::spawn_blocking(move || {
            super::cycle::read_tree(&config, &source, &snapshot, &options)
        })
        .await
    };
    // A checkout a newer fetch replaced: the cycle is made again anyway.
    let Ok(Ok(Some((set, marked)))) = read else {
        return (found, errors);
    };
    let (mut wanted, accounts) = wanted(config, &set, marked);
    for (ns, account) in accounts {
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(kube.clone(), &ns);
        if let Ok(Some(sa)) = api.get_opt(&account).await {
            for s in sa.image_pull_secrets.unwrap_or_default() {
                wanted.insert((ns.clone(), s.name));
            }
        }
    }
    for (ns, name) in wanted {
        let api: kube::Api<Secret> = kube::Api::namespaced(kube.clone(), &ns);
        let secret = match api.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                problem(&mut errors, format!("pull secret {ns}/{name} not found"));
                continue;
            }
            Err(e) => {
                problem(
                    &mut errors,
                    format!("cannot read pull secret {ns}/{name}: {e}"),
                );
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        let Some(config) = data.get(".dockerconfigjson").or(data.get(".dockercfg")) else {
            continue;
        };
        match credentials::parse(&config.0) {
            Ok(c) => found.entry(ns).or_default().extend(c),
            Err(e) => problem(&mut errors, format!("pull secret {ns}/{name}: {e}")),
        }
    }
    (found, errors)
}

/// (namespace, name) pairs.
type Named = std::collections::BTreeSet<(String, String)>;

/// The pull secrets named in Git: each automated workload's (with its
/// namespace) and each ImagePolicy's `secretRef`; and the service
/// accounts whose pull secrets count too.
fn wanted(config: &Config, set: &render::DesiredSet, marked: update::Marked) -> (Named, Named) {
    let (candidates, _) = update::candidates(
        &set.manifests,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    // Read in each namespace only, for its own workloads only.
    let mut wanted = Named::new();
    let mut accounts = Named::new();
    for m in set.manifests.iter() {
        let Some(c) = candidates.iter().find(|c| c.object == m.id.to_string()) else {
            continue;
        };
        let (secrets, account) = credentials::pull_secret_refs(&m.object.value());
        wanted.extend(secrets.into_iter().map(|s| (c.namespace.clone(), s)));
        accounts.insert((c.namespace.clone(), account));
    }
    for p in marked.policies {
        wanted.extend(p.secret.map(|s| (p.namespace.clone(), s)));
    }
    (wanted, accounts)
}
