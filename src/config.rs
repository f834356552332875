//! The host configuration (`/etc/driftless/driftless.yaml`): where the stacks come from, which
//! profile and cluster, where host secrets and state live. Secrets are never written here: the
//! file names files in the credentials directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the host configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("host configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host configuration: {0}")]
    Parse(#[from] crate::yaml::Error),
    #[error("host configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole host configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostConfig {
    /// Name of this driftless instance (default `default`). Several instances may share a
    /// cluster; each owns the stacks it applied and never prunes another's.
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// Profile whose overlays and variables apply.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Several clusters, each with its profile and stacks (see `crate::targets`); `cluster` +
    /// `profile` are the shorthand for one target named `default`.
    #[serde(default)]
    pub targets: Vec<crate::targets::TargetConfig>,
    /// Directory of host secret files (default: systemd's `$CREDENTIALS_DIRECTORY`).
    #[serde(default)]
    pub credentials_dir: Option<PathBuf>,
    /// Local state (default `/var/lib/driftless`, systemd's `$STATE_DIRECTORY` when set).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub prune: PruneConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub renderers: RenderersConfig,
    /// Which credential files stacks and jobs may read (see `credentials`).
    #[serde(default)]
    pub credentials: crate::credentials::CredentialsConfig,
    /// What scheduled jobs may run and write on this host.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Backup encryption: the age identity file (in the credentials directory) verification,
    /// drills and restores decrypt with; whether every Backup job must encrypt; which
    /// recipients jobs may name.
    #[serde(default)]
    pub encryption: crate::jobs::backup::crypt::HostRules,
    /// How the Leases that serialise writers of a stack are held (see `cluster::lease`).
    #[serde(default)]
    pub leases: LeasesConfig,
    /// The file this configuration was read from (none: defaults, no file).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// SOPS decryption (see `SopsConfig`).
    #[serde(default)]
    pub sops: SopsConfig,
    /// Commit statuses and notification webhooks (see `notify`).
    #[serde(default)]
    pub notify: crate::notify::config::NotifyConfig,
}

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

/// Where the stack repository comes from: a local directory, or a Git remote.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceConfig {
    /// A local directory (development): read as it is, no Git involved.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A Git repository.
    #[serde(default)]
    pub git: Option<GitConfig>,
}

/// A Git source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitConfig {
    /// `file://`, `https://` or `ssh://` (or `user@host:path`) URL.
    pub url: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    /// A pinned commit (full sha).
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub auth: GitAuth,
    /// Signature verification: a revision that does not verify is never applied.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
}

/// `source.git.verify`: which signatures a revision needs, and the keys allowed to make them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyConfig {
    pub mode: VerifyMode,
    /// SSH allowed-signers file (`ssh-keygen -Y verify` format): a plain name in the credentials
    /// directory, or an absolute path (public keys are not secrets).
    #[serde(default)]
    pub allowed_signers_file: Option<PathBuf>,
    /// Armored OpenPGP public keys, named like `allowedSignersFile`.
    #[serde(default)]
    pub openpgp_keys_file: Option<PathBuf>,
}

/// What must be signed (Flux's `HEAD`, `Tag`, `TagAndHEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VerifyMode {
    /// The commit the followed ref points to.
    Head,
    /// The annotated tag the source follows (`source.git.tag`).
    Tag,
    /// Both the tag and the commit it points to.
    TagAndHead,
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

/// Git credentials: file names in the credentials directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitAuth {
    /// HTTPS token (sent as the password, user `git` unless `usernameFile` is set).
    #[serde(default)]
    pub token_file: Option<String>,
    #[serde(default)]
    pub username_file: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
    /// SSH private key.
    #[serde(default)]
    pub ssh_key_file: Option<String>,
    /// known_hosts file checked for SSH host keys (required with SSH: never accepted blindly).
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
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

impl HostConfig {
    /// Reads `path`. With `required: false`, a missing file gives the defaults.
    pub fn load(path: &Path, required: bool) -> Result<HostConfig, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(HostConfig::default());
            }
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut config: HostConfig = crate::yaml::parse_one(path, &text)?;
        config.file = Some(path.to_owned());
        if let Some(instance) = &config.instance
            && !crate::stack::load::is_dns_label(instance)
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "instance {instance:?} must be a DNS label (lowercase letters, digits, '-')"
                ),
            });
        }
        if !(0.0..=1.0).contains(&config.prune.max_share) {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "prune.maxShare must be between 0 and 1, got {}",
                    config.prune.max_share
                ),
            });
        }
        let leases = &config.leases;
        if leases.renew_interval.is_zero()
            || leases.duration < leases.renew_interval * 2
            || leases.duration > crate::plan::lease::MAX_DURATION
            || leases.duration.subsec_nanos() != 0
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "leases: duration ({:?}) must be whole seconds, at least twice renewInterval ({:?}) and at most {}s",
                    leases.duration,
                    leases.renew_interval,
                    crate::plan::lease::MAX_DURATION.as_secs()
                ),
            });
        }
        if let Some(id) = &leases.identity
            && (id.is_empty()
                || id.len() > crate::plan::lease::MAX_HOLDER_LEN
                || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "leases.identity must be 1 to {} printable ASCII characters without spaces",
                    crate::plan::lease::MAX_HOLDER_LEN
                ),
            });
        }
        if let Err(message) = crate::targets::check(&config) {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        let protected = crate::plan::recreate::PROTECTED.map(|(_, kind)| kind);
        if let Some(kind) = config
            .prune
            .allow_recreate
            .iter()
            .find(|k| !protected.contains(&k.as_str()))
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "prune.allowRecreate: {kind:?} is not one of {} (other kinds are recreated whenever they opt in)",
                    protected.join(", ")
                ),
            });
        }
        for (name, c) in &config.jobs.commands {
            if !crate::stack::load::is_dns_label(name) {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "jobs.commands: name {name:?} must be a DNS label (lowercase letters, digits, '-')"
                    ),
                });
            }
            if c.command.first().is_none_or(|p| p.is_empty()) {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "jobs.commands.{name}.command: give the program and its arguments, e.g. [/usr/bin/systemctl, start, registry-gc.service]"
                    ),
                });
            }
        }
        for (field, dir) in [
            ("jobs.postgresBinDir", &config.jobs.postgres_bin_dir),
            ("jobs.localBackupRoot", &config.jobs.local_backup_root),
        ] {
            if let Some(d) = dir
                && (!d.is_absolute() || d.parent().is_none())
            {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "{field} {} must be an absolute directory other than /",
                        d.display()
                    ),
                });
            }
        }
        if let Some(f) = &config.encryption.identity_file
            && crate::credentials::plain_name(f).is_none()
        {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "encryption.identityFile {f:?} must be a plain file name in the credentials directory (no directory part, no '..', not absolute)"
                ),
            });
        }
        for (i, r) in config
            .encryption
            .allowed_recipients
            .iter()
            .flatten()
            .enumerate()
        {
            // Never echoed: a secret key pasted here by mistake must not reach a log.
            if let Err(e) = crate::jobs::backup::crypt::parse_recipient(r) {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    message: format!("encryption.allowedRecipients[{i}] {e}"),
                });
            }
        }
        if let Err(message) = config.notify.check() {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        if let Some(src) = &config.source {
            if src.path.is_some() == src.git.is_some() {
                return Err(Error::Invalid {
                    path: path.to_owned(),
                    message: "source: give exactly one of `path` and `git`".to_owned(),
                });
            }
            if let Some(git) = &src.git {
                let refs = [&git.branch, &git.tag, &git.commit]
                    .iter()
                    .filter(|r| r.is_some())
                    .count();
                if refs > 1 {
                    return Err(Error::Invalid {
                        path: path.to_owned(),
                        message: "source.git: give at most one of `branch`, `tag`, `commit`"
                            .to_owned(),
                    });
                }
                let reference = crate::source::GitRef::of(git);
                if let Some(v) = &git.verify {
                    if v.allowed_signers_file.is_none() && v.openpgp_keys_file.is_none() {
                        return Err(Error::Invalid {
                            path: path.to_owned(),
                            message: "source.git.verify: give allowedSignersFile, openpgpKeysFile or both".to_owned(),
                        });
                    }
                    if v.mode != VerifyMode::Head && git.tag.is_none() {
                        return Err(Error::Invalid {
                            path: path.to_owned(),
                            message: "source.git.verify.mode tag and tagAndHead need source.git.tag (a branch or commit has no tag to verify)".to_owned(),
                        });
                    }
                }
                if !reference.is_valid() {
                    return Err(Error::Invalid {
                        path: path.to_owned(),
                        message: format!(
                            "source.git: {reference} is not a valid Git ref (a branch or tag name \
                             as git accepts it, a commit as a full sha)"
                        ),
                    });
                }
                // Credentials in the URL, unknown schemes, a token for plain http: refused here,
                // before anything is read or sent. The message never shows user information.
                let secret_auth = git.auth.token_file.is_some() || git.auth.password_file.is_some();
                if let Err(e) = crate::source::check_url(&git.url, secret_auth) {
                    return Err(Error::Invalid {
                        path: path.to_owned(),
                        message: format!("source.git.url: {e}"),
                    });
                }
            }
        }
        Ok(config)
    }

    /// The state directory: the configured one, else systemd's `$STATE_DIRECTORY`, else
    /// `/var/lib/driftless`.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/driftless"))
    }

    /// This instance's name.
    pub fn instance(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| crate::cluster::inventory::DEFAULT_INSTANCE.to_owned())
    }

    /// Every credential file (a plain name in the credentials directory) the host configuration
    /// names for driftless's own use, with the field that names it. A stack or job may not read
    /// these (see `credentials`).
    pub fn own_credential_files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |field: &str, file: &Option<String>| {
            if let Some(f) = file {
                out.push((field.to_owned(), f.clone()));
            }
        };
        if let Some(git) = self.source.as_ref().and_then(|s| s.git.as_ref()) {
            let a = &git.auth;
            add("source.git.auth.tokenFile", &a.token_file);
            add("source.git.auth.usernameFile", &a.username_file);
            add("source.git.auth.passwordFile", &a.password_file);
            add("source.git.auth.sshKeyFile", &a.ssh_key_file);
        }
        add("sops.ageKeyFile", &self.sops.age_key_file);
        let d = &self.daemon;
        add("daemon.statusTokenFile", &d.status_token_file);
        // The backup identity decrypts every encrypted backup: no stack may copy it into a
        // Secret, no job may send it anywhere.
        add("encryption.identityFile", &self.encryption.identity_file);
        for (provider, hook) in [
            ("github", &d.webhooks.github),
            ("gitlab", &d.webhooks.gitlab),
            ("gitea", &d.webhooks.gitea),
            ("generic", &d.webhooks.generic),
        ] {
            add(
                &format!("daemon.webhooks.{provider}.secretFile"),
                &hook.as_ref().map(|h| h.secret_file.clone()),
            );
        }
        if let Some(c) = &self.notify.commit_status {
            add("notify.commitStatus.tokenFile", &Some(c.token_file.clone()));
        }
        for (i, w) in self.notify.webhooks.iter().enumerate() {
            add(&format!("notify.webhooks[{i}].secretFile"), &w.secret_file);
        }
        out
    }

    /// Paths the host configuration names for driftless's own use (kubeconfig, known_hosts):
    /// when one lies in the credentials directory, stacks and jobs may not read it either.
    pub fn own_credential_paths(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        if let Some(k) = &self.cluster.kubeconfig {
            out.push(("cluster.kubeconfig".to_owned(), k.clone()));
        }
        if let Some(k) = self
            .source
            .as_ref()
            .and_then(|s| s.git.as_ref())
            .and_then(|g| g.auth.known_hosts_file.clone())
        {
            out.push(("source.git.auth.knownHostsFile".to_owned(), k));
        }
        out
    }

    /// The credentials directory: the configured one, else `$CREDENTIALS_DIRECTORY`.
    pub fn credentials_dir(&self) -> Option<PathBuf> {
        self.credentials_dir
            .clone()
            .or_else(|| std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("driftless.yaml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            HostConfig::load(&path, true)
        };
        let defaults = load("instance: a\n").unwrap().leases;
        assert_eq!(defaults.renew_interval, std::time::Duration::from_secs(5));
        assert_eq!(defaults.duration, std::time::Duration::from_secs(15));
        assert!(defaults.identity.is_none());
        let ok = load("leases: {renewInterval: 500ms, duration: 6s, identity: ops-1}\n").unwrap();
        assert_eq!(ok.leases.settings().identity, "ops-1");
        for bad in [
            "leases: {renewInterval: 10s, duration: 15s}\n",
            "leases: {renewInterval: 0s}\n",
            "leases: {duration: 1h}\n",
            "leases: {duration: 15500ms}\n",
            "leases: {identity: ''}\n",
            "leases: {identity: 'a b'}\n",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
        // Without a configured identity each process draws its own.
        assert_ne!(defaults.settings().identity, defaults.settings().identity);
    }
}
