//! The bad-input suite: each test breaks one thing in a repository that
//! synced cleanly, then checks that the error names the culprit, that
//! everything else was applied, that nothing was pruned wrongly, and that
//! the daemon lives on. Run it alone with `cargo xtask test -- bad_input`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::servers::free_port;
use crate::support::{
    GitRepo, client, cm_yaml, configmap, create_secret, dynamic_api, http, ns_yaml, status_json,
    stderr, stdout, tidegate, tidegate_command, unique, wait_http,
};

const GC: &str = "--sync-garbage-collection";

/// A repository that synced cleanly with garbage collection on: Namespace
/// `ns` with ConfigMap `good` (ns.yaml), and ConfigMap `victim` alone in
/// victim.yaml, the file each test breaks.
struct Case {
    ns: String,
    repo: GitRepo,
}

impl Case {
    fn new(prefix: &str) -> Case {
        let ns = unique(prefix);
        let repo = GitRepo::new();
        repo.write(
            "ns.yaml",
            &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "good", "1")),
        )
        .write("victim.yaml", &cm_yaml(&ns, "victim", "1"));
        repo.push("clean");
        let out = repo.sync_once(&[GC]);
        assert!(out.status.success(), "{}", stderr(&out));
        Case { ns, repo }
    }

    /// Lets `breaks` change the work tree, adds ConfigMap `later` in
    /// later.yaml, pushes, and syncs with garbage collection.
    fn sync_broken(&self, breaks: impl FnOnce(&Path), extra: &[&str]) -> Output {
        breaks(&self.repo.work);
        self.repo
            .write("later.yaml", &cm_yaml(&self.ns, "later", "1"));
        self.repo.push("broken");
        let mut args = vec![GC];
        args.extend_from_slice(extra);
        self.repo.sync_once(&args)
    }

    /// Replaces victim.yaml with `bytes` and syncs.
    fn sync_victim(&self, bytes: &[u8], extra: &[&str]) -> Output {
        self.sync_broken(
            |work| std::fs::write(work.join("victim.yaml"), bytes).unwrap(),
            extra,
        )
    }

    /// The sync failed naming every culprit, `later` was applied anyway, and
    /// `victim` (whose file broke) was not pruned; the status says the same.
    async fn assert_isolated(&self, out: &Output, culprits: &[&str]) {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        for c in culprits {
            assert!(err.contains(c), "stderr does not name {c:?}:\n{err}");
        }
        assert!(
            stdout(out).contains(&format!("created v1 ConfigMap {}/later", self.ns)),
            "the rest is applied:\n{}\n{err}",
            stdout(out)
        );
        assert!(configmap(&self.ns, "later").await.is_some());
        assert!(
            configmap(&self.ns, "victim").await.is_some(),
            "nothing may be pruned after a failed render"
        );
        assert!(configmap(&self.ns, "good").await.is_some());
        let status = self.status();
        assert_eq!(status["result"], "failed", "{status}");
        assert!(status["errors_total"].as_u64().unwrap() >= 1, "{status}");
        let text = status.to_string();
        assert!(
            text.contains(culprits[0]),
            "status names {}: {text}",
            culprits[0]
        );
    }

    fn status(&self) -> serde_json::Value {
        status_json(&self.repo.sync_set)
    }
}

#[tokio::test]
async fn yaml_syntax_error() {
    let case = Case::new("bad-syntax");
    let out = case.sync_victim(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
        &[],
    );
    case.assert_isolated(
        &out,
        &["victim.yaml: document 0 (line", "is not valid YAML"],
    )
    .await;
}

#[tokio::test]
async fn not_a_kubernetes_object() {
    let case = Case::new("bad-object");
    let out = case.sync_victim(b"kind: ConfigMap\nmetadata: {name: victim}\n", &[]);
    case.assert_isolated(
        &out,
        &["victim.yaml: document 0 (line 1) looks like a Kubernetes object but has no apiVersion"],
    )
    .await;
}

#[tokio::test]
async fn object_without_a_name() {
    let case = Case::new("bad-noname");
    let text = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{}}\n",
        cm_yaml(&case.ns, "victim", "1")
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    case.assert_isolated(&out, &["victim.yaml: document 1 (line 9) looks like a Kubernetes object but has no metadata.name"])
        .await;
}

#[tokio::test]
async fn removed_api_version() {
    let case = Case::new("bad-removed");
    let text = format!(
        "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {{name: old, namespace: {}}}\n",
        case.ns
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    case.assert_isolated(
        &out,
        &[
            "victim.yaml (document 0)",
            &format!(
                "victim.yaml (document 0): extensions/v1beta1 Deployment {}/old: extensions/v1beta1 was removed from Kubernetes; use apiVersion apps/v1",
                case.ns
            ),
        ],
    )
    .await;
    // Issue 19, item 14: the file, the document and the object, once.
    let line = stderr(&out)
        .lines()
        .find(|l| l.contains("was removed"))
        .unwrap()
        .to_string();
    assert_eq!(line.matches("victim.yaml").count(), 1, "{line}");
    assert_eq!(line.matches("Deployment").count(), 1, "{line}");
}

#[tokio::test]
async fn duplicate_object_applies_neither_copy() {
    let case = Case::new("bad-dup");
    let out = case.sync_broken(
        |work| {
            let changed = std::fs::read_to_string(work.join("victim.yaml"))
                .unwrap()
                .replace("\"1\"", "\"2\"");
            std::fs::write(work.join("victim.yaml"), &changed).unwrap();
            std::fs::write(work.join("copy.yaml"), &changed).unwrap();
        },
        &[],
    );
    case.assert_isolated(&out, &["is defined twice: in copy.yaml (document 0) and in victim.yaml (document 0); neither is applied"])
        .await;
    let live = configmap(&case.ns, "victim").await.unwrap();
    assert_eq!(
        live.data.unwrap()["value"],
        "1",
        "the live object is left as it was"
    );
}

#[tokio::test]
async fn not_utf8() {
    let case = Case::new("bad-utf8");
    let out = case.sync_victim(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caf\xe9}\n",
        &[],
    );
    case.assert_isolated(
        &out,
        &["victim.yaml: not UTF-8 text (invalid byte at offset 51)"],
    )
    .await;
}

#[tokio::test]
async fn file_of_100_mib() {
    let case = Case::new("bad-huge");
    let mut text = cm_yaml(&case.ns, "victim", "1").into_bytes();
    text.extend_from_slice(b"  filler: \"");
    text.resize(100 * 1024 * 1024, b'a');
    text.extend_from_slice(b"\"\n");
    let out = case.sync_victim(&text, &[]);
    case.assert_isolated(
        &out,
        &["victim.yaml: more than 4194304 bytes (--max-file-bytes)"],
    )
    .await;
}

#[tokio::test]
async fn too_many_documents() {
    let case = Case::new("bad-docs");
    // 1,001 documents, each opened by a marker.
    let docs: String = (0..1001)
        .map(|i| format!("---\n{}", cm_yaml(&case.ns, &format!("many-{i}"), "1")))
        .collect();
    let out = case.sync_victim(docs.as_bytes(), &[]);
    case.assert_isolated(&out, &["victim.yaml: more than 1000 documents"])
        .await;
}

/// Peak RSS in MiB of a `tidegate` run, from `wait4`.
fn run_measured(args: &[String]) -> (Output, f64) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = tidegate_command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let output = std::thread::spawn(move || child.wait_with_output());
    // wait_with_output reaps the child; read its usage from /proc first is
    // racy, so wait4 on a duplicate is not possible: poll VmHWM instead.
    let mut peak_kib = 0u64;
    while !output.is_finished() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (output.join().unwrap().unwrap(), peak_kib as f64 / 1024.0)
}

#[tokio::test]
async fn alias_bombs_stay_within_memory() {
    let case = Case::new("bad-bomb");
    // Billion laughs, and ten documents of a few KiB that each expand a
    // large anchor many times: per file they are past the limit.
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\nx0: &a0 \"0123456789012345678901234567890123456789\"\n",
    );
    for i in 1..30 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let big = "b".repeat(400_000);
    let mut wide = String::new();
    for i in 0..10 {
        wide.push_str(&format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{i}}}\ns: &s \"{big}\"\nv: [{}]\n", ["*s"; 60].join(", ")));
    }
    let out = case.sync_broken(
        |work| {
            std::fs::write(work.join("victim.yaml"), &bomb).unwrap();
            std::fs::write(work.join("wide.yaml"), &wide).unwrap();
        },
        &[],
    );
    case.assert_isolated(&out, &["victim.yaml: document 0", "wide.yaml: document"])
        .await;
    // The same again, measured.
    let (out, peak) = run_measured(&case.repo.once_args(&[]));
    assert_eq!(out.status.code(), Some(1));
    eprintln!("peak RSS under the alias bombs: {peak:.1} MiB");
    assert!(peak > 0.0 && peak < 200.0, "peak RSS {peak:.1} MiB");
}

#[tokio::test]
async fn deep_nesting() {
    let case = Case::new("bad-deep");
    let text = format!(
        "{}  deep: {}{}\n",
        cm_yaml(&case.ns, "victim", "1"),
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    case.assert_isolated(&out, &["victim.yaml: document 0"])
        .await;
}

#[tokio::test]
async fn symlink_out_of_the_repository() {
    let case = Case::new("bad-symlink");
    let out = case.sync_broken(
        |work| {
            std::fs::remove_file(work.join("victim.yaml")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", work.join("victim.yaml")).unwrap();
        },
        &[],
    );
    case.assert_isolated(
        &out,
        &["victim.yaml: symlink points outside the repository; not read"],
    )
    .await;
    assert!(!stderr(&out).contains("root:"), "{}", stderr(&out));
}

#[tokio::test]
async fn symlink_loop() {
    let case = Case::new("bad-loop");
    let out = case.sync_broken(
        |work| {
            std::fs::remove_file(work.join("victim.yaml")).unwrap();
            std::os::unix::fs::symlink("loop.yaml", work.join("victim.yaml")).unwrap();
            std::os::unix::fs::symlink("victim.yaml", work.join("loop.yaml")).unwrap();
            std::fs::create_dir_all(work.join("dir")).unwrap();
            std::os::unix::fs::symlink("..", work.join("dir/up")).unwrap();
        },
        &[],
    );
    case.assert_isolated(&out, &["symlink cannot be resolved"])
        .await;
}

#[tokio::test]
async fn fifo_in_a_checkout_is_never_opened() {
    // Git cannot hold a FIFO; a local checkout given to validate or diff can.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.yaml"), cm_yaml("default", "ok", "1")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = tidegate(&["validate", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipe.yaml: not a regular file"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("1 objects in 1 files are valid"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn unknown_kind() {
    let case = Case::new("bad-kind");
    let text = format!(
        "{}---\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: {{name: g, namespace: {}}}\n",
        cm_yaml(&case.ns, "victim", "1"),
        case.ns
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("victim.yaml (document 1): example.com/v1 Gizmo"),
        "{err}"
    );
    assert!(
        err.contains("kind Gizmo (example.com/v1) is not served by the cluster: install its CustomResourceDefinition"),
        "{err}"
    );
    assert!(configmap(&case.ns, "later").await.is_some());
    assert!(configmap(&case.ns, "victim").await.is_some());
}

#[tokio::test]
async fn field_the_api_server_rejects() {
    let case = Case::new("bad-field");
    let text = format!(
        "{}  nested: {{not: allowed}}\n",
        cm_yaml(&case.ns, "victim", "2")
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "victim.yaml (document 0): v1 ConfigMap {}/victim:",
            case.ns
        )),
        "{err}"
    );
    assert!(configmap(&case.ns, "later").await.is_some());
    assert_eq!(
        configmap(&case.ns, "victim").await.unwrap().data.unwrap()["value"],
        "1"
    );
}

#[tokio::test]
async fn namespace_not_allowed() {
    let case = Case::new("bad-allowed");
    let other = unique("elsewhere");
    let text = format!(
        "{}---\n{}",
        cm_yaml(&case.ns, "victim", "1"),
        cm_yaml(&other, "stray", "1")
    );
    let out = case.sync_victim(text.as_bytes(), &["--k8s-allow-namespace", &case.ns]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("namespace {other} is not allowed")),
        "{err}"
    );
    assert!(configmap(&case.ns, "later").await.is_some());
}

#[tokio::test]
async fn name_that_would_change_the_request_path() {
    let case = Case::new("bad-name");
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web/status, namespace: {}}}\n",
        case.ns
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    // The record keeps the origin, the object and the reason apart.
    case.assert_isolated(
        &out,
        &[
            "its name may not contain / or %",
            "victim.yaml: document 0 (line 1): v1 ConfigMap web/status: its name may not contain / or %",
        ],
    )
        .await;
}

#[tokio::test]
async fn namespace_that_is_not_a_dns_label() {
    let case = Case::new("bad-nsname");
    let out = case.sync_victim(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: ../kube-system}\n",
        &[],
    );
    case.assert_isolated(
        &out,
        &[
            "victim.yaml: document 0 (line 1)",
            "its namespace is not a DNS label",
        ],
    )
    .await;
}

#[tokio::test]
async fn emptied_repository_prunes_nothing() {
    let case = Case::new("bad-empty");
    std::fs::write(case.repo.work.join("victim.yaml"), "---\n---\n").unwrap();
    std::fs::remove_file(case.repo.work.join("ns.yaml")).unwrap();
    case.repo.push("empty");
    let out = case.repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rendered no objects while the inventory holds 3"),
        "{err}"
    );
    assert!(
        err.contains("--sync-garbage-collection-allow-empty"),
        "{err}"
    );
    assert!(configmap(&case.ns, "good").await.is_some());
    assert!(configmap(&case.ns, "victim").await.is_some());
    // For those who mean it.
    let out = case
        .repo
        .sync_once(&[GC, "--sync-garbage-collection-allow-empty"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&case.ns, "victim").await.is_none());
}

#[tokio::test]
async fn wrong_git_path_prunes_nothing() {
    let case = Case::new("bad-path");
    std::fs::create_dir_all(case.repo.work.join("docs")).unwrap();
    case.repo
        .write("docs/readme.yaml", "title: not manifests\n");
    case.repo.push("docs");
    let out = case.repo.sync_once(&[GC, "--git-path", "docs"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rendered no objects while the inventory holds 3"),
        "{err}"
    );
    assert!(configmap(&case.ns, "victim").await.is_some());
}

#[tokio::test]
async fn chart_yaml_at_the_path_root_prunes_nothing() {
    let case = Case::new("bad-chart");
    case.repo
        .write("Chart.yaml", "apiVersion: v2\nname: oops\nversion: 0.1.0\n");
    case.repo.push("a chart at the root");
    let out = case.repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a Chart.yaml at a path's root"), "{err}");
    assert!(configmap(&case.ns, "victim").await.is_some());
}

#[tokio::test]
async fn secret_with_a_typo_leaks_nothing() {
    let case = Case::new("bad-secret");
    let text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: {}}}\nstringData:\n  password: \"hunter2-topsecret\n  user: admin: \"hunter2-topsecret\"\n",
        case.ns
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    case.assert_isolated(&out, &["victim.yaml: document 0"])
        .await;
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    assert!(!case.status().to_string().contains("hunter2"));
    let events = Api::<Event>::namespaced(client().await, "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    // The failed sync's Event is among them: the check below reads it.
    let state = format!("{}-state", case.repo.sync_set);
    assert!(
        events.items.iter().any(|e| {
            e.reason.as_deref() == Some("SyncFailed")
                && e.involved_object.kind.as_deref() == Some("ConfigMap")
                && e.involved_object.name.as_deref() == Some(state.as_str())
        }),
        "no SyncFailed Event on ConfigMap default/{state}"
    );
    assert!(
        events
            .items
            .iter()
            .all(|e| !e.message.clone().unwrap_or_default().contains("hunter2"))
    );
}

#[tokio::test]
async fn ignored_in_git_is_neither_applied_nor_pruned() {
    let case = Case::new("bad-ignore");
    let text = cm_yaml(&case.ns, "victim", "2").replace(
        "  namespace:",
        "  annotations:\n    fluxcd.io/ignore: \"true\"\n  namespace:",
    );
    let out = case.sync_victim(text.as_bytes(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live = configmap(&case.ns, "victim").await.unwrap();
    assert_eq!(live.data.unwrap()["value"], "1", "not applied");
    // Still in the inventory: removing the file later prunes it.
    std::fs::remove_file(case.repo.work.join("victim.yaml")).unwrap();
    case.repo.push("gone");
    let out = case.repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(configmap(&case.ns, "victim").await.is_none());
}

#[tokio::test]
async fn namespaceless_manifest_protects_only_its_default_namespace_object() {
    let case = Case::new("bad-defaultns");
    // `victim` moves to a manifest without a namespace, placed in
    // --k8s-default-namespace: the object in the test namespace goes.
    let default_ns = unique("dflt");
    let text = format!(
        "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: victim}}\n",
        ns_yaml(&default_ns)
    );
    let out = case.sync_victim(text.as_bytes(), &["--k8s-default-namespace", &default_ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("pruned v1 ConfigMap {}/victim", case.ns)),
        "{}",
        stdout(&out)
    );
    assert!(configmap(&default_ns, "victim").await.is_some());
}

#[tokio::test]
async fn custom_resource_named_like_a_list_is_one_object() {
    let case = Case::new("bad-list");
    let group = format!("{}.example.com", case.ns);
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: ipallowlists.{group}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: ipallowlists, singular: ipallowlist, kind: IPAllowList}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n---\napiVersion: {group}/v1\nkind: IPAllowList\nmetadata: {{name: office, namespace: {}}}\nitems: [10.0.0.0/8]\n",
        case.ns
    );
    let out = case.sync_victim(
        format!("{}---\n{crd}", cm_yaml(&case.ns, "victim", "1")).as_bytes(),
        &[],
    );
    // Rendered as one object (not its items as objects): the API server has
    // the last word on it, and refuses a custom kind that ends in List with
    // items; the error names the object, and the rest is applied.
    let err = stderr(&out);
    let named = format!(
        "victim.yaml (document 2): {group}/v1 IPAllowList {}/office:",
        case.ns
    );
    assert!(err.contains(&named), "{err}");
    assert!(!err.contains("has no metadata.name"), "{err}");
    let crd_created =
        format!("created apiextensions.k8s.io/v1 CustomResourceDefinition ipallowlists.{group}");
    assert!(stdout(&out).contains(&crd_created), "{}", stdout(&out));
    assert!(configmap(&case.ns, "later").await.is_some());
}

#[tokio::test]
async fn diff_and_validate_report_the_same_errors() {
    let case = Case::new("bad-diff");
    std::fs::write(
        case.repo.work.join("victim.yaml"),
        "apiVersion: v1\nkind: [\n",
    )
    .unwrap();
    case.repo
        .write("later.yaml", &cm_yaml(&case.ns, "later", "1"));
    let work = case.repo.work.to_str().unwrap();
    let out = tidegate(&["validate", work]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("victim.yaml: document 0 (line"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("3 objects in 2 files are valid"),
        "{}",
        stdout(&out)
    );
    let out = tidegate(&["diff", work, "--sync-set-name", &case.repo.sync_set, GC]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("victim.yaml: document 0 (line"), "{text}");
    assert!(
        text.contains(&format!("+ create v1 ConfigMap {}/later", case.ns)),
        "{text}"
    );
    assert!(!text.contains("- prune"), "nothing would be pruned: {text}");
}

#[tokio::test]
async fn namespace_holding_objects_we_do_not_manage_is_kept() {
    let case = Case::new("bad-held");
    // Someone else's ConfigMap in our namespace.
    let by_hand: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "by-hand"}})).unwrap();
    Api::<ConfigMap>::namespaced(client().await, &case.ns)
        .create(&PostParams::default(), &by_hand)
        .await
        .unwrap();
    let out = case.sync_broken(
        |work| {
            std::fs::remove_file(work.join("victim.yaml")).unwrap();
            std::fs::write(work.join("ns.yaml"), "").unwrap();
        },
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "v1 Namespace {}: not pruned: 1 object(s) tidegate does not manage",
            case.ns
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("ConfigMap {}/by-hand", case.ns)),
        "{err}"
    );
    let namespaces: Api<Namespace> = Api::all(client().await);
    assert!(namespaces.get_opt(&case.ns).await.unwrap().is_some());
    // The override.
    let patch = json!({"metadata": {"annotations": {"tidegate.dev/prune": "force"}}});
    namespaces
        .patch(&case.ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let out = case.repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("pruned v1 Namespace {}", case.ns)),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn credentials_in_the_url_never_show() {
    let repo = GitRepo::new();
    let port = free_port();
    let url = format!("https://bot:s3cr3t-token@127.0.0.1:{port}/repo.git");
    let out = repo.sync_once_from(&url, &["--git-timeout", "2s"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(err.contains("bot:***@127.0.0.1"), "{err}");
    let status = tidegate(&["status", "--sync-set-name", &repo.sync_set, "-o", "json"]);
    assert!(!stdout(&status).contains("s3cr3t"), "{}", stdout(&status));
    assert!(stdout(&status).contains("bot:***@"), "{}", stdout(&status));
}

#[tokio::test]
async fn credentials_are_never_sent_over_plain_http() {
    let repo = GitRepo::new();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server.set_nonblocking(true).unwrap();
    let url = format!("http://bot:s3cr3t@127.0.0.1:{port}/repo.git");
    let out = repo.sync_once_from(&url, &[], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to send credentials over plain http://"),
        "{err}"
    );
    assert!(err.contains("--git-allow-insecure-http"), "{err}");
    assert!(server.accept().is_err(), "no connection was made");
}

#[tokio::test]
async fn empty_webhook_secret_is_refused_at_start() {
    let name = unique("empty-hook");
    create_secret(&name, json!({"webhook-secret": ""})).await;
    let repo = GitRepo::new();
    let out = tidegate(&[
        "daemon",
        "--git-url",
        &repo.url(),
        "--listen",
        "off",
        "--webhook-secret-name",
        &name,
        "--sync-set-name",
        &repo.sync_set,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the Secret default/{name} has an empty `webhook-secret`"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn forged_and_oversized_webhooks_are_refused_and_the_daemon_lives_on() {
    let secret = unique("hook");
    create_secret(&secret, json!({"webhook-secret": "real-s3cret"})).await;
    let repo = GitRepo::new();
    repo.write("a.yaml", &cm_yaml("default", &unique("hooked"), "1"));
    repo.push("one");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _daemon = repo.daemon(
        &repo.url(),
        &[
            "--listen",
            &listen,
            "--webhook-secret-name",
            &secret,
            "--git-watch",
            "false",
        ],
    );
    wait_http(port, "/readyz", 200);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let forged = [
        ("X-GitHub-Event", "push".to_string()),
        ("X-Hub-Signature-256", "sha256=00".to_string()),
    ];
    assert_eq!(http(port, "POST", "/hooks/github", &forged, body).0, 401);
    let huge = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(http(port, "POST", "/hooks/generic", &[], &huge).0, 413);
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
}

#[tokio::test]
async fn crd_with_custom_resources_we_do_not_manage_is_kept() {
    let case = Case::new("bad-crd");
    let group = format!("{}.example.com", case.ns);
    let crd = format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: gadgets.{group}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: gadgets, singular: gadget, kind: Gadget}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n"
    );
    case.repo.write("crd.yaml", &crd);
    case.repo.push("a CRD");
    let out = case.repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Someone else's Gadget.
    let gadgets = dynamic_api(&format!("{group}/v1"), "Gadget", "gadgets", Some(&case.ns)).await;
    let gadget: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Gadget", "metadata": {"name": "by-hand"}
    }))
    .unwrap();
    gadgets
        .create(&PostParams::default(), &gadget)
        .await
        .unwrap();
    std::fs::remove_file(case.repo.work.join("crd.yaml")).unwrap();
    case.repo.push("drop the CRD");
    let out = case.repo.sync_once(&[GC]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "CustomResourceDefinition gadgets.{group}: not pruned: 1 object(s) tidegate does not manage"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("Gadget {}/by-hand", case.ns)),
        "{err}"
    );
    assert!(gadgets.get_opt("by-hand").await.unwrap().is_some());
    // Once the Gadget is gone, the CRD is pruned.
    gadgets
        .delete("by-hand", &Default::default())
        .await
        .unwrap();
    let out = case.repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "pruned apiextensions.k8s.io/v1 CustomResourceDefinition gadgets.{group}"
        )),
        "{}",
        stdout(&out)
    );
}

/// Issue 19, item 1: a commit that replaces directory `a/` by a link to a
/// directory outside the checkout. The update must remove the checkout's
/// own `a/…`, never the link target's files (`recursive`: a path that is a
/// file in Git and a directory outside), and the sync fails naming `a`.
async fn directory_replaced_by_a_link(prefix: &str, recursive: bool) {
    let case = Case::new(prefix);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.yaml"), "keep me").unwrap();
    let deep = outside.path().join("deep");
    if recursive {
        std::fs::create_dir_all(deep.join("more")).unwrap();
        std::fs::write(deep.join("more/data"), "keep me too").unwrap();
    }
    case.repo
        .write("a/x.yaml", &cm_yaml(&case.ns, "in-a", "1"))
        .write("a/deep", "# a file in Git\n");
    case.repo.push("a directory");
    let out = case.repo.sync_once(&[GC]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = case.sync_broken(
        |work| {
            std::fs::remove_dir_all(work.join("a")).unwrap();
            std::os::unix::fs::symlink(outside.path(), work.join("a")).unwrap();
        },
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a: symlink points outside the repository"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("x.yaml")).unwrap(),
        "keep me"
    );
    if recursive {
        assert_eq!(
            std::fs::read_to_string(deep.join("more/data")).unwrap(),
            "keep me too"
        );
    }
    assert!(
        configmap(&case.ns, "in-a").await.is_some(),
        "nothing pruned"
    );
    assert_eq!(case.status()["result"], "failed");
}

#[tokio::test]
async fn checkout_update_never_deletes_through_a_link() {
    directory_replaced_by_a_link("bad-link-delete", false).await;
}

#[tokio::test]
async fn checkout_update_never_deletes_recursively_through_a_link() {
    directory_replaced_by_a_link("bad-link-rmtree", true).await;
}

/// Issue 19, item 1: a tree holding both a link `a` (to a directory helm
/// would load plugins from) and a directory `a/` with a plugin in it. The
/// revision is refused by name, nothing is written through the link, and
/// nothing of it is applied or pruned.
#[tokio::test]
async fn tree_with_a_duplicate_entry_writes_nothing_through_it() {
    let case = Case::new("bad-duplicate-entry");
    let plugins = tempfile::tempdir().unwrap();
    let repo = &case.repo;
    let plugin = repo.object("blob", b"name: evil\ncommand: touch /tmp/owned\n");
    let evil = repo.object(
        "tree",
        format!("100644 blob {plugin}\tplugin.yaml\n").as_bytes(),
    );
    let a = repo.object("tree", format!("040000 tree {evil}\tevil\n").as_bytes());
    let link = repo.object("blob", plugins.path().to_str().unwrap().as_bytes());
    let head = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let mut entries = repo.git(&["ls-tree", &head]);
    entries.push_str(&format!("\n120000 blob {link}\ta\n040000 tree {a}\ta\n"));
    let later = repo.object("blob", cm_yaml(&case.ns, "later", "1").as_bytes());
    entries.push_str(&format!("100644 blob {later}\tlater.yaml\n"));
    let tree = repo.object("tree", entries.as_bytes());
    repo.push_tree(&tree, "a link and a directory of one name");
    let out = repo.sync_once(&[GC]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a appears twice in its directory"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read_dir(plugins.path()).unwrap().next().is_none(),
        "nothing may be written through the link"
    );
    assert!(
        configmap(&case.ns, "later").await.is_none(),
        "nothing of it applied"
    );
    assert!(
        configmap(&case.ns, "victim").await.is_some(),
        "nothing pruned"
    );
    assert!(
        case.status()["message"]
            .to_string()
            .contains("a appears twice")
    );
}

/// Issue 19, item 7: a gitlink (here without .gitmodules) is skipped with a
/// warning naming it, by a fresh checkout (a restart) as by an update.
#[tokio::test]
async fn submodule_never_makes_a_repository_unsyncable() {
    let case = Case::new("bad-submodule");
    let repo = &case.repo;
    let head = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let mut entries = repo.git(&["ls-tree", &head]);
    let sub = repo.object(
        "tree",
        b"160000 commit 1111111111111111111111111111111111111111\tlib\n",
    );
    let later = repo.object("blob", cm_yaml(&case.ns, "later", "1").as_bytes());
    entries.push_str(&format!(
        "\n040000 tree {sub}\tvendor\n100644 blob {later}\tlater.yaml\n"
    ));
    let tree = repo.object("tree", entries.as_bytes());
    repo.push_tree(&tree, "a submodule");
    for run in ["updated checkout", "fresh checkout after a restart"] {
        let out = repo.sync_once(&[GC]);
        assert!(out.status.success(), "{run}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("vendor/lib: a submodule"),
            "{run}: {}",
            stderr(&out)
        );
        assert!(configmap(&case.ns, "later").await.is_some(), "{run}");
        std::fs::remove_dir_all(&repo.cache).unwrap();
    }
}

/// Issue 19, item 2: under --k8s-allow-namespace a HelmRelease in an
/// allowed namespace may not install elsewhere, read values from elsewhere,
/// or have its chart create a cluster-scoped object; a release that keeps
/// to the list installs as usual.
#[tokio::test]
async fn allow_list_binds_helm_releases() {
    use crate::helm_releases::{
        copy_chart, crd_installed, helm_binary, helm_release, write_release,
    };
    crd_installed().await;
    let ns = unique("bad-tenant");
    crate::support::create_namespace(&ns).await;
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write(
        "charts/web/templates/escalate.yaml",
        "{{- if .Values.escalate }}\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {{ .Release.Name }}-admin\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: default, namespace: {{ .Release.Namespace }}}]\n{{- end }}\n",
    );
    // A hook rendered only against the cluster (lookup finds nothing
    // offline): only a render as the install does it shows it.
    repo.write(
        "charts/web/templates/hook.yaml",
        "{{- if and .Values.viaLookup (lookup \"v1\" \"Namespace\" \"\" \"kube-system\") }}\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {{ .Release.Name }}-hook-admin\n  annotations: {\"helm.sh/hook\": post-install}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects: [{kind: ServiceAccount, name: default, namespace: {{ .Release.Namespace }}}]\n{{- end }}\n",
    );
    for (name, spec) in [
        ("ok", ""),
        ("lookup", "  values: {viaLookup: true}\n"),
        ("elsewhere", "  targetNamespace: kube-system\n"),
        (
            "secret",
            "  valuesFrom:\n  - secretKeyRef: {name: admin-values, namespace: kube-system}\n",
        ),
        ("escalate", "  values: {escalate: true}\n"),
    ] {
        write_release(
            &repo,
            &format!("releases/{name}.yaml"),
            &helm_release(&ns, name, spec),
        );
    }
    repo.push("five releases");
    let helm = helm_binary();
    let out = repo.sync_once(&["--helm-binary", &helm, "--k8s-allow-namespace", &ns]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    for refusal in [
        "spec.targetNamespace kube-system is not allowed (--k8s-allow-namespace:".to_string(),
        "spec.valuesFrom[0].secretKeyRef reads from namespace kube-system, which is not allowed"
            .to_string(),
        format!(
            "the chart renders rbac.authorization.k8s.io/v1 ClusterRoleBinding {ns}-escalate-admin: it is cluster-scoped"
        ),
        format!(
            "the chart renders rbac.authorization.k8s.io/v1 ClusterRoleBinding {ns}-lookup-hook-admin: it is cluster-scoped"
        ),
    ] {
        assert!(text.contains(&refusal), "{refusal:?} not in:\n{text}");
    }
    assert!(
        text.contains(&format!("installed release {ns}/{ns}-ok revision 1")),
        "{text}"
    );
    let bindings = dynamic_api(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        None,
    )
    .await;
    // Removed from Git: the release it names is not uninstalled either.
    std::fs::remove_file(repo.work.join("releases/elsewhere.yaml")).unwrap();
    repo.push("elsewhere removed");
    let out = repo.sync_once(&[
        "--helm-binary",
        &helm,
        "--k8s-allow-namespace",
        &ns,
        "--sync-garbage-collection",
    ]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(
        text.contains(&format!(
            "helm.fluxcd.io/v1 HelmRelease {ns}/elsewhere: not pruned: its Helm release cannot be uninstalled: spec.targetNamespace kube-system is not allowed"
        )),
        "{text}"
    );
    for name in ["escalate-admin", "lookup-hook-admin"] {
        let binding = bindings.get_opt(&format!("{ns}-{name}")).await.unwrap();
        assert!(binding.is_none(), "{name}");
    }
    let helm_records =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client().await, "kube-system")
            .list(&ListParams::default().labels("owner=helm"))
            .await
            .unwrap();
    assert!(
        !helm_records.items.iter().any(|s| s
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .contains(&ns)),
        "nothing installed into kube-system"
    );
}

/// A repository holding the example chart, a namespace and the releases
/// given (name, extra spec); synced once with helm. Returns its output.
async fn sync_releases(
    ns: &str,
    releases: &[(&str, String, Option<String>)],
) -> (GitRepo, String, i32) {
    use crate::helm_releases::{
        copy_chart, crd_installed, helm_binary, helm_release, write_release,
    };
    crd_installed().await;
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write("namespaces/ns.yaml", &ns_yaml(ns));
    for (name, spec, chart_url) in releases {
        let text = helm_release(ns, name, spec);
        match chart_url {
            Some(url) => {
                repo.write(
                    &format!("releases/{name}.yaml"),
                    &text.replace("REPO_URL", url),
                );
            }
            None => write_release(&repo, &format!("releases/{name}.yaml"), &text),
        }
    }
    repo.push("releases");
    let helm = helm_binary();
    let out = repo.sync_once(&["--helm-binary", &helm]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    (repo, text, out.status.code().unwrap_or(-1))
}

/// Issue 19, item 18: a HelmRelease may not fetch its chart from another
/// repository on the daemon's disk (without --allow-local-chart-repositories).
#[tokio::test]
async fn chart_from_another_repository_on_the_daemons_disk_is_refused() {
    let ns = unique("bad-local-chart");
    let other = GitRepo::new();
    crate::helm_releases::copy_chart(&other);
    other.push("charts elsewhere on disk");
    let (_, text, code) = sync_releases(&ns, &[("local", String::new(), Some(other.url()))]).await;
    assert_eq!(code, 1, "{text}");
    let refusal = format!(
        "chart.git {} is a repository on the daemon's disk; name a remote URL (or pass --allow-local-chart-repositories)",
        other.url()
    );
    assert!(text.contains(&refusal), "{text}");
    assert!(
        text.contains(&format!("created v1 Namespace {ns}")),
        "the rest syncs: {text}"
    );
}

/// Issue 19, item 6: values may not be fetched from loopback or
/// cloud-metadata addresses, and `validate` makes no request for values.
#[tokio::test]
async fn values_from_loopback_or_cloud_metadata_are_refused() {
    let ns = unique("bad-values-url");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = |u: &str| format!("  valuesFrom:\n  - externalSourceRef: {{url: \"{u}\"}}\n");
    let (repo, text, code) = sync_releases(
        &ns,
        &[
            (
                "urls",
                url(&format!("http://127.0.0.1:{port}/values.yaml")),
                None,
            ),
            (
                "metadata",
                url("http://169.254.169.254/latest/user-data"),
                None,
            ),
        ],
    )
    .await;
    assert_eq!(code, 1, "{text}");
    for refusal in [
        "127.0.0.1 resolves to 127.0.0.1, a loopback, link-local or private address",
        "169.254.169.254 resolves to 169.254.169.254",
        "list the host or its network in --values-url-allow",
    ] {
        assert!(text.contains(refusal), "{refusal:?} not in:\n{text}");
    }
    let helm = crate::helm_releases::helm_binary();
    let out = tidegate(&[
        "validate",
        repo.work.to_str().unwrap(),
        "--helm-binary",
        &helm,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "neither the sync nor validate may connect to a loopback address"
    );
}

/// Issue 19, item 11: 150 nested directories are walked in time linear
/// in their depth and refused past 100 levels, naming the path; the rest
/// of the repository syncs.
#[tokio::test]
async fn deeply_nested_directories_are_refused_by_name() {
    let case = Case::new("bad-deep-dirs");
    let deep: String = (0..150).map(|_| "d/").collect();
    let out = case.sync_broken(
        |work| {
            let dir = work.join(&deep);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("cm.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\n",
            )
            .unwrap();
        },
        &[],
    );
    case.assert_isolated(&out, &["more than 100 directory levels deep; not read"])
        .await;
}

/// Issue 19, item 4: two instances with one sync-set name, their state in
/// different namespaces, syncing the same object. The second neither
/// overwrites nor (even with an inventory edited to list it) prunes the
/// first's object, and says whose it is; with tidegate.dev/adopt in Git it
/// takes it over.
#[tokio::test]
async fn two_instances_cannot_take_over_or_prune_each_other() {
    let ns = unique("bad-owners");
    let namespaces = Api::<Namespace>::all(client().await);
    let (state_a, state_b) = (format!("{ns}-a"), format!("{ns}-b"));
    for name in [&state_a, &state_b] {
        crate::support::create_namespace(name).await;
    }
    let a = GitRepo::new();
    a.write(
        "ns.yaml",
        &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "shared", "from-a")),
    );
    a.push("instance a");
    let out = a.sync_once(&[GC, "--namespace", &state_a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut b = GitRepo::new();
    b.sync_set = a.sync_set.clone();
    b.write("shared.yaml", &cm_yaml(&ns, "shared", "from-b"))
        .write("own.yaml", &cm_yaml(&ns, "b-own", "1"));
    b.push("instance b");
    let out = b.sync_once(&[GC, "--namespace", &state_b]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let owner_a = format!("{state_a}/{}", a.sync_set);
    let owner_b = format!("{state_b}/{}", a.sync_set);
    assert!(
        err.contains(&format!(
            "v1 ConfigMap {ns}/shared: owned by another tidegate instance ({owner_a}; this one is {owner_b})"
        )),
        "{err}"
    );
    let shared = configmap(&ns, "shared").await.unwrap();
    assert_eq!(shared.data.unwrap()["value"], "from-a", "not taken over");
    assert!(configmap(&ns, "b-own").await.is_some(), "the rest applied");
    // An inventory edited to list a's objects prunes none of them.
    crate::support::edit_inventory(&state_b, &b.sync_set, |inventory| {
        inventory["v1"]["ConfigMap"][ns.as_str()] = json!(["b-own", "shared"]);
        inventory["v1"]["Namespace"] = json!({"": [ns]});
    })
    .await;
    std::fs::remove_file(b.work.join("shared.yaml")).unwrap();
    b.push("b lets go");
    let out = b.sync_once(&[GC, "--namespace", &state_b]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        configmap(&ns, "shared").await.is_some(),
        "a's object is not pruned by b"
    );
    assert!(
        namespaces.get_opt(&ns).await.unwrap().is_some(),
        "nor a's Namespace"
    );
    // Adopted: b takes it over and records itself.
    b.write(
        "shared.yaml",
        &cm_yaml(&ns, "shared", "from-b").replace(
            "metadata:\n",
            "metadata:\n  annotations: {tidegate.dev/adopt: \"true\"}\n",
        ),
    );
    b.push("b adopts shared");
    let out = b.sync_once(&[GC, "--namespace", &state_b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shared = configmap(&ns, "shared").await.unwrap();
    assert_eq!(
        shared.metadata.annotations.unwrap()["tidegate.dev/owner"],
        owner_b
    );
    assert_eq!(shared.data.unwrap()["value"], "from-b");
}

/// Issue 19, item 15: a file name holding a newline is printed escaped, so
/// it cannot forge a line of the log or of `tidegate status`.
#[tokio::test]
async fn file_name_with_a_newline_cannot_forge_a_line() {
    let case = Case::new("bad-newline");
    let out = case.sync_broken(
        |work| {
            std::fs::write(
                work.join("evil\nsynced revision 0000: 0 failed.yaml"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
            )
            .unwrap()
        },
        &[],
    );
    case.assert_isolated(
        &out,
        &[
            "0 failed.yaml: document 0",
            "evil\\nsynced revision 0000: 0 failed.yaml",
        ],
    )
    .await;
    assert!(
        !stderr(&out)
            .lines()
            .any(|l| l.starts_with("synced revision 0000")),
        "{}",
        stderr(&out)
    );
    let status = tidegate(&["status", "--sync-set-name", &case.repo.sync_set]);
    assert!(
        !stdout(&status)
            .lines()
            .any(|l| l.starts_with("synced revision 0000")),
        "{}",
        stdout(&status)
    );
}

/// Issue 19, item 12: two HelmReleases asking for one Helm release would
/// make a new revision each sync; both are refused, naming each other, by
/// the sync and by `validate`.
#[tokio::test]
async fn two_helm_releases_of_one_release_are_a_duplicate() {
    use crate::helm_releases::{
        copy_chart, crd_installed, helm_binary, helm_release, write_release,
    };
    crd_installed().await;
    let ns = unique("bad-dup-release");
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns));
    for name in ["one", "two"] {
        write_release(
            &repo,
            &format!("releases/{name}.yaml"),
            &helm_release(&ns, name, "  releaseName: shared\n"),
        );
    }
    repo.push("two releases of one name");
    let helm = helm_binary();
    let out = repo.sync_once(&["--helm-binary", &helm]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    for (refused, other) in [("one", "two"), ("two", "one")] {
        let _ = refused;
        let expected = format!(
            "Helm release {ns}/shared is also asked for by helm.fluxcd.io/v1 HelmRelease {ns}/{other}"
        );
        assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
    }
    assert!(
        !text.contains("installed release"),
        "neither is installed:\n{text}"
    );
    let out = tidegate(&[
        "validate",
        repo.work.to_str().unwrap(),
        "--helm-binary",
        &helm,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("releases/one.yaml (document 0)") && text.contains("is also asked for by"),
        "{text}"
    );
}

/// Issue 19, item 9: a chart that renders past --max-release-bytes fails
/// its release, naming the limit, before helm installs anything; the rest
/// of the repository syncs.
#[tokio::test]
async fn chart_that_renders_too_much_is_refused() {
    use crate::helm_releases::{
        copy_chart, crd_installed, helm_binary, helm_release, write_release,
    };
    crd_installed().await;
    let ns = unique("bad-big-chart");
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write(
        "charts/web/templates/big.yaml",
        "{{- if .Values.big }}\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-big}\ndata:\n{{- range $i := until 5000 }}\n  k{{ $i }}: \"{{ repeat 40 \"x\" }}\"\n{{- end }}\n{{- end }}\n",
    );
    repo.write(
        "namespaces/ns.yaml",
        &format!("{}---\n{}", ns_yaml(&ns), cm_yaml(&ns, "plain", "1")),
    );
    write_release(
        &repo,
        "releases/big.yaml",
        &helm_release(&ns, "big", "  values: {big: true}\n"),
    );
    repo.push("a chart rendering 250 KB");
    let helm = helm_binary();
    let out = repo.sync_once(&["--helm-binary", &helm, "--max-release-bytes", "100000"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "the chart renders more than 100000 bytes of manifests (--max-release-bytes)"
        ),
        "{text}"
    );
    assert!(configmap(&ns, "plain").await.is_some(), "the rest syncs");
    assert!(configmap(&ns, &format!("{ns}-big-big")).await.is_none());
    let records = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client().await, &ns)
        .list(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap();
    assert!(records.items.is_empty(), "helm recorded no release");
}

/// Issue 19, item 3: a HelmRelease whose chart.git names another server
/// does not receive the synced repository's HTTPS credentials (the server
/// would accept them); the fetch is anonymous and its refusal names the
/// server.
#[tokio::test]
async fn credentials_go_only_to_the_synced_repositorys_server() {
    use crate::helm_releases::{copy_chart, crd_installed, helm_binary, helm_release};
    use crate::servers::GitHttps;
    crd_installed().await;
    let ns = unique("bad-creds-host");
    let charts = GitRepo::new();
    copy_chart(&charts);
    charts.push("charts on another server");
    let elsewhere = GitHttps::start(charts.bare.parent().unwrap(), "reader:letmein");
    let repo = GitRepo::new();
    repo.write("ns.yaml", &ns_yaml(&ns)).write(
        "releases/web.yaml",
        &helm_release(&ns, "web", "").replace("REPO_URL", &elsewhere.url("repo.git")),
    );
    repo.push("a release of a chart on another server");
    let synced = GitHttps::start(repo.bare.parent().unwrap(), "reader:letmein");
    let cas = tempfile::NamedTempFile::new().unwrap();
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&synced.ca_file).unwrap(),
        std::fs::read_to_string(&elsewhere.ca_file).unwrap()
    );
    std::fs::write(cas.path(), both).unwrap();
    let secret = unique("creds-host");
    create_secret(
        &secret,
        json!({"username": "reader", "password": "letmein"}),
    )
    .await;
    let helm = helm_binary();
    let out = repo.sync_once_from(
        &synced.url("repo.git"),
        &[
            "--git-https-secret",
            &secret,
            "--git-ca-file",
            cas.path().to_str().unwrap(),
            "--helm-binary",
            &helm,
        ],
        &[],
    );
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{} asks for credentials: tidegate offers the deploy key and the HTTPS credentials only to the synced repository's own server",
            elsewhere.url("repo.git")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("created v1 Namespace {ns}")),
        "the synced repository itself is read with its credentials:\n{text}"
    );
}

/// Issue 19: a push may not forge a Helm release's history (a Secret of
/// type helm.sh/release.v1), which helm would then upgrade, roll back or
/// uninstall with tidegate's credentials.
#[tokio::test]
async fn helm_release_records_from_git_are_refused() {
    let case = Case::new("bad-helm-record");
    let forged = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sh.helm.release.v1.cilium.v9\n  namespace: {}\n  labels: {{owner: helm, name: cilium, status: deployed, version: \"9\"}}\ntype: helm.sh/release.v1\ndata: {{release: e30=}}\n",
        case.ns
    );
    let out = case.sync_victim(forged.as_bytes(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a Helm release record (type helm.sh/release.v1 or label owner=helm) may not come from Git"),
        "{err}"
    );
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client().await, &case.ns);
    assert!(
        secrets
            .get_opt("sh.helm.release.v1.cilium.v9")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        configmap(&case.ns, "later").await.is_some(),
        "the rest is applied"
    );
}
