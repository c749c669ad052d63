//! Running a generator (kustomize, or a `.flux.yaml` command) as a closed
//! process: no shell, a clean environment, its own process group, a
//! deadline, and its output read within a byte limit.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Most bytes of a failing command's standard error kept (its first line
/// is what is shown).
const MAX_STDERR: u64 = 64 * 1024;

/// One command to run: the program, its arguments, where, and the only
/// environment it gets.
#[derive(Debug, Clone)]
pub struct Run {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_output: u64,
}

/// Why a run gave no output to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The program could not be started (not installed, not executable).
    Missing(String),
    TimedOut(Duration),
    /// More than this many bytes on standard output.
    TooLarge(u64),
    /// It exited unsuccessfully; its standard error as it wrote it.
    Failed {
        status: String,
        stderr: String,
    },
}

/// Runs `run` to its end or its deadline, whichever is first; on the
/// deadline (or past the output limit) its whole process group is killed.
pub fn run(run: &Run) -> Result<Vec<u8>, Failure> {
    let mut command = Command::new(&run.program);
    command
        .args(&run.args)
        .current_dir(&run.dir)
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| Failure::Missing(format!("cannot run {}: {e}", run.program.display())))?;
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + run.timeout;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    // The readers send what they read; none is waited for past the
    // deadline (a process that left the group may hold a pipe open).
    let (out_tx, out_rx) = mpsc::channel();
    let (err_tx, err_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let limit = run.max_output;
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = stdout.take(limit + 1).read_to_end(&mut bytes);
        let _ = out_tx.send(read.map(|_| bytes));
    });
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.take(MAX_STDERR).read_to_end(&mut bytes);
        let _ = err_tx.send(bytes);
    });
    // Reaped by a thread of its own, so that waiting has a deadline too.
    let (status_tx, status_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let stop = |failure: Failure| {
        kill_group(pid);
        // Killed, it is reaped at once.
        let _ = status_rx.recv_timeout(Duration::from_secs(1));
        Err(failure)
    };
    let stdout = match out_rx.recv_timeout(left()) {
        Ok(Ok(bytes)) if bytes.len() as u64 > limit => return stop(Failure::TooLarge(limit)),
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return stop(Failure::Missing(format!("cannot read its output: {e}"))),
        Err(_) => return stop(Failure::TimedOut(run.timeout)),
    };
    // Its output is complete; it has until the deadline to exit.
    let status = match status_rx.recv_timeout(left()) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return stop(Failure::Missing(e.to_string())),
        Err(_) => return stop(Failure::TimedOut(run.timeout)),
    };
    // Whatever it left behind in its group goes with it.
    kill_group(pid);
    if !status.success() {
        let stderr = err_rx.recv_timeout(left()).unwrap_or_default();
        return Err(Failure::Failed {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    Ok(stdout)
}

fn kill_group(pid: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the
    // child leads; it touches no memory of ours.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// A program named without a directory, found on PATH as a shell would;
/// one named with a relative directory, from where tidegate runs (a
/// command runs elsewhere).
pub fn on_path(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return std::path::absolute(program).unwrap_or_else(|_| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, max_output: u64) -> Result<Vec<u8>, Failure> {
        run(&Run {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            dir: std::env::temp_dir(),
            env: vec![("ONLY".into(), "this".into())],
            timeout,
            max_output,
        })
    }

    #[test]
    fn a_run_gets_a_clean_environment_and_its_output() {
        let out = sh(
            "echo \"$ONLY ${HOME:-no-home}\"",
            Duration::from_secs(10),
            100,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "this no-home\n");
    }

    #[test]
    fn deadline_output_limit_and_failure_are_told_apart() {
        // A child that keeps the pipe open is killed with its group.
        let slow = sh("sleep 30 & sleep 30", Duration::from_millis(300), 100);
        assert_eq!(slow, Err(Failure::TimedOut(Duration::from_millis(300))));
        // One that closes its output and stays, and one that leaves the
        // group holding the pipe: neither holds the caller past the
        // deadline (30 s would be a hang).
        let started = std::time::Instant::now();
        let closed = sh("exec >&-; sleep 30", Duration::from_millis(300), 100);
        assert_eq!(closed, Err(Failure::TimedOut(Duration::from_millis(300))));
        let escaped = sh(
            "setsid sleep 30 & echo started",
            Duration::from_millis(300),
            100,
        );
        assert_eq!(escaped, Err(Failure::TimedOut(Duration::from_millis(300))));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        let big = sh("yes", Duration::from_secs(10), 1000);
        assert_eq!(big, Err(Failure::TooLarge(1000)));
        match sh("echo nope >&2; exit 3", Duration::from_secs(10), 100) {
            Err(Failure::Failed { stderr, status }) => {
                assert_eq!(stderr, "nope\n");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("{other:?}"),
        }
        let missing = run(&Run {
            program: PathBuf::from("/nonexistent/kustomize"),
            args: vec![],
            dir: std::env::temp_dir(),
            env: vec![],
            timeout: Duration::from_secs(1),
            max_output: 1,
        });
        assert!(matches!(missing, Err(Failure::Missing(_))), "{missing:?}");
    }

    #[test]
    fn a_relative_program_is_found_from_where_tidegate_runs() {
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            on_path(Path::new("bin/kustomize")),
            here.join("bin/kustomize")
        );
        assert_eq!(
            on_path(Path::new("/usr/bin/env")),
            Path::new("/usr/bin/env")
        );
        assert!(
            on_path(Path::new("sh")).is_absolute(),
            "sh is found on PATH"
        );
    }
}
