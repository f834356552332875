//! `source:` of the host configuration as written (re-exported by `crate::config`): the source
//! owns the types of its section, so reading them needs nothing above it.

use std::path::PathBuf;

use serde::Deserialize;

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
