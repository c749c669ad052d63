//! The helm operations: install or upgrade (after the allow-list's check
//! of what the chart renders), rollback and uninstall, each in a private
//! work directory.

use super::*;

/// A directory of this operation's own for the values file and any copy of
/// the chart; only the daemon's user can read it, and it is removed when
/// dropped.
pub(super) fn work_dir(
    settings: &Settings,
    spec: &ReleaseSpec,
) -> Result<tempfile::TempDir, ReleaseError> {
    let parent = settings.cache.join("work");
    std::fs::create_dir_all(&parent)
        .and_then(|_| {
            tempfile::Builder::new()
                .prefix(&format!("{}-", spec.release_name))
                .tempdir_in(&parent)
        })
        .map_err(|e| ReleaseError::DeployFailed(format!("cannot prepare a work directory: {e}")))
}

/// Credentials for a chart repository from `chartPullSecret`.
pub(super) async fn pull_credentials(
    cluster: &Cluster,
    located: &chart::Located,
    namespace: &str,
) -> Result<Option<(String, String)>, ReleaseError> {
    let chart::Kind::Repository {
        pull_secret: Some(name),
        ..
    } = &located.kind
    else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    let secret = api.get_opt(name).await.map_err(|e| {
        ReleaseError::ChartFetchFailed(format!(
            "cannot read chartPullSecret {namespace}/{name}: {e}"
        ))
    })?;
    let data = secret.and_then(|s| s.data).ok_or_else(|| {
        ReleaseError::ChartFetchFailed(format!("chartPullSecret {namespace}/{name} not found"))
    })?;
    let field = |k: &str| {
        data.get(k)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    if let (Some(u), Some(p)) = (field("username"), field("password")) {
        return Ok(Some((u, p)));
    }
    // helm's own repositories.yaml: the entry for this repository's URL.
    let chart::Kind::Repository { url, .. } = &located.kind else {
        return Ok(None);
    };
    let entry = field("repositories.yaml")
        .and_then(|text| parse_documents(&text, &ParseLimits::default()).ok())
        .and_then(|docs| docs.into_iter().next())
        .and_then(|file| {
            file["repositories"].as_array()?.iter().find_map(|r| {
                let same = r["url"].as_str()?.trim_end_matches('/') == url.trim_end_matches('/');
                same.then(|| {
                    Some((
                        r["username"].as_str()?.to_string(),
                        r["password"].as_str()?.to_string(),
                    ))
                })?
            })
        });
    entry.map(Some).ok_or_else(|| {
        ReleaseError::ChartFetchFailed(format!(
            "chartPullSecret {namespace}/{name} needs the keys username and password, \
                 or a repositories.yaml with an entry for {}",
            crate::source::remote::redact(url)
        ))
    })
}

/// Makes the chart ready, and the values as helm takes them on its stdin.
/// Without a cluster (offline checks) no chartPullSecret is read.
pub(super) async fn prepare(
    cluster: Option<&Cluster>,
    settings: &Settings,
    spec: &ReleaseSpec,
    located: &chart::Located,
    values: &Value,
    work: &std::path::Path,
) -> Result<(PathBuf, Vec<u8>), ReleaseError> {
    let namespace = spec.id.namespace.clone().unwrap_or_default();
    let credentials = match cluster {
        Some(cluster) => pull_credentials(cluster, located, &namespace).await?,
        None => None,
    };
    let chart = chart::prepare(
        located,
        &settings.binary,
        &settings.cache,
        work,
        credentials,
    )
    .await
    .map_err(|e| ReleaseError::ChartFetchFailed(crate::model::error_chain(&e)))?;
    // On helm's stdin, never on disk: values may hold decrypted Secrets.
    Ok((chart, serde_json::to_vec(values).expect("values serialize")))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn install_or_upgrade(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    spec: &ReleaseSpec,
    located: &chart::Located,
    values: &Value,
    digests: &Digests,
    deployed: Option<u32>,
    why: &str,
) -> Result<Success, ReleaseError> {
    ctx.cluster
        .fenced()
        .map_err(|e| ReleaseError::DeployFailed(e.to_string()))?;
    let work = work_dir(ctx.settings, spec)?;
    let (chart, values_json) = prepare(
        Some(ctx.cluster),
        ctx.settings,
        spec,
        located,
        values,
        work.path(),
    )
    .await?;
    let labels = digests.labels();
    let verb = if deployed.is_some() {
        "upgrading"
    } else {
        "installing"
    };
    tracing::info!(release = %spec.release_name, namespace = %spec.target_namespace, "{verb}: {why}");
    let mut args = binary::UpgradeArgs {
        release: &spec.release_name,
        namespace: &spec.target_namespace,
        chart: &chart,
        values: &values_json,
        timeout: spec.timeout,
        wait: spec.wait,
        force: spec.force_upgrade,
        skip_crds: spec.skip_crds,
        max_history: spec.max_history,
        disable_openapi_validation: spec.disable_openapi_validation,
        reset_values: spec.reset_values,
        labels: &labels,
        proxy: ctx.sources.proxy_settings.as_ref(),
        allowed: None,
    };
    let namespaced_kinds = match ctx.settings.allow_namespaces.is_empty() {
        true => Vec::new(),
        false => check_chart(ctx, spec, &args).await?,
    };
    if !ctx.settings.allow_namespaces.is_empty() {
        args.allowed = Some(binary::Allowed {
            namespaces: &ctx.settings.allow_namespaces,
            kinds: &namespaced_kinds,
        });
    }
    let result = ctx.settings.binary.upgrade(&args).await;
    drop(work);
    match result {
        Ok(()) => Ok(deployed_event(ctx, item, deployed, why).await),
        Err(e) => Err(upgrade_failed(ctx, item, spec, deployed, e.to_string()).await),
    }
}

/// A release installed or upgraded: its Event, and the outcome.
async fn deployed_event(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    deployed: Option<u32>,
    why: &str,
) -> Success {
    let (action, reason) = match deployed {
        Some(_) => (ReleaseAction::Upgraded, "ReleaseUpgraded"),
        None => (ReleaseAction::Installed, "ReleaseInstalled"),
    };
    let message = (!why.is_empty()).then(|| why.to_string());
    let text = message.clone().unwrap_or_else(|| action.to_string());
    event(ctx.cluster, &item.id, "Normal", reason, &text).await;
    Success {
        action,
        message,
        rolled_back: false,
    }
}

/// An install or upgrade failed: its Event, and a rollback to the revision
/// `deployed` if the HelmRelease asks for one.
async fn upgrade_failed(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    spec: &ReleaseSpec,
    deployed: Option<u32>,
    failed: String,
) -> ReleaseError {
    event(ctx.cluster, &item.id, "Warning", "ReleaseFailed", &failed).await;
    let Some(to) = deployed.filter(|_| spec.rollback.enable) else {
        return ReleaseError::DeployFailed(failed);
    };
    tracing::warn!(release = %spec.release_name, "{failed}; rolling back to revision {to}");
    match rollback(ctx, spec, to).await {
        Ok(()) => {
            let message = format!("{failed}; rolled back to revision {to}");
            event(
                ctx.cluster,
                &item.id,
                "Warning",
                "ReleaseRolledBack",
                &message,
            )
            .await;
            ReleaseError::RolledBack(message)
        }
        Err(r) => ReleaseError::RollbackFailed(format!("{failed}; the rollback failed too: {r}")),
    }
}

/// Under the allow-list: renders the chart with the values helm will be
/// given (hooks and CRDs included) and checks every object as a plain
/// manifest is checked; the namespaced kinds it found, for the
/// post-renderer to hold the install to.
pub(super) async fn check_chart(
    ctx: &Context<'_>,
    spec: &ReleaseSpec,
    args: &binary::UpgradeArgs<'_>,
) -> Result<Vec<String>, ReleaseError> {
    // The post-renderer is the allow-list's last check at install.
    if ctx.settings.binary.post_renderer.is_none() {
        return Err(ReleaseError::DeployFailed(
            "under --k8s-allow-namespace helm needs tidegate as its post-renderer, and tidegate cannot name its own binary".into(),
        ));
    }
    let mut rendered = Vec::new();
    for doc in render_all(ctx, spec, args)
        .await?
        .iter()
        .filter(|d| !d.is_null())
    {
        let Some(mut id) = allowed::rendered_ref(doc) else {
            return Err(ReleaseError::NotAllowed(
                "the chart renders a document without apiVersion and kind".to_string(),
            ));
        };
        let namespaced = ctx.cluster.resolve(&id).await.ok().map(|r| r.namespaced());
        match namespaced {
            Some(true) => {
                id.namespace
                    .get_or_insert_with(|| spec.target_namespace.clone());
            }
            Some(false) => id.namespace = None,
            None => {}
        }
        rendered.push(allowed::Rendered { id, namespaced });
    }
    if let Some(why) = allowed::objects_refusal(&rendered, &ctx.settings.allow_namespaces) {
        return Err(ReleaseError::NotAllowed(why));
    }
    let mut kinds: Vec<String> = rendered.iter().map(|r| allowed::kind_key(&r.id)).collect();
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// Every document the chart renders: offline, CRDs and hooks included;
/// then as the install would render it against the cluster (`lookup`,
/// capabilities), hooks included.
async fn render_all(
    ctx: &Context<'_>,
    spec: &ReleaseSpec,
    args: &binary::UpgradeArgs<'_>,
) -> Result<Vec<Value>, ReleaseError> {
    let render_failed = |e: binary::Error| ReleaseError::DeployFailed(e.to_string());
    let helm = &ctx.settings.binary;
    let offline = helm
        .template(
            &spec.release_name,
            &spec.target_namespace,
            args.chart,
            args.values,
            spec.skip_crds,
            None,
        )
        .await
        .map_err(render_failed)?;
    let release: Value = serde_json::from_str(
        &helm.upgrade_dry_run(args).await.map_err(render_failed)?,
    )
    .map_err(|e| ReleaseError::DeployFailed(format!("helm's dry run printed no release: {e}")))?;
    let mut texts = vec![
        offline,
        release["manifest"].as_str().unwrap_or_default().to_string(),
    ];
    texts.extend(
        release["hooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["manifest"].as_str().map(str::to_string)),
    );
    let mut docs = Vec::new();
    for text in &texts {
        docs.extend(parse_documents(text, &ParseLimits::default()).map_err(|e| {
            ReleaseError::DeployFailed(format!("the chart renders YAML that cannot be read: {e}"))
        })?);
    }
    Ok(docs)
}

pub(super) async fn rollback(
    ctx: &Context<'_>,
    spec: &ReleaseSpec,
    to: u32,
) -> Result<(), binary::Error> {
    ctx.cluster.fenced().map_err(|e| binary::Error::Failed {
        command: "rollback".into(),
        message: e.to_string(),
    })?;
    let r = &spec.rollback;
    ctx.settings
        .binary
        .rollback(&binary::RollbackArgs {
            release: &spec.release_name,
            namespace: &spec.target_namespace,
            revision: to,
            timeout: r.timeout.unwrap_or(spec.timeout),
            wait: r.wait,
            force: r.force,
            recreate: r.recreate,
            disable_hooks: r.disable_hooks,
            max_history: spec.max_history,
        })
        .await
}

/// Uninstalls the release a HelmRelease (as it is live) made, if Helm has
/// it. Called before the HelmRelease is pruned.
pub async fn uninstall(
    cluster: &Cluster,
    settings: &Settings,
    id: &ObjectRef,
    live: &Value,
    claimed: &[(String, String)],
) -> Result<Option<String>, ReleaseError> {
    let spec = release::parse(id, live).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    // What the live HelmRelease names is bound by the allow-list too, and a
    // release another HelmRelease in Git asks for is not this one's to end.
    if let Some(why) = allowed::spec_refusal(&spec, &settings.allow_namespaces) {
        return Err(ReleaseError::NotAllowed(why));
    }
    let key = (spec.target_namespace.clone(), spec.release_name.clone());
    if claimed.contains(&key) {
        return Ok(None);
    }
    let history = storage::history(&cluster.client, &spec.target_namespace, &spec.release_name)
        .await
        .map_err(|e| {
            ReleaseError::DeployFailed(format!("cannot read the release's Helm history: {e}"))
        })?;
    if history.records.is_empty() {
        return Ok(None);
    }
    cluster
        .fenced()
        .map_err(|e| ReleaseError::DeployFailed(e.to_string()))?;
    settings
        .binary
        .uninstall(&spec.release_name, &spec.target_namespace, spec.timeout)
        .await
        .map_err(|e| ReleaseError::DeployFailed(e.to_string()))?;
    Ok(Some(format!(
        "{}/{}",
        spec.target_namespace, spec.release_name
    )))
}

/// Runs the operation a release needs; after a recovery, decides again
/// and runs what it then needs. Returns the outcome, and Helm's record when
/// helm ran nothing.
pub(super) async fn run(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    spec: &ReleaseSpec,
    w: &Wanted,
    mut operation: Option<Operation>,
    mut history: storage::History,
) -> (Result<Success, ReleaseError>, Option<storage::History>) {
    let (located, values, digests) = (&w.located, &w.values, &w.digests);
    let mut recovered: Option<String> = None;
    for _ in 0..2 {
        let Some(op) = operation.take() else {
            let outcome = Success {
                action: recovered
                    .as_ref()
                    .map_or(ReleaseAction::Unchanged, |_| ReleaseAction::RolledBack),
                rolled_back: recovered.is_some(),
                message: recovered,
            };
            return (Ok(outcome), Some(history));
        };
        let deployed = history.deployed().map(|r| r.version);
        let result = match op {
            Operation::Install | Operation::Upgrade(_) => {
                let why = match &op {
                    Operation::Upgrade(why) => why.clone(),
                    _ => String::new(),
                };
                install_or_upgrade(ctx, item, spec, located, values, digests, deployed, &why)
                    .await
                    .map(|mut outcome| {
                        if let Some(r) = &recovered {
                            outcome.message =
                                Some(format!("{r}; then {}", outcome.message.unwrap_or_default()));
                        }
                        outcome
                    })
            }
            Operation::RecoverRollback { from, to, status } => {
                let message = format!(
                    "revision {from} was left {status} by an operation that is no longer running; rolled back to revision {to}"
                );
                if let Err(e) = rollback(ctx, spec, to).await {
                    let f = ReleaseError::RollbackFailed(format!("recovering from {status}: {e}"));
                    return (Err(f), None);
                }
                announce_recovery(ctx.cluster, item, spec, &message).await;
                recovered = Some(message);
                match needed(ctx.cluster, spec, w).await {
                    Ok((next, h)) => {
                        operation = next;
                        history = h;
                        continue;
                    }
                    Err(f) => Err(f),
                }
            }
            Operation::Reinstall { status } => reinstall(ctx, item, spec, w, &status).await,
            Operation::Blocked(why) => {
                let why = blocked_reason(&history, why);
                return (Err(ReleaseError::DeployRefused(why)), Some(history));
            }
            Operation::CheckLive | Operation::CompareAdopted => unreachable!("resolved by needed"),
        };
        return (result, None);
    }
    let why = recovered.unwrap_or_else(|| "the release is still pending after recovery".into());
    (Err(ReleaseError::DeployFailed(why)), None)
}

/// A release that never deployed: uninstalled, then installed again.
async fn reinstall(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    spec: &ReleaseSpec,
    w: &Wanted,
    status: &str,
) -> Result<Success, ReleaseError> {
    let message = format!(
        "the release never deployed (revision left {status}); uninstalled to install it again"
    );
    ctx.cluster
        .fenced()
        .map_err(|e| ReleaseError::DeployFailed(e.to_string()))?;
    ctx.settings
        .binary
        .uninstall(&spec.release_name, &spec.target_namespace, spec.timeout)
        .await
        .map_err(|e| ReleaseError::DeployFailed(format!("recovering from {status}: {e}")))?;
    announce_recovery(ctx.cluster, item, spec, &message).await;
    let outcome = install_or_upgrade(
        ctx, item, spec, &w.located, &w.values, &w.digests, None, &message,
    )
    .await?;
    Ok(Success {
        action: match outcome.action {
            ReleaseAction::Installed => ReleaseAction::Reinstalled,
            other => other,
        },
        ..outcome
    })
}

/// Why a release is blocked, with helm's own reason for the failed
/// revision: it stays in the status until the release works.
fn blocked_reason(history: &storage::History, why: String) -> String {
    let said = history
        .records
        .iter()
        .rev()
        .find(|r| r.status == "failed")
        .and_then(|r| history.content(r.version).ok())
        .map(|c| c.description.chars().take(2000).collect::<String>())
        .filter(|d| !d.is_empty());
    match said {
        Some(said) => format!("{why}; helm said: {said}"),
        None => why,
    }
}

/// Says in the log and in a Warning Event that a release was recovered.
pub(super) async fn announce_recovery(
    cluster: &Cluster,
    item: &AppliedRelease,
    spec: &ReleaseSpec,
    message: &str,
) {
    tracing::warn!(release = %spec.release_name, "{message}");
    event(cluster, &item.id, "Warning", "ReleaseRecovered", message).await;
}

/// A release tidegate did not make: unchanged when it runs the same chart
/// version with the same values, so adopting it adds no Helm revision.
pub(super) fn compare_adopted(
    history: &storage::History,
    located: &chart::Located,
    chart_dir: Option<&std::path::Path>,
    values: &Value,
) -> Operation {
    let Some(deployed) = history.deployed() else {
        return Operation::Upgrade("adopting the release".into());
    };
    let Ok(content) = history.content(deployed.version) else {
        return Operation::Upgrade("adopting the release (its record cannot be read)".into());
    };
    let (name, version, app_version) = match (chart_dir, &located.kind) {
        (Some(dir), _) => chart_metadata(dir),
        (None, chart::Kind::Repository { name, version, .. }) => {
            (name.clone(), version.clone(), content.app_version.clone())
        }
        _ => Default::default(),
    };
    if content.chart_name == name
        && content.chart_version == version
        && content.app_version == app_version
        && content.config == *values
    {
        Operation::CheckLive
    } else {
        Operation::Upgrade("adopting the release: its chart or values differ from Git".into())
    }
}

/// `name`, `version` and `appVersion` from a chart's Chart.yaml.
pub(super) fn chart_metadata(dir: &std::path::Path) -> (String, String, String) {
    let text = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap_or_default();
    let chart = parse_documents(&text, &ParseLimits::default())
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or(Value::Null);
    let field = |k: &str| match &chart[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    (field("name"), field("version"), field("appVersion"))
}
