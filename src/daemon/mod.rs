//! The daemon: the reconciler loop (and `--once`, its first turn), and its
//! edges besides Git and the API server: its HTTP endpoints (API, health,
//! metrics, webhooks), sync requests from `tidegate sync`, and the watch on a
//! local repository. Each edge turns an outside event into a trigger for the
//! loop.

pub mod access;
pub mod auth;
pub mod automation;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod reconciler;
pub mod registry_hook;
pub mod requests;
mod tasks;
pub mod watch;
pub mod webhook;

pub use reconciler::{Config, run};

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// What the triggers share with the sync loop.
#[derive(Default)]
pub struct Triggers {
    /// Wakes the loop; a burst of wake-ups before it runs is one wake-up.
    pub wake: Notify,
    /// Fetch now, not at the next poll.
    pub fetch: AtomicBool,
    /// Sync even if the revision did not move.
    pub force: AtomicBool,
    /// A managed object drifted: sync the current revision again.
    pub heal: AtomicBool,
    /// `tidegate sync` requests to answer with the next sync.
    pub requests: Mutex<BTreeSet<String>>,
    /// A registry announced a push: look up images now.
    pub automate: Notify,
    /// Cancelled on SIGTERM or SIGINT.
    pub stop: tokio_util::sync::CancellationToken,
}

impl Triggers {
    /// A new commit may be there: fetch now.
    pub fn fetch_now(&self) {
        self.fetch.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Fetch and sync now, even if the revision did not move.
    pub fn sync_now(&self) {
        self.force.store(true, Ordering::SeqCst);
        self.fetch_now();
    }

    /// Sync the revision last synced again, without fetching: the cluster
    /// drifted from it.
    pub fn heal_now(&self) {
        self.heal.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}
