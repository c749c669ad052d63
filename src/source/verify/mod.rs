//! Verify: a fetched branch head and the last verified revision in, the
//! newest commit up to which every commit the mode asks for carries a
//! trusted signature out, with the commit that stopped it, if one did.
//!
//! Fails closed: an unsigned commit, an unknown key, a bad, expired or
//! revoked signature all stop the walk; nothing after them is trusted.

pub mod openpgp;
pub mod ssh;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use git2::{Oid, Repository};

pub use crate::model::record::{SignatureFormat as Format, Signer, Unverified};

/// Which commits must carry a trusted signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// None: signatures are not checked.
    None,
    /// The branch head only (Flux v2's default).
    Head,
    /// Every commit between the last verified revision and the head.
    All,
    /// Every first-parent commit between the last verified revision and
    /// the head (merged commits are trusted through the merge's signature).
    FirstParent,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("verification key {entry}: {reason}")]
    Key { entry: String, reason: String },
    #[error(
        "no verification keys: give OpenPGP keys (`.asc`), SSH keys (`.sshpub`) or an `allowed_signers` entry"
    )]
    NoKeys,
}

/// The keys signatures are checked against.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    openpgp: openpgp::Keyring,
    ssh: ssh::Keyring,
    /// Identifies the set: a verdict cached under other keys is not reused.
    digest: String,
}

impl Keys {
    /// Reads named entries (a Secret's keys, or files): `*.asc` OpenPGP
    /// public keys, `*.sshpub` SSH public keys (trusted for any committer),
    /// `allowed_signers` in git's format. Other entries are not keys.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Keys, Error> {
        let mut keys = Keys::default();
        let mut entries: Vec<(&str, &[u8])> = entries.into_iter().collect();
        entries.sort();
        for &(entry, bytes) in &entries {
            let key_error = |reason: String| Error::Key {
                entry: entry.to_string(),
                reason,
            };
            let text = std::str::from_utf8(bytes).map_err(|_| key_error("is not text".into()));
            let added = if entry.ends_with(".asc") {
                keys.openpgp.add(text?)
            } else if entry.ends_with(".sshpub") {
                keys.ssh.add_keys(text?)
            } else if entry == "allowed_signers" {
                keys.ssh.add_allowed_signers(text?)
            } else {
                continue;
            };
            added.map_err(key_error)?;
        }
        if keys.openpgp.is_empty() && keys.ssh.is_empty() {
            return Err(Error::NoKeys);
        }
        keys.digest = crate::model::checksum::entries_sha256(&entries);
        Ok(keys)
    }
}

/// The verdict on each commit already judged, per key set: a poll that
/// brings nothing new verifies nothing again.
#[derive(Debug, Clone, Default)]
pub struct Cache(Arc<Mutex<(String, Verdicts)>>);

type Verdicts = HashMap<Oid, (std::time::Instant, Result<Signer, String>)>;

/// How long a verdict is reused.
const VERDICT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Most commits judged between the last verified revision and the head.
const MAX_CHAIN: usize = 100_000;

impl Cache {
    /// How many verdicts are kept.
    pub fn len(&self) -> usize {
        self.0.lock().expect("verify cache").1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Verdicts kept at most; past that the cache starts over.
const MAX_CACHED: usize = 100_000;

/// How to verify a fetch.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub keys: Arc<Keys>,
    /// The revision last verified (and synced), where the walk starts.
    pub base: Option<String>,
    pub cache: Cache,
}

/// The outcome: the commit to sync and who signed it, and the commit that
/// stopped the walk short of the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub revision: Oid,
    /// `None` when the revision is the last verified one and its signature
    /// no longer holds under the current keys.
    pub signer: Option<Signer>,
    pub unverified: Option<Unverified>,
}

impl Policy {
    /// Judges the history from the last verified revision to `head`.
    /// `Err` when no commit can be trusted and there is none to stay at.
    pub fn check(&self, repo: &Repository, head: Oid) -> Result<Verified, Unverified> {
        let started = std::time::Instant::now();
        let before = self.cache.len();
        let verdict = self.walk(repo, head);
        tracing::debug!(
            commits = self.cache.len().saturating_sub(before),
            us = started.elapsed().as_micros() as u64,
            "verified"
        );
        verdict
    }

    fn walk(&self, repo: &Repository, head: Oid) -> Result<Verified, Unverified> {
        // A last verified revision the repository no longer holds (a
        // history rewritten while tidegate was away) vouches for nothing:
        // the whole history is judged.
        let recorded = self.base.is_some();
        let base = self
            .base
            .as_deref()
            .and_then(|b| Oid::from_str(b).ok())
            .filter(|b| repo.find_commit(*b).is_ok());
        let chain = match (self.mode, base) {
            (Mode::Head | Mode::None, _) => Ok(vec![head]),
            (_, None) if !recorded => Ok(vec![head]),
            (_, base) => first_parents(repo, base, head, MAX_CHAIN),
        };
        let mut verified: Option<(Oid, Signer)> = None;
        let refused = match chain {
            Err(reason) => Some(unverified(repo, head, reason)),
            Ok(chain) => chain.into_iter().find_map(|step| {
                let brought = match self.mode {
                    Mode::All => brought_by(repo, step, base),
                    _ => Ok(vec![step]),
                };
                let brought = match brought {
                    Ok(brought) => brought,
                    Err(reason) => return Some(unverified(repo, step, reason)),
                };
                // The step comes first: its signer is the revision's, once
                // everything it brings holds.
                let mut signed = None;
                for commit in brought {
                    match self.judge(repo, commit) {
                        Ok(signer) if commit == step => signed = Some(signer),
                        Ok(_) => {}
                        Err(refused) => return Some(refused),
                    }
                }
                verified = signed.map(|signer| (step, signer)).or(verified.take());
                None
            }),
        };
        let Some(refused) = refused else {
            return Ok(match verified {
                Some((revision, signer)) => Verified {
                    revision,
                    signer: Some(signer),
                    unverified: None,
                },
                // The head is the last verified revision.
                None => Verified {
                    revision: head,
                    signer: self.judge(repo, head).ok(),
                    unverified: None,
                },
            });
        };
        let Some(revision) = verified.as_ref().map(|(c, _)| *c).or(base) else {
            return Err(refused);
        };
        let signer = match verified {
            Some((_, s)) => Some(s),
            None => self.judge(repo, revision).ok(),
        };
        Ok(Verified {
            revision,
            signer,
            unverified: Some(refused),
        })
    }

    /// One commit's verdict, from the cache when it has one.
    fn judge(&self, repo: &Repository, commit: Oid) -> Result<Signer, Unverified> {
        let cached = {
            let mut cache = self.cache.0.lock().expect("verify cache");
            if cache.0 != self.keys.digest || cache.1.len() > MAX_CACHED {
                *cache = (self.keys.digest.clone(), HashMap::new());
            }
            // Keys expire: a verdict is kept for an hour.
            cache
                .1
                .get(&commit)
                .filter(|(at, _)| at.elapsed() < VERDICT_LIFETIME)
                .map(|(_, v)| v.clone())
        };
        let verdict = match cached {
            Some(v) => v,
            None => {
                let v = verify_commit(repo, commit, &self.keys, now());
                let mut cache = self.cache.0.lock().expect("verify cache");
                cache
                    .1
                    .insert(commit, (std::time::Instant::now(), v.clone()));
                v
            }
        };
        verdict.map_err(|reason| unverified(repo, commit, reason))
    }
}

/// The first-parent commits from `head` back to (not including) the first
/// one that `base` holds, oldest first; down to the root without a base.
/// A head that `base` holds (a branch moved back) is judged itself: only
/// `base` is trusted as it stands.
fn first_parents(
    repo: &Repository,
    base: Option<Oid>,
    head: Oid,
    limit: usize,
) -> Result<Vec<Oid>, String> {
    if Some(head) == base {
        return Ok(Vec::new());
    }
    if let Some(base) = base
        && repo.graph_descendant_of(base, head).unwrap_or(false)
    {
        return Ok(vec![head]);
    }
    // One pass: git's `--first-parent base..head`.
    let walked = (|| -> Result<Vec<Oid>, git2::Error> {
        let mut walk = repo.revwalk()?;
        walk.simplify_first_parent()?;
        walk.push(head)?;
        if let Some(base) = base {
            walk.hide(base)?;
        }
        let mut chain = Vec::new();
        for commit in walk {
            chain.push(commit?);
            if chain.len() > limit {
                return Err(git2::Error::from_str("too long"));
            }
        }
        Ok(chain)
    })();
    let mut chain = walked.map_err(|e| match e.message() {
        "too long" => format!(
            "more than {limit} commits since the last verified revision; nothing past it is trusted"
        ),
        other => format!("the history since the last verified revision cannot be read: {other}"),
    })?;
    chain.reverse();
    Ok(chain)
}

/// The commits `step` brings that its first parent and `base` do not hold:
/// itself first, then what it merges. A history that cannot be walked is
/// not trusted.
fn brought_by(repo: &Repository, step: Oid, base: Option<Oid>) -> Result<Vec<Oid>, String> {
    let walked = (|| -> Result<Vec<Oid>, git2::Error> {
        let mut walk = repo.revwalk()?;
        walk.push(step)?;
        if let Ok(parent) = repo.find_commit(step).and_then(|c| c.parent_id(0)) {
            walk.hide(parent)?;
        }
        if let Some(base) = base {
            walk.hide(base)?;
        }
        let mut brought = vec![step];
        for commit in walk {
            let commit = commit?;
            if commit != step {
                brought.push(commit);
            }
            if brought.len() > MAX_CHAIN {
                return Err(git2::Error::from_str("too many merged commits"));
            }
        }
        Ok(brought)
    })();
    walked.map_err(|e| format!("the commits it merges cannot be read: {}", e.message()))
}

/// A refusal of `commit`, its author and reason cut to what a record holds.
fn unverified(repo: &Repository, commit: Oid, reason: String) -> Unverified {
    Unverified {
        commit: commit.to_string(),
        author: author(repo, commit).chars().take(200).collect(),
        reason: reason.chars().take(500).collect(),
    }
}

/// The verdict on one commit's signature under `keys` at `now`.
pub fn verify_commit(repo: &Repository, oid: Oid, keys: &Keys, now: u64) -> Result<Signer, String> {
    let commit = repo
        .find_commit(oid)
        .map_err(|e| format!("the commit cannot be read: {}", e.message()))?;
    let (signature, data) = match repo.extract_signature(&oid, None) {
        Ok(found) => found,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err("the commit is not signed".into());
        }
        Err(e) => return Err(format!("the signature cannot be read: {}", e.message())),
    };
    let signature =
        std::str::from_utf8(&signature).map_err(|_| "the signature is not text".to_string())?;
    let committer = commit.committer();
    if signature.starts_with("-----BEGIN PGP SIGNATURE-----") {
        if keys.openpgp.is_empty() {
            return Err("signed with OpenPGP, and no OpenPGP key is trusted".into());
        }
        keys.openpgp.verify(signature, &data, now)
    } else if signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
        let email = committer.email().unwrap_or_default();
        let time = u64::try_from(committer.when().seconds()).unwrap_or(0);
        keys.ssh.verify(signature, &data, email, time)
    } else {
        Err("the signature is neither OpenPGP nor SSH (X.509 signatures are not supported)".into())
    }
}

fn author(repo: &Repository, commit: Oid) -> String {
    repo.find_commit(commit)
        .map(|c| {
            let a = c.author();
            format!(
                "{} <{}>",
                String::from_utf8_lossy(a.name_bytes()),
                String::from_utf8_lossy(a.email_bytes())
            )
        })
        .unwrap_or_else(|_| "(unknown)".into())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch as `2026-12-01 10:00:00 UTC`.
pub fn shown_time(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository of `n` unsigned commits in a line; their ids, oldest first.
    fn line(dir: &std::path::Path, n: usize) -> (Repository, Vec<Oid>) {
        let repo = Repository::init(dir).unwrap();
        let who = git2::Signature::now("t", "t@example.com").unwrap();
        let tree = repo
            .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
            .unwrap();
        let mut ids: Vec<Oid> = Vec::new();
        for i in 0..n {
            let parents: Vec<git2::Commit> = ids
                .last()
                .map(|p| repo.find_commit(*p).unwrap())
                .into_iter()
                .collect();
            let parents: Vec<&git2::Commit> = parents.iter().collect();
            ids.push(
                repo.commit(None, &who, &who, &format!("c{i}"), &tree, &parents)
                    .unwrap(),
            );
        }
        drop(tree);
        (repo, ids)
    }

    #[test]
    fn the_walk_is_bounded_and_stops_at_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, ids) = line(dir.path(), 6);
        let head = ids[5];
        assert_eq!(
            first_parents(&repo, Some(ids[2]), head, 10).unwrap(),
            ids[3..].to_vec()
        );
        assert_eq!(first_parents(&repo, None, head, 10).unwrap(), ids);
        let err = first_parents(&repo, None, head, 3).unwrap_err();
        assert!(err.contains("more than 3 commits"), "{err}");
        // A head the base holds is judged alone.
        assert_eq!(
            first_parents(&repo, Some(head), ids[1], 10).unwrap(),
            vec![ids[1]]
        );
        assert_eq!(
            first_parents(&repo, Some(head), head, 10).unwrap(),
            Vec::<Oid>::new()
        );
    }
}
