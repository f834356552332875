//! `driftless diff -o markdown`: a plan as a pull-request comment. Per stack the counts, each
//! change in a collapsible `<details>` block with its diff (Secret values are masked by the
//! plan), policy findings and prune gates called out, the whole cut to a size a forge accepts
//! with a note saying what was cut. Pure: a report in, text out.

use std::fmt::Write as _;

use crate::plan::Action;
use crate::reconcile::Report;

/// A size every forge accepts for a comment (GitHub's limit is 65,536 characters).
pub const DEFAULT_LIMIT: usize = 60_000;

/// Room kept for the closing note.
const NOTE_ROOM: usize = 400;

/// Renders `report` in at most `limit` bytes.
pub fn render(report: &Report, limit: usize) -> String {
    let mut out = String::from("## driftless diff\n\n");
    let (mut c, mut u, mut p) = (0, 0, 0);
    for s in &report.stacks {
        if let Some(plan) = &s.plan {
            let (a, b, d) = plan.counts();
            (c, u, p) = (c + a, u + b, p + d);
        }
    }
    let _ = writeln!(
        out,
        "{} stacks: **{c}** to create, **{u}** to update, **{p}** to prune.\n",
        report.stacks.len()
    );
    let budget = limit.saturating_sub(NOTE_ROOM);
    // What did not fit: changes (diffs) and whole stacks.
    let (mut cut_changes, mut cut_stacks) = (0usize, 0usize);
    for s in &report.stacks {
        let mut head = String::new();
        let counts = s.plan.as_ref().map_or((0, 0, 0), |p| p.counts());
        let _ = writeln!(
            head,
            "### Stack `{}`\n\n{} to create, {} to update, {} to prune",
            code(&s.stack),
            counts.0,
            counts.1,
            counts.2
        );
        if let Some(e) = &s.error {
            let _ = writeln!(head, "\n> **Error:** {}", inline(e));
        }
        if let Some(refused) = s.plan.as_ref().and_then(|p| p.prune_refused.as_deref()) {
            let _ = writeln!(
                head,
                "\n> **Prune refused (mass-prune gate):** {}",
                inline(refused)
            );
        }
        if let Some(k) = &s.kept {
            let _ = writeln!(head, "\n> **Stack kept:** {}", inline(k));
        }
        for f in &s.policy {
            let _ = writeln!(
                head,
                "\n> **Policy {}** `{}` on `{}`: {}",
                if f.denies() { "denies" } else { "warns" },
                code(&f.policy),
                code(&f.object),
                inline(&f.message)
            );
        }
        for k in s.plan.iter().flat_map(|p| &p.kept) {
            let _ = writeln!(
                head,
                "\n- kept `{}`: {}",
                code(&k.key.to_string()),
                inline(&k.reason)
            );
        }
        head.push('\n');
        let changes: Vec<_> = s
            .plan
            .iter()
            .flat_map(|p| &p.changes)
            .filter(|c| c.action != Action::Unchanged)
            .collect();
        if out.len() + head.len() > budget {
            cut_stacks += 1;
            cut_changes += changes.len();
            continue;
        }
        out.push_str(&head);
        for change in changes {
            let block = details(
                action_word(change.action),
                &change.key.to_string(),
                &change.diff,
            );
            if out.len() + block.len() > budget {
                cut_changes += 1;
                continue;
            }
            out.push_str(&block);
        }
    }
    if cut_changes + cut_stacks > 0 {
        let _ = write!(
            out,
            "\n---\n**Cut to {limit} characters:** {cut_changes} changes{} not shown. Run `driftless diff` for the whole plan.\n",
            if cut_stacks > 0 {
                format!(" (of which all of {cut_stacks} stacks)")
            } else {
                String::new()
            }
        );
    }
    out
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Create => "create",
        Action::Update => "update",
        Action::Prune => "prune",
        Action::Unchanged => "unchanged",
    }
}

/// One change as a collapsible block; the diff in a fence longer than any backtick run in it.
fn details(action: &str, object: &str, diff: &str) -> String {
    let longest = diff.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    let mut s = format!(
        "<details><summary>{action} <code>{}</code></summary>\n\n",
        html(object)
    );
    if diff.is_empty() {
        s.push_str("(no diff)\n");
    } else {
        let _ = write!(s, "{fence}diff\n{diff}");
        if !diff.ends_with('\n') {
            s.push('\n');
        }
        let _ = writeln!(s, "{fence}");
    }
    s.push_str("\n</details>\n\n");
    s
}

/// Text for an HTML context (summaries): `<`, `>`, `&` and quotes escaped.
fn html(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '&' => s.push_str("&amp;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// Text inside a code span: no backticks or line breaks (they would end it).
fn code(text: &str) -> String {
    text.replace(['`', '\n', '\r'], " ")
}

/// Text on one Markdown line: HTML escaped, line breaks folded.
fn inline(text: &str) -> String {
    html(&text.replace(['\n', '\r'], " "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{KeptObject, PlannedChange, StackPlan};
    use crate::reconcile::StackOutcome;
    use crate::stack::ObjectKey;

    fn key(kind: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: kind.to_owned(),
            namespace: Some("ns".to_owned()),
            name: name.to_owned(),
        }
    }

    fn outcome(stack: &str, changes: Vec<PlannedChange>) -> StackOutcome {
        let mut o = StackOutcome::new(stack);
        o.plan = Some(StackPlan {
            stack: stack.to_owned(),
            changes,
            kept: vec![KeptObject {
                key: key("ConfigMap", "old"),
                reason: "mass-prune gate".to_owned(),
            }],
            prune_refused: Some("would prune 3 of 4 objects".to_owned()),
        });
        o
    }

    fn change(name: &str, diff: &str) -> PlannedChange {
        PlannedChange {
            key: key("ConfigMap", name),
            api_version: "v1".to_owned(),
            action: Action::Update,
            diff: diff.to_owned(),
        }
    }

    #[test]
    fn changes_are_collapsible_and_gates_are_called_out() {
        let report = Report {
            stacks: vec![outcome(
                "web",
                vec![
                    change("a", "-  x: '1'\n+  x: '2'\n"),
                    change("b<i>", "```\n"),
                ],
            )],
            resources: Vec::new(),
            awaiting_lease: Vec::new(),
        };
        let md = render(&report, DEFAULT_LIMIT);
        assert!(md.contains("### Stack `web`"), "{md}");
        assert!(md.contains("0 to create, 2 to update, 0 to prune"), "{md}");
        assert!(
            md.contains("<details><summary>update <code>ConfigMap/ns/a</code></summary>"),
            "{md}"
        );
        assert!(md.contains("```diff\n-  x: '1'\n+  x: '2'\n```\n"), "{md}");
        // A diff holding a fence gets a longer one; names are escaped in HTML.
        assert!(md.contains("````diff\n```\n````\n"), "{md}");
        assert!(md.contains("b&lt;i&gt;"), "{md}");
        assert!(
            md.contains("**Prune refused (mass-prune gate):** would prune 3 of 4 objects"),
            "{md}"
        );
        assert!(
            md.contains("kept `ConfigMap/ns/old`: mass-prune gate"),
            "{md}"
        );
        assert!(!md.contains("Cut to"), "{md}");
    }

    #[test]
    fn a_large_plan_is_cut_with_a_note() {
        let big = "+ line\n".repeat(400);
        let changes: Vec<_> = (0..100).map(|i| change(&format!("cm{i}"), &big)).collect();
        let report = Report {
            stacks: vec![outcome("web", changes)],
            resources: Vec::new(),
            awaiting_lease: Vec::new(),
        };
        let md = render(&report, 20_000);
        assert!(md.len() <= 20_000, "{}", md.len());
        assert!(md.contains("**Cut to 20000 characters:**"), "{md}");
        let shown = md.matches("<details>").count();
        assert!(
            md.contains(&format!("{} changes not shown", 100 - shown)),
            "{md}"
        );
    }
}
