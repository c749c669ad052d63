//! tidegate keeps a Kubernetes cluster equal to a Git repository.
//!
//! The modules in data-flow order; each uses only those listed before it.

/// The shared vocabulary: object refs, marks, inventory, records, checksums.
pub mod model;

/// Whether a live object is ready (rollouts, jobs, conditions).
pub mod health;
/// The deploy key: an SSH key pair kept in a Secret.
pub mod identity;
/// Git snapshot → desired set: files, documents, objects, checksums.
pub mod render;

/// Desired set + live state → what a sync would do, and diffs. Pure.
pub mod plan;
/// Git → snapshot: fetch, verify, check out a revision.
pub mod source;

/// The command line.
pub mod cli;
/// The API edge: discovery, watches, server-side apply, the state record.
pub mod cluster;
/// The running daemon: triggers, the reconcile loop, HTTP, leader election.
pub mod daemon;
/// HelmRelease objects → helm releases.
pub mod helm;
/// One sync, from fetch to record.
pub mod sync;
