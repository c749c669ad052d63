//! `cargo xtask bench`: tidegate against `kubectl apply --server-side -R -f`
//! on a generated repository, on a control plane of its own. Prints a table.
//!
//! Writes are counted by the API server itself (`apiserver_request_total`,
//! mutating verbs, no dry-run, on the benchmark's resources), so both tools
//! are measured the same way; peak RSS comes from `wait4`.

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
    kubeconfig: PathBuf,
    tidegate: PathBuf,
    dir: PathBuf,
}

impl Bench {
    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.controlplane);
        cmd.arg("kubectl").env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Mutating requests the API server has served for the benchmark's
    /// resources so far.
    fn server_writes(&self) -> Result<u64> {
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
            let mutating = matches!(label("verb"), "APPLY" | "PATCH" | "POST" | "PUT" | "DELETE");
            let ours = matches!(
                label("resource"),
                "configmaps" | "deployments" | "services" | "namespaces"
            );
            if mutating && ours && label("dry_run").is_empty() && label("subresource").is_empty() {
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
    let _ = std::fs::remove_dir_all(dir.join("repo.git"));
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

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(kib: i64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn bench(args: &[&str]) -> Result<()> {
    let objects: usize = args
        .first()
        .map_or(Ok(1000), |a| a.parse())
        .map_err(|_| "usage: cargo xtask bench [N] [LARGE_N]")?;
    let large: usize = args
        .get(1)
        .map_or(Ok(10_000), |a| a.parse())
        .map_err(|_| "usage: cargo xtask bench [N] [LARGE_N]")?;
    let tools = tools_dir()?;
    run(crate::cargo().args(["build", "--quiet", "--release", "--bin", "tidegate"]))?;
    let dir = target_dir().join("bench");
    let cluster_dir = dir.join("cluster");
    let (kubeconfig, mut controlplane) =
        crate::start_cluster(&tools.join("tidegate-controlplane"), &cluster_dir)?;
    let bench = Bench {
        controlplane: tools.join("tidegate-controlplane"),
        helm: tools.join("helm"),
        kubeconfig,
        tidegate: target_dir().join("release/tidegate"),
        dir: dir.clone(),
    };
    let result = run_all(&bench, objects, large);
    let _ = controlplane.kill();
    let _ = controlplane.wait();
    let table = result?;
    println!("{table}");
    Ok(())
}

fn run_all(b: &Bench, objects: usize, large: usize) -> Result<String> {
    let mut out = String::new();
    let tg_tree = b.dir.join("tidegate-tree");
    let kc_tree = b.dir.join("kubectl-tree");
    generate(&tg_tree, "tg", objects)?;
    generate(&kc_tree, "kc", objects)?;
    let tg_repo = b.dir.join("tidegate-repo");
    repository(&tg_repo, &tg_tree)?;
    let total = objects + NAMESPACES;
    eprintln!("bench: {total} objects ({objects} + {NAMESPACES} namespaces)");

    eprintln!("bench: cold sync");
    let tg_cold = b.tidegate_sync(&tg_repo, "bench")?;
    let kc_cold = b.kubectl_apply(&kc_tree)?;
    eprintln!("bench: no-op resync");
    let tg_noop = b.tidegate_sync(&tg_repo, "bench")?;
    let kc_noop = b.kubectl_apply(&kc_tree)?;
    eprintln!("bench: one object changed");
    change_one(&tg_repo.join("work"), "tg")?;
    commit(&tg_repo.join("work"), "change one")?;
    change_one(&kc_tree, "kc")?;
    let tg_one = b.tidegate_sync(&tg_repo, "bench")?;
    let kc_one = b.kubectl_apply(&kc_tree)?;

    let _ = writeln!(
        out,
        "\n{total} objects (ConfigMaps, Deployments, Services in {NAMESPACES} namespaces)\n"
    );
    let _ = writeln!(
        out,
        "| scenario | tidegate | kubectl apply --server-side | ratio | tidegate writes | kubectl writes | tidegate peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (name, tg, kc) in [
        ("cold sync", &tg_cold, &kc_cold),
        ("no-op resync", &tg_noop, &kc_noop),
        ("one object changed", &tg_one, &kc_one),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.3}x | {} | {} | {} |",
            secs(tg.wall),
            secs(kc.wall),
            tg.wall.as_secs_f64() / kc.wall.as_secs_f64(),
            tg.writes,
            kc.writes,
            mib(tg.max_rss_kib)
        );
    }

    out.push_str(&helm_releases(b, objects)?);

    if large > 0 {
        let big_tree = b.dir.join("large-tree");
        generate(&big_tree, "big", large)?;
        let big_repo = b.dir.join("large-repo");
        repository(&big_repo, &big_tree)?;
        eprintln!("bench: {large} objects, cold sync");
        let cold = b.tidegate_sync(&big_repo, "bench-large")?;
        eprintln!("bench: {large} objects, no-op resync");
        let noop = b.tidegate_sync(&big_repo, "bench-large")?;
        let _ = writeln!(out, "\n{} objects\n", large + NAMESPACES);
        let _ = writeln!(out, "| scenario | tidegate | writes | peak RSS |");
        let _ = writeln!(out, "|---|---|---|---|");
        let _ = writeln!(
            out,
            "| cold sync | {} | {} | {} |",
            secs(cold.wall),
            cold.writes,
            mib(cold.max_rss_kib)
        );
        let _ = writeln!(
            out,
            "| no-op resync | {} | {} | {} |",
            secs(noop.wall),
            noop.writes,
            mib(noop.max_rss_kib)
        );
    }
    Ok(out)
}

/// HelmReleases added to the benchmark repository.
const RELEASES: usize = 20;
/// No-op syncs measured of each repository; the median is reported.
const NOOP_RUNS: usize = 11;

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
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
