//! Kustomize roots and Flux v1's `.flux.yaml`, built by the pinned
//! kustomize binary and applied to the real control plane.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::support::{GitRepo, client, ns_yaml, stderr, stdout, tools_dir, unique};

pub fn kustomize() -> String {
    tools_dir().join("kustomize").display().to_string()
}

fn deployment(name: &str, config: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
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
        image: nginx:1.27
        volumeMounts: [{{name: config, mountPath: /config}}]
      volumes:
      - name: config
        configMap: {{name: {config}}}
"
    )
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n")
}

/// The name of the one ConfigMap in `ns` whose name starts with `prefix`.
async fn hashed(ns: &str, prefix: &str) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(client().await, ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn mounted(d: &Deployment) -> String {
    let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volumes = spec.volumes.as_ref().unwrap();
    volumes[0].config_map.as_ref().unwrap().name.clone()
}

/// Issue 22: a base with two overlays (one per environment) and a
/// component, a configMapGenerator whose hash suffix the Deployment follows,
/// a secretGenerator, a patch, namePrefix and namespace; the base is not
/// applied by itself, plain files beside the roots are; an overlay that
/// drops an object prunes it.
#[tokio::test]
async fn overlays_are_built_and_follow_their_inputs() {
    let (prod, staging) = (unique("kz-prod"), unique("kz-staging"));
    let repo = GitRepo::new();
    repo.write(
        "namespaces.yaml",
        &format!("{}---\n{}", ns_yaml(&prod), ns_yaml(&staging)),
    )
    .write(
        "apps/base/kustomization.yaml",
        "resources: [web.yaml]\nconfigMapGenerator:\n- name: web-config\n  literals: [color=blue]\n",
    )
    .write("apps/base/web.yaml", &deployment("web", "web-config"))
    .write(
        "apps/components/audit/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [audit.yaml]\n",
    )
    .write("apps/components/audit/audit.yaml", &cm("audit"))
    .write(
        "apps/prod/kustomization.yaml",
        &format!(
            "namespace: {prod}\nnamePrefix: prod-\nresources: [../base, extra.yaml]\ncomponents: [../components/audit]\n\
             patches: [{{path: replicas.yaml}}]\nsecretGenerator:\n- name: db\n  literals: [password=prod-password]\n"
        ),
    )
    .write("apps/prod/extra.yaml", &cm("extra"))
    .write(
        "apps/prod/replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 2}\n",
    )
    .write(
        "apps/staging/kustomization.yaml",
        &format!("namespace: {staging}\nresources: [../base]\n"),
    );
    repo.push("base and two overlays");
    let binary = kustomize();
    let args = [
        "--kustomize-binary",
        binary.as_str(),
        "--sync-garbage-collection",
    ];
    let out = repo.sync_once(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("created apps/v1 Deployment {prod}/prod-web")),
        "{text}"
    );
    assert!(
        text.contains(&format!("created apps/v1 Deployment {staging}/web")),
        "{text}"
    );
    assert!(
        !text.contains("Deployment default/web"),
        "the base alone is not applied: {text}"
    );

    let client = client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &prod);
    let web = deployments.get("prod-web").await.unwrap();
    assert_eq!(web.spec.as_ref().unwrap().replicas, Some(2), "the patch");
    let first = hashed(&prod, "prod-web-config-").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        mounted(&web),
        first[0],
        "the Deployment mounts the hashed name"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &prod);
    configmaps
        .get("prod-audit")
        .await
        .expect("the component's object");
    configmaps
        .get("prod-extra")
        .await
        .expect("the overlay's own resource");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &prod);
    let db: Vec<String> = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.starts_with("prod-db-"))
        .collect();
    assert_eq!(db.len(), 1, "the generated Secret: {db:?}");
    let staging_web = Api::<Deployment>::namespaced(client.clone(), &staging)
        .get("web")
        .await
        .unwrap();
    assert_eq!(staging_web.spec.as_ref().unwrap().replicas, Some(1));

    // The generator's literal changes: a new hash, the Deployment follows,
    // the old ConfigMap is pruned.
    repo.write(
        "apps/base/kustomization.yaml",
        "resources: [web.yaml]\nconfigMapGenerator:\n- name: web-config\n  literals: [color=green]\n",
    );
    repo.write(
        "apps/prod/kustomization.yaml",
        &format!(
            "namespace: {prod}\nnamePrefix: prod-\nresources: [../base]\ncomponents: [../components/audit]\n\
             patches: [{{path: replicas.yaml}}]\nsecretGenerator:\n- name: db\n  literals: [password=prod-password]\n"
        ),
    );
    repo.push("green, and no extra");
    let out = repo.sync_once(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = hashed(&prod, "prod-web-config-").await;
    assert_eq!(second.len(), 1, "the old one is pruned: {second:?}");
    assert_ne!(second, first);
    let web = deployments.get("prod-web").await.unwrap();
    assert_eq!(mounted(&web), second[0]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("pruned v1 ConfigMap {prod}/prod-extra")),
        "{text}"
    );
    assert!(configmaps.get_opt("prod-extra").await.unwrap().is_none());

    // Nothing changed: kustomize runs again (a new process), nothing is written.
    let out = repo.sync_once(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("created") && !stdout(&out).contains("configured"),
        "{}",
        stdout(&out)
    );
}

/// A server that accepts connections and never answers.
fn silent_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    port
}

/// Issue 22: each bad root is an error naming it and why (a patch that
/// matches nothing, a remote base, a plugin, a build that never ends, no
/// kustomize at all); the rest is applied; nothing is pruned; no Secret
/// value of a broken overlay reaches the output or the status record.
#[tokio::test]
async fn bad_roots_are_named_and_prune_nothing() {
    let ns = unique("kz-bad");
    let repo = GitRepo::new();
    let in_ns = |name: &str| {
        format!(
            "{}  namespace: {ns}\n",
            cm(name).replace("data:\n  k: v\n", "")
        )
    };
    repo.write("namespace.yaml", &ns_yaml(&ns))
        .write("plain/keep.yaml", &in_ns("keep"))
        .write(
            "good/kustomization.yaml",
            &format!("namespace: {ns}\nresources: [cm.yaml]\n"),
        )
        .write("good/cm.yaml", &cm("good"));
    repo.push("good");
    let binary = kustomize();
    let args = [
        "--kustomize-binary",
        binary.as_str(),
        "--sync-garbage-collection",
    ];
    let out = repo.sync_once(&args);
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::remove_file(repo.work.join("plain/keep.yaml")).unwrap();
    repo.write(
        "broken/kustomization.yaml",
        &format!("namespace: {ns}\nresources: [secret.yaml]\npatches: [{{path: patch.yaml}}]\n"),
    )
    .write(
        "broken/secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: first-hunter2}\n",
    )
    .write(
        "broken/patch.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: nothere}\nstringData: {password: second-hunter2}\n",
    )
    .write(
        "remote/kustomization.yaml",
        "resources: [github.com/example/cluster//base?ref=v1]\n",
    )
    .write("plugin/kustomization.yaml", "generators: [gen.yaml]\n")
    .write(
        "plugin/gen.yaml",
        "apiVersion: example.com/v1\nkind: Inflator\nmetadata: {name: x}\n",
    )
    .write(
        "more/kustomization.yaml",
        &format!("namespace: {ns}\nresources: [cm.yaml]\n"),
    )
    .write("more/cm.yaml", &cm("more"));
    repo.push("bad roots beside good ones");
    let out = repo.sync_once(&args);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    for says in [
        "broken (kustomize build): no resource matches strategic merge patch \"Secret.v1.[noGrp]/nothere",
        "remote (kustomize build): remote/kustomization.yaml: \"github.com/example/cluster//base?ref=v1\" is remote: remote bases and resources are refused (--kustomize-allow-remote allows them)",
        "plugin (kustomize build): loading generator plugins: failed to load generator: external plugins disabled",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }
    assert!(
        text.contains(&format!("created v1 ConfigMap {ns}/more")),
        "the rest is applied: {text}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client().await, &ns);
    assert!(
        configmaps.get_opt("keep").await.unwrap().is_some(),
        "a sync with build errors prunes nothing"
    );
    let status = crate::support::status_json(&repo.sync_set).to_string();
    assert!(status.contains("broken (kustomize build)"), "{status}");
    for shown in [&text, &err, &status] {
        assert!(
            !shown.contains("hunter2"),
            "a Secret value is shown: {shown}"
        );
    }

    // A build that never ends is stopped; without kustomize only the roots fail.
    for dir in ["broken", "remote", "plugin"] {
        std::fs::remove_dir_all(repo.work.join(dir)).unwrap();
    }
    let port = silent_server();
    repo.write(
        "slow/kustomization.yaml",
        &format!("resources: ['http://127.0.0.1:{port}/never.yaml']\n"),
    );
    repo.push("a remote resource that never comes");
    let slow = [
        &args[..],
        &["--kustomize-allow-remote", "--kustomize-timeout", "2s"],
    ]
    .concat();
    let out = repo.sync_once(&slow);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("slow (kustomize build): kustomize build did not finish in 2s; stopped (--kustomize-timeout)"),
        "{err}"
    );
    let missing = [
        "--kustomize-binary",
        "/nonexistent/kustomize",
        "--sync-garbage-collection",
    ];
    let out = repo.sync_once(&missing);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("good (kustomize build): cannot run /nonexistent/kustomize"),
        "{err}"
    );
    assert!(
        err.contains("(install kustomize, or name it with --kustomize-binary)"),
        "{err}"
    );
    assert!(
        configmaps.get_opt("keep").await.unwrap().is_some(),
        "still nothing pruned"
    );
}

/// The files below `dir`, at any depth.
fn all_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(all_files(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

/// Issue 22: Flux v1's `.flux.yaml`, found at a parent of the synced path:
/// `commandUpdated` with a kustomize build, `patchUpdated` with its patch
/// file merged over what the build made (a patch naming nothing is an
/// error of its path), and another command refused unless allowed, then
/// run without tidegate's environment in a scratch copy.
#[tokio::test]
async fn flux_yaml_generators_in_both_modes() {
    let ns = unique("flux-yaml");
    let repo = GitRepo::new();
    let kustomize_build =
        "version: 1\ncommandUpdated:\n  generators:\n  - command: kustomize build .\n";
    repo.write("namespaces/ns.yaml", &ns_yaml(&ns))
        .write("fluxv1/.flux.yaml", kustomize_build)
        .write(
            "fluxv1/cmd/kustomization.yaml",
            &format!("namespace: {ns}\nresources: [cm.yaml]\n"),
        )
        .write("fluxv1/cmd/cm.yaml", &cm("from-command"))
        .write(
            "fluxv1/patched/.flux.yaml",
            "version: 1\npatchUpdated:\n  generators:\n  - command: kustomize build .\n  patchFile: flux-patch.yaml\n",
        )
        .write(
            "fluxv1/patched/kustomization.yaml",
            &format!("namespace: {ns}\nresources: [web.yaml]\n"),
        )
        .write("fluxv1/patched/web.yaml", &deployment("web", "settings"))
        .write(
            "fluxv1/patched/flux-patch.yaml",
            &format!(
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n  annotations:\n    fluxcd.io/automated: \"true\"\nspec:\n  replicas: 3\n"
            ),
        )
        .write(
            "fluxv1/script/.flux.yaml",
            "version: 1\ncommandUpdated:\n  generators:\n  - command: sh generate.sh\n",
        )
        .write(
            "fluxv1/script/generate.sh",
            &format!(
                "touch written-by-generator\nprintf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata: {{name: from-script, namespace: {ns}}}\\ndata: {{kubeconfig: \"%s\"}}\\n' \"${{KUBECONFIG:-none}}\"\n"
            ),
        );
    repo.push("three paths, three .flux.yaml");
    let binary = kustomize();
    let mut args = vec![
        "--kustomize-binary",
        binary.as_str(),
        "--manifest-generation",
        "--git-path",
        "namespaces",
    ];
    // namespaces/ has no .flux.yaml: plain files; the others have theirs.
    for path in ["fluxv1/cmd", "fluxv1/patched", "fluxv1/script"] {
        args.extend(["--git-path", path]);
    }
    let out = repo.sync_once(&args);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(
        err.contains("fluxv1/script/.flux.yaml: generator \"sh generate.sh\": only kustomize builds run; other commands run only with --manifest-generation-allow-commands"),
        "{err}"
    );
    assert!(
        text.contains(&format!("created v1 ConfigMap {ns}/from-command")),
        "{text}"
    );
    let web = Api::<Deployment>::namespaced(client().await, &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        web.spec.as_ref().unwrap().replicas,
        Some(3),
        "the patch file"
    );
    assert_eq!(
        web.metadata.annotations.unwrap()["fluxcd.io/automated"],
        "true"
    );

    args.push("--manifest-generation-allow-commands");
    let out = repo.sync_once(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let configmaps: Api<ConfigMap> = Api::namespaced(client().await, &ns);
    let script = configmaps.get("from-script").await.unwrap();
    assert_eq!(
        script.data.unwrap()["kubeconfig"],
        "none",
        "the command gets none of tidegate's environment"
    );
    assert!(
        !all_files(&repo.cache)
            .iter()
            .any(|f| f.ends_with("written-by-generator")),
        "the command ran in a scratch copy"
    );

    repo.write(
        "fluxv1/patched/flux-patch.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gone}\nspec: {replicas: 3}\n",
    );
    repo.push("a patch for nothing");
    let out = repo.sync_once(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fluxv1/patched/.flux.yaml: patchFile fluxv1/patched/flux-patch.yaml: no resource matches strategic merge patch \"Deployment.v1.apps/gone"),
        "{err}"
    );
}
