//! The bundled repository examples/cluster-state, synced as a user would
//! sync it: everything applies, the Helm release installs, and the backup
//! CronJob produces a Job that completes.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};

use crate::helm_releases::{crd_installed, helm_binary};
use crate::support::{GitRepo, client, copy_dir, eventually, stderr, stdout};

const EXAMPLE_URL: &str = "https://git.example.com/org/cluster-state";

/// examples/cluster-state pushed to a repository, its HelmRelease naming
/// that repository (as a user's names their own).
pub fn example_repo() -> GitRepo {
    let repo = GitRepo::new();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster-state"),
        &repo.work,
    );
    let release = repo.work.join("releases/web.yaml");
    let text = std::fs::read_to_string(&release).unwrap();
    std::fs::write(&release, text.replace(EXAMPLE_URL, &repo.url())).unwrap();
    repo.push("the example cluster state");
    repo
}

#[tokio::test]
async fn the_example_repository_syncs_and_its_backup_runs() {
    crd_installed().await;
    let repo = example_repo();
    let helm = helm_binary();
    // The in-cluster test's instances sync the same objects.
    let kustomize = crate::kustomize::kustomize();
    let out = repo.sync_once(&[
        "--helm-binary",
        &helm,
        "--kustomize-binary",
        &kustomize,
        "--adopt",
    ]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    for expected in [
        "v1 Namespace demo",
        "storage.k8s.io/v1 StorageClass fast",
        "batch/v1 CronJob backup/etcd-snapshot",
        // Installed here or by the in-cluster test syncing it meanwhile.
        "release demo/web",
        // Built by kustomize: the overlay's namespace, the generator's hash.
        "apps/v1 Deployment shop/redis",
        "v1 ConfigMap shop/redis-config-",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    // The snapshot runs on control-plane nodes: make a fake node one.
    let nodes: Api<Node> = Api::all(client().await);
    let node = nodes.list(&ListParams::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}
            })),
        )
        .await
        .unwrap();
    // What `kubectl create job --from=cronjob/etcd-snapshot` does.
    let cron = Api::<CronJob>::namespaced(client().await, "backup")
        .get("etcd-snapshot")
        .await
        .unwrap();
    let template = cron.spec.unwrap().job_template;
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some(crate::support::unique("etcd-snapshot-manual")),
            ..Default::default()
        },
        spec: template.spec,
        ..Default::default()
    };
    let jobs: Api<Job> = Api::namespaced(client().await, "backup");
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let name = created.metadata.name.unwrap();
    eventually("the snapshot Job complete", Duration::from_secs(60), || {
        let (jobs, name) = (jobs.clone(), name.clone());
        async move {
            let job = jobs.get(&name).await.ok()?;
            (job.status?.succeeded? >= 1).then_some(())
        }
    })
    .await;
}
