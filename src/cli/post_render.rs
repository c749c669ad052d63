//! `tidegate post-render --label KEY=VALUE` (hidden): the post-renderer
//! tidegate gives helm. Rendered manifests in on stdin; the same objects,
//! each with the label added (and the repository's proxy settings in its
//! workloads), out on stdout (as JSON documents, which helm
//! reads as YAML). The label lets a sync find a release's objects with one
//! list request per resource.

use std::io::{Read, Write};
use std::process::ExitCode;

use super::EXIT_ERROR;
use crate::helm::allowed::{Rendered, kind_key, objects_refusal, rendered_ref};
use crate::render::ParseLimits;
use crate::render::manifest::parse_documents;
use crate::render::proxy::{self, ProxySettings};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The label to add to every object
    #[arg(long, value_name = "KEY=VALUE")]
    label: String,
    /// HTTP_PROXY to inject into workloads
    #[arg(long)]
    http_proxy: Option<String>,
    /// HTTPS_PROXY to inject into workloads
    #[arg(long)]
    https_proxy: Option<String>,
    /// NO_PROXY to inject into workloads
    #[arg(long)]
    no_proxy: Option<String>,
    /// The namespace helm installs into, for objects that name none
    #[arg(long)]
    release_namespace: Option<String>,
    /// A namespace objects may be in (repeatable); none: any
    #[arg(long)]
    allow_namespace: Vec<String>,
    /// `group/Kind` of a namespaced kind checked before the install
    /// (repeatable); with --allow-namespace, only these may be installed
    #[arg(long)]
    namespaced_kind: Vec<String>,
    /// Most bytes of rendered manifests read (--max-release-bytes)
    #[arg(long, default_value_t = crate::helm::binary::MAX_RELEASE_BYTES)]
    max_bytes: u64,
}

pub fn run(args: Args) -> ExitCode {
    let Some((key, value)) = args.label.split_once('=') else {
        eprintln!("error: --label {}: not KEY=VALUE", args.label);
        return ExitCode::from(EXIT_ERROR);
    };
    let mut text = String::new();
    if let Err(e) = std::io::stdin()
        .take(args.max_bytes.saturating_add(1))
        .read_to_string(&mut text)
    {
        eprintln!("error: cannot read the rendered manifests: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    if text.len() as u64 > args.max_bytes {
        eprintln!(
            "error: the chart renders more than {} bytes of manifests (--max-release-bytes); refused before anything is installed",
            args.max_bytes
        );
        return ExitCode::from(EXIT_ERROR);
    }
    let limits = ParseLimits {
        max_documents: 100_000,
        ..ParseLimits::default()
    };
    let documents = match parse_documents(&text, &limits) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: the rendered manifests are not YAML: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let proxy = ProxySettings {
        http_proxy: args.http_proxy.clone(),
        https_proxy: args.https_proxy.clone(),
        no_proxy: args.no_proxy.clone(),
    };
    if let Some(why) = refusal(&args, &documents) {
        eprintln!("error: {why}");
        return ExitCode::from(EXIT_ERROR);
    }
    let mut out = std::io::stdout().lock();
    for mut doc in documents {
        if !proxy.is_empty() {
            proxy::inject(&mut doc, &proxy);
        }
        if let Some(metadata) = doc.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            let labels = metadata
                .entry("labels")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(key.to_string(), value.into());
            }
        }
        let written = writeln!(out, "---").and_then(|_| {
            serde_json::to_writer(&mut out, &doc)?;
            writeln!(out)
        });
        if let Err(e) = written {
            eprintln!("error: cannot write the manifests: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    }
    ExitCode::SUCCESS
}

/// Why helm may not install these objects under the allow-list: an object
/// of a kind not checked before the install (so of unknown scope), or in a
/// namespace not allowed.
fn refusal(args: &Args, documents: &[serde_json::Value]) -> Option<String> {
    if args.allow_namespace.is_empty() {
        return None;
    }
    documents.iter().filter(|d| !d.is_null()).find_map(|doc| {
        let Some(mut id) = rendered_ref(doc) else {
            return Some("a rendered document has no apiVersion and kind".to_string());
        };
        if !args.namespaced_kind.contains(&kind_key(&id)) {
            return Some(format!(
                "{id}: its kind was not checked against --k8s-allow-namespace before the install (cluster-scoped, or rendered only at install)"
            ));
        }
        if id.namespace.is_none() {
            id.namespace = args.release_namespace.clone();
        }
        let rendered = Rendered {
            id,
            namespaced: Some(true),
        };
        objects_refusal(std::slice::from_ref(&rendered), &args.allow_namespace)
    })
}
