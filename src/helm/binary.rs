//! The `helm` binary: one method per helm command tidegate runs, each with
//! the cluster connection, a private Helm home and a deadline. Values go to
//! helm in a file only the daemon can read, never on the command line or in
//! a log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Extra time a helm command gets beyond the timeout it is given to wait.
const GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the helm binary {binary} cannot be run ({source}): install Helm 3 on PATH or pass --helm-binary"
    )]
    Missing {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("helm {command} failed: {message}")]
    Failed { command: String, message: String },
    #[error(
        "helm {command} printed more than {limit} bytes and was stopped: the chart renders too much (raise --max-release-bytes if this is intended)"
    )]
    TooLarge { command: String, limit: u64 },
    #[error("helm {command} did not finish within {seconds}s and was stopped")]
    TimedOut { command: String, seconds: u64 },
    #[error("cannot prepare helm's working files in {dir}")]
    Work {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to run helm against the cluster tidegate syncs.
#[derive(Debug, Clone)]
pub struct Helm {
    pub binary: PathBuf,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Helm's cache, config and data homes live below this directory.
    pub home: PathBuf,
    /// A proxy for chart repositories (`--git-proxy`); otherwise helm
    /// honours the proxy variables it inherits.
    pub proxy: Option<String>,
    /// tidegate's own binary, run by helm as its post-renderer to label the
    /// release's objects with [`RELEASE_LABEL`].
    pub post_renderer: Option<PathBuf>,
    /// `--helm-plugins`: the only plugins helm may run; `None`: plugins off.
    pub plugins: Option<PathBuf>,
    /// `--max-release-bytes`: most bytes of manifests a chart may render
    /// (and helm may print); past it the command is stopped and fails.
    pub max_output: u64,
}

/// `--max-release-bytes`' default: a chart's manifests are rarely past a
/// few MiB, and helm holds several copies of them.
pub const MAX_RELEASE_BYTES: u64 = 16 * 1024 * 1024;

/// The label on every object of a release tidegate installed or upgraded:
/// the release's name.
pub const RELEASE_LABEL: &str = "tidegate.dev/helm-release";

/// What one install or upgrade runs with.
#[derive(Debug, Clone)]
pub struct UpgradeArgs<'a> {
    pub release: &'a str,
    pub namespace: &'a str,
    pub chart: &'a Path,
    /// The values as JSON: given to helm on its stdin, never in a file
    /// (they may hold decrypted Secrets).
    pub values: &'a [u8],
    pub timeout: Duration,
    pub wait: bool,
    pub force: bool,
    pub skip_crds: bool,
    pub max_history: u64,
    pub disable_openapi_validation: bool,
    pub reset_values: bool,
    pub labels: &'a [(String, String)],
    /// Proxy settings for the post-renderer to inject into workloads.
    pub proxy: Option<&'a crate::model::proxy::ProxySettings>,
    /// Under the allow-list: what the post-renderer lets helm install.
    pub allowed: Option<Allowed<'a>>,
}

/// The allow-list the post-renderer holds an install to.
#[derive(Debug, Clone, Copy)]
pub struct Allowed<'a> {
    pub namespaces: &'a [String],
    /// `group/Kind` of the namespaced kinds the chart was checked with.
    pub kinds: &'a [String],
}

/// What one rollback runs with.
#[derive(Debug, Clone)]
pub struct RollbackArgs<'a> {
    pub release: &'a str,
    pub namespace: &'a str,
    pub revision: u32,
    pub timeout: Duration,
    pub wait: bool,
    pub force: bool,
    pub recreate: bool,
    pub disable_hooks: bool,
    pub max_history: u64,
}

/// The flags whose switch is on.
fn switches<'a>(flags: &[(bool, &'a str)]) -> Vec<&'a str> {
    flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl Helm {
    fn missing(&self, source: std::io::Error) -> Error {
        Error::Missing {
            binary: self.binary.display().to_string(),
            source,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            // Never the plugins of a directory anything else writes to.
            .env(
                "HELM_PLUGINS",
                self.plugins
                    .clone()
                    .unwrap_or_else(|| self.home.join("no-plugins")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.plugins.is_none() {
            cmd.env("HELM_NO_PLUGINS", "1");
        }
        if let Some(proxy) = &self.proxy {
            for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                cmd.env(var, proxy);
            }
        }
        if let Some(path) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(path);
        }
        if let Some(context) = &self.context {
            cmd.arg("--kube-context").arg(context);
        }
        // helm dies with tidegate, as it does with the pod: a release it
        // leaves pending is recovered by the next sync, never finished by
        // an orphan racing it.
        // SAFETY: prctl is async-signal-safe and touches only this process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Runs helm with `args`; its stdout on success.
    async fn run(&self, args: &[&str], deadline: Duration) -> Result<String, Error> {
        self.run_with(args, deadline, None).await
    }

    /// Runs helm with `args` and `input` on its stdin; its stdout on success.
    async fn run_with(
        &self,
        args: &[&str],
        deadline: Duration,
        input: Option<&[u8]>,
    ) -> Result<String, Error> {
        // `upgrade`, `dependency build`: the command, not its arguments.
        let words = if matches!(args.first(), Some(&("dependency" | "repo"))) {
            2
        } else {
            1
        };
        let command = args[..words.min(args.len())].join(" ");
        tracing::debug!(%command, "running helm");
        let mut cmd = self.command(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|source| Error::Missing {
            binary: self.binary.display().to_string(),
            source,
        })?;
        feed(&mut child, input);
        // Read at most the limit (and a byte more, to tell): a chart that
        // renders hundreds of MiB must not take the daemon's memory with it.
        let limit = self.max_output;
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let read = async {
            use tokio::io::AsyncReadExt as _;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let stdout_read = async {
                match out.as_mut() {
                    Some(o) => o.take(limit + 1).read_to_end(&mut stdout).await.map(drop),
                    None => Ok(()),
                }
            };
            let stderr_read = async {
                match err.as_mut() {
                    Some(e) => e.take(1024 * 1024).read_to_end(&mut stderr).await.map(drop),
                    None => Ok(()),
                }
            };
            let (a, b) = tokio::join!(stdout_read, stderr_read);
            a.and(b)?;
            if stdout.len() as u64 > limit {
                return Ok(None);
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(Some(std::process::Output {
                status,
                stdout,
                stderr,
            }))
        };
        let output = match tokio::time::timeout(deadline, read).await {
            Ok(Ok(Some(output))) => output,
            Ok(Ok(None)) => {
                return Err(Error::TooLarge { command, limit });
            }
            Ok(Err(source)) => {
                return Err(self.missing(source));
            }
            Err(_) => {
                return Err(Error::TimedOut {
                    command,
                    seconds: deadline.as_secs(),
                });
            }
        };
        finished(output, command)
    }

    /// `--post-renderer tidegate --post-renderer-args post-render …`.
    fn post_render_args(
        &self,
        release: &str,
        proxy: Option<&crate::model::proxy::ProxySettings>,
        allowed: Option<(Allowed<'_>, &str)>,
    ) -> Vec<String> {
        let Some(binary) = &self.post_renderer else {
            return Vec::new();
        };
        let mut args = vec!["--post-renderer".to_string(), binary.display().to_string()];
        let mut post = vec![
            "post-render".to_string(),
            format!("--max-bytes={}", self.max_output),
            "--label".into(),
            format!("{RELEASE_LABEL}={release}"),
        ];
        if let Some(p) = proxy {
            for (flag, value) in [
                ("--http-proxy", &p.http_proxy),
                ("--https-proxy", &p.https_proxy),
                ("--no-proxy", &p.no_proxy),
            ] {
                if let Some(v) = value {
                    post.push(format!("{flag}={v}"));
                }
            }
        }
        if let Some((allowed, namespace)) = allowed {
            post.push(format!("--release-namespace={namespace}"));
            post.extend(
                allowed
                    .namespaces
                    .iter()
                    .map(|n| format!("--allow-namespace={n}")),
            );
            post.extend(
                allowed
                    .kinds
                    .iter()
                    .map(|k| format!("--namespaced-kind={k}")),
            );
        }
        for arg in post {
            args.push("--post-renderer-args".into());
            args.push(arg);
        }
        args
    }

    pub async fn version(&self) -> Result<String, Error> {
        self.run(&["version", "--short"], Duration::from_secs(30))
            .await
            .map(|v| v.trim().to_string())
    }

    /// `helm upgrade --install`: installs when absent, upgrades otherwise.
    pub async fn upgrade(&self, a: &UpgradeArgs<'_>) -> Result<(), Error> {
        let args = self.upgrade_args(a);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_with(&args, a.timeout + GRACE, Some(a.values))
            .await
            .map(drop)
    }

    /// What `upgrade` would install, rendered by helm against the cluster
    /// (`--dry-run=server`: `lookup` and the cluster's capabilities as at
    /// install): the release as JSON, hooks included.
    pub async fn upgrade_dry_run(&self, a: &UpgradeArgs<'_>) -> Result<String, Error> {
        let unchecked = UpgradeArgs {
            allowed: None,
            wait: false,
            ..a.clone()
        };
        let mut args = self.upgrade_args(&unchecked);
        args.extend([
            "--dry-run=server".to_string(),
            "--output".into(),
            "json".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_with(&args, GRACE * 2, Some(a.values)).await
    }

    fn upgrade_args(&self, a: &UpgradeArgs<'_>) -> Vec<String> {
        let timeout = secs(a.timeout);
        let history = a.max_history.to_string();
        let labels = a
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let chart = a.chart.to_string_lossy();
        let mut args = vec![
            "upgrade",
            "--install",
            a.release,
            &chart,
            "--namespace",
            a.namespace,
            "--values",
            "-",
            "--timeout",
            &timeout,
            "--history-max",
            &history,
        ];
        if !labels.is_empty() {
            args.extend(["--labels", &labels]);
        }
        let post_render = self.post_render_args(
            a.release,
            a.proxy,
            a.allowed.map(|allowed| (allowed, a.namespace)),
        );
        args.extend(post_render.iter().map(String::as_str));
        args.extend(switches(&[
            (a.wait, "--wait"),
            (a.force, "--force"),
            (a.skip_crds, "--skip-crds"),
            (a.disable_openapi_validation, "--disable-openapi-validation"),
            (a.reset_values, "--reset-values"),
            (!a.reset_values, "--reuse-values"),
        ]));
        args.into_iter().map(str::to_string).collect()
    }

    pub async fn rollback(&self, a: &RollbackArgs<'_>) -> Result<(), Error> {
        let timeout = secs(a.timeout);
        let revision = a.revision.to_string();
        let history = a.max_history.to_string();
        let mut args = vec![
            "rollback",
            a.release,
            &revision,
            "--namespace",
            a.namespace,
            "--timeout",
            &timeout,
            "--history-max",
            &history,
        ];
        args.extend(switches(&[
            (a.wait, "--wait"),
            (a.force, "--force"),
            (a.recreate, "--recreate-pods"),
            (a.disable_hooks, "--no-hooks"),
        ]));
        self.run(&args, a.timeout + GRACE).await.map(drop)
    }

    pub async fn uninstall(
        &self,
        release: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let timeout_text = secs(timeout);
        self.run(
            &[
                "uninstall",
                release,
                "--namespace",
                namespace,
                "--timeout",
                &timeout_text,
            ],
            timeout + GRACE,
        )
        .await
        .map(drop)
    }

    /// The manifests a chart renders to with these values, offline.
    pub async fn template(
        &self,
        release: &str,
        namespace: &str,
        chart: &Path,
        values: &[u8],
        skip_crds: bool,
        proxy: Option<&crate::model::proxy::ProxySettings>,
    ) -> Result<String, Error> {
        let chart = chart.to_string_lossy();
        let mut args = vec![
            "template",
            release,
            &chart,
            "--namespace",
            namespace,
            "--values",
            "-",
        ];
        if !skip_crds {
            args.push("--include-crds");
        }
        let post_render = self.post_render_args(release, proxy, None);
        args.extend(post_render.iter().map(String::as_str));
        self.run_with(&args, GRACE * 2, Some(values)).await
    }

    /// Fetches a chart's dependencies into its `charts/` directory.
    pub async fn dependency_build(&self, chart: &Path) -> Result<(), Error> {
        let chart = chart.to_string_lossy();
        self.run(&["dependency", "build", &chart], GRACE * 2)
            .await
            .map(drop)
    }

    /// Downloads a chart from a Helm repository into `dir`; with credentials,
    /// through a repository entry of helm's own (the password goes on stdin).
    pub async fn pull(
        &self,
        repository: &str,
        name: &str,
        version: &str,
        dir: &Path,
        credentials: Option<(&str, &str)>,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Work {
            dir: dir.to_path_buf(),
            source,
        })?;
        let dest = dir.to_string_lossy();
        let Some((user, password)) = credentials else {
            return self
                .run(
                    &[
                        "pull",
                        name,
                        "--repo",
                        repository,
                        "--version",
                        version,
                        "--destination",
                        &dest,
                    ],
                    GRACE * 2,
                )
                .await
                .map(drop);
        };
        let alias = format!(
            "tidegate-{}",
            &crate::model::checksum::sha256_hex(repository.as_bytes())[..12]
        );
        let mut add = self.command(&[
            "repo",
            "add",
            &alias,
            repository,
            "--username",
            user,
            "--password-stdin",
            "--force-update",
        ]);
        add.stdin(Stdio::piped());
        let mut child = add.spawn().map_err(|source| self.missing(source))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(password.as_bytes()).await;
        }
        let output = tokio::time::timeout(GRACE, child.wait_with_output())
            .await
            .map_err(|_| Error::TimedOut {
                command: "repo add".into(),
                seconds: GRACE.as_secs(),
            })?
            .map_err(|source| Error::Missing {
                binary: self.binary.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Failed {
                command: "repo add".into(),
                message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let chart = format!("{alias}/{name}");
        self.run(
            &["pull", &chart, "--version", version, "--destination", &dest],
            GRACE * 2,
        )
        .await
        .map(drop)
    }
}

/// helm's stdout when it succeeded; else what it said, warnings left out.
fn finished(output: std::process::Output, command: String) -> Result<String, Error> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("WARNING:"))
        .collect();
    let message = message.join("; ");
    let message = message.strip_prefix("Error: ").unwrap_or(&message);
    Err(Error::Failed {
        command,
        message: message.chars().take(2000).collect(),
    })
}

/// Writes `input` to the child's stdin while it runs, then closes it:
/// helm reads it to the end.
fn feed(child: &mut tokio::process::Child, input: Option<&[u8]>) {
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let _ = stdin.write_all(&input).await;
        });
    }
}
