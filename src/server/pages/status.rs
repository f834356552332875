//! `/`: the status at a glance — the daemon's state, revisions, errors, stacks (linking to
//! their pages), the last runs (linking to theirs) and the jobs (linking to theirs).

use std::fmt::Write as _;

use super::{class, document, escape, job_href, stack_href, time};
use crate::runs::Run;
use crate::status::{DaemonState, Status};

/// Runs listed on the status page (the rest are on `/runs`).
pub const RECENT_RUNS: usize = 10;

/// Renders the page from the status and the newest runs (newest first).
pub fn render(st: &Status, recent: &[Run]) -> String {
    let badge = match st.state {
        DaemonState::Ready => "ready",
        DaemonState::Degraded => "degraded",
        DaemonState::Starting => "starting",
    };
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<h1>driftless <code>{instance}</code> <span class=\"badge {badge}\" id=\"state\">{badge}</span></h1>",
        instance = escape(&st.instance),
    );
    let rev = |r: &Option<crate::source::Revision>| match r {
        Some(r) => format!(
            "<code>{}</code> {} <small>({})</small>",
            escape(&r.sha.chars().take(12).collect::<String>()),
            escape(&r.subject),
            escape(&r.author)
        ),
        None => "—".to_owned(),
    };
    let _ = writeln!(
        h,
        "<table id=\"summary\"><tr><th>Source</th><td>{}</td></tr>\
         <tr><th>Applied revision</th><td>{}</td></tr>\
         <tr><th>Newest revision</th><td>{}</td></tr>\
         <tr><th>Last reconcile</th><td>{}</td></tr>\
         <tr><th>Running since</th><td>{}</td></tr></table>",
        escape(&st.source),
        rev(&st.applied_revision),
        rev(&st.revision),
        st.last_reconcile
            .as_ref()
            .map(|r| format!(
                "{} ({}, {} ms, {})",
                time(Some(r.started_at)),
                escape(&r.trigger.to_string()),
                r.duration_ms,
                if r.ok {
                    "ok"
                } else {
                    "<span class=\"err\">failed</span>"
                }
            ))
            .unwrap_or_else(|| "—".to_owned()),
        time(st.started_at),
    );
    if !st.errors.is_empty() {
        h.push_str("<h2>Errors</h2><ul id=\"errors\">");
        for e in &st.errors {
            let _ = write!(h, "<li class=\"err\">{}</li>", escape(e));
        }
        h.push_str("</ul>\n");
    }
    targets_table(&mut h, st);
    h.push_str(
        "<h2>Stacks</h2><table id=\"stacks\"><tr><th>Target</th><th>Stack</th><th>State</th><th>Objects</th><th>Drifted</th>\
         <th>Last plan</th><th>Last change</th><th>Last sync</th><th>Holder</th><th>Error</th></tr>\n",
    );
    for s in &st.stacks {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>+{} ~{} −{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&s.target),
            escape(&stack_href(&s.name, None)),
            escape(&s.name),
            class(s.state.as_str()),
            escape(s.state.as_str()),
            s.managed_objects,
            s.drifted,
            s.last_plan.create,
            s.last_plan.update,
            s.last_plan.prune,
            time(s.last_change),
            time(s.last_sync),
            s.holder
                .as_deref()
                .map(escape)
                .unwrap_or_else(|| "—".to_owned()),
            s.error.as_deref().map(escape).unwrap_or_default(),
        );
    }
    h.push_str("</table>\n");
    recent_runs(&mut h, recent);
    h.push_str("<h2>Jobs</h2>\n");
    if st.jobs.is_empty() {
        h.push_str("<p id=\"jobs\">No scheduled jobs.</p>\n");
    } else {
        h.push_str(
            "<table id=\"jobs\"><tr><th>Job</th><th>Kind</th><th>Schedule</th><th>Next run</th>\
             <th>Last run</th><th>Outcome</th><th>Summary</th><th>Last success</th></tr>\n",
        );
        for j in &st.jobs {
            let (last, outcome, summary) = match &j.last_run {
                Some(r) => (
                    format!(
                        "{} ({}{})",
                        time(Some(r.started_at)),
                        escape(&format!("{:?}", r.cause).to_lowercase()),
                        r.duration_ms()
                            .map(|ms| format!(", {ms} ms"))
                            .unwrap_or_default()
                    ),
                    if j.running {
                        "running".to_owned()
                    } else {
                        format!(
                            "{}{}",
                            r.outcome.as_str(),
                            if r.dry_run { " (dry run)" } else { "" }
                        )
                    },
                    r.message.as_deref().map(escape).unwrap_or_default(),
                ),
                None => (
                    "—".to_owned(),
                    if j.running { "running" } else { "never ran" }.to_owned(),
                    String::new(),
                ),
            };
            let class = match outcome.split(' ').next() {
                Some("failed" | "interrupted") => "failed",
                Some("succeeded") => "synced",
                _ => "",
            };
            let _ = writeln!(
                h,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{last}</td><td class=\"{class}\">{}</td><td>{summary}</td><td>{}</td></tr>",
                escape(&job_href(&j.name)),
                escape(&j.name),
                escape(&j.kind),
                escape(&j.schedule),
                escape(&j.time_zone),
                time(j.next_run),
                escape(&outcome),
                time(j.last_success),
            );
        }
        h.push_str("</table>\n");
    }
    document(&format!("driftless {}: {badge}", st.instance), &h)
}

/// The "Recent runs" table: the newest runs, each linking to its page.
fn recent_runs(h: &mut String, recent: &[Run]) {
    h.push_str("<h2>Recent runs <small><a href=\"/runs\">all runs</a></small></h2>\n");
    if recent.is_empty() {
        h.push_str("<p id=\"runs\" class=\"muted\">No runs yet.</p>\n");
        return;
    }
    h.push_str(&super::runs::table(
        "runs",
        &recent[..recent.len().min(RECENT_RUNS)],
    ));
}

/// The targets (clusters) and where their last runs left them.
fn targets_table(h: &mut String, st: &Status) {
    h.push_str(
        "<h2>Targets</h2><table id=\"targets\"><tr><th>Target</th><th>Cluster</th><th>Profile</th>\
         <th>State</th><th>Mode</th><th>Last run</th><th>Errors</th></tr>\n",
    );
    for t in &st.targets {
        let state = format!("{:?}", t.state).to_lowercase();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&t.name),
            escape(&t.cluster),
            t.profile
                .as_deref()
                .map(escape)
                .unwrap_or_else(|| "—".to_owned()),
            escape(&state),
            escape(&state),
            escape(&format!("{:?}", t.mode).to_lowercase()),
            time(t.last_run_at),
            escape(&t.errors.join("; ")),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{HOSTILE, shows_escaped};
    use super::*;
    use crate::status::{JobStatus, PlanCounts, StackState, StackStatus};

    fn status(text: &str) -> Status {
        Status {
            instance: text.to_owned(),
            errors: vec![text.to_owned()],
            stacks: vec![StackStatus {
                name: "web".to_owned(),
                target: "default".to_owned(),
                state: StackState::Synced,
                last_change: None,
                last_sync: None,
                managed_objects: 2,
                drifted: 0,
                last_plan: PlanCounts::default(),
                error: Some(text.to_owned()),
                retry_at: None,
                consecutive_failures: 0,
                holder: None,
            }],
            jobs: vec![JobStatus {
                name: "cleanup".to_owned(),
                kind: text.to_owned(),
                stack: "web".to_owned(),
                schedule: text.to_owned(),
                time_zone: "UTC".to_owned(),
                next_run: None,
                running: false,
                last_run: None,
                last_success: None,
                last_complete_backup: None,
                overdue: None,
            }],
            ..Status::default()
        }
    }

    #[test]
    fn links_to_every_page_and_escapes_everything_it_prints() {
        for text in HOSTILE {
            let runs = vec![super::super::runs::tests::run_with("r-1", text)];
            let page = render(&status(text), &runs);
            shows_escaped(&page, text);
            assert_eq!(page.matches("<script").count(), 1, "{page}");
            for link in [
                "href=\"/stacks/web\"",
                "href=\"/jobs/cleanup\"",
                "href=\"/runs/r-1\"",
                "href=\"/runs\"",
            ] {
                assert!(page.contains(link), "{link}");
            }
            assert!(page.contains("<td class=\"synced\">synced</td>"));
        }
        assert!(render(&Status::default(), &[]).contains("No runs yet."));
    }

    #[test]
    fn shows_each_target_and_each_stacks_target_and_holder_escaped() {
        let st: Status = serde_json::from_value(serde_json::json!({
            "instance": "ops", "state": "degraded", "startedAt": null, "source": "s",
            "revision": null, "appliedRevision": null, "lastReconcile": null, "errors": [],
            "targets": [{"name": "b", "cluster": "context <eu>", "profile": "prod",
                         "state": "degraded", "errors": ["cluster <x> down"], "lastRunAt": null}],
            "stacks": [{"name": "web", "target": "b", "state": "synced", "lastChange": null,
                        "lastSync": null, "managedObjects": 1, "drifted": 0,
                        "lastPlan": {"create": 0, "update": 0, "prune": 0}, "error": null,
                        "retryAt": null, "consecutiveFailures": 0, "holder": "ops-2 <evil>"}]
        }))
        .expect("status");
        let page = render(&st, &[]);
        assert!(page.contains("<table id=\"targets\">"), "{page}");
        assert!(page.contains("context &lt;eu&gt;") && page.contains("cluster &lt;x&gt; down"));
        assert!(page.contains("<td>b</td><td><a href="), "{page}");
        assert!(page.contains("ops-2 &lt;evil&gt;") && !page.contains("<evil>"));
    }
}
