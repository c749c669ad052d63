//! `tidegate validate [PATH]`: every check that needs no cluster (YAML, object
//! identity, duplicates, removed API versions, every HelmRelease's chart
//! rendered by helm with its dependencies), all problems listed at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EXIT_FAILED;
use super::daemon::{BuildArgs, LimitArgs};
use crate::model::ObjectRef;
use crate::{helm, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkout to check
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The repository the checkout is a clone of, for HelmRelease charts kept in it (default: its origin remote)
    #[arg(long, env = "TIDEGATE_GIT_URL")]
    git_url: Option<String>,
    /// Directory in the repository to check (repeatable; default the whole repository)
    #[arg(long, value_delimiter = ',')]
    git_path: Vec<PathBuf>,
    /// Accept removed API versions whose schema did not change (as the daemon would apply them)
    #[arg(long)]
    upgrade_removed_apis: bool,
    /// The helm binary (Helm 3) that renders HelmRelease charts
    #[arg(long, env = "TIDEGATE_HELM_BINARY", default_value = "helm")]
    helm_binary: PathBuf,
    /// Read HelmReleases' valuesFrom.externalSourceRef URLs (otherwise validate makes no request for values)
    #[arg(long)]
    fetch_values: bool,
    /// A host name or network (CIDR) --fetch-values may reach though it is not public (repeatable)
    #[arg(long, value_delimiter = ',')]
    values_url_allow: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    build: BuildArgs,
}

pub fn run(args: Args) -> ExitCode {
    let (kustomize, generation) = args.build.settings(&args.helm_binary);
    // Without keys, encrypted files are checked for structure only.
    let sops = match args.build.local_sops() {
        Ok(sops) => render::sops::Settings {
            structure_only: true,
            ..sops
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let options = render::Options {
        kustomize,
        generation,
        paths: args.git_path.clone(),
        upgrade_removed_apis: args.upgrade_removed_apis,
        limits: args.limits.limits(),
        sync_set: None,
        secret_key: None,
        sops,
    };
    let set = render::render(&args.path, &options);
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    let mut files: Vec<_> = set.manifests.iter().map(|m| &m.file).collect();
    files.dedup();
    println!(
        "{} objects in {} files are valid ({} ignored)",
        set.manifests.len(),
        files.len(),
        set.ignored.len()
    );
    let releases = check_releases(&args, &set);
    if !set.is_clean() {
        eprintln!("{}", render::Errors(&set.errors));
    }
    for e in &releases {
        eprintln!("error: {e}");
    }
    if set.is_clean() && releases.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// Renders every HelmRelease's chart with `helm template` (values from the
/// cluster left out); returns what failed, naming the HelmRelease.
fn check_releases(args: &Args, set: &render::DesiredSet) -> Vec<String> {
    let releases: Vec<_> = set
        .manifests
        .iter()
        .filter(|m| helm::is_release(&m.id))
        .collect();
    if releases.is_empty() {
        return Vec::new();
    }
    let scratch = match tempfile::Builder::new()
        .prefix("tidegate-validate-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => return vec![format!("cannot make a scratch directory for helm: {e}")],
    };
    let (settings, sources) = offline_helm(args, set, scratch.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut errors = Vec::new();
    let placed: Vec<(ObjectRef, Option<helm::release::ReleaseSpec>)> = releases
        .iter()
        .map(|m| {
            let mut id = m.id.clone();
            id.namespace.get_or_insert_with(|| "default".into());
            let spec = helm::release::parse(&id, &m.object.value()).ok();
            (id, spec)
        })
        .collect();
    let duplicates = helm::release::duplicates(placed.iter().filter_map(|(id, spec)| {
        let spec = spec.as_ref()?;
        Some((
            id,
            (spec.target_namespace.as_str(), spec.release_name.as_str()),
        ))
    }));
    for (m, (id, _)) in releases.iter().zip(&placed) {
        if let Some(why) = duplicates.get(id) {
            errors.push(format!("{}: {id}: {why}", m.origin()));
            continue;
        }
        let id = id.clone();
        let result = runtime.block_on(helm::preview(
            None,
            &settings,
            &sources,
            &id,
            &m.object.value(),
        ));
        match result {
            Ok(p) => println!(
                "release {} of {} renders {} objects",
                p.release,
                id,
                p.rendered.len()
            ),
            Err(reason) => errors.push(format!("{}: {id}: {reason}", m.origin())),
        }
    }
    errors
}

/// helm as `validate` runs it: without a cluster, in `dir`, reading charts
/// from the checkout and the user's own disk.
fn offline_helm(
    args: &Args,
    set: &render::DesiredSet,
    dir: &std::path::Path,
) -> (helm::Settings, helm::chart::Sources) {
    let settings = helm::Settings {
        binary: helm::Helm {
            plugins: None,
            max_output: helm::binary::MAX_RELEASE_BYTES,
            binary: args.helm_binary.clone(),
            kubeconfig: None,
            context: None,
            home: dir.join("helm"),
            proxy: None,
            post_renderer: std::env::current_exe().ok(),
        },
        cache: dir.join("charts"),
        git: None,
        allow_namespaces: Vec::new(),
        allow_local_charts: true,
        values_url_allow: args.values_url_allow.clone(),
        background: None,
    };
    let mut sources =
        helm::chart::Sources::checkout(&args.path, args.git_url.as_deref(), settings.cache.clone());
    sources.proxy_settings = set.proxy.clone().filter(|p| !p.is_empty());
    // Run by a user on their own checkout: their own disk is theirs to read.
    sources.allow_local = true;
    sources.values = helm::external::Access {
        fetch: args.fetch_values,
        allow: args.values_url_allow.clone(),
    };
    (settings, sources)
}
