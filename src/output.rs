//! What `diff` and `sync` print: a human report (colour only on a terminal) or one JSON document.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::jobs::model::Job;
use crate::jobs::runs::RunRecord;
use crate::plan::Action;
use crate::policy::Finding;
use crate::reconcile::Report;
use crate::stack::RenderedStack;

/// The last recorded run of each job, by job name.
pub type LastRuns = BTreeMap<String, RunRecord>;

/// Renders a report for people. `colour` adds ANSI colours to diff lines.
pub fn human(report: &Report, colour: bool, show_diffs: bool) -> String {
    let mut out = String::new();
    for s in &report.stacks {
        let Some(plan) = &s.plan else {
            let line = match (&s.error, &s.kept) {
                (Some(error), _) => error.clone(),
                (None, Some(why)) => format!("kept: {why}"),
                (None, None) => "not planned".to_owned(),
            };
            let _ = writeln!(out, "stack {}: {line}", s.stack);
            continue;
        };
        let (c, u, p) = plan.counts();
        let unchanged = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Unchanged)
            .count();
        let verb = if s.applied { "applied" } else { "plan" };
        let _ = writeln!(
            out,
            "stack {}: {verb}: {c} to create, {u} to update, {p} to prune, {unchanged} unchanged",
            s.stack
        );
        for change in &plan.changes {
            if change.action == Action::Unchanged {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:<7} {}",
                format!("{:?}", change.action).to_lowercase(),
                change.key
            );
            if show_diffs && !change.diff.is_empty() {
                for line in change.diff.lines() {
                    let _ = writeln!(out, "    {}", paint(line, colour));
                }
            }
        }
        for k in &plan.kept {
            let _ = writeln!(out, "  kept    {} ({})", k.key, k.reason);
        }
        for t in &s.takeovers {
            for conflict in &t.conflicts {
                let _ = writeln!(out, "  takeover {}: {conflict}", t.object);
            }
        }
        for f in s.policy.iter().filter(|f| !f.denies()) {
            let _ = writeln!(out, "  policy  {f}");
        }
        for h in &s.hooks {
            let line = match (h.ran, h.succeeded, h.reason) {
                (true, Some(true), _) => {
                    format!("succeeded in {:.1}s", h.seconds.unwrap_or_default())
                }
                (true, _, _) => format!("failed: {}", h.message.as_deref().unwrap_or("")),
                (false, _, Some(reason)) => format!("would run ({reason})"),
                (false, _, None) => "unchanged, not run".to_owned(),
            };
            let _ = writeln!(out, "  hook    {} ({}): {line}", h.job, h.file);
        }
        for u in &s.unhealthy {
            let _ = writeln!(out, "  unhealthy {}: {:?}", u.object, u.status);
        }
        if let Some(e) = &s.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

fn paint(line: &str, colour: bool) -> String {
    if !colour {
        return line.to_owned();
    }
    let code = if line.starts_with("+++") || line.starts_with("---") {
        "1"
    } else if line.starts_with('+') {
        "32"
    } else if line.starts_with('-') {
        "31"
    } else if line.starts_with("@@") {
        "36"
    } else {
        return line.to_owned();
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

/// The declared jobs with their schedules, next runs and last recorded runs (`jobs list -o json`,
/// `validate -o json`).
pub fn jobs_json(jobs: &[Job], last: &LastRuns, now: DateTime<Utc>) -> serde_json::Value {
    serde_json::Value::Array(
        jobs.iter()
            .map(|j| {
                serde_json::json!({
                    "name": j.name, "kind": j.kind(), "stack": j.stack,
                    "schedule": j.schedule.expression(), "timeZone": j.schedule.time_zone().name(),
                    "nextRun": j.schedule.next_after(now),
                    "lastRun": last.get(&j.name),
                })
            })
            .collect(),
    )
}

/// The declared jobs for people, one line each.
pub fn jobs_text(jobs: &[Job], last: &LastRuns, now: DateTime<Utc>) -> String {
    jobs.iter()
        .map(|j| {
            let last = match last.get(&j.name) {
                Some(r) => format!(
                    "; last run {} {}{}: {}",
                    r.started_at.format("%Y-%m-%d %H:%M UTC"),
                    r.outcome.as_str(),
                    if r.dry_run { " (dry run)" } else { "" },
                    r.message.as_deref().unwrap_or_default()
                ),
                None => String::new(),
            };
            format!(
                "job {} ({}, stack {}): {:?} {}, next run {}{last}\n",
                j.name,
                j.kind(),
                j.stack,
                j.schedule.expression(),
                j.schedule.time_zone().name(),
                j.schedule
                    .next_after(now)
                    .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_else(|| "never".to_owned())
            )
        })
        .collect()
}

/// What `validate` found: the stacks, jobs, health checks and policy findings of a revision.
pub struct Validation<'a> {
    pub stacks: &'a [RenderedStack],
    pub jobs: &'a [Job],
    pub health: &'a [crate::health_checks::Summary],
    /// Whether host secret files were read.
    pub secrets_checked: bool,
    /// Policy findings by stack.
    pub findings: &'a [(String, Vec<Finding>)],
}

impl Validation<'_> {
    fn of(&self, stack: &str) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|(s, _)| s == stack)
            .flat_map(|(_, f)| f)
            .collect()
    }

    fn denials(&self) -> usize {
        self.findings
            .iter()
            .flat_map(|(_, f)| f)
            .filter(|f| f.denies())
            .count()
    }

    /// `validate -o json`.
    pub fn json(&self) -> serde_json::Value {
        let denials = self.denials();
        serde_json::json!({
            "valid": denials == 0,
            "hostSecretsChecked": self.secrets_checked,
            "stacks": self.stacks.iter().map(|s| serde_json::json!({
                "name": s.name,
                "dependsOn": s.spec.depends_on,
                "objects": s.objects.iter().map(|o| o.key.to_string()).collect::<Vec<_>>(),
                "policy": self.of(&s.name),
            })).collect::<Vec<_>>(),
            "jobs": jobs_json(self.jobs, &LastRuns::new(), Utc::now()),
            "healthChecks": self.health,
        })
    }

    /// `validate` for people.
    pub fn text(&self) -> String {
        let objects: usize = self.stacks.iter().map(|s| s.objects.len()).sum();
        let denials = self.denials();
        let mut text = String::new();
        for s in self.stacks {
            text.push_str(&format!("stack {}: {} objects\n", s.name, s.objects.len()));
            for f in self.of(&s.name) {
                text.push_str(&format!("  {f}\n"));
            }
        }
        text.push_str(&jobs_text(self.jobs, &LastRuns::new(), Utc::now()));
        for h in self.health {
            text.push_str(&format!(
                "health check {} {} ({}{}): current: {}\n",
                h.api_version,
                h.kind,
                h.file.display(),
                h.stack
                    .as_deref()
                    .map(|s| format!(", stack {s} only"))
                    .unwrap_or_default(),
                h.current
            ));
        }
        if denials > 0 {
            text.push_str(&format!(
                "invalid: {denials} policy denials (fix the objects named above)\n"
            ));
        } else {
            text.push_str(&format!(
                "valid: {} stacks, {objects} objects, {} jobs\n",
                self.stacks.len(),
                self.jobs.len()
            ));
        }
        if !self.secrets_checked {
            text.push_str("note: host secret files not checked (no credentials directory given)\n");
        }
        text
    }
}
/// `driftless status` for people: the daemon's state, source, revision, errors and stacks.
pub fn status_text(status: &crate::status::Status) -> String {
    let mut t = format!(
        "driftless {}: {:?}\nsource: {}\n",
        status.instance, status.state, status.source
    );
    if let Some(r) = &status.applied_revision {
        let _ = writeln!(t, "revision: {} {}", r.sha, r.subject);
    }
    for e in &status.errors {
        let _ = writeln!(t, "error: {e}");
    }
    for tg in &status.targets {
        let _ = writeln!(
            t,
            "target {}: {} ({}, profile {}){}",
            tg.name,
            format!("{:?}", tg.state).to_lowercase(),
            tg.cluster,
            tg.profile.as_deref().unwrap_or("none"),
            if tg.errors.is_empty() {
                String::new()
            } else {
                format!(": {}", tg.errors.join("; "))
            }
        );
    }
    for s in &status.stacks {
        let _ = writeln!(
            t,
            "stack {}{}: {} ({} objects, {} drifted{}){}",
            s.name,
            if s.target == crate::targets::DEFAULT {
                String::new()
            } else {
                format!(" (target {})", s.target)
            },
            s.state,
            s.managed_objects,
            s.drifted,
            s.holder
                .as_deref()
                .map(|h| format!(", held by {h}"))
                .unwrap_or_default(),
            s.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    t
}
