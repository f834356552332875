//! `/jobs/{name}`: one scheduled job — its schedule and state, its recent runs (newest first,
//! from `<stateDir>/jobs/<job>.json`) and the last run's full report (`<job>.report.json`),
//! shown as indented JSON, cut at [`MAX_REPORT_BYTES`].

use std::fmt::Write as _;

use super::{document, duration, escape, short_sha, stack_href, time};
use crate::jobs::runs::{History, Outcome};
use crate::status::JobStatus;

/// Most bytes of the last report shown.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// What the job page shows.
pub struct JobPage<'a> {
    pub status: &'a JobStatus,
    /// The job's run history, when it could be read.
    pub history: Option<&'a History>,
    /// The last run's report, when there is one.
    pub report: Option<&'a serde_json::Value>,
    /// Why the history or the report could not be read.
    pub problems: &'a [String],
}

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Running => "running",
        Outcome::Succeeded => "succeeded",
        Outcome::Failed | Outcome::Interrupted => "failed",
    }
}

/// Renders the page.
pub fn render(p: &JobPage<'_>) -> String {
    let j = p.status;
    let state = if j.running {
        "running"
    } else {
        j.last_run
            .as_ref()
            .map_or("never ran", |r| r.outcome.as_str())
    };
    let mut h = format!(
        "<h1>Job <code>{}</code> <span id=\"state\" class=\"{}\">{}</span></h1>\n",
        escape(&j.name),
        j.last_run
            .as_ref()
            .filter(|_| !j.running)
            .map_or("muted", |r| outcome_class(r.outcome)),
        state
    );
    let _ = writeln!(
        h,
        "<table id=\"summary\"><tr><th>Kind</th><td>{}</td></tr>\
         <tr><th>Stack</th><td><a href=\"{}\">{}</a></td></tr>\
         <tr><th>Schedule</th><td><code>{}</code> {}</td></tr>\
         <tr><th>Next run</th><td>{}</td></tr>\
         <tr><th>Last success</th><td>{}</td></tr>\
         <tr><th>Last complete backup</th><td>{}</td></tr></table>",
        escape(&j.kind),
        escape(&stack_href(&j.stack, None)),
        escape(&j.stack),
        escape(&j.schedule),
        escape(&j.time_zone),
        time(j.next_run),
        time(j.last_success),
        time(j.last_complete_backup),
    );
    if let Some(why) = &j.overdue {
        let _ = writeln!(h, "<p class=\"err\" id=\"overdue\">{}</p>", escape(why));
    }
    for problem in p.problems {
        let _ = writeln!(h, "<p class=\"err\">{}</p>", escape(problem));
    }
    h.push_str("<h2>Recent runs</h2>\n");
    match p.history.filter(|hi| !hi.runs.is_empty()) {
        None => h.push_str("<p id=\"runs\" class=\"muted\">No runs recorded.</p>\n"),
        Some(history) => {
            h.push_str(
                "<table id=\"runs\"><tr><th>Started</th><th>Cause</th><th>Outcome</th><th>Duration</th>\
                 <th>Revision</th><th>Figures</th><th>Summary</th></tr>\n",
            );
            for r in history.runs.iter().rev() {
                let figures: Vec<String> = r
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{}={v}", escape(k)))
                    .collect();
                let cause = serde_json::to_value(r.cause)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    time(Some(r.started_at)),
                    escape(&cause),
                    outcome_class(r.outcome),
                    r.outcome.as_str(),
                    if r.dry_run { " (dry run)" } else { "" },
                    duration(r.duration_ms()),
                    short_sha(r.revision.as_deref()),
                    figures.join(" "),
                    escape(r.message.as_deref().unwrap_or("")),
                );
            }
            h.push_str("</table>\n");
        }
    }
    h.push_str("<h2>Last report</h2>\n");
    match p.report {
        None => h.push_str("<p id=\"report\" class=\"muted\">No report yet.</p>\n"),
        Some(report) => {
            let text = serde_json::to_string_pretty(report).unwrap_or_default();
            let shown = crate::runs::cut(&text, MAX_REPORT_BYTES);
            let _ = writeln!(h, "<pre id=\"report\">{}</pre>", escape(&shown));
        }
    }
    document(&format!("driftless job {}: {state}", j.name), &h)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{HOSTILE, shows_escaped};
    use super::*;
    use crate::jobs::runs::RunRecord;
    use crate::jobs::scheduler::Cause;
    use chrono::TimeZone;

    fn record(text: &str, outcome: Outcome, minute: u32) -> RunRecord {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 12, 6, 12, minute, 0)
            .unwrap();
        RunRecord {
            job: "cleanup".to_owned(),
            kind: "ImageCleanup".to_owned(),
            cause: Cause::Scheduled,
            scheduled_for: Some(at),
            started_at: at,
            finished_at: Some(at + chrono::Duration::milliseconds(1500)),
            outcome,
            dry_run: true,
            revision: Some("abcdef0123456789".to_owned()),
            figures: [(text.to_owned(), 3)].into_iter().collect(),
            message: Some(text.to_owned()),
        }
    }

    fn status(text: &str) -> JobStatus {
        JobStatus {
            name: "cleanup".to_owned(),
            kind: text.to_owned(),
            stack: "web".to_owned(),
            schedule: "0 3 * * *".to_owned(),
            time_zone: "UTC".to_owned(),
            next_run: None,
            running: false,
            last_run: Some(record(text, Outcome::Failed, 1)),
            last_success: None,
            last_complete_backup: None,
            overdue: Some(text.to_owned()),
        }
    }

    #[test]
    fn runs_newest_first_and_the_report_escaped() {
        for text in HOSTILE {
            let st = status(text);
            let history = History {
                first_seen: None,
                runs: vec![
                    record(text, Outcome::Succeeded, 0),
                    record(text, Outcome::Failed, 1),
                ],
            };
            let report = serde_json::json!({"deleted": [text], "note": text});
            let problems = vec![text.to_string()];
            let page = render(&JobPage {
                status: &st,
                history: Some(&history),
                report: Some(&report),
                problems: &problems,
            });
            shows_escaped(&page, text);
            let (failed, ok) = (
                page.find("12:01:00 UTC").unwrap(),
                page.find("12:00:00 UTC").unwrap(),
            );
            assert!(failed < ok, "newest first");
            assert!(page.contains("failed (dry run)") && page.contains("1.5 s"));
            assert!(page.contains("<a href=\"/stacks/web\">web</a>"));
            assert!(page.contains("<pre id=\"report\">{"));
            assert_eq!(page.matches("<script").count(), 1);
        }
    }

    #[test]
    fn a_large_report_is_cut_and_a_missing_one_said() {
        let st = status("x");
        let big = serde_json::json!({"lines": vec!["y".repeat(100); 2000]});
        let page = render(&JobPage {
            status: &st,
            history: None,
            report: Some(&big),
            problems: &[],
        });
        assert!(page.contains("… cut:") && page.len() < 2 * MAX_REPORT_BYTES);
        let none = render(&JobPage {
            status: &st,
            history: None,
            report: None,
            problems: &[],
        });
        assert!(none.contains("No runs recorded.") && none.contains("No report yet."));
    }
}
