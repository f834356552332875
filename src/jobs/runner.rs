//! Runs one job and records it: takes the job's lock (never two runs of one job at once, in this
//! process or another), writes a `running` record, dispatches to the kind's runner, writes the
//! final record and the full report. Used by the daemon's scheduler and `driftless jobs run`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::{error, info};

use super::model::Job;
use super::runs::{self, Outcome, RunRecord};
use super::scheduler::Cause;
use super::{backup, image_cleanup};
use crate::stack::RenderedStack;

/// Errors around a run (the run's own failure is its record's outcome, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runs(#[from] runs::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
}

/// What a run may use.
pub struct Context<'a> {
    pub cluster: Option<&'a kube::Client>,
    pub desired: &'a [RenderedStack],
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
    /// Programs jobs may run, from the host configuration (`jobs.commands`).
    pub commands: &'a crate::config::HostCommands,
    /// Warnings fail the run (`jobs run NAME --dry-run --strict`; ImageCleanup's rules that keep
    /// nothing).
    pub strict: bool,
    /// The revision the job definition comes from.
    pub revision: Option<String>,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Finished {
    pub record: RunRecord,
    /// The kind's full report (JSON).
    pub report: Value,
    /// The kind's human report.
    pub text: String,
}

/// Runs `job` now. Fails only when the job is already running or its records cannot be written.
pub async fn run(
    job: &Job,
    ctx: &Context<'_>,
    cause: Cause,
    scheduled_for: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<Finished, Error> {
    let lock = runs::JobLock::try_take(ctx.state_dir, &job.name)?;
    let mut record = RunRecord {
        job: job.name.clone(),
        kind: job.kind.clone(),
        cause,
        scheduled_for,
        started_at: Utc::now(),
        finished_at: None,
        outcome: Outcome::Running,
        dry_run,
        revision: ctx.revision.clone(),
        figures: BTreeMap::new(),
        message: None,
    };
    runs::record(ctx.state_dir, &record)?;
    info!(job = %job.name, kind = %job.kind, ?cause, dry_run, "job started");
    let (ok, figures, message, report, text) = match job.kind.as_str() {
        "ImageCleanup" => {
            let inputs = image_cleanup::Inputs {
                cluster: ctx.cluster,
                desired: ctx.desired,
                credentials: ctx.credentials,
                state_dir: ctx.state_dir,
                commands: ctx.commands,
                strict: ctx.strict,
            };
            match image_cleanup::run(job, &inputs, dry_run).await {
                Ok(r) => (
                    r.ok(),
                    r.figures(),
                    r.summary(),
                    serde_json::to_value(&r).unwrap_or(Value::Null),
                    r.text(),
                ),
                Err(e) => failed(e.to_string()),
            }
        }
        "Backup" => {
            let inputs = backup::Inputs {
                cluster: ctx.cluster,
                credentials: ctx.credentials,
                state_dir: ctx.state_dir,
                revision: ctx.revision.clone(),
            };
            match backup::run(job, &inputs, dry_run).await {
                Ok(r) => (
                    r.ok(),
                    r.figures(),
                    r.summary(),
                    serde_json::to_value(&r).unwrap_or(Value::Null),
                    r.text(),
                ),
                Err(e) => failed(e.to_string()),
            }
        }
        other => failed(format!(
            "job kind {other} has no runner in this version of driftless"
        )),
    };
    record.finished_at = Some(Utc::now());
    record.outcome = if ok {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    };
    record.figures = figures;
    record.message = Some(message);
    if ok {
        info!(job = %job.name, "job succeeded: {}", record.message.as_deref().unwrap_or(""));
    } else {
        error!(job = %job.name, "job failed: {}", record.message.as_deref().unwrap_or(""));
    }
    runs::record(ctx.state_dir, &record)?;
    crate::state::write_json(
        &runs::report_path(ctx.state_dir, &job.name),
        &json!({"run": record, "report": report}),
    )?;
    drop(lock);
    Ok(Finished {
        record,
        report,
        text,
    })
}

fn failed(message: String) -> (bool, BTreeMap<String, u64>, String, Value, String) {
    let text = format!("error: {message}\n");
    (
        false,
        BTreeMap::new(),
        message.clone(),
        json!({ "error": message }),
        text,
    )
}
