//! What the daemon runs beside its loop: the signal, request, live-state,
//! refs and health watches, and the progress a `tidegate sync` sees; each
//! turns an outside event into a trigger or a record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metrics::Metrics;
use super::reconciler::Config;
use super::{Triggers, requests, watch};
use crate::cluster::fence::Fence;
use crate::cluster::live::Live;

/// Cancels `stop` on SIGTERM or SIGINT.
pub(super) fn watch_signals(triggers: Arc<Triggers>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: finishing the objects in flight");
        triggers.stop.cancel();
    });
}

/// Watches the state ConfigMap for `tidegate sync` requests.
pub(super) fn watch_requests(client: kube::Client, config: &Config, triggers: Arc<Triggers>) {
    let state = config.settings.state.clone();
    tokio::spawn(async move {
        use futures::StreamExt as _;
        use kube::runtime::WatchStreamExt as _;
        let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client, &state.namespace);
        let config = kube::runtime::watcher::Config::default()
            .fields(&format!("metadata.name={}", state.name()));
        let mut maps = kube::runtime::watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(map) = maps.next().await {
            let Ok(map) = map else { continue };
            let annotations = map.metadata.annotations.unwrap_or_default();
            let pending = requests::pending(&annotations);
            let mut known = triggers.requests.lock().expect("requests");
            let new: Vec<String> = pending
                .into_iter()
                .filter(|id| !known.contains(id))
                .collect();
            if !new.is_empty() {
                known.extend(new);
                drop(known);
                triggers.sync_now();
            }
        }
    });
}

/// The watches of the live state; drift brings a sync with `--self-heal`.
pub(super) fn follow_live(
    config: &Config,
    client: &kube::Client,
    triggers: &Arc<Triggers>,
) -> Arc<Live> {
    let healer = triggers.clone();
    let on_drift: Option<crate::cluster::live::OnDrift> = config
        .self_heal
        .then(|| Box::new(move |_: &crate::model::ObjectRef| healer.heal_now()) as _);
    Live::new(
        client.clone(),
        &config.settings.sync_set,
        config.settings.allow_namespaces.clone(),
        on_drift,
    )
}

/// With `--git-watch` and a local repository, a watch on its refs: a
/// commit brings a fetch at once.
pub(super) fn watch_refs(
    config: &Config,
    triggers: &Arc<Triggers>,
) -> Option<notify::RecommendedWatcher> {
    let dir = watch::refs_dir(&config.source.url).filter(|_| config.git_watch && !config.once)?;
    match watch::start(&dir, triggers.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("cannot watch {}: {e}; polling only", dir.display());
            None
        }
    }
}

/// Keeps the health metrics as the watches see the objects.
pub(super) fn follow_health(live: Arc<Live>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut changes = live.subscribe();
        loop {
            let health = live.health();
            metrics.health(&health, live.conflicts().len());
            if changes.changed().await.is_err() {
                return;
            }
            // Many events at once are one update.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Twice a second while a sync answering `tidegate sync` requests runs: how
/// many objects it has done, on the state ConfigMap (a write, so fenced).
pub(super) fn report_progress(
    client: kube::Client,
    config: &Config,
    ids: Vec<String>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    fence: Option<Arc<Fence>>,
) -> tokio::task::JoinHandle<()> {
    let state = config.settings.state.clone();
    tokio::spawn(async move {
        let mut shown = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = done.load(Ordering::Relaxed);
            let may_write = fence.as_ref().is_none_or(|f| f.holds());
            if now != shown
                && may_write
                && requests::progress(&client, &state, &ids, now).await.is_ok()
            {
                shown = now;
            }
        }
    })
}
