//! Snapshots of what users read: the lines `daemon --once` prints, `status`
//! and `diff` (text and JSON), `validate`, and the errors for bad input. A
//! change to any of them shows as a snapshot diff to review (`cargo insta
//! review`), not as a test that still passes because it looks for one line.
//!
//! What varies between runs is masked by filters: the temp directories, the
//! namespace and sync set the test generates (the objects in it have fixed
//! names), Git revisions, checksums, timestamps and durations.

use std::process::{Command, Output};

use crate::support::{GitRepo, cm_yaml, ns_yaml, stderr, stdout, tidegate, unique};

/// How a transcript shows stdout.
#[derive(Clone, Copy)]
enum Order {
    AsPrinted,
    /// Line by line, sorted, as `sync_once.rs` compares them: within a stage
    /// the order objects are applied in is not promised.
    Sorted,
}

/// What a user sees of one run: the command, its exit code, stdout, stderr.
fn transcript(command: &str, out: &Output, order: Order) -> String {
    let printed = stdout(out);
    let shown = match order {
        Order::AsPrinted => printed,
        Order::Sorted => {
            let mut lines: Vec<&str> = printed.lines().collect();
            lines.sort_unstable();
            lines.iter().map(|l| format!("{l}\n")).collect()
        }
    };
    let code = out.status.code().map_or_else(
        || "none (killed by a signal)".to_string(),
        |c| c.to_string(),
    );
    format!(
        "$ tidegate {command}\nexit code: {code}\n--- stdout\n{}--- stderr\n{}",
        ended(&shown),
        ended(&stderr(out))
    )
}

/// The text with a final newline (and a mark when there is none at all).
fn ended(text: &str) -> String {
    if text.is_empty() {
        "(nothing)\n".to_string()
    } else if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// `text` as a regex that matches it literally (what `regex::escape` does).
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The filters, in the order they apply: the literals a test generated
/// (with what to show instead), then what varies in every run.
fn filters(generated: &[(&str, &str)]) -> Vec<(String, String)> {
    let temp = std::env::temp_dir();
    let temp = temp.to_string_lossy();
    let mut rules = vec![
        // The colours of log lines.
        (r"\x1b\[[0-9;]*m".to_string(), String::new()),
        (
            // tempfile's directories: `/tmp/.tmpAbC123`.
            format!(r"{}/\.tmp[0-9A-Za-z]+", literal(temp.trim_end_matches('/'))),
            "[tmp]".to_string(),
        ),
    ];
    rules.extend(
        generated
            .iter()
            .map(|(text, shown)| (literal(text), (*shown).to_string())),
    );
    let varying = [
        // RFC 3339, as the status records `started` and `finished`.
        (
            r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
            "[timestamp]",
        ),
        // sha256 checksums (tidegate.dev/checksum), then Git revisions, then
        // the 12 characters of one a summary line shows.
        (r"\b[0-9a-f]{64}\b", "[checksum]"),
        (r"\b[0-9a-f]{40}\b", "[revision]"),
        (r"\brevision [0-9a-f]{12}\b", "revision [short-revision]"),
        (
            r#"\brevision="[0-9a-f]{12}""#,
            r#"revision="[short-revision]""#,
        ),
        // Durations: `12ms`, `1.2s`.
        (r"\b\d+(\.\d+)?(ns|µs|us|ms|s)\b", "[duration]"),
    ];
    rules.extend(
        varying
            .iter()
            .map(|(regex, shown)| ((*regex).to_string(), (*shown).to_string())),
    );
    rules
}

/// Asserts each named snapshot with `rules` applied.
fn assert_snapshots(rules: &[(String, String)], snapshots: &[(&str, String)]) {
    let filters: Vec<(&str, &str)> = rules
        .iter()
        .map(|(regex, shown)| (regex.as_str(), shown.as_str()))
        .collect();
    insta::with_settings!({filters => filters}, {
        for (name, text) in snapshots {
            insta::assert_snapshot!(*name, text);
        }
    });
}

/// Namespace `ns` with ConfigMaps `settings` (holding `value`) and `other`.
fn write_app(repo: &GitRepo, ns: &str, value: &str) {
    repo.write("namespace.yaml", &ns_yaml(ns)).write(
        "app.yaml",
        &format!(
            "{}---\n{}",
            cm_yaml(ns, "settings", value),
            cm_yaml(ns, "other", "1")
        ),
    );
}

/// One small repository through a user's day: the first sync, its status,
/// a change in Git shown by diff, then a commit with bad input synced and
/// its status. One control plane, one repository, several commands.
#[tokio::test]
async fn sync_status_and_diff_print_what_they_did() {
    let ns = unique("snap");
    let repo = GitRepo::new();
    let set = repo.sync_set.clone();
    let rules = filters(&[(ns.as_str(), "[namespace]"), (set.as_str(), "[sync-set]")]);
    let mut shots: Vec<(&str, String)> = Vec::new();

    write_app(&repo, &ns, "1");
    repo.push("first");
    let out = repo.sync_once(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    shots.push((
        "once_first_sync",
        transcript("daemon --once", &out, Order::Sorted),
    ));

    let out = tidegate(&["status", "--sync-set-name", &set]);
    assert!(out.status.success(), "{}", stderr(&out));
    shots.push(("status_text", transcript("status", &out, Order::AsPrinted)));
    let out = tidegate(&["status", "--sync-set-name", &set, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    shots.push((
        "status_json",
        transcript("status -o json", &out, Order::AsPrinted),
    ));

    // A change in Git, not synced yet: diff of the checkout shows it.
    write_app(&repo, &ns, "2");
    repo.push("second");
    let work = repo.work.to_str().expect("a UTF-8 temp path");
    let out = tidegate(&["diff", work, "--sync-set-name", &set]);
    assert_eq!(out.status.code(), Some(1), "changes: {}", stderr(&out));
    shots.push((
        "diff_text",
        transcript("diff [work tree]", &out, Order::AsPrinted),
    ));
    let out = tidegate(&["diff", work, "--sync-set-name", &set, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "changes: {}", stderr(&out));
    shots.push((
        "diff_json",
        transcript("diff [work tree] -o json", &out, Order::AsPrinted),
    ));

    // Bad input in the next commit: a YAML syntax error and a second copy
    // of `other`. The rest (the change to `settings`) is applied.
    repo.write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
    )
    .write("copy.yaml", &cm_yaml(&ns, "other", "1"));
    repo.push("bad input");
    let out = repo.sync_once(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    shots.push((
        "once_bad_input",
        transcript("daemon --once", &out, Order::Sorted),
    ));
    let out = tidegate(&["status", "--sync-set-name", &set]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    shots.push((
        "status_text_after_bad_input",
        transcript("status", &out, Order::AsPrinted),
    ));

    assert_snapshots(&rules, &shots);
}

/// `tidegate validate` needs no cluster: run without the control plane.
fn validate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .arg("validate")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run tidegate validate")
}

/// A directory with a couple of bad files beside good ones: validate lists
/// every problem at once; a path that is not there is one more.
#[test]
fn validate_names_every_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |path: &str, text: &str| std::fs::write(dir.path().join(path), text).unwrap();
    // Fixed names: nothing here reaches a cluster.
    write(
        "good.yaml",
        &format!(
            "{}---\n{}",
            ns_yaml("shop"),
            cm_yaml("shop", "settings", "1")
        ),
    );
    write("notes.yaml", "title: not a Kubernetes object\n");
    write(
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
    );
    write("twice-a.yaml", &cm_yaml("shop", "twice", "1"));
    write("twice-b.yaml", &cm_yaml("shop", "twice", "2"));
    write(
        "unnamed.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: shop}\n",
    );
    write(
        "removed.yaml",
        "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: old, namespace: shop}\n",
    );
    let root = dir.path().to_str().expect("a UTF-8 temp path");

    let out = validate(&[root]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let bad_files = transcript("validate [dir]", &out, Order::AsPrinted);
    let out = validate(&[root, "--git-path", "nowhere"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let missing_path = transcript("validate [dir] --git-path nowhere", &out, Order::AsPrinted);

    assert_snapshots(
        &filters(&[]),
        &[
            ("validate_bad_files", bad_files),
            ("validate_missing_path", missing_path),
        ],
    );
}
