//! What makes the daemon sync: `tidegate sync`, webhooks, the HTTP API, and
//! the watch on a local repository.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tidegate::daemon::webhook::{MIN_INTERVAL, sign};

use crate::servers::free_port;
use crate::support::{
    Daemon, GitRepo, app_yaml, client, create_secret, eventually, http, metric, metric_reaches,
    service_account_token, settings_value, stderr, stdout, tidegate, tidegate_command, unique,
    wait_http,
};

const FETCHES: &str = "tidegate_fetches_total";
const SUCCEEDED: &str = "tidegate_syncs_total{result=\"succeeded\"}";

async fn wait_value(ns: &str, wanted: &str, within: Duration) {
    eventually(&format!("value {wanted}"), within, || async {
        (settings_value(ns).await? == wanted).then_some(())
    })
    .await;
}

/// `tidegate sync` for the repository's sync set, waiting up to a minute.
fn sync_request(repo: &GitRepo) -> std::process::Output {
    tidegate(&[
        "sync",
        "--sync-set-name",
        &repo.sync_set,
        "--timeout",
        "60s",
    ])
}

/// A daemon that polls and re-applies only hourly: whatever syncs, a trigger did.
fn daemon(repo: &GitRepo, extra: &[&str]) -> Daemon {
    let mut args = vec!["--git-poll-interval", "1h", "--sync-interval", "1h"];
    args.extend_from_slice(extra);
    repo.daemon(&repo.url(), &args)
}

#[tokio::test]
async fn sync_command_waits_for_the_pushed_revision() {
    let ns = unique("sync-cmd");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    let _daemon = daemon(&repo, &["--git-watch=false", "--listen", "off"]);
    wait_value(&ns, "1", Duration::from_secs(30)).await;

    repo.write("app.yaml", &app_yaml(&ns, "2"));
    let revision = repo.push("second");
    let out = sync_request(&repo);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains(&format!("revision {revision}")),
        "{}",
        stdout(&out)
    );
    // The object is changed by the time `sync` returns.
    assert_eq!(settings_value(&ns).await.as_deref(), Some("2"));

    // Two requests at once are both answered.
    let spawn = || {
        tidegate_command(&[
            "sync",
            "--sync-set-name",
            &repo.sync_set,
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr(&a),
        stderr(&b)
    );

    // A failing commit: `sync` exits non-zero and says why.
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [oops\n",
    );
    repo.push("broken");
    let out = sync_request(&repo);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("broken.yaml"), "{}", stderr(&out));

    // Without a daemon for the sync set, it says so.
    let out = tidegate(&[
        "sync",
        "--sync-set-name",
        "nobody-runs-this",
        "--timeout",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("Is tidegate running"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn webhooks_trigger_only_authentic_pushes_to_the_branch() {
    let ns = unique("webhook");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    let secret_name = unique("webhook-secret");
    create_secret(
        &secret_name,
        serde_json::json!({"webhook-secret": "hook-s3cret"}),
    )
    .await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = daemon(
        &repo,
        &[
            "--git-watch=false",
            "--listen",
            &listen,
            "--webhook-secret-name",
            &secret_name,
        ],
    );
    wait_http(port, "/readyz", 200);
    assert_eq!(settings_value(&ns).await.as_deref(), Some("1"));
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    let (code, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tidegate_syncs_total{result=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidegate_last_successful_sync_timestamp_seconds"),
        "{metrics}"
    );

    repo.write("app.yaml", &app_yaml(&ns, "2"));
    repo.push("second");
    // Counted before the webhooks that must trigger nothing; the valid one
    // after them is the sentinel.
    let fetches = metric(port, FETCHES);
    let push = br#"{"ref":"refs/heads/main"}"#;
    let other = br#"{"ref":"refs/heads/feature"}"#;
    let github = |body: &[u8], secret: &[u8]| {
        vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-Hub-Signature-256", sign(secret, body)),
        ]
    };
    assert_eq!(
        http(
            port,
            "POST",
            "/hooks/github",
            &github(push, b"forged"),
            push
        )
        .0,
        401
    );
    assert_eq!(
        http(
            port,
            "POST",
            "/hooks/github",
            &[("X-GitHub-Event", "push".into())],
            push
        )
        .0,
        401
    );
    let (code, body) = http(
        port,
        "POST",
        "/hooks/github",
        &github(other, b"hook-s3cret"),
        other,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ignored"), "{body}");
    let ping = [
        ("X-GitHub-Event", "ping".to_string()),
        ("X-Hub-Signature-256", sign(b"hook-s3cret", b"{}")),
    ];
    assert_eq!(http(port, "POST", "/hooks/github", &ping, b"{}").0, 200);
    let huge = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(
        http(
            port,
            "POST",
            "/hooks/github",
            &github(&huge, b"hook-s3cret"),
            &huge
        )
        .0,
        413
    );
    // None of those synced.
    assert_eq!(
        settings_value(&ns).await.as_deref(),
        Some("1"),
        "nothing triggered a sync"
    );

    // The sentinel: one authentic push, one fetch and one sync. Had any of
    // the webhooks above triggered, there would be a fetch more (and the
    // revision it brought would have left this one's fetch nothing to sync).
    assert_eq!(
        http(
            port,
            "POST",
            "/hooks/github",
            &github(push, b"hook-s3cret"),
            push
        )
        .0,
        202
    );
    wait_value(&ns, "2", Duration::from_secs(30)).await;
    metric_reaches(port, SUCCEEDED, 2.0).await;
    assert_eq!(
        metric(port, FETCHES),
        fetches + 1.0,
        "only the authentic push fetched"
    );
    assert_eq!(
        metric(port, SUCCEEDED),
        2.0,
        "the first sync and the push's"
    );

    // GitLab's shared token.
    repo.write("app.yaml", &app_yaml(&ns, "3"));
    repo.push("third");
    let gitlab = [
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Token", "hook-s3cret".to_string()),
    ];
    assert_eq!(http(port, "POST", "/hooks/gitlab", &gitlab, push).0, 202);
    wait_value(&ns, "3", Duration::from_secs(30)).await;
    // Recorded before the burst is counted.
    let synced = metric_reaches(port, SUCCEEDED, 3.0).await;

    // A burst of pushes at once: the first fetches at once, those arriving
    // while a fetch runs make one follow-up (and the stragglers of the burst,
    // arriving during that follow-up, at most one more).
    let before = metric(port, FETCHES);
    assert!(before >= 1.0, "a fetch counter");
    std::thread::scope(|burst| {
        let sent: Vec<_> = (0..20)
            .map(|_| burst.spawn(|| http(port, "POST", "/hooks/gitlab", &gitlab, push).0))
            .collect();
        for code in sent {
            assert_eq!(code.join().unwrap(), 202);
        }
    });
    // Every webhook has been answered; the one fetch the pacing put off
    // fires at most MIN_INTERVAL after it was asked for (a bound the daemon
    // keeps, not a guess at how long fetches take to show).
    tokio::time::sleep(MIN_INTERVAL).await;
    // The sentinel: one `tidegate sync`, answered by a turn that starts
    // after the request is seen, with one fetch and one (forced) sync. By
    // the time it is answered, whatever the burst fetched is counted; the
    // burst synced nothing, the revision being the one synced already.
    let out = sync_request(&repo);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    metric_reaches(port, SUCCEEDED, synced + 1.0).await;
    assert_eq!(
        metric(port, SUCCEEDED),
        synced + 1.0,
        "the burst synced nothing; the sync request once"
    );
    // Less the sync request's own fetch.
    let after = metric(port, FETCHES) - 1.0;
    assert!(
        (1.0..=3.0).contains(&(after - before)),
        "20 webhooks made {} fetches",
        after - before
    );

    // The API: sync now, for a token that may update the state object.
    repo.write("app.yaml", &app_yaml(&ns, "4"));
    repo.push("fourth");
    assert_eq!(http(port, "POST", "/api/v1/sync", &[], b"").0, 401);
    let bearer = |t: &str| [("Authorization", format!("Bearer {t}"))];
    let garbage = bearer("not-a-token");
    assert_eq!(http(port, "POST", "/api/v1/sync", &garbage, b"").0, 401);
    let denied = service_account_token(&unique("no-sync"), &repo.sync_set, false).await;
    let (code, body) = http(port, "POST", "/api/v1/sync", &bearer(&denied), b"");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may not update configmap"), "{body}");
    let allowed = service_account_token(&unique("may-sync"), &repo.sync_set, true).await;
    assert_eq!(
        http(port, "POST", "/api/v1/sync", &bearer(&allowed), b"").0,
        202
    );
    wait_value(&ns, "4", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn local_repository_commit_is_applied_without_waiting_for_the_poll() {
    let ns = unique("watch");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    repo.push("first");
    let _daemon = daemon(&repo, &["--listen", "off"]);
    wait_value(&ns, "1", Duration::from_secs(30)).await;
    // Let the first sync finish recording before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    repo.write("app.yaml", &app_yaml(&ns, "2"));
    let pushed = Instant::now();
    repo.push("second");
    // The poll interval is an hour: only the watch can bring this in.
    // Polled every 20 ms so the printed latency is close to the real one.
    let api = Api::<ConfigMap>::namespaced(client().await, &ns);
    loop {
        let cm = api.get("settings").await.unwrap();
        if cm.data.and_then(|d| d.get("value").cloned()).as_deref() == Some("2") {
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(30),
            "the commit was not applied within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "local watch: push to applied in {} ms",
        pushed.elapsed().as_millis()
    );
}

/// 1,200 ConfigMaps in `ns` (in files of 100), each holding `value`: a
/// sync that takes seconds.
fn write_many_configmaps(repo: &GitRepo, ns: &str, value: &str) {
    repo.write("ns.yaml", &crate::support::ns_yaml(ns));
    for file in 0..12 {
        let text: Vec<String> = (0..100)
            .map(|i| crate::support::cm_yaml(ns, &format!("cm-{file}-{i}"), value))
            .collect();
        repo.write(&format!("many/{file}.yaml"), &text.join("---\n"));
    }
}

#[tokio::test]
async fn sync_shows_progress_on_a_terminal_and_is_quiet_in_a_pipe() {
    let ns = unique("progress");
    let repo = GitRepo::new();
    write_many_configmaps(&repo, &ns, "1");
    repo.push("1200 ConfigMaps");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = repo.daemon(
        &repo.url(),
        &[
            "--git-poll-interval",
            "1h",
            "--git-watch",
            "false",
            "--listen",
            &listen,
        ],
    );
    wait_http(port, "/healthz", 200);
    eventually("the first sync", Duration::from_secs(120), || async {
        (http(port, "GET", "/readyz", &[], b"").0 == 200).then_some(())
    })
    .await;

    // On a terminal (script(1) gives it one): the objects done so far.
    write_many_configmaps(&repo, &ns, "2");
    repo.push("all changed");
    let command = format!(
        "{} sync --sync-set-name {} --timeout 2m",
        env!("CARGO_BIN_EXE_tidegate"),
        repo.sync_set
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("KUBECONFIG", &crate::support::control_plane().kubeconfig)
        .output()
        .expect("script");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("objects synced so far"), "{text}");
    assert!(text.contains("result: succeeded"), "{text}");

    // In a pipe: the revision and the result, no progress.
    write_many_configmaps(&repo, &ns, "3");
    repo.push("all changed again");
    let out = tidegate(&["sync", "--sync-set-name", &repo.sync_set, "--timeout", "2m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("syncing revision") && all.contains("result: succeeded"),
        "{all}"
    );
    assert!(!all.contains("so far") && !all.contains('\r'), "{all}");
}
