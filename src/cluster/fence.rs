//! The write fence: with leader election, a write is sent only while this
//! process surely holds the Lease, judged on its own monotonic clock. A
//! write refused so is [`NotLeader`], never an error of the API server.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether this process may write: until when its Lease surely holds.
#[derive(Debug, Default)]
pub struct Fence {
    valid_until: Mutex<Option<Instant>>,
}

impl Fence {
    pub fn holds(&self) -> bool {
        self.valid_until
            .lock()
            .expect("fence")
            .is_some_and(|until| Instant::now() < until)
    }

    /// The Lease was renewed by a request sent at `at`; writes may go on
    /// for `valid_for` from then.
    pub fn renewed(&self, at: Instant, valid_for: Duration) {
        *self.valid_until.lock().expect("fence") = Some(at + valid_for);
    }

    pub fn lost(&self) {
        *self.valid_until.lock().expect("fence") = None;
    }
}

/// A write not sent: another daemon may hold the Lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not written: this daemon no longer holds the leader Lease")]
pub struct NotLeader;

/// Why a write to the cluster did not take.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl WriteError {
    /// The API server's refusal, if it was one.
    pub fn api(&self) -> Option<&kube::Error> {
        match self {
            WriteError::Api(e) => Some(e),
            WriteError::NotLeader(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_only_from_a_renewal_until_it_runs_out_or_is_lost() {
        let fence = Fence::default();
        assert!(!fence.holds(), "never renewed");
        fence.renewed(Instant::now(), Duration::from_secs(60));
        assert!(fence.holds());
        fence.lost();
        assert!(!fence.holds());
        fence.renewed(
            Instant::now() - Duration::from_secs(5),
            Duration::from_secs(1),
        );
        assert!(!fence.holds(), "renewed too long ago");
    }
}
