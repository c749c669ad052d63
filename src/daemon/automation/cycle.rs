//! One cycle: where it commits, the edits of the files, the push.

use super::registries::look_up;
use super::*;

/// A cycle, made again on a fresh fetch while the branch moved.
pub(super) fn run_cycle(
    config: &Config,
    source: &GitSource,
    snapshot: Snapshot,
    options: &render::Options,
    clients: &mut Clients,
    fenced: &dyn Fn() -> bool,
) -> Result<Option<String>, String> {
    let (branch, base) = target(config, source, &snapshot)?;
    let change = cycle(config, source, &snapshot, &base, options, clients);
    keep_build_times(config, clients);
    let Some(change) = change? else {
        return Ok(None);
    };
    // The Lease may have gone while the registries were read.
    if fenced() {
        return Err("not pushed: this daemon no longer holds the leader Lease".into());
    }
    match source
        .push(&change, &branch)
        .map_err(|e| crate::model::error_chain(&e))?
    {
        Pushed::Commit(revision) => Ok(Some(revision)),
        // The sync loop fetches what moved it; the next cycle edits that.
        Pushed::Moved => Err(format!(
            "branch {branch} moved since {}; its new head is edited next cycle",
            short(&base)
        )),
    }
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

/// The commit one cycle makes on `snapshot`, if any image moves.
pub(super) fn cycle(
    config: &Config,
    source: &GitSource,
    snapshot: &Snapshot,
    base: &str,
    options: &render::Options,
    clients: &mut Clients,
) -> Result<Option<Change>, String> {
    let set = render::render(&snapshot.tree, options);
    let (mut candidates, problems) = update::candidates(
        &set.manifests,
        &config.default_namespace,
        &config.allow_namespaces,
    );
    let marked = marked(config, snapshot, &set, options);
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
    let mut by_file: BTreeMap<PathBuf, Vec<&Update>> = BTreeMap::new();
    for u in &updates {
        by_file.entry(u.file.clone()).or_default().push(u);
    }
    let mut files = Vec::new();
    let mut applied: Vec<Update> = Vec::new();
    for (file, ups) in by_file {
        let shown = crate::model::shown(&file);
        // The file as the commit has it (not the checkout, which the sync
        // loop may be moving): a regular file, or it is not edited.
        let text = match source.read_file(base, &file) {
            Ok(text) => text,
            Err(e) => {
                problem(
                    &mut clients.found.errors,
                    format!("{shown}: {e}; not edited"),
                );
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
    clients.found.images = update::image_statuses(&candidates, &tags, &applied);
    if files.is_empty() {
        return Ok(None);
    }
    for u in &applied {
        tracing::info!(object = %u.object, container = %u.container, "automation: {} → {}", u.from, u.to);
    }
    Ok(Some(Change {
        parent: base.to_string(),
        files,
        message: update::commit_message(&applied, config.ci_skip),
        author: config.committer.clone(),
        committer: config.committer.clone(),
        sign: clients.signing.clone(),
    }))
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
    update::marked(
        &files,
        &set.image_policies,
        &config.default_namespace,
        &config.allow_namespaces,
    )
}
