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
    let (done, finished) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let limit = run.max_output;
    let out_done = done.clone();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = stdout.take(limit + 1).read_to_end(&mut bytes);
        let over = bytes.len() as u64 > limit;
        let _ = out_done.send(over);
        read.map(|_| bytes)
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.take(MAX_STDERR).read_to_end(&mut bytes);
        bytes
    });
    drop(done);
    let outcome = match finished.recv_timeout(run.timeout) {
        Ok(true) => Some(Failure::TooLarge(limit)),
        Ok(false) => None,
        Err(_) => Some(Failure::TimedOut(run.timeout)),
    };
    if outcome.is_some() {
        kill_group(pid);
    }
    let status = child.wait();
    // The group is gone by now, or its pipes were closed on its own exit.
    kill_group(pid);
    let stdout = out.join().expect("a reader thread panicked");
    let stderr = err.join().expect("a reader thread panicked");
    if let Some(failure) = outcome {
        return Err(failure);
    }
    let status = status.map_err(|e| Failure::Missing(e.to_string()))?;
    if !status.success() {
        return Err(Failure::Failed {
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    stdout.map_err(|e| Failure::Missing(format!("cannot read its output: {e}")))
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
