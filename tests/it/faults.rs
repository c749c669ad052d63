//! The fault suite: Git servers that are down, stall, refuse or rewrite
//! history; the API connection lost mid-sync; the daemon killed mid-apply;
//! an aggregated API answering 503; the state object deleted or unwritable;
//! floods of webhooks and slow clients. Each test checks that the error names
//! the culprit, that nothing was pruned wrongly, and that the daemon lives
//! on. Run it alone with `cargo xtask test -- faults`.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::servers::{GitHttps, free_port};
use crate::support::{
    GitRepo, Relay, client, cm_yaml, configmap, dynamic_api, eventually, http, metric, ns_yaml,
    service_account_token, status_json, stderr, stdout, tidegate_command, unique, wait_http,
};

const GC: &str = "--sync-garbage-collection";

/// A repository with Namespace `ns` and one ConfigMap per name (in
/// `<name>.yaml`), synced once with garbage collection on.
fn synced(prefix: &str, names: &[&str]) -> (String, GitRepo) {
    let ns = unique(prefix);
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns));
    for name in names {
        repo.write(&format!("{name}.yaml"), &cm_yaml(&ns, name, "1"));
    }
    repo.push("base");
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    (ns, repo)
}

#[tokio::test]
async fn git_server_down_then_back() {
    let repo = GitRepo::new();
    let ns = unique("fault-down");
    repo.write(
        "app.yaml",
        &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "a", "1")),
    );
    repo.push("one");
    // Reserve a port for a server that is not there yet.
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/repo.git");
    let out = repo.sync_once_from(&url, &["--git-timeout", "2s"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot fetch branch main from {url}")),
        "{err}"
    );
    let status = status_json(&repo.sync_set);
    assert_eq!(status["result"], "failed");
    assert!(
        status["message"].as_str().unwrap().contains(&url),
        "{status}"
    );
    // The server comes up: the next try succeeds.
    let server = GitHttps::start(repo.bare.parent().unwrap(), "reader:letmein");
    let url = server
        .url("repo.git")
        .replace("https://", "https://reader:letmein@");
    let ca = server.ca_file.to_string_lossy().into_owned();
    let out = repo.sync_once_from(&url, &["--git-ca-file", &ca], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&ns, "a").await.is_some());
    assert!(!stderr(&out).contains("letmein"), "{}", stderr(&out));
}

#[tokio::test]
async fn git_server_that_stalls_times_out() {
    let repo = GitRepo::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let held = stop.clone();
    // Accepts connections and never answers.
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut open = Vec::new();
        while !held.load(Ordering::SeqCst) {
            if let Ok((s, _)) = listener.accept() {
                open.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        open.len()
    });
    let url = format!("https://127.0.0.1:{port}/repo.git");
    let started = Instant::now();
    let out = repo.sync_once_from(&url, &["--git-timeout", "2s"], &[]);
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let accepted = server.join().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(accepted >= 1, "the fetch reached the stalled server");
    assert!(
        err.contains(&format!("cannot fetch branch main from {url}")),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(15),
        "took {took:?} with --git-timeout 2s"
    );
}

#[tokio::test]
async fn git_credentials_refused() {
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml("default", &unique("creds"), "1"));
    repo.push("one");
    let server = GitHttps::start(repo.bare.parent().unwrap(), "reader:letmein");
    let url = server
        .url("repo.git")
        .replace("https://", "https://reader:wrong-pass@");
    let ca = server.ca_file.to_string_lossy().into_owned();
    let out = repo.sync_once_from(&url, &["--git-ca-file", &ca], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("authentication to https://reader:***@127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("wrong-pass"), "{err}");
}

#[tokio::test]
async fn force_push_syncs_the_new_history_and_prunes_what_it_dropped() {
    let (ns, repo) = synced("fault-force", &["a"]);
    repo.write("b.yaml", &cm_yaml(&ns, "b", "1"));
    repo.push("adds b");
    assert!(repo.sync_once(&[GC]).status.success());
    assert!(configmap(&ns, "b").await.is_some());
    // Rewrite history: drop the commit that added b, add c instead.
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo.work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["reset", "--quiet", "--hard", "HEAD~1"]);
    repo.write("c.yaml", &cm_yaml(&ns, "c", "1"));
    git(&["add", "--all"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "--quiet",
        "-m",
        "c instead",
    ]);
    git(&["push", "--quiet", "--force", "origin", "HEAD:main"]);
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("pruned v1 ConfigMap {ns}/b")),
        "{}",
        stdout(&out)
    );
    assert!(configmap(&ns, "c").await.is_some());
    assert!(configmap(&ns, "a").await.is_some());
}

#[tokio::test]
async fn branch_deleted_prunes_nothing() {
    let (ns, repo) = synced("fault-branch", &["a"]);
    // Deleted on the server (a push would be refused for the current branch).
    let out = Command::new("git")
        .args(["update-ref", "-d", "refs/heads/main"])
        .current_dir(&repo.bare)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("branch main not found"), "{err}");
    assert!(configmap(&ns, "a").await.is_some());
    // The inventory survived: a later good commit still prunes correctly.
    std::fs::remove_file(repo.work.join("a.yaml")).unwrap();
    repo.push("restored without a");
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&ns, "a").await.is_none());
}

/// A repository with a namespace and `count` ConfigMaps `cm-NNN`, one per file.
fn many_configmaps(prefix: &str, count: usize) -> (String, GitRepo) {
    let ns = unique(prefix);
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns));
    for i in 0..count {
        repo.write(
            &format!("cm-{i:03}.yaml"),
            &cm_yaml(&ns, &format!("cm-{i:03}"), "1"),
        );
    }
    repo.push("many");
    (ns, repo)
}

#[tokio::test]
async fn api_server_connection_lost_mid_sync() {
    let (ns, repo) = many_configmaps("fault-api", 150);
    let relay = Relay::start();
    let dir = tempfile::tempdir().unwrap();
    let relayed = relay.kubeconfig(dir.path());
    let args = repo.once_args(&[GC]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.path().join("stderr.log");
    let mut child = tidegate_command(&args)
        .env("KUBECONFIG", &relayed)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Cut the connection once objects are being created.
    let mut seen = 0;
    for line in lines.by_ref() {
        if line.unwrap().starts_with("created v1 ConfigMap") {
            seen += 1;
            if seen == 5 {
                relay.down.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    // Keep reading so the child never blocks on a full pipe.
    lines.for_each(drop);
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the sync lost its API server and must fail"
    );
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("the sync could not be recorded"), "{err}");
    // The API server is back: the next sync completes; nothing was lost.
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = Api::<ConfigMap>::namespaced(client().await, &ns)
        .list(&Default::default())
        .await
        .unwrap();
    let ours = listed
        .items
        .iter()
        .filter(|c| c.metadata.name.as_deref().unwrap().starts_with("cm-"))
        .count();
    assert_eq!(ours, 150);
}

#[tokio::test]
async fn daemon_killed_mid_apply_loses_nothing() {
    let (ns, repo) = many_configmaps("fault-kill", 200);
    let args = repo.once_args(&[GC]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = tidegate_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = 0;
    for line in lines {
        if line.unwrap().starts_with("created v1 ConfigMap") {
            seen += 1;
            if seen == 10 {
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    // Restarted: everything is applied and recorded.
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The inventory is consistent: dropping half the files prunes exactly them.
    for i in 0..100 {
        std::fs::remove_file(repo.work.join(format!("cm-{i:03}.yaml"))).unwrap();
    }
    repo.push("half");
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("pruned v1 ConfigMap"))
            .count(),
        100
    );
    assert!(configmap(&ns, "cm-000").await.is_none());
    assert!(configmap(&ns, "cm-100").await.is_some());
}

#[tokio::test]
async fn aggregated_api_answering_503_keeps_its_inventory_entries() {
    let (ns, repo) = synced("fault-503", &["a", "b"]);
    let group = format!("{ns}.example.com");
    let apiservice = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": format!("v1.{group}")},
        "spec": {"group": group, "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "insecureSkipTLSVerify": true, "service": {"namespace": "default", "name": format!("{ns}-nothing"), "port": 443}}
    });
    // The inventory also lists a Widget of the aggregated group (as if it had
    // been applied while that API worked).
    crate::support::edit_inventory("default", &repo.sync_set, |inventory| {
        inventory[format!("{group}/v1")] = json!({"Widget": {ns.clone(): ["w"]}});
    })
    .await;
    let state_name = format!("{}-state", repo.sync_set);
    let states: Api<ConfigMap> = Api::namespaced(client().await, "default");
    let services = dynamic_api(
        "apiregistration.k8s.io/v1",
        "APIService",
        "apiservices",
        None,
    )
    .await;
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(apiservice).unwrap(),
        )
        .await
        .unwrap();
    // Git drops b: b is pruned; the Widget, whose kind cannot be resolved, is kept.
    std::fs::remove_file(repo.work.join("b.yaml")).unwrap();
    repo.push("drop b");
    let out = repo.sync_once(&[GC]);
    services
        .delete(&format!("v1.{group}"), &DeleteParams::default())
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        stdout(&out).contains(&format!("pruned v1 ConfigMap {ns}/b")),
        "{}",
        stdout(&out)
    );
    assert!(
        err.contains(&format!(
            "{group}/v1 Widget {ns}/w: not pruned, kept for the next sync"
        )),
        "{err}"
    );
    assert!(err.contains("the API server answered 503"), "{err}");
    let state = states.get(&state_name).await.unwrap();
    assert!(
        state.data.unwrap()["inventory"].contains("Widget"),
        "the entry is kept"
    );
}

#[tokio::test]
async fn state_object_deleted_by_hand() {
    let (ns, repo) = synced("fault-state", &["a"]);
    Api::<ConfigMap>::namespaced(client().await, "default")
        .delete(
            &format!("{}-state", repo.sync_set),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    // Without an inventory nothing can be pruned; the sync recreates the record.
    std::fs::remove_file(repo.work.join("a.yaml")).unwrap();
    repo.push("drop a");
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        configmap(&ns, "a").await.is_some(),
        "no inventory, no prune"
    );
    assert_eq!(status_json(&repo.sync_set)["result"], "succeeded");
}

#[tokio::test]
async fn status_that_cannot_be_written_fails_the_sync() {
    let ns = unique("fault-record");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns));
    repo.push("base");
    assert!(repo.sync_once(&[]).status.success());
    // An immutable state ConfigMap refuses every write of the record.
    let state_name = format!("{}-state", repo.sync_set);
    let states: Api<ConfigMap> = Api::namespaced(client().await, "default");
    states
        .patch(
            &state_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"immutable": true})),
        )
        .await
        .unwrap();
    repo.write("a.yaml", &cm_yaml(&ns, "a", "1"));
    repo.push("a");
    let out = repo.sync_once(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the sync could not be recorded: cannot record the sync state default/{state_name}"
        )),
        "{err}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client().await, "default");
    let said = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.involved_object.name.as_deref() == Some(state_name.as_str())
                && e.type_.as_deref() == Some("Warning")
                && e.message
                    .unwrap_or_default()
                    .contains("the sync could not be recorded")
        });
    assert!(said, "a Warning Event says the record was lost");
    // The running daemon says so on /readyz.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = repo.daemon(&repo.url(), &["--listen", &listen, "--git-watch", "false"]);
    wait_http(port, "/healthz", 200);
    eventually(
        "/readyz to report the lost record",
        Duration::from_secs(30),
        || async {
            let (code, body) = http(port, "GET", "/readyz", &[], b"");
            (code == 503 && body.contains("could not be recorded")).then_some(())
        },
    )
    .await;
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    states
        .delete(&state_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn failing_fetches_back_off_whatever_triggers_them() {
    let repo = GitRepo::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dead = format!("https://127.0.0.1:{}/repo.git", free_port());
    let _daemon = repo.daemon(
        &dead,
        &[
            "--listen",
            &listen,
            "--git-poll-interval",
            "1m",
            "--git-timeout",
            "1s",
        ],
    );
    wait_http(port, "/healthz", 200);
    eventually(
        "the first failed fetch",
        Duration::from_secs(30),
        || async { (metric(port, "tidegate_syncs_total{result=\"failed\"}") >= 1.0).then_some(()) },
    )
    .await;
    let before = metric(port, "tidegate_fetches_total");
    let token = service_account_token(&unique("flood-sync"), &repo.sync_set, true).await;
    let bearer = [("Authorization", format!("Bearer {token}"))];
    for _ in 0..20 {
        assert_eq!(http(port, "POST", "/api/v1/sync", &bearer, b"").0, 202);
    }
    for _ in 0..3 {
        let out = tidegate_command(&["sync", "--sync-set-name", &repo.sync_set, "--timeout", "1s"])
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0));
    }
    let after = metric(port, "tidegate_fetches_total");
    // The first backoff is about 5 s: at most two more fetches in this time.
    assert!(
        after - before <= 2.0,
        "{} fetches while backing off",
        after - before
    );
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    // The same failure again and again is one Warning Event, counted.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client().await, "default");
    let state_name = format!("{}-state", repo.sync_set);
    let (events_seen, count) =
        eventually("a repeated warning", Duration::from_secs(40), || async {
            let ours: Vec<_> = events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(state_name.as_str()))
                .collect();
            let count = ours.iter().map(|e| e.count.unwrap_or(1)).max().unwrap_or(0);
            (count >= 2).then_some((ours.len(), count))
        })
        .await;
    assert_eq!(events_seen, 1, "{count} failures in one Event");
}

#[tokio::test]
async fn flood_of_webhooks_and_slow_clients() {
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml("default", &unique("flood"), "1"));
    repo.push("one");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = repo.daemon(&repo.url(), &["--listen", &listen, "--git-watch", "false"]);
    wait_http(port, "/readyz", 200);
    // 80 clients that connect and send nothing hold every slot…
    let idle: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() >= 64);
    // …until the header timeout frees them: the server answers again.
    let started = Instant::now();
    wait_http(port, "/healthz", 200);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    // A flood of unsigned webhooks from many threads: all refused, the daemon lives on.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..40)
                    .filter(|_| http(port, "POST", "/hooks/github", &[], b"{}").0 == 401)
                    .count()
            })
        })
        .collect();
    let refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(refused >= 300, "{refused} of 320 refused with 401");
    assert_eq!(http(port, "GET", "/readyz", &[], b"").0, 200);
}

#[tokio::test]
async fn the_record_fits_10000_objects_and_5000_errors() {
    use tidegate::cluster::Cluster;
    use tidegate::cluster::state::StateRef;
    use tidegate::model::ObjectRef;
    use tidegate::model::record::ObjectError;
    use tidegate::sync::SyncReport;

    let cluster = Cluster::new(client().await);
    let state = StateRef {
        namespace: "default".into(),
        sync_set: unique("record"),
    };
    // Names as long as Kubernetes allows: about 2.5 MB of inventory.
    let inventory: tidegate::model::Inventory = (0..10_000)
        .map(|i| {
            let name = format!("{i:05}-{}", "n".repeat(240));
            ObjectRef::new("v1", "ConfigMap", Some(&format!("ns-{}", i % 10)), &name)
        })
        .collect();
    let report = SyncReport {
        revision: Some("0".repeat(40)),
        errors: (0..5_000)
            .map(|i| ObjectError {
                object: format!("v1 ConfigMap ns/{i}"),
                origin: Some(format!("dir/{i}.yaml (document 0)")),
                reason: "r".repeat(200),
            })
            .collect(),
        ..SyncReport::default()
    };
    let status = report.status(tidegate::cluster::state::now());
    cluster
        .record(&state, &status, Some(&inventory))
        .await
        .unwrap();
    // A fresh client reads back exactly what was recorded.
    let reader = Cluster::new(client().await);
    assert_eq!(reader.read_inventory(&state).await.unwrap(), inventory);
    let read = reader.read_status(&state).await.unwrap().unwrap();
    assert_eq!(read.errors.len(), 100);
    assert_eq!(read.errors_total, 5_000);
    assert_eq!(read.counts["failed"], 5_000);
    let maps = Api::<ConfigMap>::namespaced(client().await, "default");
    let main = maps.get(&state.name()).await.unwrap();
    let size = serde_json::to_vec(&main).unwrap().len();
    assert!(
        size < 512 * 1024 + 64 * 1024,
        "state ConfigMap is {size} bytes"
    );
    let shards = maps
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("tidegate.dev/inventory-of={}", state.name())),
        )
        .await
        .unwrap();
    assert!(shards.items.len() >= 5, "{} shards", shards.items.len());
    // A small inventory goes back inline, and the shards go.
    let small: tidegate::model::Inventory = inventory.iter().take(3).cloned().collect();
    reader.record(&state, &status, Some(&small)).await.unwrap();
    assert_eq!(
        Cluster::new(client().await)
            .read_inventory(&state)
            .await
            .unwrap(),
        small
    );
    let shards = maps
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("tidegate.dev/inventory-of={}", state.name())),
        )
        .await
        .unwrap();
    assert!(shards.items.is_empty(), "old shards are removed");
}

#[tokio::test]
async fn git_cache_stays_small_over_200_commits() {
    use tidegate::source::GitSource;
    fn size(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    size(&e.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    }
    let repo = GitRepo::new();
    let source = GitSource {
        url: repo.url(),
        branch: "main".into(),
        cache_dir: repo.cache.clone(),
        access: Default::default(),
    };
    let mut fetched_objects = Vec::new();
    for i in 0..200 {
        repo.write(
            &format!("apps/app-{}.yaml", i % 20),
            &cm_yaml("default", &format!("app-{}", i % 20), &i.to_string()),
        );
        let revision = repo.push(&format!("commit {i}"));
        let snapshot = source.fetch().unwrap();
        assert_eq!(snapshot.revision, revision);
        fetched_objects.push(size(&repo.cache.join("repo.git/objects")));
    }
    let packs = || {
        std::fs::read_dir(repo.cache.join("repo.git/objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    };
    // Every fetch brought a commit: repacked only once 32 packs piled up.
    assert!(packs() <= 33, "{} packs", packs());
    // A fetch that finds nothing new repacks.
    source.fetch().unwrap();
    assert!(packs() <= 9, "{} packs after an idle fetch", packs());
    // The server's copy, packed as `git gc` would keep it.
    let out = Command::new("git")
        .args(["gc", "--quiet"])
        .current_dir(&repo.bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    let own = size(&repo.bare.join("objects"));
    let cache = size(&repo.cache.join("repo.git/objects"));
    eprintln!("after 200 commits: cache {cache} bytes, repository {own} bytes");
    assert!(
        cache <= 2 * own,
        "cache {cache} bytes, repository {own} bytes"
    );
}

/// Issue 19, item 5: anyone who may request a sync may edit the state
/// ConfigMap; an inventory edited to list a kube-system object and a
/// ClusterRole, both carrying the instance's marks, must not make an
/// instance held to --k8s-allow-namespace delete either.
#[tokio::test]
async fn edited_inventory_cannot_prune_outside_the_allow_list() {
    let ns = unique("fault-allow");
    crate::support::create_namespace(&ns).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml(&ns, "a", "1"));
    repo.write("b.yaml", &cm_yaml(&ns, "b", "1"));
    repo.push("two");
    let allow = ["--k8s-allow-namespace", ns.as_str(), GC];
    let out = repo.sync_once(&allow);
    assert!(out.status.success(), "{}", stderr(&out));
    let victim = unique("victim");
    let marks = json!({
        "labels": {"app.kubernetes.io/managed-by": "tidegate"},
        "annotations": {"tidegate.dev/sync-set": repo.sync_set}
    });
    let mut cm = json!({"metadata": marks.clone()});
    cm["metadata"]["name"] = victim.clone().into();
    Api::<ConfigMap>::namespaced(client().await, "kube-system")
        .create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
        .await
        .unwrap();
    let roles = dynamic_api(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        None,
    )
    .await;
    let mut role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": marks, "rules": []});
    role["metadata"]["name"] = victim.clone().into();
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    crate::support::edit_inventory("default", &repo.sync_set, |inventory| {
        inventory["v1"]["ConfigMap"]["kube-system"] = json!([victim]);
        inventory["rbac.authorization.k8s.io/v1"] = json!({"ClusterRole": {"": [victim]}});
    })
    .await;
    std::fs::remove_file(repo.work.join("b.yaml")).unwrap();
    repo.push("drop b");
    let out = repo.sync_once(&allow);
    let err = stderr(&out);
    assert!(
        stdout(&out).contains(&format!("pruned v1 ConfigMap {ns}/b")),
        "what is allowed is still pruned: {}",
        stdout(&out)
    );
    assert!(
        err.contains(&format!(
            "v1 ConfigMap kube-system/{victim}: not pruned: namespace kube-system is not allowed"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "ClusterRole {victim}: not pruned: it is cluster-scoped"
        )),
        "{err}"
    );
    assert!(
        Api::<ConfigMap>::namespaced(client().await, "kube-system")
            .get_opt(&victim)
            .await
            .unwrap()
            .is_some()
    );
    assert!(roles.get_opt(&victim).await.unwrap().is_some());
    Api::<ConfigMap>::namespaced(client().await, "kube-system")
        .delete(&victim, &Default::default())
        .await
        .unwrap();
    roles.delete(&victim, &Default::default()).await.unwrap();
}

/// Issue 19, item 17: an inventory that cannot be read (garbage, or a
/// missing shard) blocks the prune, not the apply; the record is kept as
/// it is and the failure says how to reset it.
#[tokio::test]
async fn unreadable_inventory_blocks_the_prune_not_the_apply() {
    let (ns, repo) = synced("fault-inventory", &["a", "b"]);
    let state_name = format!("{}-state", repo.sync_set);
    let states: Api<ConfigMap> = Api::namespaced(client().await, "default");
    let patch = json!({"data": {"inventory": "{not json"}});
    states
        .patch(&state_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    std::fs::remove_file(repo.work.join("b.yaml")).unwrap();
    repo.write("c.yaml", &cm_yaml(&ns, "c", "1"));
    repo.push("drop b, add c");
    let out = repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        stdout(&out).contains(&format!("created v1 ConfigMap {ns}/c")),
        "applied regardless: {}",
        stdout(&out)
    );
    assert!(
        err.contains("nothing was pruned, and the inventory is kept as it is"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "set the key inventory of ConfigMap default/{state_name} to rebuild"
        )),
        "{err}"
    );
    assert!(configmap(&ns, "b").await.is_some(), "nothing pruned");
    let state = states.get(&state_name).await.unwrap();
    assert_eq!(
        state.data.unwrap()["inventory"],
        "{not json",
        "the record is kept"
    );
    // The documented reset: rebuilt from the sync set's label, a dry run
    // first that names what the next sync prunes.
    let patch = json!({"data": {"inventory": "rebuild"}});
    states
        .patch(&state_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let out = repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the inventory was rebuilt from the sync set's label")
            && err.contains(&format!(
                "are pruned by the next sync unless Git has them again: v1 ConfigMap {ns}/b"
            )),
        "{err}"
    );
    assert!(configmap(&ns, "b").await.is_some(), "a dry run first");
    let out = repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("pruned v1 ConfigMap {ns}/b")),
        "{}",
        stdout(&out)
    );
    assert!(configmap(&ns, "a").await.is_some() && configmap(&ns, "c").await.is_some());
}

/// A daemon with a webhook secret on two listeners, the API's and the
/// webhooks' alone; their ports.
async fn webhook_daemon(prefix: &str) -> (crate::support::Daemon, GitRepo, u16, u16) {
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml("default", &unique(prefix), "1"));
    repo.push("one");
    let secret_name = unique(prefix);
    crate::support::create_secret(&secret_name, json!({"webhook-secret": "s3cret"})).await;
    let (port, hooks_port) = (free_port(), free_port());
    let (listen, hooks_listen) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{hooks_port}"),
    );
    let daemon = repo.daemon(
        &repo.url(),
        &[
            "--listen",
            &listen,
            "--webhook-listen",
            &hooks_listen,
            "--git-watch",
            "false",
            "--webhook-secret-name",
            &secret_name,
        ],
    );
    wait_http(port, "/readyz", 200);
    (daemon, repo, port, hooks_port)
}

/// A signed GitHub push delivery with this ID.
fn delivery(id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", id.to_string()),
        (
            "X-Hub-Signature-256",
            tidegate::daemon::webhook::sign(b"s3cret", body),
        ),
    ]
}

const PUSH: &[u8] = br#"{"ref":"refs/heads/main"}"#;

/// Issue 19, item 10: clients that send a webhook's headers and never its
/// body hold every connection slot, yet the probes answer at once; the
/// webhook listener (what the webhook Service exposes) serves the webhooks
/// and nothing else.
#[tokio::test]
async fn probes_answer_while_slow_bodies_hold_every_slot() {
    use std::io::Write as _;
    let (_daemon, _repo, port, hooks_port) = webhook_daemon("probes").await;
    let slow: Vec<TcpStream> = (0..64)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(
                b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nX-GitHub-Event: push\r\n\r\n{",
            )
            .ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(slow.len(), 64);
    // Once the server holds all 64, only the probes are served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = http(port, "GET", "/metrics", &[], b"");
        if code == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the slow bodies never filled the slots: {code} {body}"
        );
    };
    assert!(body.starts_with("busy"), "{body}");
    for path in ["/healthz", "/readyz"] {
        let started = Instant::now();
        assert_eq!(http(port, "GET", path, &[], b"").0, 200, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path}: {:?}",
            started.elapsed()
        );
    }
    let (code, body) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 503, "only the probes are served while busy: {body}");
    drop(slow);
    for path in ["/metrics", "/readyz", "/api/v1/identity"] {
        assert_eq!(http(hooks_port, "GET", path, &[], b"").0, 404, "{path}");
    }
    let (code, body) = http(
        hooks_port,
        "POST",
        "/hooks/github",
        &delivery("h-1", PUSH),
        PUSH,
    );
    assert_eq!(code, 202, "{body}");
}

/// Issue 19, item 13: a signed delivery replayed is ignored, and a flood
/// of fresh ones is paced to a few fetches.
#[tokio::test]
async fn replayed_and_flooded_webhooks_are_bounded() {
    let (_daemon, _repo, port, _) = webhook_daemon("replays").await;
    let (code, body) = http(port, "POST", "/hooks/github", &delivery("d-1", PUSH), PUSH);
    assert_eq!(code, 202, "{body}");
    let (code, body) = http(port, "POST", "/hooks/github", &delivery("d-1", PUSH), PUSH);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("seen before"), "{body}");
    let answers: Vec<String> = (0..20)
        .map(|i| {
            http(
                port,
                "POST",
                "/hooks/github",
                &delivery(&format!("f-{i}"), PUSH),
                PUSH,
            )
            .1
        })
        .collect();
    let fetching = answers.iter().filter(|a| a.starts_with("fetching")).count();
    assert!(fetching <= 3, "a flood is paced: {answers:?}");
    assert!(answers.iter().any(|a| a.contains("queued")), "{answers:?}");
}

/// A running daemon with helm on `repo`, polling and re-applying only
/// hourly (what syncs is what the test pushes), plus `extra`.
fn helm_daemon(repo: &GitRepo, extra: &[&str]) -> crate::support::Daemon {
    let helm = crate::helm_releases::helm_binary();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--helm-binary",
        &helm,
        "--listen",
        &listen,
        "--git-poll-interval",
        "1h",
        "--sync-interval",
        "1h",
    ];
    args.extend_from_slice(extra);
    repo.daemon(&repo.url(), &args)
}

/// `Some` once ConfigMap `value` in `ns` holds `wanted`.
async fn value_is(ns: String, wanted: &str) -> Option<()> {
    let cm = configmap(&ns, "value").await?;
    (cm.data?.get("value").map(String::as_str) == Some(wanted)).then_some(())
}

/// Issue 19, item 8: a release that fails until Git changes (here one
/// refused by the allow-list) fails every sync, but is no reason to back
/// off: pushes of other objects are applied at once, every time.
#[tokio::test]
async fn a_release_waiting_for_git_does_not_stall_the_daemon() {
    use crate::helm_releases::{copy_chart, crd_installed, helm_release, write_release};
    crd_installed().await;
    let ns = unique("fault-stall");
    crate::support::create_namespace(&ns).await;
    let repo = GitRepo::new();
    copy_chart(&repo);
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", "  targetNamespace: kube-system\n"),
    );
    repo.write("value.yaml", &cm_yaml(&ns, "value", "0"));
    repo.push("a refused release");
    let _daemon = helm_daemon(&repo, &["--k8s-allow-namespace", &ns]);
    let value = |v: &'static str| value_is(ns.clone(), v);
    eventually("the first sync", Duration::from_secs(60), || value("0")).await;
    for v in ["1", "2", "3"] {
        repo.write("value.yaml", &cm_yaml(&ns, "value", v));
        repo.push(v);
        // The watch on the local repository fetches at once; a backoff
        // after the failed syncs would hold this for 5 s and more.
        eventually(
            &format!("value {v} without a backoff"),
            Duration::from_secs(4),
            || value(v),
        )
        .await;
    }
    let status = status_json(&repo.sync_set);
    assert_eq!(
        status["result"], "failed",
        "the release still fails: {status}"
    );
}

/// Issue 19, item 8: a helm operation that runs for its whole timeout (a
/// post-install hook whose Job can never be scheduled) does not hold back
/// the running daemon: the sync leaves it to run, pushes of other objects
/// are applied at once, and the release is reported as still running.
#[tokio::test]
async fn a_hanging_helm_hook_does_not_hold_back_other_objects() {
    use crate::helm_releases::{copy_chart, crd_installed, helm_release, write_release};
    crd_installed().await;
    let ns = unique("fault-hang");
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write(
        "charts/web/templates/hang.yaml",
        "{{- if .Values.hang }}\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-hang\n  annotations:\n    \"helm.sh/hook\": post-install,post-upgrade\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      nodeSelector: {nowhere: \"true\"}\n      containers: [{name: hang, image: busybox, command: [\"true\"]}]\n{{- end }}\n",
    );
    repo.write(
        "ns.yaml",
        &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "value", "0")),
    );
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(
            &ns,
            "web",
            "  timeout: 600\n  values: {hang: true, hook: {enabled: false}}\n",
        ),
    );
    repo.push("a release whose hook never completes");
    let _daemon = helm_daemon(&repo, &[]);
    let value = |v: &'static str| value_is(ns.clone(), v);
    eventually("the first sync", Duration::from_secs(60), || value("0")).await;
    // The first sync waits a while for helm, then goes on without it.
    let state = format!("{}-state", repo.sync_set);
    eventually("the first sync recorded", Duration::from_secs(60), || {
        let state = state.clone();
        async move {
            let data = configmap("default", &state).await?.data?;
            data.contains_key("status").then_some(())
        }
    })
    .await;
    for v in ["1", "2"] {
        repo.write(
            "ns.yaml",
            &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "value", v)),
        );
        repo.push(v);
        eventually(
            &format!("value {v} while helm hangs"),
            Duration::from_secs(8),
            || value(v),
        )
        .await;
    }
    let status = status_json(&repo.sync_set);
    let releases = status["releases"].to_string();
    assert!(
        releases.contains("running"),
        "the release is still running: {status}"
    );
}
