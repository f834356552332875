//! The `Backup` job: backups that restore.
//!
//! A run (1) lists the destination and removes incomplete backups (files without a manifest:
//! a run that failed or was killed); (2) takes a backup under a new id — `postgres` (`pg_dump
//! -Fc`, verified by `pg_restore -f /dev/null` reading the same bytes), `s3` (a bucket/prefix
//! mirrored object by object) or `exec` (a command's output in a pod) — streaming every file
//! with its sha256 and reading it back; (3) writes the manifest last, which makes the backup
//! complete; (4) optionally drills a restore into a scratch target; (5) applies retention
//! (`retention::decide`, pure) to the complete backups. A failed step fails the run and skips
//! retention, so earlier backups stay untouched; the failed backup's files are removed (and, if
//! the process died, by the next run).
//!
//! `command` serves `driftless backup list|restore`; `report` is what a run reports.

pub mod catalog;
pub mod command;
pub mod exec;
pub mod manifest;
pub mod pod;
pub mod postgres;
pub mod report;
pub mod retention;
pub mod s3;
pub mod spec;
pub mod store;

use std::path::{Path, PathBuf};

use chrono::Utc;
use tracing::{info, warn};

use crate::jobs::model::Job;
use manifest::{FileEntry, Manifest};
pub use report::{Freshness, Made, NEWEST_FIGURE, Report, freshness, human_bytes};
use retention::Candidate;
use spec::{Source, Spec};
use store::Store;

/// Errors of a run's steps, a list or a restore; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Backup {job}: destination: {source}")]
    Destination {
        job: String,
        #[source]
        source: store::Error,
    },
    #[error("Backup {job}: no complete backup {id} (see `driftless backup list {job}`)")]
    NoSuchBackup { job: String, id: String },
    #[error("Backup {job}: restore of backup {id}: {source}")]
    Restore {
        job: String,
        id: String,
        #[source]
        source: Box<Error>,
    },
    #[error("postgres {database}: {source}")]
    PostgresConnect {
        database: String,
        #[source]
        source: postgres::Error,
    },
    #[error("postgres {database} at {server}: {source}")]
    PostgresDump {
        database: String,
        server: String,
        #[source]
        source: postgres::Error,
    },
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    #[error("source: {0}")]
    S3Source(#[source] store::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    S3(#[from] s3::Error),
    #[error(transparent)]
    Exec(#[from] exec::Error),
    #[error("exec backups have no automatic restore")]
    ExecNoDrill,
    #[error("--globals applies to PostgreSQL backups only")]
    GlobalsNotPostgres,
    #[error(
        "exec backups are restored by hand: the command's output is {stdout} and copied-out files are {files} in {store}"
    )]
    ExecByHand {
        stdout: String,
        files: String,
        store: String,
    },
    #[error("manifest: {0}")]
    ManifestEncode(#[source] serde_json::Error),
    #[error("writing the manifest: {0}")]
    ManifestWrite(#[source] store::Error),
}

/// What a run may use.
pub struct Inputs<'a> {
    pub cluster: Option<&'a kube::Client>,
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
    pub revision: Option<String>,
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::Postgres(p) => match &p.port_forward {
            Some(t) => format!(
                "postgres {} via port-forward to {}/{}:{}",
                p.database,
                t.namespace,
                t.pod.as_deref().or(t.service.as_deref()).unwrap_or(""),
                t.port
            ),
            None => format!("postgres {} at {}:{}", p.database, p.host, p.port),
        },
        Source::S3(l) => match &l.port_forward {
            Some(t) => format!(
                "s3://{}/{} via port-forward to {}/{}:{}",
                l.bucket,
                l.clean_prefix(),
                t.namespace,
                t.pod.as_deref().or(t.service.as_deref()).unwrap_or(""),
                t.port
            ),
            None => format!("s3://{}/{}", l.bucket, l.clean_prefix()),
        },
        Source::Exec(e) => format!("exec in pod {}/{}", e.namespace, e.pod),
    }
}

fn scratch_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backup-scratch")
}

/// Runs the job. With `dry_run`, lists and decides retention but takes, cleans and removes
/// nothing.
pub async fn run(
    job: &Job,
    spec: &Spec,
    inputs: &Inputs<'_>,
    dry_run: bool,
) -> Result<Report, Error> {
    let dest_err = |source| Error::Destination {
        job: job.name.clone(),
        source,
    };
    let store = Store::open(
        &spec.destination,
        &job.name,
        inputs.credentials,
        inputs.cluster,
    )
    .await
    .map_err(dest_err)?;
    let listing = catalog::listing(&store).await.map_err(dest_err)?;
    let mut report = Report {
        job: job.name.clone(),
        source: describe_source(&spec.source),
        destination: store.name().to_owned(),
        dry_run,
        cleaned: listing.incomplete.clone(),
        backup: None,
        drill: None,
        retention: Vec::new(),
        removed: Vec::new(),
        newest_complete: None,
        complete_backups: listing.complete.len(),
        errors: Vec::new(),
    };
    if dry_run {
        apply_retention(spec, &store, listing.complete, &mut report, false).await;
        return Ok(report);
    }
    for id in &listing.incomplete {
        info!(job = %job.name, id, "removing incomplete backup");
        if let Err(e) = catalog::remove(&store, id).await {
            report
                .errors
                .push(format!("removing incomplete backup {id}: {e}"));
        }
    }

    let started = Utc::now();
    let id = manifest::new_id(started);
    info!(job = %job.name, id, source = %report.source, "backup started");
    let (files, details) = match take(spec, inputs, &store, &id).await {
        Ok(x) => x,
        Err(e) => {
            // Nothing of this run may look like a backup; the next run retries the removal.
            if let Err(e) = catalog::remove(&store, &id).await {
                warn!(job = %job.name, id, "removing the failed backup's files: {e}");
            }
            report.errors.insert(0, e.to_string());
            report.newest_complete = listing.complete.iter().map(|m| m.started_at).max();
            return Ok(report);
        }
    };
    let finished = Utc::now();
    let manifest = Manifest {
        format: 1,
        job: job.name.clone(),
        id: id.clone(),
        source_kind: spec.source.kind().to_owned(),
        source: report.source.clone(),
        revision: inputs.revision.clone(),
        started_at: started,
        finished_at: finished,
        files,
        details,
        driftless_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if let Err(e) = write_manifest(&store, &manifest).await {
        let _ = catalog::remove(&store, &id).await;
        report.errors.insert(0, e.to_string());
        return Ok(report);
    }
    report.backup = Some(Made {
        id: id.clone(),
        files: manifest.files.len(),
        bytes: manifest.bytes(),
        duration_ms: (finished - started).num_milliseconds().max(0) as u64,
    });
    info!(job = %job.name, id, bytes = manifest.bytes(), "backup complete");

    if spec.restore_drill {
        match drill(spec, inputs, &store, &manifest).await {
            Ok(v) => report.drill = Some(serde_json::json!({"ok": true, "detail": v})),
            Err(e) => {
                let message = e.to_string();
                report.drill = Some(serde_json::json!({"ok": false, "error": message}));
                report.errors.push(format!("restore drill: {message}"));
            }
        }
    }

    let mut complete = listing.complete;
    complete.push(manifest);
    apply_retention(spec, &store, complete, &mut report, true).await;
    Ok(report)
}

/// Writes the manifest, which makes the backup complete.
async fn write_manifest(store: &Store, manifest: &Manifest) -> Result<(), Error> {
    let text = serde_json::to_vec_pretty(manifest).map_err(Error::ManifestEncode)?;
    store
        .put_small(&store::join(&manifest.id, manifest::MANIFEST), text.into())
        .await
        .map_err(Error::ManifestWrite)
}

/// Decides retention and (when `remove`) removes what it does not keep.
async fn apply_retention(
    spec: &Spec,
    store: &Store,
    complete: Vec<Manifest>,
    report: &mut Report,
    remove: bool,
) {
    let candidates: Vec<Candidate> = complete
        .iter()
        .map(|m| Candidate {
            id: m.id.clone(),
            time: m.started_at,
        })
        .collect();
    let decisions = retention::decide(&candidates, &spec.retention, spec.time_zone);
    report.newest_complete = decisions.first().map(|d| d.time);
    report.complete_backups = decisions.len();
    for d in decisions.iter().filter(|d| !d.keep) {
        report.removed.push(d.id.clone());
        if remove {
            if let Err(e) = catalog::remove(store, &d.id).await {
                report
                    .errors
                    .push(format!("retention: removing {}: {e}", d.id));
            } else {
                report.complete_backups -= 1;
            }
        }
    }
    report.retention = decisions;
}

/// Takes the backup's files.
async fn take(
    spec: &Spec,
    inputs: &Inputs<'_>,
    store: &Store,
    id: &str,
) -> Result<(Vec<FileEntry>, serde_json::Value), Error> {
    match &spec.source {
        Source::Postgres(pg) => {
            let conn = postgres::Connection::open(pg, inputs.cluster, inputs.credentials)
                .await
                .map_err(|source| Error::PostgresConnect {
                    database: pg.database.clone(),
                    source,
                })?;
            postgres::dump::dump(&conn, pg, store, id)
                .await
                .map_err(|source| Error::PostgresDump {
                    database: pg.database.clone(),
                    server: conn.described.clone(),
                    source,
                })
        }
        Source::S3(loc) => {
            let source =
                Store::s3_location(loc, "spec.source.s3", inputs.credentials, inputs.cluster)
                    .await
                    .map_err(Error::S3Source)?;
            let files = s3::mirror(&source, store, id).await?;
            let details = serde_json::json!({
                "bucket": loc.bucket,
                "prefix": loc.clean_prefix(),
                "objects": files.len(),
                "verified": "every object hashed while copied and re-hashed after upload",
            });
            Ok((files, details))
        }
        Source::Exec(e) => Ok(exec::capture(inputs.cluster, e, store, id).await?),
    }
}

async fn drill(
    spec: &Spec,
    inputs: &Inputs<'_>,
    store: &Store,
    manifest: &Manifest,
) -> Result<serde_json::Value, Error> {
    match &spec.source {
        Source::Postgres(pg) => {
            let conn = postgres::Connection::open(pg, inputs.cluster, inputs.credentials).await?;
            Ok(
                postgres::drill::drill(&conn, pg, store, manifest, &scratch_dir(inputs.state_dir))
                    .await?,
            )
        }
        Source::S3(_) => {
            // Beside the job's backups at the destination: `<job>.drill` (job names are DNS
            // labels, so no job's backups live there), emptied before and after.
            let scratch = Store::open(
                &spec.destination,
                &format!("{}.drill", manifest.job),
                inputs.credentials,
                inputs.cluster,
            )
            .await?;
            Ok(s3::drill(store, manifest, &scratch).await?)
        }
        Source::Exec(_) => Err(Error::ExecNoDrill),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time() {
        let a = manifest::new_id(Utc.with_ymd_and_hms(2026, 3, 2, 3, 0, 0).unwrap());
        let b = manifest::new_id(
            Utc.with_ymd_and_hms(2026, 3, 2, 3, 0, 0).unwrap() + chrono::Duration::milliseconds(5),
        );
        assert_eq!(a, "20260302T030000.000Z");
        assert!(a < b);
    }
}
