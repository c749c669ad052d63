//! fluxctl's workload commands: `release`, `automate`, `deautomate`,
//! `lock`, `unlock`, `policy`. Each asks the daemon (through the Kubernetes
//! API, see `daemon::automation::requests`) to edit the workload in Git,
//! waits for its answer, then for the sync of the commit, and prints the
//! revision.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{DeleteParams, PostParams};
use serde::Serialize;

use super::daemon::parse_duration;
use super::{EXIT_ERROR, EXIT_FAILED, Format};
use crate::automation::request::{Action, Request};
use crate::cluster::state::StateRef;
use crate::cluster::{Cluster, Connection};
use crate::daemon::automation::requests::{
    ANSWER_ANNOTATION, Answer, NAMESPACE_LABEL, REQUEST_ANNOTATION, SIGNER, fingerprint,
};
use crate::model::marks::SYNC_SET_LABEL;
use crate::model::record::Outcome;

/// What every workload command takes.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The workload, as fluxctl named it: namespace:kind/name (shop:deployment/web)
    #[arg(long, short = 'w')]
    workload: String,
    /// How long to wait for the daemon's commit and its sync
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
    /// The sync set of the daemon to ask
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    sync_set_name: String,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("images").required(true).args(["update_image", "update_all_images"])))]
pub struct ReleaseArgs {
    #[command(flatten)]
    target: Target,
    /// Move the workload's containers of this image's repository to its tag (repo:tag)
    #[arg(long)]
    update_image: Option<String>,
    /// Move each container to the newest image its tag filter allows
    #[arg(long)]
    update_all_images: bool,
    /// Show what would change; commit nothing
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    target: Target,
    /// Why it is locked (fluxcd.io/locked_msg)
    #[arg(long, short = 'm')]
    message: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    target: Target,
    /// A container's tag filter: CONTAINER=glob:…|semver:…|regex:… (repeatable)
    #[arg(long = "tag", value_parser = container_pattern, required = true)]
    tags: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct Plain {
    #[command(flatten)]
    target: Target,
}

fn container_pattern(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((c, p)) if !c.is_empty() && !p.is_empty() => Ok((c.into(), p.into())),
        _ => Err(format!("{text:?} is not CONTAINER=PATTERN")),
    }
}

/// Which command, and what it asks.
pub enum Asked {
    Release(ReleaseArgs),
    Automate(Plain),
    Deautomate(Plain),
    Lock(LockArgs),
    Unlock(Plain),
    Policy(PolicyArgs),
}

impl Asked {
    fn split(self) -> (Target, Action, bool) {
        match self {
            Asked::Release(a) => (
                a.target,
                Action::Release {
                    image: a.update_image,
                },
                a.dry_run,
            ),
            Asked::Automate(a) => (a.target, Action::Automate, false),
            Asked::Deautomate(a) => (a.target, Action::Deautomate, false),
            Asked::Lock(a) => (a.target, Action::Lock { message: a.message }, false),
            Asked::Unlock(a) => (a.target, Action::Unlock, false),
            Asked::Policy(a) => (
                a.target,
                Action::Policy {
                    tags: a.tags.into_iter().collect::<BTreeMap<_, _>>(),
                },
                false,
            ),
        }
    }
}

#[derive(Debug, Serialize)]
struct Shown {
    workload: String,
    /// Who asked, as the API server authenticated them.
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    synced: bool,
    diff: String,
}

pub async fn run(asked: Asked, connection: Connection) -> anyhow::Result<ExitCode> {
    let (target, action, dry_run) = asked.split();
    let (client, state) = connection
        .state(target.sync_set_name.clone())
        .await
        .context("cannot connect to the cluster")?;
    let request = Request {
        workload: target.workload.clone(),
        action,
        dry_run,
        sync_set: state.sync_set.clone(),
        namespace: state.namespace.clone(),
    };
    if let Err(e) = request.check() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let deadline = tokio::time::Instant::now() + target.timeout;
    let answer = match ask(&client, &state, &request, deadline).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    if let Some(e) = &answer.error {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    let synced = match &answer.revision {
        Some(revision) => synced(&client, &state, revision, deadline).await?,
        None => None,
    };
    let shown = Shown {
        workload: request.workload.clone(),
        user: answer.user.clone(),
        revision: answer.revision.clone(),
        synced: synced == Some(true),
        diff: answer.diff.clone(),
    };
    match target.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&shown)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(&shown)?),
        Format::Text => {
            print!("{}", shown.diff);
            match (&shown.revision, dry_run, synced) {
                (_, true, _) if shown.diff.is_empty() => println!("dry run: nothing would change"),
                (_, true, _) => println!("dry run: nothing committed"),
                (None, _, _) => println!("nothing to change: Git says so already"),
                (Some(r), _, Some(true)) => {
                    println!("committed as {}; revision {r} synced", shown.user)
                }
                (Some(r), _, Some(false)) => println!(
                    "committed as {}; the sync of revision {r} failed",
                    shown.user
                ),
                (Some(r), _, None) => {
                    println!("committed as {}; revision {r} not synced yet", shown.user)
                }
            }
        }
    }
    Ok(match synced {
        Some(false) => ExitCode::from(EXIT_FAILED),
        None if answer.revision.is_some() => ExitCode::from(EXIT_ERROR),
        _ => ExitCode::SUCCESS,
    })
}

/// A certificate request that nothing signs, subject the request's
/// fingerprint: what the API server attaches the asker's identity to.
fn certificate_request(fingerprint: &str) -> anyhow::Result<Vec<u8>> {
    use openssl::{ec, hash, nid::Nid, pkey, x509};
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = pkey::PKey::from_ec_key(ec::EcKey::generate(&group)?)?;
    let mut name = x509::X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, fingerprint)?;
    let mut req = x509::X509ReqBuilder::new()?;
    req.set_pubkey(&key)?;
    req.set_subject_name(&name.build())?;
    req.sign(&key, hash::MessageDigest::sha256())?;
    Ok(req.build().to_pem()?)
}

/// Makes the request, waits for the daemon's answer, removes the request.
async fn ask(
    client: &kube::Client,
    state: &StateRef,
    request: &Request,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Answer> {
    let text = serde_json::to_string(request)?;
    let mut csr = CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(certificate_request(&fingerprint(&text))?),
            signer_name: SIGNER.into(),
            usages: Some(vec!["client auth".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    csr.metadata.generate_name = Some(format!("tidegate-{}-", state.sync_set));
    csr.metadata.labels = Some(
        [
            (SYNC_SET_LABEL.to_string(), state.sync_set.clone()),
            (NAMESPACE_LABEL.to_string(), state.namespace.clone()),
        ]
        .into_iter()
        .collect(),
    );
    csr.metadata.annotations = Some(
        [(REQUEST_ANNOTATION.to_string(), text)]
            .into_iter()
            .collect(),
    );
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
    let made = api
        .create(&PostParams::default(), &csr)
        .await
        .context("cannot make the request (a CertificateSigningRequest)")?;
    let name = made.metadata.name.clone().unwrap_or_default();
    let answered = kube::runtime::wait::await_condition(
        api.clone(),
        &name,
        |c: Option<&CertificateSigningRequest>| {
            c.and_then(|c| c.metadata.annotations.as_ref())
                .is_some_and(|a| a.contains_key(ANSWER_ANNOTATION))
        },
    );
    let answered = tokio::time::timeout_at(deadline, answered).await;
    let _ = api.delete(&name, &DeleteParams::default()).await;
    let csr = match answered {
        Ok(Ok(Some(csr))) => csr,
        Ok(Ok(None)) => anyhow::bail!("the request {name} was deleted before it was answered"),
        Ok(Err(e)) => return Err(e).context("cannot follow the request"),
        Err(_) => anyhow::bail!(
            "no daemon answered within the timeout. Is tidegate running in namespace {} with sync set {}, with automation on (not --git-readonly)?",
            state.namespace,
            state.sync_set
        ),
    };
    let text = csr
        .metadata
        .annotations
        .unwrap_or_default()
        .remove(ANSWER_ANNOTATION)
        .unwrap_or_default();
    serde_json::from_str(&text).context("the daemon's answer cannot be read")
}

/// Whether the sync of `revision` succeeded, once one is recorded; `None`
/// when none was by the deadline.
async fn synced(
    client: &kube::Client,
    state: &StateRef,
    revision: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Option<bool>> {
    let mut maps = crate::daemon::requests::follow(client, state);
    loop {
        let map = tokio::select! {
            map = maps.recv() => map,
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
        };
        let Some(map) = map else {
            return Ok(None);
        };
        if let Some(status) = Cluster::status_in(state, &map)?
            && status.revision.as_deref() == Some(revision)
        {
            return Ok(Some(status.result == Outcome::Succeeded));
        }
    }
}
