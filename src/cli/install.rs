//! `tidegate install --git-url URL [--git-branch] [--git-path] [-n NS]`: the
//! manifests in `deploy/` (the HelmRelease CRD, Namespace, ServiceAccount,
//! RBAC, Deployment, Services) for this repository and namespace, printed
//! for `kubectl apply -f -`, as `fluxctl install` did.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::cluster::Connection;
use crate::render::ParseLimits;
use crate::render::manifest::parse_documents;

/// deploy/, in the order kustomization.yaml lists it.
const MANIFESTS: [(&str, &str); 6] = [
    (
        "namespace.yaml",
        include_str!("../../deploy/namespace.yaml"),
    ),
    (
        "crds/helmreleases.helm.fluxcd.io.yaml",
        include_str!("../../deploy/crds/helmreleases.helm.fluxcd.io.yaml"),
    ),
    (
        "serviceaccount.yaml",
        include_str!("../../deploy/serviceaccount.yaml"),
    ),
    ("rbac.yaml", include_str!("../../deploy/rbac.yaml")),
    (
        "deployment.yaml",
        include_str!("../../deploy/deployment.yaml"),
    ),
    ("service.yaml", include_str!("../../deploy/service.yaml")),
];

const DEFAULT_NAMESPACE: &str = "tidegate";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the Git repository the daemon syncs
    #[arg(long)]
    git_url: String,
    /// Branch to sync
    #[arg(long, default_value = "master")]
    git_branch: String,
    /// Directory in the repository to sync (repeatable; default the whole repository)
    #[arg(long)]
    git_path: Vec<String>,
    /// The image to run
    #[arg(long)]
    image: Option<String>,
}

pub fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let namespace = connection
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let objects = manifests(&args, &namespace)?;
    for object in objects {
        print!("---\n{}", serde_saphyr::to_string(&object)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The objects of deploy/ for this repository and namespace.
pub fn manifests(args: &Args, namespace: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (file, text) in MANIFESTS {
        let docs = parse_documents(text, &ParseLimits::default())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("deploy/{file}"))?;
        objects.extend(docs);
    }
    for object in &mut objects {
        place(object, namespace);
        if object["kind"] == "Deployment" {
            configure(object, args);
        }
    }
    Ok(objects)
}

/// Moves an object into `namespace`; cluster-wide RBAC gets a name of that
/// namespace's own, so two installations do not share it.
fn place(object: &mut Value, namespace: &str) {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let own_name = if namespace == DEFAULT_NAMESPACE {
        DEFAULT_NAMESPACE.to_string()
    } else {
        format!("{DEFAULT_NAMESPACE}-{namespace}")
    };
    let meta = &mut object["metadata"];
    match kind.as_str() {
        "Namespace" => meta["name"] = namespace.into(),
        "ClusterRole" => meta["name"] = own_name.clone().into(),
        "ClusterRoleBinding" => {
            meta["name"] = own_name.clone().into();
            object["roleRef"]["name"] = own_name.into();
            for subject in object["subjects"].as_array_mut().into_iter().flatten() {
                subject["namespace"] = namespace.into();
            }
        }
        _ if meta.get("namespace").is_some() => meta["namespace"] = namespace.into(),
        _ => {}
    }
}

/// Points the daemon's arguments at the repository.
fn configure(deployment: &mut Value, args: &Args) {
    let container = &mut deployment["spec"]["template"]["spec"]["containers"][0];
    if let Some(image) = &args.image {
        container["image"] = image.clone().into();
    }
    let Some(list) = container["args"].as_array_mut() else {
        return;
    };
    list.retain(|a| {
        let a = a.as_str().unwrap_or_default();
        !(a.starts_with("--git-url=")
            || a.starts_with("--git-branch=")
            || a.starts_with("--git-path="))
    });
    let mut git = vec![
        Value::from(format!("--git-url={}", args.git_url)),
        Value::from(format!("--git-branch={}", args.git_branch)),
    ];
    git.extend(
        args.git_path
            .iter()
            .map(|p| Value::from(format!("--git-path={p}"))),
    );
    // Right after `daemon`.
    let at = 1.min(list.len());
    list.splice(at..at, git);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            git_url: "ssh://git@git.example.com/org/cluster-state".into(),
            git_branch: "main".into(),
            git_path: vec!["clusters/prod".into(), "shared".into()],
            image: None,
        }
    }

    #[test]
    fn every_deploy_manifest_is_printed_in_kustomization_order() {
        let kustomization = include_str!("../../deploy/kustomization.yaml");
        let listed: Vec<&str> = kustomization
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .collect();
        let embedded: Vec<&str> = MANIFESTS.iter().map(|(f, _)| *f).collect();
        assert_eq!(listed, embedded);
        let objects = manifests(&args(), DEFAULT_NAMESPACE).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Service",
                "Service"
            ]
        );
    }

    #[test]
    fn the_daemon_gets_the_repository_and_the_namespace() {
        let objects = manifests(&args(), "gitops").unwrap();
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(deployment["metadata"]["namespace"], "gitops");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let list: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            &list[..5],
            [
                "daemon",
                "--git-url=ssh://git@git.example.com/org/cluster-state",
                "--git-branch=main",
                "--git-path=clusters/prod",
                "--git-path=shared"
            ]
        );
        assert!(list.contains(&"--log-format=json"));
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRoleBinding")
            .unwrap();
        assert_eq!(binding["metadata"]["name"], "tidegate-gitops");
        assert_eq!(binding["roleRef"]["name"], "tidegate-gitops");
        assert_eq!(binding["subjects"][0]["namespace"], "gitops");
        let ns = objects.iter().find(|o| o["kind"] == "Namespace").unwrap();
        assert_eq!(ns["metadata"]["name"], "gitops");
        let crd = objects
            .iter()
            .find(|o| o["kind"] == "CustomResourceDefinition")
            .unwrap();
        assert!(crd["metadata"].get("namespace").is_none());
    }

    #[test]
    fn with_the_defaults_it_prints_deploy_as_it_is() {
        let defaults = Args {
            git_url: "git@github.com:org/cluster-state".into(),
            git_branch: "master".into(),
            git_path: vec![".".into()],
            image: None,
        };
        let printed = manifests(&defaults, DEFAULT_NAMESPACE).unwrap();
        let mut files = Vec::new();
        for (_, text) in MANIFESTS {
            files.extend(parse_documents(text, &ParseLimits::default()).unwrap());
        }
        assert_eq!(printed, files);
    }
}
