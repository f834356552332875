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
//! `list` and `restore` serve `driftless backup list|restore`.

pub mod command;
pub mod exec;
pub mod globals;
pub mod pod;
pub mod postgres;
pub mod retention;
pub mod s3;
pub mod spec;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::jobs::model::Job;
use retention::{Candidate, RetentionDecision};
use spec::{Source, Spec};
use store::{Manifest, Store};

/// Errors that stop a run before it backs anything up, or a list/restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error("Backup {job}: destination: {source}")]
    Destination {
        job: String,
        #[source]
        source: store::Error,
    },
    #[error("Backup {job}: source: {source}")]
    Source {
        job: String,
        #[source]
        source: store::Error,
    },
    #[error("Backup {job}: no complete backup {id} (see `driftless backup list {job}`)")]
    NoSuchBackup { job: String, id: String },
    #[error("Backup {job}: restore of backup {id}: {message}")]
    Restore {
        job: String,
        id: String,
        message: String,
    },
}

/// What a run may use.
pub struct Inputs<'a> {
    pub cluster: Option<&'a kube::Client>,
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
    pub revision: Option<String>,
}

/// The backup a run made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    pub id: String,
    pub files: usize,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub job: String,
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    /// Incomplete backups removed before the new one was taken.
    pub cleaned: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Made>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<serde_json::Value>,
    /// Retention over the complete backups (after the new one), newest first.
    pub retention: Vec<RetentionDecision>,
    pub removed: Vec<String>,
    /// The newest complete backup's time.
    pub newest_complete: Option<DateTime<Utc>>,
    pub complete_backups: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the run succeeded as a whole.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Figures for the run record and metrics (`newestCompleteTimestamp` is Unix seconds).
    pub fn figures(&self) -> BTreeMap<String, u64> {
        let mut f: BTreeMap<String, u64> = [
            ("cleanedIncomplete", self.cleaned.len() as u64),
            ("removed", self.removed.len() as u64),
            (
                "kept",
                self.retention.iter().filter(|d| d.keep).count() as u64,
            ),
            ("completeBackups", self.complete_backups as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(b) = &self.backup {
            f.insert("bytes".into(), b.bytes);
            f.insert("files".into(), b.files as u64);
            f.insert("backupMs".into(), b.duration_ms);
        }
        if let Some(t) = self.newest_complete {
            f.insert(NEWEST_FIGURE.into(), t.timestamp().max(0) as u64);
        }
        f
    }

    /// One line for logs and the run record.
    pub fn summary(&self) -> String {
        let mut s = match (&self.backup, self.dry_run) {
            (Some(b), _) => format!(
                "backup {} complete: {} files, {}",
                b.id,
                b.files,
                human_bytes(b.bytes)
            ),
            (None, true) => "dry run: no backup taken".to_owned(),
            (None, false) => "no backup taken".to_owned(),
        };
        if !self.removed.is_empty() {
            s.push_str(&format!(
                "; {} {} by retention",
                if self.dry_run {
                    "would remove"
                } else {
                    "removed"
                },
                self.removed.len()
            ));
        }
        if !self.cleaned.is_empty() {
            s.push_str(&format!(
                "; {} incomplete backups {}",
                self.cleaned.len(),
                if self.dry_run {
                    "to clean up"
                } else {
                    "cleaned up"
                }
            ));
        }
        s.push_str(&format!("; {} complete backups", self.complete_backups));
        if let Some(e) = self.errors.first() {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }

    /// The human report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Backup {} of {} to {}\n{}\n",
            self.job,
            self.source,
            self.destination,
            self.summary()
        );
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        if let Some(d) = &self.drill {
            out.push_str(&format!("restore drill: {d}\n"));
        }
        for id in &self.cleaned {
            out.push_str(&format!("  cleaned  {id} (incomplete: no manifest)\n"));
        }
        for d in &self.retention {
            let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
            out.push_str(&format!(
                "  {}  {}  {}\n",
                if d.keep { "keep  " } else { "remove" },
                d.id,
                if d.keep {
                    reasons.join(", ")
                } else {
                    String::new()
                }
            ));
        }
        out
    }
}

/// The run-record figure holding the newest complete backup's Unix time.
pub const NEWEST_FIGURE: &str = "newestCompleteTimestamp";

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    crate::jobs::image_cleanup::human_bytes(n)
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
pub async fn run(job: &Job, inputs: &Inputs<'_>, dry_run: bool) -> Result<Report, Error> {
    let spec = spec::parse(job)?;
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
    let listing = store.backups().await.map_err(dest_err)?;
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
        apply_retention(&spec, &store, listing.complete, &mut report, false).await;
        return Ok(report);
    }
    for id in &listing.incomplete {
        info!(job = %job.name, id, "removing incomplete backup");
        if let Err(e) = store.remove(id).await {
            report
                .errors
                .push(format!("removing incomplete backup {id}: {e}"));
        }
    }

    let started = Utc::now();
    let id = store::new_id(started);
    info!(job = %job.name, id, source = %report.source, "backup started");
    let taken = take(&spec, inputs, &store, &id).await;
    let (files, details) = match taken {
        Ok(x) => x,
        Err(message) => {
            // Nothing of this run may look like a backup; the next run retries the removal.
            if let Err(e) = store.remove(&id).await {
                warn!(job = %job.name, id, "removing the failed backup's files: {e}");
            }
            report.errors.insert(0, message);
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
    let text = match serde_json::to_vec_pretty(&manifest) {
        Ok(t) => t,
        Err(e) => {
            report.errors.insert(0, format!("manifest: {e}"));
            return Ok(report);
        }
    };
    if let Err(e) = store
        .put_small(&store::join(&id, store::MANIFEST), text.into())
        .await
    {
        let _ = store.remove(&id).await;
        report
            .errors
            .insert(0, format!("writing the manifest: {e}"));
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
        match drill(&spec, inputs, &store, &manifest).await {
            Ok(v) => report.drill = Some(serde_json::json!({"ok": true, "detail": v})),
            Err(message) => {
                report.drill = Some(serde_json::json!({"ok": false, "error": message}));
                report.errors.push(format!("restore drill: {message}"));
            }
        }
    }

    let mut complete = listing.complete;
    complete.push(manifest);
    apply_retention(&spec, &store, complete, &mut report, true).await;
    Ok(report)
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
            if let Err(e) = store.remove(&d.id).await {
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

/// Takes the backup's files; the error is the run's message.
async fn take(
    spec: &Spec,
    inputs: &Inputs<'_>,
    store: &Store,
    id: &str,
) -> Result<(Vec<store::FileEntry>, serde_json::Value), String> {
    match &spec.source {
        Source::Postgres(pg) => {
            let conn = postgres::Connection::open(pg, inputs.cluster, inputs.credentials)
                .await
                .map_err(|e| format!("postgres {}: {e}", pg.database))?;
            postgres::dump(&conn, pg, store, id)
                .await
                .map_err(|e| format!("postgres {} at {}: {e}", pg.database, conn.described))
        }
        Source::S3(loc) => {
            let source =
                Store::s3_location(loc, "spec.source.s3", inputs.credentials, inputs.cluster)
                    .await
                    .map_err(|e| format!("source: {e}"))?;
            let files = s3::mirror(&source, store, id)
                .await
                .map_err(|e| e.to_string())?;
            let details = serde_json::json!({
                "bucket": loc.bucket,
                "prefix": loc.clean_prefix(),
                "objects": files.len(),
                "verified": "every object hashed while copied and re-hashed after upload",
            });
            Ok((files, details))
        }
        Source::Exec(e) => exec::capture(inputs.cluster, e, store, id)
            .await
            .map_err(|e| e.to_string()),
    }
}

async fn drill(
    spec: &Spec,
    inputs: &Inputs<'_>,
    store: &Store,
    manifest: &Manifest,
) -> Result<serde_json::Value, String> {
    match &spec.source {
        Source::Postgres(pg) => {
            let conn = postgres::Connection::open(pg, inputs.cluster, inputs.credentials)
                .await
                .map_err(|e| e.to_string())?;
            postgres::drill(&conn, pg, store, manifest, &scratch_dir(inputs.state_dir))
                .await
                .map_err(|e| e.to_string())
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
            .await
            .map_err(|e| e.to_string())?;
            s3::drill(store, manifest, &scratch)
                .await
                .map_err(|e| e.to_string())
        }
        Source::Exec(_) => Err("exec backups have no automatic restore".to_owned()),
    }
}

/// One job's complete and incomplete backups.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobBackups {
    pub job: String,
    pub destination: String,
    pub backups: Vec<ListedBackup>,
    /// Ids of incomplete backups (removed by the next run).
    pub incomplete: Vec<String>,
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
}

/// Lists the backups of a Backup job (complete ones, oldest first).
pub async fn list(
    job: &Job,
    credentials: &crate::credentials::Credentials,
    cluster: Option<&kube::Client>,
) -> Result<JobBackups, Error> {
    let spec = spec::parse(job)?;
    let store = Store::open(&spec.destination, &job.name, credentials, cluster)
        .await
        .map_err(|source| Error::Destination {
            job: job.name.clone(),
            source,
        })?;
    let listing = store.backups().await.map_err(|source| Error::Destination {
        job: job.name.clone(),
        source,
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
    id: &str,
    target: &RestoreTarget,
    inputs: &Inputs<'_>,
) -> Result<serde_json::Value, Error> {
    let spec = spec::parse(job)?;
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
    let listing = store.backups().await.map_err(dest_err)?;
    let manifest = if id == "latest" {
        listing.complete.last()
    } else {
        listing.complete.iter().find(|m| m.id == id)
    }
    .cloned()
    .ok_or_else(|| Error::NoSuchBackup {
        job: job.name.clone(),
        id: id.to_owned(),
    })?;
    let fail = |message: String| Error::Restore {
        job: job.name.clone(),
        id: manifest.id.clone(),
        message,
    };
    let detail = match &spec.source {
        Source::Postgres(pg) => {
            let conn = postgres::Connection::open(pg, inputs.cluster, inputs.credentials)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let database = target
                .database
                .clone()
                .unwrap_or_else(|| pg.database.clone());
            postgres::restore(
                &conn,
                &store,
                &manifest,
                &database,
                postgres::RestoreOptions {
                    force: target.force,
                    globals: target.globals,
                },
                &scratch_dir(inputs.state_dir),
            )
            .await
            .map_err(|e| fail(e.to_string()))?
        }
        Source::S3(_) | Source::Exec(_) if target.globals => {
            return Err(fail(
                "--globals applies to PostgreSQL backups only".to_owned(),
            ));
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
                    .map_err(|e| fail(e.to_string()))?;
            s3::restore(&store, &manifest, &target_store, target.force)
                .await
                .map_err(|e| fail(e.to_string()))?
        }
        Source::Exec(_) => {
            return Err(fail(format!(
                "exec backups are restored by hand: the command's output is {} and copied-out files are {} in {}",
                store::join(&manifest.id, exec::STDOUT),
                store::join(&manifest.id, exec::FILES_TAR),
                store.name()
            )));
        }
    };
    Ok(serde_json::json!({"job": job.name, "id": manifest.id, "restored": detail}))
}

/// The newest complete backup recorded by a job's runs (from its run records' figures), and the
/// job's `maxAge`: what the daemon's status and metrics need without listing the destination.
pub fn freshness(job: &Job, history: &crate::jobs::runs::History) -> Freshness {
    let newest = history
        .runs
        .iter()
        .rev()
        .find_map(|r| r.figures.get(NEWEST_FIGURE))
        .and_then(|t| DateTime::<Utc>::from_timestamp(*t as i64, 0));
    let max_age = spec::parse(job).ok().and_then(|s| s.max_age);
    Freshness { newest, max_age }
}

/// See [`freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub newest: Option<DateTime<Utc>>,
    pub max_age: Option<std::time::Duration>,
}

impl Freshness {
    /// Why the job's backups are too old at `now` (none when fresh or without `maxAge`). A job
    /// with no complete backup is overdue once `maxAge` has passed since `since` (when the
    /// daemon first saw it).
    pub fn overdue(&self, now: DateTime<Utc>, since: Option<DateTime<Utc>>) -> Option<String> {
        let max = chrono::Duration::from_std(self.max_age?).ok()?;
        match self.newest {
            Some(t) if now - t > max => Some(format!(
                "newest complete backup {} is older than maxAge {}",
                t.to_rfc3339(),
                humantime(self.max_age?)
            )),
            Some(_) => None,
            None => match since {
                Some(s) if now - s > max => Some(format!(
                    "no complete backup within maxAge {}",
                    humantime(self.max_age?)
                )),
                _ => None,
            },
        }
    }
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn freshness_degrades_after_max_age() {
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let f = Freshness {
            newest: Some(now - chrono::Duration::hours(30)),
            max_age: Some(std::time::Duration::from_secs(26 * 3600)),
        };
        assert!(
            f.overdue(now, None)
                .unwrap()
                .contains("older than maxAge 26h")
        );
        let fresh = Freshness {
            newest: Some(now - chrono::Duration::hours(2)),
            ..f
        };
        assert_eq!(fresh.overdue(now, None), None);
        let never = Freshness { newest: None, ..f };
        assert_eq!(
            never.overdue(now, Some(now - chrono::Duration::hours(1))),
            None
        );
        assert!(
            never
                .overdue(now, Some(now - chrono::Duration::hours(27)))
                .unwrap()
                .contains("no complete backup")
        );
        let unbounded = Freshness { max_age: None, ..f };
        assert_eq!(unbounded.overdue(now, None), None);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = store::new_id(Utc.with_ymd_and_hms(2026, 3, 2, 3, 0, 0).unwrap());
        let b = store::new_id(
            Utc.with_ymd_and_hms(2026, 3, 2, 3, 0, 0).unwrap() + chrono::Duration::milliseconds(5),
        );
        assert_eq!(a, "20260302T030000.000Z");
        assert!(a < b);
    }
}
