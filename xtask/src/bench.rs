//! `cargo xtask bench`: tidegate beside the strongest peers on the same
//! generated repositories, on one control plane of its own, in one run: a
//! minimal server-side-apply client (the ceiling), Flux v2's apply engine,
//! `kubectl apply --server-side -R -f`, and tidegate once and as a running
//! daemon. Prints a table, then one `BENCH <figure> <number>` line per figure.
//!
//! Requests are counted by the API server itself (`apiserver_request_total`,
//! no dry-run, on the benchmark's resources), so every tool is measured the
//! same way; peak RSS comes from `wait4`, or `VmHWM` for the daemon.

mod automation;
mod kustomize;
mod trust;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, git, run, target_dir, tools_dir};

const NAMESPACES: usize = 10;

/// One measured run of a command.
struct Measured {
    wall: Duration,
    max_rss_kib: i64,
    writes: u64,
}

/// Runs a command to completion, returning its wall time and peak RSS.
fn measure(cmd: &mut Command) -> Result<(Duration, i64)> {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid out-pointers.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if waited != pid {
        return Err(format!("wait4 failed for {cmd:?}"));
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        return Err(format!("{cmd:?} failed:\n{stderr}"));
    }
    Ok((wall, usage.ru_maxrss))
}

struct Bench {
    controlplane: PathBuf,
    helm: PathBuf,
    kustomize: PathBuf,
    sops: PathBuf,
    kubeconfig: PathBuf,
    tidegate: PathBuf,
    /// `bench/peers`: the ceiling, Flux's engine, and the probes.
    peers: PathBuf,
    dir: PathBuf,
}

/// Builds `bench/peers` (Go 1.27, for Flux's engine) once per source.
fn peers_binary() -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let src = crate::root().join("bench/peers");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in ["go.mod", "go.sum", "main.go", "images.go"] {
        std::fs::read(src.join(file))
            .map_err(|e| format!("{}: {e}", src.join(file).display()))?
            .hash(&mut hasher);
    }
    let bin = target_dir().join(format!("bench-peers-{:016x}", hasher.finish()));
    if !bin.exists() {
        eprintln!(
            "bench: building bench/peers (Flux's fluxcd/pkg/ssa needs Go 1.27: GOTOOLCHAIN=go1.27.3)"
        );
        run(Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GOTOOLCHAIN", "go1.27.3"))?;
    }
    Ok(bin)
}

/// A daemon the bench runs, stopped when dropped.
struct RunningDaemon<'a> {
    bench: &'a Bench,
    child: std::process::Child,
    port: u16,
    sync_set: String,
}

impl RunningDaemon<'_> {
    fn metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("the daemon's metrics: {e}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }

    fn metric(&self, name: &str) -> Result<f64> {
        Ok(self
            .metrics()?
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0))
    }

    fn syncs(&self) -> Result<u64> {
        Ok(self.metric("tidegate_syncs_total{result=\"succeeded\"}")? as u64)
    }

    /// Waits for `n` successful syncs; the last one's duration, by the daemon.
    fn until_syncs(&self, n: u64) -> Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = self.child_status() {
                return Err(format!("the daemon exited ({status})"));
            }
            if self.syncs().unwrap_or(0) >= n {
                return Ok(Duration::from_secs_f64(
                    self.metric("tidegate_last_sync_duration_seconds")?,
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("the daemon made no {n} syncs in 10 minutes"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_status(&self) -> Option<String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(path).ok()?;
        stat.contains(") Z ").then(|| "a zombie".to_string())
    }

    /// `tidegate sync`: a resync of the same revision; its duration.
    fn resync(&self) -> Result<Duration> {
        let before = self.syncs()?;
        let out = Command::new(&self.bench.tidegate)
            .args(["sync", "--sync-set-name", &self.sync_set])
            .env("KUBECONFIG", &self.bench.kubeconfig)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "tidegate sync failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.until_syncs(before + 1)
    }

    fn peak_rss_kib(&self) -> Result<i64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| e.to_string())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmHWM for the daemon".to_string())
    }
}

impl Drop for RunningDaemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn peers(&self, engine: &str, tree: &Path, concurrency: usize, qps: f64) -> Command {
        let mut cmd = Command::new(&self.peers);
        cmd.args(["-engine", engine, "-dir"])
            .arg(tree)
            .args([
                "-concurrency",
                &concurrency.to_string(),
                "-qps",
                &qps.to_string(),
            ])
            .env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs a probe of `bench/peers`: its latencies, in milliseconds.
    fn probe(&self, args: &[&str]) -> Result<Vec<f64>> {
        let out = Command::new(&self.peers)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("the probe {args:?} failed"));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|micros| micros / 1000.0)
            .collect())
    }

    /// 100 pushes changing one ConfigMap, each announced by a webhook if
    /// given (port, secret); the latencies from push to applied.
    fn pushes(&self, repo: &Path, prefix: &str, webhook: Option<(u16, &str)>) -> Result<Vec<f64>> {
        let work = repo.join("work");
        let file = format!("{prefix}-0/obj-60.yaml");
        let ns = format!("{prefix}-0");
        let work_text = work.display().to_string();
        let mut args = vec![
            "-engine",
            "push",
            "-work",
            &work_text,
            "-file",
            &file,
            "-namespace",
            &ns,
            "-names",
            "obj-60",
            "-rounds",
            "100",
        ];
        let url;
        if let Some((port, secret)) = webhook {
            url = format!("http://127.0.0.1:{port}/hooks/generic");
            args.extend(["-webhook", url.as_str(), "-secret", secret]);
        }
        self.probe(&args)
    }

    /// Starts `tidegate daemon` on a repository (polling and periodic syncs
    /// an hour apart, so every sync measured is one the bench caused).
    fn daemon(&self, repo: &Path, sync_set: &str, extra: &[&str]) -> Result<RunningDaemon<'_>> {
        self.daemon_on(free_port()?, repo, sync_set, extra)
    }

    /// [`Bench::daemon`], listening on `port`.
    fn daemon_on(
        &self,
        port: u16,
        repo: &Path,
        sync_set: &str,
        extra: &[&str],
    ) -> Result<RunningDaemon<'_>> {
        let url = format!("file://{}", repo.join("repo.git").display());
        let child = Command::new(&self.tidegate)
            .args(["daemon", "--git-branch", "main", "--git-url", &url])
            .arg("--git-cache-dir")
            .arg(repo.join("daemon-cache"))
            .args(["--sync-set-name", sync_set])
            // Rounds sync the same objects under other sync-set names.
            .arg("--adopt")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--git-poll-interval", "1h", "--sync-interval", "1h"])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            // Its log, for when a figure is not what it should be.
            .stderr(
                std::fs::File::create(repo.join(format!("daemon-{sync_set}.log")))
                    .map_err(|e| e.to_string())?,
            )
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        let daemon = RunningDaemon {
            bench: self,
            child,
            port,
            sync_set: sync_set.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while daemon.metrics().is_err() {
            if Instant::now() > deadline {
                return Err("the daemon's HTTP API did not come up in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.controlplane);
        cmd.arg("kubectl").env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Mutating requests the API server has served for the benchmark's
    /// resources so far.
    fn server_writes(&self) -> Result<u64> {
        self.server_requests(&["APPLY", "PATCH", "POST", "PUT", "DELETE"])
    }

    /// Requests of these verbs the API server has served for the
    /// benchmark's resources so far (not dry-run, no subresource).
    fn server_requests(&self, verbs: &[&str]) -> Result<u64> {
        let out = self
            .kubectl()
            .args(["get", "--raw", "/metrics"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut total = 0.0;
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            let label = |name: &str| {
                line.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
            };
            let ours = matches!(
                label("resource"),
                "configmaps" | "deployments" | "services" | "namespaces"
            );
            if verbs.contains(&label("verb"))
                && ours
                && label("dry_run").is_empty()
                && label("subresource").is_empty()
            {
                total += line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        Ok(total as u64)
    }

    fn run(&self, cmd: &mut Command) -> Result<Measured> {
        let before = self.server_writes()?;
        let (wall, max_rss_kib) = measure(cmd)?;
        let writes = self.server_writes()? - before;
        Ok(Measured {
            wall,
            max_rss_kib,
            writes,
        })
    }

    fn tidegate_sync(&self, repo: &Path, sync_set: &str) -> Result<Measured> {
        self.tidegate_sync_with(repo, sync_set, &[])
    }

    fn tidegate_sync_with(&self, repo: &Path, sync_set: &str, extra: &[&str]) -> Result<Measured> {
        let url = format!("file://{}", repo.join("repo.git").display());
        let cache = repo.join("cache");
        self.run(
            Command::new(&self.tidegate)
                .args([
                    "daemon",
                    "--once",
                    "--git-branch",
                    "main",
                    "--git-url",
                    &url,
                ])
                .arg("--git-cache-dir")
                .arg(&cache)
                .args(["--sync-set-name", sync_set])
                .arg("--adopt")
                .args(extra)
                .env("KUBECONFIG", &self.kubeconfig),
        )
    }

    fn kubectl_apply(&self, tree: &Path) -> Result<Measured> {
        self.run(
            self.kubectl()
                .args(["apply", "--server-side", "-R", "-f"])
                .arg(tree),
        )
    }
}

/// Writes N objects (ConfigMaps, Deployments and Services in turn) across
/// 10 namespaces, one file each, plus the namespaces.
fn generate(tree: &Path, prefix: &str, objects: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(tree);
    for n in 0..NAMESPACES {
        let ns = format!("{prefix}-{n}");
        let dir = tree.join(&ns);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("namespace.yaml"),
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
        )
        .map_err(|e| e.to_string())?;
    }
    for i in 0..objects {
        let ns = format!("{prefix}-{}", i % NAMESPACES);
        let name = format!("obj-{i}");
        let text = match i % 3 {
            0 => format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  index: \"{i}\"\n  greeting: hello\n"
            ),
            // No replicas: the benchmark measures applying, not the
            // controllers and fake nodes behind it.
            1 => format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  replicas: 0\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: app\n        image: nginx:1.27\n        ports:\n        - containerPort: 80\n"
            ),
            _ => format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n    targetPort: 80\n"
            ),
        };
        std::fs::write(tree.join(&ns).join(format!("{name}.yaml")), text)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A Git repository (bare + work tree) holding `tree`.
fn repository(dir: &Path, tree: &Path) -> Result<()> {
    // A new repository: the Git caches of an earlier run go too, or a cold
    // sync would start from another history.
    for old in ["repo.git", "cache", "daemon-cache"] {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    git(
        dir,
        &["init", "--quiet", "--bare", "-b", "main", "repo.git"],
    )?;
    git(dir, &["clone", "--quiet", "repo.git", "work"])?;
    crate::copy_dir(tree, &work)?;
    commit(&work, "generated objects")
}

fn commit(work: &Path, message: &str) -> Result<()> {
    git(work, &["add", "--all"])?;
    git(work, &["commit", "--quiet", "-m", message])?;
    git(work, &["push", "--quiet", "origin", "HEAD:main"])
}

/// Changes one ConfigMap's data in a tree.
fn change_one(tree: &Path, prefix: &str) -> Result<()> {
    let file = tree.join(format!("{prefix}-0")).join("obj-0.yaml");
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    std::fs::write(&file, text.replace("greeting: hello", "greeting: changed"))
        .map_err(|e| e.to_string())
}

/// A port free on loopback now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: i64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

const USAGE: &str = "usage: cargo xtask bench [--quick | --automation | --kustomize | --trust]";

/// A part of the benchmark alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The 1,000-object half (and automation).
    Quick,
    /// Image automation alone.
    Automation,
    /// Kustomize roots alone.
    Kustomize,
    /// Commit signatures and SOPS alone.
    Trust,
}

pub fn bench(args: &[&str]) -> Result<()> {
    let only = match args {
        [] => None,
        ["--quick"] => Some(Only::Quick),
        ["--automation"] => Some(Only::Automation),
        ["--kustomize"] => Some(Only::Kustomize),
        ["--trust"] => Some(Only::Trust),
        _ => return Err(USAGE.into()),
    };
    let tools = tools_dir()?;
    let peers = peers_binary()?;
    run(crate::cargo().args(["build", "--quiet", "--release", "--bin", "tidegate"]))?;
    let dir = target_dir().join("bench");
    let cluster_dir = dir.join("cluster");
    let (kubeconfig, mut controlplane) =
        crate::start_cluster(&tools.join("tidegate-controlplane"), &cluster_dir)?;
    let bench = Bench {
        controlplane: tools.join("tidegate-controlplane"),
        helm: tools.join("helm"),
        kustomize: tools.join("kustomize"),
        sops: tools.join("sops"),
        kubeconfig,
        tidegate: target_dir().join("release/tidegate"),
        peers,
        dir: dir.clone(),
    };
    let result = run_all(&bench, only);
    let _ = controlplane.kill();
    let _ = controlplane.wait();
    println!("{}", result?);
    Ok(())
}

/// One figure of the table.
struct Figure {
    name: &'static str,
    what: String,
    value: String,
    baseline: String,
    /// The number the `BENCH` line carries.
    number: f64,
    target: String,
    met: bool,
}

fn ratio_figure(
    name: &'static str,
    what: &str,
    tg: Duration,
    peer: Duration,
    peer_name: &str,
    limit: f64,
) -> Figure {
    let ratio = tg.as_secs_f64() / peer.as_secs_f64();
    Figure {
        name,
        what: what.into(),
        value: secs(tg),
        baseline: format!("{} ({peer_name})", secs(peer)),
        number: ratio,
        target: format!("≤ {limit}x"),
        met: ratio <= limit,
    }
}

fn limit_figure(name: &'static str, what: &str, value: f64, unit: &str, limit: f64) -> Figure {
    Figure {
        name,
        what: what.into(),
        value: format!("{value:.1} {unit}").trim().to_string(),
        baseline: String::new(),
        number: value,
        target: format!("≤ {limit} {unit}").trim().to_string(),
        met: value <= limit,
    }
}

fn run_all(b: &Bench, only: Option<Only>) -> Result<String> {
    let mut figures = Vec::new();
    let mut out = String::new();
    if only.is_none() || only == Some(Only::Quick) {
        size(b, 1000, &mut figures, &mut out)?;
    }
    if only.is_none() {
        size(b, 10_000, &mut figures, &mut out)?;
        out.push_str(&helm_releases(b, 1000)?);
    }
    let alone = |part: Only| only.is_none_or(|o| o == part || o == Only::Quick);
    if alone(Only::Kustomize) {
        out.push_str(&kustomize::kustomize(b, &mut figures)?);
    }
    if alone(Only::Automation) {
        out.push_str(&automation::automation(b, &mut figures)?);
    }
    if alone(Only::Trust) {
        out.push_str(&trust::trust(b, &mut figures)?);
    }
    let _ = writeln!(
        out,
        "\n| figure | tidegate | baseline | ratio | target | met |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for f in &figures {
        let ratio = if f.baseline.is_empty() {
            String::new()
        } else {
            format!("{:.3}x", f.number)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {} | {} |",
            f.what,
            f.value,
            f.baseline,
            f.target,
            if f.met { "yes" } else { "no" }
        );
    }
    out.push('\n');
    for f in &figures {
        let _ = writeln!(out, "BENCH {} {:.3}", f.name, f.number);
    }
    Ok(out)
}

/// Every peer and tidegate on `objects` generated objects (each in
/// namespaces of its own), on the same control plane, in one run.
fn size(b: &Bench, objects: usize, figures: &mut Vec<Figure>, out: &mut String) -> Result<()> {
    let small = objects <= 1000;
    let k = objects / 1000;
    let tree = |tool: &str| -> Result<PathBuf> {
        let tree = b.dir.join(format!("{tool}{k}k-tree"));
        generate(&tree, &format!("{tool}{k}k"), objects)?;
        Ok(tree)
    };
    let total = objects + NAMESPACES;
    eprintln!("bench: {total} objects ({objects} + {NAMESPACES} namespaces)");

    // The ceiling and tidegate's cold sync take turns, each on objects of
    // its own, so neither gets the emptier API server; the medians count.
    // Whoever runs later meets a fuller etcd and controllers still busy with
    // the last run's Deployments: the order alternates.
    let rounds = if small { 3 } else { 2 };
    let (mut ceilings, mut colds) = (Vec::new(), Vec::new());
    let mut tg_repo = PathBuf::new();
    let mut set = String::new();
    let mut tg_cold = None;
    for round in 0..rounds {
        let ce_tree = tree(&format!("ce{round}-"))?;
        tg_repo = b.dir.join(format!("tg{round}-{k}k-repo"));
        repository(&tg_repo, &tree(&format!("tg{round}-"))?)?;
        set = format!("bench-once-{round}-{k}k");
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                eprintln!("bench: the ceiling: a minimal server-side-apply client, 16 at once");
                ceilings.push(b.run(&mut b.peers("ceiling", &ce_tree, 16, -1.0))?);
            } else {
                eprintln!("bench: tidegate daemon --once, cold");
                let cold = b.tidegate_sync(&tg_repo, &set)?;
                colds.push(cold.wall);
                tg_cold = Some(cold);
            }
        }
    }
    let mut tg_cold = tg_cold.expect("one round");
    tg_cold.wall = median(colds);
    let ceiling_wall = median(ceilings.iter().map(|m| m.wall).collect());
    let mut ceiling = ceilings.pop().expect("one round");
    ceiling.wall = ceiling_wall;
    eprintln!("bench: Flux's engine, 16 at once, unthrottled");
    let fx_tree = tree("fx")?;
    let flux = b.run(&mut b.peers("flux", &fx_tree, 16, -1.0))?;
    let flux_noop = b.run(&mut b.peers("flux", &fx_tree, 16, -1.0))?;
    // At 50 requests/s, 10,000 objects take Flux's defaults over 6 minutes.
    let flux_defaults = if small {
        eprintln!("bench: Flux's engine at its defaults (4 at once, 50 requests/s)");
        let fd_tree = tree("fd")?;
        let cold = b.run(&mut b.peers("flux", &fd_tree, 4, 50.0))?;
        Some((cold, b.run(&mut b.peers("flux", &fd_tree, 4, 50.0))?))
    } else {
        None
    };
    eprintln!("bench: kubectl apply --server-side");
    let kc_tree = tree("kc")?;
    let kubectl = b.kubectl_apply(&kc_tree)?;
    let kubectl_noop = b.kubectl_apply(&kc_tree)?;

    eprintln!("bench: tidegate daemon --once, no-op and one change");
    let tg_noop = b.tidegate_sync(&tg_repo, &set)?;
    change_one(&tg_repo.join("work"), &format!("tg{}-{k}k", rounds - 1))?;
    commit(&tg_repo.join("work"), "change one")?;
    let tg_one = b.tidegate_sync(&tg_repo, &set)?;

    eprintln!("bench: tidegate as a running daemon");
    let td = format!("td{k}k");
    let td_repo = b.dir.join(format!("{td}-repo"));
    repository(&td_repo, &tree("td")?)?;
    let daemon = b.daemon(&td_repo, &format!("bench-daemon-{k}k"), &[])?;
    let daemon_cold = daemon.until_syncs(1)?;
    let lists_before = b.server_requests(&["LIST"])?;
    let mut noops = Vec::new();
    for _ in 0..5 {
        noops.push(daemon.resync()?);
    }
    let lists = b.server_requests(&["LIST"])? - lists_before;
    let daemon_noop = median(noops);
    change_one(&td_repo.join("work"), &td)?;
    let writes_before = b.server_writes()?;
    let syncs = daemon.syncs()?;
    commit(&td_repo.join("work"), "change one")?;
    daemon.until_syncs(syncs + 1)?;
    // The state record is one write of its own.
    let one_change = (b.server_writes()? - writes_before).saturating_sub(1);
    let mut heal = Vec::new();
    let mut by_watch = Vec::new();
    let mut by_webhook = Vec::new();
    if small {
        eprintln!("bench: self-heal: 20 ConfigMaps edited by hand");
        let names: Vec<String> = (0..20).map(|i| format!("obj-{}", i * 30)).collect();
        heal = b.probe(&[
            "-engine",
            "selfheal",
            "-namespace",
            &format!("{td}-0"),
            "-names",
            &names.join(","),
        ])?;
        eprintln!("bench: 100 pushes, seen by the local watch");
        by_watch = b.pushes(&td_repo, &td, None)?;
    }
    let mut rss = daemon.peak_rss_kib()?;
    drop(daemon);
    if small {
        eprintln!("bench: 100 pushes, each announced by a webhook");
        let secret = "bench-webhook-secret";
        let _ = b
            .kubectl()
            .args(["delete", "secret", "bench-webhook", "--ignore-not-found"])
            .output();
        run(b.kubectl().args([
            "create",
            "secret",
            "generic",
            "bench-webhook",
            &format!("--from-literal=webhook-secret={secret}"),
        ]))?;
        let daemon = b.daemon(
            &td_repo,
            &format!("bench-daemon-{k}k"),
            &[
                "--git-watch",
                "false",
                "--webhook-secret-name",
                "bench-webhook",
            ],
        )?;
        daemon.until_syncs(1)?;
        by_webhook = b.pushes(&td_repo, &td, Some((daemon.port, secret)))?;
        rss = rss.max(daemon.peak_rss_kib()?);
    }

    let _ = writeln!(
        out,
        "\n{total} objects (ConfigMaps, Deployments, Services in {NAMESPACES} namespaces)\n"
    );
    let _ = writeln!(
        out,
        "| run | cold | no-op | one change | writes (cold / no-op / one change) | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let row = |out: &mut String,
               name: &str,
               cold: &Measured,
               noop: Option<&Measured>,
               one: Option<&Measured>| {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} / {} / {} | {} |",
            secs(cold.wall),
            noop.map_or("".into(), |m| secs(m.wall)),
            one.map_or("".into(), |m| secs(m.wall)),
            cold.writes,
            noop.map_or("".into(), |m| m.writes.to_string()),
            one.map_or("".into(), |m| m.writes.to_string()),
            mib(cold.max_rss_kib.max(noop.map_or(0, |m| m.max_rss_kib)))
        );
    };
    row(
        out,
        "ceiling (minimal SSA client, 16 at once)",
        &ceiling,
        None,
        None,
    );
    row(
        out,
        "Flux ssa engine, 16 at once, unthrottled",
        &flux,
        Some(&flux_noop),
        None,
    );
    if let Some((cold, noop)) = &flux_defaults {
        row(
            out,
            "Flux ssa engine, defaults (4 at once, 50/s)",
            cold,
            Some(noop),
            None,
        );
    }
    row(
        out,
        "kubectl apply --server-side -R -f",
        &kubectl,
        Some(&kubectl_noop),
        None,
    );
    row(
        out,
        "tidegate daemon --once",
        &tg_cold,
        Some(&tg_noop),
        Some(&tg_one),
    );
    let _ = writeln!(
        out,
        "| tidegate daemon (its sync metric) | {} | {} (median of 5; {lists} list requests) | ({one_change} object writes) | | {} |",
        secs(daemon_cold),
        ms(daemon_noop),
        mib(rss)
    );
    if small {
        let _ = writeln!(
            out,
            "\nSelf-heal ({} edits): p50 {:.0} ms. Push → applied over {} pushes: by the local watch p50 {:.0} ms, p99 {:.0} ms; by webhook p50 {:.0} ms, p99 {:.0} ms.",
            heal.len(),
            percentile(&heal, 50),
            by_watch.len(),
            percentile(&by_watch, 50),
            percentile(&by_watch, 99),
            percentile(&by_webhook, 50),
            percentile(&by_webhook, 99),
        );
    }

    if small {
        figures.push(ratio_figure(
            "cold_vs_ceiling",
            "cold, 1,000 objects, vs the ceiling",
            tg_cold.wall,
            ceiling.wall,
            "ceiling",
            1.1,
        ));
        figures.push(ratio_figure(
            "cold_vs_flux",
            "cold vs Flux's engine, 16 at once, unthrottled",
            tg_cold.wall,
            flux.wall,
            "Flux",
            1.0,
        ));
        if let Some((cold, _)) = &flux_defaults {
            figures.push(ratio_figure(
                "cold_vs_flux_defaults",
                "cold vs Flux's engine at its defaults",
                tg_cold.wall,
                cold.wall,
                "Flux defaults",
                1.0,
            ));
        }
        figures.push(ratio_figure(
            "cold_vs_kubectl",
            "cold vs kubectl",
            tg_cold.wall,
            kubectl.wall,
            "kubectl",
            1.0,
        ));
        figures.push(limit_figure(
            "daemon_noop_ms_1000",
            "running daemon, no-op resync, 1,000 objects",
            daemon_noop.as_secs_f64() * 1000.0,
            "ms",
            50.0,
        ));
        figures.push(limit_figure(
            "daemon_noop_lists",
            "list requests in 5 no-op resyncs",
            lists as f64,
            "",
            0.0,
        ));
        figures.push(limit_figure(
            "one_change_writes",
            "object writes for one change",
            one_change as f64,
            "",
            1.0,
        ));
        let mut all = by_watch.clone();
        all.extend(&by_webhook);
        figures.push(limit_figure(
            "selfheal_p50_ms",
            "self-heal, p50",
            percentile(&heal, 50),
            "ms",
            1000.0,
        ));
        figures.push(limit_figure(
            "push_p50_ms",
            "push → applied, p50 (watch and webhook)",
            percentile(&all, 50),
            "ms",
            150.0,
        ));
        figures.push(limit_figure(
            "push_p99_ms",
            "push → applied, p99 (watch and webhook)",
            percentile(&all, 99),
            "ms",
            500.0,
        ));
        figures.push(limit_figure(
            "rss_mib_1000",
            "daemon peak RSS, 1,000 objects",
            rss as f64 / 1024.0,
            "MiB",
            40.0,
        ));
    } else {
        figures.push(ratio_figure(
            "cold_vs_ceiling_10000",
            "cold, 10,000 objects, vs the ceiling",
            tg_cold.wall,
            ceiling.wall,
            "ceiling",
            1.1,
        ));
        figures.push(limit_figure(
            "daemon_noop_ms_10000",
            "running daemon, no-op resync, 10,000 objects",
            daemon_noop.as_secs_f64() * 1000.0,
            "ms",
            500.0,
        ));
        figures.push(limit_figure(
            "rss_mib_10000",
            "daemon peak RSS, 10,000 objects",
            rss as f64 / 1024.0,
            "MiB",
            150.0,
        ));
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `p`th percentile of latencies in milliseconds (nearest rank).
fn percentile(values: &[f64], p: usize) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// HelmReleases added to the benchmark repository.
const RELEASES: usize = 20;
/// No-op syncs measured of each repository; the median is reported.
const NOOP_RUNS: usize = 11;

/// The middle run, or the mean of the middle two.
fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    let n = runs.len();
    if n.is_multiple_of(2) {
        (runs[n / 2 - 1] + runs[n / 2]) / 2
    } else {
        runs[n / 2]
    }
}

/// The no-op sync of a repository with 20 HelmReleases (of the example
/// chart) beside the same repository without them; and the Helm revisions
/// the no-op syncs made (none, if no `helm upgrade` ran).
fn helm_releases(b: &Bench, objects: usize) -> Result<String> {
    let plain_tree = b.dir.join("plain-tree");
    let helm_tree = b.dir.join("helm-tree");
    generate(&plain_tree, "hp", objects)?;
    generate(&helm_tree, "hr", objects)?;
    let root = crate::root();
    crate::copy_dir(
        &root.join("examples/cluster-state/charts"),
        &helm_tree.join("charts"),
    )?;
    crate::copy_dir(&root.join("deploy/crds"), &helm_tree.join("crds"))?;
    let plain_repo = b.dir.join("plain-repo");
    let helm_repo = b.dir.join("helm-repo");
    let url = format!("file://{}", helm_repo.join("repo.git").display());
    std::fs::create_dir_all(helm_tree.join("releases")).map_err(|e| e.to_string())?;
    for i in 0..RELEASES {
        let ns = format!("hr-{}", i % NAMESPACES);
        std::fs::write(
            helm_tree.join("releases").join(format!("web-{i}.yaml")),
            format!(
                "apiVersion: helm.fluxcd.io/v1\nkind: HelmRelease\nmetadata:\n  name: web-{i}\n  namespace: {ns}\nspec:\n  chart:\n    git: {url}\n    ref: main\n    path: charts/web\n  values:\n    replicaCount: 0\n    hook: {{enabled: false}}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
    }
    repository(&plain_repo, &plain_tree)?;
    repository(&helm_repo, &helm_tree)?;
    let helm = b.helm.display().to_string();
    let with_helm = ["--helm-binary", helm.as_str()];
    eprintln!("bench: {RELEASES} HelmReleases, cold sync (installs them)");
    b.tidegate_sync(&plain_repo, "bench-plain")?;
    let cold = b.tidegate_sync_with(&helm_repo, "bench-helm", &with_helm)?;
    let revisions = || -> Result<u64> {
        let out = Command::new(&b.helm)
            .args(["list", "--all-namespaces", "-o", "json"])
            .env("KUBECONFIG", &b.kubeconfig)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Sum of each release's revision number.
        Ok(text
            .split("\"revision\":\"")
            .skip(1)
            .filter_map(|r| r.split('"').next()?.parse::<u64>().ok())
            .sum())
    };
    let before = revisions()?;
    eprintln!("bench: {RELEASES} HelmReleases, no-op syncs");
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..NOOP_RUNS {
        plain.push(b.tidegate_sync(&plain_repo, "bench-plain")?.wall);
        with.push(
            b.tidegate_sync_with(&helm_repo, "bench-helm", &with_helm)?
                .wall,
        );
    }
    let new_revisions = revisions()? - before;
    let (plain, with) = (median(plain), median(with));
    let ratio = with.as_secs_f64() / plain.as_secs_f64();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} objects, and the same with {RELEASES} HelmReleases (median of {NOOP_RUNS} no-op syncs)\n",
        objects + NAMESPACES
    );
    let _ = writeln!(
        out,
        "| scenario | without releases | with {RELEASES} releases | ratio | Helm revisions made |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| cold sync (installs) | | {} | | {before} |",
        secs(cold.wall)
    );
    let _ = writeln!(
        out,
        "| no-op resync | {} | {} | {ratio:.3}x | {new_revisions} |",
        secs(plain),
        secs(with)
    );
    let _ = writeln!(out, "\nBENCH helm_noop_overhead {:.3}", ratio - 1.0);
    let _ = writeln!(out, "BENCH helm_noop_revisions {new_revisions}");
    Ok(out)
}
