//! Source: a Git URL and branch in, a snapshot (revision + checked-out tree) out.
//!
//! Keeps one bare repository per source in a cache directory, fetches just the
//! configured branch into it (SSH with the deploy key and known_hosts, HTTPS
//! with credentials and a proxy), and checks the commit out into a directory
//! of its own that nothing else writes to.

pub mod checkout;
pub mod push;
pub mod remote;
pub mod verify;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use git2::{
    CertificateCheckStatus, Cred, CredentialType, FetchOptions, Oid, ProxyOptions, RemoteCallbacks,
    Repository,
};

use crate::identity::DeployKey;
use remote::Scheme;

/// One revision of the repository, checked out.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Full commit SHA.
    pub revision: String,
    /// Directory holding the checked-out tree of that commit.
    pub tree: PathBuf,
    /// The bare repository the commit is in.
    pub repo: PathBuf,
    /// What the checkout left out (submodules), for the sync's warnings.
    pub skipped: checkout::Skipped,
    /// Whose signature the revision carries, when signatures are verified.
    pub signed_by: Option<verify::Signer>,
    /// The commit that held the sync back at this (verified) revision.
    pub unverified: Option<verify::Unverified>,
}

impl Snapshot {
    /// The Git tree hash of each path of the commit (the whole tree for no
    /// paths); `None` if the repository cannot be read or a path is not
    /// in the commit as written.
    pub fn tree_ids(&self, paths: &[PathBuf]) -> Option<Vec<String>> {
        let repo = Repository::open_bare(&self.repo).ok()?;
        let tree = repo
            .find_commit(Oid::from_str(&self.revision).ok()?)
            .ok()?
            .tree()
            .ok()?;
        if paths.is_empty() {
            return Some(vec![tree.id().to_string()]);
        }
        paths
            .iter()
            .map(|p| {
                let entry = tree.get_path(p).ok()?;
                Some(format!("{}:{}", p.display(), entry.id()))
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare the Git cache directory {dir}")]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the Git cache repository {dir}")]
    Open {
        dir: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error(
        "permission denied by {url}: add this deploy key to the repository (read access is enough): {public_key}"
    )]
    PermissionDenied { url: String, public_key: String },
    #[error(
        "{url}: no deploy key to authenticate with over SSH; the daemon creates one on start (see `tidegate identity`)"
    )]
    NoDeployKey { url: String },
    #[error(
        "authentication to {url} failed: check the user name and password or token in the HTTPS credentials Secret"
    )]
    HttpsAuth { url: String },
    #[error(
        "{url} asks for credentials: tidegate offers the deploy key and the HTTPS credentials only to the synced repository's own server, so a repository on another server must be readable without them"
    )]
    Withheld { url: String },
    #[error("{url}: {message}")]
    HostKey { url: String, message: String },
    #[error(
        "repository {url} not found: check --git-url, and that the deploy key or credentials may read it"
    )]
    RepositoryNotFound {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("{0}; no commit of the branch is trusted yet, so nothing is synced")]
    Unverified(verify::Unverified),
    #[error("cannot prepare Git access")]
    Access(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot fetch branch {branch} from {url}")]
    Fetch {
        url: String,
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error(
        "{url}: refusing to send credentials over plain http://; use https://, or pass --git-allow-insecure-http"
    )]
    InsecureHttp { url: String },
    #[error("branch {branch} not found in {url}; check --git-branch")]
    BranchNotFound { url: String, branch: String },
    #[error("cannot check out revision {revision} into {dir}")]
    Checkout {
        revision: String,
        dir: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error(transparent)]
    Tree(#[from] checkout::Error),
    #[error("cannot push {target} to {url}: {reason}")]
    Push {
        url: String,
        /// `branch main`, `tag flux-sync`.
        target: String,
        reason: String,
    },
}

/// How to authenticate to the remote and reach it.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// For SSH remotes.
    pub deploy_key: Option<DeployKey>,
    /// known_hosts text that SSH host keys are checked against.
    pub known_hosts: String,
    /// For HTTPS remotes: user name and password (or token).
    pub https: Option<(String, String)>,
    /// `--git-proxy`; otherwise the proxy environment variables apply.
    pub proxy: Option<String>,
    /// The repository's own proxy settings, used when neither `--git-proxy`
    /// nor a proxy variable says otherwise.
    pub repo_proxy: Option<crate::model::proxy::ProxySettings>,
    /// Send credentials over plain `http://` (`--git-allow-insecure-http`).
    pub allow_insecure_http: bool,
    /// The synced repository's credentials were kept from this server.
    pub withheld: bool,
}

/// Where to fetch from.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// Holds the bare repository and the checkouts.
    pub cache_dir: PathBuf,
    pub access: Access,
}

impl GitSource {
    /// Fetches the branch and checks out its head commit.
    pub fn fetch(&self) -> Result<Snapshot, Error> {
        self.fetch_verified(None)
    }

    /// Fetches the branch and checks out the newest commit `policy` trusts
    /// (the head, without a policy).
    pub fn fetch_verified(&self, policy: Option<&verify::Policy>) -> Result<Snapshot, Error> {
        // One writer per cache at a time: two checkouts updating one
        // directory at once could each undo what the other verified.
        let _lock = self.lock()?;
        let repo = self.open_cache()?;
        let head = self.fetch_branch(&repo)?;
        let verified = match policy {
            Some(policy) => Some(policy.check(&repo, head).map_err(Error::Unverified)?),
            None => None,
        };
        let oid = verified.as_ref().map_or(head, |v| v.revision);
        let revision = oid.to_string();
        let tree_dir = self.cache_dir.join("checkouts").join(&revision);
        let unchanged = tree_dir.join(checkout::COMPLETE).exists();
        let skipped = self.check_out(&repo, oid, &tree_dir)?;
        self.remove_old_checkouts(&revision);
        // Only the synced history is kept: what a force-push dropped goes.
        let _ = repo.reference(&previous_ref(&self.branch), oid, true, "synced");
        // Repacking takes a while: done when nothing new came, unless the
        // packs pile up (a long run of pushes).
        let limit = if unchanged { MAX_PACKS } else { 4 * MAX_PACKS };
        if let Err(e) = compact(&repo, &[oid, head], limit) {
            // The cache still works, only larger: say so and go on.
            tracing::warn!("cannot compact the Git cache: {e}");
        }
        Ok(Snapshot {
            revision,
            tree: tree_dir,
            repo: self.cache_dir.join("repo.git"),
            skipped,
            signed_by: verified.as_ref().and_then(|v| v.signer.clone()),
            unverified: verified.and_then(|v| v.unverified),
        })
    }

    /// Checks the tree of `oid` and brings `dir` to it: the last complete
    /// checkout updated with what changed, or a fresh one.
    fn check_out(
        &self,
        repo: &Repository,
        oid: Oid,
        dir: &Path,
    ) -> Result<checkout::Skipped, Error> {
        let revision = oid.to_string();
        let tree = repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|source| Error::Checkout {
                revision: revision.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        let skipped = checkout::check_tree(repo, &tree, &revision)?;
        if dir.join(checkout::COMPLETE).exists() {
            return Ok(skipped);
        }
        // The last checkout, brought to this revision: only the files that
        // changed are written.
        if let Some((last, from)) = self.last_checkout() {
            let moved = std::fs::remove_file(last.join(checkout::COMPLETE)).and_then(|()| {
                let _ = std::fs::remove_dir_all(dir);
                std::fs::rename(&last, dir)
            });
            match moved.map(|()| checkout::write(repo, dir, Some(from), oid)) {
                Ok(Ok(())) => return Ok(skipped),
                // The tree passed its checks: what refused the update is
                // on disk, and a fresh checkout starts without it.
                Ok(Err(e)) => {
                    tracing::warn!("checking out in full: {}", crate::model::error_chain(&e))
                }
                Err(e) => tracing::debug!("checking out in full: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|source| Error::Cache {
            dir: dir.to_path_buf(),
            source,
        })?;
        checkout::write(repo, dir, None, oid)?;
        Ok(skipped)
    }

    /// Holds off fetches while `snapshot`'s checkout is read: the lock, if
    /// the checkout is still that revision's; `None` when a newer fetch has
    /// replaced it already (read the newer one).
    pub fn hold(&self, snapshot: &Snapshot) -> Result<Option<std::fs::File>, Error> {
        let lock = self.lock()?;
        let marker = std::fs::read_to_string(snapshot.tree.join(checkout::COMPLETE));
        Ok(marker
            .is_ok_and(|m| m.trim() == snapshot.revision)
            .then_some(lock))
    }

    /// An exclusive lock on the cache (`flock`), held while it is written.
    fn lock(&self) -> Result<std::fs::File, Error> {
        use std::os::fd::AsRawFd as _;
        let cache = |source| Error::Cache {
            dir: self.cache_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(cache)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.cache_dir.join(".lock"))
            .map_err(cache)?;
        // SAFETY: flock on a descriptor this function owns; released when
        // the file is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(cache(std::io::Error::last_os_error()));
        }
        Ok(file)
    }

    fn open_cache(&self) -> Result<Repository, Error> {
        let dir = self.cache_dir.join("repo.git");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Cache {
            dir: dir.clone(),
            source,
        })?;
        Repository::open_bare(&dir)
            .or_else(|_| Repository::init_bare(&dir))
            .map_err(|source| Error::Open { dir, source })
    }

    /// The URL as shown to people: without its password or token.
    pub fn shown_url(&self) -> String {
        remote::redact(&self.url)
    }

    /// User name and password for HTTP(S): from the credentials Secret, else
    /// from the URL itself.
    fn https_credentials(&self) -> Option<(String, String)> {
        self.access
            .https
            .clone()
            .or_else(|| remote::credentials_in(&self.url))
    }

    fn fetch_branch(&self, repo: &Repository) -> Result<Oid, Error> {
        let local_ref = format!("refs/tidegate/{}", self.branch);
        let refspec = format!("+refs/heads/{}:{local_ref}", self.branch);
        let remote_info = remote::parse(&self.url);
        let credentials = self.https_credentials();
        if remote_info.scheme == Scheme::Http
            && credentials.is_some()
            && !self.access.allow_insecure_http
        {
            return Err(Error::InsecureHttp {
                url: self.shown_url(),
            });
        }
        let host_key_error: RefCell<Option<String>> = RefCell::new(None);
        let tried_credentials = RefCell::new(false);
        let mut options = FetchOptions::new();
        options.remote_callbacks(self.callbacks(
            &remote_info,
            credentials,
            &host_key_error,
            &tried_credentials,
        ));
        options.download_tags(git2::AutotagOption::None);
        options.proxy_options(self.proxy_options(&remote_info));

        let mut git_remote = repo
            .remote_anonymous(&self.url)
            .map_err(|source| self.fetch_error(source))?;
        // A branch deleted upstream must not leave a stale ref that we would
        // sync; the last revision stays under another ref, so the fetch
        // offers it and transfers only new objects.
        if let Ok(mut current) = repo.find_reference(&local_ref) {
            if let Some(oid) = current.target() {
                let _ = repo.reference(&previous_ref(&self.branch), oid, true, "last fetched");
            }
            let _ = current.delete();
        }
        let fetched = git_remote.fetch(&[&refspec], Some(&mut options), None);
        drop(options);
        if let Err(source) = fetched {
            if let Some(message) = host_key_error.take() {
                return Err(Error::HostKey {
                    url: self.shown_url(),
                    message,
                });
            }
            return Err(self.classify(source, remote_info.scheme));
        }
        let reference = repo
            .find_reference(&local_ref)
            .map_err(|_| Error::BranchNotFound {
                url: self.shown_url(),
                branch: self.branch.clone(),
            })?;
        let commit = reference
            .peel_to_commit()
            .map_err(|source| self.fetch_error(source))?;
        Ok(commit.id())
    }

    /// What libgit2 asks while fetching: credentials (once each, only for
    /// the synced repository's own server), and the server's host key or
    /// certificate.
    fn callbacks<'a>(
        &'a self,
        remote_info: &'a remote::Remote,
        credentials: Option<(String, String)>,
        host_key_error: &'a RefCell<Option<String>>,
        tried_credentials: &'a RefCell<bool>,
    ) -> RemoteCallbacks<'a> {
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |url, username, allowed| {
            // libgit2 asks again after a refusal; one try each, then report it.
            if tried_credentials.replace(true) {
                return Err(git2::Error::from_str("credentials refused"));
            }
            // An HTTP redirect to another server gets none.
            if matches!(remote_info.scheme, Scheme::Http | Scheme::Https)
                && !remote::same_server(url, &self.url)
            {
                return Err(git2::Error::from_str(&format!(
                    "credentials refused: {} is not the server of {}",
                    remote::redact(url),
                    self.shown_url()
                )));
            }
            if allowed.contains(CredentialType::SSH_KEY) {
                let user = username.or(remote_info.user.as_deref()).unwrap_or("git");
                let key = self
                    .access
                    .deploy_key
                    .as_ref()
                    .ok_or_else(|| git2::Error::from_str("no deploy key"))?;
                return Cred::ssh_key_from_memory(
                    user,
                    Some(&key.public),
                    &key.private_openssh,
                    None,
                );
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && let Some((user, password)) = &credentials
            {
                return Cred::userpass_plaintext(user, password);
            }
            Err(git2::Error::from_str("no credentials for this remote"))
        });
        callbacks.certificate_check(|cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2 has verified the chain against the CA bundle.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(raw) = hostkey.hostkey() else {
                return Err(git2::Error::from_str(
                    "the SSH server presented no host key",
                ));
            };
            let port = remote_info.port.unwrap_or(22);
            match remote::check_host_key(&self.access.known_hosts, host, port, raw) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(message) => {
                    *host_key_error.borrow_mut() = Some(message.clone());
                    Err(git2::Error::from_str(&message))
                }
            }
        });
        callbacks
    }

    /// The proxy a fetch goes through: `--git-proxy`, else the daemon's
    /// environment, else the repository's own proxy settings.
    fn proxy_options(&self, remote_info: &remote::Remote) -> ProxyOptions<'static> {
        let mut proxy = ProxyOptions::new();
        let repo_proxy = self
            .access
            .repo_proxy
            .as_ref()
            .filter(|_| !crate::model::proxy::in_environment());
        if let Some(url) =
            remote::proxy_for(
                remote_info,
                self.access.proxy.as_deref(),
                |k| match repo_proxy {
                    Some(p) => p.var(k),
                    None => std::env::var(k).ok(),
                },
            )
        {
            tracing::debug!(proxy = %url, "fetching through a proxy");
            proxy.url(&url);
        }
        proxy
    }

    fn fetch_error(&self, source: git2::Error) -> Error {
        let source = self.scrub(source);
        Error::Fetch {
            url: self.shown_url(),
            branch: self.branch.clone(),
            source,
        }
    }

    /// libgit2's error with the URL's secrets taken out of its message.
    fn scrub(&self, e: git2::Error) -> git2::Error {
        git2::Error::new(e.code(), e.class(), remote::scrub(e.message(), &self.url))
    }

    /// Turns libgit2's errors into ones that say what to do.
    fn classify(&self, source: git2::Error, scheme: Scheme) -> Error {
        let source = self.scrub(source);
        let message = source.message().to_lowercase();
        let url = self.shown_url();
        let auth_failed = source.code() == git2::ErrorCode::Auth
            || message.contains("authentication")
            || message.contains("credentials refused")
            || message.contains("no credentials")
            || message.contains("permission denied");
        if (auth_failed || message.contains("no deploy key")) && self.access.withheld {
            return Error::Withheld { url };
        }
        if auth_failed || message.contains("no deploy key") {
            return match (scheme, &self.access.deploy_key) {
                (Scheme::Ssh, Some(key)) => Error::PermissionDenied {
                    url,
                    public_key: key.public.clone(),
                },
                (Scheme::Ssh, None) => Error::NoDeployKey { url },
                _ => Error::HttpsAuth { url },
            };
        }
        if message.contains("not found")
            || message.contains("does not appear to be a git repository")
            || message.contains("does not exist")
            || message.contains("could not find repository")
            || message.contains("status code: 404")
        {
            return Error::RepositoryNotFound { url, source };
        }
        self.fetch_error(source)
    }

    /// A complete checkout and its revision.
    fn last_checkout(&self) -> Option<(PathBuf, Oid)> {
        std::fs::read_dir(self.cache_dir.join("checkouts"))
            .ok()?
            .flatten()
            .find_map(|entry| {
                let marker = std::fs::read_to_string(entry.path().join(checkout::COMPLETE)).ok()?;
                Some((entry.path(), Oid::from_str(marker.trim()).ok()?))
            })
    }

    fn remove_old_checkouts(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(self.cache_dir.join("checkouts")) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name() != keep {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Where the last fetched revision is kept while fetching anew.
fn previous_ref(branch: &str) -> String {
    format!("refs/tidegate-previous/{branch}")
}

/// Packs in the cache past which a fetch that found nothing new repacks it.
const MAX_PACKS: usize = 8;

/// Keeps the cache small: every fetch adds a pack, so once there are more
/// than `limit`, everything reachable from the synced commit is written
/// into one pack and the rest (other packs, loose objects, history a
/// force-push dropped) is removed, as `git gc` would.
fn compact(repo: &Repository, heads: &[Oid], limit: usize) -> Result<(), git2::Error> {
    let objects = repo.path().join("objects");
    let pack_dir = objects.join("pack");
    let packs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                    .collect()
            })
            .unwrap_or_default()
    };
    if packs(&pack_dir).len() <= limit {
        return Ok(());
    }
    let mut walk = repo.revwalk()?;
    for head in heads {
        walk.push(*head)?;
    }
    let mut builder = repo.packbuilder()?;
    builder.insert_walk(&mut walk)?;
    builder.write(&pack_dir, 0o444)?;
    let keep = format!(
        "pack-{}",
        builder
            .name()?
            .ok_or_else(|| git2::Error::from_str("the new pack has no name"))?
    );
    for entry in std::fs::read_dir(&pack_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem.starts_with("pack-") && stem != keep {
            let _ = std::fs::remove_file(&path);
        }
    }
    // Loose objects (two-hex-digit directories) are in the new pack or unreachable.
    for entry in std::fs::read_dir(&objects).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}
