//! Leader election: one coordination.k8s.io Lease per sync set, held by one
//! daemon at a time. The holder renews it every few seconds; a standby
//! takes it once it has not been renewed for its duration. Writes are
//! fenced: each write first checks, on this process's own monotonic clock,
//! that the Lease was renewed recently enough that nobody else can hold it
//! (a paused leader that lost it writes nothing when it resumes).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::cluster::fence::Fence;

/// How long a Lease holds without renewal.
pub const DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews it, and a standby tries it.
pub const RENEW: Duration = Duration::from_secs(2);
/// Writes stop this long before the Lease could expire, for clock rates.
const MARGIN: Duration = Duration::from_secs(2);

/// The Lease of one sync set and who this daemon is.
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
}

impl Elector {
    /// Takes or renews the Lease; true when this daemon holds it now.
    async fn try_hold(&self, fence: &Fence) -> Result<bool, kube::Error> {
        let asked = Instant::now();
        let now = Timestamp::now();
        let seconds = DURATION.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    fence.renewed(asked, DURATION - MARGIN);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let duration = spec.lease_duration_seconds.unwrap_or(seconds).max(1);
            renewed.0 + Duration::from_secs(duration as u64) < now
        });
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion makes this a compare-and-swap: of two
        // daemons taking an expired Lease at once, one wins.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                fence.renewed(asked, DURATION - MARGIN);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keeps trying to hold the Lease, every [`RENEW`], for good; `changed`
    /// is told when this daemon becomes or stops being the leader.
    pub async fn run(
        self,
        fence: std::sync::Arc<Fence>,
        changed: std::sync::Arc<tokio::sync::Notify>,
    ) {
        let mut leading = false;
        loop {
            let held = match self.try_hold(&fence).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(lease = %self.name, "cannot renew the Lease: {e}");
                    // Still the holder until the fence runs out.
                    fence.holds()
                }
            };
            if !held {
                fence.lost();
            }
            if held != leading {
                leading = held;
                if held {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                } else {
                    tracing::warn!(lease = %self.name, "lost the Lease: standing by");
                }
                changed.notify_waiters();
            }
            tokio::time::sleep(RENEW).await;
        }
    }
}
