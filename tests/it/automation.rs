//! Image automation's edges against the real things: Debian's
//! `docker-registry` (distribution) with images pushed by `skopeo`, and
//! pushes to a real Git repository that another clone pushes to as well.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidegate::model::checksum::sha256_hex;
use tidegate::registry::{Registry, Settings};
use tidegate::source::GitSource;
use tidegate::source::push::{Change, OpenPgpKey, Person, Pushed, Signing};

use crate::servers::free_port;
use crate::support::{GitRepo, git};

/// A distribution registry on loopback, plain HTTP, storing in `dir`.
struct LocalRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user the secured registry knows.
const USER: (&str, &str) = ("robot", "s3cret-pull");

impl LocalRegistry {
    fn start() -> LocalRegistry {
        LocalRegistry::start_with(false, "")
    }

    /// With `secured`, TLS (a certificate of its own, `cert.pem` in its
    /// directory) and htpasswd auth for [`USER`]; `extra` is more of its
    /// configuration.
    fn start_with(secured: bool, extra: &str) -> LocalRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if secured {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let hash = Command::new("python3")
                .args([
                    "-W",
                    "ignore",
                    "-c",
                    &format!(
                        "import crypt; print(crypt.crypt({:?}, crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                        USER.1
                    ),
                ])
                .output()
                .unwrap();
            let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
            assert!(hash.starts_with("$2"), "a bcrypt hash: {hash}");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{hash}\n", USER.0)).unwrap();
            text.push_str(&format!(
                "  tls: {{certificate: {}, key: {}}}\nauth:\n  htpasswd: {{realm: tidegate-test, path: {}}}\n",
                cert.display(),
                key.display(),
                htpasswd.display()
            ));
        }
        text.push_str(extra);
        std::fs::write(&config, text).unwrap();
        // Its access log (one line per request) is what the tests count.
        let log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs (Debian's docker-registry package)");
        let registry = LocalRegistry { child, port, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A registry holding `team/web` 1.0.0, 1.1.0 and 2.0.0, built a
    /// month apart in that order.
    fn with_web() -> LocalRegistry {
        let registry = LocalRegistry::start();
        for (tag, created) in [
            ("1.0.0", "2026-01-01T00:00:00Z"),
            ("1.1.0", "2026-02-01T00:00:00Z"),
            ("2.0.0", "2026-03-01T00:00:00Z"),
        ] {
            registry.push_image("team/web", tag, created);
        }
        registry
    }

    /// GET requests the registry logged whose path holds `part`.
    fn gets(&self, part: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(part))
            .count()
    }

    /// Pushes an image built at `created` (RFC 3339) as `repository:tag`,
    /// with skopeo from an OCI layout written here.
    fn push_image(&self, repository: &str, tag: &str, created: &str) {
        let layout = tempfile::tempdir().unwrap();
        let blobs = layout.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let blob = |bytes: &[u8]| {
            let digest = sha256_hex(bytes);
            std::fs::write(blobs.join(&digest), bytes).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        // An empty tar: two zero blocks.
        let (layer, layer_size) = blob(&[0u8; 1024]);
        let config = serde_json::json!({
            "created": created, "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer]}, "config": {},
        });
        let (config_digest, config_size) = blob(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer, "size": layer_size}],
        });
        let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
        std::fs::write(
            layout.path().join("oci-layout"),
            r#"{"imageLayoutVersion": "1.0.0"}"#,
        )
        .unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]});
        std::fs::write(layout.path().join("index.json"), index.to_string()).unwrap();
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--insecure-policy",
                "--dest-tls-verify=false",
                &format!("--dest-creds={}:{}", USER.0, USER.1),
                &format!("oci:{}:{tag}", layout.path().display()),
                &format!("docker://{}/{repository}:{tag}", self.host()),
            ])
            .output()
            .expect("skopeo runs (Debian's skopeo package)");
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn settings(host: String) -> Settings {
    Settings {
        host,
        insecure: true,
        timeout: Duration::from_secs(10),
        platform: "linux/amd64".into(),
        ..Settings::default()
    }
}

#[test]
fn the_registry_lists_every_tag_and_when_each_image_was_built() {
    let registry = LocalRegistry::start();
    let built = [
        ("1.0.0", "2026-01-01T00:00:00Z"),
        ("1.1.0", "2026-02-01T00:00:00Z"),
        ("1.2.0", "2026-03-01T00:00:00Z"),
        ("main-abc", "2026-04-01T00:00:00Z"),
        ("latest", "2026-04-01T00:00:00Z"),
    ];
    for (tag, created) in built {
        registry.push_image("team/app", tag, created);
    }
    let client = Registry::new(Settings {
        page: 2,
        ..settings(registry.host())
    })
    .unwrap();
    let mut tags = client.tags("team/app").unwrap();
    tags.sort();
    assert_eq!(tags, ["1.0.0", "1.1.0", "1.2.0", "latest", "main-abc"]);
    // distribution 2.x answers every tag at once, whatever `n` asks.
    assert_eq!(client.requests(), 1, "one page, no request repeated");

    let before = client.requests();
    let (created, config) = client.created("team/app", "1.1.0").unwrap();
    assert_eq!(created, Some(1769904000), "2026-02-01T00:00:00Z");
    assert!(config.starts_with("sha256:"), "{config}");
    assert_eq!(client.requests() - before, 2, "the manifest and the config");

    let missing = client.created("team/app", "9.9.9").unwrap_err().to_string();
    assert!(
        missing.contains("404") && missing.contains("team/app:9.9.9"),
        "{missing}"
    );
    let err = client.tags("team/nothing").unwrap_err().to_string();
    assert!(err.contains("no such repository"), "{err}");
    // A registry's tag list is bounded: past the bound it is an error.
    let bounded = Registry::new(Settings {
        max_tags: 3,
        ..settings(registry.host())
    })
    .unwrap();
    let err = bounded.tags("team/app").unwrap_err().to_string();
    assert!(err.contains("more than 3 tags"), "{err}");
}

fn person(name: &str) -> Person {
    Person {
        name: name.into(),
        email: format!("{name}@example.com"),
    }
}

fn change(parent: &str, file: &str, text: &str) -> Change {
    Change {
        parent: parent.into(),
        files: vec![(file.into(), text.as_bytes().to_vec())],
        message: "Auto-release reg.io/app:1.1".into(),
        author: person("jane"),
        committer: person("tidegate"),
        sign: Signing::None,
    }
}

fn log(bare: &Path) -> String {
    git(bare, &["log", "--format=%an|%cn|%s", "main"])
}

#[test]
fn a_push_fast_forwards_and_a_branch_that_moved_is_never_overwritten() {
    let repo = GitRepo::new();
    repo.write("app.yaml", "image: reg.io/app:1.0\n");
    repo.write("other.yaml", "kept: true\n");
    let first = repo.push("first");
    let source = GitSource {
        url: repo.url(),
        branch: "main".into(),
        cache_dir: repo.cache.clone(),
        access: Default::default(),
    };
    let snapshot = source.fetch().unwrap();
    assert_eq!(snapshot.revision, first);

    let pushed = source
        .push(
            &change(&first, "app.yaml", "image: reg.io/app:1.1\n"),
            "main",
        )
        .unwrap();
    let Pushed::Commit(commit) = pushed else {
        panic!("not pushed: {pushed:?}")
    };
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), commit);
    assert_eq!(
        git(&repo.bare, &["show", "main:app.yaml"]),
        "image: reg.io/app:1.1"
    );
    assert_eq!(git(&repo.bare, &["show", "main:other.yaml"]), "kept: true");
    assert_eq!(
        log(&repo.bare),
        "jane|tidegate|Auto-release reg.io/app:1.1\ntest|test|first"
    );

    // Someone else pushes; a change made on the old head is not written.
    repo.git(&["pull", "--quiet", "origin", "main"]);
    repo.write("other.yaml", "kept: changed\n");
    let theirs = repo.push("theirs");
    let stale = source
        .push(
            &change(&commit, "app.yaml", "image: reg.io/app:1.2\n"),
            "main",
        )
        .unwrap();
    assert_eq!(stale, Pushed::Moved);
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        theirs,
        "their commit stays"
    );

    // Fetched again, the change goes on top of theirs.
    let again = source.fetch().unwrap();
    assert_eq!(again.revision, theirs);
    let Pushed::Commit(on_top) = source
        .push(
            &change(&theirs, "app.yaml", "image: reg.io/app:1.2\n"),
            "main",
        )
        .unwrap()
    else {
        panic!("not pushed on the new head")
    };
    assert_eq!(
        git(&repo.bare, &["rev-parse", &format!("{on_top}^")]),
        theirs
    );

    // Another branch, for a pull-request flow: main is not touched.
    let Pushed::Commit(elsewhere) = source
        .push(
            &change(&on_top, "app.yaml", "image: reg.io/app:1.3\n"),
            "automation",
        )
        .unwrap()
    else {
        panic!("not pushed to the other branch")
    };
    assert_eq!(git(&repo.bare, &["rev-parse", "automation"]), elsewhere);
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), on_top);
}

/// The daemon on `repo` automating every `interval` with images in
/// `registry` (plain HTTP), no HTTP API, no poll; and `extra` flags.
fn automation_daemon(
    repo: &GitRepo,
    registry: &LocalRegistry,
    interval: &str,
    extra: &[&str],
) -> crate::support::Daemon {
    let host = registry.host();
    let mut args = vec![
        "--listen",
        "off",
        "--git-poll-interval",
        "1h",
        "--automation-interval",
        interval,
        "--registry-insecure-host",
        &host,
    ];
    args.extend_from_slice(extra);
    repo.daemon(&repo.url(), &args)
}

/// A namespace of its own, and a repository that declares it.
fn namespaced_repo(prefix: &str) -> (String, GitRepo) {
    let ns = crate::support::unique(prefix);
    let repo = GitRepo::new();
    repo.write("namespace.yaml", &crate::support::ns_yaml(&ns));
    (ns, repo)
}

/// Waits until Deployment `web` runs `image`.
async fn applied(
    api: &kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    image: &str,
    within: Duration,
) {
    crate::support::eventually(&format!("{image} applied"), within, || async {
        let d = api.get_opt("web").await.ok()??;
        let live = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (live == image).then_some(())
    })
    .await;
}

/// A Deployment automated as Flux v1 wrote it, its image in `registry`.
fn automated_deployment(ns: &str, image: &str) -> String {
    format!(
        "# The web tier: automated within 1.x.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  annotations:
    fluxcd.io/automated: \"true\"
    fluxcd.io/tag.web: semver:~1
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image}   # moved by automation
"
    )
}

#[tokio::test]
async fn an_automated_deployment_moves_to_the_newest_allowed_tag_by_a_commit() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::with_web();
    let (ns, repo) = namespaced_repo("automation");
    let image = format!("{}/team/web", registry.host());
    let before = automated_deployment(&ns, &format!("{image}:1.0.0"));
    repo.write("web.yaml", &before);
    // A workload whose image the registry does not have: an error naming
    // it, and every other image still automated.
    let missing = automated_deployment(&ns, &format!("{}/team/missing:1.0.0", registry.host()))
        .replace("name: web\n  namespace", "name: lost\n  namespace");
    repo.write("lost.yaml", &missing);
    let first = repo.push("first");
    let _daemon = automation_daemon(
        &repo,
        &registry,
        "1s",
        &[
            "--git-user",
            "automation-bot",
            "--git-email",
            "bot@example.com",
        ],
    );
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.1.0"), Duration::from_secs(60)).await;

    // fluxctl's list-workloads, from the cluster.
    let listed = crate::support::tidegate(&[
        "list-workloads",
        "--sync-set-name",
        &repo.sync_set,
        "--workload-namespace",
        &ns,
        "-o",
        "json",
    ]);
    assert!(
        listed.status.success(),
        "{}",
        crate::support::stderr(&listed)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let web = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == format!("{ns}:deployment/web"))
        .unwrap_or_else(|| panic!("web listed: {listed}"))
        .clone();
    assert_eq!(web["automated"], true);
    assert_eq!(web["containers"][0]["name"], "web");
    assert_eq!(web["containers"][0]["image"], format!("{image}:1.1.0"));
    // One commit on top of the first, by the configured committer, with
    // Flux v1's message, changing only the tag's bytes.
    let head = git(&repo.bare, &["rev-parse", "main"]);
    assert_eq!(git(&repo.bare, &["rev-parse", "main^"]), first);
    assert_eq!(
        git(
            &repo.bare,
            &["log", "-1", "--format=%an <%ae>|%cn|%s", "main"]
        ),
        format!("automation-bot <bot@example.com>|automation-bot|Auto-release {image}:1.1.0")
    );
    let written = git(&repo.bare, &["show", "main:web.yaml"]);
    assert_eq!(
        format!("{written}\n"),
        before.replace(":1.0.0   #", ":1.1.0   #"),
        "only the tag changed; the comments stay"
    );
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:lost.yaml"])),
        missing,
        "the workload whose image is missing is left as it is"
    );
    // The status records the cycle, the commit and the missing image.
    let automation = crate::support::eventually(
        "the automation recorded",
        Duration::from_secs(30),
        || async {
            let status = crate::support::status_json(&repo.sync_set);
            let a = status.get("automation")?.clone();
            (a["commit"] == head.as_str()).then_some(a)
        },
    )
    .await;
    let errors = automation["errors"].to_string();
    assert!(
        errors.contains("team/missing") && errors.contains("404"),
        "{automation}"
    );
    // fluxctl's list-images: what the filter allows, best first.
    let images = crate::support::tidegate(&[
        "list-images",
        "--sync-set-name",
        &repo.sync_set,
        "--workload",
        &format!("{ns}:deployment/web"),
        "-o",
        "json",
    ]);
    assert!(
        images.status.success(),
        "{}",
        crate::support::stderr(&images)
    );
    let images: serde_json::Value = serde_json::from_slice(&images.stdout).unwrap();
    assert_eq!(
        images,
        serde_json::json!([{"workload": format!("{ns}:deployment/web"), "container": "web",
            "current": format!("{image}:1.1.0"), "pick": "1.1.0", "available": ["1.1.0", "1.0.0"]}]),
        "2.0.0 is outside ~1; the current image is the one the cycle committed"
    );
    assert_eq!(automation["containers"], 2, "{automation}");
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(crate::support::client().await, "default");
    let state = format!("{}-state", repo.sync_set);
    let listed = events.list(&Default::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("AutomationFailed")
                && e.involved_object.name.as_deref() == Some(state.as_str())
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("team/missing")),
        "an AutomationFailed Event names the missing image"
    );
    // 2.0.0 is outside ~1, and no cycle since moved to it: a newer 1.x
    // is the next (and only the next) commit.
    registry.push_image("team/web", "1.2.0", "2026-04-01T00:00:00Z");
    applied(&api, &format!("{image}:1.2.0"), Duration::from_secs(60)).await;
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main^"]),
        head,
        "one commit per move"
    );
    assert_eq!(
        git(&repo.bare, &["log", "-1", "--format=%s", "main"]),
        format!("Auto-release {image}:1.2.0")
    );
}

#[tokio::test]
async fn a_marker_moves_its_value_as_the_image_policy_in_the_repository_says() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start();
    for tag in ["1.0.0", "1.3.0", "2.0.0"] {
        registry.push_image("team/web", tag, "2026-01-01T00:00:00Z");
    }
    let (ns, repo) = namespaced_repo("markers");
    let image = format!("{}/team/web", registry.host());
    // Flux v2's way: no annotation, a marker naming a policy.
    let before = automated_deployment(&ns, &format!("{image}:1.0.0"))
        .replace(
            "    fluxcd.io/automated: \"true\"\n    fluxcd.io/tag.web: semver:~1\n",
            "    team: web\n",
        )
        .replace(
            "   # moved by automation",
            &format!(" # {{\"$imagepolicy\": \"{ns}:web\"}}"),
        );
    assert!(!before.contains("fluxcd.io"), "{before}");
    let policy = format!(
        "apiVersion: tidegate.dev/v1\nkind: ImagePolicy\nmetadata: {{name: web, namespace: {ns}}}\n\
         spec:\n  image: {image}\n  policy:\n    semver: {{range: ^1}}\n"
    );
    repo.write("web.yaml", &before);
    repo.write("policies/web.yaml", &policy);
    let first = repo.push("first");
    let _daemon = automation_daemon(&repo, &registry, "1s", &[]);
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.3.0"), Duration::from_secs(60)).await;
    assert_eq!(git(&repo.bare, &["rev-parse", "main^"]), first);
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:web.yaml"])),
        before.replace(":1.0.0 #", ":1.3.0 #"),
        "only the marked value changed"
    );
    assert_eq!(
        registry.gets("/blobs/"),
        0,
        "a policy orders by the tags alone: no config read"
    );
    // The policy was read, not applied: the sync of the revision is clean.
    let status = crate::support::status_json(&repo.sync_set);
    assert_eq!(
        (&status["result"], &status["errors_total"]),
        (&"succeeded".into(), &0.into()),
        "{status}"
    );
}

#[tokio::test]
async fn a_restarted_daemon_reads_no_build_time_it_knew() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start();
    registry.push_image("team/tool", "a", "2026-01-01T00:00:00Z");
    registry.push_image("team/tool", "b", "2026-02-01T00:00:00Z");
    let (ns, repo) = namespaced_repo("automation-cache");
    let image = format!("{}/team/tool", registry.host());
    // No semver filter: the newest build wins, so build times are read.
    let deployment = automated_deployment(&ns, &format!("{image}:a"))
        .replace("fluxcd.io/tag.web: semver:~1", "fluxcd.io/tag.web: glob:*");
    repo.write("web.yaml", &deployment);
    repo.push("first");
    let args = [
        "--listen",
        "off",
        "--git-poll-interval",
        "1h",
        "--automation-interval",
        "1s",
        "--registry-insecure-host",
        &registry.host(),
    ];
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    let first = repo.daemon(&repo.url(), &args);
    applied(&api, &format!("{image}:b"), Duration::from_secs(60)).await;
    first.terminate();
    let blobs = |r: &LocalRegistry| r.gets("/v2/team/tool/blobs/");
    assert_eq!(blobs(&registry), 2, "one config per tag, each read once");
    let kept = std::fs::read_to_string(repo.cache.join("registry-cache.json")).unwrap_or_default();
    assert!(kept.contains(":b\""), "the build times are kept: {kept}");

    // Restarted on the same cache: the next move needs only the new tag's.
    let _second = repo.daemon(&repo.url(), &args);
    registry.push_image("team/tool", "c", "2026-03-01T00:00:00Z");
    applied(&api, &format!("{image}:c"), Duration::from_secs(60)).await;
    assert_eq!(
        blobs(&registry),
        3,
        "after the restart, only c's config was read"
    );
}

#[tokio::test]
async fn a_registry_behind_tls_and_a_password_is_read_with_the_workloads_pull_secret() {
    use base64::Engine as _;
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start_with(true, "");
    registry.push_image("team/private", "1.0.0", "2026-01-01T00:00:00Z");
    registry.push_image("team/private", "1.4.0", "2026-02-01T00:00:00Z");
    let ns = crate::support::unique("automation-auth");
    crate::support::create_namespace(&ns).await;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", USER.0, USER.1));
    let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(crate::support::client().await, &ns);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "pull"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": config},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let image = format!("{}/team/private", registry.host());
    let deployment = automated_deployment(&ns, &format!("{image}:1.0.0")).replace(
        "    spec:\n      containers:",
        "    spec:\n      imagePullSecrets: [{name: pull}]\n      containers:",
    );
    let repo = GitRepo::new();
    repo.write("web.yaml", &deployment);
    repo.push("first");
    let ca = registry.dir.path().join("cert.pem");
    let _daemon = repo.daemon(
        &repo.url(),
        &[
            "--listen",
            "off",
            "--git-poll-interval",
            "1h",
            "--automation-interval",
            "1s",
            "--registry-ca-file",
            ca.to_str().unwrap(),
            "--registry-allow",
            "127.0.0.1",
        ],
    );
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.4.0"), Duration::from_secs(60)).await;
    assert!(
        registry.gets("/v2/team/private/tags/list") >= 1,
        "the tags were read from the secured registry"
    );
}

#[tokio::test]
async fn a_registry_notification_brings_the_new_image_without_waiting_for_the_interval() {
    use k8s_openapi::api::apps::v1::Deployment;

    let secret_name = crate::support::unique("registry-hook");
    crate::support::create_secret(
        &secret_name,
        serde_json::json!({"webhook-secret": "registry-s3cret", "registry-token": "url-t0ken"}),
    )
    .await;
    let port = free_port();
    let notifications = format!(
        "notifications:\n  endpoints:\n    - name: tidegate\n      url: http://127.0.0.1:{port}/hooks/registry/distribution\n      headers: {{Authorization: [Bearer registry-s3cret]}}\n      timeout: 2s\n      threshold: 10\n      backoff: 200ms\n"
    );
    let registry = LocalRegistry::start_with(false, &notifications);
    registry.push_image("team/hooked", "1.0.0", "2026-01-01T00:00:00Z");
    let (ns, repo) = namespaced_repo("automation-hook");
    let image = format!("{}/team/hooked", registry.host());
    repo.write(
        "web.yaml",
        &automated_deployment(&ns, &format!("{image}:1.0.0")),
    );
    repo.push("first");
    let listen = format!("127.0.0.1:{port}");
    // The interval is an hour: only the notification can bring 1.1.0.
    let _daemon = repo.daemon(
        &repo.url(),
        &[
            "--listen",
            &listen,
            "--webhook-secret-name",
            &secret_name,
            "--git-poll-interval",
            "1h",
            "--automation-interval",
            "1h",
            "--registry-insecure-host",
            &registry.host(),
        ],
    );
    crate::support::wait_http(port, "/readyz", 200);
    let forged = crate::support::http(
        port,
        "POST",
        "/hooks/registry/distribution",
        &[("Authorization", "Bearer wrong".to_string())],
        br#"{"events": [{"action": "push", "target": {"repository": "team/hooked", "tag": "9"}}]}"#,
    );
    assert_eq!(forged.0, 401);
    // Docker Hub's webhooks carry a token in their URL: the registry
    // token, never the webhook secret.
    let hub = |token: &str| {
        crate::support::http(
            port,
            "POST",
            &format!("/hooks/registry/dockerhub/{token}"),
            &[],
            br#"{"push_data": {"tag": "0.9"}, "repository": {"repo_name": "team/other"}}"#,
        )
        .0
    };
    assert_eq!(
        hub("registry-s3cret"),
        401,
        "the webhook secret is not a URL token"
    );
    assert_eq!(hub("url-t0ken"), 202);
    registry.push_image("team/hooked", "1.1.0", "2026-02-01T00:00:00Z");
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.1.0"), Duration::from_secs(30)).await;
    // The sync of a pushed commit may finish before the cycle is counted.
    crate::support::eventually("the commit counted", Duration::from_secs(10), || async {
        (crate::support::metric(port, "tidegate_automation_commits_total") == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        crate::support::metric(port, "tidegate_automation_containers"),
        1.0
    );
    assert_eq!(
        crate::support::metric(port, "tidegate_automation_errors"),
        0.0
    );
}

#[test]
fn a_signed_commit_is_verified_by_git_itself() {
    let repo = GitRepo::new();
    repo.write("app.yaml", "image: reg.io/app:1.0\n");
    let first = repo.push("first");
    let key = tidegate::identity::DeployKey::generate().unwrap();
    let source = GitSource {
        url: repo.url(),
        branch: "main".into(),
        cache_dir: repo.cache.clone(),
        access: tidegate::source::Access {
            deploy_key: Some(key.clone()),
            ..Default::default()
        },
    };
    source.fetch().unwrap();
    let Pushed::Commit(signed) = source
        .push(
            &Change {
                sign: Signing::DeployKey,
                ..change(&first, "app.yaml", "image: reg.io/app:1.1\n")
            },
            "main",
        )
        .unwrap()
    else {
        panic!("not pushed")
    };
    // git's own check, with an allowed-signers file naming the deploy key.
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("tidegate@example.com {}\n", key.public)).unwrap();
    let verify = |commit: &str| {
        Command::new("git")
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
            .args(["verify-commit", commit])
            .current_dir(&repo.bare)
            .output()
            .unwrap()
    };
    let out = verify(&signed);
    assert!(
        out.status.success(),
        "git verify-commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Good \"git\" signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !verify(&first).status.success(),
        "an unsigned commit does not pass"
    );
    // tidegate's own check accepts it, given the same allowed signers.
    let allowed_signers = std::fs::read(&allowed).unwrap();
    let keys = tidegate::source::verify::Keys::from_entries([(
        "allowed_signers",
        allowed_signers.as_slice(),
    )])
    .unwrap();
    let cache = git2::Repository::open_bare(&repo.bare).unwrap();
    let signer = tidegate::source::verify::verify_commit(
        &cache,
        git2::Oid::from_str(&signed).unwrap(),
        &keys,
        u64::MAX / 2,
    )
    .unwrap();
    assert_eq!(signer.name, "tidegate@example.com");
}

/// An OpenPGP key made by gpg in a keyring of its own (`dir`), protected
/// by `passphrase`: its armored secret key.
fn gpg_key(dir: &Path, passphrase: &str) -> String {
    let gpg = |args: &[&str]| {
        let out = Command::new("gpg")
            .env("GNUPGHOME", dir)
            .args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                passphrase,
            ])
            .args(args)
            .output()
            .expect("gpg runs (Debian's gnupg package)");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    gpg(&[
        "--quick-gen-key",
        "Automation <bot@example.com>",
        "ed25519",
        "sign",
        "never",
    ]);
    gpg(&["--armor", "--export-secret-keys", "bot@example.com"])
}

/// `git verify-commit` with gpg's keyring in `dir`: its stderr, if good.
fn gpg_verified(repo: &Path, dir: &Path, commit: &str) -> Result<String, String> {
    let out = Command::new("git")
        .env("GNUPGHOME", dir)
        .args(["verify-commit", commit])
        .current_dir(repo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(stderr)
    }
}

#[test]
fn a_commit_signed_with_an_openpgp_key_is_verified_by_git_and_gpg() {
    let repo = GitRepo::new();
    repo.write("app.yaml", "image: reg.io/app:1.0\n");
    let first = repo.push("first");
    let keyring = tempfile::tempdir().unwrap();
    let armored = gpg_key(keyring.path(), "s3cret");
    assert!(
        OpenPgpKey::parse(&armored, "wrong").is_ok(),
        "the passphrase is needed to sign, not to read"
    );
    let source = GitSource {
        url: repo.url(),
        branch: "main".into(),
        cache_dir: repo.cache.clone(),
        access: Default::default(),
    };
    source.fetch().unwrap();
    let wrong = Signing::OpenPgp(std::sync::Arc::new(
        OpenPgpKey::parse(&armored, "wrong").unwrap(),
    ));
    let refused = source.push(
        &Change {
            sign: wrong,
            ..change(&first, "app.yaml", "image: reg.io/app:1.1\n")
        },
        "main",
    );
    let refused = refused.expect_err("a wrong passphrase signs nothing");
    assert!(
        !refused.to_string().contains("s3cret") && !refused.to_string().contains("PRIVATE KEY"),
        "{refused}"
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        first,
        "nothing pushed"
    );
    let key = Signing::OpenPgp(std::sync::Arc::new(
        OpenPgpKey::parse(&armored, "s3cret").unwrap(),
    ));
    let Pushed::Commit(signed) = source
        .push(
            &Change {
                sign: key,
                ..change(&first, "app.yaml", "image: reg.io/app:1.1\n")
            },
            "main",
        )
        .unwrap()
    else {
        panic!("not pushed")
    };
    let good = gpg_verified(&repo.bare, keyring.path(), &signed).unwrap();
    assert!(
        good.contains("Good signature from \"Automation <bot@example.com>\""),
        "{good}"
    );
    assert!(
        gpg_verified(&repo.bare, keyring.path(), &first).is_err(),
        "unsigned"
    );
}

#[tokio::test]
async fn the_sync_tag_follows_each_revision_synced() {
    let ns = crate::support::unique("sync-tag");
    let repo = GitRepo::new();
    repo.write("app.yaml", &crate::support::app_yaml(&ns, "1"));
    let first = repo.push("first");
    let _daemon = repo.daemon(
        &repo.url(),
        &[
            "--listen",
            "off",
            "--git-poll-interval",
            "1h",
            "--git-sync-tag",
            "flux-sync",
        ],
    );
    let tagged = |revision: String| {
        let bare = repo.bare.clone();
        async move {
            crate::support::eventually(
                &format!("flux-sync at {revision}"),
                Duration::from_secs(30),
                || async {
                    let at = Command::new("git")
                        .args(["rev-parse", "--verify", "--quiet", "flux-sync^{commit}"])
                        .current_dir(&bare)
                        .output()
                        .ok()?;
                    (String::from_utf8_lossy(&at.stdout).trim() == revision).then_some(())
                },
            )
            .await
        }
    };
    tagged(first).await;
    repo.write("app.yaml", &crate::support::app_yaml(&ns, "2"));
    let second = repo.push("second");
    tagged(second.clone()).await;
    assert_eq!(
        crate::support::settings_value(&ns).await.as_deref(),
        Some("2")
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        second,
        "main is as pushed"
    );
}

#[tokio::test]
async fn a_refused_push_is_an_error_on_the_status_and_the_sync_goes_on() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start();
    registry.push_image("team/guarded", "1.0.0", "2026-01-01T00:00:00Z");
    registry.push_image("team/guarded", "1.1.0", "2026-02-01T00:00:00Z");
    let (ns, repo) = namespaced_repo("automation-refused");
    let image = format!("{}/team/guarded", registry.host());
    repo.write(
        "web.yaml",
        &automated_deployment(&ns, &format!("{image}:1.0.0")),
    );
    let first = repo.push("first");
    // A protected branch: the server takes pushes over HTTPS, and its hook
    // refuses every one.
    git(&repo.bare, &["config", "http.receivepack", "true"]);
    let hook = repo.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'main is protected: open a pull request' >&2\nexit 1\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(&hook)
        .status()
        .unwrap();
    let server = crate::servers::GitHttps::start(repo.bare.parent().unwrap(), "writer:letmein");
    let secret = crate::support::unique("push-creds");
    crate::support::create_secret(
        &secret,
        serde_json::json!({"username": "writer", "password": "letmein"}),
    )
    .await;
    let ca = server.ca_file.to_string_lossy().into_owned();
    let _daemon = repo.daemon(
        &server.url("repo.git"),
        &[
            "--listen",
            "off",
            "--git-https-secret",
            &secret,
            "--git-ca-file",
            &ca,
            "--git-poll-interval",
            "1h",
            "--automation-interval",
            "1s",
            "--registry-insecure-host",
            &registry.host(),
        ],
    );
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    crate::support::eventually("the first sync", Duration::from_secs(60), || async {
        api.get_opt("web").await.ok()?.map(|_| ())
    })
    .await;
    let automation =
        crate::support::eventually("the refusal recorded", Duration::from_secs(60), || async {
            let status = crate::support::status_json(&repo.sync_set);
            let a = status.get("automation")?.clone();
            a["errors"].to_string().contains("refused").then_some(a)
        })
        .await;
    let errors = automation["errors"].to_string();
    assert!(
        errors.contains("main is protected"),
        "the server's reason: {errors}"
    );
    assert!(
        !errors.contains("letmein"),
        "no credential in the status: {errors}"
    );
    // Nothing was written, and the cluster has what Git has.
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), first);
    let live = api.get("web").await.unwrap();
    let live = live.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(live, Some(format!("{image}:1.0.0")));
    let status = crate::support::status_json(&repo.sync_set);
    assert_eq!(status["result"], "succeeded", "the sync goes on");
    // The branch protection lifted: the next cycle's push goes through,
    // over HTTPS with the credentials.
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    applied(&api, &format!("{image}:1.1.0"), Duration::from_secs(60)).await;
    assert_eq!(git(&repo.bare, &["rev-parse", "main^"]), first);
}

#[test]
fn a_push_goes_over_ssh_with_the_deploy_key() {
    let sshd = crate::servers::Sshd::start();
    let repo = GitRepo::new();
    repo.write("app.yaml", "image: reg.io/app:1.0\n");
    let first = repo.push("first");
    let key = tidegate::identity::DeployKey::generate().unwrap();
    sshd.authorize(&[&key.public]);
    let source = GitSource {
        url: sshd.url(&repo.bare),
        branch: "main".into(),
        cache_dir: repo.cache.clone(),
        access: tidegate::source::Access {
            deploy_key: Some(key),
            known_hosts: sshd.known_hosts_line.clone(),
            ..Default::default()
        },
    };
    source.fetch().unwrap();
    let Pushed::Commit(pushed) = source
        .push(
            &change(&first, "app.yaml", "image: reg.io/app:1.1\n"),
            "main",
        )
        .unwrap()
    else {
        panic!("not pushed")
    };
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), pushed);
    assert_eq!(
        git(&repo.bare, &["show", "main:app.yaml"]),
        "image: reg.io/app:1.1"
    );
    // A key the server does not know pushes nothing, and says so.
    let stranger = GitSource {
        access: tidegate::source::Access {
            deploy_key: Some(tidegate::identity::DeployKey::generate().unwrap()),
            known_hosts: sshd.known_hosts_line.clone(),
            ..Default::default()
        },
        cache_dir: tempfile::tempdir().unwrap().keep(),
        ..source.clone()
    };
    assert!(stranger.fetch().is_err(), "not authorized");
    assert_eq!(git(&repo.bare, &["rev-parse", "main"]), pushed);
}

#[tokio::test]
async fn with_a_push_branch_commits_go_there_one_on_top_of_the_other_and_main_stays() {
    let registry = LocalRegistry::start();
    registry.push_image("team/review", "1.0.0", "2026-01-01T00:00:00Z");
    registry.push_image("team/review", "1.1.0", "2026-02-01T00:00:00Z");
    let (ns, repo) = namespaced_repo("automation-branch");
    let image = format!("{}/team/review", registry.host());
    repo.write(
        "web.yaml",
        &automated_deployment(&ns, &format!("{image}:1.0.0")),
    );
    let first = repo.push("first");
    let _daemon = automation_daemon(&repo, &registry, "1s", &["--git-push-branch", "automation"]);
    let head_of = |branch: &'static str| {
        let bare = repo.bare.clone();
        move || {
            let out = Command::new("git")
                .args(["rev-parse", "--verify", "--quiet", branch])
                .current_dir(&bare)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let automation = head_of("automation");
    let one = crate::support::eventually("the automation branch", Duration::from_secs(60), || {
        let head = automation();
        async move { (!head.is_empty()).then_some(head) }
    })
    .await;
    assert_eq!(
        git(&repo.bare, &["rev-parse", "automation^"]),
        first,
        "made from main's head"
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        first,
        "main is not touched"
    );
    assert!(git(&repo.bare, &["show", "automation:web.yaml"]).contains(":1.1.0"));

    registry.push_image("team/review", "1.2.0", "2026-03-01T00:00:00Z");
    let two = crate::support::eventually("a second commit there", Duration::from_secs(60), || {
        let head = automation();
        let one = one.clone();
        async move { (head != one).then_some(head) }
    })
    .await;
    assert_eq!(
        git(&repo.bare, &["rev-parse", &format!("{two}^")]),
        one,
        "on top of the first"
    );
    assert!(git(&repo.bare, &["show", "automation:web.yaml"]).contains(":1.2.0"));
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        first,
        "main is still not touched"
    );
}

/// `tidegate <command> --workload <workload> …` for a sync set, as JSON.
fn workload_command(
    sync_set: &str,
    command: &[&str],
    kubeconfig: Option<&Path>,
) -> (Option<i32>, serde_json::Value, String) {
    let mut args: Vec<&str> = command.to_vec();
    args.extend(["--sync-set-name", sync_set, "-o", "json"]);
    let mut cmd = crate::support::tidegate_command(&args);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let out = cmd.output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (out.status.code(), json, crate::support::stderr(&out))
}

#[tokio::test]
async fn the_workload_commands_commit_as_the_kubernetes_user_who_asked() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;

    let registry = LocalRegistry::with_web();
    let (ns, repo) = namespaced_repo("fluxctl");
    let image = format!("{}/team/web", registry.host());
    let before = automated_deployment(&ns, &format!("{image}:1.0.0")).replace(
        "    fluxcd.io/automated: \"true\"\n    fluxcd.io/tag.web: semver:~1\n",
        "    team: web\n",
    );
    repo.write("web.yaml", &before);
    repo.push("first");
    // Commits signed with an OpenPGP key from a Secret.
    let keyring = tempfile::tempdir().unwrap();
    let signing = crate::support::unique("signing-key");
    crate::support::create_secret(
        &signing,
        serde_json::json!({"signing.key": gpg_key(keyring.path(), "s3cret"), "passphrase": "s3cret"}),
    )
    .await;
    let _daemon = automation_daemon(
        &repo,
        &registry,
        "1h",
        &[
            "--git-user",
            "automation-bot",
            "--git-signing-key",
            &format!("secret/{signing}"),
        ],
    );
    let client = crate::support::client().await;
    let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
    applied(&api, &format!("{image}:1.0.0"), Duration::from_secs(60)).await;
    // Who the API server says the test is.
    let me = kube::Api::<SelfSubjectReview>::all(client.clone())
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
        .unwrap()
        .status
        .and_then(|s| s.user_info?.username)
        .unwrap();
    let workload = format!("{ns}:deployment/web");
    let set = repo.sync_set.clone();
    let head = || git(&repo.bare, &["rev-parse", "main"]);
    let file = || format!("{}\n", git(&repo.bare, &["show", "main:web.yaml"]));

    let (code, out, err) = workload_command(&set, &["automate", "--workload", &workload], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out["user"], me.as_str());
    assert_eq!(out["synced"], true, "{out}");
    assert_eq!(out["revision"], head().as_str());
    assert_eq!(
        git(&repo.bare, &["log", "-1", "--format=%an|%cn|%s", "main"]),
        format!("{me}|automation-bot|Automated: {workload}"),
        "the author is the user the API server authenticated"
    );
    let good = gpg_verified(&repo.bare, keyring.path(), &head()).unwrap();
    assert!(good.contains("Good signature"), "{good}");
    assert_eq!(
        file(),
        before.replace(
            "    team: web\n",
            "    fluxcd.io/automated: \"true\"\n    team: web\n"
        )
    );

    // A dry run shows the change and commits nothing.
    let at = head();
    let release = format!("{image}:1.1.0");
    let (code, out, err) = workload_command(
        &set,
        &[
            "release",
            "--workload",
            &workload,
            "--update-image",
            &release,
            "--dry-run",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out["diff"]
            .as_str()
            .unwrap()
            .contains(&format!("+          image: {release}")),
        "{out}"
    );
    assert_eq!(head(), at);
    let (code, out, err) = workload_command(
        &set,
        &[
            "release",
            "--workload",
            &workload,
            "--update-image",
            &release,
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out["synced"], true, "{out}");
    applied(&api, &release, Duration::from_secs(5)).await;
    assert_eq!(
        git(&repo.bare, &["log", "-1", "--format=%s", "main"]),
        format!("Release {release} to {workload}")
    );

    // Locked: automation and releases leave it alone, and the lock says who.
    let (code, _, err) = workload_command(
        &set,
        &["lock", "--workload", &workload, "-m", "incident 42"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let locked = file();
    assert!(locked.contains("fluxcd.io/locked: \"true\"\n"), "{locked}");
    assert!(
        locked.contains(&format!("fluxcd.io/locked_user: \"{me}\"\n")),
        "{locked}"
    );
    assert!(
        locked.contains("fluxcd.io/locked_msg: \"incident 42\"\n"),
        "{locked}"
    );
    let (code, _, err) = workload_command(
        &set,
        &["release", "--workload", &workload, "--update-all-images"],
        None,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("is locked by"), "{err}");

    let (code, _, err) = workload_command(&set, &["unlock", "--workload", &workload], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(!file().contains("locked"), "{}", file());
    let (code, _, err) = workload_command(
        &set,
        &["policy", "--workload", &workload, "--tag", "web=semver:^2"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = workload_command(
        &set,
        &["release", "--workload", &workload, "--update-all-images"],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out["synced"], true, "{out}");
    applied(&api, &format!("{image}:2.0.0"), Duration::from_secs(5)).await;
    assert_eq!(
        file(),
        before
            .replace(
                "    team: web\n",
                "    fluxcd.io/tag.web: \"semver:^2\"\n    fluxcd.io/automated: \"true\"\n    team: web\n"
            )
            .replace(":1.0.0   #", ":2.0.0   #"),
        "each command changed only its own lines"
    );

    // Someone who may make requests but not patch the Deployment is refused.
    let roles = crate::support::dynamic_api(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        None,
    )
    .await;
    let name = crate::support::unique("requester");
    let role: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
                   "verbs": ["create", "get", "list", "watch", "delete"]},
                  {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}))
    .unwrap();
    roles.create(&Default::default(), &role).await.unwrap();
    let bindings = crate::support::dynamic_api(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        None,
    )
    .await;
    let binding: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}]}))
    .unwrap();
    bindings
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mallory = dir.path().join("kubeconfig");
    let kubeconfig = std::fs::read_to_string(&crate::support::control_plane().kubeconfig).unwrap();
    let mut config: serde_json::Value = serde_saphyr::from_str(&kubeconfig).unwrap();
    for user in config["users"].as_array_mut().unwrap() {
        user["user"]["as"] = "mallory".into();
    }
    std::fs::write(&mallory, serde_json::to_string(&config).unwrap()).unwrap();
    let at = head();
    let (code, _, err) = workload_command(
        &set,
        &["deautomate", "--workload", &workload],
        Some(&mallory),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("mallory may not patch deployments.apps {ns}/web")),
        "{err}"
    );
    assert_eq!(head(), at, "nothing committed for mallory");
}

#[tokio::test]
async fn a_branch_another_clone_moved_gets_the_edits_on_its_head_and_loses_nothing() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start();
    registry.push_image("team/web", "1.0.0", "2026-01-01T00:00:00Z");
    let (ns, repo) = namespaced_repo("moved");
    let image = format!("{}/team/web", registry.host());
    let web = automated_deployment(&ns, &format!("{image}:1.0.0"));
    let other = |greeting: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: other, namespace: {ns}}}\ndata: {{greeting: {greeting}}}\n"
        )
    };
    repo.write("web.yaml", &web);
    repo.write("other.yaml", &other("hello"));
    repo.push("first");
    // No watch and no poll: the daemon does not see the other push before
    // its own is refused.
    let _daemon = automation_daemon(&repo, &registry, "1s", &["--git-watch", "false"]);
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.0.0"), Duration::from_secs(60)).await;
    // Someone else pushes, then a new image arrives.
    repo.write("other.yaml", &other("changed elsewhere"));
    let theirs = repo.push("theirs");
    registry.push_image("team/web", "1.1.0", "2026-02-01T00:00:00Z");
    applied(&api, &format!("{image}:1.1.0"), Duration::from_secs(60)).await;
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main^"]),
        theirs,
        "the commit is on top of theirs"
    );
    assert_eq!(
        git(&repo.bare, &["log", "-1", "--format=%s", "main"]),
        format!("Auto-release {image}:1.1.0")
    );
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:other.yaml"])),
        other("changed elsewhere"),
        "their change is kept"
    );
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:web.yaml"])),
        web.replace(":1.0.0   #", ":1.1.0   #")
    );
    // Someone else edits the very file meanwhile: theirs is never
    // overwritten; once synced, the new image goes on top of it.
    repo.git(&["pull", "-q", "--rebase", "origin", "main"]);
    let edited = format!(
        "{}# edited by hand\n",
        git(&repo.bare, &["show", "main:web.yaml"])
    );
    repo.write("web.yaml", &edited);
    let theirs = repo.push("theirs, on the same file");
    registry.push_image("team/web", "1.2.0", "2026-03-01T00:00:00Z");
    applied(&api, &format!("{image}:1.2.0"), Duration::from_secs(60)).await;
    assert_eq!(git(&repo.bare, &["rev-parse", "main^"]), theirs);
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:web.yaml"])),
        edited.replace(":1.1.0   #", ":1.2.0   #"),
        "their line is kept"
    );
}

#[test]
fn requests_to_a_registry_are_paced_as_its_log_shows() {
    let registry = LocalRegistry::start();
    for (i, tag) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
        registry.push_image("team/paced", tag, &format!("2026-01-0{}T00:00:00Z", i + 1));
    }
    let log = registry.dir.path().join("access.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let client = Registry::new(Settings {
        rps: 4.0,
        burst: 2,
        ..settings(registry.host())
    })
    .unwrap();
    let tags = client.tags("team/paced").unwrap();
    for tag in &tags {
        client.created("team/paced", tag).unwrap();
    }
    assert_eq!(
        client.requests(),
        13,
        "a tag list, a manifest and a config per tag"
    );
    // The registry's own log, per second: never more than the rate and
    // the burst, so the 13 requests span at least 3 seconds.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut per_second: std::collections::BTreeMap<String, usize> = Default::default();
    for line in text
        .lines()
        .skip(before)
        .filter(|l| l.contains("\"GET /v2/team/paced/"))
    {
        let second = line
            .split('[')
            .nth(1)
            .and_then(|l| l.split(']').next())
            .unwrap();
        *per_second.entry(second.to_string()).or_default() += 1;
    }
    assert_eq!(per_second.values().sum::<usize>(), 13, "{per_second:?}");
    assert!(per_second.values().all(|n| *n <= 6), "{per_second:?}");
    assert!(per_second.len() >= 3, "{per_second:?}");
}

/// A registry that answers `429 Too Many Requests` (with `Retry-After: 1`)
/// `refusals` times, then lists one tag; it prints when each request came.
fn rate_limiting_registry(refusals: usize) -> (Child, u16) {
    let port = free_port();
    let script = format!(
        r#"
import http.server, json, sys, time
left = {refusals}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global left
        print(time.time(), flush=True)
        if left > 0:
            left -= 1
            self.send_response(429); self.send_header("Retry-After", "1"); self.end_headers(); return
        body = json.dumps({{"name": "team/limited", "tags": ["1.0"]}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// When each request reached the server (stops it).
fn request_times(mut child: Child) -> Vec<f64> {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn a_registry_that_asks_to_wait_is_waited_for_and_then_given_up_on() {
    let (server, port) = rate_limiting_registry(1);
    let client = Registry::new(settings(format!("127.0.0.1:{port}"))).unwrap();
    assert_eq!(client.tags("team/limited").unwrap(), ["1.0"]);
    let times = request_times(server);
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(
        times[1] - times[0] >= 0.95,
        "Retry-After: 1 was waited: {times:?}"
    );

    let (server, port) = rate_limiting_registry(100);
    let client = Registry::new(settings(format!("127.0.0.1:{port}"))).unwrap();
    let err = client.tags("team/limited").unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    assert!(
        err.registry_fails(),
        "the registry is given up on for the cycle"
    );
    let times = request_times(server);
    assert_eq!(times.len(), 3, "two waits, then it gives up: {times:?}");
}

#[tokio::test]
async fn an_automated_helm_release_moves_its_values_image_and_helm_upgrades_it() {
    use k8s_openapi::api::apps::v1::Deployment;

    crate::helm_releases::crd_installed().await;
    let registry = LocalRegistry::with_web();
    let (ns, repo) = namespaced_repo("hr-automated");
    let image = format!("{}/team/web", registry.host());
    crate::helm_releases::copy_chart(&repo);
    // helm-operator's `image: {repository, tag}` form: container chart-image.
    let release = format!(
        "apiVersion: helm.fluxcd.io/v1
kind: HelmRelease
metadata:
  name: web
  namespace: {ns}
  annotations:
    fluxcd.io/automated: \"true\"
    filter.fluxcd.io/chart-image: semver:~1
spec:
  chart:
    git: {}
    ref: main
    path: charts/web
  values:
    hook: {{enabled: false}}
    image:
      repository: {image}
      tag: 1.0.0   # moved by automation
",
        repo.url()
    );
    repo.write("releases/web.yaml", &release);
    let first = repo.push("an automated release");
    let helm = crate::helm_releases::helm_binary();
    let _daemon = automation_daemon(&repo, &registry, "1s", &["--helm-binary", &helm]);
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    let wanted = format!("{image}:1.1.0");
    crate::support::eventually(
        "the release upgraded to 1.1.0",
        Duration::from_secs(120),
        || async {
            let d = api.get_opt(&format!("{ns}-web")).await.ok()??;
            let live = d.spec?.template.spec?.containers.first()?.image.clone()?;
            (live == wanted).then_some(())
        },
    )
    .await;
    assert_eq!(git(&repo.bare, &["rev-parse", "main^"]), first);
    assert_eq!(
        format!("{}\n", git(&repo.bare, &["show", "main:releases/web.yaml"])),
        release.replace("tag: 1.0.0   #", "tag: 1.1.0   #"),
        "only the tag's bytes changed; 2.0.0 is outside ~1"
    );
}

/// Issue 22: automation on built directories. A setter marker in a
/// kustomization's `images:` moves its tag, and kustomize builds the
/// Deployment with it; a Flux v1 automated workload a `.flux.yaml`
/// `patchUpdated` generates moves through its patch file, and the files
/// the generator reads are left as they are.
#[tokio::test]
async fn automation_writes_kustomization_images_and_flux_yaml_patch_files() {
    use k8s_openapi::api::apps::v1::Deployment;

    let registry = LocalRegistry::start();
    for tag in ["1.0.0", "1.3.0", "2.0.0"] {
        registry.push_image("team/web", tag, "2026-01-01T00:00:00Z");
    }
    let ns = crate::support::unique("auto-built");
    let repo = GitRepo::new();
    let image = format!("{}/team/web", registry.host());
    let deployment = |name: &str, image: &str| {
        automated_deployment(&ns, image)
            .replace(
                "  annotations:\n    fluxcd.io/automated: \"true\"\n    fluxcd.io/tag.web: semver:~1\n",
                "",
            )
            .replace("web", name)
    };
    let kustomization = format!(
        "namespace: {ns}\nresources: [web.yaml]\nimages:\n- name: {image}\n  newTag: 1.0.0 # {{\"$imagepolicy\": \"{ns}:web:tag\"}}\n"
    );
    let patch = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\n  namespace: {ns}\n  annotations:\n    fluxcd.io/automated: \"true\"\n    fluxcd.io/tag.api: semver:~1\n\
         spec:\n  template:\n    spec:\n      containers:\n      - name: api\n        image: {image}:1.0.0\n"
    );
    let api_base = deployment("api", &format!("{image}:0.1.0"));
    repo.write("namespaces/ns.yaml", &crate::support::ns_yaml(&ns))
        .write(
            "policies/web.yaml",
            &format!(
                "apiVersion: tidegate.dev/v1\nkind: ImagePolicy\nmetadata: {{name: web, namespace: {ns}}}\n\
                 spec:\n  image: {image}\n  policy:\n    semver: {{range: ^1}}\n"
            ),
        )
        .write("shop/kustomization.yaml", &kustomization)
        .write("shop/web.yaml", &deployment("web", &format!("{image}:0.1.0")))
        .write(
            "legacy/.flux.yaml",
            "version: 1\npatchUpdated:\n  generators:\n  - command: kustomize build .\n  patchFile: flux-patch.yaml\n",
        )
        .write("legacy/kustomization.yaml", "resources: [api.yaml]\n")
        .write("legacy/api.yaml", &api_base)
        .write("legacy/flux-patch.yaml", &patch);
    repo.push("built directories");
    let kustomize = crate::kustomize::kustomize();
    let _daemon = automation_daemon(
        &repo,
        &registry,
        "1s",
        &[
            "--kustomize-binary",
            &kustomize,
            "--manifest-generation",
            "--git-path",
            "namespaces,policies,shop,legacy",
        ],
    );
    let api: kube::Api<Deployment> = kube::Api::namespaced(crate::support::client().await, &ns);
    applied(&api, &format!("{image}:1.3.0"), Duration::from_secs(60)).await;
    crate::support::eventually("api moved", Duration::from_secs(60), || async {
        let d = api.get_opt("api").await.ok()??;
        let live = d.spec?.template.spec?.containers.first()?.image.clone()?;
        (live == format!("{image}:1.3.0")).then_some(())
    })
    .await;
    let show = |file: &str| format!("{}\n", git(&repo.bare, &["show", &format!("main:{file}")]));
    assert_eq!(
        show("shop/kustomization.yaml"),
        kustomization.replace("newTag: 1.0.0", "newTag: 1.3.0")
    );
    assert_eq!(
        show("legacy/flux-patch.yaml"),
        patch.replace(":1.0.0", ":1.3.0"),
        "the patch file, only its image"
    );
    assert_eq!(
        show("legacy/api.yaml"),
        api_base,
        "the generator's input is left alone"
    );
    // A workload command on a built workload is refused, saying where to change it.
    let head = git(&repo.bare, &["rev-parse", "main"]);
    let workload = format!("{ns}:deployment/web");
    let (code, out, err) =
        workload_command(&repo.sync_set, &["lock", "--workload", &workload], None);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        format!("{out}{err}").contains("is built from shop (kustomize or a .flux.yaml)"),
        "{out}{err}"
    );
    assert_eq!(
        git(&repo.bare, &["rev-parse", "main"]),
        head,
        "nothing committed"
    );
}
