//! Building and starting the test control plane, for `cargo xtask` and the
//! integration tests alike: both include this file (it needs std only), and
//! each uses one way of running it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the control plane may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Builds the control plane and helm from the Go module proxy unless cached
/// (`tests/controlplane/build.sh` under `root`); returns their directory.
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let script = root.join("tests/controlplane/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err("building the control plane failed (see above)".into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// How long a started control plane lives.
pub enum Lifetime {
    /// Until the process that started it exits (its stdin closes).
    Parent,
    /// Until stopped: its own process group, past the terminal's Ctrl-C.
    Detached,
}

/// Starts `tidegate-controlplane up` in `dir` (emptied first), logging to
/// `dir/supervisor.log`; returns once it is ready (`dir/kubeconfig`).
pub fn start(bin: &Path, dir: &Path, lifetime: Lifetime) -> Result<Child, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("up")
        .arg("--dir")
        .arg(dir)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    match lifetime {
        Lifetime::Parent => {
            cmd.arg("--exit-on-stdin-close").stdin(Stdio::piped());
        }
        Lifetime::Detached => {
            use std::os::unix::process::CommandExt as _;
            cmd.stdin(Stdio::null()).process_group(0);
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    while !dir.join("ready").exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the control plane exited ({status}) before it was ready:\n{}",
                log_tail(&log_path)
            ));
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = child.kill();
            return Err(format!(
                "the control plane was not ready after {}s:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child)
}

/// The last 4,000 bytes of a log.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(4000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
