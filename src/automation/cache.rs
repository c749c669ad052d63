//! What registries told: when the image of each tag was built. Kept with a
//! size bound and an expiry, and written to a file, so a rescan — after a
//! restart too — fetches no config blob it already read. Pure but for
//! `load` and `save`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Entries kept at most (the oldest go first).
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTimes {
    /// `canonical:tag` → when its image was built and when that was learnt.
    entries: BTreeMap<String, Learnt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Learnt {
    created: Option<i64>,
    at: i64,
}

fn key(canonical: &str, tag: &str) -> String {
    format!("{canonical}:{tag}")
}

impl BuildTimes {
    /// When `canonical:tag` was built, if learnt less than `expiry` seconds
    /// before `now`; `Some(None)` when the registry did not say.
    pub fn get(&self, canonical: &str, tag: &str, now: i64, expiry: i64) -> Option<Option<i64>> {
        self.entries
            .get(&key(canonical, tag))
            .filter(|l| now - l.at < expiry)
            .map(|l| l.created)
    }

    pub fn put(&mut self, canonical: &str, tag: &str, created: Option<i64>, now: i64) {
        self.entries
            .insert(key(canonical, tag), Learnt { created, at: now });
        // Trimmed by a tenth at a time, not on every insert past the bound.
        if self.entries.len() > MAX_ENTRIES + MAX_ENTRIES / 10 {
            self.trim(MAX_ENTRIES);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops what expired, then the oldest past `max`.
    pub fn expire(&mut self, now: i64, expiry: i64) {
        self.entries.retain(|_, l| now - l.at < expiry);
    }

    /// Keeps the `max` learnt last (by time, then name), so the bound
    /// holds when a cycle learns many at one second.
    fn trim(&mut self, max: usize) {
        if self.entries.len() <= max {
            return;
        }
        let mut order: Vec<(i64, String)> = self
            .entries
            .iter()
            .map(|(k, l)| (l.at, k.clone()))
            .collect();
        order.sort_unstable();
        let drop = order.len() - max;
        for (_, key) in order.into_iter().take(drop) {
            self.entries.remove(&key);
        }
    }

    /// The cache written at `path`; empty when there is none or it cannot
    /// be read (it is only a cache).
    pub fn load(path: &Path) -> BuildTimes {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes the cache to `path` whole (a temporary file renamed).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = path.with_extension("tmp");
        std::fs::write(
            &temporary,
            serde_json::to_vec(self).expect("the cache serializes"),
        )?;
        std::fs::rename(temporary, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_survive_a_save_and_are_bounded() {
        let mut cache = BuildTimes::default();
        cache.put("docker.io/library/nginx", "1.25", Some(100), 1000);
        cache.put("docker.io/library/nginx", "dev", None, 1000);
        assert_eq!(
            cache.get("docker.io/library/nginx", "1.25", 1500, 3600),
            Some(Some(100))
        );
        assert_eq!(
            cache.get("docker.io/library/nginx", "dev", 1500, 3600),
            Some(None)
        );
        assert_eq!(
            cache.get("docker.io/library/nginx", "1.25", 5000, 3600),
            None,
            "expired"
        );
        assert_eq!(
            cache.get("docker.io/library/nginx", "1.26", 1500, 3600),
            None
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.json");
        cache.save(&path).unwrap();
        assert_eq!(BuildTimes::load(&path), cache);
        std::fs::write(&path, "not json").unwrap();
        assert!(
            BuildTimes::load(&path).is_empty(),
            "an unreadable cache is an empty one"
        );

        cache.expire(5000, 3600);
        assert!(cache.is_empty());
        for i in 0..10 {
            cache.put("r", &i.to_string(), Some(i), i);
        }
        cache.trim(4);
        assert_eq!(cache.len(), 4);
        assert_eq!(
            cache.get("r", "9", 9, 100),
            Some(Some(9)),
            "the newest stay"
        );
        assert_eq!(cache.get("r", "0", 9, 100), None);
        for i in 0..10 {
            cache.put("same-second", &i.to_string(), None, 100);
        }
        cache.trim(4);
        assert_eq!(
            cache.len(),
            4,
            "the bound holds when all were learnt at once"
        );
    }
}
