//! `tidegate identity [--regenerate]`: the public deploy key and its
//! fingerprint, ready to paste into the Git host.

use std::process::ExitCode;

use anyhow::Context;

use crate::cluster::Connection;
use crate::identity::{self, KeyRef};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Secret holding the deploy key
    #[arg(
        long,
        env = "TIDEGATE_K8S_SECRET_NAME",
        default_value = "tidegate-git-deploy"
    )]
    k8s_secret_name: String,
    /// Replace the key with a new one; the daemon uses it from its next fetch
    #[arg(long)]
    regenerate: bool,
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let key_ref = KeyRef {
        namespace: connection.namespace(&client),
        name: args.k8s_secret_name,
    };
    let key = if args.regenerate {
        identity::regenerate(&client, &key_ref).await?
    } else {
        identity::ensure(&client, &key_ref).await?
    };
    println!("{}", key.public);
    println!("{}", key.fingerprint);
    eprintln!(
        "Add this key to the repository as a read-only deploy key.{}",
        if args.regenerate {
            " The old key no longer works for tidegate: remove it from the Git host."
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
