//! The control plane is real enough: controllers run, pods progress, and
//! namespaces finish deleting.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::support::{client, eventually, unique};

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn deployment_gets_running_ready_pods() {
    let client = client().await;
    let ns = unique("cp-deploy");
    create_namespace(&client, &ns).await;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = eventually(
        "two Running and Ready pods",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    let status = p.status.as_ref();
                    status.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .collect();
            (ready.len() == 2).then_some(ready)
        },
    )
    .await;
    assert!(
        running
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.is_some())
    );

    eventually(
        "the Deployment to report 2 available replicas",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("web").await.ok()?;
            (d.status?.available_replicas? == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn cronjob_produces_a_completed_job() {
    let client = client().await;
    let ns = unique("cp-cron");
    create_namespace(&client, &ns).await;
    let cron: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "backup"},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure",
                "containers": [{"name": "backup", "image": "busybox:1.36", "command": ["true"]}]
            }}}}
        }
    }))
    .unwrap();
    Api::<CronJob>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cron)
        .await
        .unwrap();

    // The schedule fires at the next full minute.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = eventually(
        "the CronJob to create a Job that completes",
        Duration::from_secs(150),
        || async {
            let list = jobs.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1))
        },
    )
    .await;
    let owner = &job.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CronJob", "backup")
    );
}

#[tokio::test]
async fn deleted_namespace_disappears_with_its_objects() {
    let client = client().await;
    let ns = unique("cp-delete");
    create_namespace(&client, &ns).await;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "doomed"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "doomed"}},
            "template": {
                "metadata": {"labels": {"app": "doomed"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(
        "a pod of the Deployment",
        Duration::from_secs(60),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            (!list.items.is_empty()).then_some(())
        },
    )
    .await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the namespace to be gone",
        Duration::from_secs(120),
        || async {
            match namespaces.get_opt(&ns).await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}
