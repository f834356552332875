//! What the host configuration decides for jobs, and who this host is: the programs jobs run on
//! the ops host, the host paths they may write, the directories they must never write into, and
//! the host and instance names that mark a run's files as this host's. Built once from the host
//! configuration by the daemon and the command line; the stack repository never sets any of it.

use std::path::{Path, PathBuf};

use crate::config::HostConfig;

/// The configuration directory of a systemd installation, protected even when the host
/// configuration file lives elsewhere.
pub const CONFIG_DIR: &str = "/etc/driftless";

/// The host's settings for jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// This host's name, as run markers record it.
    pub host: String,
    /// This driftless instance's name (`instance` in the host configuration).
    pub instance: String,
    /// `jobs.postgresBinDir`: the directory of the PostgreSQL tools (none: found on `PATH`).
    pub postgres_bin_dir: Option<PathBuf>,
    /// `jobs.localBackupRoot`: where local backup destinations may lie (none: nowhere).
    pub local_backup_root: Option<PathBuf>,
    /// Configuration directories: `/etc/driftless` and the host configuration file's own.
    pub config_dirs: Vec<PathBuf>,
    /// `encryption:`: the identity Backup jobs decrypt with, whether they must encrypt, and
    /// which recipients they may name.
    pub encryption: crate::config::encryption::HostRules,
}

impl HostSettings {
    /// The settings of a host configuration, on this host.
    pub fn from_config(config: &HostConfig) -> HostSettings {
        let mut config_dirs = vec![PathBuf::from(CONFIG_DIR)];
        if let Some(dir) = config.file.as_deref().and_then(config_file_dir)
            && !config_dirs.contains(&dir)
        {
            config_dirs.push(dir);
        }
        HostSettings {
            host: host_name(),
            instance: config.instance(),
            postgres_bin_dir: config.jobs.postgres_bin_dir.clone(),
            local_backup_root: config.jobs.local_backup_root.clone(),
            config_dirs,
            encryption: config.encryption.clone(),
        }
    }
}

/// The directory of the host configuration file, absolute.
fn config_file_dir(file: &Path) -> Option<PathBuf> {
    let dir = file.parent()?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).ok()
}

pub use crate::host::host_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_files_directory_and_etc_driftless_are_protected() {
        let config = HostConfig {
            file: Some(PathBuf::from("/srv/ops/driftless.yaml")),
            ..HostConfig::default()
        };
        let s = HostSettings::from_config(&config);
        assert_eq!(
            s.config_dirs,
            [PathBuf::from("/etc/driftless"), PathBuf::from("/srv/ops")]
        );
        assert_eq!(s.instance, "default");
        assert!(!s.host.is_empty());
        let etc = HostConfig {
            file: Some(PathBuf::from("/etc/driftless/driftless.yaml")),
            ..HostConfig::default()
        };
        assert_eq!(
            HostSettings::from_config(&etc).config_dirs,
            [PathBuf::from("/etc/driftless")]
        );
    }
}
