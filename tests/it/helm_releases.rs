//! HelmRelease (helm.fluxcd.io/v1) objects from a Flux v1 repository,
//! reconciled with the real helm binary against the real control plane: a
//! clear error while the cluster lacks the CRD; install, upgrade on values,
//! chart and live changes, nothing on a no-op, rollback after a failed
//! upgrade, uninstall when removed; charts from a Helm repository; missing
//! dependencies; adoption of helm-operator's releases; recovery of a release
//! left pending by a killed upgrade.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use tokio::sync::OnceCell;

use crate::servers::free_port;
use crate::support::{
    GitRepo, client, cm_yaml, configmap, control_plane, copy_dir, create_secret, dynamic_api,
    eventually, ns_yaml, status_json, stderr, stdout, tidegate_command, tools_dir, unique,
};

const CRD: &str = include_str!("../../deploy/crds/helmreleases.helm.fluxcd.io.yaml");
const CHART: &str = "examples/cluster-state/charts/web";

pub fn helm_binary() -> String {
    tools_dir().join("helm").display().to_string()
}

/// The real helm, against the shared control plane.
fn helm(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("tidegate-test-helm-{}", std::process::id()));
    Command::new(helm_binary())
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

/// `helm history` of a release as JSON: revisions with their status.
fn history(ns: &str, release: &str) -> Vec<(u64, String)> {
    let out = helm(&["history", release, "-n", ns, "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The helm processes on this machine running `upgrade` of `release`: what
/// could still finish an operation on it. (A zombie's command line reads
/// empty: it is not counted.)
fn helm_upgrades(release: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|program| program.ends_with(b"helm"))
                && args.contains(&b"upgrade".as_slice())
                && args.contains(&release.as_bytes())
        })
        .count()
}

/// Installs the HelmRelease CRD once per run. On a control plane that lacks
/// it, first checks that a HelmRelease is then a clear error while the
/// rest of the repository still syncs.
pub async fn crd_installed() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client().await);
        if crds
            .get_opt("helmreleases.helm.fluxcd.io")
            .await
            .unwrap()
            .is_none()
        {
            unserved_kind_is_a_clear_error().await;
        }
        let crd: serde_json::Value = serde_saphyr::from_str(CRD).unwrap();
        crds.patch(
            "helmreleases.helm.fluxcd.io",
            &PatchParams::apply("tests"),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(
            "the HelmRelease CRD Established",
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get("helmreleases.helm.fluxcd.io").await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    })
    .await;
}

async fn unserved_kind_is_a_clear_error() {
    let ns = unique("hr-unserved");
    let repo = GitRepo::new();
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns))
        .write("releases/web.yaml", &helm_release(&ns, "web", ""))
        .write("config/cm.yaml", &cm_yaml(&ns, "plain", "1"));
    repo.push("a Flux v1 repository");
    let out = repo.sync_once(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "releases/web.yaml (document 0): helm.fluxcd.io/v1 HelmRelease {ns}/web: \
             kind HelmRelease (helm.fluxcd.io/v1) is not served by the cluster: \
             install its CustomResourceDefinition from tidegate's deploy/crds/"
        )),
        "{err}"
    );
    assert!(!err.contains("404 page not found"), "{err}");
    assert!(configmap(&ns, "plain").await.is_some(), "the rest syncs");
}

/// A HelmRelease of the chart at charts/web in the synced repository, with
/// `spec` lines appended (indented by two spaces).
pub fn helm_release(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: helm.fluxcd.io/v1
kind: HelmRelease
metadata:
  name: {name}
  namespace: {ns}
spec:
  chart:
    git: REPO_URL
    ref: main
    path: charts/web
{extra_spec}"
    )
}

/// A repository holding the example chart and a namespace.
fn chart_repo(ns: &str) -> GitRepo {
    let repo = GitRepo::new();
    copy_chart(&repo);
    repo.write("namespaces/ns.yaml", &ns_yaml(ns));
    repo
}

/// The example chart, at charts/web of the repository.
pub fn copy_chart(repo: &GitRepo) {
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART),
        &repo.work.join("charts/web"),
    );
}

/// Writes a HelmRelease with the repository's own URL as its chart.git.
pub fn write_release(repo: &GitRepo, path: &str, text: &str) {
    repo.write(path, &text.replace("REPO_URL", &repo.url()));
}

impl GitRepo {
    /// `daemon --once` with helm and garbage collection.
    fn sync_helm(&self) -> Output {
        let helm = helm_binary();
        self.sync_once(&["--helm-binary", &helm, "--sync-garbage-collection"])
    }
}

fn assert_ok(out: &Output) -> String {
    let text = format!("{}\n{}", stdout(out), stderr(out));
    assert!(out.status.success(), "{text}");
    text
}

async fn deployment(ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client().await, ns)
        .get_opt(name)
        .await
        .unwrap()
}

async fn release_status(ns: &str, name: &str) -> serde_json::Value {
    let api = dynamic_api("helm.fluxcd.io/v1", "HelmRelease", "helmreleases", Some(ns)).await;
    api.get(name).await.unwrap().data["status"].clone()
}

/// Whether an Event with `reason` was written about the object `name`.
async fn has_event(ns: &str, name: &str, reason: &str) -> bool {
    let events = Api::<Event>::namespaced(client().await, ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap();
    events
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some(reason))
}

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test]
async fn chart_from_the_repository_through_its_whole_lifecycle() {
    crd_installed().await;
    let ns = unique("hr-life");
    let release = format!("{ns}-web");
    let repo = chart_repo(&ns);
    let secret = unique("hr-values");
    create_secret(
        &secret,
        serde_json::json!({"values.yaml": "podAnnotations:\n  from: secret\n"}),
    )
    .await;
    repo.write(
        "config/values.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-values\n  namespace: {ns}\ndata:\n  values.yaml: |\n    replicaCount: 3\n    service:\n      port: 8080\n"
        ),
    );
    let spec = format!(
        "  valuesFrom:
  - configMapKeyRef: {{name: web-values}}
  - secretKeyRef: {{name: {secret}, namespace: default}}
  values:
    service: {{port: 8081}}
  rollback: {{enable: true}}
"
    );
    write_release(&repo, "releases/web.yaml", &helm_release(&ns, "web", &spec));
    repo.push("a chart and its release");

    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!(
            "installed release {ns}/{release} revision 1 (helm.fluxcd.io/v1 HelmRelease {ns}/web)"
        )),
        "{text}"
    );
    assert_eq!(history(&ns, &release), [(1, "deployed".to_string())]);
    // Values: chart < ConfigMap < Secret < spec.values.
    let d = deployment(&ns, &release).await.expect("the Deployment");
    // tidegate's post-renderer labels the release's objects.
    assert_eq!(
        d.metadata.labels.as_ref().unwrap()["tidegate.dev/helm-release"],
        release.as_str()
    );
    let spec_of = d.spec.unwrap();
    assert_eq!(spec_of.replicas, Some(3));
    let template = spec_of.template;
    assert_eq!(
        template.metadata.unwrap().annotations.unwrap()["from"],
        "secret"
    );
    assert_eq!(
        template.spec.unwrap().containers[0].image.as_deref(),
        Some("nginx:1.27.3")
    );
    let svc = Api::<Service>::namespaced(client().await, &ns)
        .get(&release)
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8081);
    // The post-install hook ran to completion.
    let job = Api::<Job>::namespaced(client().await, &ns)
        .get(&format!("{release}-smoke-test"))
        .await
        .unwrap();
    assert_eq!(job.status.unwrap().succeeded, Some(1));
    // Status on the HelmRelease.
    let status = release_status(&ns, "web").await;
    assert_eq!(status["releaseName"], release.as_str());
    assert_eq!(status["releaseStatus"], "deployed");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Released")["status"], "True");
    let recorded = status_json(&repo.sync_set);
    assert_eq!(recorded["releases"][0]["action"], "installed", "{recorded}");
    assert_eq!(recorded["releases"][0]["revision"], 1);

    // A no-op sync: no new Helm revision, no write.
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!("unchanged release {ns}/{release} revision 1")),
        "{text}"
    );
    assert!(text.contains("(0 object writes)"), "{text}");
    assert_eq!(history(&ns, &release).len(), 1);
    assert_eq!(
        release_status(&ns, "web").await,
        status,
        "status not rewritten"
    );

    // Values changed in Git: an upgrade with a new pod template.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(
            &ns,
            "web",
            &spec.replace(
                "port: 8081}",
                "port: 8081}\n    podAnnotations: {from: git}",
            ),
        ),
    );
    repo.push("new values");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!("upgraded release {ns}/{release} revision 2")),
        "{text}"
    );
    assert!(text.contains("the values changed"), "{text}");
    let d = deployment(&ns, &release).await.unwrap();
    assert_eq!(
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["from"],
        "git"
    );
    assert_eq!(release_status(&ns, "web").await["observedGeneration"], 2);

    // appVersion bumped in Chart.yaml: the image follows.
    let chart_yaml = repo.work.join("charts/web/Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).unwrap();
    std::fs::write(
        &chart_yaml,
        text.replace("appVersion: \"1.27.3\"", "appVersion: \"1.27.4\""),
    )
    .unwrap();
    repo.push("nginx 1.27.4");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains("revision 3") && text.contains("the chart changed"),
        "{text}"
    );
    let d = deployment(&ns, &release).await.unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("nginx:1.27.4")
    );

    // A hand scale of a release's object is drift: upgraded back.
    Api::<Deployment>::namespaced(client().await, &ns)
        .patch(
            &release,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains("revision 4") && text.contains("was changed in the cluster (spec.replicas)"),
        "{text}"
    );
    assert_eq!(
        deployment(&ns, &release)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );

    // A failing upgrade (a port the API server refuses) is rolled back.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", &spec.replace("port: 8081", "port: 70000")),
    );
    repo.push("a port out of range");
    let out = repo.sync_helm();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("release {ns}/{release}"))
            && err.contains("rolled back to revision 4"),
        "{err}"
    );
    let revisions = history(&ns, &release);
    assert_eq!(
        revisions.last().unwrap(),
        &(6, "deployed".to_string()),
        "{revisions:?}"
    );
    assert_eq!(revisions[4], (5, "failed".to_string()), "{revisions:?}");
    let status = release_status(&ns, "web").await;
    assert_eq!(
        condition(&status, "RolledBack")["status"],
        "True",
        "{status}"
    );
    assert_eq!(
        condition(&status, "Released")["status"],
        "False",
        "{status}"
    );
    assert!(
        has_event(&ns, "web", "ReleaseRolledBack").await,
        "an Event says it was rolled back"
    );
    // The same broken values again: not retried, still reported.
    let out = repo.sync_helm();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed at revision 5"),
        "{}",
        stderr(&out)
    );
    // Helm's own reason is still given (issue 19, item 14).
    assert!(
        stderr(&out).contains("helm said: Upgrade"),
        "{}",
        stderr(&out)
    );
    let status = release_status(&ns, "web").await;
    assert!(
        condition(&status, "Released")["message"]
            .as_str()
            .is_some_and(|m| m.contains("helm said:")),
        "{status}"
    );
    assert_eq!(history(&ns, &release).len(), 6, "no new revision");

    // Removed from Git (garbage collection on): uninstalled.
    std::fs::remove_file(repo.work.join("releases/web.yaml")).unwrap();
    repo.push("no more web");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!("uninstalled release {ns}/{release}")),
        "{text}"
    );
    assert!(history(&ns, &release).is_empty());
    eventually("the Deployment gone", Duration::from_secs(30), || {
        let (ns, release) = (ns.clone(), release.clone());
        async move { deployment(&ns, &release).await.is_none().then_some(()) }
    })
    .await;
}

/// A Helm chart repository: `dir` served over HTTP on every address, with
/// basic authentication when `auth` is given.
struct ChartServer(std::process::Child, u16);

impl ChartServer {
    fn start(dir: &Path, auth: Option<&str>) -> ChartServer {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/chart_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(auth) = auth {
            cmd.env("HTTP_AUTH", auth);
        }
        let child = cmd.spawn().expect("python3 chart_server.py");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the chart server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChartServer(child, port)
    }
}

impl Drop for ChartServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This machine's first address that is not loopback: helm (Go) sends
/// requests for loopback addresses past any proxy.
fn host_address() -> String {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("an IPv4 address that is not loopback, to reach the chart server through the proxy")
        .to_string()
}

/// Packages the example chart into `dir` and indexes it for `url`.
fn chart_repository(dir: &Path, url: &str) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART);
    let out = helm(&[
        "package",
        chart.to_str().unwrap(),
        "-d",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = helm(&["repo", "index", dir.to_str().unwrap(), "--url", url]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn chart_from_a_helm_repository_with_credentials_through_the_proxy() {
    crd_installed().await;
    let ns = unique("hr-repo");
    let charts = tempfile::tempdir().unwrap();
    let server = ChartServer::start(charts.path(), Some("charts:s3cret"));
    let url = format!("http://{}:{}/", host_address(), server.1);
    chart_repository(charts.path(), &url);
    let proxy = crate::servers::Proxy::start();

    let repo = GitRepo::new();
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns))
        .write(
            "releases/auth.yaml",
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: chart-auth, namespace: {ns}}}\nstringData: {{username: charts, password: s3cret}}\n"
            ),
        )
        .write(
            "releases/web.yaml",
            &format!(
                "apiVersion: helm.fluxcd.io/v1
kind: HelmRelease
metadata: {{name: web, namespace: {ns}}}
spec:
  releaseName: shop
  chart:
    repository: \"{url}\"
    name: web
    version: 0.1.0
    chartPullSecret: {{name: chart-auth}}
  values: {{hook: {{enabled: false}}}}
"
            ),
        );
    repo.push("a chart from a Helm repository");
    let helm_bin = helm_binary();
    let proxy_url = proxy.url();
    let sync = || repo.sync_once(&["--helm-binary", &helm_bin, "--git-proxy", &proxy_url]);
    let text = assert_ok(&sync());
    assert!(
        text.contains(&format!("installed release {ns}/shop revision 1")),
        "{text}"
    );
    assert!(deployment(&ns, "shop-web").await.is_some());
    let log = proxy.log_text();
    assert!(
        log.contains("web-0.1.0.tgz"),
        "the chart came through the proxy: {log}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    // Unchanged: nothing pulled or upgraded again, even with the server gone.
    drop(server);
    let text = assert_ok(&sync());
    assert!(
        text.contains(&format!("unchanged release {ns}/shop revision 1")),
        "{text}"
    );
    assert_eq!(history(&ns, "shop").len(), 1);
}

#[tokio::test]
async fn chart_from_another_git_repository_with_values_from_a_url() {
    crd_installed().await;
    let ns = unique("hr-other");
    let charts = chart_repo(&ns);
    let head = charts.push("the charts");
    // Values at a URL too (externalSourceRef), and an optional one that is not there.
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("values.yaml"), "replicaCount: 4\n").unwrap();
    let server = ChartServer::start(files.path(), None);
    let spec = format!(
        "  valuesFrom:
  - externalSourceRef: {{url: \"http://127.0.0.1:{port}/values.yaml\"}}
  - externalSourceRef: {{url: \"http://127.0.0.1:{port}/missing.yaml\", optional: true}}
  values: {{hook: {{enabled: false}}}}
",
        port = server.1
    );
    let repo = GitRepo::new();
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns)).write(
        "releases/web.yaml",
        &helm_release(&ns, "web", &spec).replace("REPO_URL", &charts.url()),
    );
    repo.push("a release of a chart kept elsewhere");
    // Both live on this machine, which the daemon refuses unless told.
    let helm = helm_binary();
    let text = assert_ok(&repo.sync_once(&[
        "--helm-binary",
        &helm,
        "--allow-local-chart-repositories",
        "--values-url-allow",
        "127.0.0.1",
    ]));
    assert!(
        text.contains(&format!("installed release {ns}/{ns}-web revision 1")),
        "{text}"
    );
    let d = deployment(&ns, &format!("{ns}-web")).await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(4), "values from the URL");
    let status = release_status(&ns, "web").await;
    assert_eq!(
        status["revision"],
        head.as_str(),
        "the chart's revision: {status}"
    );
}

#[tokio::test]
async fn a_missing_dependency_fails_only_its_release() {
    crd_installed().await;
    let ns = unique("hr-deps");
    let repo = chart_repo(&ns);
    let closed = free_port();
    copy_dir(
        &repo.work.join("charts/web"),
        &repo.work.join("charts/needs-redis"),
    );
    let chart_yaml = repo.work.join("charts/needs-redis/Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).unwrap();
    std::fs::write(
        &chart_yaml,
        format!(
            "{}dependencies:\n- name: redis\n  version: 18.0.0\n  repository: http://127.0.0.1:{closed}/charts\n",
            text.replace("name: web", "name: needs-redis")
        ),
    )
    .unwrap();
    write_release(
        &repo,
        "releases/broken.yaml",
        &helm_release(&ns, "broken", "").replace("charts/web", "charts/needs-redis"),
    );
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", "  values: {hook: {enabled: false}}\n"),
    );
    repo.write("config/cm.yaml", &cm_yaml(&ns, "plain", "1"));
    repo.push("a chart whose dependency is nowhere");
    let out = repo.sync_helm();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "chart dependency redis (repository http://127.0.0.1:{closed}/charts) is neither vendored under charts/ nor reachable"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("HelmRelease {ns}/broken")), "{err}");
    assert!(
        configmap(&ns, "plain").await.is_some(),
        "plain manifests sync"
    );
    assert!(
        stdout(&out).contains(&format!("installed release {ns}/{ns}-web revision 1")),
        "the other release installs: {}",
        stdout(&out)
    );
    let status = release_status(&ns, "broken").await;
    assert_eq!(status["phase"], "ChartFetchFailed", "{status}");
}

#[tokio::test]
async fn a_release_helm_operator_made_is_adopted_without_a_reinstall() {
    crd_installed().await;
    let ns = unique("hr-adopt");
    let repo = chart_repo(&ns);
    // The release helm-operator would have made for HelmRelease flux/web
    // with targetNamespace ns: `<namespace>-<targetNamespace>-<name>`.
    let flux = unique("flux");
    let release = format!("{flux}-{ns}-web");
    let values = repo.work.join("values.yaml");
    std::fs::write(&values, "replicaCount: 2\n").unwrap();
    let out = helm(&[
        "install",
        &release,
        repo.work.join("charts/web").to_str().unwrap(),
        "-n",
        &ns,
        "--create-namespace",
        "-f",
        values.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(&values).unwrap();
    let spec = format!("  targetNamespace: {ns}\n  values: {{replicaCount: 2}}\n");
    repo.write("namespaces/flux.yaml", &ns_yaml(&flux));
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&flux, "web", &spec),
    );
    repo.push("the release as helm-operator had it");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!("unchanged release {ns}/{release} revision 1")),
        "{text}"
    );
    assert_eq!(history(&ns, &release), [(1, "deployed".to_string())]);
    // Something changed: the next revision of the same release.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(
            &flux,
            "web",
            &spec.replace("replicaCount: 2", "replicaCount: 3"),
        ),
    );
    repo.push("three replicas");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains(&format!("upgraded release {ns}/{release} revision 2")),
        "{text}"
    );
    assert_eq!(
        deployment(&ns, &release)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );
}

#[tokio::test]
async fn a_release_left_pending_by_a_killed_upgrade_is_recovered() {
    crd_installed().await;
    let ns = unique("hr-pending");
    let release = format!("{ns}-web");
    let repo = chart_repo(&ns);
    let spec = |seconds: u32| {
        format!(
            "  values:
    hook:
      events: post-install,post-upgrade
      podAnnotations: {{fake.tidegate.dev/run-seconds: \"{seconds}\"}}
"
        )
    };
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", &spec(0)),
    );
    repo.push("installed");
    assert_ok(&repo.sync_helm());
    // An upgrade whose post-upgrade hook Job runs for a minute.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", &spec(60)),
    );
    repo.push("a slow hook");
    let helm_bin = helm_binary();
    let mut args = repo.once_args(&["--helm-binary", &helm_bin]);
    args.push("--sync-garbage-collection".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = tidegate_command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the upgrade pending", Duration::from_secs(60), || {
        let (ns, release) = (ns.clone(), release.clone());
        async move {
            history(&ns, &release)
                .iter()
                .any(|(_, s)| s == "pending-upgrade")
                .then_some(())
        }
    })
    .await;
    // The upgrade's helm is running (its hook takes a minute): the probe
    // below sees it.
    assert_eq!(helm_upgrades(&release), 1, "helm runs the upgrade");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // helm died with tidegate: nothing is left to finish the upgrade.
    eventually("helm gone with tidegate", Duration::from_secs(20), || {
        let release = release.clone();
        async move { (helm_upgrades(&release) == 0).then_some(()) }
    })
    .await;
    let pending = history(&ns, &release);
    assert_eq!(pending.last().unwrap().1, "pending-upgrade");
    // The next sync recovers it, then upgrades to what Git says.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", &spec(1)),
    );
    repo.push("a quicker hook");
    let text = assert_ok(&repo.sync_helm());
    assert!(
        text.contains("revision 2 was left pending-upgrade by an operation that is no longer running; rolled back to revision 1"),
        "{text}"
    );
    let revisions = history(&ns, &release);
    assert_eq!(
        revisions.last().unwrap(),
        &(4, "deployed".to_string()),
        "{revisions:?}"
    );
    assert_eq!(
        revisions.len(),
        pending.len() + 2,
        "the recovery's rollback and the upgrade, and no revision else: {revisions:?}"
    );
    assert!(
        has_event(&ns, "web", "ReleaseRecovered").await,
        "an Event says so"
    );
}

#[tokio::test]
async fn diff_validate_and_status_show_releases() {
    crd_installed().await;
    let ns = unique("hr-diff");
    let release = format!("{ns}-web");
    let repo = chart_repo(&ns);
    let spec = "  values: {replicaCount: 2}\n";
    write_release(&repo, "releases/web.yaml", &helm_release(&ns, "web", spec));
    repo.push("a release");
    let work = repo.work.to_str().unwrap().to_string();
    let helm_bin = helm_binary();
    let set = repo.sync_set.clone();
    let diff = |extra: &[&str]| {
        let mut args = vec![
            "diff",
            &work,
            "--helm-binary",
            &helm_bin,
            "--sync-set-name",
            &set,
        ];
        args.extend_from_slice(extra);
        crate::support::tidegate(&args)
    };

    // validate renders the chart offline.
    let out = crate::support::tidegate(&["validate", &work, "--helm-binary", &helm_bin]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!(
            "release {ns}/{release} of helm.fluxcd.io/v1 HelmRelease {ns}/web renders 4 objects"
        )),
        "{}",
        stdout(&out)
    );

    // Before the install, diff shows what the release would create.
    let out = diff(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "+ create apps/v1 Deployment {ns}/{release} (release {ns}/{release} of helm.fluxcd.io/v1 HelmRelease {ns}/web: would be installed)"
        )),
        "{text}"
    );

    assert_ok(&repo.sync_helm());
    let out = crate::support::tidegate(&["status", "--sync-set-name", &set]);
    assert!(
        stdout(&out).contains(&format!(
            "release:   installed release {ns}/{release} revision 1"
        )),
        "{}",
        stdout(&out)
    );
    // Installed and unchanged: nothing to show for the release.
    let out = diff(&[]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(!stdout(&out).contains(&release), "{}", stdout(&out));

    // Values changed in the checkout: the Deployment's diff.
    write_release(
        &repo,
        "releases/web.yaml",
        &helm_release(&ns, "web", "  values: {replicaCount: 5}\n"),
    );
    let out = diff(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("~ update apps/v1 Deployment {ns}/{release} (release {ns}/{release} of helm.fluxcd.io/v1 HelmRelease {ns}/web: would be upgraded: the values changed)")),
        "{text}"
    );
    assert!(
        text.contains("-  replicas: 2") && text.contains("+  replicas: 5"),
        "{text}"
    );
    assert_eq!(history(&ns, &release).len(), 1, "diff changes nothing");

    // A template error: validate names the HelmRelease and the template.
    repo.write(
        "charts/web/templates/broken.yaml",
        "{{ .Values.nothing.here }}\n",
    );
    let out = crate::support::tidegate(&["validate", &work, "--helm-binary", &helm_bin]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("releases/web.yaml (document 0): helm.fluxcd.io/v1 HelmRelease {ns}/web: helm template failed"))
            && err.contains("broken.yaml"),
        "{err}"
    );
}

#[tokio::test]
async fn without_helm_only_the_releases_fail() {
    crd_installed().await;
    let ns = unique("hr-nohelm");
    let repo = chart_repo(&ns);
    write_release(&repo, "releases/web.yaml", &helm_release(&ns, "web", ""));
    repo.write("config/cm.yaml", &cm_yaml(&ns, "plain", "1"));
    repo.push("a release, and no helm to run it");
    let out = repo.sync_once(&["--helm-binary", "/nonexistent/helm"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("helm.fluxcd.io/v1 HelmRelease {ns}/web: release {ns}/{ns}-web: the helm binary /nonexistent/helm cannot be run"))
            && err.contains("--helm-binary"),
        "{err}"
    );
    assert!(
        configmap(&ns, "plain").await.is_some(),
        "plain manifests sync"
    );
    assert!(
        stdout(&out).contains(&format!("created helm.fluxcd.io/v1 HelmRelease {ns}/web")),
        "the HelmRelease itself is applied: {}",
        stdout(&out)
    );
}
