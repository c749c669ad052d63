//! Developer tasks: `cargo xtask <task>`.
//!
//!   controlplane    build the test control plane and helm (cached)
//!   cluster up      start the local control plane in the background
//!   cluster down    stop it
//!   demo            start it, sync examples/cluster-state into it, show the result
//!   test            build what the tests need, then run the whole test suite
//!   bench [--quick] tidegate beside its peers on 1,000 and 10,000 objects (--quick: 1,000)
//!   shape           check that src/ keeps one direction, short files and functions

mod bench;
#[path = "../../tests/controlplane/launch.rs"]
mod launch;
mod shape;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["controlplane"] => tools_dir().map(|dir| println!("{}", dir.display())),
        ["cluster", "up"] => cluster_up().map(|kubeconfig| println!("export KUBECONFIG={}", kubeconfig.display())),
        ["cluster", "down"] => cluster_down(),
        ["demo"] => demo(),
        ["test", rest @ ..] => test(rest),
        ["bench", rest @ ..] => bench::bench(rest),
        ["shape", rest @ ..] => shape::shape(rest),
        _ => Err("usage: cargo xtask <controlplane | cluster up | cluster down | demo | test [cargo test args] | bench [--quick] | shape>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

/// Builds the control plane and helm if not cached; returns their directory.
fn tools_dir() -> Result<PathBuf> {
    launch::build(&root())
}

fn cluster_dir() -> PathBuf {
    target_dir().join("cluster")
}

fn running_pid(dir: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(dir.join("pid")).ok()?;
    let pid = pid.trim().to_string();
    Path::new("/proc").join(&pid).exists().then_some(pid)
}

/// Starts the control plane in the background (or finds it running).
fn cluster_up() -> Result<PathBuf> {
    let dir = cluster_dir();
    let kubeconfig = dir.join("kubeconfig");
    if running_pid(&dir).is_some() && dir.join("ready").exists() {
        eprintln!(
            "the local control plane is already running ({})",
            dir.display()
        );
        return Ok(kubeconfig);
    }
    let bin = tools_dir()?.join("tidegate-controlplane");
    let started = Instant::now();
    start_cluster(&bin, &dir)?;
    eprintln!(
        "control plane ready in {:.1}s (logs in {}); stop it with `cargo xtask cluster down`",
        started.elapsed().as_secs_f64(),
        dir.join("logs").display()
    );
    Ok(kubeconfig)
}

/// Starts `tidegate-controlplane up` in `dir`, detached from this terminal;
/// returns its kubeconfig once ready.
fn start_cluster(bin: &Path, dir: &Path) -> Result<(PathBuf, std::process::Child)> {
    eprintln!("starting the local control plane in {}", dir.display());
    let child = launch::start(bin, dir, launch::Lifetime::Detached)?;
    Ok((dir.join("kubeconfig"), child))
}

fn cluster_down() -> Result<()> {
    let dir = cluster_dir();
    let Some(pid) = running_pid(&dir) else {
        eprintln!("the local control plane is not running");
        return Ok(());
    };
    run(Command::new("kill").args(["-TERM", &pid]))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new("/proc").join(&pid).exists() {
        if Instant::now() > deadline {
            return Err(format!("process {pid} did not stop within 30s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopped the local control plane");
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "tidegate demo")
        .env("GIT_AUTHOR_EMAIL", "demo@tidegate.invalid")
        .env("GIT_COMMITTER_NAME", "tidegate demo")
        .env("GIT_COMMITTER_EMAIL", "demo@tidegate.invalid"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let dest = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The repository URL the example HelmRelease names as its chart's.
const EXAMPLE_URL: &str = "https://git.example.com/org/cluster-state";

/// The main job on an embedded default: the bundled cluster-state repository
/// synced into the local control plane.
fn demo() -> Result<()> {
    let kubeconfig = cluster_up()?;
    run(cargo().args(["build", "--quiet", "--bin", "tidegate"]))?;

    // Serve examples/cluster-state as a Git repository, as a Git host would.
    let demo = target_dir().join("demo");
    let _ = std::fs::remove_dir_all(&demo);
    let work = demo.join("work");
    copy_dir(&root().join("examples/cluster-state"), &work)?;
    let url = format!("file://{}", demo.join("cluster-state.git").display());
    // A HelmRelease names the repository its chart is in: here, the demo's.
    let release = work.join("releases/web.yaml");
    let text = std::fs::read_to_string(&release).map_err(|e| e.to_string())?;
    std::fs::write(&release, text.replace(EXAMPLE_URL, &url)).map_err(|e| e.to_string())?;
    git(
        &demo,
        &[
            "init",
            "--quiet",
            "--bare",
            "-b",
            "main",
            "cluster-state.git",
        ],
    )?;
    git(&work, &["init", "--quiet", "-b", "main"])?;
    git(&work, &["add", "--all"])?;
    git(&work, &["commit", "--quiet", "-m", "cluster state"])?;
    git(
        &work,
        &[
            "push",
            "--quiet",
            demo.join("cluster-state.git").to_str().unwrap(),
            "main",
        ],
    )?;

    let tools = tools_dir()?;
    let kubectl = |args: &[&str]| -> Result<()> {
        println!("\n$ kubectl {}", args.join(" "));
        run(Command::new(tools.join("tidegate-controlplane"))
            .arg("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig))
    };
    // What installing tidegate does first: the HelmRelease CRD from deploy/.
    let crds = root().join("deploy/crds");
    kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()])?;
    let tidegate = target_dir().join("debug/tidegate");
    let helm = tools.join("helm");
    let helm_text = helm.display().to_string();
    let kustomize_text = tools.join("kustomize").display().to_string();
    let args = [
        "daemon",
        "--once",
        "--git-url",
        &url,
        "--git-branch",
        "main",
        "--helm-binary",
        &helm_text,
        "--kustomize-binary",
        &kustomize_text,
    ];
    println!("\n$ tidegate {}", args.join(" "));
    run(Command::new(&tidegate)
        .args(args)
        .env("KUBECONFIG", &kubeconfig))?;

    let kubectl_args = [
        "get",
        "namespaces,storageclasses,configmaps,deployments,services,cronjobs,pods",
        "--all-namespaces",
        "--selector",
        "app.kubernetes.io/managed-by=tidegate",
    ];
    kubectl(&kubectl_args)?;
    kubectl(&["get", "pods", "--namespace", "shop"])?;
    println!("\n$ helm list --all-namespaces");
    run(Command::new(&helm)
        .args(["list", "--all-namespaces"])
        .env("KUBECONFIG", &kubeconfig))?;
    kubectl(&[
        "get",
        "helmreleases,deployments,services,jobs",
        "--namespace",
        "demo",
    ])?;
    let bin = tools.join("tidegate-controlplane");

    println!(
        "\nThe control plane keeps running. To look around:\n  export KUBECONFIG={}\n  {} kubectl get all -A\n\
         Sync again (every object unchanged):\n  {} {}\nStop it:\n  cargo xtask cluster down",
        kubeconfig.display(),
        bin.display(),
        tidegate.display(),
        args.join(" ")
    );
    Ok(())
}

/// Debian packages the integration tests start servers from.
const TEST_PACKAGES: [&str; 8] = [
    "openssh-server",
    "openssh-client",
    "tinyproxy",
    "openssl",
    "python3",
    // Image automation: a distribution registry, and a client that pushes to it.
    "docker-registry",
    "skopeo",
    // OpenPGP keys whose signatures `git verify-commit` checks.
    "gnupg",
];

/// Installs the missing ones (as root, with apt-get), or says which to install.
fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        return Err(format!(
            "the tests need these Debian packages: sudo apt-get install {}",
            missing.join(" ")
        ));
    }
    eprintln!(
        "installing the Debian packages the tests need: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Everything the tests need, then the whole suite.
fn test(extra: &[&str]) -> Result<()> {
    shape::shape(&[])?;
    ensure_packages(&TEST_PACKAGES)?;
    tools_dir()?;
    // The in-cluster test runs the release binary, as the image holds it.
    run(cargo().args(["build", "--release", "--bin", "tidegate"]))?;
    let release = target_dir().join("release/tidegate");
    run(cargo()
        .args(["test", "--workspace"])
        .args(extra)
        .env("TIDEGATE_RELEASE_BINARY", release))
}
