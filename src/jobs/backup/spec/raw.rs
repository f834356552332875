//! The `Backup` spec as written (serde shapes, unknown fields refused); `super::parse` checks
//! them into a `Spec`.

use serde::Deserialize;

use super::{LocalDir, PodTarget, S3Location};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Raw {
    pub(super) source: RawSource,
    pub(super) destination: RawDestination,
    pub(super) retention: RawRetention,
    #[serde(default)]
    pub(super) max_age: Option<String>,
    #[serde(default)]
    pub(super) restore_drill: bool,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    /// `null` (or absent): not encrypted.
    #[serde(default)]
    pub(super) encryption: Option<RawEncryption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEncryption {
    pub(super) age_recipients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSource {
    #[serde(default)]
    pub(super) postgres: Option<RawPostgres>,
    #[serde(default)]
    pub(super) s3: Option<S3Location>,
    #[serde(default)]
    pub(super) exec: Option<RawExec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPostgres {
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) port: Option<u16>,
    #[serde(default)]
    pub(super) port_forward: Option<PodTarget>,
    pub(super) database: String,
    pub(super) username: String,
    #[serde(default)]
    pub(super) password_file: Option<String>,
    #[serde(default)]
    pub(super) globals: bool,
    /// Refused (the host configuration's `jobs.postgresBinDir` decides); read to say so.
    #[serde(default)]
    pub(super) bin_dir: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawExec {
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) pod: Option<String>,
    #[serde(default)]
    pub(super) service: Option<String>,
    #[serde(default)]
    pub(super) container: Option<String>,
    #[serde(default)]
    pub(super) command: Vec<String>,
    #[serde(default)]
    pub(super) copy_out: Vec<String>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawDestination {
    #[serde(default)]
    pub(super) local: Option<LocalDir>,
    #[serde(default)]
    pub(super) s3: Option<S3Location>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRetention {
    #[serde(default)]
    pub(super) keep_last: Option<u32>,
    #[serde(default)]
    pub(super) keep_hourly: Option<u32>,
    #[serde(default)]
    pub(super) keep_daily: Option<u32>,
    #[serde(default)]
    pub(super) keep_weekly: Option<u32>,
    #[serde(default)]
    pub(super) keep_monthly: Option<u32>,
    #[serde(default)]
    pub(super) keep_yearly: Option<u32>,
    #[serde(default)]
    pub(super) keep_within: Option<String>,
}
