//! Source: a Git URL and branch in, a snapshot (revision + checked-out tree) out.
//!
//! Keeps one bare repository per source in a cache directory, fetches just the
//! configured branch into it, and checks the commit out into a directory of
//! its own that nothing else writes to.

use std::path::{Path, PathBuf};

use git2::{FetchOptions, Oid, Repository};

/// One revision of the repository, checked out.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Full commit SHA.
    pub revision: String,
    /// Directory holding the checked-out tree of that commit.
    pub tree: PathBuf,
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
    #[error("cannot fetch branch {branch} from {url}")]
    Fetch {
        url: String,
        branch: String,
        #[source]
        source: git2::Error,
    },
    #[error("branch {branch} not found in {url}; check --git-branch")]
    BranchNotFound { url: String, branch: String },
    #[error("cannot check out revision {revision} into {dir}")]
    Checkout {
        revision: String,
        dir: PathBuf,
        #[source]
        source: git2::Error,
    },
}

/// Where to fetch from.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub url: String,
    pub branch: String,
    /// Holds the bare repository and the checkouts.
    pub cache_dir: PathBuf,
}

impl GitSource {
    /// Fetches the branch and checks out its head commit.
    pub fn fetch(&self) -> Result<Snapshot, Error> {
        let repo = self.open_cache()?;
        let oid = self.fetch_branch(&repo)?;
        let revision = oid.to_string();
        let tree_dir = self.cache_dir.join("checkouts").join(&revision);
        if !tree_dir.join(".tidegate-complete").exists() {
            checkout(&repo, oid, &tree_dir)?;
        }
        self.remove_old_checkouts(&revision);
        Ok(Snapshot {
            revision,
            tree: tree_dir,
        })
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

    fn fetch_branch(&self, repo: &Repository) -> Result<Oid, Error> {
        let local_ref = format!("refs/tidegate/{}", self.branch);
        let refspec = format!("+refs/heads/{}:{local_ref}", self.branch);
        let fetch_err = |source| Error::Fetch {
            url: self.url.clone(),
            branch: self.branch.clone(),
            source,
        };
        let mut remote = repo.remote_anonymous(&self.url).map_err(fetch_err)?;
        let mut options = FetchOptions::new();
        options.download_tags(git2::AutotagOption::None);
        // A branch deleted upstream must not leave a stale ref that we would sync.
        let _ = repo.find_reference(&local_ref).and_then(|mut r| r.delete());
        remote
            .fetch(&[&refspec], Some(&mut options), None)
            .map_err(fetch_err)?;
        let reference = repo
            .find_reference(&local_ref)
            .map_err(|_| Error::BranchNotFound {
                url: self.url.clone(),
                branch: self.branch.clone(),
            })?;
        let commit = reference.peel_to_commit().map_err(fetch_err)?;
        Ok(commit.id())
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

fn checkout(repo: &Repository, oid: Oid, dir: &Path) -> Result<(), Error> {
    let checkout_err = |source| Error::Checkout {
        revision: oid.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| checkout_err(git2::Error::from_str(&e.to_string())))?;
    let commit = repo.find_commit(oid).map_err(checkout_err)?;
    let mut builder = git2::build::CheckoutBuilder::new();
    builder.target_dir(dir).force().recreate_missing(true);
    repo.checkout_tree(commit.as_object(), Some(&mut builder))
        .map_err(checkout_err)?;
    std::fs::write(dir.join(".tidegate-complete"), oid.to_string())
        .map_err(|e| checkout_err(git2::Error::from_str(&e.to_string())))?;
    Ok(())
}
