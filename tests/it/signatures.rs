//! Commit signatures made by the real tools (git with gpg, git with
//! `ssh-keygen -Y sign`), judged by tidegate and by `git verify-commit`;
//! and syncs held at the last verified revision on the real control plane.

use std::path::{Path, PathBuf};
use std::process::Command;

use tidegate::source::verify::{self, Keys};

use crate::support::{
    GitRepo, cm_yaml, configmap, create_secret, ns_yaml, status_json, stderr, unique,
};

/// Runs `program`; its stdout as text, trimmed.
fn run(program: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = crate::support::run_ok(program, dir, args, env);
    String::from_utf8_lossy(&out).trim().to_string()
}

/// The keys and signing programs of the corpus, in a directory of their own.
struct Signers {
    dir: tempfile::TempDir,
}

impl Signers {
    fn new() -> Signers {
        let signers = Signers {
            dir: tempfile::tempdir().unwrap(),
        };
        for home in ["keys", "mallory", "trusted"] {
            let home = signers.path(home);
            std::fs::create_dir_all(&home).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        signers.gpg(
            "keys",
            &[
                "--quick-gen-key",
                "Alice <alice@example.com>",
                "ed25519",
                "sign",
                "never",
            ],
        );
        signers.gpg(
            "keys",
            &[
                "--quick-gen-key",
                "Gone <gone@example.com>",
                "ed25519",
                "sign",
                "never",
            ],
        );
        // Made in 2020, valid for a year: expired now.
        signers.gpg(
            "keys",
            &[
                "--faked-system-time",
                "20200101T000000",
                "--quick-gen-key",
                "Old <old@example.com>",
                "ed25519",
                "sign",
                "1y",
            ],
        );
        signers.gpg(
            "mallory",
            &[
                "--quick-gen-key",
                "Mallory <alice@example.com>",
                "ed25519",
                "sign",
                "never",
            ],
        );
        let old_gpg = signers.path("old-gpg");
        std::fs::write(
            &old_gpg,
            "#!/bin/sh\nexec gpg --faked-system-time 20200601T000000 \"$@\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&old_gpg, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["alice", "mallory", "carol"] {
            let file = signers.path(&format!("{name}-ssh"));
            run(
                "ssh-keygen",
                signers.dir.path(),
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    &format!("{name}@example.com"),
                    "-f",
                    file.to_str().unwrap(),
                ],
                &[],
            );
        }
        let allowed = format!(
            "alice@example.com namespaces=\"git\" {}\ncarol@example.com valid-before=\"20200101\" {}\n",
            signers.ssh_public("alice"),
            signers.ssh_public("carol")
        );
        std::fs::write(signers.path("allowed_signers"), allowed).unwrap();
        signers
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn gpg(&self, home: &str, args: &[&str]) -> String {
        let home = self.path(home);
        let mut all = vec!["--batch", "--pinentry-mode", "loopback", "--passphrase", ""];
        all.extend_from_slice(args);
        run(
            "gpg",
            self.dir.path(),
            &all,
            &[("GNUPGHOME", home.to_str().unwrap())],
        )
    }

    fn fingerprint(&self, home: &str, uid: &str) -> String {
        let listed = self.gpg(home, &["--with-colons", "--list-keys", uid]);
        listed
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .expect("a fingerprint")
    }

    fn ssh_public(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}-ssh.pub")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Revokes Gone's key with the certificate gpg made with it, and gives
    /// the trusted keyring (the one `git verify-commit` reads) every public
    /// key but Mallory's.
    fn publish(&self) -> String {
        let gone = self.fingerprint("keys", "gone@example.com");
        let certificate =
            std::fs::read_to_string(self.path(&format!("keys/openpgp-revocs.d/{gone}.rev")))
                .unwrap();
        std::fs::write(
            self.path("gone.rev"),
            certificate.replace(":-----BEGIN", "-----BEGIN"),
        )
        .unwrap();
        self.gpg(
            "keys",
            &["--import", self.path("gone.rev").to_str().unwrap()],
        );
        let public = self.gpg("keys", &["--armor", "--export"]);
        std::fs::write(self.path("trusted.asc"), &public).unwrap();
        self.gpg(
            "trusted",
            &["--import", self.path("trusted.asc").to_str().unwrap()],
        );
        public
    }

    /// The keys as tidegate reads them from a Secret.
    fn entries(&self, openpgp: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("team.asc".into(), openpgp.as_bytes().to_vec()),
            (
                "allowed_signers".into(),
                std::fs::read(self.path("allowed_signers")).unwrap(),
            ),
        ]
    }
}

/// How a corpus commit is made.
enum Sign<'a> {
    None,
    /// With the OpenPGP key of this user ID, from this keyring, by this gpg.
    OpenPgp(&'a str, &'a str, &'a str),
    /// With the SSH key of this name.
    Ssh(&'a str),
}

/// Commits `files` in `repo`'s work tree as `email`, signed as `sign`
/// says; its SHA.
fn commit_files(
    repo: &GitRepo,
    signers: &Signers,
    email: &str,
    sign: Sign<'_>,
    files: &[(&str, String)],
) -> String {
    for (file, text) in files {
        repo.write(file, text);
    }
    run("git", &repo.work, &["add", "--all"], &[]);
    let file = files.first().map_or("nothing", |(f, _)| f);
    let home = signers.path("keys");
    let mut args: Vec<String> = Vec::new();
    let mut env = vec![
        ("GIT_AUTHOR_NAME", "Someone".to_string()),
        ("GIT_AUTHOR_EMAIL", email.to_string()),
        ("GIT_COMMITTER_NAME", "Someone".to_string()),
        ("GIT_COMMITTER_EMAIL", email.to_string()),
        ("GNUPGHOME", home.display().to_string()),
    ];
    match sign {
        Sign::None => {}
        Sign::OpenPgp(uid, keyring, program) => {
            env.push(("GNUPGHOME", signers.path(keyring).display().to_string()));
            args.extend([
                "-c".into(),
                format!("user.signingkey={uid}"),
                "-c".into(),
                format!("gpg.program={program}"),
            ]);
        }
        Sign::Ssh(name) => {
            let key = signers.path(&format!("{name}-ssh"));
            args.extend([
                "-c".into(),
                "gpg.format=ssh".into(),
                "-c".into(),
                format!("user.signingkey={}", key.display()),
            ]);
        }
    }
    args.extend([
        "commit".into(),
        "--quiet".into(),
        "-m".into(),
        format!("change {file}"),
    ]);
    if !matches!(sign, Sign::None) {
        args.push("-S".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run("git", &repo.work, &args, &env);
    run("git", &repo.work, &["rev-parse", "HEAD"], &[])
}

/// Commits a change to `file`, as [`commit_files`].
fn commit(repo: &GitRepo, signers: &Signers, email: &str, sign: Sign<'_>, file: &str) -> String {
    commit_files(repo, signers, email, sign, &[(file, unique("content"))])
}

/// An unsigned commit on a branch `side`, merged into `main` by Alice with
/// a signed merge (SSH, or else OpenPGP): the unsigned commit and the merge.
fn unsigned_side_merged(repo: &GitRepo, signers: &Signers, ssh: bool) -> (String, String) {
    run(
        "git",
        &repo.work,
        &["checkout", "--quiet", "-b", "side"],
        &[],
    );
    let side = commit(repo, signers, "alice@example.com", Sign::None, "side");
    run("git", &repo.work, &["checkout", "--quiet", "main"], &[]);
    let key = signers.path("alice-ssh").display().to_string();
    let signing: Vec<String> = match ssh {
        true => vec![
            "-c".into(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!("user.signingkey={key}"),
        ],
        false => vec!["-c".into(), "user.signingkey=alice@example.com".into()],
    };
    let mut args: Vec<&str> = vec![
        "-c",
        "user.name=Alice",
        "-c",
        "user.email=alice@example.com",
    ];
    args.extend(signing.iter().map(String::as_str));
    args.extend([
        "merge",
        "--quiet",
        "--no-ff",
        "-S",
        "-m",
        "merge side",
        "side",
    ]);
    let home = signers.path("keys").display().to_string();
    run("git", &repo.work, &args, &[("GNUPGHOME", home.as_str())]);
    (side, run("git", &repo.work, &["rev-parse", "HEAD"], &[]))
}

/// `git verify-commit`'s verdict, with the trusted keyring and the allowed
/// signers: `Ok` with the principal it names for an SSH signature.
fn git_verdict(repo: &GitRepo, signers: &Signers, commit: &str) -> Result<String, String> {
    let out = Command::new("git")
        .args([
            "-c",
            &format!(
                "gpg.ssh.allowedSignersFile={}",
                signers.path("allowed_signers").display()
            ),
        ])
        .args(["verify-commit", commit])
        .current_dir(&repo.work)
        .env("GNUPGHOME", signers.path("trusted"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(said);
    }
    let principal = said
        .split("signature for ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    Ok(principal)
}

#[test]
fn tidegate_judges_each_commit_of_the_corpus_as_git_verify_commit_does() {
    let signers = Signers::new();
    let repo = GitRepo::new();
    let alice = "alice@example.com";
    let keys = Sign::OpenPgp;
    let mut corpus: Vec<(&str, String, bool)> = Vec::new();
    let mut add = |name, sha, good| corpus.push((name, sha, good));
    add(
        "good OpenPGP",
        commit(&repo, &signers, alice, keys(alice, "keys", "gpg"), "a"),
        true,
    );
    add(
        "unsigned",
        commit(&repo, &signers, alice, Sign::None, "b"),
        false,
    );
    add(
        "unknown OpenPGP key",
        commit(&repo, &signers, alice, keys(alice, "mallory", "gpg"), "c"),
        false,
    );
    let old_gpg = signers.path("old-gpg").display().to_string();
    add(
        "expired key",
        commit(
            &repo,
            &signers,
            "old@example.com",
            keys("old@example.com", "keys", &old_gpg),
            "d",
        ),
        false,
    );
    add(
        "revoked key",
        commit(
            &repo,
            &signers,
            "gone@example.com",
            keys("gone@example.com", "keys", "gpg"),
            "e",
        ),
        false,
    );
    // Changed after signing: the message differs, the signature is the same.
    let signed = commit(&repo, &signers, alice, keys(alice, "keys", "gpg"), "f");
    let raw = run("git", &repo.work, &["cat-file", "commit", &signed], &[]);
    let tampered = repo.object(
        "commit",
        format!("{}\n", raw.replace("change f", "change F")).as_bytes(),
    );
    add("tampered OpenPGP", tampered, false);
    // A signed merge of an unsigned commit.
    let (side, merge) = unsigned_side_merged(&repo, &signers, false);
    add("signed merge", merge, true);
    add("its unsigned parent", side, false);
    add(
        "good SSH",
        commit(&repo, &signers, alice, Sign::Ssh("alice"), "h"),
        true,
    );
    add(
        "SSH key allowed for another principal",
        commit(&repo, &signers, "bob@example.com", Sign::Ssh("alice"), "i"),
        false,
    );
    add(
        "unknown SSH key",
        commit(&repo, &signers, alice, Sign::Ssh("mallory"), "j"),
        false,
    );
    add(
        "SSH key no longer valid",
        commit(
            &repo,
            &signers,
            "carol@example.com",
            Sign::Ssh("carol"),
            "k",
        ),
        false,
    );
    let signed = commit(&repo, &signers, alice, Sign::Ssh("alice"), "l");
    let raw = run("git", &repo.work, &["cat-file", "commit", &signed], &[]);
    let tampered = repo.object(
        "commit",
        format!("{}\n", raw.replace("change l", "change L")).as_bytes(),
    );
    add("tampered SSH", tampered, false);

    let public = signers.publish();
    let entries = signers.entries(&public);
    let keys = Keys::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    let git_repo = git2::Repository::open(&repo.work).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (name, sha, good) in &corpus {
        let oid = git2::Oid::from_str(sha).unwrap();
        let ours = verify::verify_commit(&git_repo, oid, &keys, now);
        let email = git_repo
            .find_commit(oid)
            .unwrap()
            .committer()
            .email()
            .unwrap()
            .to_string();
        // git accepts an SSH key for whichever principal lists it;
        // tidegate also asks that the principal be the committer.
        let git = git_verdict(&repo, &signers, sha)
            .map(|principal| principal.is_empty() || principal == email);
        assert_eq!(
            ours.is_ok(),
            git == Ok(true),
            "{name} ({sha}): tidegate says {ours:?}, git verify-commit {git:?}"
        );
        assert_eq!(ours.is_ok(), *good, "{name}: {ours:?}");
    }
    // The signer is named by its key.
    let (_, good, _) = &corpus[0];
    let signer =
        verify::verify_commit(&git_repo, git2::Oid::from_str(good).unwrap(), &keys, now).unwrap();
    assert_eq!(signer.name, "Alice <alice@example.com>");
    assert_eq!(
        signer.fingerprint,
        signers.fingerprint("keys", "alice@example.com")
    );
    let reason = |i: usize| {
        verify::verify_commit(
            &git_repo,
            git2::Oid::from_str(&corpus[i].1).unwrap(),
            &keys,
            now,
        )
        .unwrap_err()
    };
    assert_eq!(reason(1), "the commit is not signed");
    assert!(reason(3).contains("expired"), "{}", reason(3));
    assert!(reason(4).contains("revoked"), "{}", reason(4));
    assert!(reason(5).contains("does not match"), "{}", reason(5));
    assert!(reason(9).contains("as bob@example.com"), "{}", reason(9));
}

/// Pushes the work tree's head to `main`, forced when `force`.
fn push(repo: &GitRepo, force: bool) {
    let mut args = vec!["push", "--quiet", "origin", "HEAD:main"];
    if force {
        args.push("--force");
    }
    run("git", &repo.work, &args, &[]);
}

#[tokio::test]
async fn an_unverified_commit_holds_the_sync_at_the_last_verified_revision() {
    let signers = Signers::new();
    let public = signers.publish();
    let keys = tempfile::tempdir().unwrap();
    for (name, bytes) in signers.entries(&public) {
        std::fs::write(keys.path().join(name), bytes).unwrap();
    }
    let keys_dir = keys.path().to_str().unwrap();
    let ns = unique("verify");
    let repo = GitRepo::new();
    let alice = "alice@example.com";
    let app = |value: &str| {
        vec![
            ("ns.yaml", ns_yaml(&ns)),
            ("app.yaml", cm_yaml(&ns, "settings", value)),
        ]
    };
    let value = || async {
        configmap(&ns, "settings")
            .await
            .and_then(|c| c.data)
            .and_then(|d| d.get("value").cloned())
    };
    let head_mode = [
        "--git-verify-signatures-mode",
        "head",
        "--git-verify-signatures-keys",
        keys_dir,
    ];

    let one = commit_files(&repo, &signers, alice, Sign::Ssh("alice"), &app("one"));
    push(&repo, false);
    let out = repo.sync_once(&head_mode);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = status_json(&repo.sync_set);
    assert_eq!(status["revision"], one.as_str());
    assert_eq!(status["signed_by"]["name"], alice, "{status}");
    assert_eq!(status["signed_by"]["format"], "ssh");
    let shown = crate::support::tidegate(&["status", "--sync-set-name", &repo.sync_set]);
    assert!(
        crate::support::stdout(&shown).contains("signed by: alice@example.com (SSH key SHA256:"),
        "{}",
        crate::support::stdout(&shown)
    );

    // Unsigned: nothing of it is applied, and the record says why.
    let two = commit_files(&repo, &signers, alice, Sign::None, &app("two"));
    push(&repo, false);
    let out = repo.sync_once(&head_mode);
    assert!(!out.status.success(), "an unverified head fails the sync");
    assert_eq!(value().await.as_deref(), Some("one"));
    let status = status_json(&repo.sync_set);
    assert_eq!(status["revision"], one.as_str(), "{status}");
    assert_eq!(status["unverified"]["commit"], two.as_str());
    assert_eq!(
        status["unverified"]["author"],
        "Someone <alice@example.com>"
    );
    assert_eq!(status["unverified"]["reason"], "the commit is not signed");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "commit {} by Someone <alice@example.com> is not verified",
            &two[..12]
        )),
        "{message}"
    );
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(crate::support::client().await, "default");
    let said = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains(&two[..12]) && m.contains("is not verified"))
        });
    assert!(said, "a Warning Event names the unverified commit");

    // A signed commit on top: in head mode, sync resumes.
    let three = commit_files(
        &repo,
        &signers,
        alice,
        Sign::OpenPgp(alice, "keys", "gpg"),
        &app("three"),
    );
    push(&repo, false);
    let out = repo.sync_once(&head_mode);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(value().await.as_deref(), Some("three"));
    assert_eq!(
        status_json(&repo.sync_set)["signed_by"]["name"],
        "Alice <alice@example.com>"
    );

    // Flux v1's switch (every commit), keys from a Secret: a signed commit
    // on top of an unsigned one does not vouch for it.
    let secret = unique("verify-keys");
    create_secret(&secret, serde_json::json!({"team.asc": public, "allowed_signers": std::fs::read_to_string(signers.path("allowed_signers")).unwrap()})).await;
    let all = [
        "--git-verify-signatures",
        "--git-verify-signatures-secret",
        &secret,
    ];
    let four = commit_files(&repo, &signers, alice, Sign::None, &app("four"));
    commit_files(&repo, &signers, alice, Sign::Ssh("alice"), &app("five"));
    push(&repo, false);
    let out = repo.sync_once(&all);
    assert!(!out.status.success());
    assert_eq!(value().await.as_deref(), Some("three"));
    let status = status_json(&repo.sync_set);
    assert_eq!(status["revision"], three.as_str());
    assert_eq!(status["unverified"]["commit"], four.as_str());

    // The same changes, every commit signed, force-pushed: synced.
    run(
        "git",
        &repo.work,
        &["reset", "--quiet", "--hard", &three],
        &[],
    );
    commit_files(&repo, &signers, alice, Sign::Ssh("alice"), &app("four"));
    let five = commit_files(&repo, &signers, alice, Sign::Ssh("alice"), &app("five"));
    push(&repo, true);
    let out = repo.sync_once(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(value().await.as_deref(), Some("five"));
    assert_eq!(status_json(&repo.sync_set)["revision"], five.as_str());

    // A force-push of an unsigned commit in its place does not make it trusted.
    run(
        "git",
        &repo.work,
        &["reset", "--quiet", "--hard", "HEAD~1"],
        &[],
    );
    let six = commit_files(&repo, &signers, alice, Sign::None, &app("six"));
    push(&repo, true);
    let out = repo.sync_once(&all);
    assert!(!out.status.success());
    assert_eq!(value().await.as_deref(), Some("five"));
    let status = status_json(&repo.sync_set);
    assert_eq!(status["revision"], five.as_str());
    assert_eq!(status["unverified"]["commit"], six.as_str());
}

#[test]
fn all_mode_judges_what_a_merge_brings_and_first_parent_mode_trusts_the_merge() {
    let signers = Signers::new();
    let repo = GitRepo::new();
    let alice = "alice@example.com";
    let start = commit(&repo, &signers, alice, Sign::Ssh("alice"), "a");
    let (unsigned, merge) = unsigned_side_merged(&repo, &signers, true);
    let head = commit(&repo, &signers, alice, Sign::Ssh("alice"), "c");
    let entries = signers.entries("");
    let keys = Keys::from_entries(
        entries
            .iter()
            .filter(|(k, _)| k == "allowed_signers")
            .map(|(k, v)| (k.as_str(), v.as_slice())),
    )
    .unwrap();
    let git_repo = git2::Repository::open(&repo.work).unwrap();
    let oid = |s: &str| git2::Oid::from_str(s).unwrap();
    let policy = |mode| verify::Policy {
        mode,
        keys: std::sync::Arc::new(keys.clone()),
        base: Some(start.clone()),
        cache: Default::default(),
    };
    let all = policy(verify::Mode::All);
    let verdict = all.check(&git_repo, oid(&head)).unwrap();
    assert_eq!(
        verdict.revision,
        oid(&start),
        "held at the last verified revision"
    );
    assert_eq!(verdict.unverified.as_ref().unwrap().commit, unsigned);
    let first_parent = policy(verify::Mode::FirstParent);
    let verdict = first_parent.check(&git_repo, oid(&head)).unwrap();
    assert_eq!(verdict.revision, oid(&head));
    assert_eq!(verdict.unverified, None);
    assert_eq!(verdict.signer.unwrap().name, alice);
    // Each commit is judged once: a second look at the same head judges none.
    let judged = first_parent.cache.len();
    assert_eq!(judged, 2, "the merge and the head: {merge}, {head}");
    first_parent.check(&git_repo, oid(&head)).unwrap();
    assert_eq!(first_parent.cache.len(), judged);
    // A branch moved back to an older commit syncs it only if it is signed.
    let at_head = verify::Policy {
        base: Some(head.clone()),
        ..policy(verify::Mode::All)
    };
    let back = at_head.check(&git_repo, oid(&unsigned)).unwrap();
    assert_eq!(
        back.revision,
        oid(&head),
        "an unsigned older commit is refused"
    );
    assert_eq!(back.unverified.unwrap().commit, unsigned);
    let back = at_head.check(&git_repo, oid(&start)).unwrap();
    assert_eq!(back.revision, oid(&start), "a signed older commit is taken");
    assert_eq!(back.unverified, None);
    // A recorded revision the repository does not hold vouches for
    // nothing: every commit from the root is judged.
    let missing = verify::Policy {
        base: Some("1".repeat(40)),
        ..policy(verify::Mode::All)
    };
    let verdict = missing.check(&git_repo, oid(&head)).unwrap();
    assert_eq!(
        verdict.revision,
        oid(&start),
        "the root alone verifies with all it brings"
    );
    assert_eq!(verdict.unverified.unwrap().commit, unsigned);
    // Without a last verified revision, the head alone is judged.
    let fresh = verify::Policy {
        base: None,
        ..policy(verify::Mode::All)
    };
    assert_eq!(
        fresh.check(&git_repo, oid(&head)).unwrap().revision,
        oid(&head)
    );
    let unsigned_head = verify::Policy {
        base: None,
        ..policy(verify::Mode::Head)
    };
    assert!(
        unsigned_head.check(&git_repo, oid(&unsigned)).is_err(),
        "nothing to stay at"
    );
}
