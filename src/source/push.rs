//! Writing to the repository: a commit of changed files on top of a
//! revision, pushed to a branch as a fast-forward, never forced. A branch
//! that moved meanwhile is reported as such, for the caller to fetch,
//! make its change again on the new head and push again.

use std::cell::RefCell;
use std::path::PathBuf;

use git2::{Oid, PushOptions, Repository};

use super::{Error, GitSource, remote};

/// Who a commit is by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub email: String,
}

/// One commit to make.
#[derive(Debug, Clone)]
pub struct Change {
    /// The revision it goes on top of.
    pub parent: String,
    /// Files (paths in the repository) and their new contents.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    pub message: String,
    pub author: Person,
    pub committer: Person,
    pub sign: Signing,
}

/// How a commit is signed.
#[derive(Debug, Clone, Default)]
pub enum Signing {
    #[default]
    None,
    /// With the deploy key, in git's SSH signature format.
    DeployKey,
    /// With an OpenPGP secret key (armored), as `git commit -S` with gpg.
    OpenPgp(std::sync::Arc<OpenPgpKey>),
    /// Asked for, but the key cannot be had: nothing is committed.
    Unavailable,
}

/// An armored OpenPGP secret key and its passphrase (never shown).
#[derive(Clone)]
pub struct OpenPgpKey {
    key: pgp::composed::SignedSecretKey,
    passphrase: String,
}

impl std::fmt::Debug for OpenPgpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use pgp::types::KeyDetails;
        write!(f, "OpenPgpKey({})", self.key.primary_key.fingerprint())
    }
}

impl OpenPgpKey {
    /// Reads an armored secret key; its primary key must be able to sign.
    pub fn parse(armored: &str, passphrase: &str) -> Result<OpenPgpKey, String> {
        use pgp::composed::Deserializable;
        use pgp::types::KeyDetails;
        let (key, _) = pgp::composed::SignedSecretKey::from_string(armored)
            .map_err(|e| format!("not an armored OpenPGP secret key: {e}"))?;
        if !key.primary_key.algorithm().can_sign() {
            return Err("its primary key cannot sign".into());
        }
        Ok(OpenPgpKey {
            key,
            passphrase: passphrase.to_string(),
        })
    }

    /// An armored detached signature of `data`.
    fn sign(&self, data: &[u8]) -> Result<String, String> {
        let signature = pgp::composed::DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.key.primary_key,
            &pgp::types::Password::from(self.passphrase.as_str()),
            pgp::crypto::hash::HashAlgorithm::Sha256,
            data,
        )
        .map_err(|e| format!("cannot sign with the OpenPGP key: {e}"))?;
        signature
            .to_armored_string(Default::default())
            .map_err(|e| e.to_string())
    }
}

/// A signer, ready.
enum Signer {
    Ssh(Box<ssh_key::PrivateKey>),
    OpenPgp(std::sync::Arc<OpenPgpKey>),
}

/// How the remote took a pushed refspec.
enum Sent {
    Done,
    /// libgit2 saw the remote's ref is not an ancestor: nothing sent.
    NotFastForward,
    /// The server refused the update, saying why.
    Refused(String),
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The branch now points at this commit.
    Commit(String),
    /// The branch moved past the parent: nothing was written there.
    Moved,
}

impl GitSource {
    /// Commits `change` in the cache and pushes it to `branch` of the
    /// remote, with the fetch's access (deploy key, HTTPS credentials,
    /// proxy).
    pub fn push(&self, change: &Change, branch: &str) -> Result<Pushed, Error> {
        let _lock = self.lock()?;
        let repo = self.open_cache()?;
        let failed = |reason: String| Error::Push {
            url: self.shown_url(),
            target: format!("branch {branch}"),
            reason,
        };
        let signer = match (&change.sign, &self.access.deploy_key) {
            (Signing::None, _) => None,
            (Signing::Unavailable, _) => {
                return Err(failed("the signing key cannot be read".into()));
            }
            (Signing::OpenPgp(key), _) => Some(Signer::OpenPgp(key.clone())),
            (Signing::DeployKey, Some(key)) => Some(Signer::Ssh(Box::new(
                ssh_key::PrivateKey::from_openssh(&key.private_openssh)
                    .map_err(|e| failed(format!("the deploy key cannot sign: {e}")))?,
            ))),
            (Signing::DeployKey, None) => {
                return Err(failed(
                    "there is no deploy key to sign the commit with".into(),
                ));
            }
        };
        let oid = commit(&repo, change, signer.as_ref())
            .map_err(|e| failed(self.scrub(e).message().to_string()))?;
        // No `+`: a branch that moved is never overwritten.
        match self.send(&repo, &format!("{oid}:refs/heads/{branch}"))? {
            Sent::Done => Ok(Pushed::Commit(oid.to_string())),
            Sent::NotFastForward => Ok(Pushed::Moved),
            Sent::Refused(status)
                if status.contains("fast-forward") || status.contains("fetch first") =>
            {
                Ok(Pushed::Moved)
            }
            Sent::Refused(status) => {
                Err(failed(format!("the server refused the update: {status}")))
            }
        }
    }

    /// Pushes one refspec with the fetch's access.
    fn send(&self, repo: &Repository, refspec: &str) -> Result<Sent, Error> {
        let remote_info = remote::parse(&self.url);
        let host_key_error: RefCell<Option<String>> = RefCell::new(None);
        let tried_credentials = RefCell::new(false);
        let refused: RefCell<Option<String>> = RefCell::new(None);
        // What the server's hooks print (`remote: …`): its reason for a refusal.
        let said: RefCell<String> = RefCell::new(String::new());
        let mut callbacks = self.callbacks(
            &remote_info,
            self.https_credentials(),
            &host_key_error,
            &tried_credentials,
        );
        callbacks.push_update_reference(|_, status| {
            if let Some(status) = status {
                *refused.borrow_mut() = Some(status.to_string());
            }
            Ok(())
        });
        callbacks.sideband_progress(|data| {
            let mut said = said.borrow_mut();
            if said.len() < 2000 {
                said.push_str(&String::from_utf8_lossy(data));
            }
            true
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        options.proxy_options(self.proxy_options(&remote_info));
        let mut git_remote = repo
            .remote_anonymous(&self.url)
            .map_err(|e| self.classify(e, remote_info.scheme))?;
        let pushed = git_remote.push(&[refspec], Some(&mut options));
        drop(options);
        if let Err(e) = pushed {
            if e.code() == git2::ErrorCode::NotFastForward {
                return Ok(Sent::NotFastForward);
            }
            if let Some(message) = host_key_error.take() {
                return Err(Error::HostKey {
                    url: self.shown_url(),
                    message,
                });
            }
            return Err(self.classify(e, remote_info.scheme));
        }
        let said: String = said
            .take()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        Ok(match refused.take() {
            Some(status) if said.is_empty() => Sent::Refused(status),
            Some(status) => Sent::Refused(format!("{status} (the server said: {said})")),
            None => Sent::Done,
        })
    }
}

impl GitSource {
    /// The head of another branch of the same remote, fetched into the
    /// cache; `None` when the remote has no such branch.
    pub fn fetch_head(&self, branch: &str) -> Result<Option<String>, Error> {
        let _lock = self.lock()?;
        let repo = self.open_cache()?;
        let other = GitSource {
            branch: branch.to_string(),
            ..self.clone()
        };
        match other.fetch_branch(&repo) {
            Ok(oid) => Ok(Some(oid.to_string())),
            Err(Error::BranchNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `descendant` is `ancestor` or has it in its history.
    pub fn contains(&self, descendant: &str, ancestor: &str) -> Result<bool, String> {
        let repo = self
            .open_cache()
            .map_err(|e| crate::model::error_chain(&e))?;
        let (d, a) = (Oid::from_str(descendant), Oid::from_str(ancestor));
        let (Ok(d), Ok(a)) = (d, a) else {
            return Err("not a revision".into());
        };
        Ok(d == a
            || repo
                .graph_descendant_of(d, a)
                .map_err(|e| e.message().to_string())?)
    }

    /// A text file of `revision` as the commit has it: a regular file (not
    /// a link), at a path of plain components.
    pub fn read_file(&self, revision: &str, path: &std::path::Path) -> Result<String, String> {
        let path = plain(path)?;
        let _lock = self.lock().map_err(|e| crate::model::error_chain(&e))?;
        let repo = self
            .open_cache()
            .map_err(|e| crate::model::error_chain(&e))?;
        let read = || -> Result<String, git2::Error> {
            let tree = repo.find_commit(Oid::from_str(revision)?)?.tree()?;
            let entry = tree.get_path(&path)?;
            if !matches!(entry.filemode(), 0o100644 | 0o100755) {
                return Err(git2::Error::from_str(
                    "not a regular file (a link, or a directory)",
                ));
            }
            let blob = repo.find_blob(entry.id())?;
            String::from_utf8(blob.content().to_vec())
                .map_err(|_| git2::Error::from_str("not UTF-8"))
        };
        read().map_err(|e| e.message().to_string())
    }

    /// Points tag `tag` of the remote at `revision` (created, or moved from
    /// where it was), as Flux v1 moved `flux-sync` to each revision synced.
    pub fn push_tag(&self, revision: &str, tag: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let repo = self.open_cache()?;
        let failed = |reason: String| Error::Push {
            url: self.shown_url(),
            target: format!("tag {tag}"),
            reason,
        };
        // A tag is a pointer, not history: moving it is what it is for.
        match self.send(&repo, &format!("+{revision}:refs/tags/{tag}"))? {
            Sent::Refused(status) => Err(failed(format!("the server refused the tag: {status}"))),
            Sent::Done => Ok(()),
            Sent::NotFastForward => Err(failed("the tag was not moved".into())),
        }
    }
}

/// A path of the repository as plain steps (`./apps/web.yaml` is
/// `apps/web.yaml`); anything else (`..`, an absolute path) is refused.
fn plain(path: &std::path::Path) -> Result<PathBuf, String> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) if part != ".git" => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{} is not a path inside the repository",
                    path.display()
                ));
            }
        }
    }
    Ok(out)
}

/// The commit of `change`'s files on top of its parent, in `repo`; signed
/// by `signer` when given (an SSH or OpenPGP signature in the `gpgsig`
/// header, as `git commit -S` writes them).
fn commit(repo: &Repository, change: &Change, signer: Option<&Signer>) -> Result<Oid, git2::Error> {
    let parent = repo.find_commit(Oid::from_str(&change.parent)?)?;
    let base = parent.tree()?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for (path, bytes) in &change.files {
        let path = plain(path).map_err(|e| git2::Error::from_str(&e))?;
        let blob = repo.blob(bytes)?;
        // Only a regular file that is there is edited; it keeps its mode
        // (an executable stays one).
        let mode = base.get_path(&path)?.filemode();
        if !matches!(mode, 0o100644 | 0o100755) {
            return Err(git2::Error::from_str(&format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mode = if mode == 0o100755 {
            git2::FileMode::BlobExecutable
        } else {
            git2::FileMode::Blob
        };
        update.upsert(&path, blob, mode);
    }
    let tree = repo.find_tree(update.create_updated(repo, &base)?)?;
    let author = git2::Signature::now(&change.author.name, &change.author.email)?;
    let committer = git2::Signature::now(&change.committer.name, &change.committer.email)?;
    let parents = [&parent];
    let Some(signer) = signer else {
        return repo.commit(None, &author, &committer, &change.message, &tree, &parents);
    };
    let buffer =
        repo.commit_create_buffer(&author, &committer, &change.message, &tree, &parents)?;
    let content = std::str::from_utf8(&buffer)
        .map_err(|_| git2::Error::from_str("the commit is not UTF-8"))?;
    let signature = match signer {
        Signer::Ssh(key) => key
            .sign("git", ssh_key::HashAlg::Sha512, content.as_bytes())
            .and_then(|s| s.to_pem(ssh_key::LineEnding::LF))
            .map_err(|e| e.to_string()),
        Signer::OpenPgp(key) => key.sign(content.as_bytes()),
    }
    .map_err(|e| git2::Error::from_str(&format!("cannot sign the commit: {e}")))?;
    repo.commit_signed(content, &signature, None)
}
