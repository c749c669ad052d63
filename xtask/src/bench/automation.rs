//! Image automation against Debian's `docker-registry`: 100 automated
//! Deployments, each image with 1,000 tags in the registry (one in 20 a
//! `main-` tag their filter passes, each with an image of its own). The
//! registry's own access log counts the requests: the first scan, and the
//! first after a restart on the kept cache; `bench/peers -engine
//! imagepush` times registry push → notification → commit → applied; the
//! daemon's peak RSS beside the same daemon with scanning off.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Bench, Figure, free_port, limit_figure, percentile, repository};
use crate::{Result, run};

const IMAGES: usize = 100;
const TAGS: usize = 1000;
/// One tag in this many passes the filter (`main-*`).
const EVERY: usize = 20;
const PUSHES: usize = 20;
const NAMESPACE: &str = "bench-automation";
const HOOK_SECRET: &str = "bench-registry-hook-secret";

struct Registry {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests the registry logged, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Requests {
    pages: usize,
    manifests: usize,
    blobs: usize,
}

impl Requests {
    fn total(&self) -> usize {
        self.pages + self.manifests + self.blobs
    }
}

impl std::ops::Sub for Requests {
    type Output = Requests;
    fn sub(self, o: Requests) -> Requests {
        Requests {
            pages: self.pages - o.pages,
            manifests: self.manifests - o.manifests,
            blobs: self.blobs - o.blobs,
        }
    }
}

impl Registry {
    fn start(root: &Path, hook_port: u16) -> Result<Registry> {
        let port = free_port()?;
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n\
                 notifications:\n  endpoints:\n    - name: tidegate\n      url: http://127.0.0.1:{hook_port}/hooks/registry/distribution\n      \
                 headers: {{Authorization: [Bearer {HOOK_SECRET}]}}\n      timeout: 2s\n      threshold: 10\n      backoff: 200ms\n",
                root.join("data").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = root.join("access.log");
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap_or_default()])
            .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start docker-registry: {e}"))?;
        let registry = Registry { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("the registry did not listen in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(registry)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Requests {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut r = Requests::default();
        for line in text.lines().filter(|l| l.contains("\"GET /v2/")) {
            if line.contains("/tags/list") {
                r.pages += 1;
            } else if line.contains("/manifests/") {
                r.manifests += 1;
            } else if line.contains("/blobs/") {
                r.blobs += 1;
            }
        }
        r
    }
}

/// 100 Deployments automated within `main-*`, each at its oldest tag.
fn tree(dir: &Path, registry: &str) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut text = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    std::fs::write(dir.join("namespace.yaml"), &text).map_err(|e| e.to_string())?;
    for n in 0..IMAGES {
        text = format!(
            "# app {n}: automated within main-*
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{n:03}
  namespace: {NAMESPACE}
  annotations:
    fluxcd.io/automated: \"true\"
    fluxcd.io/tag.app: glob:main-*
spec:
  replicas: 0
  selector: {{matchLabels: {{app: app-{n:03}}}}}
  template:
    metadata: {{labels: {{app: app-{n:03}}}}}
    spec:
      containers:
      - name: app
        image: {registry}/bench/app-{n:03}:main-0000
"
        );
        std::fs::write(dir.join(format!("app-{n:03}.yaml")), &text).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn head_subject(repo: &Path) -> String {
    Command::new("git")
        .args(["log", "-1", "--format=%s", "main"])
        .current_dir(repo.join("repo.git"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("bench: {what} did not happen in {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(super) fn automation(b: &Bench, figures: &mut Vec<Figure>) -> Result<String> {
    crate::ensure_packages(&["docker-registry"])?;
    let dir = b.dir.join("automation");
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("registry");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    eprintln!("bench: a registry of {IMAGES} images × {TAGS} tags");
    let data = root.join("data").display().to_string();
    let (images, tags, every) = (IMAGES.to_string(), TAGS.to_string(), EVERY.to_string());
    b.probe(&[
        "-engine",
        "registryfixture",
        "-registry-root",
        &data,
        "-images",
        &images,
        "-tags",
        &tags,
        "-every",
        &every,
    ])?;
    let port = free_port()?;
    let registry = Registry::start(&root, port)?;
    let host = registry.host();
    let repo = dir.join("repo");
    tree(&dir.join("tree"), &host)?;
    repository(&repo, &dir.join("tree"))?;
    let _ = b
        .kubectl()
        .args([
            "delete",
            "secret",
            "bench-registry-hook",
            "--ignore-not-found",
        ])
        .output();
    run(b.kubectl().args([
        "create",
        "secret",
        "generic",
        "bench-registry-hook",
        &format!("--from-literal=webhook-secret={HOOK_SECRET}"),
    ]))?;
    let sync_set = "bench-automation";

    eprintln!("bench: the daemon with image scanning off");
    let plain = b.daemon_on(port, &repo, sync_set, &["--registry-disable-scanning"])?;
    plain.until_syncs(1)?;
    let rss_plain = plain.peak_rss_kib()?;
    drop(plain);

    let cache = dir.join("registry-cache.json").display().to_string();
    let args = [
        "--automation-interval",
        "1h",
        "--registry-insecure-host",
        &host,
        "--registry-cache-file",
        &cache,
        "--registry-rps",
        "1000",
        "--registry-burst",
        "100",
        "--webhook-secret-name",
        "bench-registry-hook",
    ];
    eprintln!("bench: the first scan: {IMAGES} images, one commit");
    let before = registry.requests();
    let started = Instant::now();
    let daemon = b.daemon_on(port, &repo, sync_set, &args)?;
    until(
        "the first automation commit",
        Duration::from_secs(600),
        || head_subject(&repo).starts_with(&format!("Auto-release multiple ({IMAGES}) images")),
    )?;
    let first_commit = started.elapsed();
    daemon.until_syncs(2)?;
    let first = registry.requests() - before;
    let rss = daemon.peak_rss_kib()?;
    drop(daemon);

    eprintln!("bench: restarted on the kept cache");
    let before = registry.requests();
    let daemon = b.daemon_on(port, &repo, sync_set, &args)?;
    until(
        "the first cycle after the restart",
        Duration::from_secs(300),
        || {
            daemon
                .metric("tidegate_automation_cycles_total")
                .is_ok_and(|n| n >= 1.0)
        },
    )?;
    let rescan = registry.requests() - before;

    eprintln!("bench: {PUSHES} registry pushes, each announced by a notification");
    let rounds = PUSHES.to_string();
    let latencies = b.probe(&[
        "-engine",
        "imagepush",
        "-registry",
        &host,
        "-namespace",
        NAMESPACE,
        "-images",
        &images,
        "-rounds",
        &rounds,
    ])?;
    drop(daemon);
    let passing = IMAGES * TAGS.div_ceil(EVERY);
    let bound = first.pages + 2 * passing;
    let flux_v1 = first.pages + 2 * IMAGES * TAGS;
    let cache_mib = (rss - rss_plain).max(0) as f64 / 1024.0;
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nImage automation: {IMAGES} images × {TAGS} tags ({passing} pass the filters), Debian's docker-registry\n"
    );
    let _ = writeln!(
        out,
        "| scan | tag-list pages | manifests | config blobs | all requests | Flux v1's algorithm (a manifest and a config per tag) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| first (commit after {:.1} s) | {} | {} | {} | {} | {flux_v1} |",
        first_commit.as_secs_f64(),
        first.pages,
        first.manifests,
        first.blobs,
        first.total()
    );
    let _ = writeln!(
        out,
        "| after a restart | {} | {} | {} | {} | {flux_v1} |",
        rescan.pages,
        rescan.manifests,
        rescan.blobs,
        rescan.total()
    );
    let _ = writeln!(
        out,
        "\nRegistry push → applied over {PUSHES} pushes: p50 {p50:.0} ms, p99 {p99:.0} ms. Peak RSS {} with scanning, {} without.",
        super::mib(rss),
        super::mib(rss_plain)
    );
    figures.push(limit_figure(
        "automation_first_scan_requests",
        "first scan: registry requests (≤ pages + a manifest and a config per passing tag)",
        first.total() as f64,
        "",
        bound as f64,
    ));
    figures.push(limit_figure(
        "automation_rescan_blob_requests",
        "scan after a restart: config blobs read",
        rescan.blobs as f64,
        "",
        0.0,
    ));
    figures.push(limit_figure(
        "automation_push_to_applied_p50_ms",
        "registry push → applied, p50",
        p50,
        "ms",
        1000.0,
    ));
    figures.push(limit_figure(
        "automation_push_to_applied_p99_ms",
        "registry push → applied, p99",
        p99,
        "ms",
        3000.0,
    ));
    figures.push(limit_figure(
        "automation_cache_mib",
        "peak RSS added by automation (100,000 tags)",
        cache_mib,
        "MiB",
        20.0,
    ));
    Ok(out)
}
