//! The workload commands' requests (`tidegate release`, `automate`,
//! `lock`, …). Each is a CertificateSigningRequest that nothing signs: its
//! `spec.username` and groups are set by the API server to whoever created
//! it, and can be set by no one else, so the commit's author is the
//! Kubernetes user who asked, not a name the CLI claims. The request itself
//! is an annotation whose SHA-256 is the subject of the (immutable)
//! certificate request, so editing it afterwards voids it. The user must be
//! allowed to `patch` the workload (a SubjectAccessReview); the answer is an
//! annotation the CLI waits for.

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::registries::look_up;
use super::*;
use crate::automation::request::{self, Action, Request, Workload};
use crate::automation::{annotate, containers};
use crate::model::marks::SYNC_SET_LABEL;

/// The signer the requests name (nothing signs them).
pub const SIGNER: &str = "tidegate.dev/workload-request";
pub const REQUEST_ANNOTATION: &str = "tidegate.dev/request";
pub const ANSWER_ANNOTATION: &str = "tidegate.dev/answer";
/// With the sync set's label, which daemon a request is for.
pub const NAMESPACE_LABEL: &str = "tidegate.dev/namespace";

/// What the daemon answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    /// The commit pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The change, as a diff of the file (also for `--dry-run`).
    #[serde(default)]
    pub diff: String,
    /// Whose request it was, as the API server authenticated them.
    #[serde(default)]
    pub user: String,
}

/// The subject a request's certificate request carries.
pub fn fingerprint(request: &str) -> String {
    crate::model::checksum::sha256_hex(request.as_bytes())
}

/// The labels of this daemon's requests.
pub fn selector(state: &StateRef) -> String {
    format!(
        "{SYNC_SET_LABEL}={},{NAMESPACE_LABEL}={}",
        state.sync_set, state.namespace
    )
}

/// Sends each unanswered request of this daemon to `to`.
pub(super) fn watch(client: kube::Client, state: &StateRef, to: mpsc::Sender<String>) {
    use kube::runtime::watcher;
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client);
    let config = watcher::Config::default().labels(&selector(state));
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config));
        while let Some(event) = events.next().await {
            let csr = match event {
                Ok(watcher::Event::Apply(csr) | watcher::Event::InitApply(csr)) => csr,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!("workload requests: watch: {e}");
                    continue;
                }
            };
            if csr.spec.signer_name == SIGNER
                && !annotations(&csr).contains_key(ANSWER_ANNOTATION)
                && let Some(name) = csr.metadata.name
                && to.send(name).await.is_err()
            {
                return;
            }
        }
    });
}

fn annotations(csr: &CertificateSigningRequest) -> BTreeMap<String, String> {
    csr.metadata.annotations.clone().unwrap_or_default()
}

/// How long a request may wait for its answer; older ones are refused
/// and removed.
pub const REQUEST_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the request was made longer ago than [`REQUEST_LIFETIME`]
/// (by the API server's clock).
fn stale(csr: &CertificateSigningRequest) -> bool {
    let Some(made) = &csr.metadata.creation_timestamp else {
        return true;
    };
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(made.0);
    age.as_secs() > REQUEST_LIFETIME.as_secs() as i64
}

/// The request and who made it, if the request is the one the
/// certificate request was made for, and for this daemon.
fn read(csr: &CertificateSigningRequest, state: &StateRef) -> Result<(Request, UserInfo), String> {
    let text = annotations(csr)
        .remove(REQUEST_ANNOTATION)
        .ok_or("the request has no tidegate.dev/request annotation")?;
    let pem = &csr.spec.request.0;
    let subject = openssl::x509::X509Req::from_pem(pem)
        .ok()
        .and_then(|r| {
            let name = r
                .subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()?;
            name.data().to_string().ok()
        })
        .ok_or("the certificate request cannot be read")?;
    if subject != fingerprint(&text) {
        return Err("the request was changed after it was made: ask again".into());
    }
    let request: Request =
        serde_json::from_str(&text).map_err(|e| format!("the request cannot be read: {e}"))?;
    if request.sync_set != state.sync_set || request.namespace != state.namespace {
        return Err(format!(
            "the request is for sync set {} in namespace {}, not this daemon",
            request.sync_set, request.namespace
        ));
    }
    request.check()?;
    let spec = &csr.spec;
    let user = UserInfo {
        username: spec.username.clone(),
        groups: spec.groups.clone(),
        uid: spec.uid.clone(),
        extra: spec.extra.clone(),
    };
    if user.username.as_deref().unwrap_or_default().is_empty() {
        return Err("the API server recorded no user for the request".into());
    }
    Ok((request, user))
}

impl Scanner {
    /// Answers one request, if it is still unanswered and this daemon leads.
    pub(super) async fn answer(
        &mut self,
        name: &str,
        current: Option<(GitSource, Snapshot, render::Options)>,
    ) -> bool {
        let api: kube::Api<CertificateSigningRequest> = kube::Api::all(self.cluster.client.clone());
        let Ok(Some(csr)) = api.get_opt(name).await else {
            return false;
        };
        if annotations(&csr).contains_key(ANSWER_ANNOTATION) || self.cluster.fenced().is_err() {
            return false;
        }
        // Each request is answered once, even if its answer is taken off.
        let uid = csr.metadata.uid.clone().unwrap_or_default();
        if self.answered.contains(&uid) {
            return false;
        }
        if stale(&csr) {
            tracing::info!(
                request = name,
                "workload request: older than 10 minutes; removed unanswered"
            );
            let _ = api.delete(name, &Default::default()).await;
            return false;
        }
        if self.answered.len() >= 1024 {
            self.answered.pop_front();
        }
        self.answered.push_back(uid);
        let mut answer = Answer::default();
        let pushed = match self.decide(&csr, current, &mut answer).await {
            Ok(pushed) => pushed,
            Err(e) => {
                tracing::warn!(request = name, "workload request: {e}");
                answer.error = Some(e);
                false
            }
        };
        let patch = serde_json::json!({"metadata": {"annotations": {
            ANSWER_ANNOTATION: serde_json::to_string(&answer).expect("answers serialize")}}});
        if let Err(e) = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(request = name, "workload request: cannot answer: {e}");
        }
        pushed
    }

    /// Reads, authorizes and carries out a request; true when it pushed.
    async fn decide(
        &mut self,
        csr: &CertificateSigningRequest,
        current: Option<(GitSource, Snapshot, render::Options)>,
        answer: &mut Answer,
    ) -> Result<bool, String> {
        let (request, user) = read(csr, &self.state)?;
        let who = user.username.clone().unwrap_or_default();
        answer.user = who.clone();
        let workload = Workload::parse(&request.workload)?;
        let (group, plural) = containers::KINDS
            .iter()
            .find(|k| k.2.eq_ignore_ascii_case(&workload.kind))
            .map(|k| (k.0, k.3))
            .ok_or_else(|| format!("{}: not a kind automation edits", workload.kind))?;
        let attributes = ResourceAttributes {
            namespace: Some(workload.namespace.clone()),
            verb: Some("patch".into()),
            group: Some(group.into()),
            resource: Some(plural.into()),
            name: Some(workload.name.clone()),
            ..ResourceAttributes::default()
        };
        let allowed = crate::daemon::auth::may(&self.cluster.client, user, attributes)
            .await
            .map_err(|e| format!("cannot review the request: {e}"))?;
        if !allowed {
            return Err(format!(
                "{who} may not patch {plural}.{group} {}/{}: the request is refused",
                workload.namespace, workload.name
            ));
        }
        let (source, snapshot, options) =
            current.ok_or("the daemon has fetched no revision yet: ask again")?;
        tracing::info!(user = %who, workload = %request.workload, "workload request");
        let signing = self
            .config
            .signing
            .signing(&self.cluster.client, &self.state.namespace)
            .await?;
        lock(&self.clients).signing = signing;
        let (config, clients) = (self.config.clone(), self.clients.clone());
        let cluster = self.cluster.detached();
        let done = tokio::task::spawn_blocking(move || {
            let (branch, base) = cycle::target(&config, &source, &snapshot)?;
            let made = change(
                &config,
                &source,
                &snapshot,
                &options,
                &base,
                &request,
                &who,
                &mut lock(&clients),
            )?;
            let Some((change, diff)) = made else {
                return Ok((None, String::new()));
            };
            if request.dry_run {
                return Ok((None, diff));
            }
            if cluster.fenced().is_err() {
                return Err("this daemon no longer holds the leader Lease: ask again".to_string());
            }
            match source
                .push(&change, &branch)
                .map_err(|e| crate::model::error_chain(&e))?
            {
                Pushed::Commit(revision) => Ok((Some(revision), diff)),
                Pushed::Moved => Err(format!("branch {branch} moved meanwhile: ask again")),
            }
        })
        .await
        .map_err(|e| format!("the request ended abnormally: {e}"))??;
        (answer.revision, answer.diff) = done;
        Ok(answer.revision.is_some())
    }
}

/// The commit a request makes on `base`, with its diff; `None` when the
/// file says so already.
#[allow(clippy::too_many_arguments)]
fn change(
    config: &Config,
    source: &GitSource,
    snapshot: &Snapshot,
    options: &render::Options,
    base: &str,
    request: &Request,
    user: &str,
    clients: &mut Clients,
) -> Result<Option<(Change, String)>, String> {
    let (set, _) = cycle::read_tree(config, source, snapshot, options)?
        .ok_or("the daemon fetched a newer revision meanwhile: ask again")?;
    let workload = Workload::parse(&request.workload)?;
    let m = workload
        .find(&set.manifests, &config.default_namespace)
        .ok_or_else(|| format!("no workload {} in the synced paths", request.workload))?;
    if m.built.is_some() {
        return Err(format!(
            "{} is built from {} (kustomize or a .flux.yaml), not written in one file: \
             change it there (image automation moves kustomization images: markers and .flux.yaml patch files itself)",
            m.id,
            crate::model::shown(&m.file)
        ));
    }
    if !config.allow_namespaces.is_empty() && !config.allow_namespaces.contains(&workload.namespace)
    {
        return Err(format!(
            "namespace {} is not one this daemon may change",
            workload.namespace
        ));
    }
    let object = m.object.value();
    let text = source
        .read_file(base, &m.file)
        .map_err(|e| format!("{}: {e}", crate::model::shown(&m.file)))?;
    let shown = crate::model::shown(&m.file);
    // The document edited is the object authorized, in the file as the
    // commit's parent has it.
    if edit::identity(&text, m.index) != edit::identity_of(&object) {
        return Err(format!(
            "{shown}: {} is not where the synced revision has it on this branch: merge the branch, then ask again",
            m.id
        ));
    }
    let (new, images) = match &request.action {
        Action::Release { image } => {
            let (edits, images) = released(config, m, &object, request, image.as_deref(), clients)?;
            (
                edit::apply(&text, &edits).map_err(|e| format!("{shown}: {e}"))?,
                images,
            )
        }
        _ => (
            annotate::annotate(&text, m.index, &request.annotations(user))
                .map_err(|e| format!("{shown}: {}: {e}", m.id))?,
            Vec::new(),
        ),
    };
    if new == text {
        return Ok(None);
    }
    let diff = document_diff(&shown, &text, &new, m.index);
    let change = Change {
        parent: base.to_string(),
        files: vec![(m.file.clone(), new.into_bytes())],
        message: request.message(&images),
        author: Person {
            name: user.to_string(),
            email: user.to_string(),
        },
        committer: config.committer.clone(),
        sign: clients.signing.clone(),
    };
    Ok(Some((change, diff)))
}

/// A release's edits, and the images it releases; refused while locked.
fn released(
    config: &Config,
    m: &render::Manifest,
    object: &serde_json::Value,
    request: &Request,
    image: Option<&str>,
    clients: &mut Clients,
) -> Result<(Vec<edit::Edit>, Vec<String>), String> {
    if let Some(lock) = request::lock_of(object) {
        return Err(format!(
            "{} is locked{}: unlock it first",
            request.workload,
            lock.user.map(|u| format!(" by {u}")).unwrap_or_default()
        ));
    }
    let updates = match image {
        Some(image) => request::release_edits(object, image)?,
        None => newest(config, m, clients),
    };
    let images = updates.iter().map(|(_, v)| v.clone()).collect();
    let edits = updates
        .into_iter()
        .map(|(path, value)| edit::Edit {
            document: m.index,
            path,
            value,
        })
        .collect();
    Ok((edits, images))
}

/// The longest diff an answer carries (it is an annotation).
const MAX_DIFF: usize = 16 * 1024;

/// The change to document `index` of a file, as a unified diff of that
/// document alone: no line of another document (a Secret beside the
/// workload) is shown. At most [`MAX_DIFF`] bytes.
fn document_diff(file: &str, old: &str, new: &str, index: usize) -> String {
    use crate::render::manifest::document_ranges;
    let doc = |text: &str| {
        document_ranges(text)
            .into_iter()
            .nth(index)
            .map_or(String::new(), |r| text[r].to_string())
    };
    let (old, new) = (doc(old), doc(new));
    let mut diff = similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .header(file, file)
        .to_string();
    if diff.len() > MAX_DIFF {
        let mut cut = MAX_DIFF;
        while !diff.is_char_boundary(cut) {
            cut -= 1;
        }
        diff.truncate(cut);
        diff.push_str("\n… (the diff is cut here)\n");
    }
    diff
}

/// `--update-all-images`: each container to the newest its filter allows,
/// as if the workload were automated.
fn newest(
    config: &Config,
    m: &render::Manifest,
    clients: &mut Clients,
) -> Vec<(containers::Path, String)> {
    let mut object = m.object.value();
    match object["metadata"]["annotations"].as_object_mut() {
        Some(a) => {
            a.insert("fluxcd.io/automated".into(), "true".into());
        }
        None => {
            object["metadata"]["annotations"] = serde_json::json!({"fluxcd.io/automated": "true"})
        }
    }
    let forced = render::Manifest {
        object: crate::model::Json::new(&object),
        ..m.clone()
    };
    let (candidates, _) = update::candidates(
        std::slice::from_ref(&forced),
        &config.default_namespace,
        &[],
    );
    let tags = look_up(config, &candidates, clients);
    let objects = [((m.file.clone(), m.index), object)].into_iter().collect();
    update::updates(&candidates, &tags, &objects)
        .into_iter()
        .flat_map(|u| u.edits.into_iter().map(|e| (e.path, e.value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_shows_the_workload_document_alone_and_not_much_of_it() {
        let secret =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n";
        let old =
            format!("{secret}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n");
        let new = old.replace(
            "  name: web\n",
            "  annotations:\n    fluxcd.io/locked: \"true\"\n  name: web\n",
        );
        let diff = document_diff("web.yaml", &old, &new, 1);
        assert!(diff.contains("+    fluxcd.io/locked: \"true\""), "{diff}");
        assert!(
            !diff.contains("hunter2") && !diff.contains("Secret"),
            "{diff}"
        );
        let big = "x: y\n".repeat(10_000);
        let diff = document_diff("big.yaml", "", &big, 0);
        assert!(diff.len() <= MAX_DIFF + 64, "{}", diff.len());
        assert!(diff.ends_with("(the diff is cut here)\n"));
    }

    #[test]
    fn a_request_changed_after_it_was_made_is_refused() {
        let text = r#"{"workload":"shop:deployment/web","action":"automate","sync_set":"tidegate","namespace":"flux"}"#;
        let state = StateRef {
            namespace: "flux".into(),
            sync_set: "tidegate".into(),
        };
        let csr = |subject: &str, annotation: &str| {
            let key = openssl::pkey::PKey::from_ec_key(
                openssl::ec::EcKey::generate(
                    &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                        .unwrap(),
                )
                .unwrap(),
            )
            .unwrap();
            let mut name = openssl::x509::X509NameBuilder::new().unwrap();
            name.append_entry_by_nid(openssl::nid::Nid::COMMONNAME, subject)
                .unwrap();
            let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
            req.set_pubkey(&key).unwrap();
            req.set_subject_name(&name.build()).unwrap();
            req.sign(&key, openssl::hash::MessageDigest::sha256())
                .unwrap();
            let mut csr = CertificateSigningRequest::default();
            csr.spec.request = k8s_openapi::ByteString(req.build().to_pem().unwrap());
            csr.spec.username = Some("jane".into());
            csr.metadata.annotations = Some(
                [(REQUEST_ANNOTATION.to_string(), annotation.to_string())]
                    .into_iter()
                    .collect(),
            );
            csr
        };
        let (request, user) = read(&csr(&fingerprint(text), text), &state).unwrap();
        assert_eq!(request.action, Action::Automate);
        assert_eq!(user.username.as_deref(), Some("jane"));
        let changed = text.replace("automate", "deautomate");
        let e = read(&csr(&fingerprint(text), &changed), &state).unwrap_err();
        assert!(e.contains("changed after it was made"), "{e}");
        let other = StateRef {
            namespace: "elsewhere".into(),
            sync_set: "tidegate".into(),
        };
        let e = read(&csr(&fingerprint(text), text), &other).unwrap_err();
        assert!(e.contains("not this daemon"), "{e}");
    }
}
