//! What Git asks of a release: the chart located and the values merged
//! (`valuesFrom` in order, then `spec.values`), read without quoting them.

use super::*;

/// Locates the chart and merges the values; without a cluster (offline
/// checks) values from ConfigMaps and Secrets are left out.
pub(super) async fn wanted(
    cluster: Option<&Cluster>,
    sources: &chart::Sources,
    spec: &ReleaseSpec,
) -> Result<Wanted, ReleaseError> {
    let located = {
        let (source, sources) = (spec.chart.clone(), sources.clone());
        tokio::task::spawn_blocking(move || chart::locate(&source, &sources))
            .await
            .expect("chart task")
            .map_err(|e| ReleaseError::ChartFetchFailed(crate::model::error_chain(&e)))?
    };
    let chart_dir = match &located.kind {
        chart::Kind::Dir(d) => Some(d.clone()),
        chart::Kind::Repository { .. } => None,
    };
    let values = merged_values(
        cluster,
        spec,
        chart_dir.as_deref(),
        sources.proxy.as_deref(),
        &sources.values,
    )
    .await
    .map_err(ReleaseError::ValuesFailed)?;
    // The proxy settings injected into the release's workloads count as
    // values: changing them upgrades the release.
    let digested = match &sources.proxy_settings {
        Some(p) => json!({"values": values, "proxy": p.variables()}),
        None => values.clone(),
    };
    let digests = Digests {
        chart: located.digest.clone(),
        values: values_digest(&digested),
    };
    Ok(Wanted {
        located,
        chart_dir,
        values,
        digests,
    })
}

/// The values helm is given: `valuesFrom` in order, then `spec.values`.
/// Errors name the source, never what it holds.
pub(super) async fn merged_values(
    cluster: Option<&Cluster>,
    spec: &ReleaseSpec,
    chart_dir: Option<&std::path::Path>,
    proxy: Option<&str>,
    access: &external::Access,
) -> Result<Value, String> {
    let mut merged = json!({});
    for source in &spec.values_from {
        let text = match read_source(cluster, source, chart_dir, proxy, access).await? {
            Some(t) if t.is_empty() => continue,
            Some(t) => t,
            None if source.optional() => continue,
            None => {
                return Err(format!(
                    "valuesFrom {source} not found (mark it optional: true if it may be missing)"
                ));
            }
        };
        let docs = parse_documents(&text, &ParseLimits::default())
            .map_err(|e| format!("valuesFrom {source} is not YAML: {e}"))?;
        for doc in docs {
            if !doc.is_object() {
                return Err(format!("valuesFrom {source} is not a mapping of values"));
            }
            release::merge_values(&mut merged, &doc);
        }
    }
    release::merge_values(&mut merged, &spec.values);
    Ok(merged)
}

/// The text of one values source; `Some("")` for a source in the cluster
/// when there is no cluster to read it from (offline checks).
pub(super) async fn read_source(
    cluster: Option<&Cluster>,
    source: &ValuesSource,
    chart_dir: Option<&std::path::Path>,
    proxy: Option<&str>,
    access: &external::Access,
) -> Result<Option<String>, String> {
    if let ValuesSource::External { url, .. } = source {
        if !access.fetch {
            return Ok(Some(String::new()));
        }
        let (url, proxy, access) = (url.clone(), proxy.map(str::to_string), access.clone());
        return tokio::task::spawn_blocking(move || {
            external::fetch(&url, proxy.as_deref(), &access)
        })
        .await
        .expect("fetch task")
        .map_err(|e| format!("cannot read valuesFrom {source}: {e}"));
    }
    let in_cluster = matches!(
        source,
        ValuesSource::ConfigMap { .. } | ValuesSource::Secret { .. }
    );
    let Some(cluster) = cluster.filter(|_| in_cluster) else {
        if in_cluster {
            return Ok(Some(String::new()));
        }
        return read_file_source(source, chart_dir);
    };
    let read_err = |e: kube::Error| format!("cannot read valuesFrom {source}: {e}");
    match source {
        ValuesSource::ConfigMap {
            name,
            namespace,
            key,
            ..
        } => {
            let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
            let cm = api.get_opt(name).await.map_err(read_err)?;
            Ok(cm.and_then(|c| c.data).and_then(|mut d| d.remove(key)))
        }
        ValuesSource::Secret {
            name,
            namespace,
            key,
            ..
        } => {
            let api: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
            let secret = api.get_opt(name).await.map_err(read_err)?;
            let Some(bytes) = secret.and_then(|s| s.data).and_then(|mut d| d.remove(key)) else {
                return Ok(None);
            };
            String::from_utf8(bytes.0)
                .map(Some)
                .map_err(|_| format!("valuesFrom {source} is not UTF-8 text"))
        }
        _ => read_file_source(source, chart_dir),
    }
}

pub(super) fn read_file_source(
    source: &ValuesSource,
    chart_dir: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    match source {
        ValuesSource::ChartFile { path, .. } => {
            let Some(dir) = chart_dir else {
                return Err(format!(
                    "valuesFrom {source}: chartFileRef needs a chart from Git; for a chart from a Helm repository put the values in a ConfigMap"
                ));
            };
            match std::fs::read_to_string(dir.join(path)) {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("cannot read valuesFrom {source}: {e}")),
            }
        }
        ValuesSource::External { .. }
        | ValuesSource::ConfigMap { .. }
        | ValuesSource::Secret { .. } => unreachable!("read by read_source"),
    }
}
