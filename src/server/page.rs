//! The status page: one server-rendered HTML document an operator reads at a glance. No
//! JavaScript; it refreshes itself every 10 seconds.

use std::fmt::Write as _;

use crate::daemon::status::{DaemonState, Status};

/// Escapes text for HTML element and attribute content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".to_owned())
}

/// Renders the page.
pub fn render(st: &Status) -> String {
    let (badge, colour) = match st.state {
        DaemonState::Ready => ("ready", "#1a7f37"),
        DaemonState::Degraded => ("degraded", "#cf222e"),
        DaemonState::Starting => ("starting", "#9a6700"),
    };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>driftless {instance}: {badge}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}}
th,td{{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #d0d7de;vertical-align:top}}
th{{background:#f6f8fa}}
.badge{{display:inline-block;padding:.1rem .6rem;border-radius:1rem;color:#fff;background:{colour}}}
.synced{{color:#1a7f37}} .drifted{{color:#9a6700;font-weight:600}} .failed,.unhealthy,.backoff{{color:#cf222e;font-weight:600}}
.err{{color:#cf222e}} code{{font-size:.9em}}
</style></head><body>
<h1>driftless <code>{instance}</code> <span class="badge" id="state">{badge}</span></h1>
"#,
        instance = escape(&st.instance),
    );
    let rev = |r: &Option<crate::source::Revision>| match r {
        Some(r) => format!(
            "<code>{}</code> {} <small>({})</small>",
            escape(&r.sha[..12.min(r.sha.len())]),
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
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>+{} ~{} −{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            escape(&s.target),
            escape(&s.name),
            escape(s.state.as_str()),
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
    h.push_str("</table>\n<h2>Jobs</h2>\n");
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
                "<tr><td>{}</td><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{last}</td><td class=\"{class}\">{}</td><td>{summary}</td><td>{}</td></tr>",
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
    h.push_str("</body></html>\n");
    h
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
    use super::*;

    #[test]
    fn escapes_everything_it_prints() {
        let st = Status {
            instance: "<script>".to_owned(),
            errors: vec!["a & b <c>".to_owned()],
            ..Status::default()
        };
        let page = render(&st);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;") && page.contains("a &amp; b &lt;c&gt;"));
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
        let page = render(&st);
        assert!(page.contains("<table id=\"targets\">"), "{page}");
        assert!(page.contains("context &lt;eu&gt;") && page.contains("cluster &lt;x&gt; down"));
        assert!(page.contains("<td>b</td><td>web</td>"), "{page}");
        assert!(page.contains("ops-2 &lt;evil&gt;") && !page.contains("<evil>"));
    }
}
