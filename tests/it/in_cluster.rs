//! The daemon as the Deployment in deploy/ runs it (the release build, as
//! `cargo xtask test` makes it): its arguments and
//! environment taken from `tidegate install`'s manifests, in-cluster
//! configuration (KUBERNETES_SERVICE_HOST/PORT, a ServiceAccount token from
//! the TokenRequest API and the cluster CA at the standard path, in a mount
//! namespace of its own), as the ServiceAccount the manifests create. It
//! syncs the example repository with the cluster-wide RBAC, and with the
//! namespaced RBAC it refuses cluster-scoped objects clearly.

use std::process::{Command, Output};

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

use crate::helm_releases::{crd_installed, helm_binary};
use crate::support::{client, control_plane, stderr, stdout, tidegate, tools_dir, unique};

fn kubectl_apply(manifests: &str) {
    let mut child = Command::new(tools_dir().join("tidegate-controlplane"))
        .args([
            "kubectl",
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ])
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The API server's address and CA, from the test kubeconfig.
fn api_server() -> (String, String, Vec<u8>) {
    let text = std::fs::read_to_string(&control_plane().kubeconfig).unwrap();
    let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().unwrap();
    let (host, port) = server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap();
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().unwrap())
        .unwrap();
    (host.to_string(), port.to_string(), ca)
}

async fn token(namespace: &str, account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client().await, namespace);
    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .unwrap();
    let issued: TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .unwrap();
    issued.status.unwrap().token
}

/// Runs tidegate with the Deployment's args and env, in-cluster, once.
async fn run_as_deployment(namespace: &str, extra: &[&str]) -> Output {
    let deployment = Api::<Deployment>::namespaced(client().await, namespace)
        .get("tidegate")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let account = pod.service_account_name.unwrap();
    let (host, port, ca) = api_server();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(
        secrets.path().join("token"),
        token(namespace, &account).await,
    )
    .unwrap();
    std::fs::write(secrets.path().join("ca.crt"), ca).unwrap();
    std::fs::write(secrets.path().join("namespace"), namespace).unwrap();
    let mut env = vec![
        format!("KUBERNETES_SERVICE_HOST={host}"),
        format!("KUBERNETES_SERVICE_PORT={port}"),
        "PATH=/usr/bin:/bin".to_string(),
    ];
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => namespace.to_string(),
                Some("metadata.name") => "tidegate-0".to_string(),
                other => panic!("an env var from {other:?}"),
            },
            _ => String::new(),
        };
        env.push(format!("{}={value}", var.name));
    }
    let mut args = container.args.clone().unwrap();
    args.extend(["--once".to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    // Private mounts: the service account at its standard path, the
    // Deployment's emptyDirs, and helm and kustomize where the image has them.
    let script = r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
cp "$SECRETS"/token "$SECRETS"/ca.crt "$SECRETS"/namespace /run/secrets/kubernetes.io/serviceaccount/
mount -t tmpfs tmpfs /var/cache
mkdir -p /var/cache/tidegate
mount -t tmpfs tmpfs /usr/local/bin
touch /usr/local/bin/helm /usr/local/bin/kustomize
mount --bind "$HELM" /usr/local/bin/helm
mount --bind "$KUSTOMIZE" /usr/local/bin/kustomize
exec env -i "$@"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .args(&env)
    .arg(binary())
    .args(&args)
    .env("SECRETS", secrets.path())
    .env("HELM", helm_binary())
    .env("KUSTOMIZE", crate::kustomize::kustomize());
    cmd.output().expect("unshare")
}

/// The release build `cargo xtask test` makes (what the image holds), or
/// the test build when the tests run without it.
fn binary() -> String {
    std::env::var("TIDEGATE_RELEASE_BINARY").unwrap_or_else(|_| {
        eprintln!("TIDEGATE_RELEASE_BINARY is not set: running the test build of tidegate");
        env!("CARGO_BIN_EXE_tidegate").to_string()
    })
}

fn install(namespace: &str, url: &str) -> String {
    let out = tidegate(&[
        "install",
        "--git-url",
        url,
        "--git-branch",
        "main",
        "-n",
        namespace,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn as_the_deployment_runs_it_with_its_service_account() {
    crd_installed().await;
    let repo = crate::examples::example_repo();
    let ns = unique("tidegate-incluster");
    kubectl_apply(&install(&ns, &repo.url()));
    // The example repository is synced by other tests' instances too.
    let out = run_as_deployment(&ns, &["--adopt"]).await;
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("v1 Namespace demo") && text.contains("release demo/web"),
        "{text}"
    );
    // kustomize, where the image has it, built the example's overlay.
    assert!(text.contains("apps/v1 Deployment shop/redis"), "{text}");
    // deploy/ syncs `--git-path=.`: the base goes with its overlay there too.
    assert!(!text.contains("Deployment default/redis"), "{text}");
    // It found its state namespace and identity in-cluster.
    let state = crate::support::configmap(&ns, "tidegate-state").await;
    assert!(
        state.is_some(),
        "the state is recorded in the daemon's namespace"
    );

    // With the namespaced RBAC and --k8s-allow-namespace: cluster-scoped
    // objects are refused by name; what lives in the namespace syncs.
    let ns2 = unique("tidegate-scoped");
    let manifests = install(&ns2, &repo.url())
        .split("\n---")
        .filter(|doc| !doc.contains("kind: ClusterRole"))
        .collect::<Vec<_>>()
        .join("\n---");
    kubectl_apply(&manifests);
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rbac-namespaced.yaml"
    ))
    .unwrap()
    .replace("namespace: apps", "namespace: shop")
    .replace("namespace: tidegate", &format!("namespace: {ns2}"))
    .replace(
        "name: tidegate-namespaced",
        &format!("name: {ns2}-namespaced"),
    );
    kubectl_apply(&rbac);
    let out = run_as_deployment(&ns2, &["--k8s-allow-namespace=shop", "--adopt"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("v1 Namespace demo: it is cluster-scoped, and --k8s-allow-namespace limits tidegate to namespaced objects"),
        "{err}"
    );
    assert!(
        err.contains("storage.k8s.io/v1 StorageClass fast: it is cluster-scoped"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("apps/v1 Deployment shop/web"),
        "the allowed namespace syncs: {}",
        stdout(&out)
    );
}
