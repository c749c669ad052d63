//! The command line: arguments in, a subcommand run, an exit code out.
//!
//! Exit codes: 0 success (for `diff`: no changes); 1 the sync or check ran and
//! failed (for `diff`: there are changes); 2 tidegate could not run, or `diff`
//! found an error.

mod daemon;
mod diff;
mod identity;
mod install;
mod post_render;
mod status;
mod sync;
mod validate;
mod workload_requests;
use workload_requests::Asked;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cluster::Connection;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version = VERSION,
    about = "Keeps a Kubernetes cluster equal to a Git repository"
)]
pub struct Cli {
    /// How log lines are written: text, or JSON objects (one per line)
    #[arg(
        long,
        global = true,
        value_enum,
        env = "TIDEGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// The daemon's namespace, where it keeps its state (default: the context's namespace)
    #[arg(short, long, global = true, env = "TIDEGATE_NAMESPACE")]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reconciler: fetch the repository and sync it into the cluster
    Daemon(Box<daemon::Args>),
    /// Show what a sync of a local checkout would change in the cluster
    Diff(diff::Args),
    /// Check manifests without a cluster, for a pull request
    Validate(validate::Args),
    /// Show the last sync: revision, time, counts, errors per object
    Status(status::Args),
    /// Print the SSH deploy key to add to the Git host
    Identity(identity::Args),
    /// Ask the daemon to fetch and sync now, and wait for the result
    Sync(sync::Args),
    /// List the workloads and HelmReleases a sync set manages: containers, images, automation
    ListWorkloads(workloads::Args),
    /// List automated containers' images and the tags each may move to, the pick first
    ListImages(workloads::ImagesArgs),
    /// Release an image to a workload, by a commit to Git: --update-image repo:tag, or --update-all-images
    Release(workload_requests::ReleaseArgs),
    /// Automate a workload's images (fluxcd.io/automated: "true"), by a commit to Git
    Automate(workload_requests::Plain),
    /// Stop automating a workload's images, by a commit to Git
    Deautomate(workload_requests::Plain),
    /// Lock a workload: automation and releases leave it alone, by a commit to Git
    Lock(workload_requests::LockArgs),
    /// Unlock a workload, by a commit to Git
    Unlock(workload_requests::Plain),
    /// Set a workload's tag filters (--tag CONTAINER=PATTERN), by a commit to Git
    Policy(workload_requests::PolicyArgs),
    /// Print the manifests that run tidegate in a cluster, for kubectl apply -f -
    Install(install::Args),
    /// Print the version and the Git commit tidegate was built from
    Version,
    /// Print a shell completion script (bash, zsh or fish)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The post-renderer tidegate gives helm (labels a release's objects)
    #[command(hide = true)]
    PostRender(post_render::Args),
}

/// `0.1.0 (commit 1a2b3c4d5e6f)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TIDEGATE_COMMIT"),
    ")"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

impl Cli {
    fn connection(&self) -> Connection {
        Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let connection = cli.connection();
    let _ = LOG_FORMAT.set(cli.log_format);
    match cli.command {
        Command::Validate(args) => return Ok(validate::run(args)),
        Command::PostRender(args) => return Ok(post_render::run(args)),
        Command::Install(args) => return install::run(args, connection),
        Command::Version => {
            println!("tidegate {VERSION}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tidegate",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Daemon(args) => runtime.block_on(daemon::run(*args, connection)),
        Command::Diff(args) => runtime.block_on(diff::run(args, connection)),
        Command::Status(args) => runtime.block_on(status::run(args, connection)),
        Command::Identity(args) => runtime.block_on(identity::run(args, connection)),
        Command::Sync(args) => runtime.block_on(sync::run(args, connection)),
        Command::ListWorkloads(args) => runtime.block_on(workloads::run(args, connection)),
        Command::ListImages(args) => runtime.block_on(workloads::images(args, connection)),
        Command::Release(a) => asked(&runtime, Asked::Release(a), connection),
        Command::Automate(a) => asked(&runtime, Asked::Automate(a), connection),
        Command::Deautomate(a) => asked(&runtime, Asked::Deautomate(a), connection),
        Command::Lock(a) => asked(&runtime, Asked::Lock(a), connection),
        Command::Unlock(a) => asked(&runtime, Asked::Unlock(a), connection),
        Command::Policy(a) => asked(&runtime, Asked::Policy(a), connection),
        Command::Validate(_)
        | Command::PostRender(_)
        | Command::Install(_)
        | Command::Version
        | Command::Completion { .. } => unreachable!("handled above"),
    }
}

fn asked(
    runtime: &tokio::runtime::Runtime,
    asked: Asked,
    connection: Connection,
) -> anyhow::Result<ExitCode> {
    runtime.block_on(workload_requests::run(asked, connection))
}

/// Logs go to stderr, so stdout carries only what a command prints.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // JSON: one object per line, the span's fields (the revision) on each,
    // as log collectors read them.
    match LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text) {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Yaml,
}
