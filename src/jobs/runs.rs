//! Job run records and the per-job lock, in the state directory:
//!
//! - `jobs/<job>.json`: when the job was first seen and its last runs (newest last, at most
//!   `HISTORY`), each with cause, fire time, start, end, outcome and figures;
//! - `jobs/<job>.report.json`: the last run's full report (what was done and why);
//! - `jobs/<job>.lock`: held (an OS file lock) while a run is in progress, by the daemon or by
//!   `driftless jobs run`, so one job never runs twice at once on a host.
//!
//! A record left `running` by a process that died is marked `interrupted` when next read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::scheduler::Cause;

/// Runs kept per job.
pub const HISTORY: usize = 50;

/// Errors taking the lock or writing records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("job {job} is already running (lock {path} is held)")]
    Running { job: String, path: PathBuf },
    #[error("job {job}: cannot open lock {path}: {source}")]
    Lock {
        job: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::Error),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
    /// The process running it died before it finished.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One run of one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub job: String,
    pub kind: String,
    pub cause: Cause,
    /// The fire time it ran for (none for manual runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Outcome,
    pub dry_run: bool,
    /// The Git revision whose job definition ran.
    pub revision: Option<String>,
    /// The kind's figures (`deleted`, `bytesFreed`, …).
    #[serde(default)]
    pub figures: BTreeMap<String, u64>,
    /// A one-line summary, or the error.
    pub message: Option<String>,
}

impl RunRecord {
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_at
            .map(|f| (f - self.started_at).num_milliseconds().max(0) as u64)
    }
}

/// One job's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// When the scheduler first saw the job: fire times before it are never caught up (as a
    /// CronJob's creation time).
    pub first_seen: Option<DateTime<Utc>>,
    pub runs: Vec<RunRecord>,
}

impl History {
    /// The latest fire time a run was started for (or the time the job was first seen).
    pub fn last_scheduled(&self) -> Option<DateTime<Utc>> {
        self.runs
            .iter()
            .filter_map(|r| r.scheduled_for)
            .chain(self.first_seen)
            .max()
    }

    pub fn last(&self) -> Option<&RunRecord> {
        self.runs.last()
    }

    pub fn last_success(&self) -> Option<&RunRecord> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.outcome == Outcome::Succeeded && !r.dry_run)
    }
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

pub fn history_path(state_dir: &Path, job: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.json"))
}

pub fn report_path(state_dir: &Path, job: &str) -> PathBuf {
    dir(state_dir).join(format!("{job}.report.json"))
}

/// Reads a job's history; a corrupt file is reported (and set aside) and starts afresh. Runs
/// left `running` whose lock is free are marked interrupted.
pub fn load(state_dir: &Path, job: &str) -> (History, Option<String>) {
    let path = history_path(state_dir, job);
    let (mut history, problem) = match crate::state::read_json::<History>(&path) {
        crate::state::Loaded::Ok(h) => (h, None),
        crate::state::Loaded::Missing => (History::default(), None),
        crate::state::Loaded::Corrupt(p) => (History::default(), Some(p)),
    };
    if history.runs.iter().any(|r| r.outcome == Outcome::Running)
        && let Ok(lock) = JobLock::try_take(state_dir, job)
    {
        for r in history.runs.iter_mut() {
            if r.outcome == Outcome::Running {
                r.outcome = Outcome::Interrupted;
                r.message = Some("the process running it stopped before it finished".into());
            }
        }
        drop(lock);
    }
    (history, problem)
}

/// Adds or updates (same start time) a run record, trimming the history.
pub fn record(state_dir: &Path, run: &RunRecord) -> Result<History, Error> {
    let (mut history, _) = load(state_dir, &run.job);
    match history
        .runs
        .iter_mut()
        .find(|r| r.started_at == run.started_at)
    {
        Some(existing) => *existing = run.clone(),
        None => history.runs.push(run.clone()),
    }
    let excess = history.runs.len().saturating_sub(HISTORY);
    history.runs.drain(..excess);
    crate::state::write_json(&history_path(state_dir, &run.job), &history)?;
    Ok(history)
}

/// Marks a job as seen now unless it was seen before; returns its history.
pub fn first_sight(state_dir: &Path, job: &str, now: DateTime<Utc>) -> Result<History, Error> {
    let (mut history, _) = load(state_dir, job);
    if history.first_seen.is_none() {
        history.first_seen = Some(now);
        crate::state::write_json(&history_path(state_dir, job), &history)?;
    }
    Ok(history)
}

/// The exclusive lock of one job, released on drop.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

impl JobLock {
    /// Takes the lock, or says the job is running (in this process or another).
    pub fn try_take(state_dir: &Path, job: &str) -> Result<JobLock, Error> {
        let path = dir(state_dir).join(format!("{job}.lock"));
        let open = || -> std::io::Result<File> {
            std::fs::create_dir_all(dir(state_dir))?;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let file = open().map_err(|source| Error::Lock {
            job: job.to_owned(),
            path: path.clone(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(JobLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Running {
                job: job.to_owned(),
                path,
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Lock {
                job: job.to_owned(),
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str, minute: u32, outcome: Outcome) -> RunRecord {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 11, 21, 3, minute, 0).unwrap();
        RunRecord {
            job: job.into(),
            kind: "ImageCleanup".into(),
            cause: Cause::Scheduled,
            scheduled_for: Some(t),
            started_at: t,
            finished_at: None,
            outcome,
            dry_run: false,
            revision: None,
            figures: BTreeMap::new(),
            message: None,
        }
    }

    #[test]
    fn records_update_trim_and_recover_interrupted_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = run("gc", 0, Outcome::Running);
        record(dir.path(), &r).unwrap();
        r.outcome = Outcome::Succeeded;
        let h = record(dir.path(), &r).unwrap();
        assert_eq!(h.runs.len(), 1, "the same run is updated, not added");
        for m in 1..=HISTORY as u32 + 5 {
            record(dir.path(), &run("gc", m % 60, Outcome::Succeeded)).unwrap();
        }
        let (h, problem) = load(dir.path(), "gc");
        assert!(problem.is_none());
        assert!(h.runs.len() <= HISTORY);

        // A run left "running" with nobody holding the lock was interrupted.
        record(dir.path(), &run("other", 7, Outcome::Running)).unwrap();
        let (h, _) = load(dir.path(), "other");
        assert_eq!(h.runs[0].outcome, Outcome::Interrupted);
        // While the lock is held, it is still running.
        let lock = JobLock::try_take(dir.path(), "third").unwrap();
        record(dir.path(), &run("third", 7, Outcome::Running)).unwrap();
        assert_eq!(
            load(dir.path(), "third").0.runs[0].outcome,
            Outcome::Running
        );
        assert!(matches!(
            JobLock::try_take(dir.path(), "third"),
            Err(Error::Running { .. })
        ));
        drop(lock);
        assert!(JobLock::try_take(dir.path(), "third").is_ok());

        // A corrupt history is reported and replaced.
        std::fs::write(history_path(dir.path(), "gc"), "{not json").unwrap();
        let (h, problem) = load(dir.path(), "gc");
        assert!(h.runs.is_empty() && problem.is_some());
    }
}
