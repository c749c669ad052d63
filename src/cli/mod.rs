//! The command line: arguments in, a subcommand run, an exit code out.
//!
//! Exit codes: 0 success; 1 the sync (or check) ran and failed; 2 tidegate could
//! not run (bad arguments, unreachable cluster or repository).

mod daemon;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cluster::Connection;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "Keeps a Kubernetes cluster equal to a Git repository"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reconciler: fetch the repository and sync it into the cluster
    Daemon(daemon::Args),
}

impl Cli {
    fn connection(&self) -> Connection {
        Connection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let connection = cli.connection();
    match cli.command {
        Command::Daemon(args) => runtime.block_on(daemon::run(args, connection)),
    }
}

/// Logs go to stderr, so stdout carries only what a command prints.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
