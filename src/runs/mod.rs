//! Runs: every reconcile of the daemon is a [`Run`] with an id, the triggers coalesced into it,
//! the revision it applied and, per stack, its state, plan counts, changed objects with their
//! (masked) diffs, policy findings and errors. CI waits on a run (`driftless trigger --wait`);
//! a notifier or commit-status module reads finished runs from the [`store::Store`].
//!
//! This file is pure: the record's format, how a reconcile's report becomes a record (with its
//! size bounds), and the verdict a waiting caller draws from a run. `store` keeps the records
//! (memory, `<stateDir>/runs.json`, waiters); `markdown` renders a plan as a pull-request
//! comment; `client` is the HTTP side of `driftless trigger`.

pub mod client;
pub mod markdown;
pub mod objects;
pub mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::Action;
use crate::reconcile::{Report, StackOutcome};

/// Longest diff kept per changed object in a run record, in bytes.
pub const MAX_DIFF_BYTES: usize = 16 * 1024;
/// Most diff bytes kept per run; later diffs are left out (the objects stay listed).
pub const MAX_RUN_DIFF_BYTES: usize = 512 * 1024;
/// Most changed objects listed per stack in a run record.
pub const MAX_CHANGES_PER_STACK: usize = 1000;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Triggered; the loop has not started it yet (more triggers may join it).
    Queued,
    Running,
    /// Every stack and the revision succeeded.
    Succeeded,
    /// A stack failed, was refused or ended unhealthy, or the revision could not be used.
    Failed,
    /// The daemon stopped during the run.
    Interrupted,
}

impl RunState {
    /// Whether the run is over.
    pub fn finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Interrupted
        )
    }
}

/// What a run did to one stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StackRunState {
    /// The plan changed objects and was carried out; the stack is healthy.
    Applied,
    /// Nothing to change; the stack is healthy.
    Unchanged,
    /// Planned, not applied (`selfHeal: false` and the revision did not move).
    Planned,
    /// Not applied on purpose: a policy denied it or a safety gate (mass prune, immutable
    /// field) stopped it. `error` says why.
    Refused,
    Failed,
    /// Applied, but objects were not healthy at the end of the wait.
    Unhealthy,
    /// Not reconciled in this run (in backoff after failures).
    Skipped,
}

impl StackRunState {
    /// Whether the stack is where the revision wants it.
    pub fn healthy(self) -> bool {
        matches!(
            self,
            StackRunState::Applied | StackRunState::Unchanged | StackRunState::Planned
        )
    }
}

/// (create, update, prune) of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub prune: usize,
}

/// One object a run changed (or would change, for a planned stack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangedObject {
    /// `Kind/namespace/name`.
    pub object: String,
    pub action: Action,
    /// Unified YAML diff, Secret values masked; cut at [`MAX_DIFF_BYTES`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// The diff was left out: the run's diff budget was spent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diff_omitted: bool,
}

/// A policy finding, as a run records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyNote {
    pub policy: String,
    pub object: String,
    pub message: String,
    /// The finding blocked the stack.
    pub deny: bool,
}

/// One stack's part of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackRun {
    pub name: String,
    /// The target (cluster) of this part of the run (see `crate::targets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub state: StackRunState,
    pub counts: Counts,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangedObject>,
    /// Changed objects beyond [`MAX_CHANGES_PER_STACK`], not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changes_omitted: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<PolicyNote>,
    /// The mass-prune gate refused this stack's prunes: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_refused: Option<String>,
    /// Objects not healthy at the end of the wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<String>,
    /// Wall time of the stack's reconcile (observe, plan, check, apply, prune, health wait,
    /// hooks), ms; absent when it was not reconciled in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl StackRun {
    /// Stack `name` in `state`, with no counts, changes, findings, error, target or timing yet.
    pub fn new(name: &str, state: StackRunState) -> StackRun {
        StackRun {
            name: name.to_owned(),
            target: None,
            state,
            counts: Counts::default(),
            changes: Vec::new(),
            changes_omitted: 0,
            error: None,
            policy: Vec::new(),
            prune_refused: None,
            unhealthy: Vec::new(),
            duration_ms: None,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A revision a caller asked for (API sync or a webhook's pushed sha), and whether this run
/// reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wanted {
    pub revision: String,
    /// The newest revision fetched in this run is `revision` or a descendant of it (set when
    /// the run ends; `None` before, or without a Git source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched: Option<bool>,
    /// The revision this run applied is `revision` or a descendant of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
}

/// One reconcile of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    /// The triggers coalesced into this run, in order, without repeats (`webhook github`,
    /// `api`, `poll`, …).
    pub triggers: Vec<String>,
    pub state: RunState,
    pub queued_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The revision applied (the last good one), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The newest revision fetched, when it differs from `revision` (it did not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched: Option<String>,
    /// `quiet`, `incremental` or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wanted: Vec<Wanted>,
    #[serde(default)]
    pub stacks: Vec<StackRun>,
    /// Problems outside any one stack (source, revision, cluster connection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Wall time of the run's phases (fetch, render, check, cluster, record), ms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases_ms: Vec<(String, u64)>,
}

impl Run {
    /// A run queued now by `trigger`.
    pub fn queued(id: String, trigger: &str, now: DateTime<Utc>) -> Run {
        Run {
            id,
            triggers: vec![trigger.to_owned()],
            state: RunState::Queued,
            queued_at: now,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            revision: None,
            fetched: None,
            mode: None,
            wanted: Vec::new(),
            stacks: Vec::new(),
            errors: Vec::new(),
            phases_ms: Vec::new(),
        }
    }

    /// Adds a trigger (and the revision it wants) to a queued run.
    pub fn join(&mut self, trigger: &str, revision: Option<&str>) {
        if !self.triggers.iter().any(|t| t == trigger) {
            self.triggers.push(trigger.to_owned());
        }
        if let Some(r) = revision
            && !self.wanted.iter().any(|w| w.revision == r)
        {
            self.wanted.push(Wanted {
                revision: r.to_owned(),
                fetched: None,
                applied: None,
            });
        }
    }

    /// The record without diffs (for listings).
    pub fn without_diffs(&self) -> Run {
        let mut r = self.clone();
        for s in &mut r.stacks {
            for c in &mut s.changes {
                c.diff.clear();
            }
        }
        r
    }

    /// The stack named `name`.
    pub fn stack(&self, name: &str) -> Option<&StackRun> {
        self.stacks.iter().find(|s| s.name == name)
    }
}

/// The stacks of a reconcile's report as a run records them: `plan_only` stacks were planned,
/// not applied; `skipped` ones (backoff) were not reconciled. Diffs are cut to the size bounds.
pub fn stack_runs(report: &Report, plan_only: &[String], skipped: &[String]) -> Vec<StackRun> {
    let mut budget = MAX_RUN_DIFF_BYTES;
    let mut out: Vec<StackRun> = report
        .stacks
        .iter()
        .map(|o| stack_run(o, plan_only.contains(&o.stack), &mut budget))
        .collect();
    let skipped = skipped
        .iter()
        .map(|n| (n, "in backoff after failures: not reconciled in this run"))
        .chain(report.awaiting_lease.iter().map(|n| {
            (
                n,
                "its lease is held by another process: not written by this one",
            )
        }));
    for (name, why) in skipped {
        if !out.iter().any(|s| &s.name == name) {
            out.push(StackRun {
                error: Some(why.to_owned()),
                ..StackRun::new(name, StackRunState::Skipped)
            });
        }
    }
    out
}

fn stack_run(o: &StackOutcome, plan_only: bool, budget: &mut usize) -> StackRun {
    let (create, update, prune) = o.plan.as_ref().map_or((0, 0, 0), |p| p.counts());
    let policy: Vec<PolicyNote> = o
        .policy
        .iter()
        .map(|f| PolicyNote {
            policy: f.policy.clone(),
            object: f.object.clone(),
            message: f.message.clone(),
            deny: f.denies(),
        })
        .collect();
    let prune_refused = o.plan.as_ref().and_then(|p| p.prune_refused.clone());
    let state = if o.error.is_some() {
        let refused = policy.iter().any(|p| p.deny)
            || prune_refused.is_some()
            || !o.recreate.is_empty() && !o.applied;
        if refused {
            StackRunState::Refused
        } else {
            StackRunState::Failed
        }
    } else if !o.unhealthy.is_empty() {
        StackRunState::Unhealthy
    } else if plan_only {
        StackRunState::Planned
    } else if create + update + prune > 0 {
        StackRunState::Applied
    } else {
        StackRunState::Unchanged
    };
    let mut changes = Vec::new();
    let mut changes_omitted = 0;
    for c in o
        .plan
        .iter()
        .flat_map(|p| &p.changes)
        .filter(|c| c.action != Action::Unchanged)
    {
        if changes.len() >= MAX_CHANGES_PER_STACK {
            changes_omitted += 1;
            continue;
        }
        let diff = cut(&c.diff, MAX_DIFF_BYTES);
        let diff_omitted = diff.len() > *budget;
        if !diff_omitted {
            *budget -= diff.len();
        }
        changes.push(ChangedObject {
            object: c.key.to_string(),
            action: c.action,
            diff: if diff_omitted { String::new() } else { diff },
            diff_omitted,
        });
    }
    StackRun {
        name: o.stack.clone(),
        target: None,
        state,
        counts: Counts {
            create,
            update,
            prune,
        },
        changes,
        changes_omitted,
        error: o.error.clone(),
        policy,
        prune_refused,
        unhealthy: o.unhealthy.iter().map(|u| u.object.clone()).collect(),
        duration_ms: (o.duration_ms > 0).then_some(o.duration_ms),
    }
}

/// `text` cut to at most `max` bytes at a line break (or a character boundary), with a note
/// saying so.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let end = text[..end].rfind('\n').map_or(end, |i| i + 1);
    format!(
        "{}… cut: {} of {} bytes shown\n",
        &text[..end],
        end,
        text.len()
    )
}

/// What a caller waiting for a revision (and stacks) learns from a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The run applied the revision (or a descendant) and the stacks are healthy.
    Done,
    /// The run reached the revision and failed or was refused: why.
    Failed(String),
    /// Not there yet: what is still awaited.
    Waiting(String),
}

/// The verdict of `run` for a caller that wants `revision` (any when `None`) and `stacks` (all
/// of the run's when empty).
pub fn verdict(run: &Run, revision: Option<&str>, stacks: &[String]) -> Verdict {
    if !run.state.finished() {
        return Verdict::Waiting(format!("run {} to finish (it is {:?})", run.id, run.state));
    }
    if let Some(r) = revision {
        let wanted = run.wanted.iter().find(|w| w.revision == r);
        let applied =
            wanted.and_then(|w| w.applied) == Some(true) || run.revision.as_deref() == Some(r);
        let fetched = applied || wanted.and_then(|w| w.fetched) == Some(true);
        if !fetched {
            return Verdict::Waiting(format!(
                "a run that applies revision {r} (run {} applied {})",
                run.id,
                run.revision.as_deref().unwrap_or("no revision")
            ));
        }
        if !applied {
            let why = run
                .errors
                .first()
                .cloned()
                .unwrap_or_else(|| "it was not applied".to_owned());
            return Verdict::Failed(format!("revision {r}: {why}"));
        }
    }
    if run.state == RunState::Interrupted {
        return Verdict::Waiting(format!(
            "a run that finishes (run {} was interrupted)",
            run.id
        ));
    }
    let mut problems = Vec::new();
    for name in stacks {
        if run.stack(name).is_none() {
            problems.push(format!(
                "stack {name} is not in revision {}",
                run.revision.as_deref().unwrap_or("(none)")
            ));
        }
    }
    for s in &run.stacks {
        if (stacks.is_empty() || stacks.contains(&s.name)) && !s.state.healthy() {
            let why = match (&s.error, s.unhealthy.first()) {
                (Some(e), _) => e.clone(),
                (None, Some(o)) => format!("{o} is not healthy"),
                (None, None) => "not healthy".to_owned(),
            };
            problems.push(format!(
                "stack {} {}: {why}",
                s.name,
                serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
    }
    if stacks.is_empty() && run.state == RunState::Failed && problems.is_empty() {
        problems.extend(run.errors.iter().cloned());
        if problems.is_empty() {
            problems.push(format!("run {} failed", run.id));
        }
    }
    if problems.is_empty() {
        Verdict::Done
    } else {
        Verdict::Failed(problems.join("; "))
    }
}

/// Whether `id` may name a run: short, letters, digits and dashes (it goes into URLs and file
/// names).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `text` may name a Git commit: 7 to 64 hexadecimal digits (SHA-1 or SHA-256,
/// abbreviated or full).
pub fn valid_revision(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
