//! Trust: commit signatures verified in `all` mode over a chain of 1,000
//! SSH-signed and 1,000 OpenPGP-signed commits (made by git with
//! ssh-keygen and gpg), as the sync's own `verified` line counts them; and
//! a cold render of 1,000 objects of which 100 are Secrets encrypted by the
//! real sops, against the same objects in plain text, in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Bench, Figure, generate, median, ratio_figure, repository};
use crate::Result;

const SIGNED: usize = 1000;
const OBJECTS: usize = 1000;
const ENCRYPTED: usize = 100;
const RUNS: usize = 11;
const EMAIL: &str = "demo@tidegate.invalid";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The SSH and OpenPGP keys, and the keys directory tidegate reads.
fn keys(dir: &Path) -> Result<String> {
    let gnupg = dir.join("gnupg");
    let keys = dir.join("keys");
    for d in [&gnupg, &keys] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let ssh = dir.join("signer");
    let _ = std::fs::remove_file(&ssh);
    let _ = std::fs::remove_file(dir.join("signer.pub"));
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", EMAIL, "-f"])
        .arg(&ssh))?;
    let public = std::fs::read_to_string(dir.join("signer.pub")).map_err(|e| e.to_string())?;
    std::fs::write(
        keys.join("allowed_signers"),
        format!("{EMAIL} namespaces=\"git\" {public}"),
    )
    .map_err(|e| e.to_string())?;
    let gpg = |args: &[&str]| {
        run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args))
    };
    gpg(&[
        "--quick-gen-key",
        &format!("Bench <{EMAIL}>"),
        "ed25519",
        "sign",
        "never",
    ])?;
    let armored = gpg(&["--armor", "--export", EMAIL])?;
    std::fs::write(keys.join("bench.asc"), armored).map_err(|e| e.to_string())?;
    Ok(keys.display().to_string())
}

/// An empty commit on top, signed with SSH or OpenPGP.
fn signed_commit(dir: &Path, work: &Path, ssh: bool, message: &str) -> Result<()> {
    let mut cmd = Command::new("git");
    cmd.current_dir(work)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", EMAIL)
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", EMAIL)
        .env("GNUPGHOME", dir.join("gnupg"));
    if ssh {
        cmd.args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", dir.join("signer").display()));
    } else {
        cmd.args(["-c", &format!("user.signingkey={EMAIL}")]);
    }
    run(cmd.args(["commit", "--quiet", "--allow-empty", "-S", "-m", message]))?;
    Ok(())
}

/// `tidegate daemon --once` verifying every commit; the `verified` line's
/// count and microseconds.
fn verifying_sync(b: &Bench, repo: &Path, keys: &str) -> Result<(usize, u64)> {
    let url = format!("file://{}", repo.join("repo.git").display());
    let stderr = Command::new(&b.tidegate)
        .args([
            "daemon",
            "--once",
            "--git-branch",
            "main",
            "--git-url",
            &url,
        ])
        .arg("--git-cache-dir")
        .arg(repo.join("cache"))
        .args(["--sync-set-name", "bench-trust", "--adopt"])
        .args([
            "--git-verify-signatures-mode",
            "all",
            "--git-verify-signatures-keys",
            keys,
        ])
        .env("KUBECONFIG", &b.kubeconfig)
        .env("RUST_LOG", "warn,tidegate::source::verify=debug")
        .output()
        .map_err(|e| e.to_string())?;
    let text = without_colours(&String::from_utf8_lossy(&stderr.stderr));
    if !stderr.status.success() {
        return Err(format!("the verifying sync failed: {text}"));
    }
    let line = text
        .lines()
        .find(|l| l.contains("verified") && l.contains("commits="))
        .ok_or_else(|| format!("no verified line in: {text}"))?;
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .ok_or_else(|| format!("no {name} in {line}"))
    };
    Ok((field("commits=")? as usize, field("us=")?))
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn signatures(b: &Bench, dir: &Path, figures: &mut Vec<Figure>) -> Result<String> {
    let keys = keys(dir)?;
    let tree = dir.join("signed-tree");
    generate(&tree, "tv", 10)?;
    let repo = dir.join("signed-repo");
    repository(&repo, &tree)?;
    let work = repo.join("work");
    let push = || crate::git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
    // The first sync judges the head alone: a signed one.
    signed_commit(dir, &work, true, "signed start")?;
    push()?;
    verifying_sync(b, &repo, &keys)?;
    eprintln!(
        "bench: {} signed commits (git with ssh-keygen and gpg)",
        2 * SIGNED
    );
    for i in 0..2 * SIGNED {
        signed_commit(dir, &work, i % 2 == 0, &format!("signed {i}"))?;
    }
    push()?;
    eprintln!("bench: tidegate daemon --once, every commit verified");
    let (commits, us) = verifying_sync(b, &repo, &keys)?;
    if commits != 2 * SIGNED {
        return Err(format!("{commits} commits verified, not {}", 2 * SIGNED));
    }
    let per_s = commits as f64 / (us.max(1) as f64 / 1e6);
    figures.push(Figure {
        name: "verify_commits_per_s",
        what: format!("commits verified per second, `all` mode, {SIGNED} SSH + {SIGNED} OpenPGP"),
        value: format!("{per_s:.0} /s"),
        baseline: String::new(),
        number: per_s,
        target: "≥ 2000 /s".into(),
        met: per_s >= 2000.0,
    });
    Ok(format!(
        "\nsignatures: {commits} commits ({SIGNED} SSH, {SIGNED} OpenPGP) verified in {:.1} ms: {per_s:.0} commits/s",
        us as f64 / 1000.0
    ))
}

fn secret(ns: &str, i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: secret-{i}\n  namespace: {ns}\ntype: Opaque\nstringData:\n  password: value-{i}\n  user: user-{i}\n"
    )
}

fn sops_render(b: &Bench, dir: &Path, figures: &mut Vec<Figure>) -> Result<String> {
    let identity = dir.join("sops-keys/cluster.agekey");
    std::fs::create_dir_all(identity.parent().unwrap()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&identity);
    run(Command::new("age-keygen").arg("-o").arg(&identity))?;
    let recipient = run(Command::new("age-keygen").arg("-y").arg(&identity))?;
    let (plain, encrypted) = (dir.join("plain-secrets"), dir.join("encrypted-secrets"));
    generate(&plain, "sr", OBJECTS - ENCRYPTED)?;
    generate(&encrypted, "sr", OBJECTS - ENCRYPTED)?;
    eprintln!("bench: {ENCRYPTED} Secrets encrypted by sops");
    for i in 0..ENCRYPTED {
        let text = secret(&format!("sr-{}", i % super::NAMESPACES), i);
        let name = format!("secret-{i}.yaml");
        std::fs::write(plain.join(&name), &text).map_err(|e| e.to_string())?;
        let file = encrypted.join(&name);
        std::fs::write(&file, &text).map_err(|e| e.to_string())?;
        run(Command::new(&b.sops)
            .args(["encrypt", "--in-place", "--age", recipient.trim()])
            .args(["--encrypted-regex", "^(data|stringData)$"])
            .arg(&file))?;
    }
    let validate = |tree: &Path, keys: bool| -> Result<Duration> {
        let mut cmd = Command::new(&b.tidegate);
        cmd.arg("validate").arg(tree);
        if keys {
            cmd.arg("--sops-keys").arg(identity.parent().unwrap());
        }
        let started = std::time::Instant::now();
        run(&mut cmd)?;
        Ok(started.elapsed())
    };
    eprintln!("bench: tidegate validate, cold, {RUNS} times each, taking turns");
    let (mut plain_runs, mut encrypted_runs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        plain_runs.push(validate(&plain, false)?);
        encrypted_runs.push(validate(&encrypted, true)?);
    }
    let (plain_t, encrypted_t) = (median(plain_runs), median(encrypted_runs));
    figures.push(ratio_figure(
        "sops_render_overhead",
        "cold render, 1,000 objects with 100 SOPS-encrypted Secrets vs plain text",
        encrypted_t,
        plain_t,
        "plain text",
        1.2,
    ));
    Ok(format!(
        "\nsops: {OBJECTS} objects of which {ENCRYPTED} SOPS-encrypted Secrets render in {:.1} ms (median of {RUNS}) against {:.1} ms in plain text",
        encrypted_t.as_secs_f64() * 1000.0,
        plain_t.as_secs_f64() * 1000.0
    ))
}

pub fn trust(b: &Bench, figures: &mut Vec<Figure>) -> Result<String> {
    let dir = b.dir.join("trust");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut out = signatures(b, &dir, figures)?;
    let _ = write!(out, "{}", sops_render(b, &dir, figures)?);
    out.push('\n');
    Ok(out)
}
