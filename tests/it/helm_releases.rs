//! HelmRelease (helm.fluxcd.io/v1) objects from a Flux v1 repository: a
//! clear error while the cluster lacks the CRD, and applied like any other
//! object once the CRD from deploy/crds/ is installed.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::support::{
    GitRepo, client, cm_yaml, configmap, dynamic_api, ns_yaml, stderr, stdout, unique,
};

const CRD: &str = include_str!("../../deploy/crds/helmreleases.helm.fluxcd.io.yaml");

fn helm_release(ns: &str) -> String {
    format!(
        "apiVersion: helm.fluxcd.io/v1
kind: HelmRelease
metadata:
  name: web
  namespace: {ns}
  annotations:
    fluxcd.io/automated: \"false\"
spec:
  releaseName: {ns}-web
  chart:
    git: git@github.com:example/cluster-state
    ref: master
    path: charts/web
  valuesFrom:
  - configMapKeyRef: {{name: web-values, key: values.yaml, optional: true}}
  values:
    image: {{repository: nginx, tag: \"1.27\"}}
    replicaCount: 2
  rollback: {{enable: true, timeout: 300}}
"
    )
}

#[tokio::test]
async fn helm_release_needs_the_crd_from_deploy_and_then_applies() {
    let ns = unique("hr");
    let repo = GitRepo::new();
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns))
        .write("releases/web.yaml", &helm_release(&ns))
        .write("config/cm.yaml", &cm_yaml(&ns, "plain", "1"));
    repo.push("a Flux v1 repository");
    let crds: Api<CustomResourceDefinition> = Api::all(client().await);
    if crds
        .get_opt("helmreleases.helm.fluxcd.io")
        .await
        .unwrap()
        .is_none()
    {
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
    // The CRD from deploy/ in the same commit: applied first, then the release.
    repo.write("crds/helmreleases.yaml", CRD);
    repo.push("the HelmRelease CRD");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("created helm.fluxcd.io/v1 HelmRelease {ns}/web")),
        "{}",
        stdout(&out)
    );
    let releases = dynamic_api(
        "helm.fluxcd.io/v1",
        "HelmRelease",
        "helmreleases",
        Some(&ns),
    )
    .await;
    let live = releases.get("web").await.unwrap();
    assert_eq!(live.data["spec"]["values"]["replicaCount"], 2);
    assert_eq!(live.data["spec"]["chart"]["path"], "charts/web");
    // An unchanged resync writes nothing.
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(0 object writes)"),
        "{}",
        stderr(&out)
    );
}
