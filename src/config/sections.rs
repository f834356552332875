//! The sections of the host configuration (`jobs`, `leases`, `renderers`, `daemon`, `source`,
//! `sops`, `cluster`, `prune`) as written, with their defaults; `super::HostConfig::load` checks
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::source::config::{GitAuth, GitConfig, SourceConfig, VerifyConfig, VerifyMode};

/// `jobs:`: the host programs and host paths scheduled jobs use. The stack repository never
/// names these (a commit must not choose what the ops host runs or where it writes); a job
/// refers to a program by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobsConfig {
    /// Programs jobs may run on the host, by name (e.g. `registry-gc`, named by an ImageCleanup's
    /// `garbageCollect.command`). A repository can only choose among these.
    #[serde(default)]
    pub commands: HostCommands,
    /// Directory of `pg_dump`, `pg_restore`, `pg_dumpall` and `psql` for Backup jobs (default:
    /// found on `PATH`). Use the server's major version or newer.
    #[serde(default)]
    pub postgres_bin_dir: Option<PathBuf>,
    /// Directory under which Backup jobs' local destinations must lie. Unset: a Backup job with
    /// a local destination is refused.
    #[serde(default)]
    pub local_backup_root: Option<PathBuf>,
}

/// `leases:`: how a daemon (or a CLI `sync`) holds the Lease of each stack it writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeasesConfig {
    /// Time between renewals (default 5s).
    #[serde(
        default = "default_lease_renew",
        with = "crate::stack::model::duration_text"
    )]
    pub renew_interval: std::time::Duration,
    /// How long a Lease lasts unrenewed before another daemon may take it (default 15s); at
    /// least twice `renewInterval`, at most 300s.
    #[serde(
        default = "default_lease_duration",
        with = "crate::stack::model::duration_text"
    )]
    pub duration: std::time::Duration,
    /// This process's holder identity (default: the host name and a random suffix per
    /// process). Two processes must never share one.
    #[serde(default)]
    pub identity: Option<String>,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            renew_interval: default_lease_renew(),
            duration: default_lease_duration(),
            identity: None,
        }
    }
}

fn default_lease_renew() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

fn default_lease_duration() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

impl LeasesConfig {
    /// The settings of this process's Leases (its identity drawn now unless configured).
    pub fn settings(&self) -> crate::cluster::lease::Settings {
        crate::cluster::lease::Settings {
            renew: self.renew_interval,
            duration: self.duration,
            identity: self
                .identity
                .clone()
                .unwrap_or_else(crate::cluster::lease::default_identity),
        }
    }
}

/// Host commands by name.
pub type HostCommands = BTreeMap<String, HostCommand>;

/// A program run on the host for a job: never through a shell, with a minimal environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostCommand {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Longest it may run (default 30m); then it is killed.
    #[serde(
        default = "default_command_timeout",
        with = "crate::stack::model::duration_text"
    )]
    pub timeout: std::time::Duration,
}

fn default_command_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 60)
}

/// `renderers:`: the programs that render chart and Kustomize stacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RenderersConfig {
    /// `helm` (default: `$DRIFTLESS_HELM`, else `helm` from `PATH`).
    #[serde(default)]
    pub helm: Option<PathBuf>,
    /// `kubectl`, for `kubectl kustomize` (default: `$DRIFTLESS_KUBECTL`, else from `PATH`).
    #[serde(default)]
    pub kubectl: Option<PathBuf>,
    /// Longest one render may take (default 60s).
    #[serde(
        default = "default_render_timeout",
        with = "crate::stack::model::duration_text"
    )]
    pub timeout: std::time::Duration,
}

impl Default for RenderersConfig {
    fn default() -> Self {
        RenderersConfig {
            helm: None,
            kubectl: None,
            timeout: default_render_timeout(),
        }
    }
}

fn default_render_timeout() -> std::time::Duration {
    crate::stack::external::DEFAULT_TIMEOUT
}

impl RenderersConfig {
    /// The renderer programs: configured, else from the environment, else from `PATH`.
    pub fn renderers(&self) -> crate::stack::Renderers {
        let defaults = crate::stack::Renderers::default();
        crate::stack::Renderers {
            helm: self.helm.clone().unwrap_or(defaults.helm),
            kubectl: self.kubectl.clone().unwrap_or(defaults.kubectl),
            timeout: self.timeout,
        }
    }
}

/// `daemon:`: how `driftless run` listens and when it reconciles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonConfig {
    /// Address of the HTTP endpoint (default `127.0.0.1:9427`).
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Time between polls of the source (default 5m); each poll waits up to 10 % longer at random
    /// so that many hosts do not poll in step.
    #[serde(default = "default_poll", with = "crate::stack::model::duration_text")]
    pub poll_interval: std::time::Duration,
    /// File (in the credentials directory) holding the bearer token for status and metrics.
    /// Required when `listen` is not a loopback address.
    #[serde(default)]
    pub status_token_file: Option<String>,
    /// Largest webhook body accepted, in bytes (default 1 MiB).
    #[serde(default = "default_body_limit")]
    pub webhook_body_limit: usize,
    /// Webhook secrets per provider: file names in the credentials directory.
    #[serde(default)]
    pub webhooks: WebhookConfig,
    /// Most connections the HTTP endpoint holds at once (default 1024); at the cap the oldest
    /// connection without a request in progress is closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: default_listen(),
            poll_interval: default_poll(),
            status_token_file: None,
            webhook_body_limit: default_body_limit(),
            webhooks: WebhookConfig::default(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_max_connections() -> usize {
    1024
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9427))
}

fn default_poll() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_body_limit() -> usize {
    1024 * 1024
}

/// Webhook secret files by provider; a provider without one answers 404.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    #[serde(default)]
    pub github: Option<WebhookSecret>,
    #[serde(default)]
    pub gitlab: Option<WebhookSecret>,
    #[serde(default)]
    pub gitea: Option<WebhookSecret>,
    #[serde(default)]
    pub generic: Option<WebhookSecret>,
}

/// One webhook's secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSecret {
    /// File name in the credentials directory.
    pub secret_file: String,
}

/// `sops:`: decryption of SOPS-encrypted manifests on the ops host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SopsConfig {
    /// The age identity (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them): a plain name in
    /// the credentials directory.
    #[serde(default)]
    pub age_key_file: Option<String>,
}

/// Which cluster: kubectl's kubeconfig and context.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
}

/// Prune safety.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PruneConfig {
    /// Largest share of a stack one prune may remove without `--allow-mass-prune` (0.5 = 50 %).
    #[serde(default = "half")]
    pub max_share: f64,
    /// Lift the share limit permanently (not recommended).
    #[serde(default)]
    pub allow_mass_prune: bool,
    /// Kinds among Namespace, PersistentVolumeClaim and CustomResourceDefinition that
    /// `driftless.dev/recreate` may delete and create again (default: none; they hold data).
    #[serde(default)]
    pub allow_recreate: Vec<String>,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            max_share: half(),
            allow_mass_prune: false,
            allow_recreate: Vec::new(),
        }
    }
}

fn half() -> f64 {
    0.5
}
