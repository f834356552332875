//! The daemon's scheduler task: runs the jobs of the last good revision on their schedules.
//! Decisions come from the pure `jobs::scheduler`; this task owns the clock, the set of running
//! jobs and the records. A job seen for the first time has its fire times counted from then (as a
//! CronJob from its creation); a run missed while the daemon was down runs once at start when
//! within the job's `startingDeadline`; a fire time that comes while the job's previous run (here
//! or in `driftless jobs run`) is still going is skipped and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::Shared;
use super::metrics::labels;
use super::status::{DaemonState, JobStatus};
use crate::jobs::model::Job;
use crate::jobs::runner;
use crate::jobs::runs::{self, Outcome};
use crate::jobs::scheduler::{self, Decision, Due};

/// What the scheduler runs, from the last good revision and the current configuration.
#[derive(Clone)]
pub struct JobsState {
    pub jobs: Vec<Job>,
    /// The revision's desired state (ImageCleanup protects the images it names), stored
    /// compactly: expanded only when a job runs.
    pub desired: Arc<crate::stack::StoredRevision>,
    pub revision: Option<String>,
    pub state_dir: PathBuf,
    pub credentials: crate::credentials::Credentials,
    /// Programs jobs may run (host configuration `jobs.commands`).
    pub commands: crate::config::HostCommands,
    /// The host configuration's settings for jobs (programs, writable paths, host name).
    pub host: crate::jobs::host::HostSettings,
}

/// Longest sleep between looks at the clock (a suspended host or a clock step is noticed).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Runs until aborted.
pub async fn scheduler(shared: Arc<Shared>) {
    // Jobs run only on the holder of their stack: nothing is decided (missed runs included)
    // before this daemon took its first share of the stacks.
    let _ = shared.leases_started.clone().wait_for(|s| *s).await;
    let running: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut last_tick: Option<DateTime<Utc>> = None;
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        let Some(state) = shared.jobs.read().await.clone() else {
            shared.jobs_changed.notified().await;
            continue;
        };
        let now = Utc::now();
        let mut histories = BTreeMap::new();
        for job in &state.jobs {
            let history = if known.contains(&job.name) {
                runs::load(&state.state_dir, &job.name).0
            } else {
                let (history, problem) = runs::load(&state.state_dir, &job.name);
                if let Some(p) = problem {
                    warn!(job = %job.name, "{p}");
                }
                // A job never seen before counts its fire times from now: no catch-up of a fire
                // time before it existed (as a CronJob from its creation).
                let mut history = history;
                if history.first_seen.is_none() {
                    history.first_seen = Some(now);
                    if let Err(e) = runs::first_sight(&state.state_dir, &job.name, now) {
                        warn!("{e}");
                    }
                }
                history
            };
            histories.insert(job.name.clone(), history);
        }
        let last_scheduled: BTreeMap<String, DateTime<Utc>> = histories
            .iter()
            .filter_map(|(n, h)| h.last_scheduled().map(|t| (n.clone(), t)))
            .collect();
        let busy = running.lock().map(|r| r.clone()).unwrap_or_default();
        let (seen, new): (Vec<Job>, Vec<Job>) = state
            .jobs
            .iter()
            .cloned()
            .partition(|j| known.contains(&j.name) && last_tick.is_some());
        let mut decisions = scheduler::decide(&new, now, None, &last_scheduled, &busy);
        decisions.extend(scheduler::decide(
            &seen,
            now,
            last_tick,
            &last_scheduled,
            &busy,
        ));
        known = state.jobs.iter().map(|j| j.name.clone()).collect();
        last_tick = Some(now);
        for d in decisions {
            match d {
                Decision::Start(due) => {
                    let Some(job) = state.jobs.iter().find(|j| j.name == due.job).cloned() else {
                        continue;
                    };
                    // Only the daemon holding the stack's Lease (on its stack's target) runs
                    // its jobs.
                    let targets: Vec<_> = shared.targets.iter().map(|(t, _)| t.clone()).collect();
                    let cluster = match crate::targets::job_target(
                        &targets,
                        &job.stack,
                        job.target.as_deref(),
                    ) {
                        Ok(t) => t.cluster.clone(),
                        Err(e) => {
                            skipped(&shared, &due, &e);
                            continue;
                        }
                    };
                    let holds = crate::targets::stack_target(&targets, &job.stack)
                        .and_then(|t| shared.targets.iter().find(|(x, _)| x.name == t.name))
                        .is_some_and(|(_, fence)| fence.holds(&job.stack));
                    if !holds {
                        debug!(job = %job.name, stack = %job.stack, "not run here: another daemon holds stack {}", job.stack);
                        continue;
                    }
                    if let Ok(mut r) = running.lock() {
                        r.insert(job.name.clone());
                    }
                    let (shared, running, state) = (shared.clone(), running.clone(), state.clone());
                    tokio::spawn(async move {
                        run_one(&shared, &state, &cluster, &job, &due).await;
                        if let Ok(mut r) = running.lock() {
                            r.remove(&job.name);
                        }
                        refresh_status(&shared, &state, &running).await;
                    });
                }
                Decision::SkipOverlap(due) => {
                    skipped(&shared, &due, "its previous run is still going")
                }
            }
        }
        refresh_status(&shared, &state, &running).await;
        let sleep = scheduler::next_wake(&state.jobs, now)
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.jobs_changed.notified() => {}
        }
    }
}

fn skipped(shared: &Shared, due: &Due, why: &str) {
    warn!(job = %due.job, scheduled_for = %due.scheduled_for, "run skipped: {why}");
    shared
        .metrics
        .job_runs
        .get_or_create(&labels(&[("job", &due.job), ("outcome", "skipped")]))
        .inc();
}

async fn run_one(
    shared: &Shared,
    state: &JobsState,
    cluster: &crate::cluster::Target,
    job: &Job,
    due: &Due,
) {
    // Protection needs the cluster; connecting per run keeps the task independent of the
    // reconcile loop. A job that needs the cluster fails its run when it is unreachable.
    let client = crate::cluster::connect_for_jobs(cluster).await;
    if let Err(e) = &client {
        warn!(job = %job.name, "cluster: {e}");
    }
    let desired = match state.desired.expand() {
        Ok(d) => d,
        Err(e) => {
            warn!(job = %job.name, "{e}");
            Vec::new()
        }
    };
    let ctx = runner::Context {
        cluster: client.as_ref().ok(),
        desired: &desired,
        credentials: &state.credentials,
        state_dir: &state.state_dir,
        commands: &state.commands,
        strict: false,
        revision: state.revision.clone(),
        host: &state.host,
    };
    match runner::run(job, &ctx, due.cause, Some(due.scheduled_for), false).await {
        Ok(finished) => {
            let r = &finished.record;
            shared
                .metrics
                .job_runs
                .get_or_create(&labels(&[
                    ("job", &job.name),
                    ("outcome", r.outcome.as_str()),
                ]))
                .inc();
            if r.outcome == Outcome::Succeeded
                && let Some(t) = r.finished_at
            {
                shared
                    .metrics
                    .job_last_success
                    .get_or_create(&labels(&[("job", &job.name)]))
                    .set(t.timestamp_millis() as f64 / 1000.0);
            }
            for (figure, value) in &r.figures {
                shared
                    .metrics
                    .job_figures
                    .get_or_create(&labels(&[("job", &job.name), ("figure", figure)]))
                    .set(*value as i64);
            }
        }
        Err(runner::Error::Runs(runs::Error::Running { .. })) => {
            skipped(
                shared,
                due,
                "it is running in another process (driftless jobs run)",
            );
        }
        Err(e) => {
            warn!(job = %job.name, "{e}");
            shared
                .metrics
                .job_runs
                .get_or_create(&labels(&[("job", &job.name), ("outcome", "failed")]))
                .inc();
        }
    }
}

/// Rewrites the jobs part of the status from the records.
async fn refresh_status(shared: &Shared, state: &JobsState, running: &Mutex<BTreeSet<String>>) {
    let busy = running.lock().map(|r| r.clone()).unwrap_or_default();
    let now = Utc::now();
    let jobs = state
        .jobs
        .iter()
        .map(|j| {
            let (history, _) = runs::load(&state.state_dir, &j.name);
            let backup = crate::jobs::backup::freshness(j, &history);
            if let Some(t) = backup.and_then(|b| b.newest) {
                shared
                    .metrics
                    .backup_last_complete
                    .get_or_create(&labels(&[("job", &j.name)]))
                    .set(t.timestamp() as f64);
            }
            JobStatus {
                name: j.name.clone(),
                kind: j.kind().to_owned(),
                stack: j.stack.clone(),
                schedule: j.schedule.expression().to_owned(),
                time_zone: j.schedule.time_zone().name().to_owned(),
                next_run: j.schedule.next_after(now),
                running: busy.contains(&j.name),
                last_run: history.last().cloned(),
                last_success: history.last_success().and_then(|r| r.finished_at),
                last_complete_backup: backup.and_then(|b| b.newest),
                overdue: backup.and_then(|b| b.overdue(now, history.first_seen)),
            }
        })
        .collect::<Vec<JobStatus>>();
    let mut status = shared.status.write().await;
    if jobs.iter().any(|j| j.overdue.is_some()) && status.state == DaemonState::Ready {
        status.state = DaemonState::Degraded;
    }
    shared.notify.jobs_changed(&status.jobs, &jobs);
    status.jobs = jobs;
}
