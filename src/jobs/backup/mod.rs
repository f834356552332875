//! The `Backup` job: backups that restore, and that cannot destroy what they protect.
//!
//! A run (1) lists the destination and removes the incomplete backups (files without a
//! manifest) that this host's and instance's runs left and that are older than the job's
//! timeout — never another host's, which may still be writing (`catalog::cleanup`); (2) writes
//! its run marker and takes a backup under a new id — `postgres` (`pg_dump -Fc`, verified by
//! `pg_restore -f /dev/null` reading the same bytes), `s3` (a bucket/prefix mirrored object by
//! object) or `exec` (a command's output in a pod) — streaming every file with its sha256 and
//! reading it back; (3) writes the manifest last, which makes the backup complete; (4) with
//! `restoreDrill`, restores it into a scratch target and records the verdict in the manifest (a
//! failed drill fails the run and leaves the backup unverified); (5) applies retention
//! (`retention::decide`, pure), which never removes a verified backup to keep an unverified one.
//! A step that fails before the manifest fails the run and skips retention; the failed
//! backup's files are removed (and, if the process died, by a later run of this host). The whole
//! run is bounded by the job's `timeout`. A local destination is checked against the host's
//! rules (`destination`) before anything is read or written there.
//!
//! With `spec.encryption`, every file is encrypted with age in the stream to the job's
//! recipients and read back decrypted with the host's identity (`crypt`); the host's rules
//! (`encryption:` in the host configuration: required, allowed recipients, the identity, which
//! must be one of the recipients) are checked before anything is read or written.
//!
//! `command` serves `driftless backup list|restore`; `report` is what a run reports.

pub mod catalog;
pub mod command;
pub mod crypt;
pub mod destination;
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
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use crate::jobs::host::HostSettings;
use crate::jobs::model::Job;
use crypt::Crypt;
use destination::LocalRules;
use manifest::{DrillRecord, DrillStatus, FileEntry, Manifest, RunMarker};
use report::LeftIncomplete;
pub use report::{Freshness, Made, NEWEST_FIGURE, Report, freshness, human_bytes};
use retention::Candidate;
use spec::{Destination, Source, Spec};
use store::Store;

/// Errors of a run's steps, a list or a restore; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `error` is not a `#[source]`: the message already holds it (errors are printed with
    /// their chain).
    #[error("Backup {job}: destination: {error}")]
    Destination { job: String, error: store::Error },
    #[error("Backup {job}: no complete backup {id} (see `driftless backup list {job}`)")]
    NoSuchBackup { job: String, id: String },
    #[error(
        "Backup {job}: no verified complete backup for `latest` (a backup whose restore drill failed is restored by its id; see `driftless backup list {job}`)"
    )]
    NoVerifiedBackup { job: String },
    #[error("the run took longer than spec.timeout ({}s) and was cut short", .timeout.as_secs())]
    Timeout { timeout: Duration },
    #[error("writing the run marker: {0}")]
    Marker(#[source] store::Error),
    /// `error` is not a `#[source]`: the message already holds it (errors are printed with
    /// their chain).
    #[error("Backup {job}: restore of backup {id}: {error}")]
    Restore {
        job: String,
        id: String,
        error: Box<Error>,
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
    #[error("writing the manifest: {0}")]
    ManifestWrite(#[source] store::Error),
    /// Not a `#[source]`: the message already holds it (errors are printed with their chain).
    #[error("Backup {job}: encryption: {error}")]
    Encryption { job: String, error: crypt::Error },
    #[error("encryption: {0}")]
    /// Not a `#[source]`: the message already holds it.
    Crypt(crypt::Error),
}

/// What a run may use.
pub struct Inputs<'a> {
    pub cluster: Option<&'a kube::Client>,
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
    pub revision: Option<String>,
    /// The host's programs, writable paths and names.
    pub host: &'a HostSettings,
}

impl Inputs<'_> {
    /// What a local destination must stay clear of: the state, configuration and credentials
    /// directories, and everything outside `jobs.localBackupRoot`.
    pub fn local_rules(&self) -> LocalRules {
        let mut protected = vec![("state directory", self.state_dir.to_owned())];
        for d in &self.host.config_dirs {
            protected.push(("configuration directory", d.clone()));
        }
        if let Some(d) = self.credentials.dir() {
            protected.push(("credentials directory", d.to_owned()));
        }
        LocalRules {
            root: self.host.local_backup_root.clone(),
            protected,
        }
    }

    /// Opens `job`'s part of a destination (a local one after the host's checks).
    pub async fn open(&self, dest: &Destination, job: &str) -> Result<Store, store::Error> {
        Store::open(
            dest,
            job,
            self.credentials,
            self.cluster,
            &self.local_rules(),
        )
        .await
    }

    /// The encryption of a job's new backups, after the host's rules (`encryption:` in the host
    /// configuration): none for a job without `spec.encryption` (refused when the host requires
    /// encryption); else its recipients and the host's identity, which must be one of them.
    pub fn crypt_for(&self, spec: &Spec) -> Result<Option<Crypt>, crypt::Error> {
        let rules = &self.host.encryption;
        let Some(e) = &spec.encryption else {
            return if rules.required {
                Err(crypt::Error::Required)
            } else {
                Ok(None)
            };
        };
        let identity = self
            .identity()?
            .ok_or(crypt::Error::IdentityNotConfigured)?;
        Crypt::for_job(&e.age_recipients, identity, rules).map(Some)
    }

    /// The host's identity, when the host configuration names one.
    pub fn identity(&self) -> Result<Option<crypt::Identity>, crypt::Error> {
        self.host
            .encryption
            .identity_file
            .as_deref()
            .map(|f| crypt::Identity::read(self.credentials, f))
            .transpose()
    }

    /// Opens a job's backups for reading `manifest`: decrypting with the host's identity when
    /// it is encrypted, after checking that the identity is one of its recipients (before
    /// anything is read or changed).
    pub fn reading(&self, store: Store, manifest: &Manifest) -> Result<Store, crypt::Error> {
        let Some(record) = &manifest.encryption else {
            return Ok(store);
        };
        let identity = self
            .identity()?
            .ok_or(crypt::Error::IdentityNotConfigured)?;
        let crypt = Crypt::reading(identity);
        crypt.check_opens(&manifest.id, record)?;
        Ok(store.with_crypt(std::sync::Arc::new(crypt)))
    }

    async fn postgres(&self, pg: &spec::Postgres) -> Result<postgres::Connection, postgres::Error> {
        postgres::Connection::open(
            pg,
            self.cluster,
            self.credentials,
            self.host.postgres_bin_dir.as_deref(),
        )
        .await
    }
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
        Source::Exec(e) => format!("exec in {}", e.target()),
    }
}

fn scratch_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backup-scratch")
}

/// Runs the job. With `dry_run`, lists, decides the cleanup and retention, and changes
/// nothing.
pub async fn run(
    job: &Job,
    spec: &Spec,
    inputs: &Inputs<'_>,
    dry_run: bool,
) -> Result<Report, Error> {
    let dest_err = |error| Error::Destination {
        job: job.name.clone(),
        error,
    };
    // The host's rules first: a job that may not run as written changes nothing.
    let crypt = inputs
        .crypt_for(spec)
        .map_err(|error| Error::Encryption {
            job: job.name.clone(),
            error,
        })?
        .map(std::sync::Arc::new);
    let mut store = inputs
        .open(&spec.destination, &job.name)
        .await
        .map_err(dest_err)?;
    if let Some(c) = &crypt {
        store = store.with_crypt(c.clone());
    }
    let listing = catalog::listing(&store).await.map_err(dest_err)?;
    let now = Utc::now();
    let mut report = Report {
        job: job.name.clone(),
        source: describe_source(&spec.source),
        destination: store.name().to_owned(),
        dry_run,
        cleaned: Vec::new(),
        incomplete_left: Vec::new(),
        backup: None,
        drill: None,
        retention: Vec::new(),
        removed: Vec::new(),
        newest_complete: newest_verified(&listing.complete),
        complete_backups: listing.complete.len(),
        errors: Vec::new(),
    };
    for i in &listing.incomplete {
        match catalog::cleanup(
            i,
            &inputs.host.host,
            &inputs.host.instance,
            spec.timeout,
            now,
        ) {
            catalog::Cleanup::Remove => report.cleaned.push(i.id.clone()),
            other => report.incomplete_left.push(LeftIncomplete {
                id: i.id.clone(),
                reason: other.to_string(),
            }),
        }
    }
    if dry_run {
        apply_retention(spec, &store, listing.complete, &mut report, false).await;
        return Ok(report);
    }
    for id in &report.cleaned {
        info!(job = %job.name, id, "removing an incomplete backup of this host");
        if let Err(e) = catalog::remove(&store, id).await {
            report
                .errors
                .push(format!("removing incomplete backup {id}: {e}"));
        }
    }

    let started = Utc::now();
    let id = manifest::new_id(started);
    info!(job = %job.name, id, source = %report.source, "backup started");
    // Bounds the whole run: a later run of this host treats this run's files as abandoned only
    // once they are older than the timeout.
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let marker = RunMarker {
        format: 1,
        host: inputs.host.host.clone(),
        instance: inputs.host.instance.clone(),
        pid: std::process::id(),
        started_at: started,
    };
    let taken = match catalog::write_marker(&store, &id, &marker).await {
        Err(e) => Err(Error::Marker(e)),
        Ok(()) => tokio::time::timeout_at(deadline, take(spec, inputs, &store, &id))
            .await
            .unwrap_or(Err(Error::Timeout {
                timeout: spec.timeout,
            })),
    };
    let (files, details) = match taken {
        Ok(x) => x,
        Err(e) => {
            // Nothing of this run may look like a backup; a later run retries the removal.
            if let Err(e) = catalog::remove(&store, &id).await {
                warn!(job = %job.name, id, "removing the failed backup's files: {e}");
            }
            report.errors.insert(0, e.to_string());
            return Ok(report);
        }
    };
    let finished = Utc::now();
    let mut manifest = Manifest {
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
        host: Some(inputs.host.host.clone()),
        instance: Some(inputs.host.instance.clone()),
        // Unverified until the drill passes: a run that dies during the drill leaves a backup
        // retention never prefers to a verified one.
        drill: spec.restore_drill.then_some(DrillRecord {
            status: DrillStatus::Pending,
            at: finished,
            detail: serde_json::Value::Null,
        }),
        encryption: crypt.as_ref().and_then(|c| c.record()),
    };
    if let Err(e) = catalog::write_manifest(&store, &manifest).await {
        let _ = catalog::remove(&store, &id).await;
        report.errors.insert(0, Error::ManifestWrite(e).to_string());
        return Ok(report);
    }
    report.backup = Some(Made {
        id: id.clone(),
        files: manifest.files.len(),
        bytes: manifest.bytes(),
        duration_ms: (finished - started).num_milliseconds().max(0) as u64,
        encrypted: manifest.encryption.is_some(),
    });
    info!(job = %job.name, id, bytes = manifest.bytes(), "backup complete");

    if spec.restore_drill {
        let drilled = tokio::time::timeout_at(deadline, drill(spec, inputs, &store, &manifest))
            .await
            .unwrap_or(Err(Error::Timeout {
                timeout: spec.timeout,
            }));
        let record = match drilled {
            Ok(detail) => {
                report.drill = Some(serde_json::json!({"ok": true, "detail": detail}));
                DrillRecord {
                    status: DrillStatus::Passed,
                    at: Utc::now(),
                    detail,
                }
            }
            Err(e) => {
                let message = e.to_string();
                report.drill = Some(serde_json::json!({"ok": false, "error": message}));
                report.errors.push(format!(
                    "restore drill: {message} (backup {id} is kept, marked unverified in its manifest)"
                ));
                DrillRecord {
                    status: DrillStatus::Failed,
                    at: Utc::now(),
                    detail: serde_json::json!({ "error": message }),
                }
            }
        };
        let pending = manifest.drill.replace(record);
        if let Err(e) = catalog::write_manifest(&store, &manifest).await {
            // The stored manifest still says pending: unverified, and retention decides so.
            report
                .errors
                .push(format!("recording the restore drill in the manifest: {e}"));
            manifest.drill = pending;
        }
    }

    // Retention runs after a failed drill too: it never removes a verified backup to keep an
    // unverified one, and without it repeated failures would pile unverified backups up.
    let mut complete = listing.complete;
    complete.push(manifest);
    apply_retention(spec, &store, complete, &mut report, true).await;
    Ok(report)
}

/// The newest complete, verified backup's time.
fn newest_verified(complete: &[Manifest]) -> Option<chrono::DateTime<Utc>> {
    complete
        .iter()
        .filter(|m| m.verified())
        .map(|m| m.started_at)
        .max()
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
            verified: m.verified(),
        })
        .collect();
    let decisions = retention::decide(&candidates, &spec.retention, spec.time_zone);
    report.newest_complete = decisions
        .iter()
        .filter(|d| d.verified)
        .map(|d| d.time)
        .max();
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
            let conn = inputs
                .postgres(pg)
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
            let conn = inputs.postgres(pg).await?;
            let owner = postgres::drill::DrillOwner {
                job: &manifest.job,
                instance: &inputs.host.instance,
                host: &inputs.host.host,
            };
            Ok(postgres::drill::drill(
                &conn,
                pg,
                store,
                manifest,
                &scratch_dir(inputs.state_dir),
                &owner,
            )
            .await?)
        }
        Source::S3(_) => {
            // Beside the job's backups at the destination: `<job>.drill` (job names are DNS
            // labels, so no job's backups live there), emptied before and after.
            let scratch = inputs
                .open(&spec.destination, &format!("{}.drill", manifest.job))
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
