//! The running daemon's watches: drift reverted as soon as it happens (and
//! left alone where marked ignore or fought over), watches that resume after
//! the API server goes away, and health followed to a verdict.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::servers::free_port;
use crate::support::{
    Daemon, GitRepo, Relay, app_yaml, client, cm_yaml, create_secret, eventually, http, metric,
    settings_value, status_json, stderr, stdout, syncs, tidegate_command, unique, wait_http,
};

/// Long intervals: whatever is reverted is reverted by the watch.
const NO_TIMERS: [&str; 6] = [
    "--git-poll-interval",
    "1h",
    "--sync-interval",
    "1h",
    "--git-watch",
    "false",
];

fn daemon(repo: &GitRepo, port: u16) -> Daemon {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", listen.as_str()];
    args.extend(NO_TIMERS);
    let daemon = repo.daemon(&repo.url(), &args);
    wait_http(port, "/readyz", 200);
    daemon
}

/// Changes `value` of a ConfigMap as another field manager would.
async fn edit(ns: &str, name: &str, value: &str, manager: &str) {
    Api::<ConfigMap>::namespaced(client().await, ns)
        .patch(
            name,
            &PatchParams {
                field_manager: Some(manager.into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"data": {"value": value}})),
        )
        .await
        .unwrap();
}

async fn value(ns: &str, name: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(client().await, ns)
        .get_opt(name)
        .await
        .unwrap()?
        .data?
        .get("value")
        .cloned()
}

async fn reverted(ns: &str, name: &str) {
    reverted_within(ns, name, Duration::from_secs(20)).await;
}

async fn reverted_within(ns: &str, name: &str, timeout: Duration) {
    eventually("the change reverted", timeout, || async {
        (value(ns, name).await.as_deref() == Some("1")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn drift_is_reverted_by_the_watch_without_a_fetch() {
    let ns = unique("heal");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.write("kept.yaml", &cm_yaml(&ns, "kept", "1"));
    repo.write("web.yaml", &deployment_yaml(&ns, "web", "nginx:1.27"));
    repo.push("first");
    let port = free_port();
    let _daemon = daemon(&repo, port);
    let fetches = metric(port, "tidegate_fetches_total");
    assert!(fetches >= 1.0);

    // Marked ignore in the cluster: left alone.
    let cms: Api<ConfigMap> = Api::namespaced(client().await, &ns);
    cms.patch(
        "kept",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"tidegate.dev/ignore": "true"}}})),
    )
    .await
    .unwrap();
    edit(&ns, "kept", "by hand", "kubectl-edit").await;

    // An edit, a scale and a delete: each reverted at once.
    edit(&ns, "settings", "by hand", "kubectl-edit").await;
    reverted(&ns, "settings").await;
    let deployments: Api<Deployment> = Api::namespaced(client().await, &ns);
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    eventually("the scale reverted", Duration::from_secs(20), || async {
        let d = deployments.get("web").await.ok()?;
        (d.spec?.replicas == Some(2)).then_some(())
    })
    .await;
    cms.delete("settings", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted object back",
        Duration::from_secs(20),
        || async { settings_value(&ns).await.filter(|v| v == "1") },
    )
    .await;

    assert_eq!(value(&ns, "kept").await.as_deref(), Some("by hand"));
    // Healed from the revision already synced: no fetch.
    assert_eq!(metric(port, "tidegate_fetches_total"), fetches);
}

#[tokio::test]
async fn a_field_fought_over_pauses_self_heal_and_names_the_other_manager() {
    let ns = unique("fight");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    let port = free_port();
    let _daemon = daemon(&repo, port);
    for _ in 0..3 {
        edit(&ns, "settings", "mine", "other-controller").await;
        reverted(&ns, "settings").await;
    }
    edit(&ns, "settings", "mine", "other-controller").await;
    eventually("the conflict reported", Duration::from_secs(20), || async {
        (metric(port, "tidegate_self_heal_conflicts") == 1.0).then_some(())
    })
    .await;
    assert_eq!(value(&ns, "settings").await.as_deref(), Some("mine"));
    // A sync still reverts it, and says who fights.
    let out = tidegate_command(&["sync", "--sync-set-name", &repo.sync_set])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(value(&ns, "settings").await.as_deref(), Some("1"));
    let warnings = status_json(&repo.sync_set)["warnings"].to_string();
    assert!(
        warnings.contains("field manager other-controller keeps changing it"),
        "{warnings}"
    );
}

#[tokio::test]
async fn a_watch_resumes_after_the_api_server_goes_away() {
    let ns = unique("resume");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    // Webhooks (their secret read at start) make the sentinel below.
    let secret = unique("resume-hook");
    create_secret(&secret, json!({"webhook-secret": "resume-s3cret"})).await;
    let relay = Relay::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = relay.kubeconfig(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--listen",
        listen.as_str(),
        "--webhook-secret-name",
        secret.as_str(),
    ];
    args.extend(NO_TIMERS);
    let _daemon = Daemon(
        repo.daemon_command(&repo.url(), &args)
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_http(port, "/readyz", 200);
    edit(&ns, "settings", "before", "kubectl-edit").await;
    reverted(&ns, "settings").await;
    // The first sync and that revert, counted once both are recorded.
    let synced = eventually("the revert counted", Duration::from_secs(20), || async {
        let n = syncs(port);
        (n >= 2.0).then_some(n)
    })
    .await;

    // The API server goes away; what changes meanwhile is seen once the
    // watch is back.
    relay.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    edit(&ns, "settings", "while away", "kubectl-edit").await;
    // The sentinel: a push webhook makes the daemon take a turn, one fetch
    // from its own disk (no API server needed) and no sync, the revision
    // being the one synced. The loop takes one turn at a time: had a watch
    // seen the edit, its revert would have been synced (and counted) first.
    let fetches = metric(port, "tidegate_fetches_total");
    let push = [
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Token", "resume-s3cret".to_string()),
    ];
    let (code, body) = http(
        port,
        "POST",
        "/hooks/gitlab",
        &push,
        br#"{"ref":"refs/heads/main"}"#,
    );
    assert_eq!(code, 202, "{body}");
    eventually("the webhook's fetch", Duration::from_secs(20), || async {
        (metric(port, "tidegate_fetches_total") >= fetches + 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(port, "tidegate_fetches_total"),
        fetches + 1.0,
        "one webhook, one fetch"
    );
    assert_eq!(
        syncs(port),
        synced,
        "nothing synced while the API server was away"
    );
    assert_eq!(value(&ns, "settings").await.as_deref(), Some("while away"));
    relay.down.store(false, Ordering::SeqCst);
    reverted_within(&ns, "settings", Duration::from_secs(60)).await;
}

fn deployment_yaml(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  replicas: 2\n  progressDeadlineSeconds: 3\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: web, image: '{image}'}}]}}\n"
    )
}

#[tokio::test]
async fn health_of_a_rollout_that_finishes_and_of_one_that_cannot() {
    let ns = unique("health");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.write("good.yaml", &deployment_yaml(&ns, "good", "nginx:1.27"));
    repo.write(
        "bad.yaml",
        &deployment_yaml(&ns, "bad", "refused.invalid/web:1"),
    );
    repo.push("first");
    let port = free_port();
    let _daemon = daemon(&repo, port);
    let sync = |extra: &[&str]| {
        let mut args = vec!["sync", "--sync-set-name", repo.sync_set.as_str()];
        args.extend_from_slice(extra);
        tidegate_command(&args).output().unwrap()
    };
    let out = sync(&["--wait-healthy", "--timeout", "2m"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("unhealthy: 1 of 4 objects failed"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "apps/v1 Deployment {ns}/bad: ProgressDeadlineExceeded"
        )),
        "{err}"
    );
    assert!(!err.contains("/good"), "{err}");
    eventually(
        "the failure in the metrics",
        Duration::from_secs(10),
        || async {
            (metric(port, "tidegate_managed_objects{status=\"failed\"}") == 1.0).then_some(())
        },
    )
    .await;
    assert_eq!(metric(port, "tidegate_healthy"), 0.0);
    let status = tidegate_command(&["status", "--sync-set-name", &repo.sync_set])
        .output()
        .unwrap();
    let text = stdout(&status);
    assert!(text.contains("health:    3 current, 1 failed"), "{text}");
    assert!(
        text.contains(&format!(
            "unhealthy: apps/v1 Deployment {ns}/bad failed: ProgressDeadlineExceeded"
        )),
        "{text}"
    );

    // An image that pulls: rolled out, and healthy.
    repo.write("bad.yaml", &deployment_yaml(&ns, "bad", "nginx:1.27"));
    repo.push("fixed");
    let out = sync(&["--wait-healthy", "--timeout", "2m"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("healthy: 4 objects current"),
        "{}",
        stdout(&out)
    );
    eventually("the metrics healthy", Duration::from_secs(10), || async {
        (metric(port, "tidegate_healthy") == 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_allowed_namespaces_each_namespace_is_watched_and_healed() {
    let ns = unique("heal-ns");
    let setup = GitRepo::new();
    setup.write("ns.yaml", &crate::support::ns_yaml(&ns));
    setup.push("namespace");
    let out = setup.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml(&ns, "a", "1"));
    repo.push("first");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let allow = format!("--k8s-allow-namespace={ns}");
    let mut args = vec!["--listen", listen.as_str(), allow.as_str()];
    args.extend(NO_TIMERS);
    let _daemon = repo.daemon(&repo.url(), &args);
    wait_http(port, "/readyz", 200);
    edit(&ns, "a", "by hand", "kubectl-edit").await;
    reverted(&ns, "a").await;
}
