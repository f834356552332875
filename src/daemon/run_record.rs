//! Each run of the loop into the run store (`crate::runs`): when it ends, its stacks, the
//! revision applied and the newest fetched (from the status), its errors and phases, and
//! whether it reached the revisions its callers want (asked of the Git mirror, off the async
//! threads). A stop during a run records it as interrupted.

use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::Shared;
use super::mode::Mode;
use super::status::{StackState, StackStatus};
use crate::config::HostConfig;
use crate::runs::{RunState, StackRun, StackRunState, Wanted};

/// What the loop knows about the run that just ended.
pub struct Ended {
    pub id: String,
    pub ok: bool,
    pub elapsed: Duration,
    pub mode: Mode,
    pub phases: Vec<(String, u64)>,
    pub stacks: Vec<StackRun>,
}

/// Completes the running run's record and makes it history (persisted, waiters woken).
pub async fn finish(config: &HostConfig, shared: &Shared, ended: Ended) {
    let (applied, fetched, errors, quiet_stacks) = {
        let st = shared.status.read().await;
        (
            st.applied_revision.as_ref().map(|r| r.sha.clone()),
            st.revision.as_ref().map(|r| r.sha.clone()),
            st.errors.clone(),
            (ended.mode == Mode::Quiet).then(|| st.stacks.iter().map(unchanged_since).collect()),
        )
    };
    let wanted = shared
        .runs
        .get(&ended.id)
        .map(|r| r.wanted)
        .unwrap_or_default();
    let wanted = reached(config, wanted, applied.clone(), fetched.clone()).await;
    let mode = serde_json::to_value(ended.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    let finished = shared.runs.finish(|run| {
        run.state = if ended.ok {
            RunState::Succeeded
        } else {
            RunState::Failed
        };
        run.finished_at = Some(Utc::now());
        run.duration_ms = Some(ended.elapsed.as_millis() as u64);
        run.fetched = fetched.filter(|f| applied.as_ref() != Some(f));
        run.revision = applied;
        run.mode = mode;
        run.wanted = wanted;
        // A quiet run asked nothing of the cluster: its stacks are as the last run left them.
        run.stacks = quiet_stacks.unwrap_or(ended.stacks);
        run.errors = errors;
        run.phases_ms = ended.phases;
    });
    if let Some(run) = finished {
        shared.notify.run_finished(&run);
        info!(
            run = %run.id,
            state = ?run.state,
            revision = run.revision.as_deref().unwrap_or("none"),
            triggers = ?run.triggers,
            "run finished"
        );
    }
}

/// A stack of a quiet run, from the status the last reconcile left: nothing was planned.
fn unchanged_since(s: &StackStatus) -> StackRun {
    let state = match s.state {
        StackState::Synced => StackRunState::Unchanged,
        StackState::Drifted => StackRunState::Planned,
        StackState::Unhealthy => StackRunState::Unhealthy,
        StackState::Failed => StackRunState::Failed,
        StackState::Pending | StackState::Backoff => StackRunState::Skipped,
    };
    StackRun {
        target: Some(s.target.clone()),
        error: s.error.clone(),
        ..StackRun::new(&s.name, state)
    }
}

/// Records the running run as interrupted (the daemon stops).
pub fn interrupted(shared: &Shared) {
    shared.runs.finish(|run| {
        run.state = RunState::Interrupted;
        run.finished_at = Some(Utc::now());
    });
}

/// Whether the revisions fetched and applied are each wanted revision or descendants of it.
async fn reached(
    config: &HostConfig,
    wanted: Vec<Wanted>,
    applied: Option<String>,
    fetched: Option<String>,
) -> Vec<Wanted> {
    if wanted.is_empty() {
        return wanted;
    }
    let (source, creds, state_dir) = (
        config.source.clone(),
        config.credentials(),
        config.state_dir(),
    );
    let answered = tokio::task::spawn_blocking(move || {
        let contains = |newer: &Option<String>, w: &str| -> Option<bool> {
            let newer = newer.as_deref()?;
            match crate::revision::contains(source.as_ref(), &creds, &state_dir, newer, w) {
                Ok(c) => c,
                Err(e) => {
                    warn!("run record: is {newer} a descendant of {w}: {e}");
                    None
                }
            }
        };
        wanted
            .into_iter()
            .map(|w| Wanted {
                fetched: contains(&fetched, &w.revision),
                applied: contains(&applied, &w.revision),
                revision: w.revision,
            })
            .collect::<Vec<_>>()
    })
    .await;
    answered.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_run_reports_its_stacks_as_the_last_run_left_them() {
        let status = |state| StackStatus {
            name: "web".to_owned(),
            target: "default".to_owned(),
            state,
            last_change: None,
            last_sync: None,
            managed_objects: 2,
            drifted: 0,
            last_plan: Default::default(),
            error: None,
            retry_at: None,
            consecutive_failures: 0,
            holder: None,
        };
        for (state, want) in [
            (StackState::Synced, StackRunState::Unchanged),
            (StackState::Drifted, StackRunState::Planned),
            (StackState::Failed, StackRunState::Failed),
            (StackState::Unhealthy, StackRunState::Unhealthy),
            (StackState::Backoff, StackRunState::Skipped),
            (StackState::Pending, StackRunState::Skipped),
        ] {
            let s = unchanged_since(&status(state));
            assert_eq!((s.name.as_str(), s.state), ("web", want));
            assert_eq!(s.counts, crate::runs::Counts::default());
        }
    }
}
