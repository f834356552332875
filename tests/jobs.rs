//! The daemon's scheduler: jobs declared in Git fire on schedule, never overlap, and a run missed
//! while the daemon was down runs once at start when within its deadline. The job is a real
//! ImageCleanup; where a run must be slow, its registry is a failure-injection server that answers
//! the catalog late.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use support::daemon::start_daemon_prepared;
use support::{TestEnv, eventually};

fn history(state: &std::path::Path, job: &str) -> Value {
    std::fs::read_to_string(state.join(format!("jobs/{job}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time: {v}"))
        .parse()
        .unwrap()
}

fn cleanup_job(name: &str, schedule: &str, url: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: driftless.dev/v1alpha1
kind: ImageCleanup
metadata: {{name: {name}}}
spec:
  schedule: "{schedule}"
  registry: {{url: "{url}"}}
  protect: {{cluster: false, desired: false}}
  rules: [{{repositories: "none-such/*", keepLast: 1}}]
{extra}"#
    )
}

#[tokio::test]
async fn a_job_fires_on_schedule_and_never_overlaps_itself() {
    // A registry whose catalog takes 2.5 s, counting requests in flight.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (in_flight.clone(), most.clone());
    let app = axum::Router::new().route(
        "/v2/_catalog",
        axum::routing::get(move || {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                r#"{"repositories":[]}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Every second (a leading seconds field): most fire times find the previous run going.
    let d = start_daemon_prepared("", |repo, _| {
        std::fs::write(
            repo.join("stack/app/jobs.yaml"),
            cleanup_job("slow", "* * * * * *", &url, ""),
        )
        .unwrap();
    });
    let state = d.dir.path().join("state");
    let runs = eventually("three finished runs", Duration::from_secs(30), || {
        let h = history(&state, "slow");
        async move {
            let runs: Vec<Value> = h["runs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r["outcome"] == "succeeded")
                .collect();
            (runs.len() >= 3).then_some(runs)
        }
    })
    .await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two runs at once");
    for r in &runs {
        assert_eq!(r["cause"], "scheduled");
        let (fire, start) = (time(&r["scheduledFor"]), time(&r["startedAt"]));
        assert_eq!(fire.nanosecond(), 0, "fire times are whole seconds");
        let late = (start - fire).num_milliseconds();
        assert!(
            (0..1000).contains(&late),
            "started {late} ms after its fire time"
        );
        let took = (time(&r["finishedAt"]) - start).num_milliseconds();
        assert!(
            took >= 2400,
            "each run waited for the slow registry ({took} ms)"
        );
    }
    for pair in runs.windows(2) {
        assert!(
            time(&pair[1]["startedAt"]) >= time(&pair[0]["finishedAt"]),
            "runs overlap: {pair:?}"
        );
    }
    // Skipped fire times are counted; the status page and JSON show the job.
    let metrics = d.metrics().await;
    let skipped = metrics
        .lines()
        .find(|l| l.starts_with("driftless_job_runs_total{") && l.contains("outcome=\"skipped\""))
        .unwrap_or_else(|| panic!("no skipped runs counted:\n{metrics}"));
    assert!(skipped.contains("job=\"slow\""), "{skipped}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("driftless_job_last_success_timestamp_seconds{job=\"slow\"}")),
        "{metrics}"
    );
    let status = d.status().await;
    assert_eq!(status["jobs"][0]["name"], "slow");
    assert_eq!(status["jobs"][0]["kind"], "ImageCleanup");
    let page = d.page().await;
    assert!(
        page.contains("<table id=\"jobs\">") && page.contains(">slow<"),
        "{page}"
    );
}

#[tokio::test]
async fn a_run_missed_while_down_runs_once_at_start_within_its_deadline() {
    let env = TestEnv::get();
    // Far from the top of the hour, so no regular hourly fire time comes during the test.
    let now = Utc::now();
    if now.minute() == 59 && now.second() > 40 {
        tokio::time::sleep(Duration::from_secs(25)).await;
    }
    let now = Utc::now();
    let top_of_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let yesterday = top_of_hour - chrono::Duration::days(1);
    let url = env.registry_url().to_owned();
    let d = start_daemon_prepared("", |repo, state| {
        let jobs = [
            // Hourly with a 2 h deadline: this hour's run was missed and is caught up.
            cleanup_job("hourly", "0 * * * *", &url, "  startingDeadline: 2h\n"),
            // Yearly with a 1 h deadline: its last fire time is long past; no catch-up.
            cleanup_job("yearly", "0 0 1 1 *", &url, "  startingDeadline: 1h\n"),
            // No deadline: missed runs are never caught up.
            cleanup_job("no-deadline", "0 * * * *", &url, ""),
            // Never seen before: its fire times count from now, nothing to catch up.
            cleanup_job("brand-new", "0 * * * *", &url, "  startingDeadline: 2h\n"),
        ];
        std::fs::write(repo.join("stack/app/jobs.yaml"), jobs.join("---\n")).unwrap();
        // The records of a daemon that last ran these jobs yesterday.
        std::fs::create_dir_all(state.join("jobs")).unwrap();
        for job in ["hourly", "yearly", "no-deadline"] {
            let record = json!({
                "firstSeen": yesterday - chrono::Duration::days(1),
                "runs": [{
                    "job": job, "kind": "ImageCleanup", "cause": "scheduled",
                    "scheduledFor": yesterday, "startedAt": yesterday,
                    "finishedAt": yesterday + chrono::Duration::seconds(3),
                    "outcome": "succeeded", "dryRun": false, "revision": null,
                    "figures": {}, "message": "ran yesterday"
                }]
            });
            std::fs::write(
                state.join(format!("jobs/{job}.json")),
                serde_json::to_string(&record).unwrap(),
            )
            .unwrap();
        }
    });
    let state = d.dir.path().join("state");
    let caught_up = eventually("the catch-up run", Duration::from_secs(30), || {
        let h = history(&state, "hourly");
        async move {
            let runs = h["runs"].as_array().cloned().unwrap_or_default();
            (runs.len() >= 2 && runs[1]["outcome"] == "succeeded").then_some(runs)
        }
    })
    .await;
    assert_eq!(caught_up[1]["cause"], "catchUp");
    assert_eq!(time(&caught_up[1]["scheduledFor"]), top_of_hour);
    // Once: a few seconds later there is still exactly one new run, and none of the others.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        history(&state, "hourly")["runs"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        history(&state, "yearly")["runs"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        history(&state, "no-deadline")["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let new = history(&state, "brand-new");
    assert!(new["firstSeen"].is_string(), "{new}");
    assert_eq!(new["runs"].as_array().map_or(0, Vec::len), 0, "{new}");
    let status = d.status().await;
    let hourly = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "hourly")
        .unwrap()
        .clone();
    assert_eq!(hourly["lastRun"]["cause"], "catchUp", "{hourly:#}");
}
