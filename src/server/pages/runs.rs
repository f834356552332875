//! `/runs` (the run history, newest first) and `/runs/{id}` (one run: its triggers, revision,
//! outcome and phases; per stack the plan's counts, the changed objects with their masked
//! diffs, policy findings, errors and timing).

use std::fmt::Write as _;

use super::{anchor, class, document, duration, escape, run_href, short_sha, stack_href, time};
use crate::runs::{Run, RunState, StackRun, StackRunState};

/// A run state's word (`succeeded`, `failed`, …).
pub fn state_word(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "queued",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::Interrupted => "interrupted",
    }
}

/// A stack's state in a run.
pub fn stack_state_word(state: StackRunState) -> &'static str {
    match state {
        StackRunState::Applied => "applied",
        StackRunState::Unchanged => "unchanged",
        StackRunState::Planned => "planned",
        StackRunState::Refused => "refused",
        StackRunState::Failed => "failed",
        StackRunState::Unhealthy => "unhealthy",
        StackRunState::Skipped => "skipped",
    }
}

fn action_word(action: crate::plan::Action) -> &'static str {
    match action {
        crate::plan::Action::Create => "create",
        crate::plan::Action::Update => "update",
        crate::plan::Action::Unchanged => "unchanged",
        crate::plan::Action::Prune => "prune",
    }
}

/// `+c ~u −p` summed over a run's stacks.
fn counts(run: &Run) -> String {
    let (c, u, p) = run.stacks.iter().fold((0, 0, 0), |(c, u, p), s| {
        (c + s.counts.create, u + s.counts.update, p + s.counts.prune)
    });
    format!("+{c} ~{u} −{p}")
}

/// A table of runs (newest first as given), each linking to its page; `id` is the table's.
pub fn table(id: &str, runs: &[Run]) -> String {
    let mut h = format!(
        "<table id=\"{}\"><tr><th>Run</th><th>Trigger</th><th>Revision</th><th>Outcome</th>\
         <th>Changes</th><th>Started</th><th>Duration</th></tr>\n",
        escape(id)
    );
    for r in runs {
        let word = state_word(r.state);
        let _ = writeln!(
            h,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run_href(&r.id)),
            escape(&r.id),
            escape(&r.triggers.join(", ")),
            short_sha(r.revision.as_deref()),
            class(word),
            word,
            counts(r),
            time(r.started_at.or(Some(r.queued_at))),
            duration(r.duration_ms),
        );
    }
    h.push_str("</table>\n");
    h
}

/// `/runs`: the history, newest first.
pub fn render_list(runs: &[Run]) -> String {
    let mut h = String::from("<h1>Runs</h1>\n");
    if runs.is_empty() {
        h.push_str("<p id=\"runs\" class=\"muted\">No runs yet.</p>\n");
    } else {
        let _ = writeln!(
            h,
            "<p class=\"muted\">The newest {} runs, newest first.</p>",
            runs.len()
        );
        h.push_str(&table("runs", runs));
    }
    document("driftless runs", &h)
}

/// `/runs/{id}`: one run.
pub fn render_run(run: &Run) -> String {
    let word = state_word(run.state);
    let mut h = format!(
        "<h1>Run <code>{}</code> <span class=\"badge {word}\" id=\"state\">{word}</span></h1>\n",
        escape(&run.id)
    );
    let wanted: Vec<String> = run
        .wanted
        .iter()
        .map(|w| {
            let reached = match w.applied {
                Some(true) => "applied",
                Some(false) => "not applied",
                None => "pending",
            };
            format!("{} ({reached})", short_sha(Some(&w.revision)))
        })
        .collect();
    let _ = writeln!(
        h,
        "<table id=\"summary\"><tr><th>Triggers</th><td>{}</td></tr>\
         <tr><th>Revision applied</th><td>{}</td></tr>\
         <tr><th>Newest fetched</th><td>{}</td></tr>\
         <tr><th>Wanted</th><td>{}</td></tr>\
         <tr><th>Mode</th><td>{}</td></tr>\
         <tr><th>Queued</th><td>{}</td></tr>\
         <tr><th>Started</th><td>{}</td></tr>\
         <tr><th>Finished</th><td>{}</td></tr>\
         <tr><th>Duration</th><td>{}</td></tr></table>",
        escape(&run.triggers.join(", ")),
        short_sha(run.revision.as_deref()),
        run.fetched
            .as_deref()
            .map_or_else(|| "same".to_owned(), |f| short_sha(Some(f))),
        if wanted.is_empty() {
            "—".to_owned()
        } else {
            wanted.join(", ")
        },
        escape(run.mode.as_deref().unwrap_or("—")),
        time(Some(run.queued_at)),
        time(run.started_at),
        time(run.finished_at),
        duration(run.duration_ms),
    );
    if !run.errors.is_empty() {
        h.push_str("<h2>Errors</h2><ul id=\"errors\">");
        for e in &run.errors {
            let _ = write!(h, "<li class=\"err\">{}</li>", escape(e));
        }
        h.push_str("</ul>\n");
    }
    if !run.phases_ms.is_empty() {
        h.push_str("<h2>Phases</h2><table id=\"phases\"><tr><th>Phase</th><th>Time</th></tr>");
        for (phase, ms) in &run.phases_ms {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(phase),
                duration(Some(*ms))
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Stacks</h2>\n");
    if run.stacks.is_empty() {
        h.push_str("<p class=\"muted\">No stack was reconciled in this run.</p>\n");
    }
    for s in &run.stacks {
        stack_section(&mut h, s);
    }
    document(&format!("driftless run {}: {word}", run.id), &h)
}

fn stack_section(h: &mut String, s: &StackRun) {
    let word = stack_state_word(s.state);
    let _ = writeln!(
        h,
        "<section class=\"stack\" id=\"{}\"><h3><a href=\"{}\">{}</a> <span class=\"{}\">{word}</span></h3>\
         <p>Plan: <span class=\"counts\">+{} ~{} −{}</span> · time {}</p>",
        anchor("s-", &s.name),
        escape(&stack_href(&s.name, None)),
        escape(&s.name),
        class(word),
        s.counts.create,
        s.counts.update,
        s.counts.prune,
        duration(s.duration_ms),
    );
    if let Some(e) = &s.error {
        let _ = writeln!(h, "<p class=\"err error\">{}</p>", escape(e));
    }
    if let Some(why) = &s.prune_refused {
        let _ = writeln!(h, "<p class=\"err\">Prune refused: {}</p>", escape(why));
    }
    if !s.policy.is_empty() {
        h.push_str(
            "<table class=\"policy\"><tr><th>Policy</th><th>Object</th><th>Finding</th><th>Message</th></tr>",
        );
        for p in &s.policy {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                escape(&p.policy),
                escape(&p.object),
                if p.deny { "failed" } else { "drifted" },
                if p.deny { "deny" } else { "warn" },
                escape(&p.message),
            );
        }
        h.push_str("</table>\n");
    }
    if !s.unhealthy.is_empty() {
        h.push_str("<p>Not healthy at the end of the wait:</p><ul class=\"unhealthy-objects\">");
        for o in &s.unhealthy {
            let _ = write!(
                h,
                "<li><a href=\"{}\">{}</a></li>",
                escape(&stack_href(&s.name, Some(o))),
                escape(o)
            );
        }
        h.push_str("</ul>\n");
    }
    if !s.changes.is_empty() {
        h.push_str(
            "<table class=\"changes\"><tr><th>Object</th><th>Action</th><th>Diff (Secret values masked)</th></tr>\n",
        );
        for c in &s.changes {
            let diff = if c.diff_omitted {
                "<span class=\"muted\">left out: the run's diff budget was spent</span>".to_owned()
            } else if c.diff.is_empty() {
                "—".to_owned()
            } else {
                format!(
                    "<details id=\"{}\"><summary>{} lines</summary><pre>{}</pre></details>",
                    anchor("d-", &format!("{}\n{}", s.name, c.object)),
                    c.diff.lines().count(),
                    escape(&c.diff)
                )
            };
            let _ = writeln!(
                h,
                "<tr><td><a class=\"object\" href=\"{}\">{}</a></td><td>{}</td><td>{diff}</td></tr>",
                escape(&stack_href(&s.name, Some(&c.object))),
                escape(&c.object),
                action_word(c.action),
            );
        }
        h.push_str("</table>\n");
    }
    if s.changes_omitted > 0 {
        let _ = writeln!(
            h,
            "<p class=\"muted\">{} more changed objects not listed.</p>",
            s.changes_omitted
        );
    }
    h.push_str("</section>\n");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::fixtures::{HOSTILE, shows_escaped};
    use super::*;
    use crate::plan::Action;
    use crate::runs::{ChangedObject, Counts, PolicyNote};
    use chrono::TimeZone;

    /// A finished run with one stack, changed objects and notes made of `text`.
    pub fn run_with(id: &str, text: &str) -> Run {
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        let mut run = Run::queued(id.to_owned(), text, at);
        run.state = RunState::Failed;
        run.started_at = Some(at);
        run.finished_at = Some(at + chrono::Duration::seconds(3));
        run.duration_ms = Some(3000);
        run.revision = Some("0123456789abcdef0123".to_owned());
        run.errors = vec![text.to_owned()];
        run.phases_ms = vec![("fetch".to_owned(), 12), (text.to_owned(), 40)];
        run.stacks = vec![StackRun {
            name: "web".to_owned(),
            target: None,
            state: StackRunState::Refused,
            counts: Counts {
                create: 1,
                update: 1,
                prune: 0,
            },
            changes: vec![
                ChangedObject {
                    object: format!("ConfigMap/ns/{text}"),
                    action: Action::Update,
                    diff: format!("-a: 1\n+a: {text}\n"),
                    diff_omitted: false,
                },
                ChangedObject {
                    object: "ConfigMap/ns/big".to_owned(),
                    action: Action::Create,
                    diff: String::new(),
                    diff_omitted: true,
                },
            ],
            changes_omitted: 2,
            error: Some(text.to_owned()),
            policy: vec![PolicyNote {
                policy: text.to_owned(),
                object: "ConfigMap/ns/a".to_owned(),
                message: text.to_owned(),
                deny: true,
            }],
            prune_refused: Some(text.to_owned()),
            unhealthy: vec![format!("Deployment/ns/{text}")],
            duration_ms: Some(2500),
        }];
        run
    }

    #[test]
    fn a_run_page_shows_each_stack_and_escapes_every_value() {
        for text in HOSTILE {
            let page = render_run(&run_with("r-1", text));
            shows_escaped(&page, text);
            assert!(page.contains("<span class=\"badge failed\" id=\"state\">failed</span>"));
            assert!(page.contains("<a href=\"/stacks/web\">web</a>"), "{page}");
            assert!(page.contains("+1 ~1 −0") && page.contains("2.5 s"));
            assert!(page.contains("left out: the run's diff budget was spent"));
            assert!(page.contains("2 more changed objects not listed"));
            assert!(page.contains(&format!(
                "href=\"/stacks/web#{}\"",
                anchor("o-", &format!("ConfigMap/ns/{text}"))
            )));
            // The one script is ours; nothing of the run opened another element of its kind.
            assert_eq!(page.matches("<script").count(), 1, "{page}");
            assert_eq!(page.matches("</textarea").count(), 0);
            assert_eq!(page.matches("<img").count(), 0);
        }
    }

    #[test]
    fn the_history_lists_runs_newest_first_with_links() {
        let runs = vec![run_with("r-2", "poll"), run_with("r-1", "<webhook>")];
        let page = render_list(&runs);
        let (two, one) = (
            page.find("href=\"/runs/r-2\"").unwrap(),
            page.find("href=\"/runs/r-1\"").unwrap(),
        );
        assert!(two < one, "in the order given");
        assert!(page.contains("<code>0123456789ab</code>") && page.contains("3.0 s"));
        shows_escaped(&page, "<webhook>");
        assert!(render_list(&[]).contains("No runs yet."));
    }
}
