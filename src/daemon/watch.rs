//! Local watch: for a `file://` or path repository, a change to its refs
//! (a commit, a push) triggers a fetch at once instead of at the next poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};

use super::Triggers;

/// The directory of a local repository's refs, if the URL names a local repository.
pub fn refs_dir(url: &str) -> Option<PathBuf> {
    let path = match url.strip_prefix("file://") {
        Some(p) => PathBuf::from(p),
        None if !url.contains("://") && Path::new(url).exists() => PathBuf::from(url),
        None => return None,
    };
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path
    };
    git_dir.join("refs").is_dir().then_some(git_dir)
}

/// Starts watching; the watcher lives as long as the returned handle.
pub fn start(
    git_dir: &Path,
    triggers: Arc<Triggers>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            triggers.fetch_now();
        }
    })?;
    watcher.watch(&git_dir.join("refs"), RecursiveMode::Recursive)?;
    // `git gc` moves refs into packed-refs, next to refs/.
    watcher.watch(git_dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %git_dir.display(), "watching the local repository for new commits");
    Ok(watcher)
}
