//! `tidegate daemon`: its flags turned into a [`daemon::Config`], the loop run,
//! and with `--once` what the one sync did printed and its exit code returned.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{EXIT_FAILED, init_logging};
use crate::cluster::state::StateRef;
use crate::cluster::{Cluster, Connection};
use crate::daemon::{self, access::AccessConfig};
use crate::model::record::Outcome;
use crate::render;
use crate::source::GitSource;
use crate::sync::{GarbageCollection, Progress, Settings, SyncReport};

/// Flags shared by the commands that render and plan (`daemon`, `diff`).
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Directory in the repository to sync (repeatable; default the whole repository)
    #[arg(long, env = "TIDEGATE_GIT_PATH", value_delimiter = ',')]
    pub git_path: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none
    #[arg(
        long,
        env = "TIDEGATE_K8S_DEFAULT_NAMESPACE",
        default_value = "default"
    )]
    pub k8s_default_namespace: String,
    /// Only allow objects in this namespace (repeatable); refuses cluster-scoped objects
    #[arg(long, env = "TIDEGATE_K8S_ALLOW_NAMESPACE", value_delimiter = ',')]
    pub k8s_allow_namespace: Vec<String>,
    /// Name of this sync set, recorded on every applied object; pruning only touches its own
    #[arg(long, env = "TIDEGATE_SYNC_SET_NAME", default_value = "tidegate")]
    pub sync_set_name: String,
    /// Apply objects of removed API versions under their replacement where the schema is unchanged
    #[arg(long, env = "TIDEGATE_UPGRADE_REMOVED_APIS")]
    pub upgrade_removed_apis: bool,
    /// Take over fields that other field managers own (server-side apply force)
    #[arg(long, env = "TIDEGATE_FORCE_CONFLICTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub force_conflicts: bool,
    /// Delete objects that were removed from Git
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION")]
    pub sync_garbage_collection: bool,
    /// Only log what garbage collection would delete
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION_DRY")]
    pub sync_garbage_collection_dry: bool,
    /// Prune even when the repository renders no objects at all (otherwise such a sync fails and deletes nothing)
    #[arg(long, env = "TIDEGATE_SYNC_GARBAGE_COLLECTION_ALLOW_EMPTY")]
    pub sync_garbage_collection_allow_empty: bool,
    /// Take over objects another tidegate instance owns (as if each were annotated tidegate.dev/adopt: "true" in Git)
    #[arg(long, env = "TIDEGATE_ADOPT")]
    pub adopt: bool,
    /// The helm binary (Helm 3) that renders, installs and upgrades HelmRelease charts
    #[arg(long, env = "TIDEGATE_HELM_BINARY", default_value = "helm")]
    pub helm_binary: PathBuf,
    /// A directory of Helm plugins helm may run (default: none; helm runs with plugins off)
    #[arg(long, env = "TIDEGATE_HELM_PLUGINS")]
    pub helm_plugins: Option<PathBuf>,
    /// Most bytes of manifests one chart may render (helm's output and the post-renderer's input)
    #[arg(long, env = "TIDEGATE_MAX_RELEASE_BYTES", default_value_t = crate::helm::binary::MAX_RELEASE_BYTES)]
    pub max_release_bytes: u64,
    /// Let a HelmRelease's chart.git name a repository on the daemon's own disk (file:// or a path)
    #[arg(long, env = "TIDEGATE_ALLOW_LOCAL_CHART_REPOSITORIES")]
    pub allow_local_chart_repositories: bool,
    /// A host name or network (CIDR) that valuesFrom.externalSourceRef may reach though it is loopback, link-local or private (repeatable, or comma-separated)
    #[arg(long, env = "TIDEGATE_VALUES_URL_ALLOW", value_delimiter = ',')]
    pub values_url_allow: Vec<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// How directories that are built (kustomize roots, `.flux.yaml` paths) are.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The kustomize binary that builds directories holding a kustomization.yaml
    #[arg(long, env = "TIDEGATE_KUSTOMIZE_BINARY", default_value = "kustomize")]
    pub kustomize_binary: PathBuf,
    /// Let kustomizations load remote bases and resources (Git repositories, URLs)
    #[arg(long, env = "TIDEGATE_KUSTOMIZE_ALLOW_REMOTE")]
    pub kustomize_allow_remote: bool,
    /// Let kustomizations inflate helmCharts (with --helm-binary)
    #[arg(long, env = "TIDEGATE_KUSTOMIZE_ENABLE_HELM")]
    pub kustomize_enable_helm: bool,
    /// Longest one kustomize build (or .flux.yaml command) may run
    #[arg(long, env = "TIDEGATE_KUSTOMIZE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub kustomize_timeout: Duration,
    /// Generate the objects of a path from its .flux.yaml (Flux v1's --manifest-generation)
    #[arg(long, env = "TIDEGATE_MANIFEST_GENERATION")]
    pub manifest_generation: bool,
    /// Let .flux.yaml run commands other than kustomize builds (without a shell, in a scratch copy)
    #[arg(long, env = "TIDEGATE_MANIFEST_GENERATION_ALLOW_COMMANDS")]
    pub manifest_generation_allow_commands: bool,
    /// Decrypt SOPS-encrypted files (Flux v1's --sops), with the keys of --sops-secret, --sops-keys or SOPS_AGE_KEY_FILE
    #[arg(long, env = "TIDEGATE_SOPS")]
    pub sops: bool,
    /// Secret (in the daemon's namespace) with the decryption keys: entries `*.agekey` (age identities), `*.asc` (OpenPGP secret keys)
    #[arg(long, env = "TIDEGATE_SOPS_SECRET")]
    pub sops_secret: Option<String>,
    /// Directory (or file) with the decryption keys, named as in the Secret
    #[arg(long, env = "TIDEGATE_SOPS_KEYS")]
    pub sops_keys: Option<PathBuf>,
}

impl BuildArgs {
    /// Where the SOPS keys are, when decryption is on: the Secret (read
    /// by the daemon only), the files, else sops' own SOPS_AGE_KEY_FILE.
    pub fn sops_keys(&self) -> anyhow::Result<Option<daemon::access::KeySource>> {
        if !self.sops && self.sops_secret.is_none() && self.sops_keys.is_none() {
            return Ok(None);
        }
        let mut keys = daemon::access::KeySource {
            secret: self.sops_secret.clone(),
            path: self.sops_keys.clone(),
        };
        if keys.secret.is_none() && keys.path.is_none() {
            let Some(file) = std::env::var_os("SOPS_AGE_KEY_FILE") else {
                anyhow::bail!(
                    "--sops needs the decryption keys: give --sops-secret, --sops-keys or SOPS_AGE_KEY_FILE"
                );
            };
            keys.path = Some(PathBuf::from(file));
        }
        Ok(Some(keys))
    }

    /// The SOPS keys from files alone (for commands that read no Secret).
    pub fn local_sops(&self) -> anyhow::Result<render::sops::Settings> {
        let Some(source) = self.sops_keys()? else {
            return Ok(Default::default());
        };
        if source.secret.is_some() && source.path.is_none() {
            anyhow::bail!(
                "--sops-secret is read by the daemon; give this command the keys with --sops-keys"
            );
        }
        let entries = source.files()?;
        let keys = render::sops::Keys::from_entries(
            entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        )?;
        Ok(render::sops::Settings {
            keys: Some(std::sync::Arc::new(keys)),
            structure_only: false,
        })
    }

    /// The settings of a render's builds; `helm` inflates helmCharts when
    /// that is enabled.
    pub fn settings(
        &self,
        helm: &std::path::Path,
    ) -> (render::kustomize::Settings, render::flux_yaml::Generation) {
        (
            render::kustomize::Settings {
                binary: self.kustomize_binary.clone(),
                allow_remote: self.kustomize_allow_remote,
                helm: self.kustomize_enable_helm.then(|| helm.to_path_buf()),
                timeout: self.kustomize_timeout,
                cache: Default::default(),
            },
            render::flux_yaml::Generation {
                enabled: self.manifest_generation,
                allow_commands: self.manifest_generation_allow_commands,
            },
        )
    }
}

/// Bounds on what a render reads; a file past one is an error naming it.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest manifest file read, in bytes
    #[arg(long, env = "TIDEGATE_MAX_FILE_BYTES", default_value_t = render::Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
    /// Most bytes read from all manifest files of one revision together
    #[arg(long, env = "TIDEGATE_MAX_TOTAL_BYTES", default_value_t = render::Limits::default().max_total_bytes)]
    pub max_total_bytes: u64,
    /// Most YAML documents in one file
    #[arg(long, env = "TIDEGATE_MAX_DOCUMENTS_PER_FILE", default_value_t = render::ParseLimits::default().max_documents)]
    pub max_documents_per_file: usize,
    /// Deepest nesting of YAML mappings and sequences
    #[arg(long, env = "TIDEGATE_MAX_YAML_DEPTH", default_value_t = render::ParseLimits::default().max_depth)]
    pub max_yaml_depth: usize,
    /// Most bytes the documents of one file may expand to once parsed (YAML aliases included)
    #[arg(long, env = "TIDEGATE_MAX_EXPANDED_BYTES", default_value_t = render::ParseLimits::default().max_expanded_bytes)]
    pub max_expanded_bytes: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> render::Limits {
        render::Limits {
            max_file_bytes: self.max_file_bytes,
            max_total_bytes: self.max_total_bytes,
            parse: render::ParseLimits {
                max_documents: self.max_documents_per_file,
                max_depth: self.max_yaml_depth,
                max_expanded_bytes: self.max_expanded_bytes,
            },
        }
    }
}

impl SyncArgs {
    pub fn render_options(&self) -> render::Options {
        let (kustomize, generation) = self.build.settings(&self.helm_binary);
        render::Options {
            kustomize,
            generation,
            paths: self.git_path.clone(),
            upgrade_removed_apis: self.upgrade_removed_apis,
            limits: self.limits.limits(),
            sync_set: Some(self.sync_set_name.clone()),
            secret_key: None,
            sops: Default::default(),
        }
    }

    /// How to run helm, with its homes and chart cache below `dir`.
    pub fn helm_settings(
        &self,
        connection: &Connection,
        dir: &std::path::Path,
    ) -> crate::helm::Settings {
        crate::helm::Settings {
            binary: crate::helm::Helm {
                binary: self.helm_binary.clone(),
                kubeconfig: connection.kubeconfig.clone(),
                context: connection.context.clone(),
                home: dir.join("helm"),
                proxy: None,
                post_renderer: std::env::current_exe().ok(),
                plugins: self.helm_plugins.clone(),
                max_output: self.max_release_bytes,
            },
            cache: dir.join("charts"),
            git: None,
            allow_namespaces: self.k8s_allow_namespace.clone(),
            allow_local_charts: self.allow_local_chart_repositories,
            values_url_allow: self.values_url_allow.clone(),
            background: None,
        }
    }

    pub fn settings(&self, namespace: String) -> Settings {
        let mut render = self.render_options();
        render.sync_set = Some(crate::model::marks::owner(&namespace, &self.sync_set_name));
        Settings {
            render,
            default_namespace: self.k8s_default_namespace.clone(),
            allow_namespaces: self.k8s_allow_namespace.clone(),
            sync_set: self.sync_set_name.clone(),
            force_conflicts: self.force_conflicts,
            gc: if self.sync_garbage_collection_dry {
                GarbageCollection::Dry
            } else if self.sync_garbage_collection {
                GarbageCollection::On
            } else {
                GarbageCollection::Off
            },
            allow_empty: self.sync_garbage_collection_allow_empty,
            adopt: self.adopt,
            state: StateRef {
                namespace,
                sync_set: self.sync_set_name.clone(),
            },
            helm: None,
            render_cache: Default::default(),
            verified: None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the Git repository (ssh://, git@host:path, https://, file:// or a local path)
    #[arg(long, env = "TIDEGATE_GIT_URL")]
    git_url: String,
    /// Branch to sync
    #[arg(long, env = "TIDEGATE_GIT_BRANCH", default_value = "master")]
    git_branch: String,
    /// How often to fetch the repository
    #[arg(long, env = "TIDEGATE_GIT_POLL_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    git_poll_interval: Duration,
    /// How often to re-apply the current revision even if Git did not move (reverts drift)
    #[arg(long, env = "TIDEGATE_SYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    sync_interval: Duration,
    /// Where to keep the fetched repository (default: a directory under the system temp dir)
    #[arg(long, env = "TIDEGATE_GIT_CACHE_DIR")]
    git_cache_dir: Option<PathBuf>,
    #[command(flatten)]
    git: GitAccessArgs,
    #[command(flatten)]
    sync: SyncArgs,
    /// Address of the HTTP API, health, metrics and webhooks ("off" for none)
    #[arg(long, env = "TIDEGATE_LISTEN", default_value = "0.0.0.0:3030")]
    listen: String,
    /// A second address serving only the webhooks (POST /hooks/…), for the Service a Git host reaches ("off" for none)
    #[arg(long, env = "TIDEGATE_WEBHOOK_LISTEN", default_value = "off")]
    webhook_listen: String,
    /// Secret (in the daemon's namespace) whose key `webhook-secret` signs webhooks
    #[arg(long, env = "TIDEGATE_WEBHOOK_SECRET_NAME")]
    webhook_secret_name: Option<String>,
    /// For a local repository, watch its refs and fetch as soon as they change
    #[arg(long, env = "TIDEGATE_GIT_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    git_watch: bool,
    /// Revert a change to a managed object in the cluster as soon as its watch sees it
    #[arg(long, env = "TIDEGATE_SELF_HEAL", default_value_t = true, action = clap::ArgAction::Set)]
    self_heal: bool,
    /// Sync only while holding the sync set's Lease (`<sync-set>-leader`), so that replicas take turns
    #[arg(long, env = "TIDEGATE_LEADER_ELECT")]
    leader_elect: bool,
    /// Sync once, print what was done and exit
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    automation: AutomationArgs,
    #[command(flatten)]
    verify: VerifyArgs,
}

/// Commit signatures: which commits must carry a trusted signature before
/// they are synced, and the keys that are trusted.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Which commits must carry a trusted signature: none, head, all (every commit since the last verified revision) or first-parent
    #[arg(
        long,
        env = "TIDEGATE_GIT_VERIFY_SIGNATURES_MODE",
        value_enum,
        default_value = "none"
    )]
    git_verify_signatures_mode: crate::source::verify::Mode,
    /// Flux v1's switch: --git-verify-signatures-mode=all
    #[arg(long, env = "TIDEGATE_GIT_VERIFY_SIGNATURES")]
    git_verify_signatures: bool,
    /// Secret (in the daemon's namespace) with the trusted keys: entries `*.asc` (OpenPGP public keys), `*.sshpub` (SSH public keys), `allowed_signers`
    #[arg(long, env = "TIDEGATE_GIT_VERIFY_SIGNATURES_SECRET")]
    git_verify_signatures_secret: Option<String>,
    /// Directory (or file) with the trusted keys, named as in the Secret
    #[arg(long, env = "TIDEGATE_GIT_VERIFY_SIGNATURES_KEYS")]
    git_verify_signatures_keys: Option<PathBuf>,
}

impl VerifyArgs {
    fn config(&self) -> anyhow::Result<Option<daemon::access::Verify>> {
        use crate::source::verify::Mode;
        let mode = match (self.git_verify_signatures_mode, self.git_verify_signatures) {
            (Mode::None, true) => Mode::All,
            (mode, _) => mode,
        };
        let keys = daemon::access::KeySource {
            secret: self.git_verify_signatures_secret.clone(),
            path: self.git_verify_signatures_keys.clone(),
        };
        match (mode, keys.secret.is_some() || keys.path.is_some()) {
            (Mode::None, _) => Ok(None),
            (_, false) => anyhow::bail!(
                "verifying signatures needs the trusted keys: give --git-verify-signatures-secret or --git-verify-signatures-keys"
            ),
            (mode, true) => Ok(Some(daemon::access::Verify { mode, keys })),
        }
    }
}

/// Image automation: Flux v1's `fluxcd.io/automated` workloads kept at the
/// newest image their filters allow, by commits to Git.
#[derive(Debug, Clone, clap::Args)]
pub struct AutomationArgs {
    /// Never write to Git (no image automation)
    #[arg(long, env = "TIDEGATE_GIT_READONLY")]
    git_readonly: bool,
    /// Do not look up images in registries (no image automation)
    #[arg(long, env = "TIDEGATE_REGISTRY_DISABLE_SCANNING")]
    registry_disable_scanning: bool,
    /// How often automated workloads' images are looked up
    #[arg(long, env = "TIDEGATE_AUTOMATION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    automation_interval: Duration,
    /// Name of the author and committer of automation's commits
    #[arg(long, env = "TIDEGATE_GIT_USER", default_value = "tidegate")]
    git_user: String,
    /// Email of the author and committer of automation's commits
    #[arg(long, env = "TIDEGATE_GIT_EMAIL", default_value = "tidegate@localhost")]
    git_email: String,
    /// Append "[ci skip]" to automation's commit messages
    #[arg(long, env = "TIDEGATE_GIT_CI_SKIP")]
    git_ci_skip: bool,
    /// Move this tag to each revision synced successfully (as Flux v1's flux-sync); off by default
    #[arg(long, env = "TIDEGATE_GIT_SYNC_TAG")]
    git_sync_tag: Option<String>,
    /// Commit automation's changes to this branch instead of the synced one (a pull-request flow); it is made from the synced head, and committed on while it holds that head
    #[arg(long, env = "TIDEGATE_GIT_PUSH_BRANCH")]
    git_push_branch: Option<String>,
    /// Sign automation's commits: "deploy-key" (git's SSH signature format), or "secret/NAME": the armored OpenPGP key `signing.key` (and its `passphrase`) of that Secret in the daemon's namespace
    #[arg(long, env = "TIDEGATE_GIT_SIGNING_KEY", value_parser = daemon::automation::SignWith::parse)]
    git_signing_key: Option<daemon::automation::SignWith>,
    /// A registry (host[:port]) reached over plain HTTP (repeatable, or comma-separated)
    #[arg(long, env = "TIDEGATE_REGISTRY_INSECURE_HOST", value_delimiter = ',')]
    registry_insecure_host: Vec<String>,
    /// Requests per second to one registry, at most
    #[arg(long, env = "TIDEGATE_REGISTRY_RPS", default_value_t = 20.0)]
    registry_rps: f64,
    /// Requests to one registry that may go at once above that rate
    #[arg(long, env = "TIDEGATE_REGISTRY_BURST", default_value_t = 10)]
    registry_burst: u32,
    /// Longest a registry request may take
    #[arg(long, env = "TIDEGATE_REGISTRY_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    registry_timeout: Duration,
    /// The platform whose image a manifest list is read for
    #[arg(
        long,
        env = "TIDEGATE_REGISTRY_PLATFORM",
        default_value = "linux/amd64"
    )]
    registry_platform: String,
    /// How long a build time read from a registry is trusted before it is read again
    #[arg(long, env = "TIDEGATE_REGISTRY_CACHE_EXPIRY", default_value = "24h", value_parser = parse_duration)]
    registry_cache_expiry: Duration,
    /// Where build times read from registries are kept across restarts (default: registry-cache.json in the Git cache directory)
    #[arg(long, env = "TIDEGATE_REGISTRY_CACHE_FILE")]
    registry_cache_file: Option<PathBuf>,
    /// A Docker config.json with registry credentials, besides workloads' imagePullSecrets
    #[arg(long, env = "TIDEGATE_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// A host name or network (CIDR) a registry may be at though it is loopback, link-local or private (repeatable, or comma-separated); insecure hosts are allowed too
    #[arg(long, env = "TIDEGATE_REGISTRY_ALLOW", value_delimiter = ',')]
    registry_allow: Vec<String>,
    /// Only look up images whose name (as `docker.io/library/nginx`) matches one of these globs (repeatable, or comma-separated)
    #[arg(long, env = "TIDEGATE_REGISTRY_INCLUDE_IMAGE", value_delimiter = ',')]
    registry_include_image: Vec<String>,
    /// Never look up images whose name matches one of these globs (repeatable, or comma-separated)
    #[arg(long, env = "TIDEGATE_REGISTRY_EXCLUDE_IMAGE", value_delimiter = ',')]
    registry_exclude_image: Vec<String>,
    /// CA certificates (PEM) to trust for registries
    #[arg(long, env = "TIDEGATE_REGISTRY_CA_FILE")]
    registry_ca_file: Option<PathBuf>,
}

impl AutomationArgs {
    /// The automation to run, unless writing to Git or scanning is off.
    fn config(
        &self,
        git_cache: &std::path::Path,
        default_namespace: &str,
        allow_namespaces: &[String],
    ) -> Option<daemon::automation::Config> {
        if self.git_readonly || self.registry_disable_scanning {
            return None;
        }
        let person = crate::source::push::Person {
            name: self.git_user.clone(),
            email: self.git_email.clone(),
        };
        Some(daemon::automation::Config {
            interval: self.automation_interval,
            committer: person,
            ci_skip: self.git_ci_skip,
            signing: self.git_signing_key.clone().unwrap_or_default(),
            push_branch: self.git_push_branch.clone(),
            insecure_hosts: self.registry_insecure_host.clone(),
            registry_allow: self.registry_allow.clone(),
            rps: self.registry_rps,
            burst: self.registry_burst,
            timeout: self.registry_timeout,
            platform: self.registry_platform.clone(),
            cache_file: Some(
                self.registry_cache_file
                    .clone()
                    .unwrap_or_else(|| git_cache.join("registry-cache.json")),
            ),
            cache_expiry: self.registry_cache_expiry,
            docker_config: self.docker_config.clone(),
            ca_file: self.registry_ca_file.clone(),
            default_namespace: default_namespace.to_string(),
            allow_namespaces: allow_namespaces.to_vec(),
            include_images: self.registry_include_image.clone(),
            exclude_images: self.registry_exclude_image.clone(),
            verified_only: false,
        })
    }
}

/// How to reach and authenticate to the Git host.
#[derive(Debug, Clone, clap::Args)]
pub struct GitAccessArgs {
    /// Secret holding the SSH deploy key (keys `identity`, `identity.pub`); created if missing
    #[arg(
        long,
        env = "TIDEGATE_K8S_SECRET_NAME",
        default_value = "tidegate-git-deploy"
    )]
    pub k8s_secret_name: String,
    /// known_hosts file that SSH host keys are checked against
    #[arg(long, env = "TIDEGATE_SSH_KNOWN_HOSTS")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// ConfigMap or Secret (`configmap/NAME` or `secret/NAME`, key `known_hosts`) holding known_hosts
    #[arg(long, env = "TIDEGATE_SSH_KNOWN_HOSTS_FROM")]
    pub ssh_known_hosts_from: Option<String>,
    /// Secret with HTTPS credentials: keys `username` and `password`, or `token`
    #[arg(long, env = "TIDEGATE_GIT_HTTPS_SECRET")]
    pub git_https_secret: Option<String>,
    /// CA certificates (PEM) to trust for HTTPS Git hosts
    #[arg(long, env = "TIDEGATE_GIT_CA_FILE")]
    pub git_ca_file: Option<PathBuf>,
    /// Proxy for Git over HTTP(S); default HTTPS_PROXY / HTTP_PROXY, honouring NO_PROXY
    #[arg(long, env = "TIDEGATE_GIT_PROXY")]
    pub git_proxy: Option<String>,
    /// Send credentials to a plain http:// Git URL (refused by default)
    #[arg(long, env = "TIDEGATE_GIT_ALLOW_INSECURE_HTTP")]
    pub git_allow_insecure_http: bool,
    /// Time to connect to the Git host, and longest a transfer may stall
    #[arg(long, env = "TIDEGATE_GIT_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub git_timeout: Duration,
}

impl GitAccessArgs {
    pub fn access_config(&self) -> AccessConfig {
        AccessConfig {
            deploy_key_secret: self.k8s_secret_name.clone(),
            known_hosts_file: self.ssh_known_hosts.clone(),
            known_hosts_from: self.ssh_known_hosts_from.clone(),
            https_secret: self.git_https_secret.clone(),
            proxy: self.git_proxy.clone(),
            allow_insecure_http: self.git_allow_insecure_http,
        }
    }

    /// Process-wide libgit2 settings: the CA file and the timeouts.
    pub fn configure_libgit2(&self) -> anyhow::Result<()> {
        if let Some(ca) = &self.git_ca_file {
            // SAFETY: set once, before any fetch runs on another thread.
            unsafe { git2::opts::set_ssl_cert_file(ca) }
                .with_context(|| format!("cannot use --git-ca-file {}", ca.display()))?;
        }
        let millis = i32::try_from(self.git_timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: as above, before any fetch.
        unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(millis)
                .context("cannot set the Git connect timeout")?;
            git2::opts::set_server_timeout_in_milliseconds(millis)
                .context("cannot set the Git transfer timeout")?;
        }
        Ok(())
    }
}

/// A duration as Flux and Go write them (`30s`, `5m`, `1m30s`, `250ms`,
/// `1h`), or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 30s, 1m30s or 1h: {e}"))
}

/// A listen address, or `None` for `off`.
fn address(flag: &str, text: &str, example: &str) -> anyhow::Result<Option<SocketAddr>> {
    match text {
        "off" => Ok(None),
        text => text
            .parse::<SocketAddr>()
            .map(Some)
            .with_context(|| format!("{flag} {text}: not an address like {example}")),
    }
}

fn default_cache_dir(url: &str, branch: &str) -> PathBuf {
    let key = crate::model::checksum::checksum(&serde_json::json!([url, branch]));
    std::env::temp_dir().join(format!("tidegate-git-{}", &key[..12]))
}

pub async fn run(args: Args, connection: Connection) -> anyhow::Result<ExitCode> {
    init_logging(if args.once { "warn" } else { "info" });
    let client = connection
        .client()
        .await
        .context("cannot connect to the cluster")?;
    let namespace = connection.namespace(&client);
    args.git.configure_libgit2()?;
    let webhook_listen = address("--webhook-listen", &args.webhook_listen, "0.0.0.0:3031")?;
    let listen = address("--listen", &args.listen, "0.0.0.0:3030")?;
    let cache_dir = args
        .git_cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&args.git_url, &args.git_branch));
    let mut settings = args.sync.settings(namespace);
    let mut helm = args.sync.helm_settings(&connection, &cache_dir);
    // Charts come through the same proxy as Git.
    helm.binary.proxy = args.git.git_proxy.clone();
    settings.helm = Some(helm);
    let verify = args.verify.config()?;
    let automation = automation(&args, &cache_dir, verify.is_some());
    let config = daemon::Config {
        source: GitSource {
            cache_dir,
            url: args.git_url.clone(),
            branch: args.git_branch.clone(),
            access: Default::default(),
        },
        access: args.git.access_config(),
        poll_interval: args.git_poll_interval,
        sync_interval: args.sync_interval,
        settings,
        listen,
        webhook_listen,
        webhook_secret_name: args.webhook_secret_name.clone(),
        git_watch: args.git_watch,
        once: args.once,
        leader_elect: args.leader_elect,
        self_heal: args.self_heal,
        automation,
        sync_tag: args
            .automation
            .git_sync_tag
            .clone()
            .filter(|_| !args.automation.git_readonly && !args.once),
        verify,
        sops: args.sync.build.sops_keys()?,
    };
    let cluster = Cluster::new(client);
    let mut config = config;
    // Made once per instance; without it (the state cannot be written)
    // Secrets' checksums are plain, as before.
    match cluster.checksum_key(&config.settings.state, true).await {
        Ok(key) => config.settings.render.secret_key = key.map(std::sync::Arc::new),
        Err(e) => {
            tracing::warn!("cannot keep a key for Secrets' checksums in the state ConfigMap: {e}")
        }
    }
    let report = if args.once {
        daemon::run(config, cluster, &mut print_progress).await?
    } else {
        daemon::run(config, cluster, &mut |_| {}).await?
    };
    let Some(report) = report else {
        return Ok(ExitCode::SUCCESS);
    };
    print_summary(&report);
    Ok(match report.outcome() {
        Outcome::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_FAILED),
    })
}

/// Image automation's settings, unless off (or `--once`); with signatures
/// verified, it commits only on the verified revision.
fn automation(
    args: &Args,
    cache_dir: &std::path::Path,
    verifying: bool,
) -> Option<daemon::automation::Config> {
    args.automation
        .config(
            cache_dir,
            &args.sync.k8s_default_namespace,
            &args.sync.k8s_allow_namespace,
        )
        .filter(|_| !args.once)
        .map(|automation| daemon::automation::Config {
            verified_only: verifying,
            ..automation
        })
}

/// One line per object on stdout; failures and warnings on stderr.
fn print_progress(progress: Progress<'_>) {
    match progress {
        Progress::Object(id, action) => println!("{action} {id}"),
        Progress::WouldPrune(id) => println!("would prune {id}"),
        Progress::Failed(e) => eprintln!("error: {e}"),
        Progress::Warning(w) => eprintln!("warning: {w}"),
        Progress::Release(r) => println!("{r}"),
    }
}

fn print_summary(report: &SyncReport) {
    if let Some(message) = report.message.clone().or_else(|| report.held_back()) {
        eprintln!("error: {message}");
    }
    if let Some(why) = &report.record_failed {
        eprintln!("error: the sync could not be recorded: {why}");
    }
    let (revision, counts) = (report.short_revision(), report.counts());
    match report.outcome() {
        Outcome::Succeeded => eprintln!("synced revision {revision}: {counts}"),
        Outcome::Failed => eprintln!("sync of revision {revision} failed: {counts}"),
        Outcome::Interrupted => eprintln!("sync of revision {revision} interrupted: {counts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("m").is_err());
    }
}
