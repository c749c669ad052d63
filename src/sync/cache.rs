//! The render cache: a desired set kept while the trees it was rendered
//! from stay the same, so a sync of an unchanged tree parses nothing.

use std::fmt;

use crate::render::{self, DesiredSet};
use crate::source::Snapshot;

/// A rendered desired set, kept while the trees it was read from are the
/// same: an unchanged tree is not parsed again.
type Rendered = Option<(Vec<String>, std::sync::Arc<DesiredSet>)>;

#[derive(Clone, Default)]
pub struct RenderCache(std::sync::Arc<std::sync::Mutex<Rendered>>);

impl fmt::Debug for RenderCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RenderCache")
    }
}

impl RenderCache {
    /// The set `snapshot` renders to with `options` (its objects marked for
    /// `options.sync_set`, so that the placed objects of every sync share
    /// them): from the cache if the trees are the ones last rendered, else
    /// rendered (off the async workers: parsing is CPU-bound) and kept.
    pub async fn render(
        &self,
        snapshot: &Snapshot,
        options: &render::Options,
    ) -> std::sync::Arc<DesiredSet> {
        let (snap, options) = (snapshot.clone(), options.clone());
        let cache = self.0.clone();
        tokio::task::spawn_blocking(move || {
            // Other decryption keys may decrypt otherwise.
            let key = snap.tree_ids(&options.paths).map(|mut key| {
                key.extend(options.sops.digest().map(|d| format!("sops keys {d}")));
                key
            });
            {
                let mut cached = cache.lock().expect("render cache");
                if let (Some(key), Some((cached_key, set))) = (&key, &*cached)
                    && key == cached_key
                {
                    tracing::debug!("the trees did not change: not rendered again");
                    return set.clone();
                }
                // The old set goes before the new one is parsed, not after.
                *cached = None;
            }
            let set = render::render(&snap.tree, &options);
            let set = std::sync::Arc::new(set);
            *cache.lock().expect("render cache") = key.map(|k| (k, set.clone()));
            set
        })
        .await
        .expect("render task")
    }
}
