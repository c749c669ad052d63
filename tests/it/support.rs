//! Shared setup: one real control plane per test run, Git repositories pushed
//! to with `git`, and a helper that runs the built `tidegate` binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    /// Holds the supervisor's stdin: when the test binary exits the pipe
    /// closes and the control plane shuts down.
    _process: Mutex<Option<Child>>,
}

/// The control plane shared by every test in this run, started on first use.
/// `TIDEGATE_TEST_KUBECONFIG` points the tests at an existing cluster instead.
pub fn control_plane() -> &'static ControlPlane {
    static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();
    CONTROL_PLANE.get_or_init(|| {
        if let Ok(path) = std::env::var("TIDEGATE_TEST_KUBECONFIG") {
            return ControlPlane {
                kubeconfig: PathBuf::from(path),
                _process: Mutex::new(None),
            };
        }
        start_control_plane()
    })
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds (or finds in the cache) the control plane and helm; returns their directory.
pub fn tools_dir() -> PathBuf {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            crate::launch::build(&repo_root()).unwrap_or_else(|e| {
                panic!(
                    "the test control plane could not be built: {e}.\n\
                     It needs Go >= 1.24 and the Go module proxy: run `cargo xtask controlplane` \
                     to build it, or set TIDEGATE_TEST_KUBECONFIG to the kubeconfig of an \
                     existing cluster to test against that instead."
                )
            })
        })
        .clone()
}

fn start_control_plane() -> ControlPlane {
    let bin = tools_dir().join("tidegate-controlplane");
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = base.join(format!("controlplane-{}", std::process::id()));
    // Earlier runs leave their directories behind; their processes are gone.
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("controlplane-")
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let started = Instant::now();
    let child = crate::launch::start(&bin, &dir, crate::launch::Lifetime::Parent)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "control plane ready in {:.1}s ({})",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    ControlPlane {
        kubeconfig: dir.join("kubeconfig"),
        _process: Mutex::new(Some(child)),
    }
}

/// A client for the shared control plane.
pub async fn client() -> kube::Client {
    let cp = control_plane();
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// A name unique to this test run, for a test's own namespace.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs the built `tidegate` binary against the shared control plane.
pub fn tidegate(args: &[&str]) -> Output {
    tidegate_with_env(args, &[])
}

/// `tidegate` with extra environment variables (proxies).
pub fn tidegate_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tidegate_command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tidegate")
}

/// A `tidegate` command for the shared control plane, not yet started,
/// with no proxy settings from the environment.
pub fn tidegate_command(args: &[&str]) -> Command {
    let cp = control_plane();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    cmd.args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env_remove("RUST_LOG");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A bare repository and a clone of it to commit into.
pub struct GitRepo {
    _dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
    pub cache: PathBuf,
    /// A sync set of its own, so tests' inventories and status do not mix.
    pub sync_set: String,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    pub fn new() -> GitRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let bare = dir.path().join("repo.git");
        let work = dir.path().join("work");
        let cache = dir.path().join("cache");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", "repo.git"],
        );
        git(dir.path(), &["init", "--quiet", "-b", "main", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        GitRepo {
            _dir: dir,
            bare,
            work,
            cache,
            sync_set: unique("set"),
        }
    }

    pub fn write(&self, path: &str, text: &str) -> &Self {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
        self
    }

    /// Commits everything and pushes it to `main`; returns the commit SHA.
    pub fn push(&self, message: &str) -> String {
        git(&self.work, &["add", "--all"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        git(&self.work, &["push", "--quiet", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Runs git in the work tree; its stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Writes `bytes` as a Git object of `kind` (blob, commit, or tree in
    /// `git mktree`'s text form); its id.
    pub fn object(&self, kind: &str, bytes: &[u8]) -> String {
        let mut child = Command::new("git")
            .args(match kind {
                "tree" => vec!["mktree", "--missing"],
                "commit" => vec!["hash-object", "-t", "commit", "-w", "--stdin"],
                _ => vec!["hash-object", "-w", "--stdin"],
            })
            .current_dir(&self.work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run git");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {kind} object");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commits `tree` on top of the pushed head and pushes it to `main`, as
    /// git's plumbing lets anyone with push access do.
    pub fn push_tree(&self, tree: &str, message: &str) -> String {
        let commit = self.git(&["commit-tree", tree, "-p", "HEAD", "-m", message]);
        self.git(&[
            "push",
            "--quiet",
            "origin",
            &format!("{commit}:refs/heads/main"),
        ]);
        self.git(&["reset", "--quiet", "--hard", &commit]);
        commit
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// `tidegate daemon --once` on this repository, plus extra arguments.
    pub fn sync_once(&self, extra: &[&str]) -> Output {
        self.sync_once_from(&self.url(), extra, &[])
    }

    /// `tidegate daemon --once` from another URL of this repository.
    pub fn sync_once_from(&self, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        tidegate_with_env(&self.daemon_args(url, &args), env)
    }

    /// A running `tidegate daemon` on this repository from `url`.
    pub fn daemon(&self, url: &str, extra: &[&str]) -> Daemon {
        let child = self
            .daemon_command(url, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tidegate daemon");
        Daemon(child)
    }

    /// `tidegate daemon` on this repository from `url`, to start.
    pub fn daemon_command(&self, url: &str, extra: &[&str]) -> Command {
        tidegate_command(&self.daemon_args(url, extra))
    }

    /// `daemon --once` arguments for this repository, then `extra`.
    pub fn once_args(&self, extra: &[&str]) -> Vec<String> {
        let url = self.url();
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        self.daemon_args(&url, &args)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// `daemon` with this repository's branch, cache and sync set, then `extra`.
    fn daemon_args<'a>(&'a self, url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let cache = self.cache.to_str().expect("a UTF-8 temp path");
        let mut args = vec![
            "daemon",
            "--git-url",
            url,
            "--git-branch",
            "main",
            "--git-cache-dir",
            cache,
            "--sync-set-name",
            &self.sync_set,
        ];
        args.extend_from_slice(extra);
        args
    }
}

/// A running daemon, killed when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.0.wait().expect("wait for the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace and the ConfigMap `settings` in it holding `value`.
pub fn app_yaml(ns: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

/// The live `value` of the ConfigMap `settings` in `ns`, if there is one.
pub async fn settings_value(ns: &str) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client().await, ns)
        .get_opt("settings")
        .await
        .ok()??;
    cm.data?.get("value").cloned()
}

/// Creates a Secret in the `default` namespace from string data.
pub async fn create_secret(name: &str, string_data: serde_json::Value) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": string_data
    }))
    .unwrap();
    Api::<Secret>::namespaced(client().await, "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A ServiceAccount in `default` and a token for it from the TokenRequest
/// API; with `may_sync`, a Role that lets it update the state ConfigMap of
/// `sync_set` (what `tidegate sync` needs).
pub async fn service_account_token(name: &str, sync_set: &str, may_sync: bool) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let client = client().await;
    let pp = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    accounts.create(&pp, &account).await.unwrap();
    if may_sync {
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "resourceNames": [format!("{sync_set}-state")], "verbs": ["get", "update", "patch"]}]
        }))
        .unwrap();
        Api::<Role>::namespaced(client.clone(), "default")
            .create(&pp, &role)
            .await
            .unwrap();
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), "default")
            .create(&pp, &binding)
            .await
            .unwrap();
    }
    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .unwrap();
    let issued: TokenRequest = accounts
        .create_subresource("token", name, &pp, &request)
        .await
        .unwrap();
    issued.status.expect("a token").token
}

/// One HTTP/1.1 request to the daemon on loopback: status code and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

pub fn wait_http(port: u16, path: &str, wanted: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", path, &[], b"").0 == wanted
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} never answered {wanted}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A ConfigMap `name` in `ns` whose `value` is `value`.
pub fn cm_yaml(ns: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"{value}\"\n"
    )
}

/// Edits the inventory recorded for `sync_set` in `namespace`, as anyone
/// allowed to update the state ConfigMap could.
pub async fn edit_inventory(
    namespace: &str,
    sync_set: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let states: Api<ConfigMap> = Api::namespaced(client().await, namespace);
    let name = format!("{sync_set}-state");
    let state = states.get(&name).await.expect("the state ConfigMap");
    let mut inventory: serde_json::Value =
        serde_json::from_str(&state.data.expect("state data")["inventory"]).expect("an inventory");
    edit(&mut inventory);
    let patch = serde_json::json!({"data": {"inventory": inventory.to_string()}});
    states
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("edit the inventory");
}

/// Creates a Namespace through the API (for instances that may not).
pub async fn create_namespace(name: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client().await);
    let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
        .expect("a Namespace");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the namespace");
}

pub fn ns_yaml(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")
}

/// The live ConfigMap, if there is one.
pub async fn configmap(ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client().await, ns)
        .get_opt(name)
        .await
        .unwrap()
}

/// `tidegate status -o json` of a sync set (exit 1 when the last sync failed).
pub fn status_json(sync_set: &str) -> serde_json::Value {
    let out = tidegate(&["status", "--sync-set-name", sync_set, "-o", "json"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The API of a kind the test knows by name (`group/version`, kind, plural),
/// in a namespace or cluster-wide.
pub async fn dynamic_api(
    api_version: &str,
    kind: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Api<kube::api::DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk(group, version, kind),
        plural,
    );
    match namespace {
        Some(ns) => Api::namespaced_with(client().await, ns, &resource),
        None => Api::all_with(client().await, &resource),
    }
}

/// Copies a directory tree (the examples, a chart) into a work tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A TCP relay to the API server that can cut every connection and refuse
/// new ones for a while: what a client sees when the API server restarts.
pub struct Relay {
    pub port: u16,
    pub down: Arc<AtomicBool>,
}

impl Relay {
    /// A relay to the test control plane's API server.
    pub fn start() -> Relay {
        let target = api_server_port();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 16384];
                        loop {
                            if flag.load(Ordering::SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Relay { port, down }
    }

    /// A kubeconfig in `dir` that reaches the API server through the relay.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let kubeconfig = std::fs::read_to_string(&control_plane().kubeconfig).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            kubeconfig.replace(
                &format!("127.0.0.1:{}", api_server_port()),
                &format!("127.0.0.1:{}", self.port),
            ),
        )
        .unwrap();
        path
    }
}

fn api_server_port() -> u16 {
    let kubeconfig = std::fs::read_to_string(&control_plane().kubeconfig).unwrap();
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("the kubeconfig names the API server on 127.0.0.1")
}

/// A value from the daemon's `/metrics` (0 when absent).
pub fn metric(port: u16, name: &str) -> f64 {
    http(port, "GET", "/metrics", &[], b"")
        .1
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the daemon's metric `name` (as [`metric`] reads it) is at
/// least `wanted`; its value then.
pub async fn metric_reaches(port: u16, name: &str, wanted: f64) -> f64 {
    eventually(
        &format!("{name} to reach {wanted}"),
        Duration::from_secs(30),
        || async {
            let value = metric(port, name);
            (value >= wanted).then_some(value)
        },
    )
    .await
}

/// The syncs the daemon ran, whatever their result (from its `/metrics`).
pub fn syncs(port: u16) -> f64 {
    http(port, "GET", "/metrics", &[], b"")
        .1
        .lines()
        .filter(|l| l.starts_with("tidegate_syncs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `program` in `dir` with `env` added; its stdout, asserting success.
pub fn run_ok(program: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
