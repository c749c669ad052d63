//! `tidegate validate [PATH]`: every check that needs no cluster (YAML, object
//! identity, duplicates, removed API versions), all problems listed at once.

use std::path::PathBuf;
use std::process::ExitCode;

use super::EXIT_FAILED;
use super::daemon::LimitArgs;
use crate::render;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkout to check
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Directory in the repository to check (repeatable; default the whole repository)
    #[arg(long, value_delimiter = ',')]
    git_path: Vec<PathBuf>,
    /// Accept removed API versions whose schema did not change (as the daemon would apply them)
    #[arg(long)]
    upgrade_removed_apis: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(args: Args) -> ExitCode {
    let options = render::Options {
        paths: args.git_path,
        upgrade_removed_apis: args.upgrade_removed_apis,
        limits: args.limits.limits(),
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
    if set.is_clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", render::Errors(&set.errors));
        ExitCode::from(EXIT_FAILED)
    }
}
