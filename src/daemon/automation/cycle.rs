//! One cycle: where it commits, the edits of the files, the push.

use super::registries::look_up;
use super::*;
use crate::automation::patch_file;

/// How many times a cycle's edits are made again on a branch that moved.
const TRIES: usize = 3;

/// What a cycle came to.
pub(super) enum Cycle {
    Nothing,
    Pushed(String),
    /// A newer fetch replaced the revision's checkout before it was read:
    /// the cycle is made again on the newer one.
    Replaced,
}

/// A cycle: the updates the registries allow, committed on the branch's
/// head; made again on its new head while it moved (a few times), never
/// forced.
pub(super) fn run_cycle(
    config: &Config,
    source: &GitSource,
    snapshot: Snapshot,
    options: &render::Options,
    clients: &mut Clients,
    fenced: &dyn Fn() -> bool,
) -> Result<Cycle, String> {
    let (branch, first) = target(config, source, &snapshot)?;
    let Some((set, marked)) = read_tree(config, source, &snapshot, options)? else {
        return Ok(Cycle::Replaced);
    };
    let policy_files: Vec<PathBuf> = set.image_policies.iter().map(|m| m.file.clone()).collect();
    let (updates, statuses) = decide(config, set, marked, clients);
    keep_build_times(config, clients);
    let mut base = first.clone();
    for _ in 0..TRIES {
        let edited = Edited {
            base: &base,
            decided_on: &first,
        };
        let Some((change, applied)) = commit_on(config, source, &edited, &updates, clients) else {
            clients.found.images = update::image_statuses(&statuses.0, &statuses.1, &[]);
            return Ok(Cycle::Nothing);
        };
        clients.found.images = update::image_statuses(&statuses.0, &statuses.1, &applied);
        // The Lease may have gone while the registries were read.
        if fenced() {
            return Err("not pushed: this daemon no longer holds the leader Lease".into());
        }
        let pushed = source
            .push(&change, &branch)
            .map_err(|e| crate::model::error_chain(&e))?;
        if let Pushed::Commit(revision) = pushed {
            for u in &applied {
                tracing::info!(object = %u.object, container = %u.container, "automation: {} → {}", u.from, u.to);
            }
            return Ok(Cycle::Pushed(revision));
        }
        // A head past the verified revision may hold unverified commits:
        // a signed commit on it would vouch for them.
        if config.verified_only {
            return Err(format!(
                "branch {branch} moved past the verified revision {}; with signatures verified, automation commits only on a verified revision: the next cycle decides on it",
                short(&first)
            ));
        }
        // Someone pushed meanwhile: the same edits on their head, if it
        // still holds the revision the edits were decided on.
        let head = source
            .fetch_head(&branch)
            .map_err(|e| crate::model::error_chain(&e))?
            .ok_or_else(|| format!("branch {branch} is gone"))?;
        if !source.contains(&head, &first)? {
            return Err(format!(
                "branch {branch} ({}) no longer holds {}: its history was rewritten; nothing is pushed",
                short(&head),
                short(&first)
            ));
        }
        clients.found.behind = true;
        // A policy changed meanwhile may not allow what was decided.
        let changed = policy_files
            .iter()
            .find(|f| source.read_file(&first, f).ok() != source.read_file(&head, f).ok());
        if let Some(f) = changed {
            let shown = crate::model::shown(f);
            return Err(format!(
                "branch {branch} moved, and {shown} (image policies) with it: the next cycle decides on it"
            ));
        }
        tracing::info!(branch = %branch, head = %short(&head), "automation: the branch moved; the edits are made again on its head");
        base = head;
    }
    Err(format!(
        "branch {branch} moved {TRIES} times while automation pushed; the next cycle tries again"
    ))
}

pub(super) fn short(revision: &str) -> &str {
    &revision[..12.min(revision.len())]
}

/// Where a cycle commits, and on top of what: the synced branch's head,
/// or `--git-push-branch`'s while it holds the synced head (made from the
/// synced head when it does not exist yet).
pub(super) fn target(
    config: &Config,
    source: &GitSource,
    snapshot: &Snapshot,
) -> Result<(String, String), String> {
    let Some(branch) = &config.push_branch else {
        return Ok((source.branch.clone(), snapshot.revision.clone()));
    };
    let head = source
        .fetch_head(branch)
        .map_err(|e| crate::model::error_chain(&e))?;
    match head {
        None => Ok((branch.clone(), snapshot.revision.clone())),
        Some(head) if config.verified_only && head != snapshot.revision => Err(format!(
            "branch {branch} ({}) is not the verified revision {}: with signatures verified, automation commits on {branch} only while it is; delete it or reset it to {}",
            short(&head),
            short(&snapshot.revision),
            source.branch
        )),
        Some(head) if source.contains(&head, &snapshot.revision)? => Ok((branch.clone(), head)),
        Some(head) => Err(format!(
            "branch {branch} ({}) does not hold {}, the head of {}: merge {} into it, or delete it, and automation commits there again",
            short(&head),
            short(&snapshot.revision),
            source.branch,
            source.branch
        )),
    }
}

/// Writes the build times learnt to `--registry-cache-file`, the expired
/// left out.
pub(super) fn keep_build_times(config: &Config, clients: &mut Clients) {
    let Some(file) = &config.cache_file else {
        return;
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    clients
        .times
        .expire(now, config.cache_expiry.as_secs() as i64);
    if let Err(e) = clients.times.save(file) {
        tracing::warn!(
            "automation: cannot keep build times in {}: {e}",
            file.display()
        );
    }
}

/// The candidates and the tags their registries list.
type Seen = (Vec<Candidate>, BTreeMap<String, Vec<(String, Option<i64>)>>);

/// The render of `snapshot` and what its markers name, read while no
/// fetch can replace its checkout; `None` when one did already.
pub(super) fn read_tree(
    config: &Config,
    source: &GitSource,
    snapshot: &Snapshot,
    options: &render::Options,
) -> Result<Option<(render::DesiredSet, update::Marked)>, String> {
    let held = source
        .hold(snapshot)
        .map_err(|e| crate::model::error_chain(&e))?;
    let Some(_held) = held else {
        return Ok(None);
    };
    let set = render::render(&snapshot.tree, options);
    let marked = marked(config, snapshot, &set, options);
    Ok(Some((set, marked)))
}

/// What moves in the revision rendered, as the registries say; and what
/// was seen.
pub(super) fn decide(
    config: &Config,
    set: render::DesiredSet,
    marked: update::Marked,
    clients: &mut Clients,
) -> (Vec<Update>, Seen) {
    let (mut candidates, problems) = update::candidates(
        &set.manifests,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    for p in problems.iter().chain(&marked.problems) {
        problem(&mut clients.found.errors, p.to_string());
    }
    candidates.extend(marked.candidates);
    clients.found.containers = candidates.len();
    let tags = look_up(config, &candidates, clients);
    let mut objects: BTreeMap<(PathBuf, usize), serde_json::Value> = set
        .manifests
        .iter()
        .map(|m| ((m.file.clone(), m.index), m.object.value()))
        .collect();
    objects.extend(marked.objects);
    let updates = update::updates(&candidates, &tags, &objects);
    (updates, (candidates, tags))
}

/// The file as the commit's parent has it (not the checkout, which the
/// sync loop may be moving), if the updates may be made to it: a regular
/// file; on a branch that moved, as it was where they were decided; each
/// document edited still the object they were decided on.
fn base_text(
    source: &GitSource,
    at: &Edited<'_>,
    file: &std::path::Path,
    ups: &[&Update],
) -> Result<String, String> {
    let text = source
        .read_file(at.base, file)
        .map_err(|e| format!("{e}; not edited"))?;
    if at.base != at.decided_on {
        let decided = source
            .read_file(at.decided_on, file)
            .map_err(|e| format!("{e}; not edited"))?;
        if decided != text {
            return Err("changed by someone else meanwhile; edited once that is synced".into());
        }
    }
    let moved = ups.iter().find(|u| {
        u.identity.is_some()
            && u.edits
                .iter()
                .any(|e| edit::identity(&text, e.document) != u.identity)
    });
    if let Some(u) = moved {
        return Err(format!(
            "{} is no longer where it was decided on; not edited",
            u.object
        ));
    }
    Ok(text)
}

/// Where a commit is made: on `base`, with edits decided on `decided_on`
/// (the same revision, unless the branch moved meanwhile).
pub(super) struct Edited<'a> {
    base: &'a str,
    decided_on: &'a str,
}

/// The commit of `updates` on `base`, and the updates it holds; `None` if
/// no file changes. On a branch that moved, a file is edited only if it is
/// as it was where the edits were decided: someone else's change to it is
/// never overwritten (the next cycle edits it once it is synced).
pub(super) fn commit_on(
    config: &Config,
    source: &GitSource,
    at: &Edited<'_>,
    updates: &[Update],
    clients: &mut Clients,
) -> Option<(Change, Vec<Update>)> {
    let base = at.base;
    let mut by_file: BTreeMap<PathBuf, Vec<&Update>> = BTreeMap::new();
    for u in updates {
        by_file.entry(u.file.clone()).or_default().push(u);
    }
    let mut files = Vec::new();
    let mut applied: Vec<Update> = Vec::new();
    for (file, ups) in by_file {
        let shown = crate::model::shown(&file);
        let text = match base_text(source, at, &file, &ups) {
            Ok(text) => text,
            Err(e) => {
                problem(&mut clients.found.errors, format!("{shown}: {e}"));
                continue;
            }
        };
        let edits: Vec<edit::Edit> = ups.iter().flat_map(|u| u.edits.clone()).collect();
        match edit::apply(&text, &edits) {
            Ok(new) if new == text => {}
            Ok(new) => {
                files.push((file.clone(), new.into_bytes()));
                applied.extend(ups.into_iter().cloned());
            }
            Err(e) => {
                let objects: Vec<&str> = ups.iter().map(|u| u.object.as_str()).collect();
                problem(
                    &mut clients.found.errors,
                    format!("{shown}: {}: {e}", objects.join(", ")),
                );
            }
        }
    }
    if files.is_empty() {
        return None;
    }
    let change = Change {
        parent: base.to_string(),
        files,
        message: update::commit_message(&applied, config.ci_skip),
        author: config.committer.clone(),
        committer: config.committer.clone(),
        sign: clients.signing.clone(),
    };
    Some((change, applied))
}

/// The values `$imagepolicy` markers set in the files rendered, and the
/// repository's image policies.
pub(super) fn marked(
    config: &Config,
    snapshot: &Snapshot,
    set: &render::DesiredSet,
    options: &render::Options,
) -> update::Marked {
    let files: Vec<(PathBuf, String)> = set
        .files
        .iter()
        .filter_map(|f| {
            let text = render::files::read(&snapshot.tree, f, &options.limits).ok()?;
            text.contains("$imagepolicy").then(|| (f.clone(), text))
        })
        .collect();
    let mut marked = update::marked(
        &files,
        &set.image_policies,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    let patches: Vec<_> = set
        .patch_files
        .iter()
        .filter_map(|(config, patch)| {
            // A patch file not written yet is empty, as render read it.
            let text = if snapshot.tree.join(patch).exists() {
                render::files::read(&snapshot.tree, patch, &options.limits).ok()?
            } else {
                String::new()
            };
            Some((config.clone(), patch.clone(), text))
        })
        .collect();
    let patched = patch_file::patched(
        &set.manifests,
        &patches,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    marked.candidates.extend(patched.candidates);
    marked.objects.extend(patched.objects);
    marked.problems.extend(patched.problems);
    marked
}
