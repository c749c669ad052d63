//! What a release would do, without doing it: the chart rendered with
//! Git's values, and whether an install or upgrade is due (`diff`,
//! `validate`).

use super::*;

/// What `diff` and `validate` show of one release.
#[derive(Debug)]
pub struct Preview {
    /// `namespace/name` of the Helm release.
    pub release: String,
    pub namespace: String,
    /// Why it would be installed or upgraded; `None` when unchanged.
    pub change: Option<String>,
    /// The objects the chart renders to, when it would change.
    pub rendered: Vec<Value>,
}

/// Renders a HelmRelease's chart with `helm template`, when a sync would
/// install or upgrade it (with a cluster) or always (offline, without one).
pub async fn preview(
    cluster: Option<&Cluster>,
    settings: &Settings,
    sources: &chart::Sources,
    id: &ObjectRef,
    object: &Value,
) -> Result<Preview, ReleaseError> {
    let spec = release::parse(id, object).map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    let w = wanted(cluster, sources, &spec).await?;
    let change = match cluster {
        Some(cluster) => match needed(cluster, &spec, &w).await?.0 {
            None => None,
            Some(Operation::Install) => Some("would be installed".to_string()),
            Some(Operation::Upgrade(why)) => Some(format!("would be upgraded: {why}")),
            Some(Operation::Blocked(why)) => return Err(ReleaseError::DeployRefused(why)),
            Some(op) => Some(format!("would be recovered first: {op:?}")),
        },
        None => Some("rendered offline".to_string()),
    };
    let mut preview = Preview {
        release: format!("{}/{}", spec.target_namespace, spec.release_name),
        namespace: spec.target_namespace.clone(),
        change,
        rendered: Vec::new(),
    };
    if preview.change.is_none() {
        return Ok(preview);
    }
    let work = work_dir(settings, &spec)?;
    let (chart, values_json) =
        prepare(cluster, settings, &spec, &w.located, &w.values, work.path()).await?;
    let manifest = settings
        .binary
        .template(
            &spec.release_name,
            &spec.target_namespace,
            &chart,
            &values_json,
            spec.skip_crds,
            sources.proxy_settings.as_ref(),
        )
        .await
        .map_err(|e| ReleaseError::DeployFailed(e.to_string()))?;
    preview.rendered = parse_documents(&manifest, &ParseLimits::default()).map_err(|e| {
        ReleaseError::DeployFailed(format!("the chart renders YAML that cannot be read: {e}"))
    })?;
    Ok(preview)
}
