//! tidegate keeps a Kubernetes cluster equal to a Git repository.
//!
//! The data flow, one module per stage: [`source`] (Git → snapshot),
//! [`render`] (snapshot → desired set), [`cluster`] (the API edge: discovery
//! and server-side apply), [`helm`] (HelmRelease objects → helm releases), [`sync`] (one sync from fetch to report), [`cli`].

pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod health;
pub mod helm;
pub mod identity;
pub mod object;
pub mod plan;
pub mod render;
pub mod source;
pub mod sync;

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // Some errors repeat their source's text; print it once.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
