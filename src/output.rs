//! What `diff` and `sync` print: a human report (colour only on a terminal) or one JSON document.

use std::fmt::Write as _;

use crate::plan::Action;
use crate::reconcile::Report;

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
