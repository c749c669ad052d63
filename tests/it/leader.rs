//! Two or three daemons on one sync set take turns through its Lease: one
//! syncs while the others stand by; a killed leader is replaced within
//! 15 s; a paused leader that lost the Lease writes nothing once resumed.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::servers::free_port;
use crate::support::{Daemon, GitRepo, app_yaml, client, eventually, http, settings_value, unique};

/// Within this, a standby must hold the Lease of a leader that is gone.
const TAKEOVER: Duration = Duration::from_secs(15);

struct Replica {
    daemon: Daemon,
    port: u16,
}

fn start(repo: &GitRepo, path: &str) -> Replica {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = repo.daemon(
        &repo.url(),
        &[
            "--leader-elect",
            "--git-path",
            path,
            "--listen",
            &listen,
            "--git-poll-interval",
            "2s",
        ],
    );
    Replica { daemon, port }
}

async fn holder(sync_set: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client().await, "default");
    leases
        .get_opt(&format!("{sync_set}-leader"))
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn wait_holder(sync_set: &str, replica: &Replica, within: Duration) -> Duration {
    let started = Instant::now();
    let suffix = format!("-{}", replica.daemon.pid());
    eventually("the Lease held by the replica", within, || async {
        holder(sync_set).await.filter(|h| h.ends_with(&suffix))
    })
    .await;
    started.elapsed()
}

fn readyz(replica: &Replica) -> String {
    http(replica.port, "GET", "/readyz", &[], b"").1
}

/// `tidegate_syncs_total` summed over results, from a replica's metrics.
fn syncs(replica: &Replica) -> f64 {
    let (_, body) = http(replica.port, "GET", "/metrics", &[], b"");
    body.lines()
        .filter(|l| l.starts_with("tidegate_syncs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn replicas_take_turns_through_the_lease() {
    let ns = unique("leader");
    let repo = GitRepo::new();
    // Each replica syncs its own path into the same ConfigMap: what it
    // holds says who wrote last.
    repo.write("a/app.yaml", &app_yaml(&ns, "from-a"))
        .write("b/app.yaml", &app_yaml(&ns, "from-b"));
    repo.push("two paths");
    let set = repo.sync_set.clone();

    let a = start(&repo, "a");
    wait_holder(&set, &a, Duration::from_secs(30)).await;
    eventually("A synced", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("from-a")).then_some(())
    })
    .await;
    let b = start(&repo, "b");
    crate::support::wait_http(b.port, "/readyz", 200);
    assert!(readyz(&b).starts_with("standby"), "{}", readyz(&b));
    assert_eq!(syncs(&b), 0.0, "the standby does not sync");
    assert_eq!(settings_value(&ns).await.as_deref(), Some("from-a"));

    // The leader is killed: the standby takes over and syncs.
    a.daemon.signal("KILL");
    let took = wait_holder(&set, &b, TAKEOVER).await;
    eprintln!("takeover after SIGKILL: {:.1}s", took.as_secs_f64());
    eventually("B synced", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("from-b")).then_some(())
    })
    .await;

    // The leader is paused past its Lease: a third replica takes over.
    let c = start(&repo, "a");
    crate::support::wait_http(c.port, "/readyz", 200);
    b.daemon.signal("STOP");
    let took = wait_holder(&set, &c, TAKEOVER).await;
    eprintln!("takeover after SIGSTOP: {:.1}s", took.as_secs_f64());
    eventually("C synced", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("from-a")).then_some(())
    })
    .await;
    let b_syncs = {
        b.daemon.signal("CONT");
        eventually("B standing by again", Duration::from_secs(20), || async {
            readyz(&b).starts_with("standby").then_some(())
        })
        .await;
        syncs(&b)
    };
    // A new commit: C applies it; B, resumed, writes nothing.
    repo.write("a/app.yaml", &app_yaml(&ns, "from-a-2"))
        .write("b/app.yaml", &app_yaml(&ns, "from-b-2"));
    repo.push("both paths changed");
    eventually("C applied the commit", Duration::from_secs(30), || async {
        (settings_value(&ns).await.as_deref() == Some("from-a-2")).then_some(())
    })
    .await;
    assert_eq!(syncs(&b), b_syncs, "the resumed replica did not sync");
    assert!(readyz(&b).starts_with("standby"));
    assert_eq!(settings_value(&ns).await.as_deref(), Some("from-a-2"));
    drop(c);
}
