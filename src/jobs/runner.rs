//! Runs one job and records it: takes the job's lock (never two runs of one job at once, in this
//! process or another), writes a `running` record, dispatches to the kind's runner, writes the
//! final record and the full report. Used by the daemon's scheduler and `driftless jobs run`.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{error, info};

use super::model::{Job, JobSpec};
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
    /// What the host configuration decides for jobs (programs, writable paths, who we are).
    pub host: &'a super::host::HostSettings,
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

/// What every kind's report tells the runner.
trait KindReport: Serialize {
    fn ok(&self) -> bool;
    fn figures(&self) -> BTreeMap<String, u64>;
    fn summary(&self) -> String;
    fn text(&self) -> String;
}

impl KindReport for image_cleanup::Report {
    fn ok(&self) -> bool {
        image_cleanup::Report::ok(self)
    }
    fn figures(&self) -> BTreeMap<String, u64> {
        image_cleanup::Report::figures(self)
    }
    fn summary(&self) -> String {
        image_cleanup::Report::summary(self)
    }
    fn text(&self) -> String {
        image_cleanup::Report::text(self)
    }
}

impl KindReport for backup::Report {
    fn ok(&self) -> bool {
        backup::Report::ok(self)
    }
    fn figures(&self) -> BTreeMap<String, u64> {
        backup::Report::figures(self)
    }
    fn summary(&self) -> String {
        backup::Report::summary(self)
    }
    fn text(&self) -> String {
        backup::Report::text(self)
    }
}

/// How a kind's run ended, as the record and the report file keep it.
struct Ended {
    ok: bool,
    figures: BTreeMap<String, u64>,
    summary: String,
    report: Value,
    text: String,
}

impl Ended {
    /// The run produced its report (which may still say it failed).
    fn reported(r: &impl KindReport) -> Ended {
        Ended {
            ok: r.ok(),
            figures: r.figures(),
            summary: r.summary(),
            report: serde_json::to_value(r).unwrap_or(Value::Null),
            text: r.text(),
        }
    }

    /// The run stopped before it had a report.
    fn failed(e: &dyn std::error::Error) -> Ended {
        let message = e.to_string();
        Ended {
            ok: false,
            figures: BTreeMap::new(),
            text: format!("error: {message}\n"),
            report: json!({ "error": message }),
            summary: message,
        }
    }

    fn of<R: KindReport, E: std::error::Error>(result: Result<R, E>) -> Ended {
        match result {
            Ok(r) => Ended::reported(&r),
            Err(e) => Ended::failed(&e),
        }
    }
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
        kind: job.kind().to_owned(),
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
    info!(job = %job.name, kind = %job.kind(), ?cause, dry_run, "job started");
    let ended = match &job.spec {
        JobSpec::ImageCleanup(spec) => {
            let inputs = image_cleanup::Inputs {
                cluster: ctx.cluster,
                desired: ctx.desired,
                credentials: ctx.credentials,
                state_dir: ctx.state_dir,
                commands: ctx.commands,
                strict: ctx.strict,
            };
            Ended::of(image_cleanup::run(job, spec, &inputs, dry_run).await)
        }
        JobSpec::Backup(spec) => {
            let inputs = backup::Inputs {
                cluster: ctx.cluster,
                credentials: ctx.credentials,
                state_dir: ctx.state_dir,
                revision: ctx.revision.clone(),
                host: ctx.host,
            };
            Ended::of(backup::run(job, spec, &inputs, dry_run).await)
        }
    };
    record.finished_at = Some(Utc::now());
    record.outcome = if ended.ok {
        Outcome::Succeeded
    } else {
        Outcome::Failed
    };
    record.figures = ended.figures;
    record.message = Some(ended.summary);
    if ended.ok {
        info!(job = %job.name, "job succeeded: {}", record.message.as_deref().unwrap_or(""));
    } else {
        error!(job = %job.name, "job failed: {}", record.message.as_deref().unwrap_or(""));
    }
    runs::record(ctx.state_dir, &record)?;
    crate::state::write_json(
        &runs::report_path(ctx.state_dir, &job.name),
        &json!({"run": record, "report": ended.report}),
    )?;
    drop(lock);
    Ok(Finished {
        record,
        report: ended.report,
        text: ended.text,
    })
}
