//! tidegate keeps a Kubernetes cluster equal to a Git repository.
//!
//! The modules in data-flow order; each uses only those listed before it
//! (`cargo xtask shape` checks).

/// The shared vocabulary: object refs, marks, inventory, records, checksums.
pub mod model;

/// The deploy key: an SSH key pair kept in a Secret.
pub mod identity;

/// Git snapshot → desired set: files, documents, objects.
pub mod render;

/// Whether a live object is ready (rollouts, jobs, conditions).
pub mod health;

/// Git → snapshot: fetch, check out a revision, confined to the checkout.
pub mod source;

/// Desired set + live state → what a sync would do, and diffs. Pure.
pub mod plan;

/// Image automation's decisions: policies, containers, tags, file edits. Pure.
pub mod automation;

/// The distribution API: tags, and when their images were built.
pub mod registry;

/// The API edge: discovery, watches, server-side apply, the write fence,
/// the state record.
pub mod cluster;

/// HelmRelease objects → helm releases.
pub mod helm;

/// One sync, from snapshot to record, and its preview.
pub mod sync;

/// The running daemon: triggers, the reconcile loop, HTTP, leader election.
pub mod daemon;

/// The command line.
pub mod cli;
