//! What a backup is made of: its files with their sizes and sha256 ([`FileEntry`]), the
//! manifest that completes it ([`Manifest`], written last), its id, and what a destination holds
//! for one job ([`Listing`]). Pure data; `store` reads and writes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The name of the file that completes a backup.
pub const MANIFEST: &str = "manifest.json";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Relative to the backup (`dump.pgcustom`, `objects/<key>`).
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
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
}

impl Manifest {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
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
    /// Ids with files but no (readable) manifest.
    pub incomplete: Vec<String>,
}
