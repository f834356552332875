//! `encryption:` of the host configuration (the host's rules for Backup encryption) and the
//! syntax of an age recipient, which the host configuration and Backup jobs both write.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The host configuration's rules for encryption (`encryption:`), as a run applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostRules {
    /// An age identity file in the credentials directory: verification, drills and restores of
    /// encrypted backups decrypt with it. A host file driftless reads for itself: no stack or job
    /// can read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
    /// Every Backup job must encrypt: a job without `spec.encryption` fails its run, writing
    /// nothing (a commit cannot turn encryption off).
    #[serde(default)]
    pub required: bool,
    /// When set, the only recipients jobs may encrypt to (a commit cannot add its own key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_recipients: Option<Vec<String>>,
}

/// Why a job's recipient cannot be used (spec parsing; never echoes the value).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRecipient {
    #[error(
        "is an age secret key: never put a private key in Git; name its public key (age-keygen -y FILE prints it) and keep the identity on the ops host (encryption.identityFile)"
    )]
    SecretKey,
    #[error("is not an age X25519 recipient (age1…, as age-keygen prints it)")]
    NotARecipient,
}

/// Parses one recipient (a public key, `age1…`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, BadRecipient> {
    let t = text.trim();
    if t.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        return Err(BadRecipient::SecretKey);
    }
    age::x25519::Recipient::from_str(t).map_err(|_| BadRecipient::NotARecipient)
}
