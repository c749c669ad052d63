//! The sync engine against the real control plane: prune, CRDs, ignore,
//! removed APIs, immutable fields, diff, status, drift and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::support::{
    GitRepo, client, cm_yaml, configmap, control_plane, dynamic_api, eventually, ns_yaml, stderr,
    stdout, tidegate, unique,
};

fn gc() -> &'static str {
    "--sync-garbage-collection"
}

#[tokio::test]
async fn removed_from_git_is_pruned_with_gc_and_kept_without() {
    let ns = unique("prune");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("a.yaml", &cm_yaml(&ns, "a", "1"))
        .write("b.yaml", &cm_yaml(&ns, "b", "1"))
        .write("old-name.yaml", &cm_yaml(&ns, "old-name", "1"));
    repo.push("three objects");
    assert!(repo.sync_once(&[gc()]).status.success());

    // Without GC a removed object stays.
    std::fs::remove_file(repo.work.join("a.yaml")).unwrap();
    repo.push("remove a");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&ns, "a").await.is_some(), "kept when GC is off");

    // Rename: the old object is pruned, the new one created; and `a` goes now.
    std::fs::remove_file(repo.work.join("old-name.yaml")).unwrap();
    repo.write("new-name.yaml", &cm_yaml(&ns, "new-name", "1"));
    repo.push("rename");
    let out = repo.sync_once(&[gc()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("pruned v1 ConfigMap {ns}/old-name")),
        "{text}"
    );
    assert!(
        text.contains(&format!("created v1 ConfigMap {ns}/new-name")),
        "{text}"
    );
    assert!(configmap(&ns, "old-name").await.is_none());
    assert!(configmap(&ns, "new-name").await.is_some());
    assert!(configmap(&ns, "b").await.is_some());
    // `a` left the desired set while GC was off: it is no longer in the inventory.
    assert!(configmap(&ns, "a").await.is_some());
}

#[tokio::test]
async fn objects_without_our_marks_or_with_prune_disabled_are_not_pruned() {
    let ns = unique("prune-safe");
    let repo = GitRepo::new();
    let disabled = cm_yaml(&ns, "keep-me", "1").replace(
        "  namespace:",
        "  annotations:\n    tidegate.dev/prune: disabled\n  namespace:",
    );
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("keep.yaml", &disabled)
        .write("taken.yaml", &cm_yaml(&ns, "taken-over", "1"));
    repo.push("init");
    assert!(repo.sync_once(&[gc()]).status.success());
    // Someone takes the object over: the managed-by label is changed.
    let api = Api::<ConfigMap>::namespaced(client().await, &ns);
    let patch = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone-else"}}});
    api.patch("taken-over", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    std::fs::remove_file(repo.work.join("keep.yaml")).unwrap();
    std::fs::remove_file(repo.work.join("taken.yaml")).unwrap();
    repo.push("remove both");
    let out = repo.sync_once(&[gc()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pruned"), "{}", stdout(&out));
    assert!(configmap(&ns, "keep-me").await.is_some());
    assert!(configmap(&ns, "taken-over").await.is_some());
}

#[tokio::test]
async fn pruning_a_namespace_with_objects_in_it() {
    let ns = unique("prune-ns");
    let repo = GitRepo::new();
    repo.write("ns/ns.yaml", &ns_yaml(&ns))
        .write("ns/cm.yaml", &cm_yaml(&ns, "inside", "1"))
        .write("keep/other.yaml", &ns_yaml(&format!("{ns}-kept")));
    repo.push("namespace with objects");
    assert!(repo.sync_once(&[gc()]).status.success());

    std::fs::remove_dir_all(repo.work.join("ns")).unwrap();
    repo.push("drop the namespace");
    let out = repo.sync_once(&[gc()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("pruned")).collect();
    // The objects inside go before their namespace.
    assert_eq!(
        lines,
        [
            format!("pruned v1 ConfigMap {ns}/inside"),
            format!("pruned v1 Namespace {ns}")
        ]
    );
    let namespaces: Api<Namespace> = Api::all(client().await);
    eventually(
        "the namespace to be deleted",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(&ns)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(
        namespaces
            .get_opt(&format!("{ns}-kept"))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn broken_commit_prunes_nothing() {
    let ns = unique("broken");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("a.yaml", &cm_yaml(&ns, "a", "1"));
    repo.push("good");
    assert!(repo.sync_once(&[gc()]).status.success());

    // The commit drops `a` and breaks another file: nothing may be deleted.
    std::fs::remove_file(repo.work.join("a.yaml")).unwrap();
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [\n",
    );
    repo.push("broken");
    let out = repo.sync_once(&[gc()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.yaml"), "{}", stderr(&out));
    assert!(
        configmap(&ns, "a").await.is_some(),
        "nothing pruned after a failed render"
    );

    // Fixed: now `a` is pruned, because the inventory survived the broken commit.
    std::fs::remove_file(repo.work.join("broken.yaml")).unwrap();
    repo.push("fixed");
    let out = repo.sync_once(&[gc()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&ns, "a").await.is_none());
}

#[tokio::test]
async fn crd_and_custom_resource_in_one_commit() {
    let ns = unique("crd");
    let group = format!("{ns}.example.com");
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: backups.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: backups, singular: backup, kind: Backup}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              schedule: {{type: string}}
"
    );
    let cr = format!(
        "apiVersion: {group}/v1\nkind: Backup\nmetadata:\n  name: nightly\n  namespace: {ns}\nspec:\n  schedule: \"0 3 * * *\"\n"
    );
    let repo = GitRepo::new();
    // The custom resource sorts before its CRD and its namespace: staging fixes the order.
    repo.write("a-backup.yaml", &cr)
        .write("b-crd.yaml", &crd)
        .write("c-ns.yaml", &ns_yaml(&ns));
    repo.push("crd and cr");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            format!("created apiextensions.k8s.io/v1 CustomResourceDefinition backups.{group}"),
            format!("created v1 Namespace {ns}"),
            format!("created {group}/v1 Backup {ns}/nightly"),
        ]
    );
    let backups = dynamic_api(&format!("{group}/v1"), "Backup", "backups", Some(&ns)).await;
    assert_eq!(
        backups.get("nightly").await.unwrap().data["spec"]["schedule"],
        "0 3 * * *"
    );
}

#[tokio::test]
async fn duplicates_are_refused_naming_both_files() {
    let ns = unique("dup");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("one/cm.yaml", &cm_yaml(&ns, "twice", "1"))
        .write("two/cm.yaml", &cm_yaml(&ns, "twice", "2"));
    repo.push("duplicate");
    let out = repo.sync_once(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("one/cm.yaml (document 0)") && err.contains("two/cm.yaml (document 0)"),
        "{err}"
    );
    assert!(configmap(&ns, "twice").await.is_none());
}

#[tokio::test]
async fn removed_api_version_is_refused_or_upgraded_on_request() {
    let ns = unique("removed");
    let cron = format!(
        "apiVersion: batch/v1beta1
kind: CronJob
metadata:
  name: nightly
  namespace: {ns}
spec:
  schedule: \"0 2 * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{{name: b, image: busybox:1.36}}]
"
    );
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("cron.yaml", &cron);
    repo.push("old cronjob");
    let out = repo.sync_once(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains(&format!("batch/v1beta1 CronJob {ns}/nightly: batch/v1beta1 was removed from Kubernetes; use apiVersion batch/v1")),
        "{}",
        stderr(&out)
    );

    let out = repo.sync_once(&["--upgrade-removed-apis"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: cron.yaml (document 0)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(&format!("created batch/v1 CronJob {ns}/nightly")));
    let crons: Api<CronJob> = Api::namespaced(client().await, &ns);
    assert_eq!(
        crons.get("nightly").await.unwrap().spec.unwrap().schedule,
        "0 2 * * *"
    );
}

#[tokio::test]
async fn ignore_annotations_in_git_and_live() {
    let ns = unique("ignore");
    let repo = GitRepo::new();
    let ignored_in_git = cm_yaml(&ns, "in-git", "1").replace(
        "  namespace:",
        "  annotations:\n    fluxcd.io/ignore: \"true\"\n  namespace:",
    );
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("git.yaml", &ignored_in_git)
        .write("live.yaml", &cm_yaml(&ns, "live", "1"));
    repo.push("init");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        configmap(&ns, "in-git").await.is_none(),
        "ignored in Git: never applied"
    );

    // Annotated live: later changes in Git are not applied, and it is not pruned.
    let api = Api::<ConfigMap>::namespaced(client().await, &ns);
    let patch = json!({"metadata": {"annotations": {"tidegate.dev/ignore": "true"}}});
    api.patch("live", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    repo.write("live.yaml", &cm_yaml(&ns, "live", "2"));
    repo.push("change it");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("ignored v1 ConfigMap {ns}/live")),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        configmap(&ns, "live").await.unwrap().data.unwrap()["value"],
        "1"
    );
    std::fs::remove_file(repo.work.join("live.yaml")).unwrap();
    repo.push("remove it");
    assert!(repo.sync_once(&[gc()]).status.success());
    assert!(configmap(&ns, "live").await.is_some());
}

#[tokio::test]
async fn allow_namespace_refuses_other_namespaces_and_cluster_scope() {
    let ns = unique("allow");
    let other = unique("allow-other");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("cm.yaml", &cm_yaml(&ns, "ok", "1"));
    repo.push("init");
    assert!(repo.sync_once(&[]).status.success());
    repo.write("other.yaml", &cm_yaml(&other, "refused", "1"));
    repo.push("other namespace");
    let out = repo.sync_once(&["--k8s-allow-namespace", &ns]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("v1 ConfigMap {other}/refused")) && err.contains("is not allowed"),
        "{err}"
    );
    assert!(
        err.contains(&format!("v1 Namespace {ns}")) && err.contains("cluster-scoped"),
        "{err}"
    );
    assert!(stdout(&out).contains(&format!("unchanged v1 ConfigMap {ns}/ok")));
}

#[tokio::test]
async fn immutable_field_error_and_forced_recreate() {
    let ns = unique("immutable");
    let service = |ip: &str, force: bool| {
        let annotations = if force {
            "  annotations:\n    tidegate.dev/force: \"true\"\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: {ns}\n{annotations}spec:\n  clusterIP: {ip}\n  ports: [{{port: 5432}}]\n"
        )
    };
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("svc.yaml", &service("10.0.0.201", false));
    repo.push("service");
    assert!(repo.sync_once(&[]).status.success());

    repo.write("svc.yaml", &service("10.0.0.202", false));
    repo.push("new cluster IP");
    let out = repo.sync_once(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("immutable") && err.contains("tidegate.dev/force"),
        "{err}"
    );

    repo.write("svc.yaml", &service("10.0.0.202", true));
    repo.push("forced");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("recreated v1 Service {ns}/db")),
        "{}",
        stdout(&out)
    );
    let svc = Api::<Service>::namespaced(client().await, &ns)
        .get("db")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.0.0.202"));
}

#[tokio::test]
async fn diff_exit_codes_and_masked_secrets() {
    let ns = unique("diff");
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: {ns}\nstringData:\n  password: {value}\n"
        )
    };
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("secret.yaml", &secret("hunter2-original"))
        .write("cm.yaml", &cm_yaml(&ns, "settings", "1"));
    repo.push("init");
    let work = repo.work.to_string_lossy().into_owned();
    let set = ["--sync-set-name", repo.sync_set.as_str()];

    let out = tidegate(&[&["diff", &work][..], &set].concat());
    assert_eq!(out.status.code(), Some(1), "changes: {}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("+ create v1 ConfigMap {ns}/settings")),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("hunter2"),
        "Secret values never shown: {}",
        stdout(&out)
    );

    assert!(repo.sync_once(&[]).status.success());
    let out = tidegate(&[&["diff", &work][..], &set].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "no changes: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("0 to create, 0 to update, 3 unchanged"),
        "{}",
        stdout(&out)
    );
    // Issue 19: a Secret's checksum is keyed by the instance (the diff just
    // read the same key), not the sha256 anyone can test a guess against.
    let live = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client().await, &ns)
        .get("creds")
        .await
        .unwrap();
    let annotated = live.metadata.annotations.unwrap()["tidegate.dev/checksum"].clone();
    let written: serde_json::Value = serde_saphyr::from_str(&secret("hunter2-original")).unwrap();
    assert_eq!(annotated.len(), 64);
    assert_ne!(
        annotated,
        tidegate::model::checksum::checksum(&written),
        "keyed"
    );

    repo.write("secret.yaml", &secret("hunter2-changed"))
        .write("cm.yaml", &cm_yaml(&ns, "settings", "2"));
    let out = tidegate(&[&["diff", &work][..], &set].concat());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("~ update v1 ConfigMap {ns}/settings")),
        "{text}"
    );
    assert!(
        text.contains("-  value: '1'") || text.contains("-  value: \"1\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("~ update v1 Secret {ns}/creds")),
        "{text}"
    );
    assert!(text.contains("(masked, new value)"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("aHVudGVy"),
        "{text}"
    );

    let out = tidegate(&[&["diff", &work, "-o", "json"][..], &set].concat());
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(plan["summary"]["update"], 2);

    repo.write(
        "cm.yaml",
        &cm_yaml(&ns, "settings", "1").replace("value:", "- broken"),
    );
    let out = tidegate(&[&["diff", &work][..], &set].concat());
    assert_eq!(out.status.code(), Some(2), "an error: {}", stdout(&out));
}

#[tokio::test]
async fn status_after_success_and_after_failure() {
    let ns = unique("status");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("cm.yaml", &cm_yaml(&ns, "a", "1"));
    let first = repo.push("good");
    assert!(repo.sync_once(&[]).status.success());
    let status =
        |format: &str| tidegate(&["status", "--sync-set-name", &repo.sync_set, "-o", format]);

    let out = status("json");
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["revision"], first.as_str());
    assert_eq!(s["result"], "succeeded");
    assert_eq!(s["counts"]["created"], 2);
    assert!(stdout(&status("text")).contains("result:    succeeded"));

    repo.write(
        "bad.yaml",
        &cm_yaml(&ns, "b", "1").replace("kind: ConfigMap", "kind: ConfigMapp"),
    );
    let second = repo.push("bad kind");
    assert_eq!(repo.sync_once(&[]).status.code(), Some(1));
    let out = status("json");
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["revision"], second.as_str());
    assert_eq!(s["result"], "failed");
    assert_eq!(s["errors"][0]["object"], format!("v1 ConfigMapp {ns}/b"));
    assert_eq!(s["errors"][0]["origin"], "bad.yaml (document 0)");
    assert!(stdout(&status("yaml")).contains("result: failed"));
    let text = stdout(&status("text"));
    assert!(
        text.contains(&format!(
            "failed:    v1 ConfigMapp {ns}/b (bad.yaml (document 0))"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn drift_is_reverted_by_the_sync_interval() {
    let ns = unique("drift");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns))
        .write("cm.yaml", &cm_yaml(&ns, "watched", "from-git"));
    repo.push("init");
    let daemon = repo.daemon(
        &repo.url(),
        &[
            "--git-poll-interval",
            "1h",
            "--sync-interval",
            "2s",
            "--listen",
            "off",
        ],
    );
    let api = Api::<ConfigMap>::namespaced(client().await, &ns);
    eventually("the first sync", Duration::from_secs(30), || async {
        api.get_opt("watched").await.ok().flatten().map(|_| ())
    })
    .await;
    // A `kubectl edit` of a managed field.
    let patch = json!({"data": {"value": "edited-by-hand"}});
    api.patch("watched", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        "the edit to be reverted",
        Duration::from_secs(30),
        || async {
            let cm = api.get("watched").await.ok()?;
            (cm.data?["value"] == "from-git").then_some(())
        },
    )
    .await;
    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exits cleanly on SIGTERM: {status}"
    );
}

#[tokio::test]
async fn sigterm_mid_sync_finishes_in_flight_objects_and_records_status() {
    let ns = unique("sigterm");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns));
    let many: String = (0..400)
        .map(|i| format!("{}---\n", cm_yaml(&ns, &format!("cm-{i}"), "x")))
        .collect();
    repo.write("many.yaml", &many);
    repo.push("many objects");
    let url = repo.url();
    let cache = repo.cache.to_string_lossy().into_owned();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args([
            "daemon",
            "--once",
            "--git-url",
            &url,
            "--git-branch",
            "main",
            "--git-cache-dir",
            &cache,
        ])
        .args(["--sync-set-name", &repo.sync_set])
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut applied = Vec::new();
    // Wait for the first ConfigMaps, then stop it.
    while applied.len() < 20 {
        applied.push(lines.next().expect("a line").unwrap());
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    applied.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "an interrupted sync is not a success"
    );
    let created = applied
        .iter()
        .filter(|l| l.starts_with("created v1 ConfigMap"))
        .count();
    assert!(created < 400, "stopped before the end ({created} created)");

    // Every object it reported is really there, and the status says interrupted.
    let api = Api::<ConfigMap>::namespaced(client().await, &ns);
    let live = api.list(&Default::default()).await.unwrap().items.len();
    assert!(live >= created, "{live} live, {created} reported");
    let out = tidegate(&["status", "--sync-set-name", &repo.sync_set, "-o", "json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["result"], "interrupted");
    assert_eq!(
        s["counts"]["created"].as_u64().unwrap() as usize,
        created + 1,
        "the namespace, and the ConfigMaps"
    );

    // The next sync finishes the job.
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        api.list(&Default::default()).await.unwrap().items.len(),
        401
    ); // + kube-root-ca.crt
}
