//! Integration tests against a real Kubernetes control plane (kube-apiserver,
//! etcd, controller-manager, scheduler, fake nodes) started once per run by
//! [`support::control_plane`]. Each test works in namespaces of its own.
//!
//! Plain unit tests live beside the code in `src/` and never touch a cluster.

mod automation;
mod bad_input;
mod control_plane;
mod deploy;
mod engine;
mod examples;
mod faults;
mod git_access;
mod helm_releases;
mod in_cluster;
mod kustomize;
#[path = "../controlplane/launch.rs"]
mod launch;
mod leader;
mod proxy_settings;
mod servers;
mod signatures;
mod snapshots;
mod sops;
mod support;
mod sync_once;
mod triggers;
mod watch;
