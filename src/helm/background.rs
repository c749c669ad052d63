//! Helm operations that outlive the sync that started them: in a running
//! daemon, one that takes longer than [`OPERATION_WAIT`] goes on alone, its
//! release recorded as still running, and its end brings another sync.

use super::*;

/// How long a sync waits for a helm operation before it leaves it to run on
/// its own: a hook that never completes must not hold back the plain
/// objects, pushes and self-heal for its whole timeout.
pub const OPERATION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Helm operations that run past the sync that started them, by HelmRelease.
/// When one ends, `done` asks for a sync, which records how it ended.
pub struct Background {
    /// HelmRelease → the Helm release (namespace, name) helm is at work on.
    running: std::sync::Mutex<HashMap<ObjectRef, (String, String)>>,
    done: Box<dyn Fn() + Send + Sync>,
}

/// Ends a background operation's entry however its task ends (a panic
/// included), so no release stays "running" for ever.
pub(super) struct Running {
    background: std::sync::Arc<Background>,
    id: ObjectRef,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.background
            .running
            .lock()
            .expect("running")
            .remove(&self.id);
    }
}

/// Where a background operation and the sync that started it stand.
pub(super) const WAITED: u8 = 0;
pub(super) const LEFT: u8 = 1;
pub(super) const ENDED: u8 = 2;

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.running.lock().expect("running").len())
            .finish()
    }
}

impl Background {
    pub fn new(done: impl Fn() + Send + Sync + 'static) -> Background {
        Background {
            running: Default::default(),
            done: Box::new(done),
        }
    }

    /// Whether helm is still at work on this HelmRelease's release.
    pub fn is_running(&self, id: &ObjectRef) -> bool {
        self.running.lock().expect("running").contains_key(id)
    }

    /// Whether helm is at work on this Helm release, for any HelmRelease.
    pub(super) fn is_running_release(&self, key: &(String, String)) -> bool {
        self.running
            .lock()
            .expect("running")
            .values()
            .any(|k| k == key)
    }
}

/// The status of a release helm is still at work on.
pub(super) fn still_running(item: &AppliedRelease) -> ReleaseStatus {
    ReleaseStatus {
        object: item.id.to_string(),
        release: String::new(),
        action: ReleaseAction::Running,
        revision: None,
        status: None,
        message: Some(format!(
            "helm is still at work on it (longer than {}s); the sync after it ends records how",
            OPERATION_WAIT.as_secs()
        )),
        waits_for_git: false,
    }
}

/// Finishes a decided release: in a running daemon, an operation that
/// takes longer than [`OPERATION_WAIT`] goes on without this sync.
pub(super) async fn finish_or_leave(
    ctx: &Context<'_>,
    item: &AppliedRelease,
    decided: Decided,
) -> ReleaseStatus {
    use std::sync::atomic::{AtomicU8, Ordering};
    let (background, key) = match (&ctx.settings.background, &decided) {
        (Some(b), Ok(d)) if d.operation.is_some() => (
            b.clone(),
            (d.spec.target_namespace.clone(), d.spec.release_name.clone()),
        ),
        _ => return finish(ctx, item, decided).await,
    };
    let (cluster, settings, sources, owned) = (
        ctx.cluster.detached(),
        ctx.settings.clone(),
        ctx.sources.clone(),
        item.clone(),
    );
    background
        .running
        .lock()
        .expect("running")
        .insert(item.id.clone(), key);
    let running = Running {
        background: background.clone(),
        id: item.id.clone(),
    };
    let stage = std::sync::Arc::new(AtomicU8::new(WAITED));
    let task_stage = stage.clone();
    let mut task = tokio::spawn(async move {
        let ctx = Context {
            cluster: &cluster,
            settings: &settings,
            sources: &sources,
        };
        let status = finish(&ctx, &owned, decided).await;
        drop(running);
        // The sync that started it went on: this end brings another.
        if task_stage.swap(ENDED, Ordering::SeqCst) == LEFT {
            tracing::info!(object = %owned.id, "{status}");
            (background.done)();
        }
        status
    });
    let ended = |e: tokio::task::JoinError| {
        let mut status = still_running(item);
        status.action = ReleaseAction::Failed;
        status.message = Some(format!("the helm operation ended abnormally: {e}"));
        status
    };
    match tokio::time::timeout(OPERATION_WAIT, &mut task).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => ended(e),
        // It ended just as the wait did: its status is this sync's.
        Err(_) if stage.swap(LEFT, Ordering::SeqCst) == ENDED => task.await.unwrap_or_else(ended),
        Err(_) => {
            tracing::info!(
                object = %item.id,
                "helm takes longer than {}s; the sync goes on without it",
                OPERATION_WAIT.as_secs()
            );
            still_running(item)
        }
    }
}
