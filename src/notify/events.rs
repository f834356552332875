//! Notification events, pure: which events a finished run (after the one before it) or a change
//! of the jobs' status raises, and the bodies sent for one (driftless's JSON document and its
//! signature, or Slack's incoming-webhook shape). Events are edges, not levels: a run failing
//! after a run that failed raises nothing new; the first success after it raises `runRecovered`.
//!
//! Bodies carry what the run record holds outside its diffs (states, counts, errors, policy
//! messages): never a diff, so never a Secret value.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::config::EventKind;
use super::status::run_link;
use crate::jobs::runs::Outcome;
use crate::runs::{Run, RunState, StackRunState};
use crate::status::JobStatus;

/// Most detail lines an event carries, and the longest one.
const MAX_DETAILS: usize = 10;
const MAX_DETAIL_CHARS: usize = 300;

/// The header that carries a JSON body's signature: `sha256=<hex HMAC-SHA256 of the body>`,
/// the header driftless's own generic webhook checks.
pub const SIGNATURE_HEADER: &str = "X-Driftless-Signature";
/// The header naming the event.
pub const EVENT_HEADER: &str = "X-Driftless-Event";

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event: EventKind,
    pub instance: String,
    /// One line: what happened.
    pub summary: String,
    /// Per stack or job: the state and first error, bounded.
    pub details: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// `<linkBase>/runs/<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub at: DateTime<Utc>,
}

/// The events of `run`, given the last finished, not interrupted run before it (`None`: none
/// known, as after a first start: recoveries and reverts need a before, so they are not raised).
///
/// - `runFailed`: the run failed and the one before did not.
/// - `runRecovered`: the run succeeded and the one before failed.
/// - `driftDetected`: stacks planned with changes (`selfHeal: false`) that were not before.
/// - `driftReverted`: stacks applied with changes on the revision the run before applied
///   (nothing new came from Git: the changes put back what was changed in the cluster), and
///   that were healthy in it (after a failure, changes are the retry's).
pub fn run_events(
    instance: &str,
    before: Option<&Run>,
    run: &Run,
    link_base: Option<&str>,
) -> Vec<Event> {
    if !run.state.finished() || run.state == RunState::Interrupted {
        return Vec::new();
    }
    let at = run.finished_at.unwrap_or_else(Utc::now);
    let event = |kind, summary: String, details: Vec<String>, stacks: Vec<String>| Event {
        event: kind,
        instance: instance.to_owned(),
        summary,
        details: bounded(details),
        run: Some(run.id.clone()),
        revision: run.revision.clone(),
        stacks,
        job: None,
        url: run_link(link_base, &run.id),
        at,
    };
    let failed = |r: &Run| r.state == RunState::Failed;
    let mut out = Vec::new();
    let problems: Vec<String> = run
        .errors
        .iter()
        .map(|e| format!("revision: {e}"))
        .chain(
            run.stacks
                .iter()
                .filter(|s| !s.state.healthy())
                .map(stack_line),
        )
        .collect();
    let failing: Vec<String> = run
        .stacks
        .iter()
        .filter(|s| !s.state.healthy())
        .map(|s| s.name.clone())
        .collect();
    if failed(run) && !before.is_some_and(failed) {
        let revision = short(run.revision.as_deref());
        out.push(event(
            EventKind::RunFailed,
            format!("driftless {instance}: run {} failed at {revision}", run.id),
            problems,
            failing,
        ));
    } else if run.state == RunState::Succeeded && before.is_some_and(failed) {
        out.push(event(
            EventKind::RunRecovered,
            format!(
                "driftless {instance}: run {} succeeded at {} after failures",
                run.id,
                short(run.revision.as_deref())
            ),
            Vec::new(),
            Vec::new(),
        ));
    }
    let changed =
        |s: &crate::runs::StackRun| s.counts.create + s.counts.update + s.counts.prune > 0;
    let drifted_before = |name: &str| {
        before
            .and_then(|b| b.stack(name))
            .is_some_and(|s| s.state == StackRunState::Planned && changed(s))
    };
    let detected: Vec<&crate::runs::StackRun> = run
        .stacks
        .iter()
        .filter(|s| s.state == StackRunState::Planned && changed(s) && !drifted_before(&s.name))
        .collect();
    if !detected.is_empty() {
        out.push(event(
            EventKind::DriftDetected,
            format!(
                "driftless {instance}: live state differs from Git in {} (selfHeal off: not reverted)",
                names(&detected)
            ),
            detected.iter().map(|s| stack_line(s)).collect(),
            detected.iter().map(|s| s.name.clone()).collect(),
        ));
    }
    let same_revision = before.is_some_and(|b| b.revision.is_some() && b.revision == run.revision);
    let reverted: Vec<&crate::runs::StackRun> = run
        .stacks
        .iter()
        .filter(|s| {
            same_revision
                && s.state == StackRunState::Applied
                && changed(s)
                // Healthy before: changes after a failure are the retry's, not drift's.
                && before
                    .and_then(|b| b.stack(&s.name))
                    .is_some_and(|p| p.state.healthy())
        })
        .collect();
    if !reverted.is_empty() {
        out.push(event(
            EventKind::DriftReverted,
            format!(
                "driftless {instance}: drift reverted in {}",
                names(&reverted)
            ),
            reverted.iter().map(|s| stack_line(s)).collect(),
            reverted.iter().map(|s| s.name.clone()).collect(),
        ));
    }
    out
}

/// The events of the jobs' status going from `before` to `after` (a job absent from `before`
/// raises nothing: its history is not news).
///
/// - `jobFailed`: its last run is a new one that failed.
/// - `jobRecovered`: its last run is a new one that succeeded and the one before failed.
/// - `backupStale`: its newest complete backup became older than `maxAge`.
pub fn job_events(
    instance: &str,
    before: &[JobStatus],
    after: &[JobStatus],
    now: DateTime<Utc>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for job in after {
        let Some(prev) = before.iter().find(|j| j.name == job.name) else {
            continue;
        };
        let event = |kind, summary: String, detail: Option<String>| Event {
            event: kind,
            instance: instance.to_owned(),
            summary,
            details: bounded(detail.into_iter().collect()),
            run: None,
            revision: job.last_run.as_ref().and_then(|r| r.revision.clone()),
            stacks: vec![job.stack.clone()],
            job: Some(job.name.clone()),
            url: None,
            at: now,
        };
        let finished = |j: &JobStatus| {
            j.last_run
                .as_ref()
                .filter(|r| r.finished_at.is_some())
                .map(|r| (r.started_at, r.outcome))
        };
        if let Some((started, outcome)) = finished(job)
            && finished(prev).map(|(s, _)| s) != Some(started)
        {
            let message = job.last_run.as_ref().and_then(|r| r.message.clone());
            let failed_before = finished(prev).is_some_and(|(_, o)| o == Outcome::Failed);
            match outcome {
                Outcome::Failed | Outcome::Interrupted => out.push(event(
                    EventKind::JobFailed,
                    format!(
                        "driftless {instance}: job {} ({}) failed",
                        job.name, job.kind
                    ),
                    message,
                )),
                Outcome::Succeeded if failed_before => out.push(event(
                    EventKind::JobRecovered,
                    format!(
                        "driftless {instance}: job {} ({}) succeeded after a failure",
                        job.name, job.kind
                    ),
                    message,
                )),
                _ => {}
            }
        }
        if let Some(why) = &job.overdue
            && prev.overdue.is_none()
        {
            out.push(event(
                EventKind::BackupStale,
                format!("driftless {instance}: backup {} is stale", job.name),
                Some(why.clone()),
            ));
        }
    }
    out
}

fn stack_line(s: &crate::runs::StackRun) -> String {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let why = s
        .policy
        .iter()
        .find(|p| p.deny)
        .map(|p| format!("denied by policy {}: {}", p.policy, p.message))
        .or_else(|| s.prune_refused.clone())
        .or_else(|| {
            s.error
                .as_deref()
                .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
                .map(str::to_owned)
        });
    let c = s.counts;
    match why {
        Some(w) => format!("{}: {state}: {w}", s.name),
        None => format!(
            "{}: {state} ({} create, {} update, {} prune)",
            s.name, c.create, c.update, c.prune
        ),
    }
}

fn names(stacks: &[&crate::runs::StackRun]) -> String {
    stacks
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(sha: Option<&str>) -> &str {
    sha.map_or("no revision", |s| &s[..12.min(s.len())])
}

fn bounded(details: Vec<String>) -> Vec<String> {
    let more = details.len().saturating_sub(MAX_DETAILS);
    let mut out: Vec<String> = details
        .into_iter()
        .take(MAX_DETAILS)
        .map(|d| {
            let flat = d.split_whitespace().collect::<Vec<_>>().join(" ");
            if flat.chars().count() > MAX_DETAIL_CHARS {
                let mut c: String = flat.chars().take(MAX_DETAIL_CHARS - 1).collect();
                c.push('…');
                c
            } else {
                flat
            }
        })
        .collect();
    if more > 0 {
        out.push(format!("… and {more} more"));
    }
    out
}

/// The JSON body of `event`.
pub fn json_body(event: &Event) -> Vec<u8> {
    // Serialising plain strings, lists and a timestamp cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

/// The Slack incoming-webhook body of `event`: `text` with the summary, the details as a list
/// and the link.
pub fn slack_body(event: &Event) -> Vec<u8> {
    let mut text = event.summary.clone();
    for d in &event.details {
        text.push_str("\n• ");
        text.push_str(d);
    }
    if let Some(u) = &event.url {
        text.push_str(&format!(
            "\n<{u}|run {}>",
            event.run.as_deref().unwrap_or("")
        ));
    }
    serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
}

/// The value of [`SIGNATURE_HEADER`] for `body`: `sha256=<hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let hex = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac
            .chain_update(body)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        Err(_) => String::new(),
    };
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::runs::RunRecord;
    use crate::jobs::scheduler::Cause;
    use crate::runs::{Counts, PolicyNote, StackRun};

    fn stack(name: &str, state: StackRunState, changes: usize) -> StackRun {
        StackRun {
            counts: Counts {
                create: 0,
                update: changes,
                prune: 0,
            },
            ..StackRun::new(name, state)
        }
    }

    fn run(id: &str, state: RunState, sha: &str, stacks: Vec<StackRun>) -> Run {
        let mut r = Run::queued(id.to_owned(), "poll", Utc::now());
        r.state = state;
        r.revision = Some(sha.to_owned());
        r.stacks = stacks;
        r
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.event).collect()
    }

    #[test]
    fn run_events_are_edges() {
        use EventKind::*;
        use RunState::{Failed, Succeeded};
        let mut denied = stack("web", StackRunState::Refused, 1);
        denied.error = Some("1 policy denials".to_owned());
        denied.policy = vec![PolicyNote {
            policy: "no-latest".to_owned(),
            object: "Deployment/a/web".to_owned(),
            message: "no :latest".to_owned(),
            deny: true,
        }];
        let ok = run(
            "r1",
            Succeeded,
            "aaa",
            vec![stack("web", StackRunState::Unchanged, 0)],
        );
        let bad = run("r2", Failed, "bbb", vec![denied]);
        let bad_again = run("r3", Failed, "bbb", bad.stacks.clone());
        let fixed = run(
            "r4",
            Succeeded,
            "ccc",
            vec![stack("web", StackRunState::Applied, 1)],
        );
        let drift = run(
            "r5",
            Succeeded,
            "ccc",
            vec![stack("web", StackRunState::Planned, 2)],
        );
        let drift_again = run("r6", Succeeded, "ccc", drift.stacks.clone());
        let reverted = run(
            "r7",
            Succeeded,
            "ccc",
            vec![stack("web", StackRunState::Applied, 1)],
        );
        let bad_same_revision = run("r9", Failed, "ddd", bad.stacks.clone());
        let applied_after_failure = run(
            "r10",
            Succeeded,
            "ddd",
            vec![stack("web", StackRunState::Applied, 1)],
        );
        let mut interrupted = run("r8", RunState::Interrupted, "ccc", Vec::new());
        interrupted.errors = vec!["stopped".to_owned()];
        let cases: Vec<(Option<&Run>, &Run, Vec<EventKind>)> = vec![
            (None, &ok, vec![]),
            (None, &bad, vec![RunFailed]),
            (Some(&ok), &bad, vec![RunFailed]),
            (Some(&bad), &bad_again, vec![]),
            (Some(&bad_again), &fixed, vec![RunRecovered]),
            (Some(&ok), &fixed, vec![]),
            (None, &fixed, vec![]),
            (Some(&fixed), &drift, vec![DriftDetected]),
            (Some(&drift), &drift_again, vec![]),
            (Some(&drift_again), &reverted, vec![DriftReverted]),
            (
                Some(&bad_same_revision),
                &applied_after_failure,
                vec![RunRecovered],
            ),
            (Some(&ok), &interrupted, vec![]),
        ];
        for (i, (before, r, want)) in cases.into_iter().enumerate() {
            let got = run_events("prod", before, r, Some("http://ops:9427"));
            assert_eq!(kinds(&got), want, "case {i}");
        }
        let failed = &run_events("prod", None, &bad, Some("http://ops:9427/"))[0];
        assert_eq!(failed.url.as_deref(), Some("http://ops:9427/runs/r2"));
        assert_eq!(failed.stacks, ["web"]);
        assert_eq!(
            failed.details,
            ["web: refused: denied by policy no-latest: no :latest"]
        );
        assert_eq!(failed.revision.as_deref(), Some("bbb"));
        let body: serde_json::Value = serde_json::from_slice(&json_body(failed)).unwrap();
        assert_eq!(body["event"], "runFailed");
        assert_eq!(body["run"], "r2");
        assert_eq!(body["instance"], "prod");
    }

    #[test]
    fn a_revision_error_is_a_detail_and_details_are_bounded() {
        let mut r = run(
            "r1",
            RunState::Failed,
            "abc",
            (0..15)
                .map(|i| {
                    let mut s = stack(&format!("s{i}"), StackRunState::Failed, 0);
                    s.error = Some(format!("boom {}", "x".repeat(400)));
                    s
                })
                .collect(),
        );
        r.errors = vec!["fetch: connection refused".to_owned()];
        let e = &run_events("i", None, &r, None)[0];
        assert_eq!(e.details[0], "revision: fetch: connection refused");
        assert_eq!(e.details.len(), MAX_DETAILS + 1);
        assert_eq!(e.details[MAX_DETAILS], "… and 6 more");
        assert!(
            e.details
                .iter()
                .all(|d| d.chars().count() <= MAX_DETAIL_CHARS)
        );
        assert_eq!(e.url, None);
    }

    fn job(outcome: Option<(Outcome, i64)>, overdue: Option<&str>) -> JobStatus {
        JobStatus {
            name: "db-backup".to_owned(),
            kind: "Backup".to_owned(),
            stack: "db".to_owned(),
            schedule: "0 3 * * *".to_owned(),
            time_zone: "UTC".to_owned(),
            next_run: None,
            running: false,
            last_run: outcome.map(|(o, t)| RunRecord {
                job: "db-backup".to_owned(),
                kind: "Backup".to_owned(),
                cause: Cause::Scheduled,
                scheduled_for: None,
                started_at: DateTime::from_timestamp(t, 0).unwrap(),
                finished_at: Some(DateTime::from_timestamp(t + 5, 0).unwrap()),
                outcome: o,
                dry_run: false,
                revision: None,
                figures: Default::default(),
                message: Some("pg_dump: connection refused".to_owned()),
            }),
            last_success: None,
            last_complete_backup: None,
            overdue: overdue.map(str::to_owned),
        }
    }

    #[test]
    fn job_events_are_edges_too() {
        use EventKind::*;
        use Outcome::{Failed, Succeeded};
        let now = Utc::now();
        let cases: Vec<(Vec<JobStatus>, JobStatus, Vec<EventKind>)> = vec![
            (vec![], job(Some((Failed, 1)), None), vec![]),
            (
                vec![job(None, None)],
                job(Some((Failed, 1)), None),
                vec![JobFailed],
            ),
            (
                vec![job(Some((Failed, 1)), None)],
                job(Some((Failed, 1)), None),
                vec![],
            ),
            (
                vec![job(Some((Failed, 1)), None)],
                job(Some((Failed, 2)), None),
                vec![JobFailed],
            ),
            (
                vec![job(Some((Failed, 1)), None)],
                job(Some((Succeeded, 2)), None),
                vec![JobRecovered],
            ),
            (
                vec![job(Some((Succeeded, 1)), None)],
                job(Some((Succeeded, 2)), None),
                vec![],
            ),
            (
                vec![job(Some((Succeeded, 1)), None)],
                job(Some((Succeeded, 1)), Some("older than 26h")),
                vec![BackupStale],
            ),
            (
                vec![job(Some((Succeeded, 1)), Some("x"))],
                job(Some((Succeeded, 1)), Some("x")),
                vec![],
            ),
        ];
        for (i, (before, after, want)) in cases.into_iter().enumerate() {
            let got = job_events("prod", &before, &[after], now);
            assert_eq!(kinds(&got), want, "case {i}");
        }
        let e = &job_events(
            "p",
            &[job(None, None)],
            &[job(Some((Failed, 1)), None)],
            now,
        )[0];
        assert_eq!(e.job.as_deref(), Some("db-backup"));
        assert_eq!(e.details, ["pg_dump: connection refused"]);
    }

    #[test]
    fn bodies_and_signature() {
        let e = Event {
            event: EventKind::RunFailed,
            instance: "prod".to_owned(),
            summary: "driftless prod: run r1 failed".to_owned(),
            details: vec!["web: failed: boom".to_owned()],
            run: Some("r1".to_owned()),
            revision: None,
            stacks: vec![],
            job: None,
            url: Some("http://ops/runs/r1".to_owned()),
            at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let slack: serde_json::Value = serde_json::from_slice(&slack_body(&e)).unwrap();
        assert_eq!(
            slack,
            serde_json::json!({"text": "driftless prod: run r1 failed\n• web: failed: boom\n<http://ops/runs/r1|run r1>"})
        );
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
