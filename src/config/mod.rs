//! The host configuration (`/etc/driftless/driftless.yaml`): where the stacks come from, which
//! profile and cluster, where host secrets and state live. Secrets are never written here: the
//! file names files in the credentials directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod encryption;
pub mod notify;
mod sections;
mod targets;
pub use sections::*;
pub use targets::{TargetConfig, check as check_targets};

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
    pub targets: Vec<TargetConfig>,
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
    pub encryption: encryption::HostRules,
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
    pub notify: notify::NotifyConfig,
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
        if let Err(message) = targets::check(&config) {
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
            if let Err(e) = encryption::parse_recipient(r) {
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

    /// The credentials of this configuration: its directory (`credentialsDir`, else
    /// `$CREDENTIALS_DIRECTORY`), the files it uses itself, and `credentials.allow`.
    pub fn credentials(&self) -> crate::credentials::Credentials {
        self.credentials_with_dir(self.credentials_dir())
    }

    /// As `credentials`, with the directory given (`--credentials-dir`).
    pub fn credentials_with_dir(&self, dir: Option<PathBuf>) -> crate::credentials::Credentials {
        let mut reserved = std::collections::BTreeMap::new();
        for (field, file) in self.own_credential_files() {
            reserved.entry(file).or_insert(field);
        }
        // Paths the host configuration names (a kubeconfig, known_hosts) that lie in the
        // credentials directory are the host's own too.
        if let Some(d) = &dir {
            for (field, path) in self.own_credential_paths() {
                if let Ok(rest) = path.strip_prefix(d)
                    && let Some(name) = crate::credentials::plain_name(&rest.to_string_lossy())
                {
                    reserved.entry(name.to_owned()).or_insert(field);
                }
            }
        }
        crate::credentials::Credentials::new(
            dir,
            reserved,
            self.credentials.allow.clone(),
            self.sops.age_key_file.clone(),
        )
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
