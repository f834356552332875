//! `driftless backup list|restore`: the work behind the two commands, so `main` only loads the
//! jobs and prints. Output: human text by default, one JSON document with `-o json`.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::{DrillRecord, DrillStatus, Incomplete};
use super::spec::{Source, Spec};
use super::store::{self, Store};
use super::{Error as BackupError, Inputs, catalog, exec, postgres, s3, scratch_dir};
use crate::cli::{BackupCommand, OutputFormat};
use crate::jobs::host::HostSettings;
use crate::jobs::model::Job;

/// Errors of the commands (a job that is not there, or the backup module's own).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Backup job {name:?} (Backup jobs declared: {declared})")]
    NoJob { name: String, declared: String },
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// Runs the command; returns what to print on standard output.
pub async fn execute(
    command: &BackupCommand,
    jobs: &[Job],
    cluster: Option<&kube::Client>,
    credentials: &crate::credentials::Credentials,
    state_dir: &Path,
    host: &HostSettings,
) -> Result<String, Error> {
    let inputs = Inputs {
        cluster,
        credentials,
        state_dir,
        revision: None,
        host,
    };
    let backup_jobs: Vec<(&Job, &Spec)> = jobs
        .iter()
        .filter_map(|j| j.backup().map(|s| (j, s)))
        .collect();
    let find = |name: &str| {
        backup_jobs
            .iter()
            .find(|(j, _)| j.name == name)
            .copied()
            .ok_or_else(|| Error::NoJob {
                name: name.to_owned(),
                declared: if backup_jobs.is_empty() {
                    "none".to_owned()
                } else {
                    backup_jobs
                        .iter()
                        .map(|(j, _)| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    };
    match command {
        BackupCommand::List { job, output, .. } => {
            let selected: Vec<(&Job, &Spec)> = match job {
                Some(name) => vec![find(name)?],
                None => backup_jobs.clone(),
            };
            let mut all = Vec::new();
            for (j, spec) in selected {
                all.push(list(j, spec, &inputs).await?);
            }
            Ok(match output {
                OutputFormat::Json => format!("{:#}\n", serde_json::json!({ "jobs": all })),
                OutputFormat::Human => {
                    let mut out = String::new();
                    if all.is_empty() {
                        out.push_str("no Backup jobs declared\n");
                    }
                    for j in &all {
                        out.push_str(&format!("{} → {}\n", j.job, j.destination));
                        if j.backups.is_empty() {
                            out.push_str("  no complete backups\n");
                        }
                        for b in j.backups.iter().rev() {
                            out.push_str(&format!(
                                "  {}  {:>10}  {} files  {}s  {}{}{}\n",
                                b.id,
                                super::human_bytes(b.bytes),
                                b.files,
                                (b.finished_at - b.started_at).num_seconds(),
                                b.source,
                                if b.encryption.is_some() {
                                    "  encrypted"
                                } else {
                                    ""
                                },
                                match b.drill.as_ref().map(|d| d.status) {
                                    Some(DrillStatus::Passed) => "  (drill passed)",
                                    Some(DrillStatus::Failed) =>
                                        "  UNVERIFIED (restore drill failed)",
                                    Some(DrillStatus::Pending) =>
                                        "  UNVERIFIED (restore drill did not finish)",
                                    None => "",
                                }
                            ));
                        }
                        for i in &j.incomplete {
                            let by = match &i.marker {
                                Some(m) => format!(
                                    "started by host {} (instance {}) at {}",
                                    m.host,
                                    m.instance,
                                    m.started_at.to_rfc3339()
                                ),
                                None => "no run marker".to_owned(),
                            };
                            out.push_str(&format!("  {}  incomplete (no manifest; {by})\n", i.id));
                        }
                    }
                    out
                }
            })
        }
        BackupCommand::Restore {
            job,
            id,
            database,
            bucket,
            prefix,
            force,
            globals,
            output,
            ..
        } => {
            let (j, spec) = find(job)?;
            let target = RestoreTarget {
                database: database.clone(),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                force: *force,
                globals: *globals,
            };
            let done = restore(j, spec, id, &target, &inputs).await?;
            Ok(match output {
                OutputFormat::Json => format!("{done:#}\n"),
                OutputFormat::Human => format!(
                    "restored backup {} of {}: {}\n",
                    done["id"].as_str().unwrap_or(""),
                    j.name,
                    done["restored"]
                ),
            })
        }
    }
}

/// One job's complete and incomplete backups.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobBackups {
    pub job: String,
    pub destination: String,
    pub backups: Vec<ListedBackup>,
    /// Incomplete backups with the run marker that says who started them (a run of this host
    /// removes its own once older than the job's timeout).
    pub incomplete: Vec<Incomplete>,
}

/// One complete backup, as `backup list` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedBackup {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub source: String,
    pub files: usize,
    pub bytes: u64,
    pub revision: Option<String>,
    /// Whether it counts as restorable: its restore drill passed, or it was not drilled.
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillRecord>,
    /// The recipients its files are encrypted to (none: not encrypted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::crypt::EncryptionRecord>,
}

/// Lists the backups of a Backup job (complete ones, oldest first).
pub async fn list(job: &Job, spec: &Spec, inputs: &Inputs<'_>) -> Result<JobBackups, BackupError> {
    let store = inputs
        .open(&spec.destination, &job.name)
        .await
        .map_err(|error| BackupError::Destination {
            job: job.name.clone(),
            error,
        })?;
    let listing = catalog::listing(&store)
        .await
        .map_err(|error| BackupError::Destination {
            job: job.name.clone(),
            error,
        })?;
    Ok(JobBackups {
        job: job.name.clone(),
        destination: store.name().to_owned(),
        backups: listing
            .complete
            .iter()
            .map(|m| ListedBackup {
                id: m.id.clone(),
                started_at: m.started_at,
                finished_at: m.finished_at,
                source: m.source.clone(),
                files: m.files.len(),
                bytes: m.bytes(),
                revision: m.revision.clone(),
                verified: m.verified(),
                drill: m.drill.clone(),
                encryption: m.encryption.clone(),
            })
            .collect(),
        incomplete: listing.incomplete,
    })
}

/// Where a restore goes; unset fields default to the job's source.
#[derive(Debug, Clone, Default)]
pub struct RestoreTarget {
    /// PostgreSQL: the database to restore into.
    pub database: Option<String>,
    /// S3: the bucket and prefix to restore into.
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    /// Restore over a non-empty target.
    pub force: bool,
    /// PostgreSQL: also apply the backup's globals (roles), creating missing roles only.
    pub globals: bool,
}

/// Restores backup `id` (or `latest`) of a job; returns what was restored where.
pub async fn restore(
    job: &Job,
    spec: &Spec,
    id: &str,
    target: &RestoreTarget,
    inputs: &Inputs<'_>,
) -> Result<serde_json::Value, BackupError> {
    let dest_err = |error| BackupError::Destination {
        job: job.name.clone(),
        error,
    };
    let store = inputs
        .open(&spec.destination, &job.name)
        .await
        .map_err(dest_err)?;
    let listing = catalog::listing(&store).await.map_err(dest_err)?;
    // `latest` is the newest backup known to restore; an unverified one is restored by its id.
    let manifest = if id == "latest" {
        listing
            .complete
            .iter()
            .rev()
            .find(|m| m.verified())
            .ok_or_else(|| BackupError::NoVerifiedBackup {
                job: job.name.clone(),
            })?
    } else {
        listing
            .complete
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| BackupError::NoSuchBackup {
                job: job.name.clone(),
                id: id.to_owned(),
            })?
    }
    .clone();
    let fail = |error: BackupError| BackupError::Restore {
        job: job.name.clone(),
        id: manifest.id.clone(),
        error: Box::new(error),
    };
    // An encrypted backup: the host's identity must open it, checked before the target is
    // touched (a wrong identity changes nothing).
    let store = inputs
        .reading(store, &manifest)
        .map_err(|e| fail(BackupError::Crypt(e)))?;
    let detail = match &spec.source {
        Source::Postgres(pg) => {
            let conn = inputs.postgres(pg).await.map_err(|e| fail(e.into()))?;
            let database = target
                .database
                .clone()
                .unwrap_or_else(|| pg.database.clone());
            postgres::restore::restore(
                &conn,
                &store,
                &manifest,
                &database,
                postgres::restore::RestoreOptions {
                    force: target.force,
                    globals: target.globals,
                },
                &scratch_dir(inputs.state_dir),
            )
            .await
            .map_err(|e| fail(e.into()))?
        }
        Source::S3(_) | Source::Exec(_) if target.globals => {
            return Err(fail(BackupError::GlobalsNotPostgres));
        }
        Source::S3(loc) => {
            let mut to = loc.clone();
            if let Some(b) = &target.bucket {
                to.bucket = b.clone();
            }
            if let Some(p) = &target.prefix {
                to.prefix = p.clone();
            }
            let target_store =
                Store::s3_location(&to, "spec.source.s3", inputs.credentials, inputs.cluster)
                    .await
                    .map_err(|e| fail(e.into()))?;
            s3::restore(&store, &manifest, &target_store, target.force)
                .await
                .map_err(|e| fail(e.into()))?
        }
        Source::Exec(_) => {
            let stored = |name: &str| {
                let file = manifest
                    .files
                    .iter()
                    .find(|f| f.name == name)
                    .map(|f| f.stored_name())
                    .unwrap_or_else(|| name.to_owned());
                store::join(&manifest.id, &file)
            };
            return Err(fail(BackupError::ExecByHand {
                stdout: stored(exec::STDOUT),
                files: stored(exec::FILES_TAR),
                store: store.name().to_owned(),
            }));
        }
    };
    Ok(serde_json::json!({"job": job.name, "id": manifest.id, "restored": detail}))
}
