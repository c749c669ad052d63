//! Proxy settings as Git state: a `tidegate.dev/v1` ProxySettings in the
//! repository is injected into every workload kind and into the workloads
//! a HelmRelease renders; a container's own setting and an opt-out are
//! kept; changing the settings rolls the workloads.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::Api;

use crate::helm_releases::{crd_installed, helm_binary};
use crate::support::{GitRepo, client, ns_yaml, stderr, stdout, unique};

fn settings(proxy: &str) -> String {
    format!(
        "apiVersion: tidegate.dev/v1
kind: ProxySettings
metadata: {{name: proxy}}
spec:
  httpProxy: {proxy}
  httpsProxy: {proxy}
  noProxy: .cluster.local,10.0.0.0/8
"
    )
}

fn pod_spec(containers: &str) -> String {
    format!(
        "spec: {{containers: [{containers}], initContainers: [{{name: init, image: busybox}}]}}"
    )
}

fn workloads(ns: &str) -> String {
    let app = "{name: app, image: nginx}";
    let own = "{name: app, image: nginx, env: [{name: HTTPS_PROXY, value: 'http://own:1'}]}";
    let template = |labels: &str| {
        format!(
            "template: {{metadata: {{labels: {{app: {labels}}}}}, {}}}",
            pod_spec(app)
        )
    };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec: {{replicas: 0, selector: {{matchLabels: {{app: web}}}}, {}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: {ns}}}
spec: {{replicas: 0, serviceName: db, selector: {{matchLabels: {{app: db}}}}, {}}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec: {{selector: {{matchLabels: {{app: agent}}}}, {}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once, namespace: {ns}, annotations: {{tidegate.dev/force: 'true'}}}}
spec: {{template: {{spec: {{restartPolicy: Never, containers: [{app}]}}}}}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly, namespace: {ns}}}
spec: {{schedule: '0 3 * * *', jobTemplate: {{spec: {{template: {{spec: {{restartPolicy: Never, containers: [{app}]}}}}}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: single, namespace: {ns}, annotations: {{tidegate.dev/force: 'true'}}}}
{}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: own, namespace: {ns}}}
spec: {{replicas: 0, selector: {{matchLabels: {{app: own}}}}, template: {{metadata: {{labels: {{app: own}}}}, {}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: optout, namespace: {ns}, annotations: {{tidegate.dev/proxy: disabled}}}}
spec: {{replicas: 0, selector: {{matchLabels: {{app: optout}}}}, {}}}
",
        template("web"),
        template("db"),
        template("agent"),
        pod_spec(app),
        pod_spec(own),
        template("optout"),
    )
}

fn value(env: &Option<Vec<EnvVar>>, name: &str) -> Option<String> {
    env.as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn proxy_settings_reach_every_workload_and_release() {
    crd_installed().await;
    let ns = unique("proxy");
    let repo = GitRepo::new();
    crate::helm_releases::copy_chart(&repo);
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns))
        .write("proxy.yaml", &settings("http://proxy.internal:3128"))
        .write("apps/workloads.yaml", &workloads(&ns))
        .write(
            "releases/web.yaml",
            &format!(
                "apiVersion: helm.fluxcd.io/v1\nkind: HelmRelease\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  releaseName: chart\n  chart: {{git: {}, ref: main, path: charts/web}}\n  values: {{hook: {{enabled: false}}}}\n",
                repo.url()
            ),
        );
    repo.push("proxy settings");
    let helm = helm_binary();
    let out = repo.sync_once(&["--helm-binary", &helm]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        !stdout(&out).contains("ProxySettings"),
        "not applied: {}",
        stdout(&out)
    );

    let c = client().await;
    let proxy = Some("http://proxy.internal:3128".to_string());
    let deployment = |name: &str| {
        let api: Api<Deployment> = Api::namespaced(c.clone(), &ns);
        let name = name.to_string();
        async move {
            api.get(&name)
                .await
                .unwrap()
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
        }
    };
    let web = deployment("web").await;
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
        assert_eq!(value(&web.containers[0].env, var), proxy, "{var}");
    }
    assert_eq!(
        value(&web.init_containers.unwrap()[0].env, "no_proxy").as_deref(),
        Some(".cluster.local,10.0.0.0/8")
    );
    let db = Api::<StatefulSet>::namespaced(c.clone(), &ns)
        .get("db")
        .await
        .unwrap();
    assert_eq!(
        value(
            &db.spec.unwrap().template.spec.unwrap().containers[0].env,
            "HTTPS_PROXY"
        ),
        proxy
    );
    let agent = Api::<DaemonSet>::namespaced(c.clone(), &ns)
        .get("agent")
        .await
        .unwrap();
    assert_eq!(
        value(
            &agent.spec.unwrap().template.spec.unwrap().containers[0].env,
            "HTTPS_PROXY"
        ),
        proxy
    );
    let job = Api::<Job>::namespaced(c.clone(), &ns)
        .get("once")
        .await
        .unwrap();
    assert_eq!(
        value(
            &job.spec.unwrap().template.spec.unwrap().containers[0].env,
            "HTTPS_PROXY"
        ),
        proxy
    );
    let cron = Api::<CronJob>::namespaced(c.clone(), &ns)
        .get("nightly")
        .await
        .unwrap();
    let cron_pod = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    assert_eq!(value(&cron_pod.containers[0].env, "HTTPS_PROXY"), proxy);
    let pod = Api::<Pod>::namespaced(c.clone(), &ns)
        .get("single")
        .await
        .unwrap();
    assert_eq!(
        value(&pod.spec.unwrap().containers[0].env, "HTTPS_PROXY"),
        proxy
    );
    // A container's own setting stays, both cases; the opt-out is left alone.
    let own = deployment("own").await;
    assert_eq!(
        value(&own.containers[0].env, "HTTPS_PROXY").as_deref(),
        Some("http://own:1")
    );
    assert_eq!(value(&own.containers[0].env, "https_proxy"), None);
    assert_eq!(value(&own.containers[0].env, "HTTP_PROXY"), proxy);
    assert!(deployment("optout").await.containers[0].env.is_none());
    // Through the HelmRelease: the chart's Deployment has them too.
    let chart = deployment("chart-web").await;
    assert_eq!(value(&chart.containers[0].env, "HTTPS_PROXY"), proxy);

    // New settings in Git: the workloads and the release roll (a Job and a
    // Pod cannot change: annotated to be recreated, they are).
    repo.write("proxy.yaml", &settings("http://proxy2.internal:3128"));
    repo.push("a new proxy");
    let out = repo.sync_once(&["--helm-binary", &helm]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("configured apps/v1 Deployment {ns}/web")),
        "{text}"
    );
    assert!(
        text.contains(&format!("upgraded release {ns}/chart revision 2")),
        "{text}"
    );
    let proxy2 = Some("http://proxy2.internal:3128".to_string());
    assert_eq!(
        value(&deployment("web").await.containers[0].env, "HTTPS_PROXY"),
        proxy2
    );
    assert_eq!(
        value(
            &deployment("chart-web").await.containers[0].env,
            "HTTPS_PROXY"
        ),
        proxy2
    );
}
