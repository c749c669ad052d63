//! deploy/ and `tidegate install` against the real control plane: the
//! manifests pass a server-side dry-run and apply; `install` prints what
//! `kubectl kustomize deploy/` builds; logs as JSON lines.

use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use crate::support::{
    GitRepo, app_yaml, client, control_plane, stderr, tidegate, tools_dir, unique,
};

/// kubectl (the control plane binary's), with `stdin` piped in.
fn kubectl(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(tools_dir().join("tidegate-controlplane"))
        .arg("kubectl")
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Applies manifests for namespace `ns` (created first: a dry-run of
/// objects in a namespace needs it) with a server-side dry-run, then for
/// real; returns the container of the Deployment `tidegate` they make.
async fn apply_dry_then_real(ns: &str, manifests: &str) -> k8s_openapi::api::core::v1::Container {
    let namespace = kubectl(&["create", "namespace", ns], "");
    assert!(namespace.status.success(), "{}", stderr(&namespace));
    let apply = ["apply", "--server-side", "--force-conflicts", "-f", "-"];
    let dry = kubectl(&[&apply[..], &["--dry-run=server"]].concat(), manifests);
    assert!(dry.status.success(), "{ns}: {}", stderr(&dry));
    let real = kubectl(&apply, manifests);
    assert!(real.status.success(), "{ns}: {}", stderr(&real));
    let deployment = Api::<Deployment>::namespaced(client().await, ns)
        .get("tidegate")
        .await
        .unwrap();
    deployment.spec.unwrap().template.spec.unwrap().containers[0].clone()
}

fn documents(text: &str) -> Vec<serde_json::Value> {
    text.split("\n---")
        .filter(|d| !d.trim().trim_start_matches("---").trim().is_empty())
        .map(|d| serde_saphyr::from_str(d.trim_start_matches("---")).unwrap())
        .collect()
}

#[tokio::test]
async fn install_prints_deploy_and_it_applies() {
    // What `kubectl kustomize deploy/` builds is what `install` prints with
    // deploy/'s own settings (kustomize orders objects by kind).
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let built = kubectl(&["kustomize", deploy], "");
    assert!(built.status.success(), "{}", stderr(&built));
    let out = tidegate(&[
        "install",
        "--git-url",
        "git@github.com:org/cluster-state",
        "--git-path",
        ".",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut printed = documents(&String::from_utf8_lossy(&out.stdout));
    let mut kustomized = documents(&String::from_utf8_lossy(&built.stdout));
    let key = |o: &serde_json::Value| format!("{}/{}", o["kind"], o["metadata"]["name"]);
    printed.sort_by_key(key);
    kustomized.sort_by_key(key);
    assert_eq!(printed.len(), 8);
    assert_eq!(printed, kustomized);

    // For a repository and a namespace of its own: a dry-run, then for real.
    let ns = unique("tidegate-install");
    let out = tidegate(&[
        "install",
        "--git-url",
        "https://git.example.com/org/cluster-state",
        "--git-branch",
        "main",
        "--namespace",
        &ns,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
    let container = apply_dry_then_real(&ns, &manifests).await;
    let args = container.args.clone().unwrap();
    assert_eq!(
        &args[..3],
        [
            "daemon",
            "--git-url=https://git.example.com/org/cluster-state",
            "--git-branch=main"
        ]
    );
    assert_eq!(
        container
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
}

#[tokio::test]
async fn logs_as_json_lines_with_the_revision() {
    let ns = unique("jsonlog");
    let repo = GitRepo::new();
    repo.write("app.yaml", &app_yaml(&ns, "1"));
    let revision = repo.push("one namespace");
    let mut args: Vec<String> = vec!["--log-format".into(), "json".into()];
    args.extend(repo.once_args(&[]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::support::tidegate_with_env(&args, &[("RUST_LOG", "tidegate=info")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let created = lines
        .iter()
        .find(|l| l["fields"]["object"] == format!("v1 ConfigMap {ns}/settings"))
        .unwrap_or_else(|| panic!("no line for the ConfigMap: {lines:?}"));
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["span"]["revision"], revision.as_str(), "{created}");
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(tools_dir().join("helm"))
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .output()
        .expect("helm")
}

#[tokio::test]
async fn the_chart_lints_renders_and_applies() {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/chart");
    let out = helm(&[
        "lint",
        chart,
        "--set",
        "git.url=git@github.com:org/cluster-state",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without a repository the chart says what to set.
    let out = helm(&["template", "tidegate", chart]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("set git.url"), "{}", stderr(&out));

    for (name, extra) in [
        ("cluster", vec!["--include-crds"]),
        (
            "namespaced",
            vec![
                "--set",
                "allowNamespaces={default}",
                "--set",
                "git.verifySignatures.mode=all",
                "--set",
                "git.verifySignatures.secret=tidegate-git-verify",
                "--set",
                "sops.secret=tidegate-sops",
            ],
        ),
    ] {
        let ns = unique(&format!("tidegate-chart-{name}"));
        let mut args = vec![
            "template",
            "tidegate",
            chart,
            "--namespace",
            &ns,
            "--set",
            "git.url=https://git.example.com/org/cluster-state",
            "--set",
            "git.path={clusters/prod}",
            "--set",
            "proxy.httpsProxy=http://proxy.internal:3128",
        ];
        args.extend(extra.iter().copied());
        let out = helm(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
        let container = apply_dry_then_real(&ns, &manifests).await;
        let args = container.args.clone().unwrap();
        for wanted in [
            "--git-url=https://git.example.com/org/cluster-state",
            "--git-path=clusters/prod",
            "--git-proxy=http://proxy.internal:3128",
            "--leader-elect",
        ] {
            assert!(
                args.iter().any(|a| a == wanted),
                "{name}: {wanted} in {args:?}"
            );
        }
        if name == "namespaced" {
            for wanted in [
                "--k8s-allow-namespace=default",
                "--git-verify-signatures-mode=all",
                "--git-verify-signatures-secret=tidegate-git-verify",
                "--sops-secret=tidegate-sops",
            ] {
                assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
            }
        } else {
            assert!(
                !args
                    .iter()
                    .any(|a| a.starts_with("--git-verify") || a.starts_with("--sops")),
                "off by default: {args:?}"
            );
        }
    }
}
