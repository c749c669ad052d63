//! `tidegate daemon --once`: clone, render, server-side apply, one line per object.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::support::{GitRepo, client, stderr, stdout, unique};

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn configmap(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

fn deployment(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: {name}
        image: {image}
"
    )
}

fn lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort();
    v
}

#[tokio::test]
async fn creates_then_updates_then_leaves_unchanged() {
    let ns = unique("sync-basic");
    let repo = GitRepo::new();
    repo.write("cluster/namespace.yaml", &namespace(&ns))
        // Two objects in one multi-document file, in a nested directory.
        .write(
            "cluster/apps/web.yml",
            &format!(
                "{}---\n{}",
                configmap(&ns, "settings", "1"),
                deployment(&ns, "web", "nginx:1.27")
            ),
        )
        .write("README.yaml", "title: not a Kubernetes object\n");
    repo.push("first");

    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        lines(&stdout(&out)),
        [
            format!("created apps/v1 Deployment {ns}/web"),
            format!("created v1 ConfigMap {ns}/settings"),
            format!("created v1 Namespace {ns}"),
        ]
    );

    let client = client().await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = configmaps.get("settings").await.expect("ConfigMap exists");
    assert_eq!(cm.data.unwrap()["value"], "1");
    let labels = cm.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "tidegate");
    // The sync set as a label too: what lists and watches select by.
    assert_eq!(labels["tidegate.dev/sync-set"], repo.sync_set);
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter(|f| f.operation.as_deref() == Some("Apply"))
        .filter_map(|f| f.manager)
        .collect();
    assert_eq!(managers, ["tidegate"]);
    let annotations = cm.metadata.annotations.unwrap();
    assert_eq!(annotations["tidegate.dev/sync-set"], repo.sync_set);
    let checksum = &annotations["tidegate.dev/checksum"];
    assert_eq!(checksum.len(), 64);

    // Change one object in Git: only it is configured.
    repo.write(
        "cluster/apps/web.yml",
        &format!(
            "{}---\n{}",
            configmap(&ns, "settings", "2"),
            deployment(&ns, "web", "nginx:1.27")
        ),
    );
    repo.push("second");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        lines(&stdout(&out)),
        [
            format!("configured v1 ConfigMap {ns}/settings"),
            format!("unchanged apps/v1 Deployment {ns}/web"),
            format!("unchanged v1 Namespace {ns}"),
        ]
    );
    let cm = configmaps.get("settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["value"], "2");
    assert_ne!(
        &cm.metadata.annotations.unwrap()["tidegate.dev/checksum"],
        checksum
    );

    // Nothing changed: every object is unchanged and nothing is written.
    let rv_before = configmaps
        .get("settings")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).lines().all(|l| l.starts_with("unchanged ")),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 3);
    let rv_after = configmaps
        .get("settings")
        .await
        .unwrap()
        .metadata
        .resource_version;
    assert_eq!(rv_before, rv_after);
}

#[tokio::test]
async fn default_namespace_and_git_path() {
    let ns = unique("sync-paths");
    let repo = GitRepo::new();
    repo.write("infra/ns.yaml", &namespace(&ns))
        .write(
            "infra/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: no-namespace\ndata: {a: b}\n",
        )
        .write("elsewhere/cm.yaml", &configmap(&ns, "not-synced", "x"));
    repo.push("paths");

    let out = repo.sync_once(&["--git-path", "infra", "--k8s-default-namespace", &ns]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains(&format!("created v1 ConfigMap {ns}/no-namespace")));
    let configmaps: Api<ConfigMap> = Api::namespaced(client().await, &ns);
    assert!(configmaps.get_opt("no-namespace").await.unwrap().is_some());
    assert!(configmaps.get_opt("not-synced").await.unwrap().is_none());
}

#[tokio::test]
async fn rejected_object_is_reported_and_the_rest_applied() {
    let ns = unique("sync-invalid");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &namespace(&ns))
        .write("good.yaml", &configmap(&ns, "good", "ok"))
        // Invalid: a container without an image is refused by the API server.
        .write(
            "bad/deploy.yaml",
            &deployment(&ns, "broken", "nginx").replace("        image: nginx\n", ""),
        );
    repo.push("one invalid object");

    let out = repo.sync_once(&[]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("bad/deploy.yaml (document 0)"), "{err}");
    assert!(
        err.contains(&format!("apps/v1 Deployment {ns}/broken")),
        "{err}"
    );
    assert!(
        err.contains("image"),
        "the API server's reason is shown: {err}"
    );
    assert!(stdout(&out).contains(&format!("created v1 ConfigMap {ns}/good")));
    let client = client().await;
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("good")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Deployment>::namespaced(client, &ns)
            .get_opt("broken")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn missing_branch_is_a_clear_error() {
    let repo = GitRepo::new();
    repo.write("a.yaml", "kind: nothing\n");
    repo.push("init");
    let url = repo.url();
    let cache = repo.cache.to_string_lossy().into_owned();
    let out = crate::support::tidegate(&[
        "daemon",
        "--once",
        "--git-url",
        &url,
        "--git-branch",
        "does-not-exist",
        "--git-cache-dir",
        &cache,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("branch does-not-exist not found"),
        "{}",
        stderr(&out)
    );
}
