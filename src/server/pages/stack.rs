//! `/stacks/{name}`: one stack — its status, every object with its health, drift and last
//! change (from the run store's object index), its post-sync hooks, its recent runs and its
//! jobs. Each object's row has a stable id (`#o-…`, see [`super::anchor`]) that run pages
//! link to.

use std::fmt::Write as _;

use super::runs::stack_state_word;
use super::{anchor, class, document, duration, escape, job_href, run_href, time};
use crate::runs::Run;
use crate::runs::objects::StackObjects;
use crate::status::{JobStatus, StackStatus};

/// Runs listed on a stack's page.
pub const RECENT_RUNS: usize = 20;

/// What the stack page shows.
pub struct StackPage<'a> {
    pub status: &'a StackStatus,
    /// The object index's entry (none before the first run that planned the stack).
    pub objects: Option<&'a StackObjects>,
    /// Runs that reconciled the stack, newest first.
    pub runs: &'a [Run],
    /// The jobs declared with the stack.
    pub jobs: &'a [&'a JobStatus],
}

/// Renders the page.
pub fn render(p: &StackPage<'_>) -> String {
    let s = p.status;
    let state = s.state.as_str();
    let mut h = format!(
        "<h1>Stack <code>{}</code> <span class=\"{}\" id=\"state\">{state}</span></h1>\n",
        escape(&s.name),
        class(state)
    );
    let _ = writeln!(
        h,
        "<table id=\"summary\"><tr><th>Objects</th><td>{}</td></tr>\
         <tr><th>Drifted</th><td>{}</td></tr>\
         <tr><th>Last plan</th><td>+{} ~{} −{}</td></tr>\
         <tr><th>Last change</th><td>{}</td></tr>\
         <tr><th>Last sync</th><td>{}</td></tr>\
         <tr><th>Lease holder</th><td>{}</td></tr>\
         <tr><th>Retry at</th><td>{}</td></tr></table>",
        s.managed_objects,
        s.drifted,
        s.last_plan.create,
        s.last_plan.update,
        s.last_plan.prune,
        time(s.last_change),
        time(s.last_sync),
        escape(s.holder.as_deref().unwrap_or("—")),
        time(s.retry_at),
    );
    if let Some(e) = &s.error {
        let _ = writeln!(
            h,
            "<p class=\"err error\" id=\"error\">{}{}</p>",
            escape(e),
            if s.consecutive_failures > 1 {
                format!(" ({} failures in a row)", s.consecutive_failures)
            } else {
                String::new()
            }
        );
    }
    objects(&mut h, p.objects);
    hooks(&mut h, p.objects);
    runs(&mut h, &s.name, p.runs);
    if !p.jobs.is_empty() {
        h.push_str("<h2>Jobs</h2><ul id=\"jobs\">");
        for j in p.jobs {
            let _ = write!(
                h,
                "<li><a href=\"{}\">{}</a> ({})</li>",
                escape(&job_href(&j.name)),
                escape(&j.name),
                escape(&j.kind)
            );
        }
        h.push_str("</ul>\n");
    }
    document(&format!("driftless stack {}: {state}", s.name), &h)
}

fn objects(h: &mut String, entry: Option<&StackObjects>) {
    h.push_str("<h2>Objects</h2>\n");
    let Some(entry) = entry else {
        h.push_str(
            "<p id=\"objects\" class=\"muted\">Not planned by this daemon yet: objects are listed after its first run of the stack.</p>\n",
        );
        return;
    };
    let _ = writeln!(
        h,
        "<p class=\"muted\">As of run <a href=\"{}\">{}</a> ({}).</p>",
        escape(&run_href(&entry.run)),
        escape(&entry.run),
        time(Some(entry.at))
    );
    h.push_str(
        "<table id=\"objects\"><tr><th>Object</th><th>Health</th><th>Drift</th><th>Last change</th></tr>\n",
    );
    for o in &entry.objects {
        let health = o.health.as_str();
        let drift = match &o.drift {
            None => "—".to_owned(),
            Some(d) => format!(
                "<span class=\"{}\">{}</span> {} (<a href=\"{}\">run</a>)",
                if d.reverted { "muted" } else { "drifted" },
                if d.reverted { "reverted" } else { "drifted" },
                time(Some(d.at)),
                escape(&run_href(&d.run))
            ),
        };
        let change = match &o.last_change {
            None => "—".to_owned(),
            Some(c) => format!(
                "{} {} (<a href=\"{}\">{}</a>)",
                match c.action {
                    crate::plan::Action::Create => "created",
                    _ => "updated",
                },
                time(Some(c.at)),
                escape(&run_href(&c.run)),
                escape(&c.run)
            ),
        };
        let _ = writeln!(
            h,
            "<tr class=\"object\" id=\"{}\"><td><code>{}</code></td><td><span class=\"{}\">{health}</span>{}</td><td>{drift}</td><td>{change}</td></tr>",
            anchor("o-", &o.object),
            escape(&o.object),
            class(health),
            o.health
                .message()
                .map(|m| format!("<br><small>{}</small>", escape(m)))
                .unwrap_or_default(),
        );
    }
    h.push_str("</table>\n");
    if entry.objects_omitted > 0 {
        let _ = writeln!(
            h,
            "<p class=\"muted\">{} more objects not listed.</p>",
            entry.objects_omitted
        );
    }
}

fn hooks(h: &mut String, entry: Option<&StackObjects>) {
    let Some(entry) = entry.filter(|e| !e.hooks.is_empty()) else {
        return;
    };
    h.push_str(
        "<h2>Sync hooks</h2><table id=\"hooks\"><tr><th>Job</th><th>File</th><th>Last reconcile</th><th>Message</th></tr>\n",
    );
    for k in &entry.hooks {
        let what = match (k.ran, k.succeeded) {
            (true, Some(true)) => "<span class=\"succeeded\">succeeded</span>".to_owned(),
            (true, Some(false)) => "<span class=\"failed\">failed</span>".to_owned(),
            (true, None) => "ran".to_owned(),
            (false, _) if k.reason.is_some() => "would run".to_owned(),
            (false, _) => "<span class=\"muted\">unchanged: not run</span>".to_owned(),
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{what}{}{}</td><td>{}</td></tr>",
            escape(&k.job),
            escape(&k.file),
            k.reason
                .as_deref()
                .map(|r| format!(" ({})", escape(r)))
                .unwrap_or_default(),
            k.seconds.map(|s| format!(", {s} s")).unwrap_or_default(),
            escape(k.message.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>\n");
}

fn runs(h: &mut String, stack: &str, runs: &[Run]) {
    h.push_str("<h2>Recent runs</h2>\n");
    if runs.is_empty() {
        h.push_str("<p id=\"runs\" class=\"muted\">No run of this stack is kept.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"runs\"><tr><th>Run</th><th>Started</th><th>Trigger</th><th>State</th><th>Plan</th><th>Time</th><th>Error</th></tr>\n",
    );
    for r in runs.iter().take(RECENT_RUNS) {
        let Some(s) = r.stack(stack) else { continue };
        let word = stack_state_word(s.state);
        let _ = writeln!(
            h,
            "<tr><td><a href=\"{}#{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"{}\">{word}</td><td>+{} ~{} −{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&run_href(&r.id)),
            anchor("s-", stack),
            escape(&r.id),
            time(r.started_at),
            escape(&r.triggers.join(", ")),
            class(word),
            s.counts.create,
            s.counts.update,
            s.counts.prune,
            duration(s.duration_ms),
            escape(s.error.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{HOSTILE, shows_escaped};
    use super::*;
    use crate::runs::objects::{Change, Drift, Health, HookEntry, ObjectEntry};
    use crate::status::{PlanCounts, StackState};
    use chrono::TimeZone;

    fn status(error: &str) -> StackStatus {
        StackStatus {
            name: "web".to_owned(),
            target: "default".to_owned(),
            state: StackState::Drifted,
            last_change: None,
            last_sync: None,
            managed_objects: 2,
            drifted: 1,
            last_plan: PlanCounts {
                create: 0,
                update: 1,
                prune: 0,
            },
            error: Some(error.to_owned()),
            retry_at: None,
            consecutive_failures: 3,
            holder: Some(error.to_owned()),
        }
    }

    fn objects(text: &str) -> StackObjects {
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
        StackObjects {
            run: "r-1".to_owned(),
            at,
            objects: vec![
                ObjectEntry {
                    object: format!("ConfigMap/ns/{text}"),
                    health: Health::Failed(text.to_owned()),
                    drift: Some(Drift {
                        at,
                        reverted: false,
                        run: "r-1".to_owned(),
                    }),
                    last_change: Some(Change {
                        at,
                        action: crate::plan::Action::Create,
                        run: "r-0".to_owned(),
                    }),
                },
                ObjectEntry {
                    object: "Deployment/ns/api".to_owned(),
                    health: Health::Healthy,
                    drift: None,
                    last_change: None,
                },
            ],
            objects_omitted: 4,
            hooks: vec![HookEntry {
                job: format!("Job/ns/{text}"),
                file: text.to_owned(),
                reason: Some("definition changed".to_owned()),
                ran: true,
                succeeded: Some(false),
                message: Some(text.to_owned()),
                seconds: Some(7),
            }],
        }
    }

    #[test]
    fn objects_hooks_and_runs_are_shown_escaped() {
        for text in HOSTILE {
            let st = status(text);
            let idx = objects(text);
            let runs = vec![super::super::runs::tests::run_with("r-1", text)];
            let page = render(&StackPage {
                status: &st,
                objects: Some(&idx),
                runs: &runs,
                jobs: &[],
            });
            shows_escaped(&page, text);
            let row = format!(
                "<tr class=\"object\" id=\"{}\">",
                anchor("o-", &format!("ConfigMap/ns/{text}"))
            );
            assert!(page.contains(&row), "{page}");
            assert!(page.contains("<span class=\"failed\">failed</span><br><small>"));
            assert!(page.contains("<span class=\"drifted\">drifted</span>"));
            assert!(
                page.contains("created 2026-12-06 12:00:00 UTC (<a href=\"/runs/r-0\">r-0</a>)")
            );
            assert!(page.contains("<span class=\"healthy\">healthy</span>"));
            assert!(page.contains("4 more objects not listed"));
            assert!(page.contains("(3 failures in a row)"));
            assert!(page.contains("(definition changed), 7 s"));
            assert!(page.contains(&format!("href=\"/runs/r-1#{}\"", anchor("s-", "web"))));
            assert_eq!(page.matches("<script").count(), 1);
        }
    }

    #[test]
    fn a_stack_not_planned_yet_says_so() {
        let st = status("e");
        let page = render(&StackPage {
            status: &st,
            objects: None,
            runs: &[],
            jobs: &[],
        });
        assert!(page.contains("Not planned by this daemon yet"));
        assert!(page.contains("No run of this stack is kept."));
        assert!(!page.contains("Sync hooks"));
    }
}
