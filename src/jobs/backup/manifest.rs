//! What a backup is made of: its files with their sizes and sha256 ([`FileEntry`]), the run
//! marker written first ([`RunMarker`]: which host and instance started it, when), the manifest
//! that completes it ([`Manifest`], written last, with the restore drill's verdict and, for an
//! encrypted backup, its recipients and every file's plaintext size and sha256), its id, and
//! what a destination holds for one job ([`Listing`]). Pure data; `catalog` reads and writes
//! them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The name of the file that completes a backup.
pub const MANIFEST: &str = "manifest.json";
/// The name of the file a run writes before anything else.
pub const RUN_MARKER: &str = "driftless-run.json";

/// Who started a backup, and when: written before any of its files, so that files without a
/// manifest can be told apart — a run of this host that died (removed once older than the job's
/// timeout) from another host's run that may still be going (never touched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMarker {
    pub format: u32,
    pub host: String,
    pub instance: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
}

/// The restore drill's verdict on a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DrillStatus {
    /// The drill has not finished (or the run died during it).
    Pending,
    Passed,
    Failed,
}

/// What the restore drill found, kept in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillRecord {
    pub status: DrillStatus,
    pub at: DateTime<Utc>,
    /// The drill's figures, or its error.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Relative to the backup (`dump.pgcustom`, `objects/<key>`): what the file holds. An
    /// encrypted file is stored as `<name>.age` ([`FileEntry::stored_name`]).
    pub name: String,
    /// Size and sha256 of the stored file (the ciphertext, when encrypted).
    pub bytes: u64,
    pub sha256: String,
    /// When the file is encrypted: size and sha256 of what it decrypts to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Digest>,
}

/// A size and a sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    pub bytes: u64,
    pub sha256: String,
}

impl FileEntry {
    /// The name of the stored file, relative to the backup: `<name>.age` when encrypted.
    pub fn stored_name(&self) -> String {
        if self.plaintext.is_some() {
            format!("{}{}", self.name, super::crypt::SUFFIX)
        } else {
            self.name.clone()
        }
    }

    /// Size and sha256 of the content: the plaintext's when encrypted, else the stored file's.
    pub fn content(&self) -> Digest {
        self.plaintext.clone().unwrap_or_else(|| Digest {
            bytes: self.bytes,
            sha256: self.sha256.clone(),
        })
    }
}

/// The record that completes a backup: what it holds and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: u32,
    pub job: String,
    pub id: String,
    /// `postgres`, `s3`, `exec`.
    pub source_kind: String,
    /// Where the data came from, without credentials.
    pub source: String,
    /// The Git revision of the job definition.
    pub revision: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub files: Vec<FileEntry>,
    /// Source-specific facts (server version, exit status, verification).
    #[serde(default)]
    pub details: serde_json::Value,
    pub driftless_version: String,
    /// The host and instance that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The restore drill's verdict (none: the job does not drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillRecord>,
    /// How its files are encrypted (none: they are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::crypt::EncryptionRecord>,
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Whether the backup counts as restorable: its restore drill passed, or it was not drilled
    /// (it was still read back in full while it was taken). A drill that failed or did not finish
    /// leaves it unverified.
    pub fn verified(&self) -> bool {
        self.drill
            .as_ref()
            .is_none_or(|d| d.status == DrillStatus::Passed)
    }
}

/// A backup id: the start time, UTC, to the millisecond (`20260301T030000.123Z`); sorts by time.
pub fn new_id(started: DateTime<Utc>) -> String {
    started.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// What a destination holds for one job.
#[derive(Debug, Default)]
pub struct Listing {
    /// Complete backups (with a readable manifest), oldest first.
    pub complete: Vec<Manifest>,
    /// Backups with files but no (readable) manifest, oldest first.
    pub incomplete: Vec<Incomplete>,
}

/// A backup without a manifest, and who started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incomplete {
    pub id: String,
    /// Its run marker (none: missing or unreadable).
    pub marker: Option<RunMarker>,
}
