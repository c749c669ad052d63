//! Checkout: one commit's tree in, a directory holding exactly its files out.
//!
//! The tree is checked before anything is written (entry names, duplicates,
//! `.git`), then written by tidegate itself, never through a link: every
//! parent directory of a path is verified to be a real directory inside the
//! checkout, deletions come before additions, and a file is created only
//! where nothing exists. A fresh checkout and an update from the last one
//! are the same writer (from the empty tree, or from the last commit's), so
//! a push can neither delete nor write anything outside the checkout.
//! Submodules (gitlinks) are skipped and named.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use git2::{FileMode, Oid, Repository, Tree};

/// Marks a checkout directory complete; holds its revision.
pub const COMPLETE: &str = ".tidegate-complete";

/// A commit's tree that nothing may check out, or a write that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the tree of revision {revision} cannot be read")]
    Read {
        revision: String,
        #[source]
        source: git2::Error,
    },
    #[error(
        "revision {revision} is refused: {path} {why}; nothing of it is checked out (fix the commit with git, then push again)"
    )]
    Refused {
        revision: String,
        path: String,
        why: &'static str,
    },
    #[error("cannot write {path} of revision {revision}")]
    Write {
        revision: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a checkout left out, for the sync's warnings.
#[derive(Debug, Clone, Default)]
pub struct Skipped {
    /// Paths of submodules (gitlinks), never checked out.
    pub submodules: Vec<String>,
}

impl Skipped {
    pub fn warnings(&self) -> Vec<String> {
        self.submodules
            .iter()
            .map(|p| {
                format!("{p}: a submodule (gitlink); submodules are not checked out or synced")
            })
            .collect()
    }
}

pub use crate::model::shown;

/// Checks every entry of `tree`, recursively: a name that is empty, `.`,
/// `..`, `.git` (in any case), holds a `/` or a NUL, or appears twice in one
/// directory refuses the whole revision, naming the path.
pub fn check_tree(repo: &Repository, tree: &Tree, revision: &str) -> Result<Skipped, Error> {
    let mut skipped = Skipped::default();
    let mut stack = vec![(PathBuf::new(), tree.id())];
    let read = |source| Error::Read {
        revision: revision.to_string(),
        source,
    };
    while let Some((dir, id)) = stack.pop() {
        let tree = repo.find_tree(id).map_err(read)?;
        let mut names: HashSet<Vec<u8>> = HashSet::with_capacity(tree.len());
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let path = dir.join(OsStr::from_bytes(name));
            let refuse = |why| Error::Refused {
                revision: revision.to_string(),
                path: shown(&path),
                why,
            };
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(refuse("is not a valid file name"));
            }
            if name.eq_ignore_ascii_case(b".git") {
                return Err(refuse("is a .git entry"));
            }
            if dir.as_os_str().is_empty() && name == COMPLETE.as_bytes() {
                return Err(refuse("is a name tidegate keeps for itself"));
            }
            if !names.insert(name.to_vec()) {
                return Err(refuse("appears twice in its directory"));
            }
            match entry.filemode() {
                m if m == i32::from(FileMode::Tree) => stack.push((path, entry.id())),
                m if m == i32::from(FileMode::Commit) => {
                    skipped.submodules.push(shown(&path));
                }
                _ => {}
            }
        }
    }
    skipped.submodules.sort();
    Ok(skipped)
}

/// Writes into `dir` the changes from `from` (the files already in `dir`;
/// `None` for an empty directory) to `to`, and marks `dir` complete.
/// `to`'s tree must have passed [`check_tree`].
pub fn write(repo: &Repository, dir: &Path, from: Option<Oid>, to: Oid) -> Result<(), Error> {
    let revision = to.to_string();
    let read = |source| Error::Read {
        revision: revision.clone(),
        source,
    };
    let old_tree = match from {
        Some(oid) => Some(repo.find_commit(oid).and_then(|c| c.tree()).map_err(read)?),
        None => None,
    };
    let new_tree = repo.find_commit(to).and_then(|c| c.tree()).map_err(read)?;
    let diff = repo
        .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), None)
        .map_err(read)?;
    let mut writer = Writer {
        root: dir,
        revision: &revision,
        dirs: HashSet::new(),
    };
    writer.remove(Path::new(COMPLETE))?;
    // Deletions first: a path is never removed through what this update
    // created, and what was a file or a link no longer stands in the way.
    for delta in diff.deltas() {
        if let Some(path) = delta
            .old_file()
            .path()
            .filter(|_| delta.old_file().exists())
        {
            writer.remove(path)?;
        }
    }
    for delta in diff.deltas() {
        let new = delta.new_file();
        let (Some(path), true) = (new.path(), new.exists()) else {
            continue;
        };
        let content = || repo.find_blob(new.id()).map_err(read);
        match new.mode() {
            FileMode::Blob => writer.file(path, content()?.content(), false)?,
            FileMode::BlobExecutable => writer.file(path, content()?.content(), true)?,
            FileMode::Link => writer.link(path, content()?.content())?,
            // Submodules are named by check_tree and not checked out.
            _ => {}
        }
    }
    writer.file(Path::new(COMPLETE), revision.as_bytes(), false)
}

/// Writes below `root` without following any link.
struct Writer<'a> {
    root: &'a Path,
    revision: &'a str,
    /// Directories verified (or made) in this run.
    dirs: HashSet<PathBuf>,
}

impl Writer<'_> {
    fn error(&self, path: &Path, source: std::io::Error) -> Error {
        Error::Write {
            revision: self.revision.to_string(),
            path: shown(path),
            source,
        }
    }

    fn refuse(&self, path: &Path) -> Error {
        Error::Refused {
            revision: self.revision.to_string(),
            path: shown(path),
            why: "would be written through a symlink or a file",
        }
    }

    /// Whether every parent of `path` is a real directory below the root;
    /// with `make`, missing ones are created. `Ok(false)`: one is missing.
    fn parents(&mut self, path: &Path, make: bool) -> Result<bool, Error> {
        let mut at = PathBuf::new();
        let Some(parent) = path.parent() else {
            return Ok(true);
        };
        for component in parent.components() {
            let Component::Normal(name) = component else {
                return Err(self.refuse(path));
            };
            at.push(name);
            if self.dirs.contains(&at) {
                continue;
            }
            let full = self.root.join(&at);
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.refuse(path)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !make {
                        return Ok(false);
                    }
                    std::fs::create_dir(&full).map_err(|e| self.error(&at, e))?;
                }
                Err(e) => return Err(self.error(&at, e)),
            }
            self.dirs.insert(at.clone());
        }
        Ok(true)
    }

    /// Removes what is at `path` (a directory with everything in it, or the
    /// link itself, never its target), then the parents it left empty.
    fn remove(&mut self, path: &Path) -> Result<(), Error> {
        if !self.parents(path, false)? {
            return Ok(());
        }
        let full = self.root.join(path);
        let removed = match std::fs::symlink_metadata(&full) {
            // std's remove_dir_all does not follow links inside.
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
        };
        removed.map_err(|e| self.error(path, e))?;
        self.dirs.retain(|d| !d.starts_with(path));
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            if std::fs::remove_dir(self.root.join(p)).is_err() {
                break;
            }
            self.dirs.retain(|d| !d.starts_with(p));
            parent = p.parent();
        }
        Ok(())
    }

    /// Makes room for a new entry at `path`: its parents real directories,
    /// nothing left at the path itself.
    fn clear(&mut self, path: &Path) -> Result<PathBuf, Error> {
        self.parents(path, true)?;
        let full = self.root.join(path);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(_) => Ok(()),
        }
        .map_err(|e| self.error(path, e))?;
        self.dirs.retain(|d| !d.starts_with(path));
        Ok(full)
    }

    fn file(&mut self, path: &Path, content: &[u8], executable: bool) -> Result<(), Error> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let full = self.clear(path)?;
        // create_new: never opens what a link points to.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if executable { 0o755 } else { 0o644 })
            .open(&full)
            .and_then(|mut f| f.write_all(content))
            .map_err(|e| self.error(path, e))
    }

    fn link(&mut self, path: &Path, target: &[u8]) -> Result<(), Error> {
        let full = self.clear(path)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &full)
            .map_err(|e| self.error(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `dir` (the marker aside): path, kind and content.
    fn files(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push((rel, "dir".into()));
                    stack.push(path);
                } else if meta.file_type().is_symlink() {
                    out.push((
                        rel,
                        format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                    ));
                } else if rel != Path::new(COMPLETE) {
                    use std::os::unix::fs::PermissionsExt as _;
                    let exec = meta.permissions().mode() & 0o111 != 0;
                    out.push((
                        rel,
                        format!("{exec} {}", std::fs::read_to_string(&path).unwrap()),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    const FILE: i32 = 0o100644;
    const EXEC: i32 = 0o100755;
    const LINK: i32 = 0o120000;

    /// A path, its content and its Git file mode.
    type Entry<'a> = (&'a str, &'a [u8], i32);

    /// A tree built entry by entry (so duplicates and odd names can be made),
    /// `dir/...` entries becoming subtrees.
    fn tree(repo: &Repository, entries: &[Entry<'_>]) -> Oid {
        let mut builder = repo.treebuilder(None).unwrap();
        let mut subdirs: Vec<(&str, Vec<Entry<'_>>)> = Vec::new();
        for (path, content, mode) in entries {
            if let Some((dir, rest)) = path.split_once('/') {
                match subdirs.iter_mut().find(|(d, _)| *d == dir) {
                    Some((_, v)) => v.push((rest, content, *mode)),
                    None => subdirs.push((dir, vec![(rest, content, *mode)])),
                }
            } else {
                let id = if *mode == 0o160000 {
                    Oid::from_str("1111111111111111111111111111111111111111").unwrap()
                } else {
                    repo.blob(content).unwrap()
                };
                builder.insert(path, id, *mode).unwrap();
            }
        }
        for (dir, v) in subdirs {
            let id = tree(repo, &v);
            builder.insert(dir, id, 0o040000).unwrap();
        }
        builder.write().unwrap()
    }

    fn commit(repo: &Repository, tree_id: Oid, parent: Option<Oid>) -> Oid {
        let tree = repo.find_tree(tree_id).unwrap();
        let sig = git2::Signature::now("t", "t@t.invalid").unwrap();
        let parents: Vec<git2::Commit> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(None, &sig, &sig, "c", &tree, &parents).unwrap()
    }

    fn fresh(repo: &Repository, oid: Oid, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        write(repo, dir, None, oid).unwrap();
    }

    #[test]
    fn an_updated_checkout_equals_a_fresh_one() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        let first = tree(
            &repo,
            &[
                ("a.yaml", b"a: 1\n", FILE),
                ("gone/b.yaml", b"b: 1\n", FILE),
                ("same/c.yaml", b"c: 1\n", FILE),
                ("was-file", b"x\n", FILE),
                ("was-dir/f.yaml", b"f: 1\n", FILE),
                ("tool.sh", b"echo\n", FILE),
            ],
        );
        let first = commit(&repo, first, None);
        let second = tree(
            &repo,
            &[
                ("a.yaml", b"a: 2\n", FILE),
                ("same/c.yaml", b"c: 1\n", FILE),
                ("was-file/now-dir.yaml", b"d: 1\n", FILE),
                ("was-dir", b"now a file\n", FILE),
                ("new/e.yaml", b"e: 1\n", FILE),
                ("tool.sh", b"echo\n", EXEC),
                ("crds", b"../crds", LINK),
            ],
        );
        let second = commit(&repo, second, Some(first));
        let (updated, fresh_dir) = (tmp.path().join("updated"), tmp.path().join("fresh"));
        fresh(&repo, first, &updated);
        write(&repo, &updated, Some(first), second).unwrap();
        fresh(&repo, second, &fresh_dir);
        assert_eq!(
            std::fs::read_to_string(updated.join(COMPLETE)).unwrap(),
            second.to_string()
        );
        assert_eq!(files(&updated), files(&fresh_dir));
        assert!(!updated.join("gone").exists(), "emptied directories go");
        assert!(
            files(&updated)
                .iter()
                .any(|(p, c)| p == Path::new("crds") && c == "-> ../crds")
        );
    }

    /// A directory replaced by a link to a directory outside: the update
    /// removes the checkout's own files, never the link's target's.
    #[test]
    fn a_directory_replaced_by_a_link_deletes_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("deep")).unwrap();
        std::fs::write(outside.join("x.yaml"), "keep").unwrap();
        std::fs::write(outside.join("deep/y.yaml"), "keep").unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        let first = tree(
            &repo,
            &[("a/x.yaml", b"x\n", FILE), ("a/deep/y.yaml", b"y\n", FILE)],
        );
        let first = commit(&repo, first, None);
        let target = outside.to_str().unwrap().as_bytes();
        let second = tree(&repo, &[("a", target, LINK)]);
        let second = commit(&repo, second, Some(first));
        let dir = tmp.path().join("co");
        fresh(&repo, first, &dir);
        write(&repo, &dir, Some(first), second).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("x.yaml")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_to_string(outside.join("deep/y.yaml")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_link(dir.join("a")).unwrap(), outside);
    }

    /// A tree object written byte by byte, as `git mktree` can: duplicate
    /// names included, which a tree builder would merge.
    fn raw_tree(repo: &Repository, entries: &[(&str, &str, Oid)]) -> Oid {
        let mut bytes = Vec::new();
        for (mode, name, id) in entries {
            bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            bytes.extend_from_slice(id.as_bytes());
        }
        repo.odb()
            .unwrap()
            .write(git2::ObjectType::Tree, &bytes)
            .unwrap()
    }

    #[test]
    fn trees_that_could_reach_outside_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        let link = repo.blob(b"/tmp").unwrap();
        let plugin = tree(&repo, &[("plugin.yaml", b"x", FILE)]);
        let duplicate = raw_tree(&repo, &[("120000", "a", link), ("40000", "a", plugin)]);
        let config = tree(&repo, &[("config", b"x", FILE)]);
        let sub = raw_tree(&repo, &[("40000", ".GIT", config)]);
        let dot_git = raw_tree(&repo, &[("40000", "sub", sub)]);
        let marker = tree(&repo, &[(COMPLETE, b"0", FILE)]);
        let cases = [
            (duplicate, "a appears twice in its directory"),
            (dot_git, "sub/.GIT is a .git entry"),
            (marker, "is a name tidegate keeps for itself"),
        ];
        for (id, expected) in cases {
            let err = check_tree(&repo, &repo.find_tree(id).unwrap(), "r").unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn writes_never_go_through_a_link_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        let first = commit(&repo, tree(&repo, &[("keep", b"k", FILE)]), None);
        let second = commit(
            &repo,
            tree(&repo, &[("keep", b"k", FILE), ("a/evil.yaml", b"x", FILE)]),
            Some(first),
        );
        let dir = tmp.path().join("co");
        fresh(&repo, first, &dir);
        // Something on disk the old tree does not account for.
        std::os::unix::fs::symlink(&outside, dir.join("a")).unwrap();
        let err = write(&repo, &dir, Some(first), second).unwrap_err();
        assert!(err.to_string().contains("a/evil.yaml"), "{err}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    }

    #[test]
    fn submodules_are_skipped_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(tmp.path().join("repo.git")).unwrap();
        let id = tree(
            &repo,
            &[("a.yaml", b"a", FILE), ("vendor/lib", b"", 0o160000)],
        );
        let skipped = check_tree(&repo, &repo.find_tree(id).unwrap(), "r").unwrap();
        assert_eq!(skipped.submodules, vec!["vendor/lib".to_string()]);
        let dir = tmp.path().join("co");
        fresh(&repo, commit(&repo, id, None), &dir);
        assert!(dir.join("a.yaml").exists());
        assert!(!dir.join("vendor/lib").exists());
    }
}
